//! When each request of a run starts, and when the run ends.
//!
//! Requests are numbered 0, 1, 2, … in the order workers claim them. In a closed loop a worker
//! sends its next request as soon as the previous one is answered, and a request's latency runs
//! from the moment it is sent. In an open loop at `rate` requests per second, request `n` is due
//! at `start + n / rate` whether or not earlier ones have been answered, and its latency runs
//! from that intended start. A server that stalls for a second therefore shows a second of
//! latency on every request due during the stall, not on the one request that was in flight:
//! this is how the schedule avoids coordinated omission (Gil Tene, "How NOT to Measure
//! Latency"). A worker that is late sends at once, so enough `--clients` must be given for the
//! rate times the latency to be covered.

use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    /// Each worker sends its next request when the previous one is answered.
    Closed,
    /// Requests are due at `rate` per second in total, over all workers.
    Open { rate: f64 },
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// After this many requests.
    Total(u64),
    /// Once this much time has passed since the start (closed loop), or for the requests due
    /// before then (open loop).
    Duration(Duration),
}

/// The pace and end of a run from its start.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub pace: Pace,
    pub stop: Stop,
    pub start: Instant,
}

impl Plan {
    pub fn new(pace: Pace, stop: Stop, start: Instant) -> Plan {
        Plan { pace, stop, start }
    }

    /// The time at which request `n` should start, asked at `now`; `None` once the run is over.
    /// In a closed loop that time is `now`.
    pub fn slot(&self, n: u64, now: Instant) -> Option<Instant> {
        match self.pace {
            Pace::Closed => {
                let within = match self.stop {
                    Stop::Total(total) => n < total,
                    Stop::Duration(duration) => {
                        now.saturating_duration_since(self.start) < duration
                    }
                };
                within.then_some(now)
            }
            Pace::Open { rate } => {
                let offset = open_loop_offset(n, rate);
                let within = match self.stop {
                    Stop::Total(total) => n < total,
                    Stop::Duration(duration) => offset < duration,
                };
                within.then(|| self.start + offset)
            }
        }
    }

    /// How many requests the run will send, when that is known in advance.
    pub fn expected_requests(&self) -> Option<u64> {
        match (self.stop, self.pace) {
            (Stop::Total(total), _) => Some(total),
            (Stop::Duration(duration), Pace::Open { rate }) => {
                Some(open_loop_requests_within(duration, rate))
            }
            (Stop::Duration(_), Pace::Closed) => None,
        }
    }
}

/// The intended start of request `n` after the start of an open-loop run at `rate` per second.
pub fn open_loop_offset(n: u64, rate: f64) -> Duration {
    // f64 holds every request number a run can reach exactly (below 2^53), and the nanosecond
    // rounding does not accumulate because every offset is computed from n, not from the last.
    Duration::from_secs_f64(n as f64 / rate)
}

/// How many requests of an open-loop run at `rate` are due strictly before `duration`.
pub fn open_loop_requests_within(duration: Duration, rate: f64) -> u64 {
    (duration.as_secs_f64() * rate).ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_offsets_follow_the_rate() {
        assert_eq!(open_loop_offset(0, 1000.0), Duration::ZERO);
        assert_eq!(open_loop_offset(1, 1000.0), Duration::from_millis(1));
        assert_eq!(open_loop_offset(1000, 1000.0), Duration::from_secs(1));
        assert_eq!(open_loop_offset(3, 4.0), Duration::from_millis(750));
        // A fractional rate: one request every 2.5 s.
        assert_eq!(open_loop_offset(2, 0.4), Duration::from_secs(5));
        // No drift after many requests.
        assert_eq!(
            open_loop_offset(9_000_000, 3000.0),
            Duration::from_secs(3000)
        );
    }

    #[test]
    fn open_loop_slots_do_not_wait_for_answers() {
        let start = Instant::now();
        let plan = Plan::new(Pace::Open { rate: 100.0 }, Stop::Total(5), start);
        // Asked long after it was due, a request keeps its intended start: its latency will
        // include the time it waited for a free worker.
        let late = start + Duration::from_secs(10);
        assert_eq!(plan.slot(2, late), Some(start + Duration::from_millis(20)));
        assert_eq!(plan.slot(4, start), Some(start + Duration::from_millis(40)));
        assert_eq!(plan.slot(5, start), None, "the total ends the run");
        assert_eq!(plan.expected_requests(), Some(5));
    }

    #[test]
    fn open_loop_duration_counts_requests_due_before_the_end() {
        let start = Instant::now();
        let plan = Plan::new(
            Pace::Open { rate: 10.0 },
            Stop::Duration(Duration::from_secs(2)),
            start,
        );
        let due: Vec<u64> = (0..100)
            .take_while(|&n| plan.slot(n, start).is_some())
            .collect();
        assert_eq!(due.len(), 20, "10/s for 2 s is requests 0..20");
        assert_eq!(plan.expected_requests(), Some(20));
        assert_eq!(
            open_loop_requests_within(Duration::from_millis(1050), 10.0),
            11
        );
    }

    #[test]
    fn closed_loop_starts_now_until_total_or_deadline() {
        let start = Instant::now();
        let total = Plan::new(Pace::Closed, Stop::Total(3), start);
        let now = start + Duration::from_millis(5);
        assert_eq!(total.slot(0, now), Some(now));
        assert_eq!(total.slot(2, now), Some(now));
        assert_eq!(total.slot(3, now), None);

        let timed = Plan::new(Pace::Closed, Stop::Duration(Duration::from_secs(1)), start);
        assert_eq!(timed.slot(1_000_000, now), Some(now), "no request limit");
        assert_eq!(timed.slot(0, start + Duration::from_secs(1)), None);
        assert_eq!(timed.expected_requests(), None);
    }
}
