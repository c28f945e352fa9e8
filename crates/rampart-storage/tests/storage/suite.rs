//! openraft's own storage conformance suite, run against a real data directory.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use rampart_storage::{LogStore, NodeId, StateMachine, Store, TypeConfig};
use tempfile::TempDir;

/// Opens a store in a fresh temporary directory; the `TempDir` is the guard that outlives it.
/// The suite tests the log alone and purges entries no state machine has applied, so it gets
/// the log whose purges do not wait for the state machine.
struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open(dir.path()).expect("store opens");
        Ok((dir, store.log_store_unguarded(), store.state_machine()))
    }
}

/// The suite builds its own runtimes, so this is a plain test.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(TempStoreBuilder).expect("openraft storage suite passes");
}
