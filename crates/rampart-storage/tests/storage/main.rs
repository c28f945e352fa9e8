//! Tests of rampart-storage through its public API, driving the state machine the way openraft
//! does: `apply` with log entries.

mod common;
mod crash;
mod durability;
mod events;
mod install;
mod lease;
mod mvcc;
mod range;
mod sled_dir;
mod suite;
mod txn;
