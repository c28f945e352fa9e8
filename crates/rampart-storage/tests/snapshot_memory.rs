//! Building and installing a snapshot take memory in proportion to a chunk of it, not to the
//! store. A test binary of its own: its allocator (dhat's) counts every allocation of the
//! process, so no other test may run beside it.

use tempfile::TempDir;

#[path = "storage/common.rs"]
#[allow(dead_code)]
mod common;

use common::Node;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Runs `f` under a heap profiler; returns its result and the most bytes that were allocated
/// by anyone at one moment while it ran, counting only blocks allocated meanwhile.
async fn peak_of<T>(
    scratch: &std::path::Path,
    f: impl std::future::Future<Output = T>,
) -> (T, usize) {
    let profiler = dhat::Profiler::builder()
        .testing()
        .file_name(scratch.join("dhat-heap.json"))
        .build();
    let out = f.await;
    let peak = dhat::HeapStats::get().max_bytes;
    drop(profiler);
    (out, peak)
}

const MIB: usize = 1024 * 1024;
/// Values of 128 KiB: 24 MiB of them.
const VALUE: usize = 128 * 1024;
const STORE: usize = 24 * MIB;

#[tokio::test]
async fn building_and_installing_a_snapshot_hold_a_chunk_not_the_store() {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let scratch = TempDir::new().unwrap();
    let mut leader = Node::open(leader_dir.path());
    tracing::info!("--- a store of {} MiB, written by puts", STORE / MIB);
    let ((), fill_peak) = peak_of(scratch.path(), async {
        for i in 0..STORE / VALUE {
            let value = char::from(b'a' + (i % 26) as u8).to_string().repeat(VALUE);
            leader.put(&format!("key{i:04}"), &value).await;
        }
    })
    .await;

    tracing::info!("--- build: the peak above what was allocated before");
    let (snapshot, build_peak) = peak_of(scratch.path(), leader.snapshot()).await;

    tracing::info!("--- install on another store");
    let mut follower = Node::open(follower_dir.path());
    // sled's write buffers are allocated by a store's first writes: not the install's doing.
    for i in 0..16 {
        follower.put(&format!("old{i}"), &"x".repeat(VALUE)).await;
    }
    let ((), install_peak) = peak_of(scratch.path(), follower.install(snapshot)).await;
    println!(
        "store {} MiB: written by puts at a peak of {:.1} MiB; build peak {:.1} MiB, install \
         peak {:.1} MiB",
        STORE / MIB,
        fill_peak as f64 / MIB as f64,
        build_peak as f64 / MIB as f64,
        install_peak as f64 / MIB as f64
    );
    assert_eq!(follower.mvcc.revision(), leader.mvcc.revision());
    assert!(
        build_peak < STORE / 4,
        "building a snapshot of a {} MiB store took {build_peak} bytes at its peak",
        STORE / MIB
    );
    // sled itself takes memory for what is written into it (its page cache, up to 64 MiB, and
    // page versions it frees later): installing may take what writing the same data through
    // puts took, plus a few frames, and not a copy or three of the whole snapshot.
    assert!(
        install_peak < fill_peak + 4 * MIB,
        "installing a snapshot of a {} MiB store took {install_peak} bytes at its peak, writing \
         it by puts {fill_peak}",
        STORE / MIB
    );
}
