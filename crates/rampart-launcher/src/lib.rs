//! Starts, stops, kills, pauses and restarts real `rampart` member processes on loopback, for
//! the tests crate's `ProcessCluster` and the chaos harness's `Cluster`.
//!
//! - [`rampart_binary`]: the `rampart` binary to run, built first when running under cargo.
//! - [`Plan`]: the shape of a cluster (size, names, token, Raft timing, extra flags, log
//!   filter); [`Plan::members`] chooses free loopback ports and builds each member's flags with
//!   one shared `--initial-cluster`. [`retry_start`] starts again on new ports when a port chosen
//!   free was taken before the member bound it.
//! - [`Member`]: one process and what it takes to start it again: spawned with its output
//!   appended to a log file, waited on until the caller's probe answers
//!   ([`Member::wait_answering`]), killed with SIGKILL, paused with SIGSTOP and resumed with
//!   SIGCONT, sent any other signal (SIGTERM, SIGINT), restarted on the same flags and data
//!   directory, and killed when dropped so that no test leaves a process behind. With
//!   [`Member::use_crashfs`] its data directory lives on a crash filesystem
//!   (`rampart-crashfs`), and [`Member::power_loss`] kills it and drops every write it had not
//!   fsynced, as a power cut would.
//!
//! It drives processes and their disks and nothing else: it must not depend on any Rampart
//! server crate (the chaos harness talks to Rampart over the network only and may link none),
//! nor speak gRPC itself; each caller probes a member with its own client. As test tooling,
//! its errors are `anyhow` errors, except [`NotAnswering`], which callers match on.

mod binary;
mod member;
mod plan;

pub use binary::rampart_binary;
pub use member::{send_signal, Member, NotAnswering, ProcessState};
pub use plan::{retry_start, Plan, START_ATTEMPTS};

/// A free loopback port. It is released before the member binds it, so another process may
/// take it first; [`retry_start`] starts again with new ports when that happens.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A loopback URL on a port that was free a moment ago (see [`free_port`]).
pub fn free_url() -> anyhow::Result<String> {
    Ok(format!("http://127.0.0.1:{}", free_port()?))
}
