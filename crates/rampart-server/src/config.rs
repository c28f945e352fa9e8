//! The node's configuration, layered once: defaults < config file (TOML) < `RAMPART_*`
//! environment variables < command-line flags, then validated into [`Config`].
//!
//! Flag and file key names follow etcd's where the meaning is the same (`--data-dir`,
//! `--initial-cluster`, ...). [`RawConfig`] is the unvalidated form: every field optional, shared
//! by clap (flags and environment) and serde (the file), so the list of settings exists once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_storage::NodeId;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::tls::TlsFiles;

/// Settings as given, before defaults and validation.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    /// Human-readable name of this member.
    #[arg(long, env = "RAMPART_NAME")]
    pub name: Option<String>,
    /// Path to the data directory (default: "<name>.rampart").
    #[arg(long, env = "RAMPART_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to listen on for client traffic.
    #[arg(long, env = "RAMPART_LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// Comma-separated URLs to serve /metrics and the health endpoints on, as plain HTTP, beside
    /// the client URLs (which serve them too).
    #[arg(long, env = "RAMPART_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// "basic" or "extensive" (etcd's): Rampart serves the same metrics for both.
    #[arg(long, env = "RAMPART_METRICS")]
    pub metrics: Option<String>,
    /// Comma-separated client URLs to advertise to the rest of the cluster.
    #[arg(long, env = "RAMPART_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// Comma-separated URLs to listen on for peer traffic.
    #[arg(long, env = "RAMPART_LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,
    /// Comma-separated peer URLs of this member, as the others reach it.
    #[arg(long, env = "RAMPART_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial cluster configuration: "name1=http://host1:2380,name2=http://host2:2380".
    #[arg(long, env = "RAMPART_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// "new" to bootstrap a new cluster, "existing" to join one.
    #[arg(long, env = "RAMPART_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: Option<String>,
    /// Token that keeps separately bootstrapped clusters apart.
    #[arg(long, env = "RAMPART_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// Largest client request accepted, in bytes.
    #[arg(long, env = "RAMPART_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Most operations in one transaction.
    #[arg(long, env = "RAMPART_MAX_TXN_OPS")]
    pub max_txn_ops: Option<usize>,
    /// Time between leader heartbeats, in milliseconds.
    #[arg(long, env = "RAMPART_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,
    /// Time without a heartbeat before a follower starts an election, in milliseconds.
    #[arg(long, env = "RAMPART_ELECTION_TIMEOUT")]
    pub election_timeout: Option<u64>,
    /// Committed entries between two snapshots of the state machine (default 100000, etcd's).
    #[arg(long, env = "RAMPART_SNAPSHOT_COUNT")]
    pub snapshot_count: Option<u64>,
    /// Entries kept in the log behind a snapshot, so slow followers catch up without one.
    #[arg(long, env = "RAMPART_SNAPSHOT_CATCHUP_ENTRIES")]
    pub snapshot_catchup_entries: Option<u64>,
    /// Interval of watch progress notifications, e.g. "10m" (etcd's default) or "500ms".
    #[arg(long, env = "RAMPART_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL")]
    pub experimental_watch_progress_notify_interval: Option<String>,
    /// How often the leader records the remaining TTLs of leases through Raft, so a new leader
    /// resumes them instead of restarting them, e.g. "5s".
    #[arg(long, env = "RAMPART_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL")]
    pub experimental_lease_checkpoint_interval: Option<String>,
    /// Refuse membership changes that could cost the cluster its quorum (default true, etcd's):
    /// adding a voter while too few members run, removing one that leaves too few.
    #[arg(
        long,
        env = "RAMPART_STRICT_RECONFIG_CHECK",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub strict_reconfig_check: Option<bool>,
    /// Size of the database past which writes that add data are refused and the NOSPACE alarm
    /// is raised, in bytes: 0 is etcd's default (2 GiB), a negative value disables the quota.
    #[arg(
        long,
        env = "RAMPART_QUOTA_BACKEND_BYTES",
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: Option<i64>,
    /// Compare this member's data with its peers' before serving clients (default false).
    #[arg(
        long,
        env = "RAMPART_EXPERIMENTAL_INITIAL_CORRUPT_CHECK",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub experimental_initial_corrupt_check: Option<bool>,
    /// How often the leader compares the members' data, e.g. "1m"; "0s" (the default) never.
    #[arg(long, env = "RAMPART_EXPERIMENTAL_CORRUPT_CHECK_TIME")]
    pub experimental_corrupt_check_time: Option<String>,
    /// TEST ONLY: serve the `rampart.faults.v1.Faults` service on the peer URLs, through which
    /// anyone who reaches them can cut and delay this member's links to its peers. For
    /// fault-injection harnesses (rampart-chaos); never enable it in production.
    #[arg(
        long,
        env = "RAMPART_EXPERIMENTAL_PEER_FAULT_INJECTION",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub experimental_peer_fault_injection: Option<bool>,
    /// Lowest level of log messages written: debug, info, warn, error, panic or fatal (etcd's
    /// levels; Rampart logs nothing above error, so panic and fatal write its errors only).
    /// RUST_LOG, when set, overrides it.
    #[arg(long, env = "RAMPART_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Format of log lines: "text" (default) or "json", one object per line.
    #[arg(long, env = "RAMPART_LOG_FORMAT")]
    pub log_format: Option<String>,

    // TLS (etcd's flags; `crate::tls`). An https:// client or peer URL needs its side's files.
    /// Path to the client server's TLS certificate (PEM), served on the https:// client URLs;
    /// read again when the file changes.
    #[arg(long, env = "RAMPART_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Path to the private key (PEM) of --cert-file.
    #[arg(long, env = "RAMPART_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Path to the CA certificates (PEM) that client certificates must come from, with
    /// --client-cert-auth.
    #[arg(long, env = "RAMPART_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse, at the TLS handshake, clients without a certificate from --trusted-ca-file.
    #[arg(
        long,
        env = "RAMPART_CLIENT_CERT_AUTH",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub client_cert_auth: Option<bool>,
    /// Path to this member's peer TLS certificate (PEM): served on the https:// peer URLs and
    /// presented to the other members.
    #[arg(long, env = "RAMPART_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the private key (PEM) of --peer-cert-file.
    #[arg(long, env = "RAMPART_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the CA certificates (PEM) the other members' peer certificates come from.
    #[arg(long, env = "RAMPART_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Accept, on the peer URLs, only members with a certificate from --peer-trusted-ca-file.
    #[arg(
        long,
        env = "RAMPART_PEER_CLIENT_CERT_AUTH",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub peer_client_cert_auth: Option<bool>,
    /// Comma-separated TLS cipher suites (etcd's names, e.g.
    /// TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256) for TLS 1.2, and TLS 1.3 if any is named;
    /// default: rustls's.
    #[arg(long, env = "RAMPART_CIPHER_SUITES")]
    pub cipher_suites: Option<String>,
}

impl RawConfig {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
            path: path.to_owned(),
            reason: source.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Settings of `self`, with each unset one taken from `lower`.
    pub fn over(self, lower: RawConfig) -> RawConfig {
        macro_rules! pick {
            ($($field:ident),* $(,)?) => {
                RawConfig { $($field: self.$field.or(lower.$field)),* }
            };
        }
        pick!(
            name,
            data_dir,
            listen_client_urls,
            listen_metrics_urls,
            metrics,
            advertise_client_urls,
            listen_peer_urls,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token,
            max_request_bytes,
            max_txn_ops,
            heartbeat_interval,
            election_timeout,
            snapshot_count,
            snapshot_catchup_entries,
            experimental_watch_progress_notify_interval,
            experimental_lease_checkpoint_interval,
            strict_reconfig_check,
            quota_backend_bytes,
            experimental_initial_corrupt_check,
            experimental_corrupt_check_time,
            experimental_peer_fault_injection,
            log_level,
            log_format,
            // TLS
            cert_file,
            key_file,
            trusted_ca_file,
            client_cert_auth,
            peer_cert_file,
            peer_key_file,
            peer_trusted_ca_file,
            peer_client_cert_auth,
            cipher_suites,
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// The lowest level of log messages written (`--log-level`); etcd's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    /// Also etcd's `panic` and `fatal`: Rampart logs nothing more severe than an error.
    Error,
}

impl LogLevel {
    /// The `tracing` level name, as a log filter directive takes it.
    pub fn as_directive(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// One member of `--initial-cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub id: NodeId,
    pub peer_urls: Vec<String>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    /// `--listen-metrics-urls`: none unless given.
    pub listen_metrics_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    pub snapshot_count: u64,
    pub snapshot_catchup_entries: u64,
    pub watch_progress_notify_interval: Duration,
    pub lease_checkpoint_interval: Duration,
    /// Whether membership changes that could cost the quorum are refused
    /// (`--strict-reconfig-check`).
    pub strict_reconfig_check: bool,
    /// The database size past which writes that add data are refused (`--quota-backend-bytes`);
    /// `None` when disabled.
    pub quota_backend_bytes: Option<u64>,
    /// Whether a starting member compares its data with its peers' before serving clients
    /// (`--experimental-initial-corrupt-check`).
    pub initial_corrupt_check: bool,
    /// How often the leader compares the members' data (`--experimental-corrupt-check-time`);
    /// zero: never.
    pub corrupt_check_time: Duration,
    /// Whether the peer listeners serve the test-only fault control
    /// (`--experimental-peer-fault-injection`).
    pub peer_fault_injection: bool,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// The client side's TLS files: `None` unless `--cert-file` and `--key-file` are given.
    pub client_tls: Option<TlsFiles>,
    /// The peer side's TLS files: `None` unless `--peer-cert-file` and `--peer-key-file` are
    /// given.
    pub peer_tls: Option<TlsFiles>,
    /// `--cipher-suites`, each one of `crate::tls::CIPHER_SUITE_NAMES`; empty: rustls's.
    pub cipher_suites: Vec<String>,
    /// This member's id, derived from its peer URLs and the cluster token.
    pub member_id: NodeId,
    /// The cluster's id, derived from the initial members and the cluster token.
    pub cluster_id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid --{flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

fn invalid(flag: &'static str, value: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.into(),
        reason: reason.into(),
    }
}

pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// etcd's default `--quota-backend-bytes`, 2 GiB.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;

impl Config {
    /// Applies the defaults to `raw` and validates it.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let raw_tls = RawTls::take(&raw);
        let name = raw.name.unwrap_or_else(|| "default".to_string());
        if name.is_empty() {
            return Err(invalid("name", name, "must not be empty"));
        }
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("{name}.rampart")));
        let urls = |flag, value: Option<String>, default: &str| {
            let value = value.unwrap_or_else(|| default.to_string());
            parse_urls(flag, &value, resolves)
        };
        let listen_client_urls = urls(
            "listen-client-urls",
            raw.listen_client_urls,
            "http://127.0.0.1:2379",
        )?;
        let listen_metrics_urls = match raw.listen_metrics_urls {
            Some(value) if !value.is_empty() => {
                parse_urls("listen-metrics-urls", &value, resolves)?
            }
            _ => Vec::new(),
        };
        match raw.metrics.as_deref() {
            None | Some("basic") | Some("extensive") => {}
            Some(other) => {
                return Err(invalid(
                    "metrics",
                    other,
                    "must be \"basic\" or \"extensive\"",
                ))
            }
        }
        let advertise_client_urls = match raw.advertise_client_urls {
            Some(value) => parse_urls("advertise-client-urls", &value, check_url)?,
            None => listen_client_urls.clone(),
        };
        let listen_peer_urls = urls(
            "listen-peer-urls",
            raw.listen_peer_urls,
            "http://127.0.0.1:2380",
        )?;
        let initial_advertise_peer_urls = match raw.initial_advertise_peer_urls {
            Some(value) => parse_urls("initial-advertise-peer-urls", &value, check_url)?,
            None => listen_peer_urls.clone(),
        };
        let initial_cluster_token = raw
            .initial_cluster_token
            .unwrap_or_else(|| "etcd-cluster".to_string());
        let initial_cluster_text = raw
            .initial_cluster
            .unwrap_or_else(|| format!("{name}={}", initial_advertise_peer_urls.join(",")));
        let initial_cluster = parse_initial_cluster(&initial_cluster_text, &initial_cluster_token)?;
        let me = initial_cluster
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| {
                invalid(
                    "initial-cluster",
                    &initial_cluster_text,
                    format!("has no member named {name:?} (--name)"),
                )
            })?;
        if sorted(&me.peer_urls) != sorted(&initial_advertise_peer_urls) {
            return Err(invalid(
                "initial-cluster",
                &initial_cluster_text,
                format!(
                    "gives {name:?} the peer URLs {:?}, but --initial-advertise-peer-urls is {:?}",
                    me.peer_urls, initial_advertise_peer_urls
                ),
            ));
        }
        let member_id = me.id;
        let initial_cluster_state = match raw.initial_cluster_state.as_deref() {
            None | Some("new") => ClusterState::New,
            Some("existing") => ClusterState::Existing,
            Some(other) => {
                return Err(invalid(
                    "initial-cluster-state",
                    other,
                    "must be \"new\" or \"existing\"",
                ))
            }
        };
        let heartbeat_ms = raw.heartbeat_interval.unwrap_or(100);
        let election_ms = raw.election_timeout.unwrap_or(1000);
        if heartbeat_ms == 0 {
            return Err(invalid("heartbeat-interval", "0", "must be positive"));
        }
        if election_ms < 5 * heartbeat_ms {
            return Err(invalid(
                "election-timeout",
                election_ms.to_string(),
                format!("must be at least 5 times --heartbeat-interval ({heartbeat_ms} ms)"),
            ));
        }
        let max_request_bytes = raw.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES);
        if max_request_bytes == 0 {
            return Err(invalid("max-request-bytes", "0", "must be positive"));
        }
        let max_txn_ops = raw.max_txn_ops.unwrap_or(DEFAULT_MAX_TXN_OPS);
        if max_txn_ops == 0 {
            return Err(invalid("max-txn-ops", "0", "must be positive"));
        }
        let snapshot_count = raw.snapshot_count.unwrap_or(100_000);
        if snapshot_count == 0 {
            return Err(invalid("snapshot-count", "0", "must be positive"));
        }
        let duration = |flag: &'static str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(text) => match humantime::parse_duration(&text) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(invalid(flag, text, "must be positive")),
                Err(e) => Err(invalid(flag, text, e.to_string())),
            },
        };
        let watch_progress_notify_interval = duration(
            "experimental-watch-progress-notify-interval",
            raw.experimental_watch_progress_notify_interval,
            Duration::from_secs(600),
        )?;
        let lease_checkpoint_interval = duration(
            "experimental-lease-checkpoint-interval",
            raw.experimental_lease_checkpoint_interval,
            Duration::from_secs(5),
        )?;
        let corrupt_check_time = match raw.experimental_corrupt_check_time {
            None => Duration::ZERO,
            Some(text) => humantime::parse_duration(&text)
                .map_err(|e| invalid("experimental-corrupt-check-time", text, e.to_string()))?,
        };
        let quota_backend_bytes = match raw.quota_backend_bytes.unwrap_or(0) {
            0 => Some(DEFAULT_QUOTA_BACKEND_BYTES),
            n if n < 0 => None,
            n => Some(n as u64),
        };
        let log_level = match raw.log_level.as_deref() {
            None | Some("info") => LogLevel::Info,
            Some("debug") => LogLevel::Debug,
            Some("warn") => LogLevel::Warn,
            Some("error" | "panic" | "fatal") => LogLevel::Error,
            Some(other) => {
                return Err(invalid(
                    "log-level",
                    other,
                    "must be debug, info, warn, error, panic or fatal",
                ))
            }
        };
        let log_format = match raw.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(invalid("log-format", other, "must be text or json")),
        };
        let TlsSettings {
            client_tls,
            peer_tls,
            cipher_suites,
        } = tls_settings(
            &raw_tls,
            &listen_client_urls,
            &listen_peer_urls,
            &initial_cluster,
        )?;
        if let Some(url) = listen_metrics_urls.iter().find(|u| is_https(u)) {
            return Err(invalid(
                "listen-metrics-urls",
                url,
                "serves plain HTTP only; the https:// client URLs serve /metrics over TLS",
            ));
        }
        let cluster_id = cluster_id(&initial_cluster, &initial_cluster_token);
        Ok(Config {
            name,
            data_dir,
            listen_client_urls,
            listen_metrics_urls,
            advertise_client_urls,
            listen_peer_urls,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token,
            max_request_bytes,
            max_txn_ops,
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            election_timeout: Duration::from_millis(election_ms),
            snapshot_count,
            snapshot_catchup_entries: raw.snapshot_catchup_entries.unwrap_or(5_000),
            watch_progress_notify_interval,
            lease_checkpoint_interval,
            strict_reconfig_check: raw.strict_reconfig_check.unwrap_or(true),
            quota_backend_bytes,
            initial_corrupt_check: raw.experimental_initial_corrupt_check.unwrap_or(false),
            corrupt_check_time,
            peer_fault_injection: raw.experimental_peer_fault_injection.unwrap_or(false),
            log_level,
            log_format,
            client_tls,
            peer_tls,
            cipher_suites,
            member_id,
            cluster_id,
        })
    }

    /// How long a client request may take before it fails with "request timed out"; etcd's
    /// `ReqTimeout`: 5 s plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * self.election_timeout
    }

    /// The largest gRPC message a client may send: `--max-request-bytes` plus etcd's allowance
    /// for gRPC overhead, so that an oversized request still reaches the server's own check and
    /// gets etcd's "request is too large". Watch fragments are cut to this size too.
    pub fn max_grpc_message_bytes(&self) -> usize {
        /// etcd's `grpcOverheadBytes`.
        const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
        self.max_request_bytes + GRPC_OVERHEAD_BYTES
    }

    /// The shortest lease TTL granted, in seconds: etcd's `minTTL`, one and a half election
    /// timeouts rounded up, so a lease cannot expire during the election that follows a leader
    /// loss.
    pub fn min_lease_ttl(&self) -> i64 {
        let millis = (3 * self.election_timeout.as_millis()).div_ceil(2);
        millis.div_ceil(1000).max(1) as i64
    }
}

fn sorted(urls: &[String]) -> Vec<String> {
    let mut urls = urls.to_vec();
    urls.sort();
    urls
}

/// Splits a comma-separated list of URLs, each passing `check`: listen URLs must resolve now,
/// since they are bound at start; URLs of this or other members need only be well formed, since
/// in a container or a Kubernetes pod another member's name may resolve only once it runs (its
/// peer channel resolves it at each connection).
fn parse_urls(
    flag: &'static str,
    value: &str,
    check: fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, ConfigError> {
    let urls: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(invalid(flag, value, "needs at least one URL"));
    }
    for url in &urls {
        check(url).map_err(|reason| invalid(flag, value, reason))?;
    }
    Ok(urls)
}

/// Whether a listen URL names an address this host can bind.
fn resolves(url: &str) -> Result<(), String> {
    socket_addr(url).map(drop)
}

/// Whether `url` is `http://host:port` or `https://host:port` with a numeric port, without
/// resolving `host`.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = without_scheme(url)?;
    let host_port = rest.trim_end_matches('/');
    if host_port.contains('/') {
        return Err(format!("{url:?} must not have a path"));
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{url:?} does not name host:port")),
    }
}

/// The address an `http://host:port` or `https://host:port` URL names.
pub fn socket_addr(url: &str) -> Result<SocketAddr, String> {
    let rest = without_scheme(url)?;
    let host_port = rest.trim_end_matches('/');
    if host_port.contains('/') {
        return Err(format!("{url:?} must not have a path"));
    }
    host_port
        .to_socket_addrs()
        .map_err(|e| format!("{url:?} does not name host:port: {e}"))?
        .next()
        .ok_or_else(|| format!("{url:?} resolves to no address"))
}

/// `url` after its `http://` or `https://`.
fn without_scheme(url: &str) -> Result<&str, String> {
    url.strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))
}

/// Whether `url` is served or dialled with TLS.
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// The TLS settings as given, taken from a [`RawConfig`] before its other fields are used.
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    trusted_ca_file: Option<PathBuf>,
    client_cert_auth: bool,
    peer_cert_file: Option<PathBuf>,
    peer_key_file: Option<PathBuf>,
    peer_trusted_ca_file: Option<PathBuf>,
    peer_client_cert_auth: bool,
    cipher_suites: Option<String>,
}

impl RawTls {
    fn take(raw: &RawConfig) -> RawTls {
        RawTls {
            cert_file: raw.cert_file.clone(),
            key_file: raw.key_file.clone(),
            trusted_ca_file: raw.trusted_ca_file.clone(),
            client_cert_auth: raw.client_cert_auth.unwrap_or(false),
            peer_cert_file: raw.peer_cert_file.clone(),
            peer_key_file: raw.peer_key_file.clone(),
            peer_trusted_ca_file: raw.peer_trusted_ca_file.clone(),
            peer_client_cert_auth: raw.peer_client_cert_auth.unwrap_or(false),
            cipher_suites: raw.cipher_suites.clone(),
        }
    }
}

/// The validated TLS settings, for [`Config`]'s fields of the same names.
struct TlsSettings {
    client_tls: Option<TlsFiles>,
    peer_tls: Option<TlsFiles>,
    cipher_suites: Vec<String>,
}

/// Validates the TLS flags against the URLs: an https:// URL needs its side's certificate and
/// key (etcd's rule), and a peer side that dials https:// members needs the CA to check them.
/// The files themselves are read at start (`crate::tls::ServingTls`).
fn tls_settings(
    raw: &RawTls,
    listen_client_urls: &[String],
    listen_peer_urls: &[String],
    initial_cluster: &[InitialMember],
) -> Result<TlsSettings, ConfigError> {
    let pair = |cert_flag: &'static str,
                key_flag: &'static str,
                cert: &Option<PathBuf>,
                key: &Option<PathBuf>|
     -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some((cert.clone(), key.clone()))),
            (None, None) => Ok(None),
            (Some(cert), None) => Err(invalid(
                cert_flag,
                cert.display().to_string(),
                format!("needs --{key_flag}"),
            )),
            (None, Some(key)) => Err(invalid(
                key_flag,
                key.display().to_string(),
                format!("needs --{cert_flag}"),
            )),
        }
    };
    let client = pair("cert-file", "key-file", &raw.cert_file, &raw.key_file)?;
    if let Some(url) = listen_client_urls.iter().find(|u| is_https(u)) {
        if client.is_none() {
            return Err(invalid(
                "listen-client-urls",
                url,
                "TLS key/cert (--cert-file, --key-file) must be provided for client url with \
                 HTTPS scheme",
            ));
        }
    }
    if raw.client_cert_auth && raw.trusted_ca_file.is_none() {
        return Err(invalid(
            "client-cert-auth",
            "true",
            "needs --trusted-ca-file, the CA client certificates must come from",
        ));
    }
    let client_tls = client.map(|(cert_file, key_file)| TlsFiles {
        cert_file,
        key_file,
        trusted_ca_file: raw.trusted_ca_file.clone(),
        client_cert_auth: raw.client_cert_auth,
        prefix: "",
    });

    let peer = pair(
        "peer-cert-file",
        "peer-key-file",
        &raw.peer_cert_file,
        &raw.peer_key_file,
    )?;
    let https_peer = listen_peer_urls
        .iter()
        .chain(initial_cluster.iter().flat_map(|m| m.peer_urls.iter()))
        .find(|u| is_https(u));
    if let Some(url) = https_peer {
        if peer.is_none() || raw.peer_trusted_ca_file.is_none() {
            return Err(invalid(
                "listen-peer-urls",
                url,
                "TLS key/cert (--peer-cert-file, --peer-key-file) and \
                 --peer-trusted-ca-file must be provided for peer url with HTTPS scheme",
            ));
        }
    }
    if raw.peer_client_cert_auth && raw.peer_trusted_ca_file.is_none() {
        return Err(invalid(
            "peer-client-cert-auth",
            "true",
            "needs --peer-trusted-ca-file, the CA peer certificates must come from",
        ));
    }
    let peer_tls = peer.map(|(cert_file, key_file)| TlsFiles {
        cert_file,
        key_file,
        trusted_ca_file: raw.peer_trusted_ca_file.clone(),
        client_cert_auth: raw.peer_client_cert_auth,
        prefix: "peer-",
    });

    let mut cipher_suites = Vec::new();
    if let Some(text) = &raw.cipher_suites {
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            crate::tls::cipher_suite(name)
                .map_err(|reason| invalid("cipher-suites", text, reason))?;
            cipher_suites.push(name.to_string());
        }
    }
    Ok(TlsSettings {
        client_tls,
        peer_tls,
        cipher_suites,
    })
}

fn parse_initial_cluster(text: &str, token: &str) -> Result<Vec<InitialMember>, ConfigError> {
    let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) = entry.split_once('=').ok_or_else(|| {
            invalid(
                "initial-cluster",
                text,
                format!("{entry:?} is not name=url"),
            )
        })?;
        check_url(url).map_err(|reason| invalid("initial-cluster", text, reason))?;
        by_name
            .entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    if by_name.is_empty() {
        return Err(invalid("initial-cluster", text, "names no member"));
    }
    let members: Vec<InitialMember> = by_name
        .into_iter()
        .map(|(name, peer_urls)| InitialMember {
            id: member_id(&peer_urls, token),
            name,
            peer_urls,
        })
        .collect();
    for (i, a) in members.iter().enumerate() {
        for b in &members[i + 1..] {
            if a.peer_urls.iter().any(|u| b.peer_urls.contains(u)) {
                return Err(invalid(
                    "initial-cluster",
                    text,
                    format!("members {:?} and {:?} share a peer URL", a.name, b.name),
                ));
            }
        }
    }
    Ok(members)
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// A member's id: a hash of its sorted peer URLs and the cluster token, as etcd derives it, so
/// every node computes the same ids from the same `--initial-cluster`. Never 0 (openraft and
/// etcd use 0 for "none").
pub fn member_id(peer_urls: &[String], token: &str) -> NodeId {
    let mut hasher = Sha256::new();
    for url in sorted(peer_urls) {
        hasher.update(url.as_bytes());
    }
    hasher.update(token.as_bytes());
    first_u64(&hasher.finalize()).max(1)
}

/// The id of a member added to a running cluster (etcd's `NewMember` with a time): a hash of
/// its sorted peer URLs, the cluster token and the time of the add, so that a member added again
/// on the URLs of a removed one gets a new id. Never 0.
pub fn added_member_id(peer_urls: &[String], token: &str, unix_nanos: u128) -> NodeId {
    let mut hasher = Sha256::new();
    for url in sorted(peer_urls) {
        hasher.update(url.as_bytes());
    }
    hasher.update(token.as_bytes());
    hasher.update(unix_nanos.to_be_bytes());
    first_u64(&hasher.finalize()).max(1)
}

/// The cluster's id: a hash of its initial member ids and the token.
pub fn cluster_id(members: &[InitialMember], token: &str) -> u64 {
    let mut ids: Vec<NodeId> = members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    let mut hasher = Sha256::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    hasher.update(token.as_bytes());
    first_u64(&hasher.finalize()).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_make_a_single_node_cluster() {
        let config = Config::from_raw(RawConfig::default()).unwrap();
        assert_eq!(config.name, "default");
        assert_eq!(config.data_dir, PathBuf::from("default.rampart"));
        assert_eq!(config.listen_client_urls, vec!["http://127.0.0.1:2379"]);
        assert_eq!(config.initial_cluster.len(), 1);
        assert_eq!(config.initial_cluster[0].id, config.member_id);
        assert_eq!(config.max_request_bytes, 1536 * 1024);
        assert_eq!(config.max_txn_ops, 128);
    }

    #[test]
    fn higher_layers_win() {
        let file = RawConfig {
            name: Some("file".into()),
            max_txn_ops: Some(7),
            ..Default::default()
        };
        let flags = RawConfig {
            name: Some("flag".into()),
            ..Default::default()
        };
        let merged = flags.over(file);
        assert_eq!(merged.name.as_deref(), Some("flag"));
        assert_eq!(merged.max_txn_ops, Some(7));
    }

    #[test]
    fn three_members_agree_on_ids() {
        let cluster = "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3";
        let config = |name: &str, port: u16| {
            Config::from_raw(RawConfig {
                name: Some(name.into()),
                initial_cluster: Some(cluster.into()),
                initial_advertise_peer_urls: Some(format!("http://127.0.0.1:{port}")),
                ..Default::default()
            })
            .unwrap()
        };
        let (a, b) = (config("a", 1), config("b", 2));
        assert_eq!(a.cluster_id, b.cluster_id);
        assert_ne!(a.member_id, b.member_id);
        assert_eq!(a.initial_cluster, b.initial_cluster);
    }

    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        let cases = [
            RawConfig {
                initial_cluster_state: Some("maybe".into()),
                ..Default::default()
            },
            RawConfig {
                listen_client_urls: Some("localhost:2379".into()),
                ..Default::default()
            },
            RawConfig {
                name: Some("x".into()),
                initial_cluster: Some("y=http://127.0.0.1:2380".into()),
                ..Default::default()
            },
            RawConfig {
                election_timeout: Some(100),
                ..Default::default()
            },
            RawConfig {
                experimental_corrupt_check_time: Some("often".into()),
                ..Default::default()
            },
        ];
        for raw in cases {
            let err = Config::from_raw(raw).unwrap_err().to_string();
            assert!(err.starts_with("invalid --"), "{err}");
        }
    }

    #[test]
    fn the_quota_and_corruption_checks_default_as_etcds() {
        let config = |raw: RawConfig| Config::from_raw(raw).unwrap();
        let default = config(RawConfig::default());
        assert_eq!(default.quota_backend_bytes, Some(2 * 1024 * 1024 * 1024));
        assert!(!default.initial_corrupt_check);
        assert_eq!(default.corrupt_check_time, Duration::ZERO);
        let zero = config(RawConfig {
            quota_backend_bytes: Some(0),
            ..Default::default()
        });
        assert_eq!(zero.quota_backend_bytes, Some(2 * 1024 * 1024 * 1024));
        let off = config(RawConfig {
            quota_backend_bytes: Some(-1),
            ..Default::default()
        });
        assert_eq!(off.quota_backend_bytes, None);
        let set = config(RawConfig {
            quota_backend_bytes: Some(1 << 20),
            experimental_initial_corrupt_check: Some(true),
            experimental_corrupt_check_time: Some("2s".into()),
            ..Default::default()
        });
        assert_eq!(set.quota_backend_bytes, Some(1 << 20));
        assert!(set.initial_corrupt_check);
        assert_eq!(set.corrupt_check_time, Duration::from_secs(2));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = toml::from_str::<RawConfig>("nmae = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let ok: RawConfig = toml::from_str("name = \"x\"\nmax-txn-ops = 5").unwrap();
        assert_eq!(ok.max_txn_ops, Some(5));
    }

    #[test]
    fn peer_fault_injection_is_off_unless_asked_for() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            raw: RawConfig,
        }
        let parse = |args: &[&str]| {
            let flags = <Flags as clap::Parser>::try_parse_from(args).unwrap();
            Config::from_raw(flags.raw).unwrap().peer_fault_injection
        };
        assert!(!parse(&["rampart"]));
        assert!(parse(&["rampart", "--experimental-peer-fault-injection"]));
        assert!(!parse(&[
            "rampart",
            "--experimental-peer-fault-injection=false"
        ]));
        let file: RawConfig = toml::from_str("experimental-peer-fault-injection = true").unwrap();
        assert!(Config::from_raw(file).unwrap().peer_fault_injection);
    }

    #[test]
    fn log_flags_take_etcds_levels_and_two_formats() {
        let config = |level: Option<&str>, format: Option<&str>| {
            Config::from_raw(RawConfig {
                log_level: level.map(Into::into),
                log_format: format.map(Into::into),
                ..Default::default()
            })
        };
        let defaults = config(None, None).unwrap();
        assert_eq!(
            (defaults.log_level, defaults.log_format),
            (LogLevel::Info, LogFormat::Text)
        );
        for (name, level) in [
            ("debug", LogLevel::Debug),
            ("warn", LogLevel::Warn),
            ("panic", LogLevel::Error),
            ("fatal", LogLevel::Error),
        ] {
            assert_eq!(config(Some(name), None).unwrap().log_level, level);
        }
        assert_eq!(
            config(None, Some("json")).unwrap().log_format,
            LogFormat::Json
        );
        let err = config(Some("trace"), None).unwrap_err().to_string();
        assert!(err.starts_with("invalid --log-level \"trace\""), "{err}");
        let err = config(None, Some("xml")).unwrap_err().to_string();
        assert!(err.starts_with("invalid --log-format \"xml\""), "{err}");
    }

    #[test]
    fn tls_flags_go_with_https_urls() {
        let https = |raw: RawConfig| {
            Config::from_raw(RawConfig {
                listen_client_urls: Some("https://127.0.0.1:2379".into()),
                ..raw
            })
        };
        let err = https(RawConfig::default()).unwrap_err().to_string();
        assert!(
            err.contains("TLS key/cert (--cert-file, --key-file)"),
            "{err}"
        );
        let err = https(RawConfig {
            cert_file: Some("c.pem".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("invalid --cert-file") && err.contains("--key-file"),
            "{err}"
        );
        let err = https(RawConfig {
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
            client_cert_auth: Some(true),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs --trusted-ca-file"), "{err}");
        let config = https(RawConfig {
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
            trusted_ca_file: Some("ca.pem".into()),
            client_cert_auth: Some(true),
            cipher_suites: Some("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()),
            ..Default::default()
        })
        .unwrap();
        let client = config.client_tls.unwrap();
        assert!(client.client_cert_auth);
        assert_eq!(client.trusted_ca_file, Some(PathBuf::from("ca.pem")));
        assert!(config.peer_tls.is_none());
        assert_eq!(config.cipher_suites.len(), 1);

        let err = Config::from_raw(RawConfig {
            cipher_suites: Some("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_NOPE".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("invalid --cipher-suites")
                && err.contains("unexpected TLS cipher suite \"TLS_NOPE\""),
            "{err}"
        );
        let err = Config::from_raw(RawConfig {
            listen_peer_urls: Some("https://127.0.0.1:2380".into()),
            peer_cert_file: Some("p.pem".into()),
            peer_key_file: Some("pk.pem".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--peer-trusted-ca-file must be provided"),
            "{err}"
        );
        let err = Config::from_raw(RawConfig {
            listen_metrics_urls: Some("https://127.0.0.1:2381".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("invalid --listen-metrics-urls"), "{err}");
    }

    /// In Compose or a StatefulSet the other members' names resolve only once their
    /// containers run; the configuration must not need them to.
    #[test]
    fn member_urls_need_not_resolve_yet() {
        let config = Config::from_raw(RawConfig {
            name: Some("a".into()),
            listen_peer_urls: Some("http://127.0.0.1:2380".into()),
            initial_advertise_peer_urls: Some("http://a.not-yet.invalid:2380".into()),
            advertise_client_urls: Some("http://a.not-yet.invalid:2379".into()),
            initial_cluster: Some(
                "a=http://a.not-yet.invalid:2380,b=http://b.not-yet.invalid:2380".into(),
            ),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.initial_cluster.len(), 2);
        for bad in ["http://a.invalid", "http://a.invalid:port", "http://:2380"] {
            let err = Config::from_raw(RawConfig {
                name: Some("a".into()),
                initial_advertise_peer_urls: Some(bad.into()),
                initial_cluster: Some(format!("a={bad}")),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains("host:port"), "{err}");
        }
    }
}
