//! Proving Rampart safe, Jepsen-style: a real multi-process cluster driven by concurrent etcd
//! clients while a nemesis injects faults, every operation recorded, and checkers that prove
//! the history linearizable and the members in agreement, or show the violation.
//!
//! - [`linearizability`]: the checker for register histories (Wing & Gong with Lowe's
//!   memoization); depends on nothing else here.
//! - [`cluster`]: `rampart` processes on loopback, started, killed (-9), restarted, paused
//!   and resumed through `rampart-launcher`; peer-link rules through each member's test-only
//!   `Faults` service.
//! - [`nemesis`]: the seeded schedule of faults; [`membership`]: the membership fault, a
//!   member removed (or lost) and added back as a new member through the Cluster service.
//! - [`workload`]: the clients (reads, writes, compare-and-swaps, deletes on a few keys).
//! - [`watchers`]: watch clients that follow the clients' keys through the faults, resuming
//!   each broken watch from one past the last revision they received.
//! - [`leases`]: lease clients that grant short leases, attach keys, and keep alive, abandon
//!   or revoke them.
//! - [`session`]: the leases that lock and election clients hold their keys with, kept alive
//!   until revoked or abandoned.
//! - [`locks`]: lock clients that take etcd locks, write a register under the lock's fencing
//!   token, and release, abandon or outlive their locks.
//! - [`elections`]: election clients that campaign, proclaim, and resign or abandon, and an
//!   observer of each election.
//! - [`history`]: the records of a run and the files they are written to.
//! - [`checks`]: linearizability, revision order, convergence (of the data and of the
//!   membership), crashes, and the verdict of every check; [`watch_check`]: events ordered,
//!   none twice, none missing, each explained by a write; [`lease_check`]: no lease's keys
//!   deleted before it could expire, and all of them soon after; [`lock_check`]: guarded
//!   writes never interleave two holders, tokens grow, abandoned locks pass on;
//!   [`election_check`]: one leader at a time, observers never go back.
//! - [`runner`]: one run, start to verdict; `src/main.rs` is the `rampart-chaos` command.
//!
//! It talks to Rampart only over the network, through `rampart-api` (the etcd client API and
//! the fault control), and starts its processes through `rampart-launcher`; it must not depend
//! on the server crates. As test tooling, its harness
//! errors are `anyhow` errors; violations are data ([`checks::Finding`]), never errors.

pub mod checks;
pub mod cluster;
pub mod election_check;
pub mod elections;
pub mod history;
pub mod lease_check;
pub mod leases;
pub mod linearizability;
pub mod lock_check;
pub mod locks;
pub mod membership;
pub mod nemesis;
pub mod runner;
pub mod session;
pub mod watch_check;
pub mod watchers;
pub mod workload;

pub use runner::{run, Options, Outcome};
