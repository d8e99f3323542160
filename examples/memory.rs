//! Memory per membership slot: the memory table of the README's Performance section.
//!
//! `cargo run --release --example memory`
//!
//! Counts the bytes the allocator holds after 1M slots are joined, minus what it held before
//! (the processes themselves are spawned first and not counted), in three shapes, with and
//! without a member list built by a read.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use procgroups::{Node, ScopeConfig};

struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SLOTS: usize = 1_000_000;

async fn measure(processes: usize, groups_per_process: usize) -> procgroups::Result<()> {
    let node = Node::builder()
        .mdns(false)
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
        .scope("app:pg", ScopeConfig::default())
        .build()
        .await?;
    let names: Vec<String> = (0..groups_per_process)
        .map(|g| format!("group-{g}"))
        .collect();
    let procs: Vec<_> = (0..processes).map(|_| node.spawn_process()).collect();
    let instances: Vec<_> = procs
        .iter()
        .map(|p| p.open("app:pg"))
        .collect::<Result<_, _>>()?;
    let before = HELD.load(Ordering::Relaxed);
    for pg in &instances {
        pg.join(&names)?;
    }
    let joined = HELD.load(Ordering::Relaxed) - before;
    let reader = &instances[0];
    let lists: Vec<_> = names
        .iter()
        .map(|g| reader.get_members(g))
        .collect::<Result<_, _>>()?;
    let with_lists = HELD.load(Ordering::Relaxed) - before;
    assert_eq!(lists.iter().map(|m| m.len()).sum::<usize>(), SLOTS);
    println!(
        "{processes:>9} processes x {groups_per_process:>5} groups: {:>5.1} bytes/slot; {:>5.1} with every member list built",
        joined as f64 / SLOTS as f64,
        with_lists as f64 / SLOTS as f64,
    );
    // The network thread holds the scopes too: wait until it has ended, so that this node's
    // memory is freed before the next shape is measured.
    drop((lists, instances, procs));
    node.shutdown().await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> procgroups::Result<()> {
    println!("memory per membership slot, {SLOTS} slots (target <= 64 bytes):");
    measure(SLOTS, 1).await?;
    measure(10_000, 100).await?;
    measure(1_000, 1_000).await?;
    Ok(())
}
