//! Unit tests of metadata and registered names in the core.

use bytes::Bytes;

use super::ScopeCore;
use crate::proto::input::{DeltaOutcome, Output, Refusal, Rejection};
use crate::proto::messages::{Delta, Op, SyncState, Version};
use crate::proto::tests::{T0, config, core, core_with, relay};
use crate::testing::drive::Drive;
use crate::vocab::error::Limit;
use crate::vocab::meta::Meta;
use crate::{EventKind, Pid};

fn meta(value: &str) -> Meta {
    Meta::encode(value).unwrap()
}

fn meta_of(core: &ScopeCore, group: &str, pid: Pid) -> Option<String> {
    core.members_with_meta(group)
        .into_iter()
        .find(|m| m.pid == pid)
        .and_then(|m| m.meta)
        .map(|m| m.decode().unwrap())
}

/// `b` applies `a`'s whole state.
fn sync(a: &mut ScopeCore, b: &mut ScopeCore) {
    let state = a.sync_state();
    b.handle_sync(a.local_peer(), state, T0).unwrap();
}

#[test]
fn metadata_travels_with_joins_and_updates_and_goes_with_the_last_slot() {
    let (mut a, mut b) = (core(), core());
    let pid = Pid::new(a.local_peer(), 1);
    a.join_with(1, "lobby", meta("online")).unwrap();
    a.join(1, &["lobby"]).unwrap(); // a plain join keeps the value
    relay(&mut a, &mut b);
    let joined: Vec<_> = b.drain_changes().collect();
    assert_eq!(joined.len(), 2);
    assert!(joined.iter().all(|c| c.kind == EventKind::MemberJoined));
    assert_eq!(
        joined[0].meta,
        Some(meta("online")),
        "the join carries the value"
    );
    assert_eq!(meta_of(&b, "lobby", pid).as_deref(), Some("online"));
    assert_eq!(b.members_with_meta("lobby")[0].slots, 2);

    assert!(a.update(1, "lobby", meta("away")));
    assert!(!a.update(1, "elsewhere", meta("away")), "not a member");
    relay(&mut a, &mut b);
    let updated: Vec<_> = b.drain_changes().collect();
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0].kind, EventKind::MemberUpdated);
    assert_eq!(
        (updated[0].count, updated[0].meta.clone()),
        (2, Some(meta("away")))
    );
    assert_eq!(meta_of(&b, "lobby", pid).as_deref(), Some("away"));

    a.leave(1, &["lobby"]);
    a.leave(1, &["lobby"]);
    a.join(1, &["lobby"]).unwrap();
    relay(&mut a, &mut b);
    let changes: Vec<_> = b.drain_changes().collect();
    assert_eq!(
        changes[1].meta,
        Some(meta("away")),
        "a leave names the value it had"
    );
    assert_eq!(
        meta_of(&b, "lobby", pid),
        None,
        "the value went with the last slot"
    );
    assert_eq!(a.meta_view(), b.meta_view());
}

#[test]
fn a_sync_carries_metadata_and_reports_a_changed_value_as_an_update() {
    let (mut a, mut b) = (core(), core());
    let pid = Pid::new(a.local_peer(), 1);
    a.join_with(1, "g", meta("v1")).unwrap();
    a.join_with(2, "g", meta("kept")).unwrap();
    sync(&mut a, &mut b);
    assert_eq!(b.meta_view(), a.meta_view());
    b.drain_changes().for_each(drop);
    // Deltas lost: b learns of the new value from the next sync only.
    a.update(1, "g", meta("v2"));
    a.take_deltas();
    sync(&mut a, &mut b);
    let changes: Vec<_> = b.drain_changes().collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        (changes[0].kind, changes[0].pid, changes[0].meta.clone()),
        (EventKind::MemberUpdated, pid, Some(meta("v2")))
    );
    assert_eq!(b.meta_view(), a.meta_view());
}

#[test]
fn values_over_the_cap_are_refused_locally_and_from_peers() {
    let mut small = config();
    small.max_meta_bytes = 16;
    let (mut a, mut b) = (core(), core_with(small));
    let big = Meta::encode(&"x".repeat(64)).unwrap();
    let mut c = core_with({
        let mut cfg = config();
        cfg.max_meta_bytes = 16;
        cfg
    });
    let refused = c.join_with(1, "g", big.clone()).unwrap_err();
    assert_eq!(refused.limit, Limit::MaxMetaBytes);
    assert!(c.view().is_empty(), "nothing changed");
    // A peer with a larger cap sends one: the member is held, its value is not.
    a.join_with(1, "g", big).unwrap();
    relay(&mut a, &mut b);
    assert_eq!(b.view()["g"].len(), 1);
    assert!(b.meta_view().is_empty());
    assert_eq!(b.stats().meta_refused, 1);
}

#[test]
fn a_delta_with_metadata_round_trips_and_ops_as_arrays_are_refused() {
    let delta = Delta {
        origin: core().local_peer(),
        incarnation: 1,
        seq: 1,
        groups: vec!["g".into(), "h".into()],
        ops: vec![
            Op {
                group: 1,
                id: 2,
                change: 1,
                meta: Some(Bytes::from_static(b"\x63abc")),
            },
            Op {
                group: 0,
                id: 2,
                change: -3,
                meta: None,
            },
        ],
    };
    let mut bytes = Vec::new();
    ciborium::into_writer(&delta, &mut bytes).unwrap();
    let back: Delta = ciborium::from_reader(&bytes[..]).unwrap();
    assert_eq!(back, delta);
    // The encoding of ops before they were packed: an array of arrays.
    #[derive(serde::Serialize)]
    struct Unpacked<'a> {
        origin: libp2p::PeerId,
        incarnation: u64,
        seq: u64,
        groups: &'a [std::sync::Arc<str>],
        ops: Vec<(u32, u64, i64)>,
    }
    let old = Unpacked {
        origin: delta.origin,
        incarnation: 1,
        seq: 1,
        groups: &delta.groups,
        ops: vec![(0, 2, -3)],
    };
    let mut bytes = Vec::new();
    ciborium::into_writer(&old, &mut bytes).unwrap();
    assert!(ciborium::from_reader::<Delta, _>(&bytes[..]).is_err());
}

#[test]
fn malformed_metadata_ops_are_rejected_or_counted() {
    let (a, mut b) = (core(), core());
    let sender = a.local_peer();
    let delta = |seq, change, meta: Option<&'static [u8]>| Delta {
        origin: sender,
        incarnation: 1,
        seq,
        groups: vec!["g".into()],
        ops: vec![Op {
            group: 0,
            id: 1,
            change,
            meta: meta.map(Bytes::from_static),
        }],
    };
    assert_eq!(
        b.handle_delta(sender, delta(1, 0, None), T0),
        Err(Rejection::BadChange)
    );
    assert_eq!(
        b.handle_delta(sender, delta(1, -1, Some(b"\x01")), T0),
        Err(Rejection::BadChange),
        "a leave carries no value"
    );
    // An update of a process this node does not hold changes nothing and is counted.
    assert_eq!(
        b.handle_delta(sender, delta(1, 0, Some(b"\x01")), T0),
        Ok(DeltaOutcome::Applied)
    );
    assert!(b.view().is_empty() && b.meta_view().is_empty());
    assert_eq!(b.stats().updates_unmatched, 1);
}

#[test]
fn a_name_has_one_holder_and_goes_with_its_process() {
    let mut a = core();
    let me = Pid::new(a.local_peer(), 1);
    a.register(1, "alice", 100, meta("first")).unwrap();
    assert_eq!(
        a.register(2, "alice", 50, meta("mallory")),
        Err(Refusal::Taken {
            name: "alice".into(),
            holder: Box::new(me)
        })
    );
    // The holder registering again replaces the value and keeps its place in time.
    a.register(1, "alice", 900, meta("second")).unwrap();
    let holder = a.whereis("alice").unwrap();
    assert_eq!((holder.pid, holder.at_micros), (me, 100));
    assert_eq!(holder.meta.decode::<String>().unwrap(), "second");
    // A name is neither a group nor an event.
    assert!(a.which_groups().is_empty());
    assert_eq!(a.sizes().groups, 0);
    assert_eq!(a.drain_changes().count(), 0);
    a.exit(1);
    assert_eq!(a.whereis("alice"), None);
    a.register(2, "alice", 1000, meta("free")).unwrap();
    assert_eq!(a.whereis("alice").unwrap().pid, Pid::new(a.local_peer(), 2));
}

/// Two nodes register one name before hearing of each other: on both, the earlier claim
/// stands (the smaller Pid on a tie), and the loser is told.
fn race(at_a: u64, at_b: u64) -> (ScopeCore, ScopeCore, Pid) {
    let (mut a, mut b) = (core(), core());
    a.register(1, "alice", at_a, meta("a")).unwrap();
    b.register(1, "alice", at_b, meta("b")).unwrap();
    let (pa, pb) = (Pid::new(a.local_peer(), 1), Pid::new(b.local_peer(), 1));
    let winner = if (at_a, pa) < (at_b, pb) { pa } else { pb };
    let (da, db) = (a.take_deltas(), b.take_deltas());
    for d in da {
        b.handle_delta(a.local_peer(), d, T0).unwrap();
    }
    for d in db {
        a.handle_delta(b.local_peer(), d, T0).unwrap();
    }
    // The loser's leave reaches the winner's node.
    relay(&mut a, &mut b);
    relay(&mut b, &mut a);
    (a, b, winner)
}

fn lost(core: &mut ScopeCore) -> Vec<(String, u64, Pid)> {
    let mut out = Vec::new();
    while let Some(o) = core.poll_output() {
        if let Output::NameLost {
            name,
            process,
            winner,
        } = o
        {
            out.push((name, process, winner));
        }
    }
    out
}

#[test]
fn racing_claims_leave_the_earlier_standing_on_both_nodes() {
    for (at_a, at_b) in [(10, 20), (20, 10), (15, 15)] {
        let (mut a, mut b, winner) = race(at_a, at_b);
        assert_eq!(a.whereis("alice").unwrap().pid, winner);
        assert_eq!(b.whereis("alice").unwrap().pid, winner);
        let (la, lb) = (lost(&mut a), lost(&mut b));
        let (loser_node, told) = if winner.node() == a.local_peer() {
            (&b, lb)
        } else {
            (&a, la)
        };
        assert_eq!(
            told,
            vec![("alice".to_string(), 1, winner)],
            "the loser is told"
        );
        assert_eq!(loser_node.stats().names_lost, 1);
        // Only the winner's claim is left anywhere.
        assert_eq!(a.view(), b.view());
        assert_eq!(a.view().values().map(|m| m.len()).sum::<usize>(), 1);
    }
}

#[test]
fn a_name_held_by_a_node_taken_for_down_is_free() {
    let (mut a, mut b) = (core(), core());
    a.register(1, "alice", 10, meta("a")).unwrap();
    relay(&mut a, &mut b);
    assert_eq!(
        b.register(7, "alice", 20, meta("b")).unwrap_err(),
        Refusal::Taken {
            name: "alice".into(),
            holder: Box::new(Pid::new(a.local_peer(), 1))
        }
    );
    b.peer_down(a.local_peer());
    assert_eq!(b.whereis("alice"), None);
    b.register(7, "alice", 20, meta("b")).unwrap();
    // A restarted a (a new incarnation, no claim) syncs: b keeps the name.
    let fresh = SyncState {
        origin: a.local_peer(),
        version: Version {
            incarnation: 2,
            seq: 0,
        },
        groups: Vec::new(),
    };
    b.handle_sync(a.local_peer(), fresh, T0).unwrap();
    assert_eq!(b.whereis("alice").unwrap().pid, Pid::new(b.local_peer(), 7));
}

#[test]
fn a_claim_over_a_nodes_cap_keeps_its_time_so_every_node_finds_one_holder() {
    let mut small = config();
    small.max_meta_bytes = 16;
    let (mut big, mut little) = (core(), core_with(small));
    let value = Meta::encode(&"v".repeat(200)).unwrap();
    big.register(1, "x", 10, value).unwrap();
    little.register(1, "x", 20, meta("mine")).unwrap();
    let (db, dl) = (big.take_deltas(), little.take_deltas());
    for d in db {
        little.handle_delta(big.local_peer(), d, T0).unwrap();
    }
    for d in dl {
        big.handle_delta(little.local_peer(), d, T0).unwrap();
    }
    let winner = Pid::new(big.local_peer(), 1);
    assert_eq!(big.whereis("x").unwrap().pid, winner);
    let held = little.whereis("x").unwrap();
    assert_eq!(
        (held.pid, held.at_micros),
        (winner, 10),
        "ranked by its time"
    );
    assert_eq!(
        held.meta.decode::<Option<String>>().unwrap(),
        None,
        "its value refused"
    );
    assert_eq!(little.stats().meta_refused, 1);
    assert_eq!(lost(&mut little).len(), 1, "the little node's claim lost");
}
