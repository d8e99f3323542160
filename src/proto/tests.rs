//! Unit tests of the core's protocol rules, one rule at a time.

use std::time::Duration;

use libp2p::PeerId;

use super::input::{DeltaOutcome, Rejection, SyncOutcome};
use super::messages::{Delta, Op, SyncGroup, SyncMember, SyncState, Version};
use super::state::{CoreConfig, ScopeCore};
use crate::testing::drive::Drive;
use crate::{EventKind, Pid};

pub(super) fn config() -> CoreConfig {
    CoreConfig {
        max_groups: 0,
        max_members_per_group: 0,
        reorder_window: Duration::from_millis(100),
        reorder_capacity: 4,
        sync_timeout: Duration::from_secs(1),
        max_delta_bytes: 60 * 1024,
        hash_seed: 7,
        max_meta_bytes: 1024,
    }
}

pub(super) fn core_with(cfg: CoreConfig) -> ScopeCore {
    let mut core = ScopeCore::new(PeerId::random(), rand::random(), cfg);
    core.share();
    core
}

pub(super) fn core() -> ScopeCore {
    core_with(config())
}

pub(super) const T0: Duration = Duration::ZERO;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Every delta of `from`, applied to `to` in order.
pub(super) fn relay(from: &mut ScopeCore, to: &mut ScopeCore) {
    let sender = from.local_peer();
    for delta in from.take_deltas() {
        assert_eq!(
            to.handle_delta(sender, delta, T0),
            Ok(DeltaOutcome::Applied)
        );
    }
}

/// `to`'s view of `from`'s members equals `from`'s own.
fn assert_mirrors(from: &ScopeCore, to: &ScopeCore) {
    let peer = from.local_peer();
    let mut theirs = to.view();
    for members in theirs.values_mut() {
        members.retain(|pid, _| pid.node() == peer);
    }
    theirs.retain(|_, m| !m.is_empty());
    assert_eq!(theirs, from.view());
}

#[test]
fn local_changes_become_ordered_deltas_that_peers_apply() {
    let (mut a, mut b) = (core(), core());
    a.join(1, &["g", "g", "h"]).unwrap();
    a.leave(1, &["g"]);
    a.join(2, &["h"]).unwrap();
    a.exit(2);
    let deltas = a.take_deltas();
    assert_eq!(deltas.len(), 1, "one tick, one delta");
    assert_eq!(deltas[0].seq, 1);
    assert_eq!(a.version().seq, 1);
    let sender = a.local_peer();
    b.handle_delta(sender, deltas[0].clone(), T0).unwrap();
    assert_mirrors(&a, &b);
    assert_eq!(
        b.handle_delta(sender, deltas[0].clone(), T0),
        Ok(DeltaOutcome::Duplicate)
    );
    assert_mirrors(&a, &b);
    assert_eq!(b.applied_version(&sender), Some(a.version()));
}

#[test]
fn a_group_index_taken_again_before_the_flush_names_each_group() {
    let (mut a, mut b) = (core(), core());
    a.join(1, &["g"]).unwrap();
    a.leave(1, &["g"]); // g empties: its index is free
    a.join(1, &["h"]).unwrap(); // and h takes it
    let deltas = a.take_deltas();
    assert_eq!(deltas.len(), 1);
    let names: Vec<&str> = deltas[0].groups.iter().map(|g| &**g).collect();
    assert_eq!(names, ["g", "h"]);
    let sender = a.local_peer();
    let delta = deltas.into_iter().next().unwrap();
    assert_eq!(b.handle_delta(sender, delta, T0), Ok(DeltaOutcome::Applied));
    assert_mirrors(&a, &b);
    assert_eq!(b.members("h").len(), 1);
    assert!(b.members("g").is_empty());
}

#[test]
fn without_peers_changes_bump_the_version_but_queue_nothing() {
    let mut a = ScopeCore::new(PeerId::random(), 1, config());
    a.join(1, &["g"]).unwrap();
    a.leave(1, &["g"]);
    assert_eq!(a.version().seq, 2);
    assert!(a.take_deltas().is_empty());
    assert_eq!(a.queued_deltas(), 0);
}

#[test]
fn large_bursts_are_cut_into_consecutive_deltas_below_the_size_cap() {
    let mut cfg = config();
    cfg.max_delta_bytes = 2048;
    let (mut a, mut b) = (core_with(cfg), core());
    // Process ids as a node makes them (from its clock): nine varint bytes each.
    for id in 0..1000 {
        a.join(
            1_732_240_000_000_000_000 + id,
            &[&format!("group-{}", id % 37)],
        )
        .unwrap();
    }
    let deltas = a.take_deltas();
    assert!(deltas.len() > 5, "{} deltas", deltas.len());
    for (i, d) in deltas.iter().enumerate() {
        assert_eq!(d.seq, i as u64 + 1);
        let mut bytes = Vec::new();
        ciborium::into_writer(d, &mut bytes).unwrap();
        assert!(bytes.len() <= 2048, "delta {i} is {} bytes", bytes.len());
    }
    let sender = a.local_peer();
    for d in deltas {
        b.handle_delta(sender, d, T0).unwrap();
    }
    assert_mirrors(&a, &b);
}

#[test]
fn an_early_delta_waits_for_the_missing_one() {
    let (mut a, mut b) = (core(), core());
    a.join(1, &["g"]).unwrap();
    let first = a.take_deltas().remove(0);
    a.join(2, &["g"]).unwrap();
    let second = a.take_deltas().remove(0);
    let sender = a.local_peer();
    b.handle_delta(sender, first, T0).unwrap();
    a.join(3, &["g"]).unwrap();
    let third = a.take_deltas().remove(0);
    assert_eq!(b.handle_delta(sender, third, T0), Ok(DeltaOutcome::Held));
    assert_eq!(b.members("g").len(), 1, "nothing applied out of order");
    assert_eq!(
        b.handle_delta(sender, second, ms(10)),
        Ok(DeltaOutcome::Applied)
    );
    assert_mirrors(&a, &b);
    b.tick(ms(1000));
    assert_eq!(b.poll_request(), None, "the gap closed: no sync needed");
}

#[test]
fn a_gap_that_stays_open_pulls_a_sync_once_the_window_passes() {
    let (mut a, mut b) = (core(), core());
    let sender = a.local_peer();
    a.join(1, &["g"]).unwrap();
    let _lost = a.take_deltas();
    a.join(2, &["g"]).unwrap();
    let second = a.take_deltas().remove(0);
    // b knows nothing of a, and the delta is not a's first: hold it.
    assert_eq!(b.handle_delta(sender, second, T0), Ok(DeltaOutcome::Held));
    b.tick(ms(50));
    assert_eq!(b.poll_request(), None, "still inside the reorder window");
    b.tick(ms(100));
    assert_eq!(b.poll_request(), Some(sender));
    b.tick(ms(150));
    assert_eq!(b.poll_request(), None, "one request in flight at a time");
    assert_eq!(
        b.handle_sync(sender, a.sync_state(), ms(160)),
        Ok(SyncOutcome::Applied)
    );
    assert_mirrors(&a, &b);
    b.tick(ms(5000));
    assert_eq!(b.poll_request(), None);
}

#[test]
fn an_unanswered_sync_request_is_sent_again_after_the_timeout() {
    let (a, mut b) = (core(), core());
    let sender = a.local_peer();
    b.handle_peer_version(
        sender,
        Version {
            incarnation: 9,
            seq: 4,
        },
        T0,
    );
    assert_eq!(b.poll_request(), Some(sender));
    b.tick(ms(500));
    assert_eq!(b.poll_request(), None);
    b.tick(ms(1000));
    assert_eq!(b.poll_request(), Some(sender));
}

#[test]
fn a_sync_that_failed_is_asked_for_again_after_the_reorder_window() {
    // The request failed (its connection closed): the version still differs, so the core
    // asks again, and keeps asking until the sync comes (or the origin is purged).
    let (a, mut b) = (core(), core());
    let sender = a.local_peer();
    let version = Version {
        incarnation: 9,
        seq: 4,
    };
    b.handle_peer_version(sender, version, T0);
    assert_eq!(b.poll_request(), Some(sender));
    b.sync_failed(sender, ms(10));
    assert_eq!(b.poll_request(), None, "not at once");
    b.tick(ms(10) + config().reorder_window);
    assert_eq!(b.poll_request(), Some(sender), "again after the window");
    b.sync_failed(sender, ms(400));
    b.peer_down(sender);
    b.tick(ms(1000));
    assert_eq!(b.poll_request(), None, "not once the origin is purged");
}

#[test]
fn a_sync_replaces_the_origins_state_and_reports_only_the_difference() {
    let (mut a, mut b) = (core(), core());
    let sender = a.local_peer();
    a.join(1, &["keep", "drop", "more"]).unwrap();
    a.join(2, &["drop"]).unwrap();
    relay(&mut a, &mut b);
    b.drain_changes().for_each(drop);
    // Changes b never hears of as deltas.
    a.leave(1, &["drop"]);
    a.exit(2);
    a.join(1, &["more", "new"]).unwrap();
    let _lost = a.take_deltas();
    assert_eq!(
        b.handle_sync(sender, a.sync_state(), T0),
        Ok(SyncOutcome::Applied)
    );
    assert_mirrors(&a, &b);
    let mut changes: Vec<(EventKind, String, u64, u32)> = b
        .drain_changes()
        .map(|c| (c.kind, c.group.to_string(), c.pid.id(), c.count))
        .collect();
    changes.sort();
    assert_eq!(
        changes,
        vec![
            (EventKind::MemberJoined, "more".into(), 1, 1),
            (EventKind::MemberJoined, "new".into(), 1, 1),
            (EventKind::MemberLeft, "drop".into(), 1, 1),
            (EventKind::MemberLeft, "drop".into(), 2, 1),
        ]
    );
    // The same state again is stale and changes nothing.
    assert_eq!(
        b.handle_sync(sender, a.sync_state(), T0),
        Ok(SyncOutcome::Stale)
    );
    assert_eq!(b.drain_changes().count(), 0);
}

#[test]
fn a_sync_covers_the_queued_changes_so_their_delta_is_a_duplicate() {
    let (mut a, mut b) = (core(), core());
    let sender = a.local_peer();
    a.join(1, &["g"]).unwrap();
    let state = a.sync_state();
    b.handle_sync(sender, state, T0).unwrap();
    let deltas = a.take_deltas();
    assert_eq!(deltas.len(), 1);
    assert_eq!(
        b.handle_delta(sender, deltas[0].clone(), T0),
        Ok(DeltaOutcome::Duplicate)
    );
    assert_eq!(b.members("g").len(), 1, "not counted twice");
}

#[test]
fn node_down_purges_and_late_deltas_create_no_ghosts() {
    let (mut a, mut b) = (core(), core());
    let sender = a.local_peer();
    a.join(1, &["g"]).unwrap();
    relay(&mut a, &mut b);
    a.join(2, &["g"]).unwrap();
    let late = a.take_deltas().remove(0);
    b.drain_changes().for_each(drop);
    b.peer_down(sender);
    assert!(b.members("g").is_empty());
    let left: Vec<_> = b.drain_changes().collect();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].kind, EventKind::MemberLeft);
    // The delta that was in flight when the node went down is not applied...
    assert_eq!(b.handle_delta(sender, late, T0), Ok(DeltaOutcome::Held));
    assert!(b.members("g").is_empty(), "no ghost member");
    // ...it asks the origin itself, and only its answer restores the members.
    assert_eq!(b.poll_request(), Some(sender));
    b.sync_failed(sender, T0);
    assert!(b.members("g").is_empty());
    b.handle_sync(sender, a.sync_state(), T0).unwrap();
    assert_mirrors(&a, &b);
}

#[test]
fn a_restarted_origin_is_a_new_incarnation_that_replaces_the_old() {
    let mut b = core();
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let peer = keypair.public().to_peer_id();
    let mut old = ScopeCore::new(peer, 1, config());
    old.share();
    old.join(1, &["g"]).unwrap();
    relay(&mut old, &mut b);
    let mut new = ScopeCore::new(peer, 2, config());
    new.share();
    new.join(100, &["g"]).unwrap();
    let first = new.take_deltas().remove(0);
    assert_eq!(first.seq, 1);
    assert_eq!(b.handle_delta(peer, first, T0), Ok(DeltaOutcome::Held));
    assert_eq!(b.poll_request(), Some(peer));
    b.handle_sync(peer, new.sync_state(), T0).unwrap();
    assert_mirrors(&new, &b);
    // A straggler of the old incarnation changes nothing now.
    old.join(2, &["g"]).unwrap();
    let straggler = old.take_deltas().remove(0);
    b.handle_delta(peer, straggler, T0).unwrap();
    assert_mirrors(&new, &b);
}

#[test]
fn hostile_input_is_rejected_and_changes_nothing() {
    let (mut a, mut b) = (core(), core());
    let honest = a.local_peer();
    a.join(1, &["g"]).unwrap();
    relay(&mut a, &mut b);
    let before = b.view();
    let mallory = PeerId::random();
    let good = |seq| Delta {
        origin: mallory,
        incarnation: 1,
        seq,
        groups: vec!["g".into()],
        ops: vec![Op {
            group: 0,
            id: 5,
            change: 1,
            meta: None,
        }],
    };
    type Case = (PeerId, Delta, fn(&Rejection) -> bool);
    let cases: Vec<Case> = vec![
        // Mallory announcing (or removing) the honest node's processes.
        (
            mallory,
            Delta {
                origin: honest,
                ..good(1)
            },
            |r| matches!(r, Rejection::WrongOrigin { .. }),
        ),
        (
            mallory,
            Delta {
                ops: vec![Op {
                    group: 0,
                    id: 1,
                    change: -1,
                    meta: None,
                }],
                origin: honest,
                ..good(1)
            },
            |r| matches!(r, Rejection::WrongOrigin { .. }),
        ),
        (
            b.local_peer(),
            Delta {
                origin: b.local_peer(),
                ..good(1)
            },
            |r| matches!(r, Rejection::FromSelf),
        ),
        (mallory, good(0), |r| matches!(r, Rejection::ZeroSeq)),
        (
            mallory,
            Delta {
                ops: vec![Op {
                    group: 3,
                    id: 5,
                    change: 1,
                    meta: None,
                }],
                ..good(1)
            },
            |r| matches!(r, Rejection::BadGroupIndex { .. }),
        ),
        (
            mallory,
            Delta {
                ops: vec![Op {
                    group: 0,
                    id: 5,
                    change: 0,
                    meta: None,
                }],
                ..good(1)
            },
            |r| matches!(r, Rejection::BadChange),
        ),
        (
            mallory,
            Delta {
                ops: vec![Op {
                    group: 0,
                    id: 5,
                    change: i64::MAX,
                    meta: None,
                }],
                ..good(1)
            },
            |r| matches!(r, Rejection::BadChange),
        ),
        (
            mallory,
            Delta {
                groups: vec!["".into()],
                ..good(1)
            },
            |r| matches!(r, Rejection::InvalidGroupName(_)),
        ),
        (
            mallory,
            Delta {
                groups: vec!["x".repeat(256).into()],
                ..good(1)
            },
            |r| matches!(r, Rejection::InvalidGroupName(_)),
        ),
    ];
    for (sender, delta, expected) in cases {
        let outcome = b.handle_delta(sender, delta.clone(), T0);
        assert!(
            matches!(&outcome, Err(r) if expected(r)),
            "{delta:?}: {outcome:?}"
        );
        assert_eq!(b.view(), before);
    }
    let sync = |groups| SyncState {
        origin: mallory,
        version: Version {
            incarnation: 1,
            seq: 1,
        },
        groups,
    };
    let bad_syncs = [
        SyncState {
            origin: honest,
            ..sync(vec![])
        },
        sync(vec![SyncGroup {
            name: "g".into(),
            members: vec![SyncMember::plain(1, 0)],
        }]),
        sync(vec![SyncGroup {
            name: "g".into(),
            members: vec![SyncMember::plain(1, 1), SyncMember::plain(1, 2)],
        }]),
        sync(vec![
            SyncGroup {
                name: "g".into(),
                members: vec![SyncMember::plain(1, 1)],
            },
            SyncGroup {
                name: "g".into(),
                members: vec![SyncMember::plain(2, 1)],
            },
        ]),
        sync(vec![SyncGroup {
            name: String::new(),
            members: vec![SyncMember::plain(1, 1)],
        }]),
    ];
    for state in bad_syncs {
        assert!(
            b.handle_sync(mallory, state.clone(), T0).is_err(),
            "{state:?}"
        );
        assert_eq!(b.view(), before);
    }
    assert_eq!(b.stats().deltas_rejected, 9);
    assert_eq!(b.stats().syncs_rejected, 5);
}

#[test]
fn limits_cap_what_peers_make_this_node_hold() {
    let mut cfg = config();
    cfg.max_groups = 2;
    cfg.max_members_per_group = 3;
    let (mut a, mut b) = (core(), core_with(cfg));
    a.join(1, &["g", "g", "g", "g", "g"]).unwrap();
    a.join(2, &["h", "i"]).unwrap();
    relay(&mut a, &mut b);
    let view = b.view();
    assert_eq!(view.len(), 2, "max_groups: {view:?}");
    assert_eq!(view["g"].values().sum::<u32>(), 3, "max_members_per_group");
    assert_eq!(b.stats().slots_refused, 2 + 1);
    // Leaving what was refused is harmless.
    a.exit(1);
    a.exit(2);
    relay(&mut a, &mut b);
    assert!(b.view().is_empty());
    // Each origin has budgets of its own: a's slots take nothing from b's local joins.
    a.join(1, &["g", "g", "g"]).unwrap();
    a.join(2, &["h"]).unwrap();
    relay(&mut a, &mut b);
    b.join(9, &["g", "g", "g"]).unwrap();
    b.join(9, &["i"]).unwrap();
    assert_eq!(b.view()["g"].values().sum::<u32>(), 6);
    // ... and the local budgets are the same as before, counted over b's own slots.
    assert_eq!(
        b.join(9, &["g"]).unwrap_err().limit,
        crate::Limit::MaxMembersPerGroup
    );
    assert_eq!(
        b.join(9, &["j"]).unwrap_err().limit,
        crate::Limit::MaxGroups
    );
}

#[test]
fn one_origin_cannot_take_the_room_of_another() {
    let mut cfg = config();
    cfg.max_groups = 2;
    let (mut hostile, mut honest, mut b) = (core(), core(), core_with(cfg));
    hostile.join(1, &["h1", "h2", "h3"]).unwrap();
    relay(&mut hostile, &mut b);
    honest.join(1, &["x", "y"]).unwrap();
    relay(&mut honest, &mut b);
    assert_mirrors(&honest, &b);
    assert_eq!(
        b.refused_slots(),
        vec![(hostile.local_peer(), 1)],
        "only the origin over its budget is cut"
    );
}

#[test]
fn refused_slots_come_back_once_they_fit() {
    let mut cfg = config();
    cfg.max_groups = 2;
    cfg.max_members_per_group = 2;
    let (mut a, mut b) = (core(), core_with(cfg));
    let sender = a.local_peer();
    a.join(1, &["g", "h", "i"]).unwrap();
    a.join(2, &["g", "g"]).unwrap();
    relay(&mut a, &mut b);
    assert_eq!(b.refused_slots(), vec![(sender, 2)], "i, and one slot of g");
    assert_eq!(b.poll_request(), None, "nothing to pull while nothing fits");
    // a leaves h and one of 2's slots of g: the versions agree, yet the state is pulled.
    a.leave(1, &["h"]);
    a.leave(2, &["g"]);
    relay(&mut a, &mut b);
    assert_eq!(b.poll_request(), Some(sender));
    assert_eq!(
        b.handle_sync(sender, a.sync_state(), T0),
        Ok(SyncOutcome::Applied),
        "a state of the applied version applies while slots are refused"
    );
    assert_mirrors(&a, &b);
    assert_eq!(b.refused_slots(), vec![]);
    // Once whole, a state of the same version is stale again.
    assert_eq!(
        b.handle_sync(sender, a.sync_state(), T0),
        Ok(SyncOutcome::Stale)
    );
}

#[test]
fn local_batch_join_is_all_or_nothing_under_limits() {
    let mut cfg = config();
    cfg.max_groups = 2;
    cfg.max_members_per_group = 2;
    let mut a = core_with(cfg);
    a.join(1, &["g"]).unwrap();
    assert_eq!(
        a.join(1, &["h", "i"]).unwrap_err().limit,
        crate::Limit::MaxGroups
    );
    assert_eq!(
        a.join(1, &["g", "g"]).unwrap_err().limit,
        crate::Limit::MaxMembersPerGroup
    );
    assert_eq!(a.view().len(), 1);
    assert_eq!(a.members("g").len(), 1);
    a.join(2, &["g", "h"]).unwrap();
    assert_eq!(a.members("g").len(), 2);
}

#[test]
fn reads_are_cached_snapshots_until_the_group_changes() {
    let mut a = core();
    a.join(1, &["g"]).unwrap();
    let first = a.members("g");
    let again = a.members("g");
    assert!(
        first.shares_with(&again),
        "a read of an unchanged group is cached"
    );
    a.join(2, &["g"]).unwrap();
    let after = a.members("g");
    assert_eq!(
        (first.len(), after.len()),
        (1, 2),
        "old snapshots never change"
    );
    let peer = a.local_peer();
    assert_eq!(after.to_vec(), vec![Pid::new(peer, 1), Pid::new(peer, 2)]);
    assert_eq!(&*a.which_groups(), &["g".into()]);
    assert_eq!(&*a.which_local_groups(), &["g".into()]);
    a.exit(1);
    a.exit(2);
    assert!(a.which_groups().is_empty() && a.which_local_groups().is_empty());
}

mod properties {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum LocalOp {
        Join(u64, Vec<usize>),
        Leave(u64, Vec<usize>),
        Exit(u64),
    }

    const NAMES: [&str; 4] = ["a", "b", "c", "d"];

    fn local_op() -> impl Strategy<Value = LocalOp> {
        let names = || proptest::collection::vec(0..NAMES.len(), 1..4);
        prop_oneof![
            4 => (0..4u64, names()).prop_map(|(id, g)| LocalOp::Join(id, g)),
            3 => (0..4u64, names()).prop_map(|(id, g)| LocalOp::Leave(id, g)),
            1 => (0..4u64).prop_map(LocalOp::Exit),
        ]
    }

    /// (process id, group) → slots.
    type Model = BTreeMap<(u64, &'static str), u32>;

    fn model_view(model: &Model, peer: PeerId) -> BTreeMap<String, BTreeMap<Pid, u32>> {
        let mut view: BTreeMap<String, BTreeMap<Pid, u32>> = BTreeMap::new();
        for ((id, group), slots) in model {
            view.entry(group.to_string())
                .or_default()
                .insert(Pid::new(peer, *id), *slots);
        }
        view
    }

    /// Applies `core`'s pending changes to a replayed view.
    fn replay(view: &mut BTreeMap<String, BTreeMap<Pid, u32>>, core: &mut ScopeCore) {
        for change in core.drain_changes() {
            let group = view.entry(change.group.to_string()).or_default();
            let slots = group.entry(change.pid).or_insert(0);
            match change.kind {
                EventKind::MemberJoined => *slots += change.count,
                EventKind::MemberLeft => *slots -= change.count,
                EventKind::MemberUpdated => {}
            }
            if *slots == 0 {
                group.remove(&change.pid);
            }
            if group.is_empty() {
                view.remove(&*change.group);
            }
        }
    }

    proptest! {
        /// The core agrees with a plain model after any sequence of local operations, under
        /// limits; a peer fed its deltas mirrors it; the peer's events replay to its view.
        #[test]
        fn the_core_agrees_with_a_model(
            ops in proptest::collection::vec(local_op(), 0..120),
            max_groups in 0usize..4,
            max_members in 0usize..6,
            flush_every in 1usize..8,
        ) {
            let mut cfg = config();
            cfg.max_groups = max_groups;
            cfg.max_members_per_group = max_members;
            let mut a = core_with(cfg);
            let mut b = core();
            let peer = a.local_peer();
            let mut model = Model::new();
            let mut replayed: BTreeMap<String, BTreeMap<Pid, u32>> = BTreeMap::new();
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    LocalOp::Join(id, groups) => {
                        let names: Vec<&str> = groups.iter().map(|g| NAMES[*g]).collect();
                        let mut after = model.clone();
                        for name in &names {
                            *after.entry((id, name)).or_insert(0) += 1;
                        }
                        let view = model_view(&after, peer);
                        let fits = (max_groups == 0 || view.len() <= max_groups)
                            && (max_members == 0
                                || view.values().all(|m| m.values().sum::<u32>() as usize <= max_members));
                        prop_assert_eq!(a.join(id, &names).is_ok(), fits);
                        if fits {
                            model = after;
                        }
                    }
                    LocalOp::Leave(id, groups) => {
                        let names: Vec<&str> = groups.iter().map(|g| NAMES[*g]).collect();
                        let mut expected = 0;
                        for name in &names {
                            if let Some(slots) = model.get_mut(&(id, *name)) {
                                *slots -= 1;
                                expected += 1;
                                if *slots == 0 {
                                    model.remove(&(id, *name));
                                }
                            }
                        }
                        prop_assert_eq!(a.leave(id, &names), expected);
                    }
                    LocalOp::Exit(id) => {
                        a.exit(id);
                        model.retain(|(pid, _), _| *pid != id);
                    }
                }
                prop_assert_eq!(a.view(), model_view(&model, peer));
                if step % flush_every == 0 {
                    for delta in a.take_deltas() {
                        prop_assert_eq!(b.handle_delta(peer, delta, T0), Ok(DeltaOutcome::Applied));
                    }
                }
                replay(&mut replayed, &mut b);
            }
            for delta in a.take_deltas() {
                prop_assert_eq!(b.handle_delta(peer, delta, T0), Ok(DeltaOutcome::Applied));
            }
            replay(&mut replayed, &mut b);
            prop_assert_eq!(b.view(), a.view());
            prop_assert_eq!(&replayed, &b.view(), "the peer's events replay to its view");
            // Reads agree with the view.
            for name in NAMES {
                let members = a.members(name);
                let expected: usize = model.iter().filter(|((_, g), _)| *g == name).map(|(_, s)| *s as usize).sum();
                prop_assert_eq!(members.len(), expected);
                prop_assert_eq!(a.local_members(name), members);
            }
        }
    }
}
