//! Hostile input from peers, applied to a core that already holds state: property tests over
//! arbitrary bytes, mutated valid encodings and structurally valid but hostile messages. The
//! checks made after every input are listed in [`harness`](super::harness); the fuzz targets
//! in `fuzz/` run the same checks for longer.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use libp2p::PeerId;
use proptest::prelude::*;

use super::harness::{Limits, Mode, Session, View, cbor};
use crate::proto::input::{Rejection, SyncOutcome};
use crate::proto::messages::{Delta, Op, SyncGroup, SyncMember, SyncState, Version};

fn seeds(mode: Mode) -> &'static [(String, Vec<u8>)] {
    static DELTAS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    static SYNCS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    match mode {
        Mode::Deltas => DELTAS.get_or_init(|| Session::seeds(Mode::Deltas)),
        Mode::Syncs => SYNCS.get_or_init(|| Session::seeds(Mode::Syncs)),
    }
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![Just(Limits::Off), Just(Limits::Tight)]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Deltas), Just(Mode::Syncs)]
}

/// Group names: mostly a few shared ones (so that inputs collide), sometimes invalid.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => proptest::sample::select(vec!["a", "b", "c", "d", "e", "f", "g", "h"])
            .prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => Just("x".repeat(255)),
        1 => Just("x".repeat(256)),
        2 => "\\PC{1,6}",
    ]
}

/// Who a message claims to come from: an index into [local, A, B, C, D] (D is unknown).
fn claimed() -> impl Strategy<Value = usize> {
    prop_oneof![12 => 1..4usize, 1 => Just(0usize), 2 => Just(4usize)]
}

fn node(session: &Session, index: usize) -> PeerId {
    match index {
        0 => session.local(),
        1..=3 => session.peers()[index - 1],
        _ => super::harness::peer(0xd),
    }
}

/// 0 stands for the incarnation the claimed origin is known by.
fn incarnation() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => Just(0u64),
        2 => proptest::sample::select(vec![0xa1u64, 0xb1, 0xc1]),
        1 => Just(0xa2u64),
        1 => any::<u64>(),
    ]
}

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0..10u64, 1 => any::<u64>(), 1 => Just(u64::MAX)]
}

fn change() -> impl Strategy<Value = i64> {
    let max = i64::from(u32::MAX);
    prop_oneof![
        120 => 1..5i64,
        90 => -4..0i64,
        1 => Just(0i64),
        1 => Just(max),
        1 => Just(-max),
        1 => Just(max + 1),
        1 => Just(-max - 1),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => any::<i64>(),
    ]
}

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0..8u64, 1 => any::<u64>()]
}

/// A delta, without its origin (chosen by index).
#[derive(Debug, Clone)]
struct RawDelta {
    origin: usize,
    incarnation: u64,
    seq: u64,
    groups: Vec<String>,
    /// A group index modulo the number of groups, or as it is when a multiple of 64 (so
    /// that some are out of range).
    ops: Vec<(u32, u64, i64)>,
}

fn raw_delta() -> impl Strategy<Value = RawDelta> {
    (
        claimed(),
        incarnation(),
        seq(),
        proptest::collection::vec(name(), 1..5),
        proptest::collection::vec((any::<u32>(), id(), change()), 0..16),
    )
        .prop_map(|(origin, incarnation, seq, groups, ops)| RawDelta {
            origin,
            incarnation,
            seq,
            groups,
            ops,
        })
}

#[derive(Debug, Clone)]
struct RawSync {
    origin: usize,
    version: (u64, u64),
    groups: Vec<(String, Vec<(u64, u32)>)>,
}

fn slots() -> impl Strategy<Value = u32> {
    prop_oneof![40 => 1..5u32, 1 => Just(0u32), 1 => Just(u32::MAX), 1 => any::<u32>()]
}

fn raw_sync() -> impl Strategy<Value = RawSync> {
    // Distinct names and ids, and now and then one of them twice.
    let members = (
        proptest::collection::btree_map(id(), slots(), 0..6),
        proptest::bool::weighted(0.05),
    )
        .prop_map(|(members, twice)| {
            let mut members: Vec<(u64, u32)> = members.into_iter().collect();
            if twice && let Some(first) = members.first().copied() {
                members.push(first);
            }
            members
        });
    let groups = (
        proptest::collection::btree_map(name(), members, 0..6),
        proptest::bool::weighted(0.05),
    )
        .prop_map(|(groups, twice)| {
            let mut groups: Vec<(String, Vec<(u64, u32)>)> = groups.into_iter().collect();
            if twice && let Some(first) = groups.first().cloned() {
                groups.push(first);
            }
            groups
        });
    (claimed(), (incarnation(), seq()), groups).prop_map(|(origin, version, groups)| RawSync {
        origin,
        version,
        groups,
    })
}

/// One thing that happens to the core.
#[derive(Debug, Clone)]
enum Input {
    /// A delta over gossipsub; `sender` 0 is the claimed origin, 1–3 are A, B, C.
    Delta { sender: u8, delta: RawDelta },
    /// A sync state (`as_page`: as a response page, which carries no origin).
    Sync {
        sender: u8,
        sync: RawSync,
        as_page: bool,
    },
    /// Time passes (`long`: past the reorder window and the sync timeout).
    Tick { long: bool },
    /// A peer goes down (1–3).
    Down(u8),
    /// The sync request to a peer failed (1–3).
    SyncFailed(u8),
    /// A local process joins a group.
    LocalJoin(u64),
}

fn sender() -> impl Strategy<Value = u8> {
    prop_oneof![3 => Just(0u8), 1 => 1..4u8]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        8 => (sender(), raw_delta()).prop_map(|(sender, delta)| Input::Delta { sender, delta }),
        4 => (sender(), raw_sync(), any::<bool>())
            .prop_map(|(sender, sync, as_page)| Input::Sync { sender, sync, as_page }),
        1 => any::<bool>().prop_map(|long| Input::Tick { long }),
        1 => (1..4u8).prop_map(Input::Down),
        1 => (1..4u8).prop_map(Input::SyncFailed),
        1 => (0..4u64).prop_map(Input::LocalJoin),
    ]
}

/// `incarnation`, or for 0 the one the origin (by index) is known by.
fn natural(incarnation: u64, origin: usize) -> u64 {
    match (incarnation, origin) {
        (0, 1) => 0xa1,
        (0, 2) => 0xb1,
        (0, 3) => 0xc1,
        (0, _) => 0xd1,
        (inc, _) => inc,
    }
}

fn build_delta(session: &Session, raw: &RawDelta) -> Delta {
    let len = (raw.groups.len() as u32).max(1);
    let origin = node(session, raw.origin);
    Delta {
        origin,
        incarnation: natural(raw.incarnation, raw.origin),
        seq: raw.seq,
        groups: raw.groups.iter().map(|g| g.as_str().into()).collect(),
        ops: raw
            .ops
            .iter()
            .map(|(group, id, change)| Op {
                group: if group % 64 == 0 { *group } else { group % len },
                id: *id,
                change: *change,
                // Now and then a value: on joins, on an update (a change of 0), and on a
                // leave, which must be rejected.
                meta: (id % 3 == 1).then(|| bytes::Bytes::from(vec![0x18, (*id % 251) as u8])),
            })
            .collect(),
    }
}

fn build_sync(session: &Session, raw: &RawSync) -> SyncState {
    SyncState {
        origin: node(session, raw.origin),
        version: Version {
            incarnation: natural(raw.version.0, raw.origin),
            seq: raw.version.1,
        },
        groups: raw
            .groups
            .iter()
            .map(|(name, members)| SyncGroup {
                name: name.clone(),
                members: members
                    .iter()
                    .map(|(id, slots)| SyncMember::plain(*id, *slots))
                    .collect(),
            })
            .collect(),
    }
}

/// Feeds `input` to the session as bytes, through the decoders (the session checks all).
fn feed(session: &mut Session, input: &Input) {
    match input {
        Input::Delta { sender, delta } => {
            let delta = build_delta(session, delta);
            session.step(Mode::Syncs, *sender, &cbor(&delta));
        }
        Input::Sync {
            sender,
            sync,
            as_page,
        } => {
            let state = build_sync(session, sync);
            if *as_page {
                let page = crate::net::wire::SyncResponse::Page {
                    scope: "app:pg".into(),
                    version: state.version,
                    page: 0,
                    pages: 1,
                    groups: state.groups,
                };
                session.step(Mode::Syncs, sender | 0x08, &cbor(&page));
            } else {
                session.step(Mode::Syncs, sender | 0x0c, &cbor(&state));
            }
        }
        Input::Tick { long: false } => session.advance(Duration::from_millis(50)),
        Input::Tick { long: true } => session.advance(Duration::from_secs(2)),
        Input::Down(p) => session.peer_down(session.peers()[usize::from(*p) - 1]),
        Input::SyncFailed(p) => {
            // The control byte's bit 6 after an undecodable body (no message at all).
            session.step(Mode::Syncs, 0x40 | p, &[]);
        }
        Input::LocalJoin(id) => session.local_join(*id, "a"),
    }
}

/// Flips, overwrites, inserts, deletes or truncates at a few positions.
fn mutate(mut bytes: Vec<u8>, mutations: &[(usize, u8, u8)]) -> Vec<u8> {
    for (pos, kind, byte) in mutations {
        let at = if bytes.is_empty() {
            0
        } else {
            pos % bytes.len()
        };
        match kind {
            0 if !bytes.is_empty() => bytes[at] ^= 1 << (byte % 8),
            1 if !bytes.is_empty() => bytes[at] = *byte,
            2 => bytes.insert(at, *byte),
            3 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            4 => bytes.truncate(at),
            _ => {}
        }
    }
    bytes
}

/// Every node within its own budgets of the tight limits: 6 groups, 12 slots per group.
fn assert_limits(view: &View) {
    let mut groups_of: BTreeMap<PeerId, usize> = BTreeMap::new();
    for (name, members) in view {
        let mut slots_of: BTreeMap<PeerId, u64> = BTreeMap::new();
        for (pid, slots) in members {
            *slots_of.entry(pid.node()).or_default() += u64::from(*slots);
        }
        for (node, slots) in slots_of {
            assert!(slots <= 12, "{slots} slots of {node} in {name:?}");
            *groups_of.entry(node).or_default() += 1;
        }
    }
    for (node, groups) in groups_of {
        assert!(groups <= 6, "{groups} groups of {node}");
    }
}

#[test]
fn the_seeds_are_what_they_say() {
    for mode in [Mode::Deltas, Mode::Syncs] {
        for limits in [Limits::Off, Limits::Tight] {
            for (name, seed) in seeds(mode) {
                let mut session = Session::new(limits);
                session.run(mode, seed);
                let t = session.tally;
                assert_eq!(t.undecodable, 0, "{name} does not decode");
                let invalid = ["bad-", "change-", "duplicate-", "zero-", "-sent-by-"];
                if invalid.iter().any(|w| name.contains(w)) {
                    assert!(t.rejected > 0, "{name} was not rejected: {t:?}");
                } else {
                    assert_eq!(t.rejected, 0, "{name} was rejected: {t:?}");
                }
            }
        }
    }
}

/// The fuzz targets' names, as in `fuzz/Cargo.toml`.
const FUZZ_TARGETS: [&str; 4] = ["codec", "decode", "delta", "sync"];

/// Writes the seed corpora of the fuzz targets, one file per seed, to
/// `$PROCGROUPS_FUZZ_SEEDS/<target>/` (for the fuzzers:
/// `PROCGROUPS_FUZZ_SEEDS=fuzz/seeds cargo test --lib write_fuzz_seeds`), or to a directory
/// of its own that it removes, and checks that every seed reads back.
#[test]
fn write_fuzz_seeds() {
    let (root, scratch) = match std::env::var_os("PROCGROUPS_FUZZ_SEEDS") {
        Some(root) => (std::path::PathBuf::from(root), false),
        None => (
            std::env::temp_dir().join(format!("procgroups-seeds-{}", std::process::id())),
            true,
        ),
    };
    for target in FUZZ_TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create the seed directory");
        for (name, input) in crate::testing::seeds::fuzz_seeds(target) {
            std::fs::write(dir.join(&name), &input).expect("write a seed");
            assert_eq!(std::fs::read(dir.join(&name)).expect("read a seed"), input);
        }
    }
    if scratch {
        std::fs::remove_dir_all(&root).expect("remove the scratch seeds");
    }
}

#[test]
fn every_fuzz_target_has_seeds() {
    for target in FUZZ_TARGETS {
        let seeds = crate::testing::seeds::fuzz_seeds(target);
        assert!(seeds.len() >= 10, "{target}: {} seeds", seeds.len());
        let mut names: Vec<&str> = seeds.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), seeds.len(), "{target}: seed names repeat");
    }
}

#[test]
fn the_missing_delta_releases_the_held_one() {
    let (_, seed) = seeds(Mode::Deltas)
        .iter()
        .find(|(n, _)| n == "a-missing-delta")
        .expect("the seed");
    let mut session = Session::new(Limits::Off);
    let a = session.peers()[0];
    let groups_before = session.view().len();
    session.run(Mode::Deltas, seed);
    assert_eq!(session.tally.applied, 1);
    // The held delta (process 4 joins "e") followed.
    assert!(session.view().len() > groups_before, "{:?}", session.view());
    assert!(session.view()["e"].contains_key(&crate::Pid::new(a, 4)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Structurally valid but hostile messages (wrong or unknown origins, stale, duplicate
    /// and future versions, other incarnations, invalid names and indices, changes of 0 or
    /// beyond u32, duplicate groups and members, zero slots), interleaved with time, peers
    /// going down, failed syncs and local joins: every property of the harness holds after
    /// every input.
    #[test]
    fn hostile_messages_keep_every_property(
        limits in limits(),
        inputs in proptest::collection::vec(input(), 1..24),
    ) {
        let mut session = Session::new(limits);
        for input in &inputs {
            feed(&mut session, input);
        }
        session.finish();
        if limits == Limits::Tight {
            assert_limits(session.view());
        }
    }

    /// A message claiming another origin than its authenticated sender is rejected as such
    /// and changes nothing, however valid it is otherwise.
    #[test]
    fn another_origin_is_rejected_and_changes_nothing(
        limits in limits(),
        seed in any::<prop::sample::Index>(),
        sender in 0..4usize,
    ) {
        let mut session = Session::new(limits);
        let valid: Vec<&(String, Vec<u8>)> = seeds(Mode::Syncs)
            .iter()
            .filter(|(n, s)| s[0] & 0x0c != 0x08 && !n.contains("-sent-by-") && s[0] & 3 == 0)
            .collect();
        let (name, step) = valid[seed.index(valid.len())];
        let body = &step[3..];
        let before = session.view().clone();
        let sender = node(&session, sender);
        if step[0] & 0x0c == 0x0c {
            let state: SyncState = crate::net::codec::decode_body(body).unwrap();
            prop_assume!(state.origin != sender);
            let result = session.sync(sender, state);
            prop_assert!(matches!(result, Err(Rejection::WrongOrigin { .. })), "{name}: {result:?}");
        } else {
            let delta: Delta = ciborium::from_reader(body).unwrap();
            prop_assume!(delta.origin != sender);
            let result = session.delta(sender, delta);
            prop_assert!(matches!(result, Err(Rejection::WrongOrigin { .. })), "{name}: {result:?}");
        }
        prop_assert_eq!(session.view(), &before);
    }

    /// A flood of joins from every peer under tight limits: the core holds what fits, and
    /// never more.
    #[test]
    fn a_flood_of_joins_stays_within_the_limits(
        joins in proptest::collection::vec((1..4usize, name(), id(), 1..=u32::MAX), 1..64),
    ) {
        let mut session = Session::new(Limits::Tight);
        let mut seqs = [3u64, 0, 0];
        let incarnations = [0xa1u64, 0xb1, 0xc1];
        // Sync B and C first, so that their deltas apply in order (A is at seq 2, one held).
        for p in 1..3 {
            let peer = session.peers()[p];
            let state = SyncState {
                origin: peer,
                version: Version { incarnation: incarnations[p], seq: 100 },
                groups: Vec::new(),
            };
            prop_assert_eq!(session.sync(peer, state), Ok(SyncOutcome::Applied));
            seqs[p] = 100;
        }
        for (p, group, id, slots) in joins {
            let p = p - 1;
            let peer = session.peers()[p];
            let delta = Delta {
                origin: peer,
                incarnation: incarnations[p],
                seq: seqs[p] + 1,
                groups: vec![group.into()],
                ops: vec![Op { group: 0, id, change: i64::from(slots), meta: None }],
            };
            if session.delta(peer, delta).is_ok() && p != 0 {
                seqs[p] += 1;
            }
        }
        assert_limits(session.view());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes as a session (control bytes, lengths and bodies all arbitrary).
    #[test]
    fn arbitrary_bytes_keep_every_property(
        limits in limits(),
        mode in mode(),
        data in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        // Bodies of arbitrary bytes rarely decode; giving them the shape of a step with a
        // CBOR map or array first reaches deeper.
        let mut session = Session::new(limits);
        session.run(mode, &data);
        let mut shaped = vec![data.first().copied().unwrap_or(0), 0xff, 0x01, 0xa5];
        shaped.extend(&data);
        let mut session = Session::new(limits);
        session.run(mode, &shaped);
    }

    /// Valid sessions (one to three seeds, run in a row) with a few mutations anywhere:
    /// control bytes, lengths, CBOR headers, peer ids, names, numbers.
    #[test]
    fn mutated_valid_inputs_keep_every_property(
        limits in limits(),
        mode in mode(),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..4),
        mutations in proptest::collection::vec((any::<usize>(), 0..5u8, any::<u8>()), 1..8),
    ) {
        let seeds = seeds(mode);
        let mut data = Vec::new();
        for pick in &picks {
            data.extend(&seeds[pick.index(seeds.len())].1);
        }
        let data = mutate(data, &mutations);
        let mut session = Session::new(limits);
        session.run(mode, &data);
    }
}

/// A bug this found, fixed: a peer announced `u32::MAX` slots of a process in a scope without limits, and a
/// second announcement of the same process overflowed its `u32` count. The excess is now
/// refused and counted like a limit.
#[test]
fn fixed_unlimited_slots_overflow() {
    let mut session = Session::new(Limits::Off);
    let c = session.peers()[2];
    let max = i64::from(u32::MAX);
    let delta = Delta {
        origin: c,
        incarnation: 0xc1,
        seq: 1,
        groups: vec!["g".into()],
        ops: vec![
            Op {
                group: 0,
                id: 1,
                change: max,
                meta: None,
            },
            Op {
                group: 0,
                id: 1,
                change: 1,
                meta: None,
            },
        ],
    };
    // The session checks the core's invariants and counters after the input.
    let outcome = session.delta(c, delta);
    assert!(outcome.is_ok(), "{outcome:?}");
}

/// The second bug this found, fixed: a sync whose version has `seq == u64::MAX` overflowed
/// `seq + 1` when the core looked for held deltas to release.
#[test]
fn fixed_seq_overflow() {
    let mut session = Session::new(Limits::Off);
    let c = session.peers()[2];
    let state = SyncState {
        origin: c,
        version: Version {
            incarnation: 0xc1,
            seq: u64::MAX,
        },
        groups: Vec::new(),
    };
    let outcome = session.sync(c, state);
    assert!(outcome.is_ok(), "{outcome:?}");
}
