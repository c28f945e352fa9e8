//! `rampart`: a member of a Rampart cluster.
//!
//! Settings come from defaults, then `--config-file` (TOML), then etcd's `ETCD_*` environment
//! variables, then `RAMPART_*` ones, then flags. Every flag of etcd 3.4 is taken: most with
//! etcd's meaning, some accepted without effect (one line each at start says so), some refused
//! with a value that asks for what Rampart does not have (README.md, "etcd flags"). With none,
//! it starts a single-member cluster named `default`, serving clients on
//! http://127.0.0.1:2379, with its data in `./default.rampart`. It logs to stderr (or
//! `--log-outputs`), as `--log-level` and `--log-format` say, or as `RUST_LOG` says when that
//! is set.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use rampart_server::config::{
    double_dash_long_flags, etcd_variables, LogFormat, LogLevel, LogOutput,
};
use rampart_server::{Config, LinkFaults, Listeners, RawConfig, RunningNode};
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};

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
    let (cli, unrecognized) = parse_command_line()?;
    let file = match &cli.config_file {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    // A settings error is returned before logging starts: `main` prints it to stderr.
    let config = Config::from_raw(cli.settings.over(file))?;
    init_logging(config.log_level, config.log_format, &config.log_outputs)?;
    for line in &unrecognized {
        tracing::warn!("{line}");
    }
    for line in &config.accepted_flags {
        tracing::info!("{line}");
    }
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

/// The command line (long flags with one dash or two, as etcd takes them), with etcd's
/// `ETCD_*` variables read as etcd reads them (below the `RAMPART_*` ones and the flags); also
/// the lines to log for `ETCD_*` variables that name no flag, which etcd logs and ignores.
fn parse_command_line() -> anyhow::Result<(Cli, Vec<String>)> {
    let command = Cli::command();
    let argv = double_dash_long_flags(&command, std::env::args_os());
    let given = command
        .clone()
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| e.exit());
    let vars = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
    let etcd = etcd_variables(&command, &given, vars)?;
    let mut full = argv;
    let at = full.len().min(1);
    full.splice(at..at, etcd.args.into_iter().map(OsString::from));
    let matches = command
        .try_get_matches_from(full)
        .unwrap_or_else(|e| e.exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Ok((cli, etcd.unrecognized))
}

/// Starts writing log lines to `outputs`, as `level` and `format` say; `RUST_LOG`, when set
/// and valid, overrides `level`.
fn init_logging(level: LogLevel, format: LogFormat, outputs: &[LogOutput]) -> anyhow::Result<()> {
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
    // Colour codes only for a lone terminal: a log file or `docker logs` gets plain text.
    let ansi = match outputs {
        [LogOutput::Stderr] => std::io::IsTerminal::is_terminal(&std::io::stderr()),
        [LogOutput::Stdout] => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        _ => false,
    };
    let mut writer: Option<BoxMakeWriter> = None;
    for output in outputs {
        let next = match output {
            LogOutput::Stderr => BoxMakeWriter::new(std::io::stderr),
            LogOutput::Stdout => BoxMakeWriter::new(std::io::stdout),
            LogOutput::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| {
                        format!("invalid --log-outputs: cannot open {}", path.display())
                    })?;
                BoxMakeWriter::new(std::sync::Mutex::new(file))
            }
        };
        writer = Some(match writer {
            None => next,
            Some(before) => BoxMakeWriter::new(before.and(next)),
        });
    }
    let writer = writer.unwrap_or_else(|| BoxMakeWriter::new(std::io::stderr));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    Ok(())
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
