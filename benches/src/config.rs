//! The validated settings of a run.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::BenchError;
use crate::keys::KeySpace;
use crate::options::{Consistency, Options, Workload};
use crate::payload::TIMESTAMP_BYTES;
use crate::schedule::{Pace, Stop};

/// Requests of a run given neither `--total` nor `--duration`.
pub const DEFAULT_TOTAL: u64 = 10_000;

/// A run's settings, checked for consistency: every count is positive, every fraction within
/// its bounds, every endpoint a URL, and the seed chosen.
#[derive(Debug, Clone)]
pub struct Config {
    pub workload: Workload,
    /// Endpoint URLs with their scheme.
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub keys: KeySpace,
    pub value_size: usize,
    pub pace: Pace,
    pub stop: Stop,
    pub consistency: Consistency,
    pub read_ratio: f64,
    pub watchers: usize,
    pub streams: usize,
    pub elections: usize,
    pub observers: usize,
    pub lease_ttl: i64,
    /// The lease id of request 0 of lease-hold and lease-renew.
    pub first_lease_id: i64,
    /// Puts per txn of the load workload.
    pub batch: u64,
    pub prefill: bool,
    pub timeout: Duration,
    pub seed: u64,
    pub json_out: Option<PathBuf>,
    pub plot_dir: Option<PathBuf>,
    /// The options this was made from, echoed in the report.
    pub options: Options,
}

impl Options {
    /// Checks the options and resolves what they leave open: the scheme of the endpoints, the
    /// total when no end is given, and the seed (random when not given).
    pub fn validate(self) -> Result<Config, BenchError> {
        let invalid = |message: String| Err(BenchError::InvalidOptions(message));
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(with_scheme)
            .collect();
        if endpoints.is_empty() {
            return invalid("--endpoints needs at least one endpoint".into());
        }
        for endpoint in &endpoints {
            if let Err(source) = tonic::transport::Endpoint::from_shared(endpoint.clone()) {
                return Err(BenchError::BadEndpoint {
                    endpoint: endpoint.clone(),
                    source,
                });
            }
        }
        if self.conns == 0 || self.clients == 0 {
            return invalid("--conns and --clients must be at least 1".into());
        }
        let keys = KeySpace::new(&self.prefix, self.key_space, self.key_size)?;
        let pace = match self.rate {
            None => Pace::Closed,
            Some(rate) if rate.is_finite() && rate > 0.0 => Pace::Open { rate },
            Some(rate) => return invalid(format!("--rate must be positive, not {rate}")),
        };
        if self.batch == 0 {
            return invalid("--batch must be at least 1".into());
        }
        let stop = match (self.total, self.duration) {
            (Some(0), _) => return invalid("--total must be at least 1".into()),
            (Some(total), _) => Stop::Total(total),
            (None, Some(d)) if d.is_zero() => return invalid("--duration must be positive".into()),
            (None, Some(duration)) => Stop::Duration(duration),
            // A load's natural end is one pass over the key space.
            (None, None) if self.workload == Workload::Load => {
                Stop::Total(self.key_space.div_ceil(self.batch))
            }
            (None, None) => Stop::Total(DEFAULT_TOTAL),
        };
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return invalid(format!(
                "--read-ratio must be within 0..=1, not {}",
                self.read_ratio
            ));
        }
        if self.watchers == 0 || self.streams == 0 {
            return invalid("--watchers and --streams must be at least 1".into());
        }
        if self.streams > self.watchers {
            return invalid(format!(
                "--streams {} exceeds --watchers {}: a stream without a watcher measures nothing",
                self.streams, self.watchers
            ));
        }
        if self.elections == 0 || self.observers == 0 {
            return invalid("--elections and --observers must be at least 1".into());
        }
        let timestamped = matches!(self.workload, Workload::Watch | Workload::Election);
        if timestamped && self.value_size < TIMESTAMP_BYTES {
            return invalid(format!(
                "the {} workload needs --value-size of at least {TIMESTAMP_BYTES} to carry the \
                 send time",
                self.workload.name()
            ));
        }
        if self.lease_ttl <= 0 {
            return invalid("--lease-ttl must be positive".into());
        }
        if self.first_lease_id <= 0 {
            return invalid("--first-lease-id must be positive".into());
        }
        if self.timeout.is_zero() {
            return invalid("--timeout must be positive".into());
        }
        Ok(Config {
            workload: self.workload,
            endpoints,
            conns: self.conns,
            clients: self.clients,
            keys,
            value_size: self.value_size,
            pace,
            stop,
            consistency: self.consistency,
            read_ratio: self.read_ratio,
            watchers: self.watchers,
            streams: self.streams,
            elections: self.elections,
            observers: self.observers,
            lease_ttl: self.lease_ttl,
            first_lease_id: self.first_lease_id,
            batch: self.batch,
            prefill: self.prefill,
            timeout: self.timeout,
            seed: self.seed.unwrap_or_else(rand::random),
            json_out: self.json_out.clone(),
            plot_dir: self.plot_dir.clone(),
            options: self,
        })
    }
}

/// `host:port` as `http://host:port`; a URL with a scheme is kept as it is.
fn with_scheme(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options::default()
    }

    #[test]
    fn defaults_validate() {
        let config = options().validate().expect("defaults are valid");
        assert_eq!(config.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(config.pace, Pace::Closed);
        assert_eq!(config.stop, Stop::Total(DEFAULT_TOTAL));
    }

    #[test]
    fn rate_and_duration_make_an_open_timed_run() {
        let config = Options {
            rate: Some(250.0),
            duration: Some(Duration::from_secs(5)),
            seed: Some(9),
            ..options()
        }
        .validate()
        .expect("valid");
        assert_eq!(config.pace, Pace::Open { rate: 250.0 });
        assert_eq!(config.stop, Stop::Duration(Duration::from_secs(5)));
        assert_eq!(config.seed, 9);
    }

    #[test]
    fn a_load_makes_one_pass_over_the_key_space_by_default() {
        let load = |key_space, total| {
            Options {
                workload: Workload::Load,
                key_space,
                batch: 100,
                total,
                ..options()
            }
            .validate()
            .expect("valid")
            .stop
        };
        assert_eq!(load(1000, None), Stop::Total(10));
        assert_eq!(load(1001, None), Stop::Total(11), "a last, partial txn");
        assert_eq!(load(1000, Some(30)), Stop::Total(30), "three passes");
    }

    #[test]
    fn inconsistent_options_are_refused() {
        let refused = |o: Options, needle: &str| {
            let err = o.validate().expect_err("invalid");
            assert!(err.to_string().contains(needle), "{err}");
        };
        refused(
            Options {
                clients: 0,
                ..options()
            },
            "--clients",
        );
        refused(
            Options {
                rate: Some(0.0),
                ..options()
            },
            "--rate",
        );
        refused(
            Options {
                rate: Some(f64::NAN),
                ..options()
            },
            "--rate",
        );
        refused(
            Options {
                total: Some(0),
                ..options()
            },
            "--total",
        );
        refused(
            Options {
                read_ratio: 1.5,
                ..options()
            },
            "--read-ratio",
        );
        refused(
            Options {
                watchers: 2,
                streams: 3,
                ..options()
            },
            "--streams",
        );
        refused(
            Options {
                workload: Workload::Watch,
                value_size: 4,
                ..options()
            },
            "--value-size",
        );
        refused(
            Options {
                workload: Workload::Election,
                value_size: 7,
                ..options()
            },
            "--value-size",
        );
        refused(
            Options {
                observers: 0,
                ..options()
            },
            "--observers",
        );
        refused(
            Options {
                elections: 0,
                ..options()
            },
            "--elections",
        );
        refused(
            Options {
                endpoints: vec![" ".into()],
                ..options()
            },
            "--endpoints",
        );
        refused(
            Options {
                key_size: 3,
                ..options()
            },
            "--key-size",
        );
        refused(
            Options {
                batch: 0,
                ..options()
            },
            "--batch",
        );
    }
}
