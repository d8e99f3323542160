//! A scope on a node: the core behind a short mutex, and the subscribers it feeds.
//!
//! Every mutation, the monitor snapshots and the event fan-out happen under the scope's
//! mutex, so a subscription's snapshot and its events never miss or repeat a change. The lock
//! is held for the operation only: member lists are cached snapshots (a read of an unchanged
//! group is a hash lookup and a pointer copy), and events are queued without waiting, so a
//! slow subscriber never holds it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hashbrown::HashMap;

use crate::app::mailbox::{Message, ProcessShared, ProcessTable, encode_payload};
use crate::app::stats::{ScopeCounters, ScopeStats};
use crate::app::subscription::{Subscriber, Subscription, Wakes};
use crate::net::NetShared;
use crate::net::host::ScopeHost;
use crate::net::view::{ScopeNetCounters, ScopeNetView};
use crate::proto::groups::GroupName;
use crate::proto::input::Change;
use crate::proto::messages::{SyncState, Version};
use crate::proto::{CoreConfig, Input, Outcome, Output, Refusal, ScopeCore};
use crate::vocab::error::{Error, Result};
use crate::vocab::meta::{MemberMeta, Meta};
use crate::vocab::names::{NAME_LOST_TOPIC, NameLost, Registration};
use crate::{Event, EventKind, Members, Pid, ScopeConfig};
use libp2p::PeerId;

/// The time handed to the core with local operations, which do not read it
/// ([`Input`]'s docs): reading the clock would cost a join or a leave about a tenth of its
/// time.
const LOCAL_TIME: Duration = Duration::ZERO;

pub(crate) struct Scope {
    pub(crate) id: Arc<str>,
    pub(crate) config: ScopeConfig,
    state: Mutex<ScopeState>,
    /// The start of the core's clock.
    epoch: Instant,
    /// Wakes the network behaviour when a local change is queued for the peers.
    net: Arc<NetShared>,
    pub(crate) counters: ScopeCounters,
    /// Written by the network behaviour at each of its turns.
    pub(crate) net_view: Mutex<ScopeNetView>,
    /// The node's processes, to tell one that lost a name.
    processes: Arc<ProcessTable>,
}

struct ScopeState {
    core: ScopeCore,
    /// Outputs of the core for the network layer, taken at its next call.
    for_net: Vec<Output>,
    subscribers: Subscribers,
    /// The action queue is above `action_queue_size` and that was logged.
    queue_warned: bool,
    /// Names local processes lost, `(name, process, winner)`, to tell them once the lock is
    /// released.
    names_lost: Vec<(String, u64, Pid)>,
}

/// Subscribers of every group and of one group. A subscription lives until it is closed or
/// dropped, or its process exits: the end of a dropped one is found when an event is offered
/// to it, or by the sweep that [`add`](Self::add) runs once as many subscribers were added as
/// were there at the previous sweep, so dropped subscriptions of quiet groups cannot pile up.
#[derive(Default)]
struct Subscribers {
    all: Vec<Subscriber>,
    by_group: HashMap<GroupName, Vec<Subscriber>>,
    /// Added since the last sweep, and how many were there after it.
    added: usize,
    after_sweep: usize,
    /// Kept between publications for its buffer.
    wakes: Wakes,
}

/// Subscribers added before the first sweep.
const FIRST_SWEEP: usize = 64;

impl Subscribers {
    /// Adds a subscriber of `group`, or of every group.
    fn add(&mut self, group: Option<&str>, subscriber: Subscriber) {
        self.added += 1;
        if self.added >= self.after_sweep.max(FIRST_SWEEP) {
            self.remove_where(Subscriber::is_closed);
            self.added = 0;
            self.after_sweep = self.all.len() + self.by_group.values().map(Vec::len).sum::<usize>();
        }
        match group {
            Some(group) => self
                .by_group
                .entry(group.into())
                .or_default()
                .push(subscriber),
            None => self.all.push(subscriber),
        }
    }

    fn is_empty(&self) -> bool {
        self.all.is_empty() && self.by_group.is_empty()
    }

    fn wants(&self, group: &str) -> bool {
        !self.all.is_empty() || self.by_group.contains_key(group)
    }

    /// Queues `events` for the subscribers that want them, then wakes each subscriber that
    /// got any, once.
    fn publish(&mut self, events: Vec<Event>, dropped: &AtomicU64) {
        let wakes = &mut self.wakes;
        for event in events {
            self.all.retain(|s| s.offer(&event, dropped, wakes));
            if let Some(subs) = self.by_group.get_mut(&*event.group) {
                subs.retain(|s| s.offer(&event, dropped, wakes));
                if subs.is_empty() {
                    self.by_group.remove(&*event.group);
                }
            }
        }
        wakes.wake();
    }

    fn remove_where(&mut self, gone: impl Fn(&Subscriber) -> bool) {
        self.all.retain(|s| !gone(s));
        self.by_group.retain(|_, subs| {
            subs.retain(|s| !gone(s));
            !subs.is_empty()
        });
    }
}

/// A run of changes of one kind to one group with one metadata value: one event.
struct Run {
    kind: EventKind,
    group: GroupName,
    meta: Option<Meta>,
    /// The first change's process and slots: most runs are that change alone, and their event
    /// takes one allocation for its pids.
    first: Pid,
    first_count: u32,
    /// The pids of the changes after the first, once per slot.
    more: Vec<Pid>,
}

impl Run {
    fn new(change: Change) -> Self {
        Run {
            kind: change.kind,
            group: change.group,
            meta: change.meta,
            first: change.pid,
            first_count: change.count,
            more: Vec::new(),
        }
    }

    fn continues(&self, change: &Change) -> bool {
        self.kind == change.kind
            && Arc::ptr_eq(&self.group, &change.group)
            && self.meta == change.meta
    }

    fn extend(&mut self, change: &Change) {
        self.more
            .extend(std::iter::repeat_n(change.pid, change.count as usize));
    }

    fn into_event(self) -> Event {
        let first = std::iter::repeat_n(self.first, self.first_count as usize);
        let pids = if self.more.is_empty() {
            first.collect()
        } else {
            first.chain(self.more).collect()
        };
        Event {
            kind: self.kind,
            group: self.group,
            pids,
            meta: self.meta,
        }
    }
}

impl ScopeState {
    /// Takes the core's outputs: membership changes become events for the subscribers that
    /// want them (consecutive changes of one kind to one group become one event); the others
    /// are for the network layer and wait in `for_net` until it takes them.
    fn flush(&mut self, dropped: &AtomicU64) {
        let mut run: Option<Run> = None;
        // The events of one input go out together after it: a subscriber's task wakes once
        // for all of them rather than once per event while the rest are still being made.
        let mut events = Vec::new();
        let subscribers = &self.subscribers;
        while let Some(output) = self.core.poll_output() {
            let change = match output {
                Output::Changed(change) => change,
                Output::NameLost {
                    name,
                    process,
                    winner,
                } => {
                    self.names_lost.push((name, process, winner));
                    continue;
                }
                output => {
                    self.for_net.push(output);
                    continue;
                }
            };
            if let Some(run) = &mut run
                && run.continues(&change)
            {
                run.extend(&change);
                continue;
            }
            if let Some(run) = run.take() {
                events.push(run.into_event());
            }
            if subscribers.wants(&change.group) {
                run = Some(Run::new(change));
            }
        }
        if let Some(run) = run {
            events.push(run.into_event());
        }
        self.subscribers.publish(events, dropped);
        let record = !self.subscribers.is_empty();
        self.core.set_record_changes(record);
    }
}

impl Scope {
    pub(crate) fn new(
        id: Arc<str>,
        config: ScopeConfig,
        local: libp2p::PeerId,
        incarnation: u64,
        epoch: Instant,
        net: Arc<NetShared>,
        processes: Arc<ProcessTable>,
    ) -> Self {
        let mut core = ScopeCore::new(
            local,
            incarnation,
            CoreConfig::from_scope(&config, rand::random()),
        );
        core.set_record_changes(false);
        Self {
            id,
            config,
            state: Mutex::new(ScopeState {
                core,
                for_net: Vec::new(),
                subscribers: Subscribers::default(),
                queue_warned: false,
                names_lost: Vec::new(),
            }),
            processes,
            epoch,
            net,
            counters: ScopeCounters::default(),
            net_view: Mutex::new(ScopeNetView::default()),
        }
    }

    /// The core's clock: time since the node started (the network layer reads the same).
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The queue of changes for the peers: past `action_queue_size` a warning, past
    /// `action_queue_max_size` joins and leaves are `Unavailable` at once. Exits are never
    /// refused (a dead process must not stay a member).
    fn backpressure(&self, state: &mut ScopeState) -> Result<()> {
        let queued = state.core.queued_deltas();
        if queued >= self.config.action_queue_max_size() {
            return Err(Error::Unavailable {
                reason: format!(
                    "scope {:?}: {queued} deltas wait for the network (action_queue_max_size)",
                    self.id
                ),
            });
        }
        let over = queued >= self.config.action_queue_size();
        if over && !state.queue_warned {
            tracing::warn!(scope = %self.id, queued, "action queue above action_queue_size");
        }
        state.queue_warned = over;
        Ok(())
    }

    /// Unlocks the scope, then tells the network task that a change waits for the peers.
    /// In that order: woken first, the network thread would find the lock held and sleep on
    /// it a second time (a futex wait and wake in the profile of the bench's join latency).
    fn unlock_and_wake(&self, state: MutexGuard<'_, ScopeState>) {
        let publishing = state.core.is_publishing();
        drop(state);
        if publishing {
            self.net.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, ScopeState> {
        // A panic while holding the lock is a bug of ours; the state itself stays consistent
        // because every mutation completes before anything that could panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process is alive and, for subscriptions, the instance is not released. Checked
    /// under the lock: an exit marks the process dead before it takes the lock to remove the
    /// process's slots and subscriptions, so a join or a subscription racing with it either
    /// lands first (and is removed) or fails. A release only sets its flag: a subscription
    /// made while it happens lasts like any other.
    fn usable(&self, process: &ProcessShared, released: Option<&AtomicBool>) -> Result<()> {
        if process.is_alive() && !released.is_some_and(|r| r.load(Ordering::Acquire)) {
            Ok(())
        } else {
            Err(Error::Released {
                scope: self.id.to_string(),
            })
        }
    }

    /// All-or-nothing join. Liveness is checked under the lock, so a join racing with the
    /// process's exit either lands before the exit (which removes it) or fails.
    pub(crate) fn join(&self, process: &ProcessShared, names: &[&str]) -> Result<()> {
        let mut state = self.lock();
        self.usable(process, None)?;
        self.backpressure(&mut state)?;
        let join = Input::Join {
            process: process.pid.id(),
            groups: names,
        };
        self.apply_local(state, join).map(|_| ())
    }

    /// Hands the core a local operation: a refusal becomes the caller's error; otherwise
    /// the events go to the subscribers and the network layer is woken.
    fn apply_local(
        &self,
        mut state: MutexGuard<'_, ScopeState>,
        input: Input<'_>,
    ) -> Result<Outcome> {
        let outcome = state
            .core
            .handle(input, LOCAL_TIME)
            .map_err(|refusal| self.refusal_error(refusal))?;
        state.flush(&self.counters.events_dropped);
        self.unlock_and_wake(state);
        Ok(outcome)
    }

    fn refusal_error(&self, refusal: Refusal) -> Error {
        match refusal {
            Refusal::Limit(e) => Error::LimitReached {
                limit: e.limit,
                scope: self.id.to_string(),
                group: e.group,
                max: e.max,
            },
            // Only a peer's input is rejected; said here rather than assumed.
            Refusal::Rejected(rejection) => Error::Unavailable {
                reason: format!("scope {:?} refused a local operation: {rejection}", self.id),
            },
            Refusal::Taken { name, holder } => Error::NameTaken {
                scope: self.id.to_string(),
                name,
                holder,
            },
        }
    }

    /// Joins one slot of `group` with `meta` as the process's metadata there.
    pub(crate) fn join_with(&self, process: &ProcessShared, group: &str, meta: Meta) -> Result<()> {
        let mut state = self.lock();
        self.usable(process, None)?;
        self.backpressure(&mut state)?;
        let input = Input::JoinWith {
            process: process.pid.id(),
            group,
            meta,
        };
        self.apply_local(state, input).map(|_| ())
    }

    /// Replaces the process's metadata in `group`.
    pub(crate) fn update(&self, process: &ProcessShared, group: &str, meta: Meta) -> Result<()> {
        let mut state = self.lock();
        self.usable(process, None)?;
        self.backpressure(&mut state)?;
        let input = Input::Update {
            process: process.pid.id(),
            group,
            meta,
        };
        match self.apply_local(state, input)? {
            Outcome::NotMember => Err(Error::NotMember {
                scope: self.id.to_string(),
                groups: vec![group.to_owned()],
            }),
            _ => Ok(()),
        }
    }

    /// Registers `name` for the process (see `proto::registry`).
    pub(crate) fn register(&self, process: &ProcessShared, name: &str, meta: Meta) -> Result<()> {
        let mut state = self.lock();
        self.usable(process, None)?;
        self.backpressure(&mut state)?;
        let at_micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros().try_into().unwrap_or(u64::MAX));
        let input = Input::Register {
            process: process.pid.id(),
            name,
            at_micros,
            meta,
        };
        self.apply_local(state, input).map(|_| ())
    }

    pub(crate) fn unregister(&self, process: &ProcessShared, name: &str) -> Result<()> {
        let mut state = self.lock();
        self.usable(process, None)?;
        self.backpressure(&mut state)?;
        let input = Input::Unregister {
            process: process.pid.id(),
            name,
        };
        match self.apply_local(state, input)? {
            Outcome::NotMember => Err(Error::NotRegistered {
                scope: self.id.to_string(),
                name: name.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    pub(crate) fn whereis(&self, name: &str) -> Option<Registration> {
        let holder = self.lock().core.whereis(name)?;
        Some(Registration {
            pid: holder.pid,
            meta: holder.meta,
            registered_at: UNIX_EPOCH + Duration::from_micros(holder.at_micros),
        })
    }

    /// Tells each local process that lost a name: a message in its inbox, from the winner.
    fn tell_names_lost(&self, lost: Vec<(String, u64, Pid)>) {
        if lost.is_empty() {
            return;
        }
        let processes = self.processes.read().unwrap_or_else(|e| e.into_inner());
        for (name, process, winner) in lost {
            tracing::info!(scope = %self.id, name, %winner, process, "name lost to an earlier claim");
            let Some(p) = processes.get(&process) else {
                continue;
            };
            let payload = NameLost {
                scope: self.id.to_string(),
                name,
                winner,
            };
            match encode_payload(&payload) {
                Ok(bytes) => {
                    // Not listening to the topic drops it, counted like any message.
                    p.deliver(
                        Message::new(winner, NAME_LOST_TOPIC, bytes),
                        &self.net.stats.messages_dropped,
                    );
                }
                Err(e) => tracing::warn!(%e, "a NameLost does not encode"),
            }
        }
    }

    pub(crate) fn member_count(&self, group: &str) -> usize {
        self.lock().core.member_count(group)
    }

    pub(crate) fn local_member_count(&self, group: &str) -> usize {
        self.lock().core.local_member_count(group)
    }

    pub(crate) fn group_count(&self) -> usize {
        self.lock().core.sizes().groups
    }

    pub(crate) fn members_with_meta(&self, group: &str) -> Vec<MemberMeta> {
        self.lock().core.members_with_meta(group)
    }

    pub(crate) fn leave(&self, process: &ProcessShared, names: &[&str]) -> Result<()> {
        let mut state = self.lock();
        self.usable(process, None)?;
        self.backpressure(&mut state)?;
        let leave = Input::Leave {
            process: process.pid.id(),
            groups: names,
        };
        if let Ok(Outcome::Left { slots: 0 }) = state.core.handle(leave, LOCAL_TIME) {
            return Err(Error::NotMember {
                scope: self.id.to_string(),
                groups: names.iter().map(|n| n.to_string()).collect(),
            });
        }
        state.flush(&self.counters.events_dropped);
        self.unlock_and_wake(state);
        Ok(())
    }

    /// Removes every slot of the process and closes its subscriptions.
    pub(crate) fn exit(&self, id: u64) {
        let mut state = self.lock();
        // An exit is never refused.
        state
            .core
            .handle(Input::Exit { process: id }, LOCAL_TIME)
            .ok();
        state.flush(&self.counters.events_dropped);
        state.subscribers.remove_where(|s| s.process == id);
        let record = !state.subscribers.is_empty();
        state.core.set_record_changes(record);
        self.unlock_and_wake(state);
    }

    /// Local changes waiting for the network.
    pub(crate) fn queued_deltas(&self) -> usize {
        self.lock().core.queued_deltas()
    }

    /// Peers some of whose slots this node refused by their budgets, and how many each.
    pub(crate) fn refused_slots(&self) -> Vec<(libp2p::PeerId, u64)> {
        self.lock().core.refused_slots()
    }

    /// The scope's figures: sizes and the core's counters read under one lock.
    pub(crate) fn stats(&self) -> ScopeStats {
        let mut stats = ScopeStats {
            scope: self.id.to_string(),
            ..ScopeStats::default()
        };
        {
            let state = self.lock();
            let sizes = state.core.sizes();
            let core = state.core.stats();
            stats.groups = sizes.groups;
            stats.members = sizes.slots;
            stats.local_members = sizes.local_slots;
            stats.deltas_queued = state.core.queued_deltas();
            stats.deltas_applied = core.deltas_applied;
            stats.deltas_duplicate = core.deltas_duplicate;
            stats.deltas_rejected = core.deltas_rejected;
            stats.syncs_applied = core.syncs_applied;
            stats.syncs_rejected = core.syncs_rejected;
            stats.purges = core.purges;
            stats.slots_refused = core.slots_refused;
            stats.leaves_unmatched = core.leaves_unmatched;
            stats.updates_unmatched = core.updates_unmatched;
            stats.meta_refused = core.meta_refused;
            stats.names_lost = core.names_lost;
        }
        self.counters.fill(&mut stats);
        stats.deltas_rejected += self.counters.net.deltas_rejected.load(Ordering::Relaxed);
        let view = self.net_view.lock().unwrap_or_else(|e| e.into_inner());
        stats.peers = view.peers;
        stats.peers_relayed = view.relayed;
        stats.peers_unreachable = view.unreachable.len();
        stats.breakers = view.breakers;
        stats
    }

    pub(crate) fn members(&self, group: &str) -> Members {
        self.lock().core.members(group)
    }

    /// Every slot and the local slots of `group`, from one state.
    pub(crate) fn targets(&self, group: &str) -> (Members, Members) {
        let mut state = self.lock();
        (state.core.members(group), state.core.local_members(group))
    }

    pub(crate) fn local_members(&self, group: &str) -> Members {
        self.lock().core.local_members(group)
    }

    pub(crate) fn which_groups(&self) -> Arc<[GroupName]> {
        self.lock().core.which_groups()
    }

    pub(crate) fn which_local_groups(&self) -> Arc<[GroupName]> {
        self.lock().core.which_local_groups()
    }

    pub(crate) fn monitor(
        &self,
        process: &ProcessShared,
        released: &AtomicBool,
        group: &str,
    ) -> Result<(Subscription, Members)> {
        let mut state = self.lock();
        self.usable(process, Some(released))?;
        let (subscription, subscriber) =
            Subscription::new(self.config.monitor_buffer(), process.pid.id());
        let members = state.core.members(group);
        state.subscribers.add(Some(group), subscriber);
        state.core.set_record_changes(true);
        Ok((subscription, members))
    }

    pub(crate) fn events(
        &self,
        process: &ProcessShared,
        released: &AtomicBool,
    ) -> Result<(Subscription, BTreeMap<Arc<str>, Members>)> {
        let mut state = self.lock();
        self.usable(process, Some(released))?;
        let (subscription, subscriber) =
            Subscription::new(self.config.monitor_buffer(), process.pid.id());
        let snapshot = state.core.snapshot().into_iter().collect();
        state.subscribers.add(None, subscriber);
        state.core.set_record_changes(true);
        Ok((subscription, snapshot))
    }
}

impl ScopeHost for Scope {
    fn id(&self) -> &Arc<str> {
        &self.id
    }

    fn config(&self) -> &ScopeConfig {
        &self.config
    }

    fn handle(&self, input: Input<'_>, out: &mut Vec<Output>) -> Result<Outcome, Refusal> {
        let mut state = self.lock();
        let result = state.core.handle(input, self.now());
        state.flush(&self.counters.events_dropped);
        out.append(&mut state.for_net);
        let lost = std::mem::take(&mut state.names_lost);
        drop(state);
        self.tell_names_lost(lost);
        result
    }

    fn now(&self) -> Duration {
        Scope::now(self)
    }

    fn version(&self) -> Version {
        self.lock().core.version()
    }

    fn sync_state(&self) -> SyncState {
        let mut state = self.lock();
        let sync = state.core.sync_state();
        // Cutting the queued changes into deltas may have made outputs.
        state.flush(&self.counters.events_dropped);
        sync
    }

    fn live_origins(&self) -> Vec<PeerId> {
        self.lock().core.live_origins().collect()
    }

    fn counters(&self) -> &ScopeNetCounters {
        &self.counters.net
    }

    fn set_view(&self, view: ScopeNetView) {
        *self.net_view.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::handle::NetShared;

    fn scope() -> Scope {
        Scope::new(
            "test:scope".into(),
            ScopeConfig::default(),
            PeerId::random(),
            1,
            Instant::now(),
            Arc::new(NetShared::default()),
            Arc::default(),
        )
    }

    fn held(scope: &Scope) -> usize {
        let state = scope.lock();
        state.subscribers.all.len()
            + state
                .subscribers
                .by_group
                .values()
                .map(Vec::len)
                .sum::<usize>()
    }

    #[test]
    fn dropped_subscriptions_of_quiet_groups_do_not_pile_up() {
        let scope = scope();
        let process = ProcessShared::new(Pid::new(PeerId::random(), 1));
        let released = AtomicBool::new(false);
        let (_kept, _) = scope.monitor(&process, &released, "kept").unwrap();
        for i in 0..10_000 {
            let (sub, _) = scope
                .monitor(&process, &released, &format!("g{i}"))
                .unwrap();
            drop(sub);
            let (sub, _) = scope.events(&process, &released).unwrap();
            drop(sub);
        }
        let held = held(&scope);
        assert!(
            held <= 2 * FIRST_SWEEP + 1,
            "{held} subscribers held for 1 live one"
        );
    }
}
