//! One run: start a cluster, drive it with the clients while the nemesis injects faults, heal,
//! read every key once more, and judge the history and the members' final states.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::checks::{self, Finding};
use crate::cluster::{rampart_binary, Cluster};
use crate::history::{self, Clock, Record};
use crate::nemesis::{self, FaultKind};
use crate::workload::{self, WorkloadOptions};

/// How long the members may take to agree on a revision once healed.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the final reads may take in all.
const FINAL_READS_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Members in the cluster (3 or 5).
    pub nodes: usize,
    /// How long the clients and the nemesis run.
    pub duration: Duration,
    /// Seeds the nemesis's schedule and the clients' choices.
    pub seed: u64,
    pub clients: usize,
    /// Keys in use at once.
    pub keys: usize,
    /// How long each generation of keys is used.
    pub key_period: Duration,
    /// The faults the nemesis may inject; empty for none.
    pub faults: Vec<FaultKind>,
    /// Where the history, the members' logs and data, and any violation report go.
    pub out: PathBuf,
    /// The `rampart` binary; see [`rampart_binary`] for the default.
    pub rampart: Option<PathBuf>,
}

impl Options {
    /// The defaults of the `rampart-chaos` command, with the default faults.
    pub fn new(seed: u64, out: PathBuf) -> Options {
        Options {
            nodes: 3,
            duration: Duration::from_secs(30),
            seed,
            clients: 8,
            keys: 5,
            key_period: Duration::from_secs(10),
            faults: FaultKind::DEFAULT.to_vec(),
            out,
            rampart: None,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub seed: u64,
    pub out: PathBuf,
    /// Operations recorded, final reads included.
    pub operations: usize,
    /// Operations the linearizability checker judged (all but definite failures and reads
    /// whose outcome is unknown).
    pub checked: usize,
    /// Operations whose outcome the client never learned.
    pub unknown: usize,
    /// Operations surely not carried out (refused, or never sent).
    pub failed: usize,
    /// Fault rounds the nemesis ran.
    pub fault_rounds: usize,
    pub findings: Vec<Finding>,
    /// `violation-<seed>.json`, written when there are findings.
    pub violation_file: Option<PathBuf>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.findings.is_empty()
    }

    /// One line for logs and test output.
    pub fn summary(&self) -> String {
        format!(
            "seed {}: {} operations ({} checked, {} unknown, {} failed), {} fault rounds, {}",
            self.seed,
            self.operations,
            self.checked,
            self.unknown,
            self.failed,
            self.fault_rounds,
            if self.passed() {
                "no violation".to_string()
            } else {
                format!(
                    "{} VIOLATION(S), see {}",
                    self.findings.len(),
                    self.violation_file
                        .as_ref()
                        .map_or("(not written)".into(), |p| p.display().to_string())
                )
            }
        )
    }
}

/// Runs the harness once. An `Err` is a failure of the harness itself (the cluster would not
/// start); violations are in the [`Outcome`].
pub async fn run(options: &Options) -> anyhow::Result<Outcome> {
    anyhow::ensure!(options.nodes >= 3, "--nodes must be at least 3");
    anyhow::ensure!(
        options.clients >= 1 && options.keys >= 1,
        "need clients and keys"
    );
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let binary = rampart_binary(options.rampart.clone())?;
    tracing::info!(
        seed = options.seed,
        nodes = options.nodes,
        "--- starting the cluster ({})",
        binary.display()
    );
    let mut cluster = Cluster::start(&binary, options.nodes, &options.out).await?;

    tracing::info!(
        duration = ?options.duration,
        clients = options.clients,
        faults = ?options.faults,
        "--- running clients and nemesis"
    );
    let workload_options = WorkloadOptions {
        clients: options.clients,
        keys: options.keys,
        key_period: options.key_period,
        op_timeout: Duration::from_secs(5),
        seed: options.seed,
    };
    let clock = Clock::start();
    let deadline = clock.at(options.duration);
    let clients = tokio::spawn(workload::run(
        cluster.client_urls(),
        workload_options.clone(),
        clock,
        deadline,
    ));
    let events = nemesis::run(&mut cluster, &options.faults, options.seed, clock, deadline).await;
    let mut records: Vec<Record> = clients.await.context("the clients panicked")?;

    tracing::info!("--- final reads of every key");
    let keys = workload::keys_of(&records);
    let final_deadline = tokio::time::Instant::now() + FINAL_READS_TIMEOUT;
    records.extend(
        workload::final_reads(
            &cluster.client_urls(),
            &keys,
            options.clients as u32,
            &workload_options,
            clock,
            final_deadline,
        )
        .await,
    );

    tracing::info!("--- checking convergence");
    let mut findings = checks::convergence(&cluster, CONVERGENCE_TIMEOUT).await;
    cluster.reap_crashed();
    findings.extend(cluster.crashes.iter().cloned().map(Finding::Crashed));
    cluster.stop().await;

    tracing::info!(operations = records.len(), "--- checking the history");
    history::write_jsonl(&options.out.join("history.jsonl"), &records)?;
    history::write_jsonl(&options.out.join("nemesis.jsonl"), &events)?;
    let (records, (report, history_findings)) = tokio::task::spawn_blocking(move || {
        let verdict = checks::check_history(&records);
        (records, verdict)
    })
    .await
    .context("the checker panicked")?;
    findings.extend(history_findings);

    let violation_file = if findings.is_empty() {
        // Keep the logs and the history; the data directories of a passing run are not needed.
        for member in &cluster.members {
            let _ = std::fs::remove_dir_all(&member.data_dir);
        }
        None
    } else {
        Some(history::write_violation(
            &options.out,
            options.seed,
            &findings,
        )?)
    };
    Ok(Outcome {
        seed: options.seed,
        out: options.out.clone(),
        operations: records.len(),
        checked: report.operations,
        unknown: records.iter().filter(|r| r.is_unknown()).count(),
        failed: records.iter().filter(|r| r.failed).count(),
        fault_rounds: events.iter().filter(|e| e.action == "fault").count(),
        findings,
        violation_file,
    })
}
