//! The harness against real `rampart` clusters, bounded for CI (a few minutes in all, one
//! test at a time; see `.config/nextest.toml`): fixed seeds with the default faults, one fresh
//! seed per run (printed), five members under partitions, membership changes (fixed seeds,
//! alone and among kills and partitions, and a fresh seed), each run with its watchers and
//! lease clients checked too; proof that the checks do fail, end to end, on a history that is not
//! linearizable, a watch that missed an event and a lease deleted early; and the regression
//! test of a bug the harness found.
//!
//! A failing run keeps its directory (history, nemesis log, members' logs and data, violation
//! report) and names it; `rampart-chaos --seed <seed>` replays its schedule.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rampart_chaos::checks::{self, Finding};
use rampart_chaos::history::{
    self, ElectionHistory, ElectionOp, ElectionOutcome, ElectionRecord, EventKind, LeaseHistory,
    LeaseOutcome, LockHistory, LockOp, LockOutcome, LockRecord, ObservedLeader, Record,
    ViolationReport, WatchHistory,
};
use rampart_chaos::linearizability::{Input, Output};
use rampart_chaos::nemesis::FaultKind;
use rampart_chaos::runner::{LEASES_FILE, WATCHES_FILE};

mod common;

use common::run_and_check;

const DEFAULT: &[FaultKind] = FaultKind::DEFAULT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_seed_1_default_faults() {
    let (outcome, _dir) = run_and_check(1, 3, Duration::from_secs(20), DEFAULT).await;
    assert!(outcome.fault_rounds >= 1, "the nemesis never struck");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_seed_2_default_faults() {
    let (outcome, _dir) = run_and_check(2, 3, Duration::from_secs(20), DEFAULT).await;
    assert!(outcome.fault_rounds >= 1, "the nemesis never struck");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_seed_3_default_faults() {
    let (outcome, _dir) = run_and_check(3, 3, Duration::from_secs(20), DEFAULT).await;
    assert!(outcome.fault_rounds >= 1, "the nemesis never struck");
}

/// A new seed on every run, so CI explores beyond the fixed ones; printed for replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_random_seed_default_faults() {
    let seed: u64 = rand::random();
    eprintln!("fresh seed {seed}: replay with `cargo run --release -p rampart-chaos -- --seed {seed} --duration 20s`");
    run_and_check(seed, 3, Duration::from_secs(20), DEFAULT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_under_partitions() {
    let (outcome, _dir) =
        run_and_check(5, 5, Duration::from_secs(15), &[FaultKind::Partition]).await;
    assert!(outcome.fault_rounds >= 1, "the nemesis never struck");
}

/// Fails unless the run made every kind of membership change: a removal, an add and a
/// promotion. (That every member came back, the run's membership check says.)
fn assert_membership_changed(outcome: &rampart_chaos::Outcome) {
    let changes = outcome.membership;
    assert!(
        changes.removes >= 1 && changes.adds >= 1 && changes.promotes >= 1,
        "seed {}: no membership round completed: {changes:?}",
        outcome.seed
    );
}

/// Membership rounds only: seed 1's first round removes the leader while it runs and adds it
/// back (a later one, when there is time, replaces a lost leader); every check holds
/// throughout, and the members end listing the same three voters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_seed_membership_changes() {
    let faults = [FaultKind::Membership];
    let (outcome, _dir) = run_and_check(1, 3, Duration::from_secs(20), &faults).await;
    assert_membership_changed(&outcome);
}

/// Membership rounds among kills and partitions: seed 1's first round isolates a member and
/// kills another, and membership rounds follow once the cluster is healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_seed_membership_with_kills_and_partitions() {
    let faults = [FaultKind::Kill, FaultKind::Partition, FaultKind::Membership];
    let (outcome, _dir) = run_and_check(1, 3, Duration::from_secs(20), &faults).await;
    assert_membership_changed(&outcome);
    assert!(
        outcome.fault_rounds >= 2,
        "only the membership round struck"
    );
}

/// A new seed on every run with membership rounds only, printed for replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_random_seed_membership_changes() {
    let seed: u64 = rand::random();
    eprintln!(
        "fresh seed {seed}: replay with `cargo run --release -p rampart-chaos -- --seed {seed} \
         --duration 20s --faults membership`"
    );
    let faults = [FaultKind::Membership];
    let (outcome, _dir) = run_and_check(seed, 3, Duration::from_secs(20), &faults).await;
    assert_membership_changed(&outcome);
}

/// Regression test, seed 3: a member forwards a client's write to the leader, the leader
/// carries it out and its answer is lost. `Node::write` used to take that for "not delivered"
/// and forward the write again, applying it twice (a value that had been overwritten came back).
/// A forward is now retried only when it certainly was not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_replies_do_not_duplicate_forwarded_writes() {
    run_and_check(3, 3, Duration::from_secs(20), &[FaultKind::LostReplies]).await;
}

/// Regression test, seed 4878157641327470543: the whole cluster is killed right after a batch
/// of writes is acknowledged; the leader restarts as leader of the same term with a commit index
/// saved before that batch, and a linearizable read on a member that had not applied the batch
/// got a read index from before it (its revision went back). A leader's read index is now at
/// least the last log index it held when it took up its term (restored or elected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_leader_restarts_in_its_term_see_every_acknowledged_write() {
    run_and_check(4878157641327470543, 3, Duration::from_secs(20), DEFAULT).await;
}

/// A recorded history in which one read is made to return a stale value fails the checks: the
/// library's, and the `rampart-chaos --check` command's, which exits 1, prints the seed and
/// writes the minimal failing history. So do the same run's watch and lease records once a
/// watcher is made to miss an event and a lease key's deletion is moved before the lease could
/// have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_falsified_history_fails_the_checks_end_to_end() {
    let seed = 42;
    let (outcome, _run_dir) = run_and_check(seed, 3, Duration::from_secs(5), &[]).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let recorded = outcome.out.join("history.jsonl");
    let mut records: Vec<Record> = history::read_jsonl(&recorded).expect("history");
    assert_eq!(records.len(), outcome.operations);
    assert!(checks::check_history(&records).1.is_empty());
    falsified_watches_and_leases_fail_the_checks(seed, &outcome.out, &records);

    // The last read of some key that saw a value, changed to an older value of that key: one
    // written and acknowledged, then overwritten by a write that completed before the read.
    let falsified = falsify_a_read(&mut records).expect("a read to falsify");
    let (_, findings) = checks::check_history(&records);
    let Some(Finding::NotLinearizable {
        violation,
        records: minimal,
    }) = findings.first()
    else {
        panic!("the falsified read went unnoticed: {findings:?}");
    };
    assert_eq!(violation.key, falsified.op.key);
    assert!(
        minimal.contains(&falsified),
        "the minimal history lacks the falsified read"
    );
    assert!(minimal.len() < violation.key_operations);

    let history_file = dir.path().join("history.jsonl");
    history::write_jsonl(&history_file, &records).expect("write history");
    let report = check_command_finds_a_violation(&history_file, seed);
    assert_eq!(report.seed, seed);
    assert!(matches!(
        &report.findings[0],
        Finding::NotLinearizable { records, .. } if records.contains(&falsified)
    ));
}

/// Drops one event of a watcher and makes one lease key's DELETE arrive just after its lease
/// was granted; `rampart-chaos --check` on the run's files must report both.
fn falsified_watches_and_leases_fail_the_checks(seed: u64, run: &Path, records: &[Record]) {
    let mut watches: WatchHistory = read_json(&run.join(WATCHES_FILE));
    let leases: LeaseHistory = read_json(&run.join(LEASES_FILE));
    let verdict = checks::check_run(
        records,
        checks::Histories {
            watches: Some(&watches),
            leases: Some(&leases),
            ..Default::default()
        },
    );
    assert!(verdict.findings.is_empty(), "{:?}", verdict.findings);

    let watcher = watches
        .watchers
        .iter_mut()
        .find(|w| !w.reference && w.prefix == "chaos/")
        .expect("a watcher of the clients' keys");
    let dropped = watcher.events.remove(watcher.events.len() / 2);

    let lease_watcher = watches
        .watchers
        .iter_mut()
        .find(|w| !w.reference && w.prefix == "lease/")
        .expect("a watcher of the lease keys");
    let deletion = lease_watcher
        .events
        .iter_mut()
        .find(|e| e.kind == EventKind::Delete)
        .expect("a lease key deleted");
    let lease = i64::from_str_radix(deletion.key.split('/').nth(1).expect("lease id"), 16)
        .expect("lease keys name their lease in hex");
    let grant = leases
        .records
        .iter()
        .find(|r| r.lease == lease && matches!(r.outcome, LeaseOutcome::Granted { .. }))
        .expect("the lease's grant");
    deletion.received = grant.call + 1;

    let verdict = checks::check_run(
        records,
        checks::Histories {
            watches: Some(&watches),
            leases: Some(&leases),
            ..Default::default()
        },
    );
    assert!(
        verdict.findings.iter().any(|f| matches!(f,
            Finding::WatchMissed { missed, reference: false, .. }
                if missed.revision == dropped.revision && missed.key == dropped.key)),
        "the dropped event went unnoticed: {:?}",
        verdict.findings
    );
    assert!(
        verdict.findings.iter().any(|f| matches!(f,
            Finding::LeaseExpiredEarly { lease: l, .. } if *l == lease)),
        "the early deletion went unnoticed: {:?}",
        verdict.findings
    );

    let dir = tempfile::tempdir().expect("temporary directory");
    let history_file = dir.path().join("history.jsonl");
    history::write_jsonl(&history_file, records).expect("write history");
    history::write_json(&dir.path().join(WATCHES_FILE), &watches).expect("write watches");
    history::write_json(&dir.path().join(LEASES_FILE), &leases).expect("write leases");
    let report = check_command_finds_a_violation(&history_file, seed);
    assert!(report
        .findings
        .iter()
        .any(|f| matches!(f, Finding::WatchMissed { .. })));
    assert!(report
        .findings
        .iter()
        .any(|f| matches!(f, Finding::LeaseExpiredEarly { .. })));
}

/// A lock record of client `client` on lock `l` with the session lease `lease`.
fn lock_record(
    client: u32,
    lease: i64,
    op: LockOp,
    call: u64,
    ret: u64,
    outcome: LockOutcome,
) -> LockRecord {
    LockRecord {
        client,
        name: "l".into(),
        lease,
        op,
        call,
        ret,
        outcome,
        endpoint: 0,
        error: None,
    }
}

fn write(client: u32, lease: i64, token: i64, seq: u32, at: u64, revision: i64) -> LockRecord {
    let op = LockOp::GuardedWrite {
        token,
        seq,
        value: format!("{client}/{token}/{seq}"),
    };
    lock_record(
        client,
        lease,
        op,
        at,
        at + 1,
        LockOutcome::Written { revision },
    )
}

fn acquired(client: u32, lease: i64, token: i64, call: u64, ret: u64) -> LockRecord {
    let key = format!("l/{lease:x}");
    lock_record(
        client,
        lease,
        LockOp::Lock,
        call,
        ret,
        LockOutcome::Acquired {
            key,
            token: Some(token),
        },
    )
}

/// An observer's response: the leader key of lease `create_revision` (the tests give each
/// campaign the lease of its key's revision), holding the value put at `mod_revision`.
fn observed(
    session: u32,
    create_revision: i64,
    mod_revision: i64,
    received: u64,
) -> ObservedLeader {
    ObservedLeader {
        observer: 0,
        name: "e".into(),
        session,
        received,
        endpoint: 0,
        key: format!("e/{create_revision:x}"),
        value: format!("{create_revision}/{mod_revision}"),
        create_revision,
        mod_revision,
        leader_at: mod_revision,
    }
}

/// A request of the campaigner with lease `lease` in election `e`.
fn election_record(
    lease: i64,
    op: ElectionOp,
    call: u64,
    ret: u64,
    outcome: ElectionOutcome,
) -> ElectionRecord {
    ElectionRecord {
        client: lease as u32,
        name: "e".into(),
        lease,
        op,
        call,
        ret,
        outcome,
        endpoint: 0,
        error: None,
    }
}

/// A Campaign with lease `rev`, answered Won with the key created at `rev`, and the value
/// [`observed`] shows for it.
fn won(rev: i64, call: u64, ret: u64) -> ElectionRecord {
    let op = ElectionOp::Campaign {
        value: format!("{rev}/{rev}"),
    };
    let outcome = ElectionOutcome::Won {
        key: format!("e/{rev:x}"),
        rev,
    };
    election_record(rev, op, call, ret, outcome)
}

/// A Proclaim by the leader created at `create_revision` of the value put at `revision`.
fn proclaim(
    create_revision: i64,
    revision: i64,
    at: u64,
    outcome: ElectionOutcome,
) -> ElectionRecord {
    let op = ElectionOp::Proclaim {
        value: format!("{create_revision}/{revision}"),
    };
    election_record(create_revision, op, at, at + 1, outcome)
}

/// Falsified lock and election histories fail the checks; the honest ones they were made from
/// pass. Two holders whose guarded writes interleave, a holder whose token is lower than an
/// earlier holder's, an acquisition with a token lower than one acquired before its Lock was
/// sent, an observer sent an older leader after a newer one, a win with an older key than a
/// win answered before its Campaign was sent, and an observer sent a refused Proclaim's value.
#[test]
fn falsified_lock_and_election_histories_fail_the_checks() {
    let verdict = |locks: &LockHistory, elections: &ElectionHistory| {
        checks::check_run(
            &[],
            checks::Histories {
                locks: Some(locks),
                elections: Some(elections),
                ..Default::default()
            },
        )
    };
    // Client 0 holds with token 10 (lease 1), then client 1 with token 15 (lease 2).
    let honest = LockHistory {
        records: vec![
            acquired(0, 1, 10, 0, 10),
            write(0, 1, 10, 0, 20, 11),
            write(0, 1, 10, 1, 30, 12),
            acquired(1, 2, 15, 5, 40),
            write(1, 2, 15, 0, 50, 16),
            write(1, 2, 15, 1, 60, 17),
        ],
        ..Default::default()
    };
    // The leader created at 20 proclaims a value at 25; the one created at 30 follows.
    let elections = ElectionHistory {
        records: vec![
            won(20, 0, 1),
            proclaim(20, 25, 1, ElectionOutcome::Proclaimed { revision: 25 }),
            won(30, 0, 3),
        ],
        observed: vec![
            observed(0, 20, 20, 1),
            observed(0, 20, 25, 2),
            observed(0, 30, 30, 3),
        ],
        ..Default::default()
    };
    let honest_verdict = verdict(&honest, &elections);
    assert!(
        honest_verdict.findings.is_empty(),
        "{:?}",
        honest_verdict.findings
    );
    assert_eq!(
        (
            honest_verdict.lock.acquisitions,
            honest_verdict.lock.writes_ok
        ),
        (2, 4)
    );
    assert_eq!(
        (
            honest_verdict.election.won,
            honest_verdict.election.values_matched
        ),
        (2, 3)
    );

    // Client 0 writes again, after client 1's first write: two holders at once.
    let mut interleaved = honest.clone();
    interleaved.records.push(write(0, 1, 10, 2, 55, 16));
    interleaved.records[4] = write(1, 2, 15, 0, 50, 14);
    let findings = verdict(&interleaved, &elections).findings;
    assert!(
        findings.iter().any(|f| matches!(f,
            Finding::LockHoldersInterleaved { first, between, second, .. }
                if first.client == 0 && between.client == 1 && second.client == 0)),
        "interleaved holders went unnoticed: {findings:?}"
    );

    // Client 1's writes come first in revision order, with the higher token: a token that
    // went back from one holder to the next.
    let mut backwards = honest.clone();
    backwards.records[4] = write(1, 2, 15, 0, 50, 8);
    backwards.records[5] = write(1, 2, 15, 1, 60, 9);
    let findings = verdict(&backwards, &elections).findings;
    assert!(
        findings.iter().any(
            |f| matches!(f, Finding::LockTokenWentBack { earlier, later, .. }
            if earlier.client == 1 && later.client == 0)
        ),
        "a token going back went unnoticed: {findings:?}"
    );

    // An acquisition whose Lock was sent after client 1 acquired token 15, with token 12.
    let mut late_low = honest.clone();
    late_low.records.push(acquired(2, 3, 12, 45, 70));
    let findings = verdict(&late_low, &elections).findings;
    assert!(
        findings
            .iter()
            .any(|f| matches!(f, Finding::LockTokenWentBack { later, .. }
            if later.client == 2)),
        "an acquisition with a smaller token went unnoticed: {findings:?}"
    );

    // The observer is sent the leader created at 20 again (a value put at 35) after the one
    // created at 30.
    let mut out_of_order = elections.clone();
    out_of_order.observed.push(observed(0, 20, 35, 4));
    let findings = verdict(&honest, &out_of_order).findings;
    assert!(
        findings.iter().any(
            |f| matches!(f, Finding::ObserveWentBack { earlier, later, .. }
            if earlier.create_revision == 30 && later.create_revision == 20)
        ),
        "an observer going back went unnoticed: {findings:?}"
    );
    assert!(
        findings
            .iter()
            .any(|f| matches!(f, Finding::LeadersOverlap { .. })),
        "two leaders at once went unnoticed: {findings:?}"
    );

    // A Campaign sent after the leader created at 30 was answered, won with an older key.
    let mut late_win = elections.clone();
    late_win.records.push(won(28, 4, 5));
    let findings = verdict(&honest, &late_win).findings;
    assert!(
        findings.iter().any(
            |f| matches!(f, Finding::WinsOutOfOrder { earlier, later, .. }
            if earlier.lease == 30 && later.lease == 28)
        ),
        "a win with an older key went unnoticed: {findings:?}"
    );

    // The leader created at 30 had a Proclaim refused, whose value the observer is sent.
    let mut refused = elections.clone();
    refused
        .records
        .push(proclaim(30, 31, 4, ElectionOutcome::NotLeader));
    refused.observed.push(observed(0, 30, 31, 5));
    let findings = verdict(&honest, &refused).findings;
    assert!(
        findings.iter().any(
            |f| matches!(f, Finding::ObservedValueNotSent { observed, .. }
            if observed.value == "30/31")
        ),
        "a refused Proclaim's value went unnoticed: {findings:?}"
    );
}

/// Two members' differing states are reported key by key.
#[test]
fn differing_member_states_are_a_divergence() {
    let state = |member: &str, value: &str| checks::MemberState {
        member: member.into(),
        revision: 7,
        kvs: vec![checks::StoredKv {
            key: "chaos/0000/1".into(),
            value: value.into(),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
        }],
    };
    let divergences =
        checks::compare_states(&[state("n0", "12"), state("n1", "12"), state("n2", "13")]);
    assert_eq!(divergences.len(), 1);
    assert_eq!(
        (divergences[0].a.as_str(), divergences[0].b.as_str()),
        ("n0", "n2")
    );
    assert_eq!(divergences[0].keys[0].0, "chaos/0000/1");
}

/// Makes the last successful read of a key that some acknowledged write overwrote before the
/// read began return the overwritten value; returns the changed record.
fn falsify_a_read(records: &mut [Record]) -> Option<Record> {
    let (index, stale) = records.iter().enumerate().rev().find_map(|(i, read)| {
        let (Input::Read, Output::Read(Some(seen)), Some(_)) =
            (read.op.input, read.op.output, read.op.ret)
        else {
            return None;
        };
        // An acknowledged write of another value to the key, which a later acknowledged write
        // overwrote before this read was sent.
        records.iter().find_map(|w| match (w.op.input, w.op.ret) {
            (Input::Write(old), Some(w_ret))
                if w.op.key == read.op.key && old != seen && w_ret < read.op.call =>
            {
                let overwritten = records.iter().any(|x| {
                    x.op.key == read.op.key
                        && matches!(x.op.input, Input::Write(_))
                        && x.op.output == Output::Written
                        && x.op.call > w_ret
                        && x.op.ret.is_some_and(|r| r < read.op.call)
                });
                overwritten.then_some((i, old))
            }
            _ => None,
        })
    })?;
    records[index].op.output = Output::Read(Some(stale));
    Some(records[index].clone())
}

/// Runs `rampart-chaos --check` on the history in `history_file` (and the watch and lease
/// records beside it) and expects it to exit 1, print the seed and write its report beside the
/// history; returns the report.
fn check_command_finds_a_violation(history_file: &Path, seed: u64) -> ViolationReport {
    let output = Command::new(env!("CARGO_BIN_EXE_rampart-chaos"))
        .arg("--check")
        .arg(history_file)
        .args(["--seed", &seed.to_string()])
        .output()
        .expect("running rampart-chaos --check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "stdout: {stdout}");
    assert!(stdout.contains(&format!("seed {seed}")), "stdout: {stdout}");
    let dir = history_file
        .parent()
        .expect("the history is in a directory");
    read_json(&dir.join(format!("violation-{seed}.json")))
}

fn read_json<T: for<'de> serde::Deserialize<'de>>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
