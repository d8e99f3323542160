//! Several nodes in one test process over loopback TCP: what a user of a cluster observes
//! (members, events, inboxes) while nodes join, leave, partition, stop and restart.
//!
//! Every wait is on a condition with a deadline (`eventually`, `timeout`); no test sleeps to
//! synchronise.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use procgroups::{
    Event, EventKind, Instance, Keypair, Node, Pid, Process, ScopeConfig, ScopeStats, Subscription,
};

mod support;
use support::{
    WAIT, connect, converge_each as converge, cut, eventually, grace, next_event, next_message,
    replay, truth, view,
};

const SCOPE: &str = "test:cluster";
/// A second scope hosted by the partition tests, with `PARTITION_GRACE`: a clock that shows a
/// partition lasted longer than that grace, without sleeping.
const WITNESS: &str = "test:witness";
/// The short `node_down_grace` of the tests where a dead peer must be purged.
const SHORT_GRACE: Duration = Duration::from_millis(300);
/// The `node_down_grace` of the partitions that outlast it: long enough that a cut that does
/// not hold (the peers reconnect on their own) shows before the purge.
const PARTITION_GRACE: Duration = Duration::from_secs(1);
/// The default `node_down_grace` (that of `ScopeConfig::default()`).
const DEFAULT_GRACE: Duration = Duration::from_secs(2);

// ------------------------------------------------------------------------------------ helpers

fn short_grace() -> ScopeConfig {
    grace(SHORT_GRACE)
}

fn stats(node: &Node) -> ScopeStats {
    node.stats(SCOPE).expect("the scope is hosted")
}

fn builder(config: ScopeConfig) -> procgroups::NodeBuilder {
    support::builder(SCOPE, config)
}

async fn node() -> Node {
    node_with(ScopeConfig::default()).await
}

async fn node_with(config: ScopeConfig) -> Node {
    builder(config).build().await.expect("node")
}

/// Two nodes with the default config, `b` connected to `a`.
async fn pair() -> (Node, Node) {
    let a = node().await;
    let b = node().await;
    connect(&b, &a).await;
    (a, b)
}

/// A node hosting `SCOPE` with `config` and `WITNESS` with `PARTITION_GRACE`.
async fn node_with_witness(config: ScopeConfig) -> Node {
    builder(config)
        .scope(WITNESS, grace(PARTITION_GRACE))
        .build()
        .await
        .expect("node")
}

/// A new process and its instance of `SCOPE`.
fn spawn(node: &Node) -> (Process, Instance) {
    support::spawn(node, SCOPE)
}

/// Moves the queued events of `sub` into `into`.
fn drain(sub: &mut Subscription, into: &mut Vec<Event>) {
    while let Some(ev) = sub.try_recv() {
        into.push(ev);
    }
}

/// Slots of `pid` that events of `kind` carry.
fn carried(events: &[Event], kind: EventKind, pid: Pid) -> usize {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.pids.iter().filter(|p| **p == pid).count())
        .sum()
}

// -------------------------------------------------------------------------------------- tests

#[tokio::test]
async fn remote_join_is_visible() {
    let a = node().await;
    let b = node().await;
    b.dial(a.listen_addrs()[0].clone()).unwrap();
    let pa = a.spawn_process();
    let ga = pa.open(SCOPE).unwrap();
    ga.join("g").unwrap();
    let pb = b.spawn_process();
    let gb = pb.open(SCOPE).unwrap();
    eventually("a's join on b", WAIT, || {
        gb.get_members("g").unwrap().contains(&pa.pid())
    })
    .await;
    gb.join("g").unwrap();
    eventually("b's join on a", WAIT, || {
        ga.get_members("g").unwrap().len() == 2
    })
    .await;
    let mut inbox = pb.listen("t");
    assert_eq!(ga.broadcast("g", "t", &"hi").unwrap().slots(), 2);
    let m = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "hi");
    assert_eq!(m.from(), pa.pid());
    a.shutdown().await;
    eventually("a's leave on b", Duration::from_secs(5), || {
        gb.get_members("g").unwrap().len() == 1
    })
    .await;
    b.shutdown().await;
}

/// A subscription made through a temporary instance lasts (releasing an instance leaves its
/// subscriptions open): it sees another node's joins and leaves.
#[tokio::test]
async fn a_subscription_of_a_temporary_instance_sees_remote_changes() {
    let a = node().await;
    let b = node().await;
    connect(&b, &a).await;
    let watcher = a.spawn_process();
    let (mut sub, members) = watcher.open(SCOPE).unwrap().monitor("g").unwrap();
    assert!(members.is_empty());
    let (pb, gb) = spawn(&b);
    gb.join("g").unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!(
        (ev.kind, &*ev.group, &*ev.pids),
        (EventKind::MemberJoined, "g", &[pb.pid()][..])
    );
    let pid = pb.pid();
    drop(pb); // exit: its slot leaves everywhere
    let ev = next_event(&mut sub).await;
    assert_eq!(
        (ev.kind, &*ev.group, &*ev.pids),
        (EventKind::MemberLeft, "g", &[pid][..])
    );
}

/// 1. A remote join shows on the peer (not as local there), a remote leave empties the group
/// everywhere, and a process's exit removes its slots everywhere.
#[tokio::test]
async fn remote_join_leave_and_exit_propagate() {
    let (a, b) = pair().await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);

    ga.join("g").unwrap();
    eventually("a's join on b", WAIT, || {
        view(&gb) == truth(&[("g", &[pa.pid()])])
    })
    .await;
    assert!(gb.get_local_members("g").unwrap().is_empty());
    assert!(gb.which_local_groups().unwrap().is_empty());
    assert_eq!(ga.get_local_members("g").unwrap().to_vec(), vec![pa.pid()]);

    ga.leave("g").unwrap();
    assert!(ga.get_members("g").unwrap().is_empty(), "read your writes");
    eventually("a's leave on b", WAIT, || {
        gb.get_members("g").unwrap().is_empty() && gb.which_groups().unwrap().is_empty()
    })
    .await;
    assert!(view(&ga).is_empty());

    // An exit: every slot of every group, on both nodes.
    let (pa2, ga2) = spawn(&a);
    ga2.join(["g", "h", "g"]).unwrap();
    gb.join("g").unwrap();
    let both = truth(&[
        ("g", &[pa2.pid(), pa2.pid(), pb.pid()]),
        ("h", &[pa2.pid()]),
    ]);
    eventually("the joins on both nodes", WAIT, || {
        view(&ga) == both && view(&gb) == both
    })
    .await;
    drop(ga2);
    drop(pa2);
    let after = truth(&[("g", &[pb.pid()])]);
    assert_eq!(view(&ga), after, "the exit is local at once");
    eventually("the exit on b", WAIT, || view(&gb) == after).await;
    assert_eq!(gb.get_local_members("g").unwrap().to_vec(), vec![pb.pid()]);
}

/// 2. Members joined before a peer existed reach it by the initial sync, with events.
#[tokio::test]
async fn members_joined_before_a_peer_existed_reach_it_by_sync() {
    let a = node().await;
    let (p1, g1) = spawn(&a);
    let (p2, g2) = spawn(&a);
    g1.join(["g", "g", "h"]).unwrap();
    g2.join(["g", "x"]).unwrap();
    g2.leave("x").unwrap();
    let expected = truth(&[("g", &[p1.pid(), p1.pid(), p2.pid()]), ("h", &[p1.pid()])]);
    assert_eq!(view(&g1), expected);

    let b = node().await;
    let (_pb, gb) = spawn(&b);
    let (mut sub, snapshot) = gb.events().unwrap();
    assert!(snapshot.is_empty());
    connect(&b, &a).await;
    eventually("a's state on b", WAIT, || view(&gb) == expected).await;
    let mut events = Vec::new();
    drain(&mut sub, &mut events);
    assert!(
        events.iter().all(|e| e.kind == EventKind::MemberJoined),
        "{events:?}"
    );
    assert_eq!(
        replay(&snapshot, &events).unwrap(),
        expected,
        "the sync's events"
    );
    assert_eq!(sub.dropped(), 0);
}

/// 3. Counted membership across nodes: a double join is two slots on both nodes; 16 joins and
/// 4 leaves of one process are 12 slots everywhere.
#[tokio::test]
async fn counted_slots_are_the_same_on_every_node() {
    let (a, b) = pair().await;
    let (pa, ga) = spawn(&a);
    let (_pb, gb) = spawn(&b);

    ga.join("twice").unwrap();
    ga.join("twice").unwrap();
    eventually("the double join on b", WAIT, || {
        gb.get_members("twice").unwrap().count(&pa.pid()) == 2
    })
    .await;
    assert_eq!(ga.get_members("twice").unwrap().len(), 2);
    assert_eq!(gb.get_members("twice").unwrap().len(), 2);

    for _ in 0..8 {
        ga.join("many").unwrap();
    }
    ga.join(vec!["many"; 8]).unwrap();
    ga.leave("many").unwrap();
    ga.leave("many").unwrap();
    ga.leave(["many", "many"]).unwrap();
    assert_eq!(ga.get_members("many").unwrap().count(&pa.pid()), 12);
    let expected = truth(&[("many", &[pa.pid(); 12]), ("twice", &[pa.pid(); 2])]);
    eventually("12 slots on b", WAIT, || view(&gb) == expected).await;
    assert_eq!(view(&ga), expected);

    // A broadcast counts slots on the peer too.
    let (_sender, gs) = spawn(&b);
    assert_eq!(gs.broadcast("many", "t", &0u8).unwrap().slots(), 12);
}

/// 4. A process joins only itself: whatever node B sees for groups joined on A is A's, and B's
/// local members are B's processes only.
#[tokio::test]
async fn members_belong_to_the_node_that_joined_them() {
    let (a, b) = pair().await;
    let (pa1, ga1) = spawn(&a);
    let (pa2, ga2) = spawn(&a);
    let (pb, gb) = spawn(&b);
    ga1.join(["only_a", "g"]).unwrap();
    ga2.join("only_a").unwrap();
    gb.join("g").unwrap();
    let expected = truth(&[
        ("only_a", &[pa1.pid(), pa2.pid()]),
        ("g", &[pa1.pid(), pb.pid()]),
    ]);
    eventually("both views", WAIT, || {
        view(&ga1) == expected && view(&gb) == expected
    })
    .await;
    assert!(
        gb.get_members("only_a")
            .unwrap()
            .iter()
            .all(|p| p.node() == a.peer_id())
    );
    assert!(gb.get_local_members("only_a").unwrap().is_empty());
    assert_eq!(gb.get_local_members("g").unwrap().to_vec(), vec![pb.pid()]);
    assert_eq!(
        ga1.get_local_members("g").unwrap().to_vec(),
        vec![pa1.pid()]
    );
    assert_eq!(&*gb.which_local_groups().unwrap(), &["g".into()]);
}

/// 5. A monitor and an `events` subscription on each node see local and remote changes, in
/// the order they happened, with the right pids.
#[tokio::test]
async fn monitors_and_events_see_local_and_remote_changes_in_order() {
    let (a, b) = pair().await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    let (_wa, wa) = spawn(&a);
    let (_wb, wb) = spawn(&b);
    let (mut mon_a, members_a) = wa.monitor("g").unwrap();
    let (mut mon_b, members_b) = wb.monitor("g").unwrap();
    let (mut ev_a, snap_a) = wa.events().unwrap();
    let (mut ev_b, snap_b) = wb.events().unwrap();
    assert!(members_a.is_empty() && members_b.is_empty());
    assert!(snap_a.is_empty() && snap_b.is_empty());

    // Each step is seen on both nodes before the next one.
    ga.join("g").unwrap();
    eventually("a's join", WAIT, || gb.get_members("g").unwrap().len() == 1).await;
    gb.join("g").unwrap();
    eventually("b's join", WAIT, || ga.get_members("g").unwrap().len() == 2).await;
    ga.leave("g").unwrap();
    eventually("a's leave", WAIT, || {
        gb.get_members("g").unwrap().to_vec() == vec![pb.pid()]
    })
    .await;
    // A change of another group reaches `events` only.
    gb.join("other").unwrap();
    eventually("b's join of other", WAIT, || {
        ga.get_members("other").unwrap().len() == 1
    })
    .await;

    let expected = [
        (EventKind::MemberJoined, "g", pa.pid()),
        (EventKind::MemberJoined, "g", pb.pid()),
        (EventKind::MemberLeft, "g", pa.pid()),
        (EventKind::MemberJoined, "other", pb.pid()),
    ];
    for (name, sub, n) in [
        ("monitor on a", &mut mon_a, 3),
        ("monitor on b", &mut mon_b, 3),
        ("events on a", &mut ev_a, 4),
        ("events on b", &mut ev_b, 4),
    ] {
        for (kind, group, pid) in &expected[..n] {
            let ev = next_event(sub).await;
            assert_eq!(
                (ev.kind, &*ev.group, &*ev.pids),
                (*kind, *group, &[*pid][..]),
                "{name}"
            );
            assert_eq!(ev.system(), "pg");
        }
        assert!(sub.try_recv().is_none(), "{name}: no other event");
        assert_eq!(sub.dropped(), 0, "{name}");
    }
}

/// 6a. A partition longer than `node_down_grace`: each side purges the other's members (with
/// events), both sides change while cut, and after the reconnection every view is the union
/// of the truths, the purged members restored.
#[tokio::test]
async fn partition_longer_than_grace_purges_then_restores() {
    partition(grace(PARTITION_GRACE), true).await;
}

/// 6b. A partition shorter than the default `node_down_grace`: nobody is purged, and after the
/// reconnection every view is the union of the truths.
#[tokio::test]
async fn partition_shorter_than_grace_keeps_members() {
    partition(ScopeConfig::default(), false).await;
}

/// Three nodes, C cut from A and B while both sides change their members.
async fn partition(config: ScopeConfig, purged: bool) {
    let a = node_with_witness(config.clone()).await;
    let b = node_with_witness(config.clone()).await;
    let c = node_with_witness(config).await;
    connect(&b, &a).await;
    connect(&c, &a).await;
    connect(&c, &b).await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    let (pc_stay, gc) = spawn(&c);
    let (pc_gone, gc_gone) = spawn(&c);
    ga.join("g").unwrap();
    gb.join("g").unwrap();
    gc.join(["g", "c"]).unwrap();
    gc_gone.join("g").unwrap();
    // C's member of the witness scope (short grace on every node).
    let witness_c = pc_stay.open(WITNESS).unwrap();
    witness_c.join("w").unwrap();
    let witness_a = pa.open(WITNESS).unwrap();

    let before = truth(&[
        ("g", &[pa.pid(), pb.pid(), pc_stay.pid(), pc_gone.pid()]),
        ("c", &[pc_stay.pid()]),
    ]);
    eventually("the first state everywhere", WAIT, || {
        view(&ga) == before
            && view(&gb) == before
            && view(&gc) == before
            && witness_a.get_members("w").unwrap().len() == 1
    })
    .await;
    let (_wa, wa) = spawn(&a);
    let (_wc, wc) = spawn(&c);
    let (mut sub_a, snap_a) = wa.events().unwrap();
    let (mut sub_c, snap_c) = wc.events().unwrap();
    let (mut ev_a, mut ev_c) = (Vec::new(), Vec::new());

    let cut_at = Instant::now();
    cut(&c, &a).await;
    cut(&c, &b).await;

    // Both sides change while cut.
    ga.leave("g").unwrap();
    ga.join("a").unwrap();
    let (pa2, ga2) = spawn(&a);
    ga2.join("g").unwrap();
    let (pc_new, gc_new) = spawn(&c);
    gc_new.join("g").unwrap();
    let gone = pc_gone.pid();
    drop(gc_gone);
    drop(pc_gone);

    let side_ab = truth(&[("g", &[pb.pid(), pa2.pid()]), ("a", &[pa.pid()])]);
    let side_c = truth(&[
        ("g", &[pc_stay.pid(), pc_new.pid()]),
        ("c", &[pc_stay.pid()]),
    ]);
    // Each side's own changes, plus the other side's old members unless purged.
    let (seen_ab, seen_c) = if purged {
        (side_ab.clone(), side_c.clone())
    } else {
        (
            truth(&[
                ("g", &[pb.pid(), pa2.pid(), pc_stay.pid(), gone]),
                ("a", &[pa.pid()]),
                ("c", &[pc_stay.pid()]),
            ]),
            truth(&[
                ("g", &[pa.pid(), pb.pid(), pc_stay.pid(), pc_new.pid()]),
                ("c", &[pc_stay.pid()]),
            ]),
        )
    };
    // `disconnect` forgets the peer: nothing reconnects the sides until they dial.
    let cut_holds = || {
        let reconnected = c.connected_peers().len()
            + usize::from(a.connected_peers().contains(&c.peer_id()))
            + usize::from(b.connected_peers().contains(&c.peer_id()));
        assert_eq!(
            reconnected,
            0,
            "the cut did not hold: c reconnected {:?} after the disconnects",
            cut_at.elapsed()
        );
    };
    if purged {
        eventually("each side purges the other", WAIT, || {
            cut_holds();
            view(&ga) == seen_ab && view(&gb) == seen_ab && view(&gc) == seen_c
        })
        .await;
        assert!(
            cut_at.elapsed() >= PARTITION_GRACE,
            "purged before the grace"
        );
    } else {
        // The witness scope's grace passing proves the cut lasted longer than PARTITION_GRACE;
        // the scope under test keeps the default grace and purges nobody.
        eventually("the witness scope purges c", WAIT, || {
            cut_holds();
            witness_a.get_members("w").unwrap().is_empty()
        })
        .await;
        assert!(
            cut_at.elapsed() < DEFAULT_GRACE,
            "the test was too slow to stay within the default grace"
        );
        assert_eq!(view(&ga), seen_ab);
        assert_eq!(view(&gb), seen_ab);
        assert_eq!(view(&gc), seen_c);
    }
    cut_holds();
    drain(&mut sub_a, &mut ev_a);
    drain(&mut sub_c, &mut ev_c);
    let purge_events = usize::from(purged);
    assert_eq!(
        carried(&ev_a, EventKind::MemberLeft, pc_stay.pid()),
        2 * purge_events,
        "a: pc_stay left g and c iff purged: {ev_a:?}"
    );
    assert_eq!(
        carried(&ev_c, EventKind::MemberLeft, pb.pid()),
        purge_events,
        "c: pb left iff purged: {ev_c:?}"
    );

    // Heal.
    connect(&c, &a).await;
    connect(&c, &b).await;
    let union = truth(&[
        ("g", &[pb.pid(), pa2.pid(), pc_stay.pid(), pc_new.pid()]),
        ("a", &[pa.pid()]),
        ("c", &[pc_stay.pid()]),
    ]);
    converge(
        "the union everywhere",
        &[(&ga, &union), (&gb, &union), (&gc, &union)],
    )
    .await;
    eventually("the witness member back", WAIT, || {
        witness_a.get_members("w").unwrap().len() == 1
    })
    .await;
    drain(&mut sub_a, &mut ev_a);
    drain(&mut sub_c, &mut ev_c);
    assert_eq!(
        replay(&snap_a, &ev_a).unwrap(),
        union,
        "a's events: {ev_a:?}"
    );
    assert_eq!(
        replay(&snap_c, &ev_c).unwrap(),
        union,
        "c's events: {ev_c:?}"
    );
    assert_eq!(
        carried(&ev_a, EventKind::MemberJoined, pc_stay.pid()),
        2 * purge_events,
        "a: pc_stay restored iff purged: {ev_a:?}"
    );
    assert_eq!(carried(&ev_a, EventKind::MemberLeft, gone), 1, "{ev_a:?}");
    assert_eq!(sub_a.dropped() + sub_c.dropped(), 0);
}

/// 7. A node that arrives after a partition healed gets the healed state, and the others get
/// its members.
#[tokio::test]
async fn a_node_joining_after_a_healed_partition_sees_the_truth() {
    let (a, b) = pair().await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    ga.join(["g", "a"]).unwrap();
    gb.join(["g", "b"]).unwrap();
    eventually("the first state", WAIT, || {
        view(&ga) == view(&gb) && view(&ga).len() == 3
    })
    .await;

    cut(&a, &b).await;
    ga.leave("a").unwrap();
    ga.join("g").unwrap();
    let (pb2, gb2) = spawn(&b);
    gb2.join(["g", "b2"]).unwrap();
    gb.leave("g").unwrap();
    connect(&b, &a).await;
    let healed = truth(&[
        ("g", &[pa.pid(), pa.pid(), pb2.pid()]),
        ("b", &[pb.pid()]),
        ("b2", &[pb2.pid()]),
    ]);
    eventually("healed", WAIT, || {
        view(&ga) == healed && view(&gb) == healed
    })
    .await;

    let c = node().await;
    let (pc, gc) = spawn(&c);
    gc.join("g").unwrap();
    connect(&c, &a).await;
    connect(&c, &b).await;
    let all = truth(&[
        ("g", &[pa.pid(), pa.pid(), pb2.pid(), pc.pid()]),
        ("b", &[pb.pid()]),
        ("b2", &[pb2.pid()]),
    ]);
    eventually("the third node's view", WAIT, || {
        view(&gc) == all && view(&ga) == all && view(&gb) == all
    })
    .await;
}

/// 8a. A node that shuts down gracefully: its peers drop its members at once (well before the
/// default grace), with `MemberLeft` events.
#[tokio::test]
async fn a_graceful_shutdown_is_seen_at_once() {
    let (a, b) = pair().await;
    let (pa, ga) = spawn(&a);
    let (pa2, ga2) = spawn(&a);
    let (pb, gb) = spawn(&b);
    ga.join(["g", "g", "h"]).unwrap();
    ga2.join("g").unwrap();
    gb.join("g").unwrap();
    let before = truth(&[
        ("g", &[pa.pid(), pa.pid(), pa2.pid(), pb.pid()]),
        ("h", &[pa.pid()]),
    ]);
    eventually("a's members on b", WAIT, || view(&gb) == before).await;
    let (_w, wb) = spawn(&b);
    let (mut sub, snap) = wb.events().unwrap();

    let started = Instant::now();
    a.shutdown().await;
    let after = truth(&[("g", &[pb.pid()])]);
    eventually("a's members gone from b", WAIT, || view(&gb) == after).await;
    assert!(
        started.elapsed() < DEFAULT_GRACE,
        "took {:?}: the grace, not the goodbye",
        started.elapsed()
    );
    let mut events = Vec::new();
    drain(&mut sub, &mut events);
    assert!(
        events.iter().all(|e| e.kind == EventKind::MemberLeft),
        "{events:?}"
    );
    assert_eq!(carried(&events, EventKind::MemberLeft, pa.pid()), 3);
    assert_eq!(carried(&events, EventKind::MemberLeft, pa2.pid()), 1);
    assert_eq!(replay(&snap, &events).unwrap(), after);
    eventually("the connection closed", WAIT, || {
        b.connected_peers().is_empty()
    })
    .await;
    assert!(ga.get_members("g").is_err(), "a is shut down");
}

/// 8b. A node dropped without `shutdown` (processes and node handles dropped): its peers lose
/// its members, with `MemberLeft` events. (Its processes' exits may or may not leave the node
/// before its network task ends: either way the members must go.)
#[tokio::test]
async fn a_dropped_node_is_purged() {
    let a = node_with(short_grace()).await;
    let b = node_with(short_grace()).await;
    connect(&b, &a).await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    ga.join(["g", "g", "h"]).unwrap();
    gb.join("g").unwrap();
    eventually("a's members on b", WAIT, || view(&gb).len() == 2).await;
    let (_w, wb) = spawn(&b);
    let (mut sub, snap) = wb.events().unwrap();

    let gone = pa.pid();
    drop(ga);
    drop(pa);
    drop(a);
    let after = truth(&[("g", &[pb.pid()])]);
    eventually("a's members gone from b", WAIT, || view(&gb) == after).await;
    let mut events = Vec::new();
    drain(&mut sub, &mut events);
    assert_eq!(
        carried(&events, EventKind::MemberLeft, gone),
        3,
        "{events:?}"
    );
    assert_eq!(replay(&snap, &events).unwrap(), after);
    eventually("the connection closed", WAIT, || {
        b.connected_peers().is_empty()
    })
    .await;
}

/// 8c. A node that becomes unreachable and dies without a word (no leave, no goodbye can reach
/// the peer): its members stay for `node_down_grace`, then are purged with events.
#[tokio::test]
async fn an_unreachable_dead_node_is_purged_after_the_grace() {
    let a = node_with(short_grace()).await;
    let b = node_with(short_grace()).await;
    connect(&b, &a).await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    ga.join(["g", "h"]).unwrap();
    gb.join("g").unwrap();
    let before = truth(&[("g", &[pa.pid(), pb.pid()]), ("h", &[pa.pid()])]);
    eventually("a's members on b", WAIT, || view(&gb) == before).await;
    let (_w, wb) = spawn(&b);
    let (mut sub, snap) = wb.events().unwrap();

    let gone = pa.pid();
    let down_at = Instant::now();
    cut(&b, &a).await;
    drop(ga);
    drop(pa);
    drop(a);
    let after = truth(&[("g", &[pb.pid()])]);
    eventually("a purged from b", WAIT, || view(&gb) == after).await;
    assert!(down_at.elapsed() >= SHORT_GRACE, "purged before the grace");
    let mut events = Vec::new();
    drain(&mut sub, &mut events);
    let mut left: Vec<(&str, &[Pid])> = events
        .iter()
        .map(|e| {
            assert_eq!(e.kind, EventKind::MemberLeft, "{events:?}");
            (&*e.group, &*e.pids)
        })
        .collect();
    left.sort();
    assert_eq!(left, vec![("g", &[gone][..]), ("h", &[gone][..])]);
    assert_eq!(replay(&snap, &events).unwrap(), after);
}

/// 9a. A node that crashes and restarts with the same identity before the grace ends: the
/// peer replaces the old incarnation's members by the new one's; nothing old survives, and
/// messages flow both ways with the new incarnation.
#[tokio::test]
async fn a_restarted_node_replaces_its_old_incarnation() {
    restart(false).await;
}

/// 9b. The same after a graceful shutdown.
#[tokio::test]
async fn a_node_restarted_after_shutdown_replaces_its_old_incarnation() {
    restart(true).await;
}

async fn restart(graceful: bool) {
    let kp = Keypair::generate_ed25519();
    let a1 = builder(ScopeConfig::default())
        .keypair(kp.clone())
        .build()
        .await
        .unwrap();
    let b = node().await;
    connect(&b, &a1).await;
    let (p_old, g_old) = spawn(&a1);
    let (pb, gb) = spawn(&b);
    g_old.join(["g", "g", "old"]).unwrap();
    gb.join("g").unwrap();
    let before = truth(&[
        ("g", &[p_old.pid(), p_old.pid(), pb.pid()]),
        ("old", &[p_old.pid()]),
    ]);
    eventually("the old incarnation on b", WAIT, || view(&gb) == before).await;
    let (_w, wb) = spawn(&b);
    let (mut sub, snap) = wb.events().unwrap();
    let old = p_old.pid();

    if graceful {
        a1.shutdown().await;
        drop((g_old, p_old, a1));
    } else {
        // A crash: the connection goes first, so neither the exits nor a goodbye reach b.
        cut(&b, &a1).await;
        drop((g_old, p_old, a1));
        assert_eq!(view(&gb), before, "within the grace, the old members stay");
    }

    let a2 = builder(ScopeConfig::default())
        .keypair(kp.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(a2.peer_id(), old.node());
    let (p_new, g_new) = spawn(&a2);
    assert!(p_new.pid().id() > old.id(), "pids are never reused");
    let mut inbox_new = p_new.listen("t");
    g_new.join(["g", "new"]).unwrap();
    connect(&a2, &b).await;
    let after = truth(&[("g", &[p_new.pid(), pb.pid()]), ("new", &[p_new.pid()])]);
    eventually("the new incarnation on b", WAIT, || {
        view(&gb) == after && view(&g_new) == after
    })
    .await;
    let mut events = Vec::new();
    drain(&mut sub, &mut events);
    assert_eq!(
        carried(&events, EventKind::MemberLeft, old),
        3,
        "{events:?}"
    );
    assert_eq!(replay(&snap, &events).unwrap(), after);

    // Messages both ways, with the new incarnation only.
    let mut inbox_b = pb.listen("t");
    assert_eq!(gb.broadcast("g", "t", &1u32).unwrap().slots(), 2);
    let m = next_message(&mut inbox_new).await;
    assert_eq!((m.from(), m.decode::<u32>().unwrap()), (pb.pid(), 1));
    assert_eq!(next_message(&mut inbox_b).await.decode::<u32>().unwrap(), 1);
    p_new.send(&pb.pid(), "t", &2u32).unwrap();
    let m = next_message(&mut inbox_b).await;
    assert_eq!((m.from(), m.decode::<u32>().unwrap()), (p_new.pid(), 2));
    assert!(inbox_new.try_recv().is_none(), "one slot, one message");
}

/// 10. A broadcast reaches every slot exactly once, in order per sender, across three nodes;
/// a direct `send` to a remote pid arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_every_slot_once_in_order() {
    const N: u32 = 200;
    let a = node().await;
    let b = node().await;
    let c = node().await;
    connect(&b, &a).await;
    connect(&c, &a).await;
    connect(&c, &b).await;

    // Receivers: (process, inbox, slots).
    let mut receivers = Vec::new();
    let mut instances = Vec::new();
    for (node, slots) in [(&a, 1), (&a, 2), (&b, 2), (&b, 1), (&c, 1)] {
        let (p, pg) = spawn(node);
        let inbox = p.listen("n");
        pg.join(vec!["g"; slots]).unwrap();
        instances.push(pg);
        receivers.push((p, inbox, slots));
    }
    let total: usize = receivers.iter().map(|r| r.2).sum();
    let (sender_a, ga) = spawn(&a);
    let (sender_c, gc) = spawn(&c);
    eventually("every slot everywhere", WAIT, || {
        [&ga, &gc, &instances[2]]
            .iter()
            .all(|pg| pg.get_members("g").unwrap().len() == total)
    })
    .await;

    // Two senders at once; the last message of each is `N`, an end marker.
    for n in 0..=N {
        assert_eq!(ga.broadcast("g", "n", &n).unwrap().slots(), total);
        assert_eq!(gc.broadcast("g", "n", &n).unwrap().slots(), total);
    }
    for (p, inbox, slots) in &mut receivers {
        let mut got: BTreeMap<Pid, Vec<u32>> = BTreeMap::new();
        for _ in 0..2 * (N as usize + 1) * *slots {
            let m = next_message(inbox).await;
            got.entry(m.from()).or_default().push(m.decode().unwrap());
        }
        let expected: Vec<u32> = (0..=N)
            .flat_map(|n| std::iter::repeat_n(n, *slots))
            .collect();
        for sender in [sender_a.pid(), sender_c.pid()] {
            assert_eq!(got[&sender], expected, "{} from {sender}", p.pid());
        }
        assert_eq!(got.len(), 2);
        assert!(inbox.try_recv().is_none(), "nothing after the end markers");
        assert_eq!(p.dropped(), 0);
    }

    // Direct sends to a remote pid, in order, then the end marker.
    let (target, inbox, _) = &mut receivers[2];
    let mut direct = target.listen("direct");
    for n in 0..=N {
        sender_a.send(&target.pid(), "direct", &n).unwrap();
    }
    let mut got = Vec::new();
    while got.last() != Some(&N) {
        let m = next_message(&mut direct).await;
        assert_eq!(m.from(), sender_a.pid());
        got.push(m.decode::<u32>().unwrap());
    }
    assert_eq!(got, (0..=N).collect::<Vec<_>>());
    assert!(direct.try_recv().is_none() && inbox.try_recv().is_none());
}

/// C dials only A; B, connected to A, changes nothing. C still learns B's members (a sync
/// from B needs a direct connection, so A's Discover answer tells C of B) and B learns C's.
#[tokio::test]
async fn a_node_that_dials_one_member_meets_the_others() {
    let (a, b) = pair().await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    ga.join("g").unwrap();
    gb.join("g").unwrap();
    let both = truth(&[("g", &[pa.pid(), pb.pid()])]);
    converge("a and b", &[(&ga, &both), (&gb, &both)]).await;

    let c = node().await;
    let (pc, gc) = spawn(&c);
    gc.join("g").unwrap();
    c.dial(a.listen_addrs()[0].clone()).unwrap();
    let all = truth(&[("g", &[pa.pid(), pb.pid(), pc.pid()])]);
    converge(
        "all three everywhere",
        &[(&ga, &all), (&gb, &all), (&gc, &all)],
    )
    .await;
    eventually("c connected to b", WAIT, || {
        c.connected_peers().contains(&b.peer_id())
    })
    .await;
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
}

/// Between nodes connected to each other, deltas go on the delta streams and nowhere else:
/// every change reaches the other two once, none goes through gossipsub, none is a
/// duplicate.
#[tokio::test]
async fn deltas_between_connected_nodes_take_the_delta_streams_only() {
    let (a, b) = pair().await;
    let c = node().await;
    connect(&c, &a).await;
    eventually("c connected to b too", WAIT, || {
        c.connected_peers().contains(&b.peer_id())
    })
    .await;
    let nodes = [&a, &b, &c];
    let members: Vec<(Process, Instance)> = nodes.iter().map(|n| spawn(n)).collect();
    // A first change each, seen everywhere: by then every stream has had its round trips.
    for (_, pg) in &members {
        pg.join("warm").unwrap();
    }
    let pids: Vec<Pid> = members.iter().map(|(p, _)| p.pid()).collect();
    let warm = truth(&[("warm", &pids[..])]);
    let each: Vec<_> = members.iter().map(|(_, pg)| (pg, &warm)).collect();
    converge("the warm-up everywhere", &each).await;
    let before: Vec<ScopeStats> = nodes.iter().map(|n| stats(n)).collect();

    for (_, pg) in &members {
        pg.join("g").unwrap();
        pg.join("g").unwrap();
        pg.leave("warm").unwrap();
    }
    let after = truth(&[(
        "g",
        &[pids[0], pids[0], pids[1], pids[1], pids[2], pids[2]][..],
    )]);
    let each: Vec<_> = members.iter().map(|(_, pg)| (pg, &after)).collect();
    converge("the changes everywhere", &each).await;
    for (n, s0) in nodes.iter().zip(&before) {
        let s1 = stats(n);
        assert_eq!(
            s1.deltas_sent, s0.deltas_sent,
            "nothing on gossipsub: {s1:?}"
        );
        assert!(
            s1.deltas_streamed >= s0.deltas_streamed + 2,
            "its changes streamed to both peers: {s1:?}"
        );
        assert!(s1.deltas_applied >= s0.deltas_applied + 2, "{s1:?}");
        assert_eq!(s1.deltas_duplicate, s0.deltas_duplicate, "{s1:?}");
        assert_eq!(s1.deltas_rejected, s0.deltas_rejected, "{s1:?}");
    }
    for n in nodes {
        n.shutdown().await;
    }
}

// ------------------------------------------------------------------------ dialing and reach

#[tokio::test]
async fn a_peer_is_dialed_by_its_id_alone_and_reached_directly() {
    let (a, b) = pair().await;
    assert_eq!(a.reach(&b.peer_id()), procgroups::Reach::Direct);
    assert_eq!(b.reach(&a.peer_id()), procgroups::Reach::Direct);
    let stranger = procgroups::PeerId::random();
    assert_eq!(a.reach(&stranger), procgroups::Reach::Unreached);

    // Cut on both sides (neither redials), then b dials `/p2p/<a>` alone: it uses the
    // addresses it learnt of a.
    cut(&a, &b).await;
    assert_eq!(b.reach(&a.peer_id()), procgroups::Reach::Unreached);
    let bare: procgroups::Multiaddr = format!("/p2p/{}", a.peer_id()).parse().expect("address");
    b.dial(bare).expect("dial");
    eventually("b to reach a again, directly", WAIT, || {
        b.reach(&a.peer_id()) == procgroups::Reach::Direct
    })
    .await;
    assert_eq!(
        b.node_stats().peers_relayed,
        0,
        "nothing relayed on loopback"
    );
}
