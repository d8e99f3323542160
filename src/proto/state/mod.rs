//! [`ScopeCore`]: the membership state of one scope on one node, and the rules for changing it.
//!
//! Layout: groups map to the nodes that have members in them, and each node to its processes'
//! slot counts. Nodes are interned (`u32`; the local node is 0), so a slot costs a few bytes,
//! not a `PeerId`; groups too (`Groups`), so that a local process's groups are `u32` indices,
//! not shared names. Member lists are built on the first read after a change and cached, so a
//! burst of joins costs nothing until somebody reads.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use foldhash::fast::FixedState;
use libp2p::PeerId;

use super::groups::{
    GroupName, GroupState, Groups, Ids, LocalProcs, Lookup, Map, NameRef, NodeSlots, Set,
    push_slots, sorted,
};
use super::input::{Change, Input, LimitError, Outcome, Output, Refusal};
use super::messages::{Delta, Op, Version};
use crate::proto::registry::is_name_group;
use crate::vocab::error::Limit;
use crate::vocab::event::EventKind;
use crate::vocab::members::Members;
use crate::vocab::meta::Meta;
use crate::vocab::pid::Pid;

mod limits;
mod meta;
mod names;
mod publish;
mod remote;
#[cfg(test)]
mod tests;

const LOCAL: u32 = 0;
/// Rough CBOR overhead of a delta besides its ops and names.
const DELTA_OVERHEAD: usize = 96;

/// How long a gap in an origin's deltas may stay open before its state is pulled.
pub(crate) const REORDER_WINDOW: Duration = Duration::from_millis(250);
/// Early deltas held per origin, at most; one more pulls its state at once.
pub(crate) const REORDER_CAPACITY: usize = 64;
/// The most groups a core holds whatever the configuration: each has a `u32` index.
const MAX_GROUP_INDICES: usize = u32::MAX as usize;
/// Deltas are cut below this many bytes (well under gossipsub's
/// `BehaviourConfig::max_transmit_size`).
pub(crate) const MAX_DELTA_BYTES: usize = 60 * 1024;

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
    /// The largest metadata value taken, encoded.
    pub max_meta_bytes: usize,
}

impl CoreConfig {
    pub(crate) fn from_scope(config: &crate::ScopeConfig, hash_seed: u64) -> Self {
        Self {
            max_groups: config.max_groups(),
            max_members_per_group: config.max_members_per_group(),
            reorder_window: REORDER_WINDOW,
            reorder_capacity: REORDER_CAPACITY,
            sync_timeout: config.protocol_timeout(),
            max_delta_bytes: MAX_DELTA_BYTES,
            hash_seed,
            max_meta_bytes: config.max_meta_bytes(),
        }
    }
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
    /// Remote changes of metadata of processes this node does not hold in the group.
    pub updates_unmatched: u64,
    /// Remote metadata values over `max_meta_bytes`, refused (the member is held without).
    pub meta_refused: u64,
    /// Local claims of a name dropped because another claim of it ranked first.
    pub names_lost: u64,
    pub purges: u64,
}

struct OriginState {
    peer: PeerId,
    /// What this node applied; `None` before the first delta or sync.
    version: Option<Version>,
    /// `false` after a purge, until a sync proves the origin alive.
    alive: bool,
    /// The groups (their indices in [`Groups`]) in which this node holds members of the
    /// origin: an index, not a name, so that a new group costs no second hash of its name. An
    /// index stays the group's while the origin holds slots in it (a group is removed only
    /// once empty), and leaves this set when the origin's last slot there goes.
    groups: Set<u32>,
    /// Early deltas, by (incarnation, seq).
    held: BTreeMap<(u64, u64), Delta>,
    /// Since when a gap in the sequence is open.
    gap_since: Option<Duration>,
    /// A sync is wanted.
    needs_sync: bool,
    /// When the sync request in flight was sent.
    sync_requested: Option<Duration>,
    /// The origin's slots this node does not hold because they did not fit the origin's
    /// budgets (see `room`), counted since its last sync: its view of the origin is short of
    /// the truth by this many.
    refused: u64,
    /// The origin left slots while some of its slots were refused: room may have come back,
    /// so its state is pulled again.
    room_freed: bool,
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
    groups: Groups,
    /// Local process id → the groups it has slots in (the counts live in the groups).
    local_procs: LocalProcs,
    origins: Map<u32, OriginState>,
    /// Local changes not yet cut into deltas; each op's `group` indexes `pending_names`.
    pending: Vec<Op>,
    pending_names: Vec<GroupName>,
    /// A group's index in `groups` → its position in `pending_names`; an entry goes when its
    /// group does, so that a later group at the same index is named afresh.
    pending_index: Map<u32, u32>,
    /// The encoded size of `pending` as one delta, at most: `DELTA_OVERHEAD`, the ops
    /// packed (`packed_ops::packed_len`) and the names.
    pending_bytes: usize,
    ready: VecDeque<Delta>,
    record_changes: bool,
    /// What the core asks of its host, oldest first: see [`Output`].
    outputs: VecDeque<Output>,
    groups_cache: Option<Arc<[GroupName]>>,
    local_groups_cache: Option<Arc<[GroupName]>>,
    stats: CoreStats,
    slots: usize,
    local_slots: usize,
    /// How many groups this node's own processes have slots in: what `max_groups` bounds for
    /// local joins (remote origins have budgets of their own, see `room`).
    local_groups: usize,
    /// How many of `groups` hold registered names (`proto::registry`), which no list or
    /// count of groups shows.
    name_groups: usize,
    /// Name groups changed by the input being handled: their claims are resolved before
    /// `handle` returns.
    names_touched: Vec<GroupName>,
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
            groups: Groups::new(seed),
            local_procs: LocalProcs::new(seed),
            origins: Map::with_hasher(hasher()),
            pending: Vec::new(),
            pending_names: Vec::new(),
            pending_index: Map::with_hasher(hasher()),
            pending_bytes: DELTA_OVERHEAD,
            ready: VecDeque::new(),
            record_changes: true,
            outputs: VecDeque::new(),
            groups_cache: None,
            local_groups_cache: None,
            stats: CoreStats::default(),
            slots: 0,
            local_slots: 0,
            local_groups: 0,
            name_groups: 0,
            names_touched: Vec::new(),
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
            groups: self.groups.len() - self.name_groups,
            slots: self.slots,
            local_slots: self.local_slots,
        }
    }

    /// Whether local changes are queued as deltas (there are peers to tell). Turning it off
    /// drops nothing already queued.
    fn set_publishing(&mut self, on: bool) {
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
        if !on && !self.outputs.is_empty() {
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

    /// The deltas among the outputs, oldest first; the other outputs stay queued.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn take_published(&mut self) -> Vec<Delta> {
        let mut deltas = Vec::new();
        self.outputs.retain(|o| match o {
            Output::Publish(d) => {
                deltas.push(d.clone());
                false
            }
            _ => true,
        });
        deltas
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

    /// Joins `id` to every group of `names` (a name may repeat), all or nothing.
    /// Names must be valid. Refused when a limit would be exceeded.
    fn on_join(&mut self, id: u64, names: &[&str]) -> Result<(), LimitError> {
        if let [name] = names {
            // The common call: the name is looked up once for the check and the join.
            let found = self.groups.lookup(name);
            let group = found.index.and_then(|i| self.groups.at(i));
            self.check_group(id, name, group, 1, &mut 0)?;
            self.add_found(name, found, id, None)?;
        } else {
            self.check_join(id, names)?;
            for name in names {
                self.add_local(name, id, None)?;
            }
        }
        self.local_changed();
        Ok(())
    }

    /// Adds one slot of local process `id` to `name`, and the group to the process's, after
    /// the limit checks. Refused only when no group index is left, which `check_join` rules
    /// out first.
    fn add_local(&mut self, name: &str, id: u64, meta: Option<Meta>) -> Result<(), LimitError> {
        let found = self.groups.lookup(name);
        self.add_found(name, found, id, meta)
    }

    /// [`add_local`](Self::add_local) where the caller looked `name` up already.
    fn add_found(
        &mut self,
        name: &str,
        found: Lookup,
        id: u64,
        meta: Option<Meta>,
    ) -> Result<(), LimitError> {
        let added = self
            .add(LOCAL, name.into(), found, id, 1, meta)
            .ok_or_else(|| LimitError {
                limit: Limit::MaxGroups,
                group: name.to_owned(),
                max: MAX_GROUP_INDICES,
            })?;
        if added.id_fresh {
            self.local_procs.insert(id, added.group);
        }
        Ok(())
    }

    /// Leaves one slot of each group of `names`, best effort. Returns how many slots were
    /// left (0: the process was a member of none of them, and nothing changed).
    fn on_leave(&mut self, id: u64, names: &[&str]) -> usize {
        let mut left = 0;
        for name in names {
            let removed = self.remove(LOCAL, name, id, 1);
            if removed.count == 0 {
                continue;
            }
            left += 1;
            if removed.id_gone {
                self.local_procs.remove(id, removed.group);
            }
        }
        if left > 0 {
            self.local_changed();
        }
        left
    }

    /// Removes every slot of `id` in every group, in one change.
    fn on_exit(&mut self, id: u64) {
        let mut groups = self.local_procs.take(id).peekable();
        if groups.peek().is_none() {
            return;
        }
        for group in groups {
            let n = self.groups.at(group).map_or(0, |g| g.count(LOCAL, id));
            self.remove_at(LOCAL, group, id, n);
        }
        self.local_changed();
    }

    fn local_changed(&mut self) {
        if !self.publishing {
            self.version.seq += 1;
        }
    }

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

    /// The slots of `group`, of every node.
    pub(crate) fn member_count(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, |g| g.slots)
    }

    /// The slots of `group` held by local processes.
    pub(crate) fn local_member_count(&self, group: &str) -> usize {
        self.groups
            .get(group)
            .and_then(|g| g.node(LOCAL))
            .map_or(0, |n| n.slots)
    }

    /// The non-empty groups, sorted.
    pub(crate) fn which_groups(&mut self) -> Arc<[GroupName]> {
        let groups = &self.groups;
        self.groups_cache
            .get_or_insert_with(|| {
                sorted(
                    groups
                        .values()
                        .filter(|g| !is_name_group(&g.name))
                        .map(|g| g.name.clone()),
                )
            })
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
                        .filter(|g| g.node(LOCAL).is_some() && !is_name_group(&g.name))
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
            refused: 0,
            room_freed: false,
        })
    }

    /// Adds `n` slots of `(node, id)` to `name`, without limit checks; `meta`, if given,
    /// replaces the process's metadata there. `found` is what the caller's
    /// [`Groups::lookup`] of `name` gave: no index makes the group.
    /// `None` only when no group index is left, which the limit checks before rule out.
    fn add(
        &mut self,
        node: u32,
        name: NameRef<'_>,
        found: Lookup,
        id: u64,
        n: u32,
        meta: Option<Meta>,
    ) -> Option<Added> {
        let seed = self.hash_seed;
        let index = match found.index {
            Some(index) => index,
            None => {
                let index = self.groups.insert_new(name, found.hash)?;
                self.groups_cache = None;
                if is_name_group(name.as_str()) {
                    self.name_groups += 1;
                }
                index
            }
        };
        let group = self.groups.at_mut(index)?;
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
                self.local_groups += 1;
            }
        }
        let published_meta = match meta {
            Some(meta) => {
                let table = group
                    .meta
                    .get_or_insert_with(|| Box::new(Map::with_hasher(FixedState::with_seed(seed))));
                table.insert((node, id), meta.clone());
                (node == LOCAL).then_some(meta)
            }
            None => None,
        };
        let named = is_name_group(&group.name);
        if named {
            self.names_touched.push(group.name.clone());
        } else if self.record_changes {
            self.outputs.push_back(Output::Changed(Change {
                kind: EventKind::MemberJoined,
                group: group.name.clone(),
                pid: Pid::new(self.nodes[node as usize], id),
                count: n,
                meta: group.meta(node, id).cloned(),
            }));
        }
        if node == LOCAL && self.publishing {
            let name = group.name.clone();
            self.queue_op(index, &name, id, i64::from(n), published_meta);
        }
        Some(Added {
            group: index,
            node_fresh,
            id_fresh,
        })
    }

    /// Removes up to `n` slots of `(node, id)` from `name`.
    fn remove(&mut self, node: u32, name: &str, id: u64, n: u32) -> Removed {
        match self.groups.index(name) {
            Some(index) => self.remove_at(node, index, id, n),
            None => Removed::NOTHING,
        }
    }

    /// Removes up to `n` slots of `(node, id)` from the group at `index`.
    fn remove_at(&mut self, node: u32, index: u32, id: u64, n: u32) -> Removed {
        let nothing = Removed::NOTHING;
        let Some(group) = self.groups.at_mut(index) else {
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
        // The event names the metadata the process had; it goes with its last slot.
        let meta = match &mut group.meta {
            Some(table) if id_gone => {
                let meta = table.remove(&(node, id));
                if table.is_empty() {
                    group.meta = None;
                }
                meta
            }
            Some(table) => table.get(&(node, id)).cloned(),
            None => None,
        };
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
                self.local_groups -= 1;
            }
        }
        let named = is_name_group(&group.name);
        if named {
            self.names_touched.push(group.name.clone());
        } else if self.record_changes {
            self.outputs.push_back(Output::Changed(Change {
                kind: EventKind::MemberLeft,
                group: group.name.clone(),
                pid: Pid::new(self.nodes[node as usize], id),
                count: removed,
                meta,
            }));
        }
        let emptied = group.slots == 0;
        // Cloned only when needed: a plain extra leave keeps the group and publishes nothing.
        let publish = node == LOCAL && self.publishing;
        let name = (emptied || publish).then(|| group.name.clone());
        if let Some(name) = name {
            if emptied {
                self.groups.remove(index);
                self.groups_cache = None;
                if named {
                    self.name_groups -= 1;
                }
            }
            if publish {
                self.queue_op(index, &name, id, -i64::from(removed), None);
            }
            if emptied {
                // The index may be taken by another group before the next flush.
                self.pending_index.remove(&index);
            }
        }
        Removed {
            count: removed,
            group: index,
            id_gone,
            node_gone: gone,
        }
    }

    fn remove_node_from_group(&mut self, node: u32, index: u32) {
        let ids: Vec<(u64, u32)> = self
            .groups
            .at(index)
            .and_then(|g| g.node(node))
            .map(|n| {
                let mut v: Vec<(u64, u32)> = n.ids.iter().collect();
                v.sort_unstable();
                v
            })
            .unwrap_or_default();
        for (id, count) in ids {
            self.remove_at(node, index, id, count);
        }
    }

    /// The names lost among the outputs, `(name, process, winner)`; the other outputs stay
    /// queued.
    #[cfg(test)]
    pub(crate) fn take_names_lost(&mut self) -> Vec<(String, u64, Pid)> {
        let mut lost = Vec::new();
        self.outputs.retain(|o| match o {
            Output::NameLost {
                name,
                process,
                winner,
            } => {
                lost.push((name.clone(), *process, *winner));
                false
            }
            _ => true,
        });
        lost
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
        let local_groups = self
            .groups
            .values()
            .filter(|g| g.node(LOCAL).is_some())
            .count();
        assert_eq!(self.local_groups, local_groups, "the local group counter");
        out
    }
}

/// What [`ScopeCore::add`] did.
struct Added {
    /// The group's index.
    group: u32,
    /// The node had no slot in the group before.
    node_fresh: bool,
    /// The process had no slot in the group before.
    id_fresh: bool,
}

/// What [`ScopeCore::remove`] did.
struct Removed {
    /// Slots removed.
    count: u32,
    /// The group's index (free again if the group emptied).
    group: u32,
    /// The process has no slot left in the group.
    id_gone: bool,
    /// The node has no slot left in the group.
    node_gone: bool,
}

impl Removed {
    const NOTHING: Self = Self {
        count: 0,
        group: 0,
        id_gone: false,
        node_gone: false,
    };
}

impl ScopeCore {
    /// Takes one input at time `now` (the host's clock, from any fixed start); the outputs
    /// it causes wait in [`poll_output`](Self::poll_output).
    pub(crate) fn handle(&mut self, input: Input<'_>, now: Duration) -> Result<Outcome, Refusal> {
        let result = self.dispatch(input, now);
        if !self.names_touched.is_empty() {
            self.resolve_names();
        }
        result
    }

    fn dispatch(&mut self, input: Input<'_>, now: Duration) -> Result<Outcome, Refusal> {
        match input {
            Input::Join { process, groups } => {
                self.on_join(process, groups).map_err(Refusal::Limit)?;
            }
            Input::Leave { process, groups } => {
                return Ok(Outcome::Left {
                    slots: self.on_leave(process, groups),
                });
            }
            Input::JoinWith {
                process,
                group,
                meta,
            } => self
                .on_join_with(process, group, meta)
                .map_err(Refusal::Limit)?,
            Input::Update {
                process,
                group,
                meta,
            } => {
                if !self
                    .on_update(process, group, meta)
                    .map_err(Refusal::Limit)?
                {
                    return Ok(Outcome::NotMember);
                }
            }
            Input::Register {
                process,
                name,
                at_micros,
                meta,
            } => self.on_register(process, name, at_micros, meta)?,
            Input::Unregister { process, name } => {
                if !self.on_unregister(process, name) {
                    return Ok(Outcome::NotMember);
                }
            }
            Input::Exit { process } => self.on_exit(process),
            Input::Flush => {
                for delta in self.on_flush() {
                    self.push_output(Output::Publish(delta));
                }
            }
            Input::PeerShares => {
                if !self.is_publishing() {
                    self.set_publishing(true);
                }
            }
            Input::Delta { sender, delta } => {
                return Ok(Outcome::Delta(self.on_delta(sender, delta, now)?));
            }
            Input::Sync { sender, state } => {
                return Ok(Outcome::Sync(self.on_sync(sender, state, now)?));
            }
            Input::SyncFailed { origin } => self.on_sync_failed(origin, now),
            Input::PeerVersion { peer, version } => self.on_peer_version(peer, version, now),
            Input::PeerDown { peer } => self.on_peer_down(peer),
            Input::Goodbye { peer, incarnation } => {
                let purged = self
                    .applied_version(&peer)
                    .is_none_or(|v| v.incarnation == incarnation);
                if purged {
                    self.on_peer_down(peer);
                }
                return Ok(Outcome::Goodbye { purged });
            }
            Input::Tick => self.on_tick(now),
        }
        Ok(Outcome::Done)
    }
}
