//! Peers' input: deltas validated and applied in order (early ones held for the reorder
//! window), syncs that replace an origin's state, peers' versions, purges, and the timers that
//! pull syncs again.

use std::time::Duration;

use libp2p::PeerId;

use super::{Added, MAX_GROUP_INDICES, OriginState, ScopeCore};
use bytes::Bytes;

use crate::proto::groups::{GroupState, Map, NameRef, Set, wire_group_problem};
use crate::proto::input::{DeltaOutcome, Output, Rejection, SyncOutcome};
use crate::proto::messages::{Delta, SyncState, Version};
use crate::proto::registry::{CLAIM_OVERHEAD, Claim, is_name_group};

/// CBOR's null: the value of a name's claim whose own value was over the cap.
const CBOR_NULL: &[u8] = &[0xf6];
use crate::vocab::meta::Meta;

impl ScopeCore {
    /// Applies a delta received from `sender` (the authenticated source of the message).
    pub(super) fn on_delta(
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
        if origin.room_freed {
            // The versions say this node is up to date, but slots refused before may fit now:
            // only the origin's full state says which. Wanted until a state is applied.
            self.want_sync(&mut origin, now);
        }
        self.origins.insert(node, origin);
        Ok(outcome)
    }

    pub(super) fn validate_delta(&self, sender: PeerId, delta: &Delta) -> Result<(), Rejection> {
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
            if let Some(problem) = wire_group_problem(name) {
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
            let meta_alone = op.change == 0 && op.meta.is_some();
            let leave_with_meta = op.change < 0 && op.meta.is_some();
            if (op.change == 0 && !meta_alone)
                || leave_with_meta
                || op.change.unsigned_abs() > u64::from(u32::MAX)
            {
                return Err(Rejection::BadChange);
            }
        }
        Ok(())
    }

    pub(super) fn apply_delta(&mut self, node: u32, origin: &mut OriginState, delta: &Delta) {
        for op in &delta.ops {
            let shared = &delta.groups[op.group as usize];
            let name = &**shared;
            let n = op.change.unsigned_abs() as u32;
            let meta = op.meta.as_ref().map(|m| self.remote_meta(name, m));
            match op.change {
                1.. => self.add_remote(node, origin, shared.into(), op.id, n, meta.flatten()),
                0 => {
                    // A value refused for its size clears what the member had: a stale
                    // value would pass for the origin's.
                    if !self.set_meta(node, name, op.id, meta.flatten()) {
                        self.stats.updates_unmatched += 1;
                    }
                }
                _ => self.remove_remote(node, origin, name, op.id, n),
            }
        }
        origin.version = Some(Version {
            incarnation: delta.incarnation,
            seq: delta.seq,
        });
        self.stats.deltas_applied += 1;
    }

    /// A peer's metadata value, or `None` (counted) when it is over `max_meta_bytes`. A name's
    /// claim over the cap keeps its time, with CBOR null for its value: the claim must rank
    /// the same on every node whatever their caps, or two nodes would each keep a holder.
    fn remote_meta(&mut self, group: &str, meta: &Bytes) -> Option<Meta> {
        let named = is_name_group(group);
        let overhead = if named { CLAIM_OVERHEAD } else { 0 };
        if meta.len() <= self.cfg.max_meta_bytes + overhead {
            return Some(Meta::from_bytes(meta.clone()));
        }
        self.stats.meta_refused += 1;
        tracing::warn!(
            group,
            bytes = meta.len(),
            "remote metadata over max_meta_bytes refused"
        );
        let claim = Claim::decode(meta).filter(|_| named)?;
        let kept = Claim {
            at_micros: claim.at_micros,
            meta: Bytes::from_static(CBOR_NULL),
        };
        Some(Meta::from_bytes(kept.encode()))
    }

    pub(super) fn add_remote(
        &mut self,
        node: u32,
        origin: &mut OriginState,
        name: NameRef<'_>,
        id: u64,
        n: u32,
        meta: Option<Meta>,
    ) {
        // A process holds at most u32::MAX slots of a group: a peer announcing more (only a
        // hostile one can) is refused the excess like a limit.
        let found = self.groups.lookup(name.as_str());
        let group = found.index.and_then(|i| self.groups.at(i));
        let held = group.map_or(0, |g| g.count(node, id));
        let room = self
            .room(node, origin.groups.len(), group, n)
            .min(u32::MAX - held);
        let name_str = name.as_str();
        if room < n {
            self.stats.slots_refused += u64::from(n - room);
            origin.refused += u64::from(n - room);
            tracing::warn!(
                group = name_str,
                origin = %origin.peer,
                refused = n - room,
                "remote join refused by a limit"
            );
        }
        if room == 0 && held > 0 && meta.is_some() {
            // The slot is refused, not the value: it is the process's, which this node holds.
            self.set_meta(node, name_str, id, meta);
            return;
        }
        if room > 0 {
            // `room` is 0 when no group index is left, so `add` finds one.
            match self.add(node, name, found, id, room, meta) {
                Some(Added {
                    node_fresh: true,
                    group,
                    ..
                }) => {
                    origin.groups.insert(group);
                }
                Some(_) => {}
                None => {
                    self.stats.slots_refused += u64::from(room);
                    origin.refused += u64::from(room);
                }
            }
        }
    }

    pub(super) fn remove_remote(
        &mut self,
        node: u32,
        origin: &mut OriginState,
        name: &str,
        id: u64,
        n: u32,
    ) {
        let removed = self.remove(node, name, id, n);
        if removed.count < n {
            self.stats.leaves_unmatched += u64::from(n - removed.count);
        }
        if origin.refused > 0 {
            origin.room_freed = true;
        }
        if removed.node_gone {
            origin.groups.remove(&removed.group);
        }
    }

    /// How many of `n` new slots of `name` the limits let this node hold for the origin at
    /// `node`, which has slots in `origin_groups` groups here. Each origin has budgets of its
    /// own, the same as the local processes': at most `max_groups` groups and
    /// `max_members_per_group` slots in one group. What one peer holds never takes room from
    /// another or from this node's own processes.
    pub(super) fn room(
        &self,
        node: u32,
        origin_groups: usize,
        group: Option<&GroupState>,
        n: u32,
    ) -> u32 {
        let max_members = self.cfg.max_members_per_group;
        let current = match group.and_then(|g| g.node(node)) {
            Some(slots) => slots.slots,
            None if origin_groups >= self.max_groups() => return 0,
            // Only a peer's groups can be new here; the indices are finite.
            None if group.is_none() && self.groups.len() >= MAX_GROUP_INDICES => return 0,
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

    pub(super) fn hold(
        &mut self,
        origin: &mut OriginState,
        delta: Delta,
        now: Duration,
        sync_now: bool,
    ) {
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
    pub(super) fn release_held(&mut self, node: u32, origin: &mut OriginState, after_sync: bool) {
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

    pub(super) fn want_sync(&mut self, origin: &mut OriginState, now: Duration) {
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
    pub(super) fn on_sync(
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
        // A state of the version this node has applied still applies while some of the
        // origin's slots were refused: it is how they come back once they fit.
        let stale = origin.alive
            && origin.version.is_some_and(|v| {
                v.incarnation == state.version.incarnation
                    && (state.version.seq < v.seq
                        || (state.version.seq == v.seq && origin.refused == 0))
            });
        let outcome = if stale {
            self.stats.syncs_stale += 1;
            SyncOutcome::Stale
        } else {
            // Counted again by the replacement: what still does not fit.
            origin.refused = 0;
            origin.room_freed = false;
            self.replace_origin_state(node, &mut origin, &state);
            origin.version = Some(state.version);
            origin.alive = true;
            origin.gap_since = None;
            self.stats.syncs_applied += 1;
            SyncOutcome::Applied
        };
        self.release_held(node, &mut origin, true);
        if origin.room_freed {
            // A stale answer older than the leave that made room, or a leave among the deltas
            // released after this state: ask again.
            self.want_sync(&mut origin, now);
        }
        if origin.gap_since.is_none() && !origin.held.is_empty() {
            origin.gap_since = Some(now);
            self.outputs.push_back(Output::Timer {
                at: now + self.cfg.reorder_window,
            });
        }
        self.origins.insert(node, origin);
        Ok(outcome)
    }

    pub(super) fn validate_sync(&self, sender: PeerId, state: &SyncState) -> Result<(), Rejection> {
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
            if let Some(problem) = wire_group_problem(&group.name) {
                return Err(Rejection::InvalidGroupName(problem));
            }
            if !names.insert(&group.name) {
                return Err(Rejection::DuplicateGroup(group.name.clone()));
            }
            ids.clear();
            for member in &group.members {
                if member.slots == 0 {
                    return Err(Rejection::ZeroSlots);
                }
                if !ids.insert(member.id) {
                    return Err(Rejection::DuplicateMember(member.id));
                }
            }
        }
        Ok(())
    }

    pub(super) fn replace_origin_state(
        &mut self,
        node: u32,
        origin: &mut OriginState,
        state: &SyncState,
    ) {
        let incoming: Set<&str> = state.groups.iter().map(|g| g.name.as_str()).collect();
        let dropped: Vec<u32> = origin
            .groups
            .iter()
            .copied()
            .filter(|&i| {
                self.groups
                    .at(i)
                    .is_some_and(|g| !incoming.contains(&*g.name))
            })
            .collect();
        for index in dropped {
            self.remove_node_from_group(node, index);
            origin.groups.remove(&index);
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
                m.extend(group.members.iter().map(|m| (m.id, m.slots)));
                m
            };
            for (id, have) in &current {
                let want = wanted.get(id).copied().unwrap_or(0);
                if want < *have {
                    self.remove_remote(node, origin, &group.name, *id, have - want);
                }
            }
            for member in &group.members {
                let have = current
                    .iter()
                    .find(|(i, _)| *i == member.id)
                    .map_or(0, |(_, c)| *c);
                let meta = member
                    .meta
                    .as_ref()
                    .and_then(|m| self.remote_meta(&group.name, m));
                // A member held before takes the origin's value (or its lack of one) first: a
                // join without a value would keep a stale one.
                if have > 0 {
                    self.set_meta(node, &group.name, member.id, meta.clone());
                }
                if member.slots > have {
                    self.add_remote(
                        node,
                        origin,
                        group.name.as_str().into(),
                        member.id,
                        member.slots - have,
                        meta,
                    );
                }
            }
        }
    }

    /// The request for `sender`'s state failed (no connection, timeout): another may be sent.
    pub(super) fn on_sync_failed(&mut self, sender: PeerId, now: Duration) {
        if let Some(node) = self.node_index.get(&sender).copied()
            && let Some(origin) = self.origins.get_mut(&node)
        {
            origin.sync_requested = None;
            // Still wanted (a gap, or a version that differs): asked for again after the
            // reorder window, until it comes or the origin is purged. A request fails when
            // its connection closes (a relayed one replaced by a direct one, say), not only
            // when the origin is gone.
            if origin.gap_since.is_some() {
                origin.gap_since = Some(now);
            }
            if origin.gap_since.is_some() || origin.needs_sync {
                self.outputs.push_back(Output::Timer {
                    at: now + self.cfg.reorder_window,
                });
            }
        }
    }

    /// A peer told its own version (Discover, anti-entropy): pull its state if this node's
    /// copy differs.
    pub(super) fn on_peer_version(&mut self, peer: PeerId, version: Version, now: Duration) {
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

    /// The origins some of whose slots this node does not hold because they did not fit their
    /// budgets, with how many slots each: those peers' members are missing from this view.
    /// Peers with the most refused first.
    pub(crate) fn refused_slots(&self) -> Vec<(PeerId, u64)> {
        let mut refused: Vec<(PeerId, u64)> = self
            .origins
            .values()
            .filter(|o| o.alive && o.refused > 0)
            .map(|o| (o.peer, o.refused))
            .collect();
        refused.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        refused
    }

    /// What this node applied of `peer`, if anything and if it is not purged.
    pub(crate) fn applied_version(&self, peer: &PeerId) -> Option<Version> {
        let node = self.node_index.get(peer)?;
        let origin = self.origins.get(node)?;
        origin.version.filter(|_| origin.alive)
    }

    /// `peer` is down: remove all its members (emitting the leaves) and apply none of its
    /// deltas until a sync shows it alive again.
    pub(super) fn on_peer_down(&mut self, peer: PeerId) {
        if peer == self.local_peer() {
            return;
        }
        // A peer taken for down before any of its input came is marked purged all the same:
        // a delta of it that arrives late (relayed by a slow peer) must wait for a sync from
        // it, not apply to an empty state as a first delta would.
        let node = self.intern(peer);
        let Some(mut origin) = self.origins.remove(&node) else {
            let mut origin = self.take_origin(node);
            origin.alive = false;
            self.origins.insert(node, origin);
            return;
        };
        for index in origin.groups.drain() {
            self.remove_node_from_group(node, index);
        }
        origin.alive = false;
        origin.refused = 0;
        origin.room_freed = false;
        origin.held.clear();
        origin.gap_since = None;
        origin.needs_sync = false;
        origin.sync_requested = None;
        self.stats.purges += 1;
        self.origins.insert(node, origin);
    }

    /// Time passes: pull syncs for gaps that stayed open, retry requests that timed out.
    pub(super) fn on_tick(&mut self, now: Duration) {
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
}
