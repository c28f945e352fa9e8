//! Power losses against a real cluster: the members keep their data on crash filesystems
//! (`rampart-crashfs`), and the nemesis cuts the power of one member, a minority or the whole
//! cluster (every write not fsynced is lost), besides kill -9, with the same linearizability,
//! watch and lease checks as every run. Bounded for CI like `chaos.rs` (20 s of faults, run one
//! test at a time). Skipped, saying so, only where the machine has no `/dev/fuse`.

use std::time::Duration;

use rampart_chaos::nemesis::FaultKind;

mod common;

use common::run_and_check;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_losses_and_kills_lose_no_acknowledged_write() {
    if !rampart_crashfs::fuse_available() {
        println!("SKIPPED: /dev/fuse is missing, so the members cannot run on crash filesystems");
        return;
    }
    let faults = [FaultKind::Kill, FaultKind::PowerLoss];
    let (outcome, _dir) = run_and_check(11, 3, Duration::from_secs(20), &faults).await;
    assert!(outcome.fault_rounds >= 1, "the nemesis never struck");
}
