//! Three nodes in three OS processes over loopback TCP: one is killed with SIGKILL (no
//! goodbye), the others drop its members after `node_down_grace`; it restarts with the same
//! identity as a new incarnation and everyone converges on the new members, never the old.
//!
//! The children are this test binary re-executed (see `support`).

mod support;

use std::time::{Duration, Instant};

use procgroups::{Keypair, Pid};
use support::child::{Child, ChildSpec, GROUP, all_see, union};
use support::eventually;

/// Runs a child node when the parent test re-executes this binary; in an ordinary `cargo
/// test` run (no `PROCGROUPS_CHILD` in the environment) it returns at once and passes.
#[test]
fn child_node_entry_point() {
    support::child::child_main();
}

const PROCESSES: usize = 5;
const GRACE: Duration = Duration::from_millis(500);

fn spec(label: &str, dial: &[&Child], keypair: Option<&Keypair>) -> ChildSpec {
    ChildSpec {
        dial: dial.iter().flat_map(|c| c.addrs.iter().cloned()).collect(),
        keypair: keypair.cloned(),
        processes: PROCESSES,
        node_down_grace: GRACE,
        ..ChildSpec::new(label)
    }
}

/// On a current-thread runtime: the children answer through blocking calls.
#[tokio::test]
async fn killed_node_is_dropped_after_grace_and_its_restart_is_a_new_incarnation() {
    let started = Instant::now();
    let key3 = Keypair::generate_ed25519();
    let mut c1 = Child::spawn(spec("child1", &[], None));
    let mut c2 = Child::spawn(spec("child2", &[&c1], None));
    let mut c3 = Child::spawn(spec("child3", &[&c1, &c2], Some(&key3)));
    assert_eq!(c3.peer_id, key3.public().to_peer_id());

    let local1 = c1.local_members(GROUP);
    let local2 = c2.local_members(GROUP);
    let old3 = c3.local_members(GROUP);
    for (child, local) in [(&c1, &local1), (&c2, &local2), (&c3, &old3)] {
        assert_eq!(local.len(), PROCESSES, "{}: {local:?}", child.label);
        assert!(local.iter().all(|p| p.node() == child.peer_id));
    }
    let everyone = union(&[&local1, &local2, &old3]);
    let took = eventually(
        "all three to see 15 members",
        Duration::from_secs(15),
        || all_see([&mut c1, &mut c2, &mut c3], &everyone),
    )
    .await;
    eprintln!(
        "converged on 15 members in {took:?} (started {:?} ago)",
        started.elapsed()
    );

    // SIGKILL: no shutdown message; the survivors only see the connections drop.
    let killed = Instant::now();
    c3.kill();
    let survivors = union(&[&local1, &local2]);
    let took = eventually(
        "the survivors to drop the killed node's members",
        GRACE + Duration::from_secs(4),
        || all_see([&mut c1, &mut c2], &survivors),
    )
    .await;
    eprintln!("killed node's members dropped {took:?} after the kill");
    assert!(
        killed.elapsed() >= GRACE,
        "members of the killed node dropped before node_down_grace ({GRACE:?}): {:?}",
        killed.elapsed()
    );

    // The same identity again: a new incarnation with new pids, dialing the survivors.
    let mut c3 = Child::spawn(spec("child3-restarted", &[&c1, &c2], Some(&key3)));
    assert_eq!(c3.peer_id, key3.public().to_peer_id());
    let new3 = c3.local_members(GROUP);
    assert_eq!(new3.len(), PROCESSES, "{new3:?}");
    assert!(
        new3.iter().all(|p| !old3.contains(p)),
        "the new incarnation reused pids of the old one: old {old3:?}, new {new3:?}"
    );
    let everyone = union(&[&local1, &local2, &new3]);
    let took = eventually(
        "all three to see the restarted node's new members",
        Duration::from_secs(15),
        || all_see([&mut c1, &mut c2, &mut c3], &everyone),
    )
    .await;
    eprintln!("converged again on 15 members in {took:?} after the restart");
    for child in [&mut c1, &mut c2, &mut c3] {
        let members = child.members(GROUP);
        let ghosts: Vec<&Pid> = members.iter().filter(|p| old3.contains(p)).collect();
        assert!(
            ghosts.is_empty(),
            "{} still lists the dead incarnation's {ghosts:?}",
            child.label
        );
        assert_eq!(members.len(), 3 * PROCESSES);
    }
    eprintln!("whole scenario took {:?}", started.elapsed());
}
