//! The node's configuration, layered once: defaults < config file (TOML) < etcd's `ETCD_*`
//! environment variables < `RAMPART_*` ones < command-line flags, then validated into
//! [`Config`].
//!
//! Flag and file key names follow etcd's where the meaning is the same (`--data-dir`,
//! `--initial-cluster`, ...). [`RawConfig`] is the unvalidated form: every field optional, shared
//! by clap (flags and environment) and serde (the file), so the list of settings exists once.
//! Every other flag of etcd 3.4 is a row of [`ETCD_ONLY_FLAGS`] or [`TLS_AND_AUTH_FLAGS`]:
//! accepted without effect, or refused with a value that asks for what Rampart lacks.
//! [`etcd_variables`] reads `ETCD_*` variables as etcd's `pkg/flags` does. Member and cluster
//! ids are derived as etcd 3.4 derives them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_network::AdmissionLimits;
use rampart_storage::{ClusterIdentity, NodeId};

use crate::auth::TokenSettings;
use crate::jwt::JwtKeys;
use serde::Deserialize;
use sha1::Sha1;
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
    /// Most writes a member holds at once (its clients' in progress, and as leader those
    /// waiting to be proposed); past it a write is refused with "too many requests" (default
    /// 16384). Rampart's own.
    #[arg(long, env = "RAMPART_MAX_PENDING_WRITES")]
    pub max_pending_writes: Option<u64>,
    /// Most bytes of writes a member holds at once, as `--max-pending-writes` counts them
    /// (default 64 MiB). Rampart's own.
    #[arg(long, env = "RAMPART_MAX_PENDING_WRITE_BYTES")]
    pub max_pending_write_bytes: Option<u64>,
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
    /// How long one storage operation (a flush or fsync, an apply, a compaction chunk) may
    /// take before the member counts itself frozen, logs what is stuck and exits at once
    /// (SIGABRT), so that its supervisor restarts it and it recovers from its log; e.g. "1m"
    /// (the default); "0s" never exits.
    #[arg(long, env = "RAMPART_STORAGE_STALL_TIMEOUT")]
    pub storage_stall_timeout: Option<String>,
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
    /// Where log lines go, comma-separated: "stderr" (also etcd's "default"), "stdout", or a
    /// file path (appended to).
    #[arg(long, env = "RAMPART_LOG_OUTPUTS")]
    pub log_outputs: Option<String>,
    /// etcd's deprecated switch for debug logging: true sets --log-level to debug.
    #[arg(
        long,
        env = "RAMPART_DEBUG",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub debug: Option<bool>,
    /// How --auto-compaction-retention reads: "periodic" (a duration, in hours without a unit)
    /// or "revision" (a number of revisions).
    #[arg(long, env = "RAMPART_AUTO_COMPACTION_MODE")]
    pub auto_compaction_mode: Option<String>,
    /// History the leader keeps when it compacts by itself, as etcd's; "0" (the default) never
    /// compacts.
    #[arg(long, env = "RAMPART_AUTO_COMPACTION_RETENTION")]
    pub auto_compaction_retention: Option<String>,
    /// TEST ONLY: how often the revision auto-compactor looks, in place of etcd's 5 minutes.
    #[arg(
        long,
        env = "RAMPART_TEST_ONLY_REVISION_COMPACTION_INTERVAL",
        hide = true
    )]
    pub test_only_revision_compaction_interval: Option<String>,
    /// Shortest interval between a client's keepalive pings that etcd tolerates (default 5s);
    /// accepted, without effect: Rampart answers every ping.
    #[arg(long, env = "RAMPART_GRPC_KEEPALIVE_MIN_TIME")]
    pub grpc_keepalive_min_time: Option<String>,
    /// How long a client connection may be idle before the member pings it (default 2h; 0
    /// never pings).
    #[arg(long, env = "RAMPART_GRPC_KEEPALIVE_INTERVAL")]
    pub grpc_keepalive_interval: Option<String>,
    /// How long the member waits for the answer to its ping before it closes the connection
    /// (default 20s; 0 never pings).
    #[arg(long, env = "RAMPART_GRPC_KEEPALIVE_TIMEOUT")]
    pub grpc_keepalive_timeout: Option<String>,
    /// Most concurrent calls (HTTP/2 streams) one client connection may have open (default
    /// 4294967295, etcd's).
    #[arg(long, env = "RAMPART_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Comma-separated origins (`scheme://host:port`) whose browsers may read the client URLs'
    /// HTTP answers (the JSON gateway, /health, /metrics), or "*" for any (default "*", etcd's).
    #[arg(long, env = "RAMPART_CORS")]
    pub cors: Option<String>,
    /// Comma-separated host names that plain-HTTP requests to the client URLs may name in their
    /// Host header (etcd's guard against DNS rebinding), or "*" for any (default "*", etcd's).
    #[arg(long, env = "RAMPART_HOST_WHITELIST")]
    pub host_whitelist: Option<String>,
    /// The etcd 3.4 flags that Rampart accepts without effect or refuses (see
    /// [`ETCD_ONLY_FLAGS`] and [`TLS_AND_AUTH_FLAGS`]): command line and environment only.
    #[command(flatten)]
    #[serde(skip)]
    pub etcd_only: EtcdOnly,

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

    // Authentication (etcd's flags; `crate::auth`).
    /// Kind of the tokens Authenticate hands out: "simple" (etcd's default) or
    /// "jwt,sign-method=RS256,pub-key=FILE,priv-key=FILE[,ttl=5m]" (JSON Web Tokens, any
    /// member with the public key verifies them).
    #[arg(long, env = "RAMPART_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// Cost of the bcrypt hashes of users' passwords, from 4 to 31 (default 10, etcd's).
    #[arg(long, env = "RAMPART_BCRYPT_COST")]
    pub bcrypt_cost: Option<u32>,
    /// Seconds a simple token stays valid after its last use (default 300, etcd's).
    #[arg(long, env = "RAMPART_AUTH_TOKEN_TTL")]
    pub auth_token_ttl: Option<u64>,
}

impl RawConfig {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
            path: path.to_owned(),
            reason: source.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| {
            // etcd's --config-file is YAML: say so rather than leave a TOML parse error alone.
            let yaml = path
                .extension()
                .is_some_and(|ext| ext == "yml" || ext == "yaml");
            let hint = if yaml {
                "; Rampart's configuration file is TOML with its flag names as keys (etcd's \
                 YAML file is not read: pass its settings as flags or ETCD_* variables)"
            } else {
                ""
            };
            ConfigError::File {
                path: path.to_owned(),
                reason: format!("{e}{hint}"),
            }
        })
    }

    /// Settings of `self`, with each unset one taken from `lower`.
    pub fn over(self, lower: RawConfig) -> RawConfig {
        macro_rules! pick {
            ($($field:ident),* $(,)?) => {
                RawConfig {
                    etcd_only: self.etcd_only.over(lower.etcd_only),
                    $($field: self.$field.or(lower.$field)),*
                }
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
            max_pending_writes,
            max_pending_write_bytes,
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
            storage_stall_timeout,
            experimental_peer_fault_injection,
            log_level,
            log_format,
            log_outputs,
            debug,
            auto_compaction_mode,
            auto_compaction_retention,
            test_only_revision_compaction_interval,
            grpc_keepalive_min_time,
            grpc_keepalive_interval,
            grpc_keepalive_timeout,
            max_concurrent_streams,
            cors,
            host_whitelist,
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
            // Authentication
            auth_token,
            bcrypt_cost,
            auth_token_ttl,
        )
    }
}

/// The browser origins `--cors` allows, as etcd 3.4's access controller has them: an answer to
/// an allowed origin carries etcd's `Access-Control-Allow-*` headers (`crate::access`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cors {
    /// `*`, the default: every answer allows any origin, whether the request names one or not.
    AnyOrigin,
    /// These origins (`scheme://host:port`), each compared exactly with a request's `Origin`.
    Origins(Vec<String>),
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

/// Where log lines go (`--log-outputs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOutput {
    Stdout,
    /// Also etcd's `default` (etcd writes to journald under systemd; Rampart writes to stderr,
    /// which systemd sends to the journal).
    Stderr,
    /// A file, appended to.
    File(PathBuf),
}

/// When the leader compacts history by itself (`--auto-compaction-mode`,
/// `--auto-compaction-retention`), as etcd 3.4's `v3compactor` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Never (a retention of 0, the default).
    Off,
    /// Keep at least this much time of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// etcd's revision compactor looks every 5 minutes (`revInterval`).
pub const REVISION_COMPACTION_INTERVAL: Duration = Duration::from_secs(5 * 60);

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
    /// The bound of the writes a member holds at once (`--max-pending-writes`,
    /// `--max-pending-write-bytes`): of its own clients' in progress, and of the leader's
    /// proposal queue.
    pub pending_writes: AdmissionLimits,
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
    /// How long a storage operation may take before the member exits (`--storage-stall-timeout`);
    /// zero: never.
    pub storage_stall_timeout: Duration,
    /// Whether the peer listeners serve the test-only fault control
    /// (`--experimental-peer-fault-injection`).
    pub peer_fault_injection: bool,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// Where log lines go, each once (`--log-outputs`; stderr by default, as etcd's).
    pub log_outputs: Vec<LogOutput>,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`.
    pub auto_compaction: AutoCompaction,
    /// How often the revision auto-compactor looks: etcd's 5 minutes, shorter only through
    /// the hidden, test-only `--test-only-revision-compaction-interval`.
    pub revision_compaction_interval: Duration,
    /// How long a client connection may be idle before the member pings it; `None`: never
    /// (`--grpc-keepalive-interval` or `--grpc-keepalive-timeout` 0).
    pub grpc_keepalive_interval: Option<Duration>,
    /// How long the member waits for a ping's answer before it closes the connection.
    pub grpc_keepalive_timeout: Duration,
    /// Most concurrent HTTP/2 streams per client connection (`--max-concurrent-streams`).
    pub max_concurrent_streams: u32,
    /// The browser origins allowed to read the client URLs' HTTP answers (`--cors`).
    pub cors: Cors,
    /// The host names plain-HTTP requests to the client URLs may name (`--host-whitelist`):
    /// `None`, any (`*`, the default).
    pub host_whitelist: Option<Vec<String>>,
    /// One line each for the flags given that are accepted without effect, logged at start.
    pub accepted_flags: Vec<String>,
    /// The client side's TLS files: `None` unless `--cert-file` and `--key-file` are given.
    pub client_tls: Option<TlsFiles>,
    /// The peer side's TLS files: `None` unless `--peer-cert-file` and `--peer-key-file` are
    /// given.
    pub peer_tls: Option<TlsFiles>,
    /// `--cipher-suites`, each one of `crate::tls::CIPHER_SUITE_NAMES`; empty: rustls's.
    pub cipher_suites: Vec<String>,
    /// `--bcrypt-cost`: the cost of the password hashes this member makes.
    pub bcrypt_cost: u32,
    /// `--auth-token` (with `--auth-token-ttl` for simple tokens): the tokens Authenticate
    /// hands out.
    pub tokens: TokenSettings,
    /// This member's id, derived from its peer URLs and the cluster token, as etcd derives it.
    pub member_id: NodeId,
    /// The cluster's id, derived from the initial member ids, as etcd derives it.
    pub cluster_id: u64,
    /// The ids that builds before etcd's derivation gave the same settings (SHA-256): a data
    /// directory one of them created keeps them.
    pub legacy_identity: ClusterIdentity,
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
    /// An etcd flag with a value asking for what Rampart does not have.
    #[error("--{flag}={value} is refused: {reason}")]
    Refused {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    /// etcd's refusal of an `ETCD_*` variable for a flag also given on the command line.
    #[error(
        "conflicting environment variable {var:?} is shadowed by corresponding command-line \
         flag (either unset environment variable or disable flag)"
    )]
    ShadowedVariable { var: String },
    #[error("invalid environment variable {var}: {reason}")]
    InvalidVariable { var: String, reason: String },
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
/// `--storage-stall-timeout`'s default: far beyond any flush, fsync or apply of a working disk
/// (etcd warns of an fdatasync past 1 s), and short enough that a frozen member's clients
/// are soon free to go elsewhere.
pub const DEFAULT_STORAGE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// etcd's `grpcOverheadBytes`: what a gRPC message may hold beyond `--max-request-bytes`.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// `--max-pending-writes`'s default: room for thousands of clients' writes in flight at once.
pub const DEFAULT_MAX_PENDING_WRITES: u64 = 16 * 1024;
/// `--max-pending-write-bytes`'s default: a second or two of writes at this machine's disk
/// speed, and a bound on the memory they hold.
pub const DEFAULT_MAX_PENDING_WRITE_BYTES: u64 = 64 * 1024 * 1024;
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
        let me_peer_urls = me.peer_urls.clone();
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
        let pending_writes = AdmissionLimits {
            requests: raw.max_pending_writes.unwrap_or(DEFAULT_MAX_PENDING_WRITES),
            bytes: raw
                .max_pending_write_bytes
                .unwrap_or(DEFAULT_MAX_PENDING_WRITE_BYTES),
        };
        if pending_writes.requests == 0 {
            return Err(invalid("max-pending-writes", "0", "must be positive"));
        }
        if pending_writes.bytes == 0 {
            return Err(invalid("max-pending-write-bytes", "0", "must be positive"));
        }
        let snapshot_count = raw.snapshot_count.unwrap_or(100_000);
        if snapshot_count == 0 {
            return Err(invalid("snapshot-count", "0", "must be positive"));
        }
        let duration = |flag: &'static str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(text) => match parse_duration(&text) {
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
        // Durations for which zero means never.
        let duration_or_never =
            |flag: &'static str, value: Option<String>, default: Duration| match value {
                None => Ok(default),
                Some(text) => parse_duration(&text).map_err(|e| invalid(flag, text, e)),
            };
        let corrupt_check_time = duration_or_never(
            "experimental-corrupt-check-time",
            raw.experimental_corrupt_check_time,
            Duration::ZERO,
        )?;
        let storage_stall_timeout = duration_or_never(
            "storage-stall-timeout",
            raw.storage_stall_timeout,
            DEFAULT_STORAGE_STALL_TIMEOUT,
        )?;
        let quota_backend_bytes = match raw.quota_backend_bytes.unwrap_or(0) {
            0 => Some(DEFAULT_QUOTA_BACKEND_BYTES),
            n if n < 0 => None,
            n => Some(n as u64),
        };
        let log_level = match raw.log_level.as_deref() {
            // etcd's deprecated --debug wins over --log-level, as in etcd.
            _ if raw.debug == Some(true) => LogLevel::Debug,
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
        let log_outputs = parse_log_outputs(raw.log_outputs.as_deref().unwrap_or("default"))?;
        let auto_compaction = parse_auto_compaction(
            raw.auto_compaction_mode.as_deref(),
            raw.auto_compaction_retention.as_deref(),
        )?;
        let revision_compaction_interval = duration(
            "test-only-revision-compaction-interval",
            raw.test_only_revision_compaction_interval,
            REVISION_COMPACTION_INTERVAL,
        )?;
        let go_duration = |flag: &'static str, value: Option<String>, default: Duration| {
            value.map_or(Ok(default), |text| {
                parse_go_duration(&text).map_err(|reason| invalid(flag, text, reason))
            })
        };
        let mut accepted_flags = Vec::new();
        if let Some(text) = raw.grpc_keepalive_min_time {
            go_duration(
                "grpc-keepalive-min-time",
                Some(text.clone()),
                Duration::ZERO,
            )?;
            accepted_flags.push(format!(
                "--grpc-keepalive-min-time={text} is accepted without effect: Rampart's HTTP/2 \
                 server answers every client ping and closes no connection for pinging often"
            ));
        }
        let keepalive_interval = go_duration(
            "grpc-keepalive-interval",
            raw.grpc_keepalive_interval,
            Duration::from_secs(2 * 3600),
        )?;
        let grpc_keepalive_timeout = go_duration(
            "grpc-keepalive-timeout",
            raw.grpc_keepalive_timeout,
            Duration::from_secs(20),
        )?;
        // etcd pings only when both are positive.
        let grpc_keepalive_interval = (!keepalive_interval.is_zero()
            && !grpc_keepalive_timeout.is_zero())
        .then_some(keepalive_interval);
        let max_concurrent_streams = raw.max_concurrent_streams.unwrap_or(u32::MAX);
        if max_concurrent_streams == 0 {
            return Err(invalid(
                "max-concurrent-streams",
                "0",
                "must be positive (no client could make a call)",
            ));
        }
        let cors = match raw.cors.as_deref() {
            None | Some("*") => Cors::AnyOrigin,
            Some(value) => Cors::Origins(
                parse_urls("cors", value, check_url)?
                    .into_iter()
                    .map(|url| url.trim_end_matches('/').to_string())
                    .collect(),
            ),
        };
        // As etcd's: the names as given, split at commas (an empty one allows a request
        // without a host name); "*" among them allows any.
        let host_whitelist = raw
            .host_whitelist
            .map(|value| value.split(',').map(str::to_string).collect::<Vec<_>>())
            .filter(|hosts| !hosts.iter().any(|h| h == "*"));
        accepted_flags.extend(raw.etcd_only.check()?);
        let (bcrypt_cost, tokens) = auth_settings(
            raw.auth_token.as_deref(),
            raw.bcrypt_cost,
            raw.auth_token_ttl,
            &mut accepted_flags,
        )?;
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
        let cluster_id = cluster_id(&initial_cluster);
        let legacy_identity = ClusterIdentity {
            cluster_id: legacy_cluster_id(&initial_cluster, &initial_cluster_token),
            member_id: legacy_member_id(&me_peer_urls, &initial_cluster_token),
        };
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
            pending_writes,
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
            storage_stall_timeout,
            peer_fault_injection: raw.experimental_peer_fault_injection.unwrap_or(false),
            log_level,
            log_format,
            log_outputs,
            auto_compaction,
            revision_compaction_interval,
            grpc_keepalive_interval,
            grpc_keepalive_timeout,
            max_concurrent_streams,
            cors,
            host_whitelist,
            accepted_flags,
            client_tls,
            peer_tls,
            cipher_suites,
            bcrypt_cost,
            tokens,
            member_id,
            cluster_id,
            legacy_identity,
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
    let addrs: Vec<SocketAddr> = host_port
        .to_socket_addrs()
        .map_err(|e| format!("{url:?} does not name host:port: {e}"))?
        .collect();
    // As Go's listener, which etcd uses: `localhost` binds 127.0.0.1, where clients look
    // first, even where the resolver lists ::1 before it.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
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

/// A member's id, as etcd 3.4 derives it (`membership.NewMember`): the first 8 bytes, big
/// endian, of the SHA-1 of its sorted peer URLs and the cluster token, so the same flags give
/// etcd's ids. Never 0 (openraft and etcd use 0 for "none").
pub fn member_id(peer_urls: &[String], token: &str) -> NodeId {
    let mut hasher = Sha1::new();
    for url in sorted(peer_urls) {
        hasher.update(url.as_bytes());
    }
    hasher.update(token.as_bytes());
    first_u64(&hasher.finalize()).max(1)
}

/// The id of a member added to a running cluster, as etcd 3.4's `MemberAdd` derives it: its
/// sorted peer URLs and the time of the add in whole seconds (in decimal), with no cluster
/// token, so that a member added again on the URLs of a removed one gets a new id. Never 0.
pub fn added_member_id(peer_urls: &[String], unix_secs: u64) -> NodeId {
    let mut hasher = Sha1::new();
    for url in sorted(peer_urls) {
        hasher.update(url.as_bytes());
    }
    hasher.update(unix_secs.to_string().as_bytes());
    first_u64(&hasher.finalize()).max(1)
}

/// The cluster's id, as etcd 3.4 derives it (`RaftCluster.genID`): the first 8 bytes, big
/// endian, of the SHA-1 of the sorted initial member ids, each 8 bytes big endian.
pub fn cluster_id(members: &[InitialMember]) -> u64 {
    let mut ids: Vec<NodeId> = members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    let mut hasher = Sha1::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    first_u64(&hasher.finalize()).max(1)
}

/// The member id earlier builds derived (SHA-256 of the sorted peer URLs and the token), which
/// data directories they created keep.
fn legacy_member_id(peer_urls: &[String], token: &str) -> NodeId {
    let mut hasher = Sha256::new();
    for url in sorted(peer_urls) {
        hasher.update(url.as_bytes());
    }
    hasher.update(token.as_bytes());
    first_u64(&hasher.finalize()).max(1)
}

/// The cluster id earlier builds derived (SHA-256 of their sorted member ids and the token).
fn legacy_cluster_id(members: &[InitialMember], token: &str) -> u64 {
    let mut ids: Vec<NodeId> = members
        .iter()
        .map(|m| legacy_member_id(&m.peer_urls, token))
        .collect();
    ids.sort_unstable();
    let mut hasher = Sha256::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    hasher.update(token.as_bytes());
    first_u64(&hasher.finalize()).max(1)
}

/// A duration as etcd's flags take it (Go's `time.ParseDuration`: `500ms`, `1h30m`, `1.5h`),
/// or in `humantime`'s longer forms (`10 minutes`), which earlier builds took.
fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_go_duration(text).or_else(|go| humantime::parse_duration(text).map_err(|_| go))
}

/// A non-negative duration in Go's `time.ParseDuration` syntax: `0`, or numbers (with an
/// optional fraction), each followed by a unit of `ns`, `us` (`µs`), `ms`, `s`, `m` or `h`.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (such as \"300ms\", \"5s\" or \"1h30m\")");
    let body = text.strip_prefix('+').unwrap_or(text);
    if body.starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err(bad());
    }
    let mut rest = body;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (whole, after) = rest.split_at(digits(rest));
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(digits(after)),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(bad());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("{text:?} has a number without a unit")),
            _ => return Err(bad()),
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        nanos = whole
            .checked_mul(unit_nanos)
            .and_then(|n| n.checked_add(nanos))
            .ok_or_else(bad)?;
        if !fraction.is_empty() {
            let fraction = &fraction[..fraction.len().min(18)];
            let scale = 10u128.pow(fraction.len() as u32);
            let part: u128 = fraction.parse().map_err(|_| bad())?;
            nanos += part * unit_nanos / scale;
        }
        rest = after;
    }
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| bad())
}

/// A boolean as Go's `strconv.ParseBool` reads it (etcd's boolean flags).
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// `--log-outputs`: comma-separated `default`, `stderr`, `stdout` or file paths.
fn parse_log_outputs(text: &str) -> Result<Vec<LogOutput>, ConfigError> {
    let mut outputs = Vec::new();
    for part in text.split(',').map(str::trim) {
        let output = match part {
            "" => return Err(invalid("log-outputs", text, "names an empty output")),
            "default" | "stderr" => LogOutput::Stderr,
            "stdout" => LogOutput::Stdout,
            path => LogOutput::File(PathBuf::from(path)),
        };
        if !outputs.contains(&output) {
            outputs.push(output);
        }
    }
    Ok(outputs)
}

/// etcd 3.4's reading of `--auto-compaction-mode` and `--auto-compaction-retention`
/// (`embed.parseCompactionRetention`): a whole number is hours in periodic mode and revisions
/// in revision mode; anything else is a Go duration (in revision mode, its nanoseconds count
/// revisions, as in etcd).
fn parse_auto_compaction(
    mode: Option<&str>,
    retention: Option<&str>,
) -> Result<AutoCompaction, ConfigError> {
    let revision = match mode {
        None | Some("") | Some("periodic") => false,
        Some("revision") => true,
        Some(other) => {
            return Err(invalid(
                "auto-compaction-mode",
                other,
                "must be periodic or revision",
            ))
        }
    };
    let text = retention.unwrap_or("0");
    let bad = |reason: String| invalid("auto-compaction-retention", text, reason);
    let policy = match text.parse::<i64>() {
        Ok(0) => AutoCompaction::Off,
        Ok(n) if n > 0 && revision => AutoCompaction::Revision(n),
        Ok(n) if n > 0 => {
            let secs = (n as u64)
                .checked_mul(3600)
                .ok_or_else(|| bad("is too long".into()))?;
            AutoCompaction::Periodic(Duration::from_secs(secs))
        }
        _ => {
            let period = parse_go_duration(text).map_err(bad)?;
            if period.is_zero() {
                AutoCompaction::Off
            } else if revision {
                AutoCompaction::Revision(i64::try_from(period.as_nanos()).unwrap_or(i64::MAX))
            } else {
                AutoCompaction::Periodic(period)
            }
        }
    };
    Ok(policy)
}

/// How an etcd-only flag's value is checked, as etcd's flag package would parse it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagValue {
    /// Go's booleans; the flag alone means true.
    Bool,
    /// A whole number.
    Number,
    /// A Go duration, or empty.
    Duration,
    /// Any text.
    Text,
}

impl FlagValue {
    /// The value in a form that compares as etcd would (booleans as `true`/`false`), or why
    /// etcd's flag package would refuse it.
    fn normalize(self, value: &str) -> Result<String, String> {
        match self {
            FlagValue::Bool => parse_go_bool(value)
                .map(|b| b.to_string())
                .ok_or_else(|| format!("{value:?} is not a boolean")),
            FlagValue::Number => value
                .parse::<i64>()
                .map(|n| n.to_string())
                .map_err(|_| format!("{value:?} is not a whole number")),
            FlagValue::Duration if value.is_empty() => Ok(String::new()),
            FlagValue::Duration => parse_go_duration(value).map(|_| value.to_string()),
            FlagValue::Text => Ok(value.to_string()),
        }
    }
}

/// An etcd 3.4 flag Rampart has no setting for: accepted without effect, or refused.
#[derive(Clone, Copy, Debug)]
pub struct EtcdFlag {
    pub name: &'static str,
    pub value: FlagValue,
    /// The values that ask for nothing Rampart lacks (normalized as [`FlagValue`] does);
    /// `None`: every value.
    pub inert: Option<&'static [&'static str]>,
    /// Why the flag has no effect in Rampart, or why another value than `inert` is refused.
    pub why: &'static str,
}

const fn accepted(name: &'static str, value: FlagValue, why: &'static str) -> EtcdFlag {
    EtcdFlag {
        name,
        value,
        inert: None,
        why,
    }
}

const fn refused_unless(
    name: &'static str,
    value: FlagValue,
    inert: &'static [&'static str],
    why: &'static str,
) -> EtcdFlag {
    EtcdFlag {
        name,
        value,
        inert: Some(inert),
        why,
    }
}

use FlagValue::{Bool, Duration as GoDuration, Number, Text};

const V2: &str = "Rampart serves the v3 API only";
const DISCOVERY: &str =
    "discovery is not supported: list the members in --initial-cluster (DNS names work)";
const ONLY_DISCOVERY: &str = "it matters only with --discovery, which Rampart does not support";
const ONLY_PROXY: &str = "it matters only with --proxy, which Rampart does not support";
const BATCHING: &str =
    "Rampart writes each applied Raft entry to its database at once; there is no batch to bound";

/// The etcd 3.4 flags (`etcd --help`) that Rampart takes without effect, or refuses with a
/// value that asks for something Rampart does not have. TLS and authentication flags are in
/// [`TLS_AND_AUTH_FLAGS`]; every other flag of etcd 3.4 is a field of [`RawConfig`].
pub const ETCD_ONLY_FLAGS: &[EtcdFlag] = &[
    refused_unless(
        "wal-dir",
        Text,
        &[""],
        "Rampart keeps its log in the data directory (wal/); a directory of its own is not supported",
    ),
    accepted(
        "max-snapshots",
        Number,
        "Rampart keeps one snapshot file, replaced by the next",
    ),
    accepted(
        "max-wals",
        Number,
        "Rampart removes its log segments once a snapshot covers them",
    ),
    accepted("backend-batch-interval", GoDuration, BATCHING),
    accepted("backend-batch-limit", Number, BATCHING),
    accepted(
        "initial-election-tick-advance",
        Bool,
        "openraft times a member's first election itself",
    ),
    refused_unless("discovery", Text, &[""], DISCOVERY),
    accepted("discovery-fallback", Text, ONLY_DISCOVERY),
    accepted("discovery-proxy", Text, ONLY_DISCOVERY),
    refused_unless("discovery-srv", Text, &[""], DISCOVERY),
    accepted("discovery-srv-name", Text, ONLY_DISCOVERY),
    accepted(
        "pre-vote",
        Bool,
        "openraft's followers refuse votes while their leader's lease lasts, which keeps a \
         rejoining member from disrupting the leader as pre-vote does",
    ),
    refused_unless("enable-v2", Bool, &["false"], V2),
    refused_unless(
        "enable-pprof",
        Bool,
        &["false"],
        "Rampart has no Go runtime profiles to serve",
    ),
    refused_unless(
        "logger",
        Text,
        &["zap", "capnslog"],
        "etcd's loggers are zap and capnslog; Rampart has one logger, set by --log-level, \
         --log-format and --log-outputs",
    ),
    accepted(
        "log-package-levels",
        Text,
        "capnslog's per-package levels: use --log-level (or RUST_LOG)",
    ),
    refused_unless(
        "proxy",
        Text,
        &["off"],
        "Rampart has no v2 proxy mode",
    ),
    accepted("proxy-failure-wait", Number, ONLY_PROXY),
    accepted("proxy-refresh-interval", Number, ONLY_PROXY),
    accepted("proxy-dial-timeout", Number, ONLY_PROXY),
    accepted("proxy-write-timeout", Number, ONLY_PROXY),
    accepted("proxy-read-timeout", Number, ONLY_PROXY),
    refused_unless("experimental-enable-v2v3", Text, &[""], V2),
    accepted(
        "experimental-backend-bbolt-freelist-type",
        Text,
        "a bbolt setting; Rampart's database is sled",
    ),
    accepted(
        "experimental-enable-lease-checkpoint",
        Bool,
        "Rampart always checkpoints leases' remaining TTLs \
         (--experimental-lease-checkpoint-interval)",
    ),
    accepted(
        "experimental-compaction-batch-limit",
        Number,
        "Rampart's compaction removes history in chunks of its own, each under a short lock",
    ),
    accepted(
        "experimental-warning-apply-duration",
        GoDuration,
        "Rampart does not log slow applies",
    ),
    refused_unless(
        "force-new-cluster",
        Bool,
        &["false"],
        "forcing a one-member cluster out of a member's data is not supported; restore a \
         backup with `rampartctl snapshot restore` instead",
    ),
];

const NOT_YET: &str =
    "Rampart's TLS has no CRLs, automatic certificates or certificate name checks yet";

/// The default of `--bcrypt-cost`, etcd's.
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// The default of `--auth-token-ttl`, etcd's, in seconds.
pub const DEFAULT_AUTH_TOKEN_TTL: u64 = 300;

/// `--bcrypt-cost`, and the tokens of `--auth-token` (`simple`, etcd's default, or
/// `jwt,sign-method=...,pub-key=...,priv-key=...,ttl=...`) with `--auth-token-ttl`, checked;
/// the JWT options Rampart does not know go to `accepted`, to be logged.
fn auth_settings(
    auth_token: Option<&str>,
    bcrypt_cost: Option<u32>,
    auth_token_ttl: Option<u64>,
    accepted: &mut Vec<String>,
) -> Result<(u32, TokenSettings), ConfigError> {
    let jwt = match auth_token.map(|token| token.split_once(',').unwrap_or((token, ""))) {
        None | Some(("simple", _)) => None,
        Some(("jwt", options)) => {
            let (keys, unknown) = JwtKeys::from_options(options)
                .map_err(|reason| invalid("auth-token", auth_token.unwrap_or_default(), reason))?;
            if !unknown.is_empty() {
                accepted.push(format!(
                    "--auth-token: unknown JWT options {} ignored, as etcd does",
                    unknown.join(", ")
                ));
            }
            Some(keys)
        }
        Some((kind, _)) => {
            return Err(invalid(
                "auth-token",
                kind,
                "must be \"simple\" or \"jwt,sign-method=...,pub-key=...,priv-key=...\"",
            ))
        }
    };
    let cost = bcrypt_cost.unwrap_or(DEFAULT_BCRYPT_COST);
    if !(4..=31).contains(&cost) {
        return Err(invalid(
            "bcrypt-cost",
            cost.to_string(),
            "must be from 4 to 31 (bcrypt's limits)",
        ));
    }
    let ttl = auth_token_ttl.unwrap_or(DEFAULT_AUTH_TOKEN_TTL);
    if ttl == 0 {
        return Err(invalid(
            "auth-token-ttl",
            "0",
            "must be positive (every token would expire at once)",
        ));
    }
    let tokens = match jwt {
        Some(keys) => TokenSettings::Jwt(Box::new(keys)),
        None => TokenSettings::Simple {
            ttl: Duration::from_secs(ttl),
        },
    };
    Ok((cost, tokens))
}

const fn not_yet(
    name: &'static str,
    value: FlagValue,
    default: &'static [&'static str],
) -> EtcdFlag {
    refused_unless(name, value, default, NOT_YET)
}

/// etcd 3.4's TLS flags that Rampart does not implement: refused with any value but etcd's
/// default until Rampart has them. The TLS flags Rampart implements (`--cert-file`,
/// `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, their `--peer-*` twins and
/// `--cipher-suites`) and the authentication flags (`--auth-token`, `--bcrypt-cost`,
/// `--auth-token-ttl`) are fields of [`RawConfig`].
pub const TLS_AND_AUTH_FLAGS: &[EtcdFlag] = &[
    not_yet("client-crl-file", Text, &[""]),
    not_yet("client-cert-allowed-hostname", Text, &[""]),
    not_yet("auto-tls", Bool, &["false"]),
    not_yet("peer-cert-allowed-cn", Text, &[""]),
    not_yet("peer-cert-allowed-hostname", Text, &[""]),
    not_yet("peer-auto-tls", Bool, &["false"]),
    not_yet("peer-crl-file", Text, &[""]),
    not_yet(
        "experimental-peer-skip-client-san-verification",
        Bool,
        &["false"],
    ),
];

/// Every etcd-only flag, accepted or refused.
pub fn etcd_only_flags() -> impl Iterator<Item = &'static EtcdFlag> {
    ETCD_ONLY_FLAGS.iter().chain(TLS_AND_AUTH_FLAGS)
}

/// The etcd-only flags given, by name, with their values as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdOnly(pub BTreeMap<&'static str, String>);

impl EtcdOnly {
    /// The flags of `self`, with each one not set there taken from `lower`.
    fn over(mut self, lower: EtcdOnly) -> EtcdOnly {
        for (name, value) in lower.0 {
            self.0.entry(name).or_insert(value);
        }
        self
    }

    /// One line for each flag accepted without effect; the first flag whose value etcd would
    /// not parse, or which asks for something Rampart does not have, is refused.
    fn check(&self) -> Result<Vec<String>, ConfigError> {
        let mut accepted = Vec::new();
        for flag in etcd_only_flags() {
            let Some(value) = self.0.get(flag.name) else {
                continue;
            };
            let normal = flag
                .value
                .normalize(value)
                .map_err(|reason| invalid(flag.name, value.as_str(), reason))?;
            match flag.inert {
                Some(inert) if !inert.contains(&normal.as_str()) => {
                    return Err(ConfigError::Refused {
                        flag: flag.name,
                        value: value.clone(),
                        reason: flag.why,
                    })
                }
                _ => accepted.push(format!(
                    "--{}={value} is accepted without effect: {}",
                    flag.name, flag.why
                )),
            }
        }
        Ok(accepted)
    }
}

impl clap::FromArgMatches for EtcdOnly {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut only = EtcdOnly::default();
        only.update_from_arg_matches(matches)?;
        Ok(only)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        for flag in etcd_only_flags() {
            if let Ok(Some(value)) = matches.try_get_one::<String>(flag.name) {
                self.0.insert(flag.name, value.clone());
            }
        }
        Ok(())
    }
}

impl clap::Args for EtcdOnly {
    fn augment_args(command: clap::Command) -> clap::Command {
        command.args(etcd_only_flags().map(|flag| {
            // clap keeps the names for the life of the process; the command is built once.
            let env: &'static str =
                Box::leak(flag_variable("RAMPART_", flag.name).into_boxed_str());
            let fate = match flag.inert {
                None => "accepted without effect".to_string(),
                Some(inert) => {
                    let values: Vec<&str> = inert
                        .iter()
                        .map(|v| if v.is_empty() { "empty" } else { v })
                        .collect();
                    format!("refused unless {}", values.join(" or "))
                }
            };
            let arg = clap::Arg::new(flag.name)
                .long(flag.name)
                .value_name("VALUE")
                .env(env)
                .value_parser(clap::value_parser!(String))
                .help_heading("etcd flags without a setting in Rampart")
                .help(format!("etcd's flag, {fate}: {}", flag.why));
            match flag.value {
                FlagValue::Bool => arg.num_args(0..=1).default_missing_value("true"),
                _ => arg,
            }
        }))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

/// `args` with etcd's single-dash spelling of long flags (`-name infra0`, `-data-dir=/x`),
/// which Go's flag package takes as it takes `--name`, given the second dash clap needs. Only
/// names of `command`'s long flags are respelled, so a negative value (`-1`) stays one.
pub fn double_dash_long_flags(
    command: &clap::Command,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let longs: Vec<&str> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .collect();
    let mut out = Vec::new();
    let mut ended = false;
    for arg in args {
        let respelled = match arg.to_str() {
            // After "--" every argument is a value, as in Go.
            Some("--") => {
                ended = true;
                None
            }
            Some(text) if !ended && !text.starts_with("--") => text
                .strip_prefix('-')
                .filter(|rest| longs.contains(&rest.split('=').next().unwrap_or(rest)))
                .map(|rest| std::ffi::OsString::from(format!("--{rest}"))),
            _ => None,
        };
        out.push(respelled.unwrap_or(arg));
    }
    out
}

/// A flag's environment variable, as etcd's `pkg/flags.FlagToEnv` names it:
/// `ETCD_` + `DATA_DIR` for `--data-dir`.
pub fn flag_variable(prefix: &str, flag: &str) -> String {
    format!("{prefix}{}", flag.to_uppercase().replace('-', "_"))
}

/// What etcd's environment variables add to a command line (etcd's `pkg/flags`).
#[derive(Debug, Default)]
pub struct EtcdVariables {
    /// `--flag=value` for each `ETCD_*` variable taken, to parse before the command line.
    pub args: Vec<String>,
    /// One line for each `ETCD_*` variable that names no flag, which etcd 3.4 logs and
    /// ignores (Kubernetes, for one, sets `ETCD_SERVICE_HOST` for a Service named etcd).
    pub unrecognized: Vec<String>,
}

/// Reads etcd's `ETCD_*` variables among `vars` for the flags of `command`, as etcd 3.4
/// does: `ETCD_` and the flag's name in capitals, `_` for `-`; empty ones are ignored; one
/// for a flag also given on the command line (`given`) is refused, as etcd refuses it. The
/// flag's own `RAMPART_*` variable wins over it.
pub fn etcd_variables(
    command: &clap::Command,
    given: &clap::ArgMatches,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<EtcdVariables, ConfigError> {
    let flags: BTreeMap<String, &clap::Arg> = command
        .get_arguments()
        .filter_map(|arg| Some((flag_variable("ETCD_", arg.get_long()?), arg)))
        .collect();
    let mut found = EtcdVariables::default();
    for (var, value) in vars {
        if !var.starts_with("ETCD_") {
            continue;
        }
        let Some(arg) = flags.get(&var) else {
            found
                .unrecognized
                .push(format!("unrecognized environment variable {var}={value}"));
            continue;
        };
        let id = arg.get_id().as_str();
        let long = arg.get_long().unwrap_or(id);
        if value.is_empty() || matches!(long, "help" | "version") {
            continue;
        }
        match given.value_source(id) {
            Some(clap::parser::ValueSource::CommandLine) => {
                return Err(ConfigError::ShadowedVariable { var })
            }
            // The flag's own RAMPART_* variable is set: it wins.
            Some(clap::parser::ValueSource::EnvVariable) => continue,
            _ => {}
        }
        let flag = format!("--{long}={value}");
        // Checked alone, so that a bad value is blamed on its variable.
        if let Err(e) = command
            .clone()
            .try_get_matches_from(["rampart", flag.as_str()])
        {
            let reason = e.kind().as_str().unwrap_or("invalid value").to_string();
            return Err(ConfigError::InvalidVariable {
                var,
                reason: format!("{reason} for --{long}: {value:?}"),
            });
        }
        found.args.push(flag);
    }
    Ok(found)
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
        assert_eq!(
            config.pending_writes,
            AdmissionLimits {
                requests: 16 * 1024,
                bytes: 64 * 1024 * 1024
            }
        );
    }

    #[test]
    fn pending_write_bounds_are_taken_and_zero_is_refused() {
        let config = Config::from_raw(RawConfig {
            max_pending_writes: Some(8),
            max_pending_write_bytes: Some(4096),
            ..RawConfig::default()
        })
        .unwrap();
        assert_eq!(
            config.pending_writes,
            AdmissionLimits {
                requests: 8,
                bytes: 4096
            }
        );
        for (raw, flag) in [
            (
                RawConfig {
                    max_pending_writes: Some(0),
                    ..RawConfig::default()
                },
                "max-pending-writes",
            ),
            (
                RawConfig {
                    max_pending_write_bytes: Some(0),
                    ..RawConfig::default()
                },
                "max-pending-write-bytes",
            ),
        ] {
            match Config::from_raw(raw) {
                Err(ConfigError::Invalid { flag: refused, .. }) => assert_eq!(refused, flag),
                other => panic!("{flag}=0 was not refused: {other:?}"),
            }
        }
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
            RawConfig {
                storage_stall_timeout: Some("-1s".into()),
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
        assert_eq!(default.storage_stall_timeout, Duration::from_secs(60));
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
            storage_stall_timeout: Some("0s".into()),
            ..Default::default()
        });
        assert_eq!(set.quota_backend_bytes, Some(1 << 20));
        assert!(set.initial_corrupt_check);
        assert_eq!(set.corrupt_check_time, Duration::from_secs(2));
        assert_eq!(set.storage_stall_timeout, Duration::ZERO);
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

    /// Every flag `etcd --help` of etcd 3.4.23 lists.
    const ETCD_34_FLAGS: &[&str] = &[
        "advertise-client-urls",
        "auth-token",
        "auth-token-ttl",
        "auto-compaction-mode",
        "auto-compaction-retention",
        "auto-tls",
        "backend-batch-interval",
        "backend-batch-limit",
        "bcrypt-cost",
        "cert-file",
        "cipher-suites",
        "client-cert-allowed-hostname",
        "client-cert-auth",
        "client-crl-file",
        "cors",
        "data-dir",
        "debug",
        "discovery",
        "discovery-fallback",
        "discovery-proxy",
        "discovery-srv",
        "discovery-srv-name",
        "election-timeout",
        "enable-pprof",
        "enable-v2",
        "experimental-backend-bbolt-freelist-type",
        "experimental-compaction-batch-limit",
        "experimental-corrupt-check-time",
        "experimental-enable-lease-checkpoint",
        "experimental-enable-v2v3",
        "experimental-initial-corrupt-check",
        "experimental-peer-skip-client-san-verification",
        "experimental-warning-apply-duration",
        "experimental-watch-progress-notify-interval",
        "force-new-cluster",
        "grpc-keepalive-interval",
        "grpc-keepalive-min-time",
        "grpc-keepalive-timeout",
        "heartbeat-interval",
        "host-whitelist",
        "initial-advertise-peer-urls",
        "initial-cluster",
        "initial-cluster-state",
        "initial-cluster-token",
        "initial-election-tick-advance",
        "key-file",
        "listen-client-urls",
        "listen-metrics-urls",
        "listen-peer-urls",
        "log-level",
        "log-outputs",
        "log-package-levels",
        "logger",
        "max-concurrent-streams",
        "max-request-bytes",
        "max-snapshots",
        "max-txn-ops",
        "max-wals",
        "metrics",
        "name",
        "peer-auto-tls",
        "peer-cert-allowed-cn",
        "peer-cert-allowed-hostname",
        "peer-cert-file",
        "peer-client-cert-auth",
        "peer-crl-file",
        "peer-key-file",
        "peer-trusted-ca-file",
        "pre-vote",
        "proxy",
        "proxy-dial-timeout",
        "proxy-failure-wait",
        "proxy-read-timeout",
        "proxy-refresh-interval",
        "proxy-write-timeout",
        "quota-backend-bytes",
        "snapshot-count",
        "strict-reconfig-check",
        "trusted-ca-file",
        "wal-dir",
    ];

    #[derive(clap::Parser)]
    struct CommandLine {
        #[command(flatten)]
        raw: RawConfig,
    }

    /// The configuration a command line makes, or the error it gets (clap's or the
    /// validation's) as text.
    fn from_args(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["rampart"];
        argv.extend_from_slice(args);
        let line =
            <CommandLine as clap::Parser>::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::from_raw(line.raw).map_err(|e| e.to_string())
    }

    #[test]
    fn every_etcd_34_flag_has_one_fate_and_a_row_in_the_readme() {
        use clap::CommandFactory;
        let command = CommandLine::command();
        let settings: Vec<&str> = command
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|long| !etcd_only_flags().any(|f| f.name == *long))
            .collect();
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
                .unwrap();
        let table = &readme[readme
            .find("## etcd flags")
            .expect("README has \"## etcd flags\"")..];
        for flag in ETCD_34_FLAGS {
            let as_setting = settings.contains(flag);
            let as_etcd_only = etcd_only_flags().filter(|f| f.name == *flag).count();
            assert_eq!(
                usize::from(as_setting) + as_etcd_only,
                1,
                "--{flag} must be exactly one of a setting or an etcd-only flag"
            );
            assert!(
                table.contains(&format!("| `--{flag}` |")),
                "README's etcd flags table has no row for --{flag}"
            );
        }
        for flag in etcd_only_flags() {
            assert!(
                ETCD_34_FLAGS.contains(&flag.name),
                "--{} is not etcd 3.4's",
                flag.name
            );
        }
    }

    /// A value for `flag` that asks for something, as the flag's kind reads it.
    fn asking_value(flag: &EtcdFlag) -> &'static str {
        match flag.value {
            FlagValue::Bool => "true",
            FlagValue::Number => "12345",
            FlagValue::Duration => "250ms",
            FlagValue::Text => "something",
        }
    }

    #[test]
    fn the_auth_flags_take_etcds_values_and_refuse_the_rest() {
        let config = from_args(&[]).unwrap();
        assert_eq!(config.bcrypt_cost, 10);
        assert!(
            matches!(config.tokens, TokenSettings::Simple { ttl } if ttl == Duration::from_secs(300))
        );
        let config = from_args(&[
            "--auth-token=simple",
            "--bcrypt-cost=4",
            "--auth-token-ttl=20",
        ])
        .unwrap();
        assert_eq!(config.bcrypt_cost, 4);
        assert!(
            matches!(config.tokens, TokenSettings::Simple { ttl } if ttl == Duration::from_secs(20))
        );
        for (bad, why) in [
            (
                "--auth-token=jwt,pub-key=/nonexistent/a.pem,sign-method=RS256",
                "/nonexistent/a.pem",
            ),
            ("--auth-token=jwt,ttl=1m", "sign-method is required"),
            ("--auth-token=magic", "must be \"simple\" or \"jwt"),
            ("--bcrypt-cost=3", "from 4 to 31"),
            ("--bcrypt-cost=32", "from 4 to 31"),
            ("--auth-token-ttl=0", "must be positive"),
        ] {
            let err = from_args(&[bad]).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn flags_without_effect_are_accepted_with_a_line_each() {
        let mut seen = 0;
        for flag in ETCD_ONLY_FLAGS.iter().filter(|f| f.inert.is_none()) {
            let arg = format!("--{}={}", flag.name, asking_value(flag));
            let config = from_args(&[&arg]).unwrap_or_else(|e| panic!("{arg}: {e}"));
            assert_eq!(config.accepted_flags.len(), 1, "{arg}");
            assert!(config.accepted_flags[0].starts_with(&arg), "{arg}");
            assert!(config.accepted_flags[0].contains(flag.why), "{arg}");
            seen += 1;
        }
        assert!(seen >= 15, "only {seen} accepted flags");
        // Several at once, as a production unit passes them; a boolean alone means true.
        let config = from_args(&[
            "--logger=zap",
            "--enable-v2=false",
            "--max-snapshots=5",
            "--max-wals=5",
            "--enable-pprof=false",
            "--pre-vote",
            "--grpc-keepalive-min-time=5s",
        ])
        .unwrap();
        assert_eq!(
            config.accepted_flags.len(),
            7,
            "{:?}",
            config.accepted_flags
        );
        assert!(from_args(&[]).unwrap().accepted_flags.is_empty());
    }

    #[test]
    fn flags_asking_for_what_rampart_lacks_are_refused_naming_them() {
        for flag in etcd_only_flags() {
            let Some(inert) = flag.inert else { continue };
            for value in inert {
                let arg = format!("--{}={value}", flag.name);
                from_args(&[&arg]).unwrap_or_else(|e| panic!("{arg}: {e}"));
            }
            let asking = match flag.name {
                "logger" => "glog",
                "proxy" => "on",
                _ => asking_value(flag),
            };
            let arg = format!("--{}={asking}", flag.name);
            let err = from_args(&[&arg]).unwrap_err();
            assert!(
                err.starts_with(&format!("{arg} is refused: ")),
                "{arg}: {err}"
            );
            assert!(err.ends_with(flag.why), "{arg}: {err}");
        }
        let err = from_args(&["--enable-v2"]).unwrap_err();
        assert_eq!(
            err,
            "--enable-v2=true is refused: Rampart serves the v3 API only"
        );
        let err = from_args(&["--auth-token=jwt"]).unwrap_err();
        assert!(err.contains("sign-method is required"), "{err}");
        let err = from_args(&["--auto-tls"]).unwrap_err();
        assert!(err.ends_with("certificate name checks yet"), "{err}");
        for bad in [
            "--max-wals=many",
            "--pre-vote=maybe",
            "--backend-batch-interval=soon",
        ] {
            let err = from_args(&[bad]).unwrap_err();
            let flag = bad.split('=').next().unwrap();
            assert!(err.starts_with(&format!("invalid {flag} ")), "{bad}: {err}");
        }
        let err = from_args(&["--no-such-flag=1"]).unwrap_err();
        assert!(err.contains("--no-such-flag"), "{err}");
    }

    #[test]
    fn ids_are_etcds() {
        // `etcd` 3.4.23 with no flags: member 8e9e05c52164694d in cluster cdf818194e3a8c32.
        let config = from_args(&[
            "--initial-advertise-peer-urls=http://localhost:2380",
            "--initial-cluster=default=http://localhost:2380",
        ])
        .unwrap();
        assert_eq!(config.member_id, 0x8e9e05c52164694d);
        assert_eq!(config.cluster_id, 0xcdf818194e3a8c32);
        // etcd 3.4.23 with these flags logged "starting member 2cf0c33738843148 in cluster
        // 1dfa3ac8c4dd380e" and added 229fa6c55f9481a (a) and d68a1022f6b156ef (c).
        let config = from_args(&[
            "--name=b",
            "--initial-advertise-peer-urls=http://b.example.internal:2380",
            "--initial-cluster=a=http://a.example.internal:2380,b=http://b.example.internal:2380,\
             c=http://c.example.internal:2380,c=http://10.0.0.3:2380",
            "--initial-cluster-token=prod-1",
        ])
        .unwrap();
        assert_eq!(config.member_id, 0x2cf0c33738843148);
        assert_eq!(config.cluster_id, 0x1dfa3ac8c4dd380e);
        let ids: Vec<u64> = config.initial_cluster.iter().map(|m| m.id).collect();
        assert_eq!(
            ids,
            [0x229fa6c55f9481a, 0x2cf0c33738843148, 0xd68a1022f6b156ef]
        );
        // etcd's MemberAdd at Unix time 1700000000: sha1("http://127.0.0.1:2380" "1700000000").
        let added = added_member_id(&["http://127.0.0.1:2380".to_string()], 1_700_000_000);
        assert_eq!(added, 0x71b3e183c260adbe);
    }

    #[test]
    fn directories_of_earlier_builds_keep_their_ids() {
        let config = from_args(&[]).unwrap();
        assert_eq!(
            (config.member_id, config.cluster_id),
            (0xb71f75320dc06a6c, 0x1c45a069f3a1d796)
        );
        // What builds before etcd's derivation gave the same settings (SHA-256).
        assert_eq!(
            config.legacy_identity,
            ClusterIdentity {
                member_id: 0x512fbcd0b3376eba,
                cluster_id: 0x467cea4514eff70d,
            }
        );
    }

    #[test]
    fn auto_compaction_reads_as_etcds() {
        let policy = |args: &[&str]| from_args(args).map(|c| c.auto_compaction);
        let hours = |h: u64| AutoCompaction::Periodic(Duration::from_secs(h * 3600));
        assert_eq!(policy(&[]), Ok(AutoCompaction::Off));
        assert_eq!(
            policy(&["--auto-compaction-retention=0"]),
            Ok(AutoCompaction::Off)
        );
        assert_eq!(policy(&["--auto-compaction-retention=1"]), Ok(hours(1)));
        assert_eq!(
            policy(&[
                "--auto-compaction-mode=periodic",
                "--auto-compaction-retention=72"
            ]),
            Ok(hours(72))
        );
        assert_eq!(
            policy(&["--auto-compaction-retention=30m"]),
            Ok(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            policy(&["--auto-compaction-retention=1.5h"]),
            Ok(AutoCompaction::Periodic(Duration::from_secs(5400)))
        );
        assert_eq!(
            policy(&[
                "--auto-compaction-mode=revision",
                "--auto-compaction-retention=1000"
            ]),
            Ok(AutoCompaction::Revision(1000))
        );
        // etcd reads a duration in revision mode as its nanoseconds.
        assert_eq!(
            policy(&[
                "--auto-compaction-mode=revision",
                "--auto-compaction-retention=1us"
            ]),
            Ok(AutoCompaction::Revision(1000))
        );
        for bad in [
            &["--auto-compaction-mode=daily"][..],
            &["--auto-compaction-retention=-1"],
            &["--auto-compaction-retention=often"],
        ] {
            let err = policy(bad).unwrap_err();
            assert!(
                err.starts_with("invalid --auto-compaction-"),
                "{bad:?}: {err}"
            );
        }
        let config = from_args(&[]).unwrap();
        assert_eq!(
            config.revision_compaction_interval,
            Duration::from_secs(300)
        );
        let config = from_args(&["--test-only-revision-compaction-interval=50ms"]).unwrap();
        assert_eq!(
            config.revision_compaction_interval,
            Duration::from_millis(50)
        );
    }

    #[test]
    fn grpc_settings_default_as_etcds() {
        let config = from_args(&[]).unwrap();
        assert_eq!(
            config.grpc_keepalive_interval,
            Some(Duration::from_secs(7200))
        );
        assert_eq!(config.grpc_keepalive_timeout, Duration::from_secs(20));
        assert_eq!(config.max_concurrent_streams, u32::MAX);
        let config = from_args(&[
            "--grpc-keepalive-interval=30s",
            "--grpc-keepalive-timeout=5s",
            "--max-concurrent-streams=100",
        ])
        .unwrap();
        assert_eq!(
            config.grpc_keepalive_interval,
            Some(Duration::from_secs(30))
        );
        assert_eq!(config.grpc_keepalive_timeout, Duration::from_secs(5));
        assert_eq!(config.max_concurrent_streams, 100);
        for off in ["--grpc-keepalive-interval=0", "--grpc-keepalive-timeout=0s"] {
            assert_eq!(
                from_args(&[off]).unwrap().grpc_keepalive_interval,
                None,
                "{off}"
            );
        }
        for bad in [
            "--grpc-keepalive-interval=2",
            "--grpc-keepalive-timeout=-1s",
            "--grpc-keepalive-min-time=soon",
            "--max-concurrent-streams=0",
        ] {
            let err = from_args(&[bad]).unwrap_err();
            let flag = bad.split('=').next().unwrap();
            assert!(err.starts_with(&format!("invalid {flag} ")), "{bad}: {err}");
        }
    }

    #[test]
    fn cors_is_etcds() {
        assert_eq!(from_args(&[]).unwrap().cors, Cors::AnyOrigin);
        assert_eq!(from_args(&["--cors=*"]).unwrap().cors, Cors::AnyOrigin);
        assert_eq!(
            from_args(&["--cors=http://example.com:8080,https://b.org:443/"])
                .unwrap()
                .cors,
            Cors::Origins(vec![
                "http://example.com:8080".into(),
                "https://b.org:443".into()
            ])
        );
        // etcd's refusals: no port, no scheme, a path, "*" among URLs, nothing.
        for bad in [
            "--cors=http://example.com",
            "--cors=example.com:80",
            "--cors=https://x.org:443/path",
            "--cors=http://a.com:1,*",
            "--cors=",
        ] {
            let err = from_args(&[bad]).unwrap_err();
            assert!(err.starts_with("invalid --cors "), "{bad}: {err}");
        }
    }

    #[test]
    fn host_whitelist_is_etcds() {
        assert_eq!(from_args(&[]).unwrap().host_whitelist, None);
        assert_eq!(
            from_args(&["--host-whitelist=a.example,*"])
                .unwrap()
                .host_whitelist,
            None
        );
        assert_eq!(
            from_args(&["--host-whitelist=a.example,localhost"])
                .unwrap()
                .host_whitelist,
            Some(vec!["a.example".to_string(), "localhost".to_string()])
        );
    }

    #[test]
    fn log_outputs_and_debug_are_etcds() {
        assert_eq!(from_args(&[]).unwrap().log_outputs, [LogOutput::Stderr]);
        let config = from_args(&["--log-outputs=stdout,/var/log/m.log,stderr,default"]).unwrap();
        assert_eq!(
            config.log_outputs,
            [
                LogOutput::Stdout,
                LogOutput::File("/var/log/m.log".into()),
                LogOutput::Stderr
            ]
        );
        let err = from_args(&["--log-outputs=stderr,"]).unwrap_err();
        assert!(err.starts_with("invalid --log-outputs"), "{err}");
        assert_eq!(from_args(&["--debug"]).unwrap().log_level, LogLevel::Debug);
        assert_eq!(
            from_args(&["--debug=false", "--log-level=warn"])
                .unwrap()
                .log_level,
            LogLevel::Warn
        );
    }

    #[test]
    fn durations_read_as_gos() {
        let ok = |text: &str| parse_go_duration(text).unwrap();
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("300ms"), Duration::from_millis(300));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("2m0.5s"), Duration::from_millis(120_500));
        assert_eq!(ok("10us"), Duration::from_micros(10));
        assert_eq!(ok("+5s"), Duration::from_secs(5));
        for bad in ["", "5", "-1s", "1x", "s", "1h-5m"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
        // Earlier builds' longer forms still read.
        assert_eq!(
            parse_duration("10 minutes").unwrap(),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn etcd_variables_are_read_as_etcds() {
        use clap::CommandFactory;
        let command = CommandLine::command();
        let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let given = command
            .clone()
            .try_get_matches_from(["rampart", "--name=m1"])
            .unwrap();
        let found = etcd_variables(
            &command,
            &given,
            vars(&[
                ("ETCD_MAX_TXN_OPS", "9"),
                ("ETCD_ENABLE_V2", "false"),
                ("ETCD_SERVICE_HOST", "10.0.0.1"),
                ("ETCD_WAL_DIR", ""),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(found.args, ["--max-txn-ops=9", "--enable-v2=false"]);
        assert_eq!(
            found.unrecognized,
            ["unrecognized environment variable ETCD_SERVICE_HOST=10.0.0.1"]
        );
        let err = etcd_variables(&command, &given, vars(&[("ETCD_NAME", "m2")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding \
             command-line flag (either unset environment variable or disable flag)"
        );
        let err = etcd_variables(&command, &given, vars(&[("ETCD_MAX_TXN_OPS", "lots")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid environment variable ETCD_MAX_TXN_OPS: "),
            "{err}"
        );
        assert!(err.contains("lots"), "{err}");
    }

    #[test]
    fn single_dash_long_flags_read_as_in_go() {
        use clap::CommandFactory;
        let args = [
            "rampart",
            "-name",
            "infra0",
            "-data-dir=/var/lib/etcd",
            "--quota-backend-bytes",
            "-1",
            "-h",
            "-not-a-flag",
        ];
        let respelled =
            double_dash_long_flags(&CommandLine::command(), args.map(std::ffi::OsString::from));
        assert_eq!(
            respelled,
            [
                "rampart",
                "--name",
                "infra0",
                "--data-dir=/var/lib/etcd",
                "--quota-backend-bytes",
                "-1",
                "-h",
                "-not-a-flag",
            ]
        );
    }

    #[test]
    fn localhost_listens_on_ipv4_loopback_as_etcd() {
        assert_eq!(
            socket_addr("http://localhost:2379").unwrap(),
            "127.0.0.1:2379".parse().unwrap()
        );
        let config = from_args(&[
            "--listen-client-urls=http://localhost:2379",
            "--advertise-client-urls=http://localhost:2379",
            "--listen-peer-urls=http://localhost:2380",
            "--initial-advertise-peer-urls=http://localhost:2380",
            "--initial-cluster=default=http://localhost:2380",
        ])
        .unwrap();
        assert_eq!(config.member_id, 0x8e9e05c52164694d);
    }
}
