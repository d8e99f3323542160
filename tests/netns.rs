//! mDNS discovery between three hosts: three Linux network namespaces on a bridge, one child
//! node in each (this test binary re-executed with `ip netns exec`, see `support`), with mDNS
//! on and no address to dial. They must find each other by mDNS alone and converge.
//!
//! mDNS ignores loopback, hence the veth interfaces (see `support::netns`). It must never run
//! outside the namespaces this test creates (it would multicast out of the machine's real
//! interface): only the children turn it on, they run inside the namespaces, and a child
//! refuses to start mDNS in the network namespace of the test process.
//!
//! Run as root, the test makes the namespaces itself; run by anyone else, it runs inside a user
//! namespace (`support::netns::as_root`). It needs `ip netns` (and `unshare` when not root);
//! without them, or where the kernel refuses user namespaces, it fails (it does not skip).

mod support;

use std::time::{Duration, Instant};

use support::child::{Child, ChildSpec, GROUP, all_see, union};
use support::eventually;
use support::netns::{Lan, as_root};

/// Runs a child node when the parent test re-executes this binary; in an ordinary `cargo
/// test` run (no `PROCGROUPS_CHILD` in the environment) it returns at once and passes.
#[test]
fn child_node_entry_point() {
    support::child::child_main();
}

const HOSTS: usize = 3;
/// The longest the test may take inside a user namespace: its waits (each child's start, the
/// convergence) with room to spare.
const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn three_hosts_on_a_bridge_find_each_other_by_mdns_alone() {
    as_root(
        "three_hosts_on_a_bridge_find_each_other_by_mdns_alone",
        LIMIT,
        || support::block_on(three_hosts()),
    );
}

/// On a current-thread runtime: the children answer through blocking calls.
async fn three_hosts() {
    let started = Instant::now();
    let lan = Lan::create(HOSTS); // deletes the namespaces of dead earlier runs
    eprintln!("namespaces ready in {:?}", started.elapsed());

    let mut children: Vec<Child> = lan
        .hosts
        .iter()
        .enumerate()
        .map(|(i, ns)| Child::spawn(ChildSpec::on_host(format!("host{} ({ns})", i + 1), ns)))
        .collect();
    eprintln!("children started in {:?}", started.elapsed());

    let locals: Vec<_> = children
        .iter_mut()
        .map(|c| c.local_members(GROUP))
        .collect();
    for (child, local) in children.iter().zip(&locals) {
        assert_eq!(local.len(), 1, "{}: {local:?}", child.label);
    }
    let lists: Vec<&[procgroups::Pid]> = locals.iter().map(Vec::as_slice).collect();
    let everyone = union(&lists);
    let took = eventually(
        "the three hosts to see the three members",
        Duration::from_secs(15),
        || all_see(&mut children, &everyone),
    )
    .await;
    eprintln!(
        "converged by mDNS in {took:?}; whole test {:?}",
        started.elapsed()
    );
    // The children go first (they are in the namespaces), then the namespaces.
    drop(children);
    lan.delete();
}
