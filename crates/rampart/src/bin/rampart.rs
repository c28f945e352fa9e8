//! `rampart`: a member of a Rampart cluster.
//!
//! Settings come from defaults, then `--config-file` (TOML), then `RAMPART_*` environment
//! variables, then flags. With none, it starts a single-member cluster named `default`, serving
//! clients on http://127.0.0.1:2379, with its data in `./default.rampart`. It logs to stdout,
//! as `--log-level` and `--log-format` say, or as `RUST_LOG` says when that is set.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rampart_server::config::{LogFormat, LogLevel};
use rampart_server::{Config, LinkFaults, Listeners, RawConfig, RunningNode};

/// sled and the request path allocate and free a great deal, and mimalloc does that with less
/// CPU than glibc's allocator. It is built without transparent huge pages (`no_thp`), with which
/// it held far more resident memory than glibc's; `MIMALLOC_PURGE_DELAY=0` in the environment
/// returns freed memory sooner still. The measurements, with their dates, are in
/// benches/README.md ("What each part of the write and read paths gained").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "rampart",
    version,
    about = "A replicated key-value store speaking the etcd v3 API"
)]
struct Cli {
    /// TOML file with settings; its keys are the flag names (e.g. `data-dir = "..."`).
    #[arg(long, env = "RAMPART_CONFIG_FILE")]
    config_file: Option<PathBuf>,

    #[command(flatten)]
    settings: RawConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let file = match &cli.config_file {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    // A settings error is returned before logging starts: `main` prints it to stderr.
    let config = Config::from_raw(cli.settings.over(file))?;
    init_logging(config.log_level, config.log_format);
    let listeners = Listeners::bind(&config).await?;
    let node = RunningNode::start(config, listeners, LinkFaults::default())
        .await
        .context("cannot start")?;

    // A member stops on a signal, or by itself once removed from the cluster.
    tokio::select! {
        signal = wait_for_signal() => signal?,
        _ = node.stopped() => {}
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Starts writing log lines to stdout, as `level` and `format` say; `RUST_LOG`, when set and
/// valid, overrides `level`.
fn init_logging(level: LogLevel, format: LogFormat) {
    // openraft and sled log every election and segment at info: their warnings are what an
    // operator needs, unless the member is asked for errors only.
    let libraries = match level {
        LogLevel::Error => "error",
        _ => "warn",
    };
    let default = format!(
        "{level},openraft={libraries},sled={libraries}",
        level = level.as_directive()
    );
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        // Colour codes only for a terminal: a log file or `docker logs` gets plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot watch SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
