//! The progress bar shown while a run goes on.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::task::AbortOnDropHandle;

use crate::schedule::{Plan, Stop};

/// A bar over requests when the run knows how many it will send, over time otherwise. It is
/// drawn on stdout only when stdout is a terminal: piped into a file or read by a test, a run
/// prints its report and nothing else.
pub struct Progress {
    bar: ProgressBar,
    /// Whether the bar counts requests ([`Progress::inc`]) rather than seconds.
    counts_requests: bool,
    /// Moves a time-based bar forward; stopped when the progress is dropped.
    _ticker: Option<AbortOnDropHandle<()>>,
}

impl Progress {
    pub fn start(plan: &Plan, label: &str) -> Progress {
        let target = if std::io::stdout().is_terminal() {
            ProgressDrawTarget::stdout()
        } else {
            ProgressDrawTarget::hidden()
        };
        match (plan.expected_requests(), plan.stop) {
            (Some(requests), _) => {
                let bar = ProgressBar::with_draw_target(Some(requests), target);
                bar.set_style(style(
                    "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
                ));
                bar.set_prefix(label.to_string());
                Progress {
                    bar,
                    counts_requests: true,
                    _ticker: None,
                }
            }
            (None, stop) => {
                let duration = match stop {
                    Stop::Duration(d) => d,
                    // expected_requests() is known for every Total run.
                    Stop::Total(_) => Duration::ZERO,
                };
                let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
                let bar = ProgressBar::with_draw_target(Some(millis), target);
                bar.set_style(style("{prefix} [{elapsed_precise}] {wide_bar} {msg}"));
                bar.set_prefix(label.to_string());
                let ticking = bar.clone();
                let start = plan.start;
                let ticker = tokio::spawn(async move {
                    let mut interval = tokio::time::interval(Duration::from_millis(200));
                    loop {
                        interval.tick().await;
                        let elapsed = u64::try_from(start.elapsed().as_millis()).unwrap_or(0);
                        ticking.set_position(elapsed.min(millis));
                    }
                });
                Progress {
                    bar,
                    counts_requests: false,
                    _ticker: Some(AbortOnDropHandle::new(ticker)),
                }
            }
        }
    }

    /// Counts one finished request.
    pub fn inc(&self) {
        if self.counts_requests {
            self.bar.inc(1);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants of this file; a bad one is a bug caught by any run in a
    // terminal, and the default style is an acceptable fallback.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}
