//! One run: start a cluster, drive it with the clients, the lease clients and the watchers
//! while the nemesis injects faults, heal, read every key once more, wait for the leases to
//! expire, let the watchers confirm the last revision and read the reference watches, and
//! judge the histories and the members' final states (data and membership).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::checks::{self, Finding, Histories};
use crate::cluster::{rampart_binary, Cluster};
use crate::election_check::ElectionSummary;
use crate::elections::{self, ElectionOptions};
use crate::history::{self, Clock, LeaseHistory, LockHistory, Record, WatchHistory, WatcherLog};
use crate::lease_check::{self, LeaseSummary};
use crate::leases::{self, LeaseOptions};
use crate::lock_check::LockSummary;
use crate::locks::{self, LockOptions};
use crate::membership::MembershipCounts;
use crate::nemesis::{self, FaultKind};
use crate::watch_check::WatchSummary;
use crate::watchers::{self, EndRevision, WatcherOptions, REFERENCE_ID};
use crate::workload::{self, WorkloadOptions};

/// How long the members may take to agree on a revision once healed.
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the members may take to list the same voters once converged.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the final reads may take in all.
const FINAL_READS_TIMEOUT: Duration = Duration::from_secs(60);

/// The watchers' events, beside `history.jsonl` ([`WatchHistory`]).
pub const WATCHES_FILE: &str = "watches.json";

/// The lease clients' operations and the final polls, beside `history.jsonl`
/// ([`LeaseHistory`]).
pub const LEASES_FILE: &str = "leases.json";

/// The lock clients' operations and leases, beside `history.jsonl` ([`LockHistory`]).
pub const LOCKS_FILE: &str = "locks.json";

/// The election clients' operations and leases and the observers' leaders, beside
/// `history.jsonl` ([`ElectionHistory`]).
pub const ELECTIONS_FILE: &str = "elections.json";

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
    /// Watchers of the clients' keys (0: no watch checks).
    pub watchers: usize,
    /// Lease clients (0: no lease checks). Their keys have a watcher of their own.
    pub lease_clients: usize,
    /// Lock clients (0: no lock checks).
    pub lock_clients: usize,
    /// Election clients (0: no election checks); each election has an observer.
    pub election_clients: usize,
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
            watchers: 3,
            lease_clients: 2,
            lock_clients: locks::DEFAULT_CLIENTS,
            election_clients: 2,
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
    /// The membership changes the nemesis made.
    pub membership: MembershipCounts,
    pub watch: WatchSummary,
    pub lease: LeaseSummary,
    pub lock: LockSummary,
    pub election: ElectionSummary,
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
            "seed {}: {} operations ({} checked, {} unknown, {} failed), {} watch events checked \
             ({} watchers, {} resumes, {} in the reference watches), {} leases checked ({} keys, \
             {} renewals, {} revoked, {} unknown outcomes), {} lock acquisitions (guarded writes \
             {} ok, {} failed compare, {} unknown; {} abandoned, {} hand-overs timed), {} \
             elections won ({} proclaims, {} win orders checked), {} observed leaders ({} \
             values matched), {} fault rounds ({} membership changes: {} removes, {} of \
             them replacements, {} adds, {} promotes), {}",
            self.seed,
            self.operations,
            self.checked,
            self.unknown,
            self.failed,
            self.watch.events,
            self.watch.watchers,
            self.watch.resumes,
            self.watch.reference_events,
            self.lease.leases,
            self.lease.keys,
            self.lease.renewals,
            self.lease.revoked,
            self.lease.unknown,
            self.lock.acquisitions,
            self.lock.writes_ok,
            self.lock.writes_failed,
            self.lock.writes_unknown,
            self.lock.abandoned,
            self.lock.handovers_checked,
            self.election.won,
            self.election.proclaims,
            self.election.win_orders,
            self.election.observed,
            self.election.values_matched,
            self.fault_rounds,
            self.membership.changes(),
            self.membership.removes,
            self.membership.replacements,
            self.membership.adds,
            self.membership.promotes,
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
    let binary = rampart_binary(options.rampart.clone())
        .context("the rampart binary (--rampart chooses one)")?;
    tracing::info!(
        seed = options.seed,
        nodes = options.nodes,
        "--- starting the cluster ({})",
        binary.display()
    );
    // Crash filesystems only where a power loss needs them: they cost a FUSE round trip on
    // every file operation.
    let crashfs = options.faults.contains(&FaultKind::PowerLoss);
    let mut cluster = Cluster::start(&binary, options.nodes, &options.out, crashfs).await?;
    let start_revision = cluster.revision().await? + 1;

    tracing::info!(
        duration = ?options.duration,
        clients = options.clients,
        watchers = options.watchers,
        lease_clients = options.lease_clients,
        faults = ?options.faults,
        start_revision,
        "--- running clients, watchers, lease clients and nemesis"
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
    // The watched prefixes: the clients' keys, and the lease clients' if there are any.
    let mut prefixes = Vec::new();
    if options.watchers > 0 {
        prefixes.extend(std::iter::repeat_n(workload::PREFIX, options.watchers));
    }
    if options.lease_clients > 0 {
        prefixes.push(leases::PREFIX);
    }
    let (end_revision, end) = watch::channel(None);
    let watcher_tasks: Vec<_> = prefixes
        .iter()
        .enumerate()
        .map(|(id, prefix)| {
            let options = WatcherOptions {
                id: id as u32,
                prefix: prefix.to_string(),
                start_revision,
                reference: false,
                seed: options.seed,
            };
            tokio::spawn(watchers::follow(
                cluster.client_urls(),
                options,
                clock,
                end.clone(),
            ))
        })
        .collect();
    let clients = tokio::spawn(workload::run(
        cluster.client_urls(),
        workload_options.clone(),
        clock,
        deadline,
    ));
    let lease_clients = tokio::spawn(leases::run(
        cluster.client_urls(),
        LeaseOptions {
            clients: options.lease_clients,
            seed: options.seed,
        },
        clock,
        deadline,
    ));
    let lock_clients = tokio::spawn(locks::run(
        cluster.client_urls(),
        LockOptions {
            clients: options.lock_clients,
            seed: options.seed,
        },
        clock,
        deadline,
    ));
    let election_clients = (options.election_clients > 0).then(|| {
        tokio::spawn(elections::run(
            cluster.client_urls(),
            ElectionOptions {
                clients: options.election_clients,
                seed: options.seed,
            },
            clock,
            deadline,
        ))
    });
    let events = nemesis::run(&mut cluster, &options.faults, options.seed, clock, deadline).await;
    let faults_ended = clock.now();
    let mut records: Vec<Record> = clients.await.context("the clients panicked")?;
    let lease_records = lease_clients.await.context("the lease clients panicked")?;
    let lock_records = lock_clients.await.context("the lock clients panicked")?;
    let elections = match election_clients {
        Some(task) => Some(task.await.context("the election clients panicked")?),
        None => None,
    };

    tracing::info!("--- final reads of every key");
    let keys = workload::keys_of(&records);
    let final_deadline = Instant::now() + FINAL_READS_TIMEOUT;
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

    let mut polls = Vec::new();
    if options.lease_clients > 0 {
        let until = lease_check::latest_deadline(&lease_records, faults_ended);
        tracing::info!(
            lease_operations = lease_records.len(),
            "--- waiting for the leases to expire (at most {:?})",
            Duration::from_nanos(until.saturating_sub(clock.now()))
        );
        // A little past the deadline, so that a key still there is seen there.
        let until = clock.at(Duration::from_nanos(until)) + Duration::from_secs(1);
        polls = leases::await_expiry(&cluster.client_urls(), clock, until).await;
    }

    tracing::info!("--- checking convergence");
    let (converged, mut findings) = checks::convergence(&cluster, CONVERGENCE_TIMEOUT).await;
    findings.extend(checks::membership_converged(&cluster, MEMBERSHIP_TIMEOUT).await);

    let mut watches = None;
    if !prefixes.is_empty() {
        let end_at = match converged {
            Some(revision) => revision,
            // The watchers will not confirm it, and say so; the members' disagreement is a
            // finding already.
            None => cluster.revision().await.unwrap_or(i64::MAX),
        };
        tracing::info!(end_revision = end_at, "--- letting the watchers finish");
        let _ = end_revision.send(Some(end_at));
        let mut logs: Vec<WatcherLog> = Vec::new();
        for task in watcher_tasks {
            logs.push(task.await.context("a watcher panicked")?);
        }
        tracing::info!("--- reading the reference watches");
        logs.extend(
            reference_watches(
                &cluster,
                &prefixes,
                start_revision,
                options.seed,
                clock,
                end,
            )
            .await?,
        );
        watches = Some(WatchHistory {
            start_revision,
            end_revision: end_at,
            watchers: logs,
        });
    }
    cluster.reap_crashed();
    findings.extend(cluster.crashes.iter().cloned().map(Finding::Crashed));
    findings.extend(
        cluster
            .not_stopped
            .iter()
            .cloned()
            .map(Finding::RemovedMemberKeptRunning),
    );
    cluster.stop().await;

    tracing::info!(operations = records.len(), "--- checking the histories");
    history::write_jsonl(&options.out.join("history.jsonl"), &records)?;
    history::write_jsonl(&options.out.join("nemesis.jsonl"), &events)?;
    let leases = (options.lease_clients > 0).then_some(LeaseHistory {
        records: lease_records,
        polls,
        faults_ended,
    });
    if let Some(watches) = &watches {
        history::write_json(&options.out.join(WATCHES_FILE), watches)?;
    }
    if let Some(leases) = &leases {
        history::write_json(&options.out.join(LEASES_FILE), leases)?;
    }
    let locks = (options.lock_clients > 0).then(|| LockHistory {
        records: lock_records.records,
        leases: lock_records.leases,
        nemesis: events.clone(),
    });
    if let Some(locks) = &locks {
        history::write_json(&options.out.join(LOCKS_FILE), locks)?;
    }
    if let Some(elections) = &elections {
        history::write_json(&options.out.join(ELECTIONS_FILE), elections)?;
    }
    let (records, verdict) = tokio::task::spawn_blocking(move || {
        let histories = Histories {
            watches: watches.as_ref(),
            leases: leases.as_ref(),
            locks: locks.as_ref(),
            elections: elections.as_ref(),
        };
        let verdict = checks::check_run(&records, histories);
        (records, verdict)
    })
    .await
    .context("the checker panicked")?;
    findings.extend(verdict.findings);

    let violation_file = if findings.is_empty() {
        // Keep the logs and the history; the data directories of a passing run are not needed.
        for member in &mut cluster.members {
            if let Err(e) = member.process.remove_data() {
                tracing::warn!("{e:#}");
            }
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
        checked: verdict.report.operations,
        unknown: records.iter().filter(|r| r.is_unknown()).count(),
        failed: records.iter().filter(|r| r.failed).count(),
        fault_rounds: events.iter().filter(|e| e.action == "fault").count(),
        membership: MembershipCounts::of(&events),
        watch: verdict.watch,
        lease: verdict.lease,
        lock: verdict.lock,
        election: verdict.election,
        findings,
        violation_file,
    })
}

/// One reference watch per watched prefix (each once), read on the healed cluster from the
/// start revision to the end revision named on `end`.
async fn reference_watches(
    cluster: &Cluster,
    prefixes: &[&str],
    start_revision: i64,
    seed: u64,
    clock: Clock,
    end: EndRevision,
) -> anyhow::Result<Vec<WatcherLog>> {
    let mut unique: Vec<&str> = prefixes.to_vec();
    unique.dedup();
    let tasks: Vec<_> = unique
        .iter()
        .enumerate()
        .map(|(i, prefix)| {
            let options = WatcherOptions {
                id: REFERENCE_ID + i as u32,
                prefix: prefix.to_string(),
                start_revision,
                reference: true,
                seed,
            };
            tokio::spawn(watchers::follow(
                cluster.client_urls(),
                options,
                clock,
                end.clone(),
            ))
        })
        .collect();
    let mut logs = Vec::new();
    for task in tasks {
        logs.push(task.await.context("a reference watch panicked")?);
    }
    Ok(logs)
}
