//! What the benchmarks share: a store in a temporary directory, the runtime that drives
//! openraft's async storage traits, and the keys, values and entries written.

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use rampart_storage::{
    Command, PutRequest, RequestOp, StateMachine, Store, TxnRequest, TypeConfig,
};
use tempfile::TempDir;
use tokio::runtime::Runtime;

/// Keys in the stores that the apply and range benchmarks work on.
pub const KEYS: u64 = 10_000;

/// Bytes per value, as `rampart-bench` and `benches/compare.sh` write by default.
pub const VALUE_SIZE: usize = 256;

/// Puts per txn entry when filling a store (etcd's and Rampart's `--max-txn-ops` is 128).
pub const TXN_PUTS: u64 = 100;

/// A single-threaded runtime: the storage calls are sequential, and a second thread would only
/// add scheduling noise.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime builds")
}

/// The key numbered `index`: `bench/` and ten digits, 16 bytes like `rampart-bench`'s keys, so
/// that keys sort by number and every hundred share a prefix (`key_block_prefix`).
pub fn key(index: u64) -> Vec<u8> {
    format!("bench/{index:010}").into_bytes()
}

/// The prefix shared by keys `100 * block .. 100 * block + 99` (for `block` below 100).
pub fn key_block_prefix(block: u64) -> Vec<u8> {
    format!("bench/000000{block:02}").into_bytes()
}

pub fn put(index: u64) -> PutRequest {
    PutRequest {
        key: key(index),
        value: vec![b'x'; VALUE_SIZE],
        ..Default::default()
    }
}

/// A txn without compares that puts keys `first .. first + count`.
pub fn txn_puts(first: u64, count: u64) -> Command {
    Command::Txn(TxnRequest {
        compare: vec![],
        success: (first..first + count)
            .map(|i| RequestOp::Put(put(i)))
            .collect(),
        failure: vec![],
    })
}

/// The log entry at `index` (term 1, leader 1) carrying `command`.
pub fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

/// The next free log index. A field of its own, so that a benchmark's setup closure can number
/// entries while its routine holds the state machine.
pub struct NextIndex(u64);

impl NextIndex {
    /// `command` as the entry at the next index.
    pub fn entry(&mut self, command: Command) -> Entry<TypeConfig> {
        let e = entry(self.0, command);
        self.0 += 1;
        e
    }
}

/// A store in a temporary directory, with its state machine and the next free log index.
pub struct TempStore {
    pub store: Store,
    pub sm: StateMachine,
    pub next: NextIndex,
    /// Deleted (with the store's files) when this is dropped, after `store`.
    _dir: TempDir,
}

impl TempStore {
    pub fn open() -> TempStore {
        let dir = TempDir::new().expect("temporary directory");
        let store = Store::open(dir.path()).expect("store opens");
        TempStore {
            sm: store.state_machine(),
            store,
            next: NextIndex(1),
            _dir: dir,
        }
    }

    /// A store holding keys `0 .. KEYS`, each put once, written as txn entries of
    /// `TXN_PUTS` puts the way a batched client load would.
    pub fn with_keys(rt: &Runtime) -> TempStore {
        let mut store = TempStore::open();
        let entries: Vec<_> = (0..KEYS.div_ceil(TXN_PUTS))
            .map(|n| {
                let first = n * TXN_PUTS;
                store
                    .next
                    .entry(txn_puts(first, TXN_PUTS.min(KEYS - first)))
            })
            .collect();
        rt.block_on(store.sm.apply(entries))
            .expect("filling the store succeeds");
        store
    }
}
