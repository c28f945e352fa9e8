//! `rampart-chaos`: runs a Rampart cluster under faults and checks what its clients saw.
//!
//! ```sh
//! cargo run --release -p rampart-chaos -- --duration 30m
//! ```
//!
//! Exits with status 1 when a checker found a violation (the seed and the report's path are
//! printed), 2 when the harness itself failed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rampart_chaos::checks::{self, Histories};
use rampart_chaos::history::{
    self, ElectionHistory, LeaseHistory, LockHistory, Record, WatchHistory,
};
use rampart_chaos::nemesis::FaultKind;
use rampart_chaos::runner::{ELECTIONS_FILE, LEASES_FILE, LOCKS_FILE, WATCHES_FILE};
use rampart_chaos::Options;

#[derive(Parser, Debug)]
#[command(
    name = "rampart-chaos",
    about = "Runs a Rampart cluster under injected faults and checks the clients' history"
)]
struct Cli {
    /// Members in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=9))]
    nodes: u64,
    /// How long the clients and the nemesis run, e.g. "30s" or "30m".
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule and the clients' choices (default: a random one, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Keys in use at once: few, so that operations contend.
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// How long each generation of keys is used before the clients move to fresh ones (keeps
    /// each key's history small enough to check).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    key_period: Duration,
    /// Watchers of the clients' keys, which must receive every change in order, once (0: no
    /// watch checks).
    #[arg(long, default_value_t = 3)]
    watchers: usize,
    /// Lease clients, whose leases must live as long as promised and expire soon after (0: no
    /// lease checks).
    #[arg(long, default_value_t = 2)]
    lease_clients: usize,
    /// Lock clients, whose guarded writes must never interleave two holders and whose
    /// abandoned locks must pass on (0: no lock checks).
    #[arg(long, default_value_t = rampart_chaos::locks::DEFAULT_CLIENTS)]
    lock_clients: usize,
    /// Election clients, of which at most one may lead at a time, with an observer per
    /// election (0: no election checks).
    #[arg(long, default_value_t = 2)]
    election_clients: usize,
    /// Faults to inject, comma-separated: kill, pause, partition, delay, restart-all,
    /// lost-replies, power-loss (members on crash filesystems: needs FUSE), membership (a
    /// member removed or lost, added back and promoted); or default (all but power-loss and
    /// membership), all, none.
    #[arg(long, default_value = "default", value_parser = FaultKind::parse_list)]
    // Spelled out so that clap takes the parsed list as one value rather than collecting
    // repeated flags into a `Vec`.
    faults: std::vec::Vec<FaultKind>,
    /// Output directory: history, nemesis log, members' logs, violation report (default: a
    /// directory named after the seed in the system's temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The rampart binary (default: $RAMPART_BIN, else the one beside this program, built
    /// first when run through cargo).
    #[arg(long)]
    rampart: Option<PathBuf>,
    /// Check a recorded history.jsonl (and the watches.json, leases.json, locks.json and
    /// elections.json beside it, if there) instead of running a cluster.
    #[arg(long, value_name = "HISTORY")]
    check: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let seed = cli.seed.unwrap_or_else(rand::random);
    println!("rampart-chaos seed {seed}");
    let result = match &cli.check {
        Some(path) => recheck(path, seed),
        None => run(&cli, seed),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("VIOLATION with seed {seed}; replay: rampart-chaos --seed {seed}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("rampart-chaos (seed {seed}) failed: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli, seed: u64) -> anyhow::Result<bool> {
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("rampart-chaos-{seed}")));
    println!("output in {}", out.display());
    let options = Options {
        nodes: cli.nodes as usize,
        duration: cli.duration,
        seed,
        clients: cli.clients,
        keys: cli.keys,
        key_period: cli.key_period,
        watchers: cli.watchers,
        lease_clients: cli.lease_clients,
        lock_clients: cli.lock_clients,
        election_clients: cli.election_clients,
        faults: cli.faults.clone(),
        out,
        rampart: cli.rampart.clone(),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(rampart_chaos::run(&options))?;
    println!("{}", outcome.summary());
    for finding in &outcome.findings {
        println!("{}", serde_json::to_string(finding)?);
    }
    Ok(outcome.passed())
}

/// Checks a history written by an earlier run, with its watch and lease records if they are
/// beside it; a violation report goes beside it too.
fn recheck(path: &Path, seed: u64) -> anyhow::Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let records: Vec<Record> = history::read_jsonl(path)?;
    let watches: Option<WatchHistory> = read_if_there(&dir.join(WATCHES_FILE))?;
    let leases: Option<LeaseHistory> = read_if_there(&dir.join(LEASES_FILE))?;
    let locks: Option<LockHistory> = read_if_there(&dir.join(LOCKS_FILE))?;
    let elections: Option<ElectionHistory> = read_if_there(&dir.join(ELECTIONS_FILE))?;
    let histories = Histories {
        watches: watches.as_ref(),
        leases: leases.as_ref(),
        locks: locks.as_ref(),
        elections: elections.as_ref(),
    };
    let verdict = checks::check_run(&records, histories);
    println!(
        "{} operations, {} checked on {} keys; {} watch events of {} watchers; {} leases; \
         {} lock acquisitions, {} guarded writes, {} hand-overs timed; {} elections won, {} \
         win orders checked, {} observed leaders, {} values matched; {} violation(s)",
        records.len(),
        verdict.report.operations,
        verdict.report.keys,
        verdict.watch.events,
        verdict.watch.watchers,
        verdict.lease.leases,
        verdict.lock.acquisitions,
        verdict.lock.writes_ok,
        verdict.lock.handovers_checked,
        verdict.election.won,
        verdict.election.win_orders,
        verdict.election.observed,
        verdict.election.values_matched,
        verdict.findings.len()
    );
    let findings = verdict.findings;
    if findings.is_empty() {
        return Ok(true);
    }
    let file = history::write_violation(dir, seed, &findings)?;
    println!("minimal failing histories in {}", file.display());
    Ok(false)
}

/// Reads a JSON file of a run if the run wrote one.
fn read_if_there<T: for<'de> serde::Deserialize<'de>>(path: &Path) -> anyhow::Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    history::read_json(path).map(Some)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_parses() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["rampart-chaos"]).unwrap();
        assert_eq!(cli.faults, FaultKind::DEFAULT.to_vec());
        assert_eq!(cli.duration, Duration::from_secs(30));
        let cli = Cli::try_parse_from([
            "rampart-chaos",
            "--nodes=5",
            "--duration=30m",
            "--faults=partition,kill",
        ])
        .unwrap();
        assert_eq!(cli.nodes, 5);
        assert_eq!(cli.duration, Duration::from_secs(1800));
        assert_eq!(cli.faults, [FaultKind::Kill, FaultKind::Partition]);
        let cli = Cli::try_parse_from(["rampart-chaos", "--faults=membership,kill"]).unwrap();
        assert_eq!(cli.faults, [FaultKind::Kill, FaultKind::Membership]);
        assert!(Cli::try_parse_from(["rampart-chaos", "--nodes=2"]).is_err());
    }
}
