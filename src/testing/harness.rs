//! Hostile input for a [`ScopeCore`] that already holds state: the driver shared by the
//! hostile-input property tests (`hostile_input`) and the fuzz targets (`crate::fuzzing`).
//!
//! A [`Session`] starts from a core that holds local members, the members of a peer `A` it
//! follows by deltas (one of them held, waiting for the one before), of a peer `B` it synced
//! with, and knows nothing of a peer `C`. Inputs are fed as the network layer feeds them
//! (decoded with the same decoder, handed to the core's `handle` as `Input::Delta` /
//! `Input::Sync` with the authenticated sender), and after each one every property is checked, panicking on a
//! broken one (which is what a fuzzer looks for):
//!
//! - the core's invariants (`view()` recounts every counter);
//! - an input the protocol calls invalid (see [`delta_problem`], [`sync_problem`]) is rejected,
//!   a rejected one changes nothing (view, versions, outputs), and an input claiming an
//!   origin other than its sender is rejected as such;
//! - a held or duplicate delta and a stale sync change no member;
//! - no input changes the members or the version of any node but its sender;
//! - the limits (`max_groups`, `max_members_per_group`) hold;
//! - a sync never gives its sender more slots than it claims;
//! - the changes drained for subscribers replay exactly to the new view;
//! - the cached reads (`which_groups`, `members`) agree with the view.
//!
//! The byte format of a session is a run of steps, each `[control][length: u16 LE][body]`
//! (the last may be truncated; its body is what is left). The control byte:
//!
//! | bits | meaning |
//! |------|---------|
//! | 0–1  | sender: 0 the origin the body claims (peer `A` for a sync page), 1 `A`, 2 `B`, 3 `C` |
//! | 2–3  | body (sync sessions only; delta sessions always read a delta): 0–1 a gossipsub [`Delta`], 2 a [`SyncResponse`] (a `Page` is handed to the core as the sender's state), 3 a [`SyncState`] |
//! | 4–5  | before the input: 0 nothing, 1 50 ms pass (tick), 2 2 s pass (tick), 3 the sender goes down |
//! | 6    | after the input: the sync request to the sender failed |
//! | 7    | after the input: a local process joins a group (limits apply to it too) |
//!
//! Sync paging (several `Page`s assembled into one state) lives in the network layer and is
//! not exercised here: every `Page` is taken as a complete state.

use std::collections::BTreeMap;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::identity::Keypair;

use crate::net::wire::SyncResponse;
use crate::proto::groups::wire_group_problem;
use crate::proto::input::{DeltaOutcome, Rejection, SyncOutcome};
use crate::proto::messages::{Delta, Op, SyncGroup, SyncMember, SyncState, Version};
use crate::proto::state::{CoreConfig, ScopeCore};
use crate::testing::drive::Drive;
use crate::{EventKind, Pid};

/// Every slot a core holds, by group (see `ScopeCore::view`).
pub(crate) type View = BTreeMap<String, BTreeMap<Pid, u32>>;

/// Named inputs.
pub(crate) type Seeds = Vec<(String, Vec<u8>)>;

/// Reads of members are checked only for groups up to this many slots: a peer may announce
/// up to `u32::MAX` slots of one process in a scope without limits, and a member list has
/// one entry per slot.
const READ_CHECK_SLOTS: usize = 1 << 12;

/// A deterministic peer (an Ed25519 key from `n`), made once: deriving a key costs more than
/// the rest of a session.
pub(crate) fn peer(n: u8) -> PeerId {
    static PEERS: std::sync::OnceLock<Vec<PeerId>> = std::sync::OnceLock::new();
    let peers = PEERS.get_or_init(|| {
        (0..=u8::MAX)
            .map(|n| {
                let mut secret = [n; 32];
                Keypair::ed25519_from_bytes(&mut secret)
                    .expect("32 bytes make an Ed25519 key")
                    .public()
                    .to_peer_id()
            })
            .collect()
    });
    peers[usize::from(n)]
}

/// The limits a session runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limits {
    /// No limit (the default of a scope).
    Off,
    /// `max_groups` 6, `max_members_per_group` 12: the initial state nearly fills them.
    Tight,
}

impl Limits {
    /// The limits chosen by a byte (of a fuzz input).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn from_byte(b: u8) -> Self {
        if b & 1 == 0 {
            Limits::Off
        } else {
            Limits::Tight
        }
    }
}

/// Which messages a session's steps carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every body is a delta.
    Deltas,
    /// The control byte says: delta, sync page or sync state.
    Syncs,
}

/// How many inputs ended how, over a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub undecodable: u64,
    pub rejected: u64,
    pub applied: u64,
    pub held: u64,
    pub ignored: u64,
}

/// The origins of the initial state, with their own cores (so that valid next inputs can be
/// made from them, see [`Session::seeds`]).
struct Origins {
    a: ScopeCore,
    /// `A`'s delta that the session never received (the one its held delta waits for).
    a_missing: Delta,
    b: ScopeCore,
    c: ScopeCore,
}

/// A core with state, fed hostile input; see the module docs.
pub(crate) struct Session {
    core: ScopeCore,
    cfg: CoreConfig,
    local: PeerId,
    /// `A`, `B`, `C`.
    peers: [PeerId; 3],
    now: Duration,
    view: View,
    origins: Origins,
    /// Slots handed to the core in valid inputs so far (joins and synced slots): no count
    /// can exceed it (plus the initial state's few).
    slots_offered: u64,
    pub(crate) tally: Tally,
}

fn core_config(limits: Limits) -> CoreConfig {
    let (max_groups, max_members_per_group) = match limits {
        Limits::Off => (0, 0),
        Limits::Tight => (6, 12),
    };
    CoreConfig {
        max_groups,
        max_members_per_group,
        reorder_window: Duration::from_millis(250),
        reorder_capacity: 4,
        sync_timeout: Duration::from_secs(1),
        max_delta_bytes: 60 * 1024,
        hash_seed: 0x5eed,
        max_meta_bytes: 1024,
    }
}

/// A publishing core of `peer` (no limits: it is the origin, not the receiver under test).
fn origin_core(peer: PeerId, incarnation: u64) -> ScopeCore {
    let mut core = ScopeCore::new(peer, incarnation, core_config(Limits::Off));
    core.share();
    core
}

fn one_delta(core: &mut ScopeCore) -> Delta {
    let mut deltas = core.take_deltas();
    assert_eq!(deltas.len(), 1, "one tick, one delta");
    deltas.remove(0)
}

impl Session {
    /// A core holding local members, `A`'s (by deltas, one held) and `B`'s (by a sync).
    pub(crate) fn new(limits: Limits) -> Self {
        let cfg = core_config(limits);
        let local = peer(1);
        let peers = [peer(0xa), peer(0xb), peer(0xc)];
        let mut core = ScopeCore::new(local, 0x10ca1, cfg.clone());
        core.share();
        core.join(1, &["a", "b"]).expect("within the limits");
        core.join(2, &["a", "a"]).expect("within the limits");
        core.take_deltas();

        let mut a = origin_core(peers[0], 0xa1);
        a.join(1, &["a"]).unwrap();
        a.join(2, &["a", "a"]).unwrap();
        let a1 = one_delta(&mut a);
        a.join(3, &["c", "c"]).unwrap();
        let a2 = one_delta(&mut a);
        a.leave(2, &["a"]);
        let a_missing = one_delta(&mut a);
        a.join(4, &["e"]).unwrap();
        let a4 = one_delta(&mut a);
        let t0 = Duration::ZERO;
        assert_eq!(
            core.handle_delta(peers[0], a1, t0),
            Ok(DeltaOutcome::Applied)
        );
        assert_eq!(
            core.handle_delta(peers[0], a2, t0),
            Ok(DeltaOutcome::Applied)
        );
        assert_eq!(core.handle_delta(peers[0], a4, t0), Ok(DeltaOutcome::Held));

        let mut b = origin_core(peers[1], 0xb1);
        b.join(1, &["b", "b"]).unwrap();
        b.join(2, &["d"]).unwrap();
        let state = b.sync_state();
        b.take_deltas(); // what the state covers
        assert_eq!(
            core.handle_sync(peers[1], state, t0),
            Ok(SyncOutcome::Applied)
        );

        let mut c = origin_core(peers[2], 0xc1);
        c.join(7, &["a", "f"]).unwrap();

        while core.poll_request().is_some() {}
        core.drain_changes().for_each(drop);
        let view = core.view();
        let session = Self {
            core,
            cfg,
            local,
            peers,
            now: Duration::from_millis(10),
            view,
            origins: Origins { a, a_missing, b, c },
            slots_offered: 16,
            tally: Tally::default(),
        };
        session.check_limits();
        session
    }

    #[cfg(test)]
    pub(crate) fn local(&self) -> PeerId {
        self.local
    }

    /// `A`, `B` and `C`.
    #[cfg(test)]
    pub(crate) fn peers(&self) -> [PeerId; 3] {
        self.peers
    }

    /// The core's view as of the last check.
    #[cfg(test)]
    pub(crate) fn view(&self) -> &View {
        &self.view
    }

    /// Runs the steps of `data` (see the module docs).
    pub(crate) fn run(&mut self, mode: Mode, data: &[u8]) {
        let mut rest = data;
        while let Some((&control, tail)) = rest.split_first() {
            let len = match tail {
                [lo, hi, ..] => usize::from(u16::from_le_bytes([*lo, *hi])),
                _ => tail.len(),
            };
            let tail = tail.get(2..).unwrap_or_default();
            let (body, next) = tail.split_at(len.min(tail.len()));
            self.step(mode, control, body);
            rest = next;
        }
        self.finish();
    }

    /// One step: a control byte and a body.
    pub(crate) fn step(&mut self, mode: Mode, control: u8, body: &[u8]) {
        let kind = if mode == Mode::Deltas {
            0
        } else {
            (control >> 2) & 3
        };
        match (control >> 4) & 3 {
            1 => self.advance(Duration::from_millis(50)),
            2 => self.advance(Duration::from_secs(2)),
            3 => {
                let sender = self.sender(control, None);
                self.peer_down(sender);
            }
            _ => {}
        }
        match kind {
            0 | 1 => match ciborium::from_reader::<Delta, _>(body) {
                Ok(delta) => {
                    let sender = self.sender(control, Some(delta.origin));
                    // Checked and tallied inside; a rejection is one of the outcomes.
                    let _checked = self.delta(sender, delta);
                }
                Err(_) => self.tally.undecodable += 1,
            },
            2 => match crate::net::codec::decode_body::<SyncResponse>(body) {
                Ok(SyncResponse::Page {
                    version, groups, ..
                }) => {
                    let sender = self.sender(control, Some(self.peers[0]));
                    let state = SyncState {
                        origin: sender,
                        version,
                        groups,
                    };
                    // Checked and tallied inside; a rejection is one of the outcomes.
                    let _checked = self.sync(sender, state);
                }
                Ok(_) => self.tally.ignored += 1,
                Err(_) => self.tally.undecodable += 1,
            },
            _ => match crate::net::codec::decode_body::<SyncState>(body) {
                Ok(state) => {
                    let sender = self.sender(control, Some(state.origin));
                    // Checked and tallied inside; a rejection is one of the outcomes.
                    let _checked = self.sync(sender, state);
                }
                Err(_) => self.tally.undecodable += 1,
            },
        }
        let sender = self.sender(control, None);
        if control & 0x40 != 0 {
            self.core.sync_failed(sender, self.now);
            self.check_unchanged("sync_failed");
        }
        if control & 0x80 != 0 {
            self.local_join(u64::from(control & 3) + 1, "a");
        }
    }

    fn sender(&self, control: u8, claimed: Option<PeerId>) -> PeerId {
        match (control & 3, claimed) {
            (0, Some(claimed)) => claimed,
            (0, None) => self.peers[0],
            (n, _) => self.peers[usize::from(n) - 1],
        }
    }

    /// Hands `delta` from `sender` to the core and checks everything.
    pub(crate) fn delta(
        &mut self,
        sender: PeerId,
        delta: Delta,
    ) -> Result<DeltaOutcome, Rejection> {
        let problem = delta_problem(self.local, sender, &delta);
        if problem.is_none() {
            let joined = delta.ops.iter().filter(|op| op.change > 0);
            self.slots_offered += joined.map(|op| op.change.unsigned_abs()).sum::<u64>();
        }
        let before = self.snapshot(sender);
        let result = self.core.handle_delta(sender, delta.clone(), self.now);
        match &result {
            Err(rejection) => {
                self.tally.rejected += 1;
                assert!(
                    problem.is_some(),
                    "valid delta rejected ({rejection}): {delta:?}"
                );
                if delta.origin != sender {
                    assert!(
                        matches!(rejection, Rejection::WrongOrigin { .. }),
                        "{rejection}"
                    );
                }
                assert_eq!(
                    self.core.stats().deltas_rejected,
                    before.deltas_rejected + 1
                );
            }
            Ok(outcome) => {
                assert_eq!(
                    problem, None,
                    "invalid delta accepted ({outcome:?}): {delta:?}"
                );
                match outcome {
                    DeltaOutcome::Applied => self.tally.applied += 1,
                    DeltaOutcome::Held => self.tally.held += 1,
                    DeltaOutcome::Duplicate => self.tally.ignored += 1,
                }
            }
        }
        let changes_nothing = !matches!(result, Ok(DeltaOutcome::Applied));
        self.check_after(sender, &before, changes_nothing, result.is_err());
        result
    }

    /// Hands `state` from `sender` to the core and checks everything.
    pub(crate) fn sync(
        &mut self,
        sender: PeerId,
        state: SyncState,
    ) -> Result<SyncOutcome, Rejection> {
        let problem = sync_problem(self.local, sender, &state);
        if problem.is_none() {
            let members = state.groups.iter().flat_map(|g| &g.members);
            self.slots_offered += members.map(|m| u64::from(m.slots)).sum::<u64>();
        }
        let before = self.snapshot(sender);
        let result = self.core.handle_sync(sender, state.clone(), self.now);
        match &result {
            Err(rejection) => {
                self.tally.rejected += 1;
                assert!(
                    problem.is_some(),
                    "valid sync rejected ({rejection}): {state:?}"
                );
                if state.origin != sender {
                    assert!(
                        matches!(rejection, Rejection::WrongOrigin { .. }),
                        "{rejection}"
                    );
                }
                assert_eq!(self.core.stats().syncs_rejected, before.syncs_rejected + 1);
            }
            Ok(outcome) => {
                assert_eq!(
                    problem, None,
                    "invalid sync accepted ({outcome:?}): {state:?}"
                );
                match outcome {
                    SyncOutcome::Applied => self.tally.applied += 1,
                    SyncOutcome::Stale => self.tally.ignored += 1,
                }
            }
        }
        let changes_nothing = !matches!(result, Ok(SyncOutcome::Applied));
        let rejected = result.is_err();
        self.check_after(sender, &before, changes_nothing, rejected);
        if result == Ok(SyncOutcome::Applied) {
            // Never more than the sync claims (less when a limit refuses some); exactly what
            // it claims when no limit applies and no held delta followed it.
            let mut claimed: BTreeMap<String, BTreeMap<Pid, u32>> = BTreeMap::new();
            for group in &state.groups {
                let members = claimed.entry(group.name.clone()).or_default();
                for m in &group.members {
                    members.insert(Pid::new(sender, m.id), m.slots);
                }
            }
            let held = only_of(&self.view, sender);
            let version = self.core.applied_version(&sender);
            if version == Some(state.version) {
                for (name, members) in &held {
                    for (pid, slots) in members {
                        let wanted = claimed.get(name).and_then(|m| m.get(pid)).copied();
                        assert!(
                            wanted.is_some_and(|w| *slots <= w),
                            "{pid} holds {slots} slots of {name:?}, the sync said {wanted:?}"
                        );
                    }
                }
                if self.cfg.max_groups == 0 && self.cfg.max_members_per_group == 0 {
                    claimed.retain(|_, m| !m.is_empty());
                    assert_eq!(held, claimed, "a sync without limits is taken as it is");
                }
            } else {
                let version = version.expect("a sync applied leaves a version");
                assert_eq!(version.incarnation, state.version.incarnation);
                assert!(
                    version.seq > state.version.seq,
                    "held deltas followed the sync"
                );
            }
        }
        result
    }

    /// Time passes and the core ticks.
    pub(crate) fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.tick(self.now);
        self.check_unchanged("tick");
    }

    /// `peer` goes down: its members go, nobody else's.
    pub(crate) fn peer_down(&mut self, peer: PeerId) {
        let before = self.snapshot(peer);
        self.core.peer_down(peer);
        self.check_after(peer, &before, false, false);
        if peer != self.local {
            assert!(only_of(&self.view, peer).is_empty(), "{peer} is down");
            assert_eq!(self.core.applied_version(&peer), None);
        }
    }

    /// A local join (refused when it does not fit the limits).
    pub(crate) fn local_join(&mut self, id: u64, group: &str) {
        let before = self.snapshot(self.local);
        let result = self.core.join(id, &[group]);
        self.core.take_deltas();
        self.check_after(self.local, &before, result.is_err(), false);
    }

    /// Last checks: the local state is intact and can still be served to peers.
    pub(crate) fn finish(&mut self) {
        let state = self.core.sync_state();
        assert_eq!(state.origin, self.local);
        let mut served: View = BTreeMap::new();
        for group in state.groups {
            let members = served.entry(group.name).or_default();
            for m in group.members {
                members.insert(Pid::new(self.local, m.id), m.slots);
            }
        }
        assert_eq!(served, only_of(&self.view, self.local));
        self.core.take_deltas();
    }

    fn snapshot(&mut self, sender: PeerId) -> Before {
        while self.core.poll_request().is_some() {}
        Before {
            view: self.view.clone(),
            versions: self.versions(),
            deltas_rejected: self.core.stats().deltas_rejected,
            syncs_rejected: self.core.stats().syncs_rejected,
            sender,
        }
    }

    fn versions(&self) -> Vec<Option<Version>> {
        self.peers
            .iter()
            .map(|p| self.core.applied_version(p))
            .collect()
    }

    fn check_unchanged(&mut self, what: &str) {
        let before = self.view.clone();
        let changes: Vec<_> = self.core.drain_changes().collect();
        self.view = self.core.view();
        assert_eq!(self.view, before, "{what} changed members");
        assert!(changes.is_empty(), "{what} emitted changes: {changes:?}");
        self.check_limits();
    }

    /// The checks after an input from `sender`.
    fn check_after(
        &mut self,
        sender: PeerId,
        before: &Before,
        changes_nothing: bool,
        rejected: bool,
    ) {
        debug_assert_eq!(before.sender, sender);
        let changes: Vec<_> = self.core.drain_changes().collect();
        let after = self.core.view(); // recounts every counter
        assert_eq!(self.core.sizes().groups, after.len(), "the group count");
        if changes_nothing {
            assert_eq!(
                after, before.view,
                "an input that applies nothing changed members"
            );
            assert!(changes.is_empty(), "events without a change: {changes:?}");
        }
        if rejected {
            assert_eq!(
                self.versions(),
                before.versions,
                "a rejected input moved a version"
            );
            assert_eq!(
                self.core.poll_request(),
                None,
                "a rejected input asked for something"
            );
        }
        // Nobody's members but the sender's move.
        assert_eq!(
            except(&after, sender),
            except(&before.view, sender),
            "an input from {sender} changed another node's members"
        );
        for (p, (now, then)) in self
            .peers
            .iter()
            .zip(self.versions().iter().zip(&before.versions))
        {
            if *p != sender {
                assert_eq!(now, then, "an input from {sender} moved the version of {p}");
            }
        }
        // The events replay to the new view.
        let mut replayed = before.view.clone();
        for change in &changes {
            let group = replayed.entry(change.group.to_string()).or_default();
            let slots = group.entry(change.pid).or_insert(0);
            match change.kind {
                EventKind::MemberJoined => {
                    *slots = slots.checked_add(change.count).expect("slots overflow u32");
                }
                EventKind::MemberLeft => {
                    *slots = slots
                        .checked_sub(change.count)
                        .expect("left more than held");
                }
                EventKind::MemberUpdated => {
                    assert_eq!(*slots, change.count, "an update names the member's slots");
                }
            }
            assert!(change.count > 0, "an empty change");
            if *slots == 0 {
                group.remove(&change.pid);
            }
            if group.is_empty() {
                replayed.remove(&*change.group);
            }
        }
        assert_eq!(replayed, after, "the events do not replay to the view");
        self.view = after;
        self.check_limits();
        // Cached reads agree with the view, for the groups that changed and a few others.
        let names: Vec<String> = self.view.keys().cloned().collect();
        let listed = self.core.which_groups();
        assert_eq!(
            listed.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
            names,
            "which_groups"
        );
        let changed: std::collections::BTreeSet<&str> = changes.iter().map(|c| &*c.group).collect();
        for group in changed {
            self.check_reads(group);
        }
    }

    fn check_reads(&mut self, group: &str) {
        let Some(expected) = self.view.get(group) else {
            assert!(self.core.members(group).is_empty());
            return;
        };
        let total: usize = expected.values().map(|s| *s as usize).sum();
        if total > READ_CHECK_SLOTS {
            return;
        }
        let members = self.core.members(group);
        assert_eq!(members.len(), total, "members({group:?})");
        for (pid, slots) in expected {
            assert_eq!(members.count(pid), *slots as usize, "{pid} in {group:?}");
        }
        let local = self.core.local_members(group);
        let local_total: usize = expected
            .iter()
            .filter(|(p, _)| p.node() == self.local)
            .map(|(_, s)| *s as usize)
            .sum();
        assert_eq!(local.len(), local_total, "local_members({group:?})");
    }

    /// Every node, this one and each peer, within its own budgets: at most `max_groups` groups
    /// and `max_members_per_group` slots per group.
    fn check_limits(&self) {
        let mut groups_of: BTreeMap<PeerId, usize> = BTreeMap::new();
        for (name, members) in &self.view {
            let mut slots_of: BTreeMap<PeerId, usize> = BTreeMap::new();
            for (pid, slots) in members {
                *slots_of.entry(pid.node()).or_default() += *slots as usize;
            }
            for (node, slots) in slots_of {
                *groups_of.entry(node).or_default() += 1;
                if self.cfg.max_members_per_group != 0 {
                    assert!(
                        slots <= self.cfg.max_members_per_group,
                        "{slots} slots of {node} in {name:?}"
                    );
                }
            }
        }
        if self.cfg.max_groups != 0 {
            for (node, groups) in groups_of {
                assert!(groups <= self.cfg.max_groups, "{groups} groups of {node}");
            }
        }
    }

    /// Valid encodings of realistic next inputs for a fresh session, as sessions of one step
    /// each (see the module docs), named: the deltas and states of `A`, `B` and `C`, and a
    /// few invalid ones (another origin, a bad index, a change of 0, a duplicate group).
    pub(crate) fn seeds(mode: Mode) -> Seeds {
        let mut session = Session::new(Limits::Tight);
        let o = &mut session.origins;
        let a = session.peers[0];
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut add = |name: &str, control: u8, body: Vec<u8>| {
            out.push((name.to_owned(), encode_step(control, &body)));
        };
        let delta = |d: &Delta| cbor(d);
        let page = |s: &SyncState| {
            cbor(&SyncResponse::Page {
                scope: "app:pg".into(),
                version: s.version,
                page: 0,
                pages: 1,
                groups: s.groups.clone(),
            })
        };
        // Deltas.
        add("a-missing-delta", 0, delta(&o.a_missing));
        o.a.join(5, &["a", "g"]).unwrap();
        let a5 = one_delta(&mut o.a);
        add("a-next-delta-after-gap", 0, delta(&a5));
        o.b.join(3, &["b"]).unwrap();
        o.b.leave(1, &["b"]);
        let b_next = one_delta(&mut o.b);
        add("b-next-delta", 0, delta(&b_next));
        add("b-next-delta-replayed", 0x10, delta(&b_next));
        o.c.join(8, &["h", "h", "h"]).unwrap();
        let c1 = one_delta(&mut o.c);
        add("c-first-delta", 0, delta(&c1));
        let mut restarted = origin_core(a, 0xa2);
        restarted.join(1, &["a"]).unwrap();
        add("a-restarted-delta", 0, delta(&one_delta(&mut restarted)));
        add("b-delta-sent-by-c", 3, delta(&b_next));
        add("a-delta-after-a-down", 0x31, delta(&o.a_missing));
        let mut bad = a5.clone();
        bad.ops.push(Op {
            group: bad.groups.len() as u32,
            id: 9,
            change: 1,
            meta: None,
        });
        add("bad-group-index", 0, delta(&bad));
        let mut bad = a5.clone();
        bad.ops[0].change = 0;
        add("change-of-zero", 0, delta(&bad));
        let mut bad = a5.clone();
        bad.ops[0].change = i64::from(u32::MAX) + 1;
        add("change-beyond-u32", 0, delta(&bad));
        let mut big = c1.clone();
        big.ops = (0..64)
            .map(|id| Op {
                group: 0,
                id,
                change: 3,
                meta: None,
            })
            .collect();
        add("c-many-joins", 0x80, delta(&big));
        if mode == Mode::Syncs {
            // Sync states, as pages and as states.
            let a_state = o.a.sync_state();
            add("a-page", 0x08, page(&a_state));
            add("a-state", 0x0c, cbor(&a_state));
            let b_state = o.b.sync_state();
            add("b-page", 0x0a, page(&b_state));
            add("b-state-after-timeout", 0x6c, cbor(&b_state));
            let c_state = o.c.sync_state();
            add("c-page", 0x0b, page(&c_state));
            add("c-state", 0x0c, cbor(&c_state));
            add("a-state-sent-by-b", 0x0e, cbor(&a_state));
            add(
                "b-stale-page",
                0x0a,
                page(&Session::new(Limits::Off).origins.b.sync_state()),
            );
            add("a-state-after-down", 0x3c, cbor(&a_state));
            let restarted_state = restarted.sync_state();
            add("a-restarted-page", 0x09, page(&restarted_state));
            let mut dup = c_state.clone();
            let first = dup.groups[0].clone();
            dup.groups.push(first);
            add("duplicate-group", 0x0c, cbor(&dup));
            let mut dup = c_state.clone();
            let first = dup.groups[0].members[0].clone();
            dup.groups[0].members.push(first);
            add("duplicate-member", 0x0c, cbor(&dup));
            let mut zero = c_state.clone();
            zero.groups[0].members[0].slots = 0;
            add("zero-slots", 0x0c, cbor(&zero));
            let mut big = c_state;
            big.groups = (0..20)
                .map(|g| SyncGroup {
                    name: format!("g{g}"),
                    members: (0..20).map(|id| SyncMember::plain(id, 2)).collect(),
                })
                .collect();
            add("c-big-state", 0x0b, page(&big));
            // A delta after a sync, as a two-step session.
            let mut two = encode_step(0x0c, &cbor(&a_state));
            two.extend(encode_step(0, &delta(&a5)));
            out.push(("a-state-then-delta".into(), two));
        }
        out
    }
}

/// What a check compares against.
struct Before {
    view: View,
    versions: Vec<Option<Version>>,
    deltas_rejected: u64,
    syncs_rejected: u64,
    sender: PeerId,
}

/// One step of a session's byte format.
pub(crate) fn encode_step(control: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len()).expect("a step body fits a u16");
    let mut out = vec![control];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The CBOR encoding of `value`.
pub(crate) fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("encoding to memory");
    out
}

/// The members of `node` in `view`.
fn only_of(view: &View, node: PeerId) -> View {
    view.iter()
        .map(|(g, m)| {
            let m: BTreeMap<Pid, u32> = m
                .iter()
                .filter(|(p, _)| p.node() == node)
                .map(|(p, s)| (*p, *s))
                .collect();
            (g.clone(), m)
        })
        .filter(|(_, m)| !m.is_empty())
        .collect()
}

/// The members of every node but `node` in `view`.
fn except(view: &View, node: PeerId) -> View {
    view.iter()
        .map(|(g, m)| {
            let m: BTreeMap<Pid, u32> = m
                .iter()
                .filter(|(p, _)| p.node() != node)
                .map(|(p, s)| (*p, *s))
                .collect();
            (g.clone(), m)
        })
        .filter(|(_, m)| !m.is_empty())
        .collect()
}

/// Why the protocol (docs/protocol.md, "Security model") says a delta from `sender` must be refused by a node
/// `local`, if it must: written from the protocol, not from the core's validation.
pub(crate) fn delta_problem(local: PeerId, sender: PeerId, delta: &Delta) -> Option<&'static str> {
    if delta.origin != sender {
        return Some("another origin than its sender");
    }
    if sender == local {
        return Some("from this node");
    }
    if delta.seq == 0 {
        return Some("sequence 0");
    }
    if delta.groups.iter().any(|g| wire_group_problem(g).is_some()) {
        return Some("invalid group name");
    }
    for op in &delta.ops {
        if op.group as usize >= delta.groups.len() {
            return Some("group index out of range");
        }
        if (op.change == 0 && op.meta.is_none())
            || (op.change < 0 && op.meta.is_some())
            || op.change.unsigned_abs() > u64::from(u32::MAX)
        {
            return Some("change of 0 without metadata, a leave with metadata, or beyond u32");
        }
    }
    None
}

/// Why a sync from `sender` must be refused by `local`, if it must.
pub(crate) fn sync_problem(
    local: PeerId,
    sender: PeerId,
    state: &SyncState,
) -> Option<&'static str> {
    if state.origin != sender {
        return Some("another origin than its sender");
    }
    if sender == local {
        return Some("from this node");
    }
    let mut names = std::collections::BTreeSet::new();
    for group in &state.groups {
        if wire_group_problem(&group.name).is_some() {
            return Some("invalid group name");
        }
        if !names.insert(group.name.as_str()) {
            return Some("a group twice");
        }
        let mut ids = std::collections::BTreeSet::new();
        for m in &group.members {
            if m.slots == 0 {
                return Some("a member with 0 slots");
            }
            if !ids.insert(m.id) {
                return Some("a member twice in a group");
            }
        }
    }
    None
}
