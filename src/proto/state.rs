//! [`ScopeCore`]: the membership state of one scope on one node, and the rules for changing it.
//!
//! Layout: groups map to the nodes that have members in them, and each node to its processes'
//! slot counts. Nodes are interned (`u32`; the local node is 0), so a slot costs a few bytes,
//! not a `PeerId`. Member lists are built on the first read after a change and cached, so a
//! burst of joins costs nothing until somebody reads.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use foldhash::fast::FixedState;
use hashbrown::{HashMap, HashSet};
use libp2p::PeerId;

use super::input::Output;
use super::messages::{Delta, Op, SyncGroup, SyncState, Version};
use crate::vocab::error::Limit;
use crate::{EventKind, Members, Pid};

type Map<K, V> = HashMap<K, V, FixedState>;
type Set<K> = HashSet<K, FixedState>;

/// A group name, shared between the structures that refer to it.
pub(crate) type GroupName = Arc<str>;

/// The longest group name, in bytes.
pub const MAX_GROUP_NAME_LEN: usize = 255;

/// Why `name` is not a valid group name, if it is not.
pub(crate) fn group_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_GROUP_NAME_LEN {
        Some("longer than 255 bytes")
    } else {
        None
    }
}

const LOCAL: u32 = 0;
/// Rough CBOR size of one op, to cut deltas below the transmit limit.
const OP_BYTES: usize = 24;
/// Rough CBOR overhead of a delta besides its ops and names.
const DELTA_OVERHEAD: usize = 96;

/// The knobs of the core, derived from the [`ScopeConfig`](crate::ScopeConfig).
#[derive(Debug, Clone)]
pub(crate) struct CoreConfig {
    pub max_groups: usize,
    pub max_members_per_group: usize,
    /// How long a delta that arrived early waits for the missing ones before a sync is pulled.
    pub reorder_window: Duration,
    /// Early deltas held per origin; more means a sync is pulled at once.
    pub reorder_capacity: usize,
    /// After this long without an answer a sync request may be sent again.
    pub sync_timeout: Duration,
    /// Deltas are cut so that their encoding stays below about this many bytes.
    pub max_delta_bytes: usize,
    /// Seed of the hash maps: random in a node, fixed in the simulator.
    pub hash_seed: u64,
}

impl CoreConfig {
    pub(crate) fn from_scope(config: &crate::ScopeConfig, hash_seed: u64) -> Self {
        Self {
            max_groups: config.max_groups(),
            max_members_per_group: config.max_members_per_group(),
            reorder_window: Duration::from_millis(250),
            reorder_capacity: 64,
            sync_timeout: config.protocol_timeout(),
            max_delta_bytes: 60 * 1024,
            hash_seed,
        }
    }
}

/// One change of membership, for subscribers: `count` slots of `pid` joined or left `group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub kind: EventKind,
    pub group: GroupName,
    pub pid: Pid,
    pub count: u32,
}

/// Why a delta or a sync from a peer was refused. A refused input changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejection {
    #[error("the sender is not the origin {origin} it claims")]
    WrongOrigin { origin: Box<PeerId> },
    #[error("input claims to come from this node")]
    FromSelf,
    #[error("sequence number 0")]
    ZeroSeq,
    #[error("op refers to group {index} of {len}")]
    BadGroupIndex { index: u32, len: usize },
    #[error("invalid group name: {0}")]
    InvalidGroupName(&'static str),
    #[error("op with a change of 0 or beyond u32")]
    BadChange,
    #[error("group {0:?} twice in one sync")]
    DuplicateGroup(String),
    #[error("process {0} twice in one group of a sync")]
    DuplicateMember(u64),
    #[error("member with 0 slots")]
    ZeroSlots,
}

/// What became of a delta that was not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeltaOutcome {
    /// Applied (with any held deltas that followed it).
    Applied,
    /// Already applied: ignored.
    Duplicate,
    /// Held until the deltas before it arrive, or a sync replaces them.
    Held,
}

/// What happened to a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncOutcome {
    Applied,
    /// Not newer than what this node holds: ignored.
    Stale,
}

/// Counters of the core's decisions, for metrics and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CoreStats {
    pub deltas_built: u64,
    pub deltas_applied: u64,
    pub deltas_duplicate: u64,
    pub deltas_held: u64,
    pub deltas_rejected: u64,
    pub syncs_applied: u64,
    pub syncs_stale: u64,
    pub syncs_rejected: u64,
    pub sync_requests: u64,
    /// Remote slots refused because of `max_groups` / `max_members_per_group`.
    pub slots_refused: u64,
    /// Remote leaves of slots this node did not hold (after a refusal, or hostile).
    pub leaves_unmatched: u64,
    pub purges: u64,
}

struct NodeSlots {
    node: u32,
    slots: usize,
    ids: Ids,
}

/// One node's processes in one group with their slot counts: inline while there is one (the
/// common case of a process alone in its group on that node), a map beyond.
enum Ids {
    One(u64, u32),
    Many(Map<u64, u32>),
}

impl Ids {
    fn get(&self, id: u64) -> Option<u32> {
        match self {
            Ids::One(only, count) => (*only == id).then_some(*count),
            Ids::Many(map) => map.get(&id).copied(),
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut u32> {
        match self {
            Ids::One(only, count) => (*only == id).then_some(count),
            Ids::Many(map) => map.get_mut(&id),
        }
    }

    /// Adds `n` slots of `id`; whether `id` is new here.
    fn add(&mut self, id: u64, n: u32, seed: u64) -> bool {
        match self {
            Ids::One(only, count) if *only == id => {
                let fresh = *count == 0;
                *count += n;
                fresh
            }
            Ids::One(only, count) if *count == 0 => {
                *only = id;
                *count = n;
                true
            }
            Ids::One(only, count) => {
                let mut map = Map::with_capacity_and_hasher(4, FixedState::with_seed(seed));
                map.insert(*only, *count);
                map.insert(id, n);
                *self = Ids::Many(map);
                true
            }
            Ids::Many(map) => {
                let count = map.entry(id).or_insert(0);
                let fresh = *count == 0;
                *count += n;
                fresh
            }
        }
    }

    fn remove(&mut self, id: u64) {
        match self {
            Ids::One(only, count) if *only == id => *count = 0,
            Ids::One(..) => {}
            Ids::Many(map) => {
                map.remove(&id);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let (one, many) = match self {
            Ids::One(id, count) => (Some((*id, *count)).filter(|(_, c)| *c > 0), None),
            Ids::Many(map) => (None, Some(map.iter().map(|(i, c)| (*i, *c)))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

struct GroupState {
    name: GroupName,
    slots: usize,
    /// Few nodes per group: a vector beats a map.
    nodes: Vec<NodeSlots>,
    members: Option<Members>,
    local: Option<Members>,
}

impl GroupState {
    fn node(&self, node: u32) -> Option<&NodeSlots> {
        self.nodes.iter().find(|n| n.node == node)
    }
    fn count(&self, node: u32, id: u64) -> u32 {
        self.node(node).and_then(|n| n.ids.get(id)).unwrap_or(0)
    }
}

struct OriginState {
    peer: PeerId,
    /// What this node applied; `None` before the first delta or sync.
    version: Option<Version>,
    /// `false` after a purge, until a sync proves the origin alive.
    alive: bool,
    /// The groups in which this node holds members of the origin.
    groups: Set<GroupName>,
    /// Early deltas, by (incarnation, seq).
    held: BTreeMap<(u64, u64), Delta>,
    /// Since when a gap in the sequence is open.
    gap_since: Option<Duration>,
    /// A sync is wanted.
    needs_sync: bool,
    /// When the sync request in flight was sent.
    sync_requested: Option<Duration>,
}

/// The state machine of one scope on one node. See the module docs.
pub(crate) struct ScopeCore {
    cfg: CoreConfig,
    hash_seed: u64,
    version: Version,
    /// With peers to tell, local changes queue as ops for deltas; without, only `seq` moves.
    publishing: bool,
    /// Interned nodes, shared with the member snapshots; appended to when a peer is first
    /// seen (rare), never shrunk.
    nodes: Arc<[PeerId]>,
    node_index: Map<PeerId, u32>,
    groups: Map<GroupName, GroupState>,
    /// Local process id → the groups it has slots in (the counts live in the groups).
    local_procs: Map<u64, ProcGroups>,
    origins: Map<u32, OriginState>,
    pending: Vec<Op>,
    pending_names: Vec<GroupName>,
    pending_index: Map<GroupName, u32>,
    ready: VecDeque<Delta>,
    record_changes: bool,
    /// What the core asks of its host, oldest first: see [`Output`].
    outputs: VecDeque<Output>,
    groups_cache: Option<Arc<[GroupName]>>,
    local_groups_cache: Option<Arc<[GroupName]>>,
    stats: CoreStats,
    slots: usize,
    local_slots: usize,
}

/// The size of a scope's view, see [`ScopeCore::sizes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sizes {
    pub groups: usize,
    pub slots: usize,
    pub local_slots: usize,
}

impl ScopeCore {
    /// A core for `local` at `incarnation`, with no member.
    pub(crate) fn new(local: PeerId, incarnation: u64, cfg: CoreConfig) -> Self {
        let seed = cfg.hash_seed;
        let hasher = || FixedState::with_seed(seed);
        let mut node_index = Map::with_hasher(hasher());
        node_index.insert(local, LOCAL);
        Self {
            cfg,
            hash_seed: seed,
            version: Version {
                incarnation,
                seq: 0,
            },
            publishing: false,
            nodes: vec![local].into(),
            node_index,
            groups: Map::with_hasher(hasher()),
            local_procs: Map::with_hasher(hasher()),
            origins: Map::with_hasher(hasher()),
            pending: Vec::new(),
            pending_names: Vec::new(),
            pending_index: Map::with_hasher(hasher()),
            ready: VecDeque::new(),
            record_changes: true,
            outputs: VecDeque::new(),
            groups_cache: None,
            local_groups_cache: None,
            stats: CoreStats::default(),
            slots: 0,
            local_slots: 0,
        }
    }

    fn hasher(&self) -> FixedState {
        FixedState::with_seed(self.hash_seed)
    }

    pub(crate) fn local_peer(&self) -> PeerId {
        self.nodes[LOCAL as usize]
    }

    /// This node's own version of the scope.
    pub(crate) fn version(&self) -> Version {
        self.version
    }

    pub(crate) fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// Groups, member slots of every node and member slots of this node, kept as counts (a
    /// metrics scrape reads them under the scope's lock).
    pub(crate) fn sizes(&self) -> Sizes {
        Sizes {
            groups: self.groups.len(),
            slots: self.slots,
            local_slots: self.local_slots,
        }
    }

    /// Whether local changes are queued as deltas (there are peers to tell). Turning it off
    /// drops nothing already queued.
    pub(crate) fn set_publishing(&mut self, on: bool) {
        self.publishing = on;
    }

    pub(crate) fn is_publishing(&self) -> bool {
        self.publishing
    }

    /// The peers whose members this node holds (applied and not purged).
    pub(crate) fn live_origins(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.origins
            .values()
            .filter(|o| o.alive && o.version.is_some())
            .map(|o| o.peer)
    }

    /// Whether membership changes are output ([`Output::Changed`]); off when nobody
    /// subscribes, so that changes cost nothing. Turning it off drops the changes not yet
    /// taken.
    pub(crate) fn set_record_changes(&mut self, on: bool) {
        self.record_changes = on;
        if !on {
            self.outputs.retain(|o| !matches!(o, Output::Changed(_)));
        }
    }

    pub(super) fn push_output(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    /// The next output, oldest first.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The membership changes among the outputs, in the order they happened; the other
    /// outputs stay queued.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn drain_changes(&mut self) -> std::vec::IntoIter<Change> {
        let mut changes = Vec::new();
        self.outputs.retain(|o| match o {
            Output::Changed(c) => {
                changes.push(c.clone());
                false
            }
            _ => true,
        });
        changes.into_iter()
    }

    /// The first sync request among the outputs, for tests that look at requests alone: the
    /// timers before it are dropped (a test ticks when it likes), the rest stay queued.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn poll_request(&mut self) -> Option<PeerId> {
        self.outputs.retain(|o| !matches!(o, Output::Timer { .. }));
        let at = self
            .outputs
            .iter()
            .position(|o| matches!(o, Output::RequestSync { .. }))?;
        match self.outputs.remove(at) {
            Some(Output::RequestSync { peer }) => Some(peer),
            _ => None,
        }
    }

    // ---------------------------------------------------------------- local operations

    /// Joins `id` to every group of `names` (a name may repeat), all or nothing.
    /// Names must be valid. Refused when a limit would be exceeded.
    pub(crate) fn join(&mut self, id: u64, names: &[&str]) -> Result<(), LimitError> {
        self.check_join(id, names)?;
        let seed = self.hash_seed;
        for name in names {
            let added = self.add(LOCAL, name, id, 1);
            if added.id_fresh
                && let Some(name) = added.name
            {
                match self.local_procs.entry(id) {
                    hashbrown::hash_map::Entry::Occupied(mut e) => e.get_mut().insert(name, seed),
                    hashbrown::hash_map::Entry::Vacant(e) => {
                        e.insert(ProcGroups::One(name));
                    }
                }
            }
        }
        self.local_changed();
        Ok(())
    }

    fn check_join(&self, id: u64, names: &[&str]) -> Result<(), LimitError> {
        let (max_groups, max_members) = (self.cfg.max_groups, self.cfg.max_members_per_group);
        // Occurrences per distinct name, in first-seen order (the error names the first group
        // that does not fit). A scan for small batches, a map for large ones.
        let mut tally: Vec<(&str, usize)> = Vec::with_capacity(names.len());
        if names.len() <= 16 {
            for name in names {
                match tally.iter_mut().find(|(n, _)| n == name) {
                    Some((_, k)) => *k += 1,
                    None => tally.push((name, 1)),
                }
            }
        } else {
            let mut index: Map<&str, usize> = Map::with_hasher(self.hasher());
            for name in names {
                match index.get(name) {
                    Some(i) => tally[*i].1 += 1,
                    None => {
                        index.insert(name, tally.len());
                        tally.push((name, 1));
                    }
                }
            }
        }
        let mut new_groups = 0;
        for (name, k) in tally {
            let current = match self.groups.get(name) {
                Some(g) if u64::from(g.count(LOCAL, id)) + k as u64 > u64::from(u32::MAX) => {
                    return Err(LimitError {
                        limit: Limit::MaxMembersPerGroup,
                        group: name.to_owned(),
                        max: u32::MAX as usize,
                    });
                }
                Some(g) => g.slots,
                None => {
                    new_groups += 1;
                    if max_groups != 0 && self.groups.len() + new_groups > max_groups {
                        return Err(LimitError {
                            limit: Limit::MaxGroups,
                            group: name.to_owned(),
                            max: max_groups,
                        });
                    }
                    0
                }
            };
            if max_members != 0 && current + k > max_members {
                return Err(LimitError {
                    limit: Limit::MaxMembersPerGroup,
                    group: name.to_owned(),
                    max: max_members,
                });
            }
        }
        Ok(())
    }

    /// Leaves one slot of each group of `names`, best effort. Returns how many slots were
    /// left (0: the process was a member of none of them, and nothing changed).
    pub(crate) fn leave(&mut self, id: u64, names: &[&str]) -> usize {
        let mut left = 0;
        for name in names {
            let removed = self.remove(LOCAL, name, id, 1);
            if removed.count == 0 {
                continue;
            }
            left += 1;
            if removed.id_gone
                && let Some(groups) = self.local_procs.get_mut(&id)
                && groups.remove(name)
            {
                self.local_procs.remove(&id);
            }
        }
        if left > 0 {
            self.local_changed();
        }
        left
    }

    /// Removes every slot of `id` in every group, in one change.
    pub(crate) fn exit(&mut self, id: u64) {
        let Some(groups) = self.local_procs.remove(&id) else {
            return;
        };
        for name in groups.into_names() {
            let n = self.groups.get(&name).map_or(0, |g| g.count(LOCAL, id));
            self.remove(LOCAL, &name, id, n);
        }
        self.local_changed();
    }

    fn local_changed(&mut self) {
        if !self.publishing {
            self.version.seq += 1;
        }
    }

    // ---------------------------------------------------------------- reads

    /// Every slot of `group`, cached until the group changes.
    pub(crate) fn members(&mut self, group: &str) -> Members {
        let nodes = &self.nodes;
        match self.groups.get_mut(group) {
            None => Members::default(),
            Some(g) => g
                .members
                .get_or_insert_with(|| {
                    let mut slots = Vec::with_capacity(g.slots);
                    for n in &g.nodes {
                        push_slots(&mut slots, n);
                    }
                    Members::from_slots(nodes.clone(), slots)
                })
                .clone(),
        }
    }

    /// The slots of `group` held by local processes.
    pub(crate) fn local_members(&mut self, group: &str) -> Members {
        let table = &self.nodes;
        match self.groups.get_mut(group) {
            None => Members::default(),
            Some(GroupState {
                nodes,
                local: cache,
                ..
            }) => cache
                .get_or_insert_with(|| {
                    let mut slots = Vec::new();
                    if let Some(n) = nodes.iter().find(|n| n.node == LOCAL) {
                        push_slots(&mut slots, n);
                    }
                    Members::from_slots(table.clone(), slots)
                })
                .clone(),
        }
    }

    /// The non-empty groups, sorted.
    pub(crate) fn which_groups(&mut self) -> Arc<[GroupName]> {
        let groups = &self.groups;
        self.groups_cache
            .get_or_insert_with(|| sorted(groups.keys().cloned()))
            .clone()
    }

    /// The groups with at least one local slot, sorted.
    pub(crate) fn which_local_groups(&mut self) -> Arc<[GroupName]> {
        let groups = &self.groups;
        self.local_groups_cache
            .get_or_insert_with(|| {
                sorted(
                    groups
                        .values()
                        .filter(|g| g.node(LOCAL).is_some())
                        .map(|g| g.name.clone()),
                )
            })
            .clone()
    }

    /// Every non-empty group with its members.
    pub(crate) fn snapshot(&mut self) -> Vec<(GroupName, Members)> {
        let names = self.which_groups();
        names
            .iter()
            .map(|name| (name.clone(), self.members(name)))
            .collect()
    }

    // ---------------------------------------------------------------- own state for peers

    /// The deltas to publish, oldest first, each below `max_delta_bytes`.
    pub(crate) fn take_deltas(&mut self) -> Vec<Delta> {
        self.flush_pending();
        self.ready.drain(..).collect()
    }

    /// The depth of the outgoing queue, in deltas: those built and not yet taken by the
    /// network task, plus the queued ops counted as the deltas they will fill.
    pub(crate) fn queued_deltas(&self) -> usize {
        self.ready.len() + (self.pending.len() * OP_BYTES).div_ceil(self.cfg.max_delta_bytes)
    }

    /// This node's whole local state with its version, for a Sync request. Queued changes are
    /// cut into deltas first, so the version covers them and a peer that applies this state
    /// ignores those deltas as duplicates.
    pub(crate) fn sync_state(&mut self) -> SyncState {
        self.flush_pending();
        let mut groups: Vec<SyncGroup> = self
            .groups
            .values()
            .filter_map(|g| {
                g.node(LOCAL).map(|n| {
                    let mut members: Vec<(u64, u32)> = n.ids.iter().collect();
                    members.sort_unstable();
                    SyncGroup {
                        name: g.name.to_string(),
                        members,
                    }
                })
            })
            .collect();
        groups.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        SyncState {
            origin: self.local_peer(),
            version: self.version,
            groups,
        }
    }

    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.pending);
        let names = std::mem::take(&mut self.pending_names);
        self.pending_index.clear();
        // Per global name index: (chunk number + 1, index in that chunk's table).
        let mut remap: Vec<(u32, u32)> = vec![(0, 0); names.len()];
        let mut chunk = Delta {
            origin: self.local_peer(),
            incarnation: self.version.incarnation,
            seq: 0,
            groups: Vec::new(),
            ops: Vec::new(),
        };
        let mut chunk_no = 1u32;
        let mut bytes = DELTA_OVERHEAD;
        for op in ops {
            let g = op.group as usize;
            let fresh = remap[g].0 != chunk_no;
            let cost = OP_BYTES + if fresh { names[g].len() + 4 } else { 0 };
            if bytes + cost > self.cfg.max_delta_bytes && !chunk.ops.is_empty() {
                self.seal(&mut chunk);
                chunk_no += 1;
                bytes = DELTA_OVERHEAD;
            }
            if remap[g].0 != chunk_no {
                remap[g] = (chunk_no, chunk.groups.len() as u32);
                chunk.groups.push(names[g].to_string());
                bytes += names[g].len() + 4;
            }
            chunk.ops.push(Op {
                group: remap[g].1,
                ..op
            });
            bytes += OP_BYTES;
        }
        self.seal(&mut chunk);
    }

    fn seal(&mut self, chunk: &mut Delta) {
        self.version.seq += 1;
        let mut delta = Delta {
            origin: chunk.origin,
            incarnation: chunk.incarnation,
            seq: self.version.seq,
            groups: Vec::new(),
            ops: Vec::new(),
        };
        std::mem::swap(&mut delta.groups, &mut chunk.groups);
        std::mem::swap(&mut delta.ops, &mut chunk.ops);
        self.stats.deltas_built += 1;
        self.ready.push_back(delta);
    }

    fn queue_op(&mut self, name: &GroupName, id: u64, change: i64) {
        let group = match self.pending_index.get(&**name) {
            Some(group) => *group,
            None => {
                let group = self.pending_names.len() as u32;
                self.pending_names.push(name.clone());
                self.pending_index.insert(name.clone(), group);
                group
            }
        };
        self.pending.push(Op { group, id, change });
    }

    // ---------------------------------------------------------------- peers' input

    /// Applies a delta received from `sender` (the authenticated source of the message).
    pub(crate) fn handle_delta(
        &mut self,
        sender: PeerId,
        delta: Delta,
        now: Duration,
    ) -> Result<DeltaOutcome, Rejection> {
        if let Err(e) = self.validate_delta(sender, &delta) {
            self.stats.deltas_rejected += 1;
            return Err(e);
        }
        let node = self.intern(sender);
        let mut origin = self.take_origin(node);
        let outcome = match origin.version {
            Some(v) if origin.alive && v.incarnation == delta.incarnation => {
                if delta.seq <= v.seq {
                    self.stats.deltas_duplicate += 1;
                    DeltaOutcome::Duplicate
                } else if delta.seq == v.seq + 1 {
                    self.apply_delta(node, &mut origin, &delta);
                    self.release_held(node, &mut origin, false);
                    DeltaOutcome::Applied
                } else {
                    self.hold(&mut origin, delta, now, false);
                    DeltaOutcome::Held
                }
            }
            None if origin.alive && delta.seq == 1 => {
                // The first change of an incarnation applies to its empty state.
                self.apply_delta(node, &mut origin, &delta);
                self.release_held(node, &mut origin, false);
                DeltaOutcome::Applied
            }
            // A gap in a new origin's sequence, another incarnation (a restart, or a late delta
            // of a dead one), or an origin purged as down: only a sync from the origin can tell
            // what is true now.
            None if origin.alive => {
                self.hold(&mut origin, delta, now, false);
                DeltaOutcome::Held
            }
            _ => {
                self.hold(&mut origin, delta, now, true);
                DeltaOutcome::Held
            }
        };
        self.origins.insert(node, origin);
        Ok(outcome)
    }

    fn validate_delta(&self, sender: PeerId, delta: &Delta) -> Result<(), Rejection> {
        if delta.origin != sender {
            return Err(Rejection::WrongOrigin {
                origin: Box::new(delta.origin),
            });
        }
        if sender == self.local_peer() {
            return Err(Rejection::FromSelf);
        }
        if delta.seq == 0 {
            return Err(Rejection::ZeroSeq);
        }
        for name in &delta.groups {
            if let Some(problem) = group_name_problem(name) {
                return Err(Rejection::InvalidGroupName(problem));
            }
        }
        for op in &delta.ops {
            if op.group as usize >= delta.groups.len() {
                return Err(Rejection::BadGroupIndex {
                    index: op.group,
                    len: delta.groups.len(),
                });
            }
            if op.change == 0 || op.change.unsigned_abs() > u64::from(u32::MAX) {
                return Err(Rejection::BadChange);
            }
        }
        Ok(())
    }

    fn apply_delta(&mut self, node: u32, origin: &mut OriginState, delta: &Delta) {
        for op in &delta.ops {
            let name = delta.groups[op.group as usize].as_str();
            let n = op.change.unsigned_abs() as u32;
            if op.change > 0 {
                self.add_remote(node, origin, name, op.id, n);
            } else {
                self.remove_remote(node, origin, name, op.id, n);
            }
        }
        origin.version = Some(Version {
            incarnation: delta.incarnation,
            seq: delta.seq,
        });
        self.stats.deltas_applied += 1;
    }

    fn add_remote(&mut self, node: u32, origin: &mut OriginState, name: &str, id: u64, n: u32) {
        // A process holds at most u32::MAX slots of a group: a peer announcing more (only a
        // hostile one can) is refused the excess like a limit.
        let held = self.groups.get(name).map_or(0, |g| g.count(node, id));
        let room = self.room(name, n).min(u32::MAX - held);
        if room < n {
            self.stats.slots_refused += u64::from(n - room);
            tracing::warn!(
                group = name,
                origin = %origin.peer,
                refused = n - room,
                "remote join refused by a limit"
            );
        }
        if room > 0 {
            let added = self.add(node, name, id, room);
            if added.node_fresh
                && let Some(name) = added.name
            {
                origin.groups.insert(name);
            }
        }
    }

    fn remove_remote(&mut self, node: u32, origin: &mut OriginState, name: &str, id: u64, n: u32) {
        let removed = self.remove(node, name, id, n);
        if removed.count < n {
            self.stats.leaves_unmatched += u64::from(n - removed.count);
        }
        if removed.node_gone {
            origin.groups.remove(name);
        }
    }

    /// How many of `n` new slots of `name` the limits let this node hold.
    fn room(&self, name: &str, n: u32) -> u32 {
        let max_members = self.cfg.max_members_per_group;
        if max_members == 0 && self.cfg.max_groups == 0 {
            return n;
        }
        let current = match self.groups.get(name) {
            Some(g) => g.slots,
            None if self.cfg.max_groups != 0 && self.groups.len() >= self.cfg.max_groups => {
                return 0;
            }
            None => 0,
        };
        if max_members == 0 {
            n
        } else {
            n.min(
                max_members
                    .saturating_sub(current)
                    .try_into()
                    .unwrap_or(u32::MAX),
            )
        }
    }

    fn hold(&mut self, origin: &mut OriginState, delta: Delta, now: Duration, sync_now: bool) {
        self.stats.deltas_held += 1;
        origin.held.insert((delta.incarnation, delta.seq), delta);
        while origin.held.len() > self.cfg.reorder_capacity {
            origin.held.pop_first();
        }
        if sync_now || origin.held.len() >= self.cfg.reorder_capacity {
            self.want_sync(origin, now);
        } else if origin.gap_since.is_none() {
            origin.gap_since = Some(now);
            self.outputs.push_back(Output::Timer {
                at: now + self.cfg.reorder_window,
            });
        }
    }

    /// Applies the held deltas that now follow the applied version. Drops the ones it covers
    /// and, once a sync has said which incarnation is current, those of other incarnations.
    fn release_held(&mut self, node: u32, origin: &mut OriginState, after_sync: bool) {
        let Some(mut v) = origin.version else { return };
        // A hostile origin may announce seq u64::MAX: nothing follows it.
        while let Some(next) = v.seq.checked_add(1)
            && let Some(delta) = origin.held.remove(&(v.incarnation, next))
        {
            self.apply_delta(node, origin, &delta);
            v.seq = next;
        }
        origin.held.retain(|(inc, seq), _| {
            if *inc == v.incarnation {
                *seq > v.seq
            } else {
                !after_sync
            }
        });
        if !origin.held.keys().any(|(inc, _)| *inc == v.incarnation) {
            origin.gap_since = None;
        }
    }

    fn want_sync(&mut self, origin: &mut OriginState, now: Duration) {
        origin.needs_sync = true;
        if origin.sync_requested.is_none() {
            origin.sync_requested = Some(now);
            self.stats.sync_requests += 1;
            self.outputs
                .push_back(Output::RequestSync { peer: origin.peer });
            self.outputs.push_back(Output::Timer {
                at: now + self.cfg.sync_timeout,
            });
        }
    }

    /// Replaces what this node holds of `sender`'s members with its full state, if that state
    /// is newer; emits only the difference.
    pub(crate) fn handle_sync(
        &mut self,
        sender: PeerId,
        state: SyncState,
        now: Duration,
    ) -> Result<SyncOutcome, Rejection> {
        if let Err(e) = self.validate_sync(sender, &state) {
            self.stats.syncs_rejected += 1;
            return Err(e);
        }
        let node = self.intern(sender);
        let mut origin = self.take_origin(node);
        origin.sync_requested = None;
        origin.needs_sync = false;
        let stale = origin.alive
            && origin.version.is_some_and(|v| {
                v.incarnation == state.version.incarnation && state.version.seq <= v.seq
            });
        let outcome = if stale {
            self.stats.syncs_stale += 1;
            SyncOutcome::Stale
        } else {
            self.replace_origin_state(node, &mut origin, &state);
            origin.version = Some(state.version);
            origin.alive = true;
            origin.gap_since = None;
            self.stats.syncs_applied += 1;
            SyncOutcome::Applied
        };
        self.release_held(node, &mut origin, true);
        if origin.gap_since.is_none() && !origin.held.is_empty() {
            origin.gap_since = Some(now);
            self.outputs.push_back(Output::Timer {
                at: now + self.cfg.reorder_window,
            });
        }
        self.origins.insert(node, origin);
        Ok(outcome)
    }

    fn validate_sync(&self, sender: PeerId, state: &SyncState) -> Result<(), Rejection> {
        if state.origin != sender {
            return Err(Rejection::WrongOrigin {
                origin: Box::new(state.origin),
            });
        }
        if sender == self.local_peer() {
            return Err(Rejection::FromSelf);
        }
        let mut names: Set<&str> = Set::with_hasher(self.hasher());
        let mut ids: Set<u64> = Set::with_hasher(self.hasher());
        for group in &state.groups {
            if let Some(problem) = group_name_problem(&group.name) {
                return Err(Rejection::InvalidGroupName(problem));
            }
            if !names.insert(&group.name) {
                return Err(Rejection::DuplicateGroup(group.name.clone()));
            }
            ids.clear();
            for (id, slots) in &group.members {
                if *slots == 0 {
                    return Err(Rejection::ZeroSlots);
                }
                if !ids.insert(*id) {
                    return Err(Rejection::DuplicateMember(*id));
                }
            }
        }
        Ok(())
    }

    fn replace_origin_state(&mut self, node: u32, origin: &mut OriginState, state: &SyncState) {
        let incoming: Set<&str> = state.groups.iter().map(|g| g.name.as_str()).collect();
        let dropped: Vec<GroupName> = origin
            .groups
            .iter()
            .filter(|name| !incoming.contains(&***name))
            .cloned()
            .collect();
        for name in dropped {
            self.remove_node_from_group(node, &name);
            origin.groups.remove(&name);
        }
        for group in &state.groups {
            let current: Vec<(u64, u32)> = self
                .groups
                .get(group.name.as_str())
                .and_then(|g| g.node(node))
                .map(|n| n.ids.iter().collect())
                .unwrap_or_default();
            let wanted: Map<u64, u32> = {
                let mut m = Map::with_hasher(self.hasher());
                m.extend(group.members.iter().copied());
                m
            };
            for (id, have) in &current {
                let want = wanted.get(id).copied().unwrap_or(0);
                if want < *have {
                    self.remove_remote(node, origin, &group.name, *id, have - want);
                }
            }
            for (id, want) in &group.members {
                let have = current.iter().find(|(i, _)| i == id).map_or(0, |(_, c)| *c);
                if *want > have {
                    self.add_remote(node, origin, &group.name, *id, want - have);
                }
            }
        }
    }

    /// The request for `sender`'s state failed (no connection, timeout): another may be sent.
    pub(crate) fn sync_failed(&mut self, sender: PeerId, now: Duration) {
        if let Some(node) = self.node_index.get(&sender).copied()
            && let Some(origin) = self.origins.get_mut(&node)
        {
            origin.sync_requested = None;
            origin.needs_sync = false;
            if origin.gap_since.is_some() {
                origin.gap_since = Some(now);
                self.outputs.push_back(Output::Timer {
                    at: now + self.cfg.reorder_window,
                });
            }
        }
    }

    /// A peer told its own version (Discover, anti-entropy): pull its state if this node's
    /// copy differs.
    pub(crate) fn handle_peer_version(&mut self, peer: PeerId, version: Version, now: Duration) {
        if peer == self.local_peer() {
            return;
        }
        let node = self.intern(peer);
        let mut origin = self.take_origin(node);
        let current = origin.alive && origin.version == Some(version);
        if !current {
            if origin.version.is_none() && version.seq == 0 {
                // It never changed anything: its state is empty, which is what we hold.
                origin.version = Some(version);
                origin.alive = true;
            } else {
                self.want_sync(&mut origin, now);
            }
        }
        self.origins.insert(node, origin);
    }

    /// What this node applied of `peer`, if anything and if it is not purged.
    pub(crate) fn applied_version(&self, peer: &PeerId) -> Option<Version> {
        let node = self.node_index.get(peer)?;
        let origin = self.origins.get(node)?;
        origin.version.filter(|_| origin.alive)
    }

    /// `peer` is down: remove all its members (emitting the leaves) and apply none of its
    /// deltas until a sync shows it alive again.
    pub(crate) fn peer_down(&mut self, peer: PeerId) {
        let Some(node) = self.node_index.get(&peer).copied() else {
            return;
        };
        if node == LOCAL {
            return;
        }
        let Some(mut origin) = self.origins.remove(&node) else {
            return;
        };
        for name in origin.groups.drain() {
            self.remove_node_from_group(node, &name);
        }
        origin.alive = false;
        origin.held.clear();
        origin.gap_since = None;
        origin.needs_sync = false;
        origin.sync_requested = None;
        self.stats.purges += 1;
        self.origins.insert(node, origin);
    }

    /// Time passes: pull syncs for gaps that stayed open, retry requests that timed out.
    pub(crate) fn tick(&mut self, now: Duration) {
        let mut due = Vec::new();
        for (node, origin) in &mut self.origins {
            if let Some(sent) = origin.sync_requested
                && now.saturating_sub(sent) >= self.cfg.sync_timeout
            {
                origin.sync_requested = None;
            }
            let gap_due = origin
                .gap_since
                .is_some_and(|t| now.saturating_sub(t) >= self.cfg.reorder_window);
            if (gap_due || origin.needs_sync) && origin.sync_requested.is_none() {
                due.push(*node);
            }
        }
        due.sort_unstable();
        for node in due {
            let mut origin = self.take_origin(node);
            self.want_sync(&mut origin, now);
            self.origins.insert(node, origin);
        }
        // The host ticks again when the earliest deadline left is due.
        let next = self
            .origins
            .values()
            .flat_map(|o| {
                let sync = o.sync_requested.map(|t| t + self.cfg.sync_timeout);
                let gap = o.gap_since.map(|t| t + self.cfg.reorder_window);
                sync.into_iter().chain(gap)
            })
            .min();
        if let Some(at) = next {
            self.outputs.push_back(Output::Timer { at });
        }
    }

    // ---------------------------------------------------------------- the mechanics

    fn intern(&mut self, peer: PeerId) -> u32 {
        if let Some(node) = self.node_index.get(&peer) {
            return *node;
        }
        let node = self.nodes.len() as u32;
        let mut nodes = self.nodes.to_vec();
        nodes.push(peer);
        self.nodes = nodes.into();
        self.node_index.insert(peer, node);
        node
    }

    fn take_origin(&mut self, node: u32) -> OriginState {
        self.origins.remove(&node).unwrap_or_else(|| OriginState {
            peer: self.nodes[node as usize],
            version: None,
            alive: true,
            groups: Set::with_hasher(self.hasher()),
            held: BTreeMap::new(),
            gap_since: None,
            needs_sync: false,
            sync_requested: None,
        })
    }

    /// Adds `n` slots of `(node, id)` to `name`, without limit checks.
    fn add(&mut self, node: u32, name: &str, id: u64, n: u32) -> Added {
        let seed = self.hash_seed;
        let group = match self.groups.entry_ref(name) {
            hashbrown::hash_map::EntryRef::Occupied(e) => e.into_mut(),
            hashbrown::hash_map::EntryRef::Vacant(e) => {
                let key: GroupName = name.into();
                self.groups_cache = None;
                e.insert_with_key(
                    key.clone(),
                    GroupState {
                        name: key,
                        slots: 0,
                        nodes: Vec::new(),
                        members: None,
                        local: None,
                    },
                )
            }
        };
        let pos = match group.nodes.iter().position(|s| s.node == node) {
            Some(pos) => pos,
            None => {
                group.nodes.push(NodeSlots {
                    node,
                    slots: 0,
                    ids: Ids::One(id, 0),
                });
                group.nodes.len() - 1
            }
        };
        let slots = &mut group.nodes[pos];
        let node_fresh = slots.slots == 0;
        let id_fresh = slots.ids.add(id, n, seed);
        slots.slots += n as usize;
        group.slots += n as usize;
        group.members = None;
        self.slots += n as usize;
        if node == LOCAL {
            self.local_slots += n as usize;
            group.local = None;
            if node_fresh {
                self.local_groups_cache = None;
            }
        }
        if self.record_changes {
            self.outputs.push_back(Output::Changed(Change {
                kind: EventKind::MemberJoined,
                group: group.name.clone(),
                pid: Pid::new(self.nodes[node as usize], id),
                count: n,
            }));
        }
        // Cloned only for whoever keeps it: a plain extra join needs no name.
        let publish = node == LOCAL && self.publishing;
        let name = (node_fresh || id_fresh || publish).then(|| group.name.clone());
        if publish && let Some(name) = &name {
            self.queue_op(name, id, i64::from(n));
        }
        Added {
            name: name.filter(|_| node_fresh || id_fresh),
            node_fresh,
            id_fresh,
        }
    }

    /// Removes up to `n` slots of `(node, id)` from `name`.
    fn remove(&mut self, node: u32, name: &str, id: u64, n: u32) -> Removed {
        let nothing = Removed {
            count: 0,
            id_gone: false,
            node_gone: false,
        };
        let Some(group) = self.groups.get_mut(name) else {
            return nothing;
        };
        let Some(pos) = group.nodes.iter().position(|s| s.node == node) else {
            return nothing;
        };
        let slots = &mut group.nodes[pos];
        let Some(count) = slots.ids.get_mut(id) else {
            return nothing;
        };
        let removed = n.min(*count);
        if removed == 0 {
            return nothing;
        }
        *count -= removed;
        let id_gone = *count == 0;
        if id_gone {
            slots.ids.remove(id);
        }
        slots.slots -= removed as usize;
        group.slots -= removed as usize;
        group.members = None;
        self.slots -= removed as usize;
        let gone = slots.slots == 0;
        if gone {
            group.nodes.swap_remove(pos);
        }
        if node == LOCAL {
            self.local_slots -= removed as usize;
            group.local = None;
            if gone {
                self.local_groups_cache = None;
            }
        }
        if self.record_changes {
            self.outputs.push_back(Output::Changed(Change {
                kind: EventKind::MemberLeft,
                group: group.name.clone(),
                pid: Pid::new(self.nodes[node as usize], id),
                count: removed,
            }));
        }
        let emptied = group.slots == 0;
        // Cloned only when needed: a plain extra leave keeps the group and publishes nothing.
        let publish = node == LOCAL && self.publishing;
        let name = (emptied || publish).then(|| group.name.clone());
        if let Some(name) = name {
            if emptied {
                self.groups.remove(name.as_ref());
                self.groups_cache = None;
            }
            if publish {
                self.queue_op(&name, id, -i64::from(removed));
            }
        }
        Removed {
            count: removed,
            id_gone,
            node_gone: gone,
        }
    }

    fn remove_node_from_group(&mut self, node: u32, name: &str) {
        let ids: Vec<(u64, u32)> = self
            .groups
            .get(name)
            .and_then(|g| g.node(node))
            .map(|n| {
                let mut v: Vec<(u64, u32)> = n.ids.iter().collect();
                v.sort_unstable();
                v
            })
            .unwrap_or_default();
        for (id, count) in ids {
            self.remove(node, name, id, count);
        }
    }

    /// Every slot this node holds, by group: the oracle of tests and the simulator.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn view(&self) -> BTreeMap<String, BTreeMap<Pid, u32>> {
        let mut out = BTreeMap::new();
        for g in self.groups.values() {
            let mut members = BTreeMap::new();
            for n in &g.nodes {
                for (id, c) in n.ids.iter() {
                    members.insert(Pid::new(self.nodes[n.node as usize], id), c);
                }
            }
            assert_eq!(
                members.values().map(|c| *c as usize).sum::<usize>(),
                g.slots,
                "slot count of {}",
                g.name
            );
            out.insert(g.name.to_string(), members);
        }
        let local: usize = self
            .groups
            .values()
            .filter_map(|g| g.node(LOCAL))
            .map(|n| n.slots)
            .sum();
        let total: usize = self.groups.values().map(|g| g.slots).sum();
        assert_eq!(self.sizes().slots, total, "the slot counter");
        assert_eq!(self.sizes().local_slots, local, "the local slot counter");
        out
    }
}

/// What [`ScopeCore::add`] did.
struct Added {
    /// The group's shared name, when the node or the process is new to it.
    name: Option<GroupName>,
    /// The node had no slot in the group before.
    node_fresh: bool,
    /// The process had no slot in the group before.
    id_fresh: bool,
}

/// What [`ScopeCore::remove`] did.
struct Removed {
    /// Slots removed.
    count: u32,
    /// The process has no slot left in the group.
    id_gone: bool,
    /// The node has no slot left in the group.
    node_gone: bool,
}

/// A local join refused by a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LimitError {
    pub limit: Limit,
    pub group: String,
    pub max: usize,
}

fn push_slots(out: &mut Vec<(u32, u64)>, slots: &NodeSlots) {
    for (id, count) in slots.ids.iter() {
        out.extend(std::iter::repeat_n((slots.node, id), count as usize));
    }
}

/// The groups a local process has slots in: inline for the common case of one group, so a
/// process in a single group costs no allocation of its own.
enum ProcGroups {
    One(GroupName),
    Many(Box<Set<GroupName>>),
}

impl ProcGroups {
    fn insert(&mut self, name: GroupName, seed: u64) {
        match self {
            ProcGroups::One(first) if *first == name => {}
            ProcGroups::One(first) => {
                let mut set = Set::with_hasher(FixedState::with_seed(seed));
                set.insert(first.clone());
                set.insert(name);
                *self = ProcGroups::Many(Box::new(set));
            }
            ProcGroups::Many(set) => {
                set.insert(name);
            }
        }
    }

    /// Removes `name`; `true` when no group is left.
    fn remove(&mut self, name: &str) -> bool {
        match self {
            ProcGroups::One(only) => &**only == name,
            ProcGroups::Many(set) => {
                set.remove(name);
                set.is_empty()
            }
        }
    }

    fn into_names(self) -> Vec<GroupName> {
        match self {
            ProcGroups::One(name) => vec![name],
            ProcGroups::Many(set) => set.into_iter().collect(),
        }
    }
}

fn sorted(names: impl Iterator<Item = GroupName>) -> Arc<[GroupName]> {
    let mut v: Vec<GroupName> = names.collect();
    v.sort_unstable();
    v.into()
}
