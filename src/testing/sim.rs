//! A seeded simulator: many nodes of the core over a simulated network with loss,
//! duplication, delay and reordering, partitions, kills and restarts.
//!
//! The property, for every seed: once the network heals and goes quiet, every live node's
//! view equals the union of the live origins' own states (the simulator's ground truth, not
//! the cores' word for it), metadata included, and every subscriber's snapshot plus its
//! events equals its node's final view, metadata included. Processes also register names
//! (often several at one instant, and on both sides of partitions): every live node then
//! finds the same holder of each name, and no two live processes claim one.
//!
//! Every fourth node (`is_tight`) runs with `max_members_per_group` at `TIGHT_MEMBERS`: its
//! own joins past it are refused, and each origin's slots past it in a group are refused on
//! it. There the property is the truth restricted by the budgets: an origin's group that fits
//! is held exactly; one that does not holds exactly `TIGHT_MEMBERS` of the origin's slots, none
//! a process does not have; and the refused slots the node reports per origin are exactly the
//! excess, so that nothing refused is lost once it fits.
//!
//! `PROCGROUPS_SIM_SEEDS` (default 500), `PROCGROUPS_SIM_NODES` (default 20) and
//! `PROCGROUPS_SIM_SEED` (one seed, to replay a failure) tune the run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::proto::messages::{Delta, SyncState, Version};
use crate::proto::registry::{Claim, is_name_group, name_group};
use crate::proto::state::{CoreConfig, ScopeCore};
use crate::testing::drive::Drive;
use crate::vocab::meta::Meta;
use crate::{EventKind, Pid};

mod views;
use views::{
    MetaView, TIGHT_MEMBERS, View, is_tight, meta_diff, restricted, user_groups, view_diff,
};

const GROUPS: [&str; 6] = ["g0", "g1", "g2", "g3", "g4", "a-much-longer-group-name"];
/// Few names, so that claims meet often.
const NAMES: [&str; 3] = ["n0", "n1", "n2"];

#[derive(Debug, Clone)]
struct Faults {
    loss: f64,
    duplicate: f64,
    max_delay: u64,
    /// Per tick: cut the network in two / heal it.
    partition: f64,
    heal: f64,
    /// Per tick: kill a node / restart a dead one.
    kill: f64,
    restart: f64,
    /// Late delivery of a delta, as if relayed by a slow peer long after it was sent.
    straggler: f64,
}

#[derive(Debug, Clone)]
enum Msg {
    /// Shared by every recipient; cloned only when applied.
    Delta(Arc<Delta>),
    SyncRequest,
    SyncResponse(SyncState),
    Discover(Version),
    DiscoverReply(Version),
}

#[derive(Debug)]
struct InFlight {
    from: usize,
    to: usize,
    /// The incarnations of both ends at sending: a connection does not outlive either.
    from_life: u32,
    to_life: u32,
    msg: Msg,
}

struct Subscriber {
    view: View,
    meta: MetaView,
}

struct SimNode {
    peer: PeerId,
    core: ScopeCore,
    alive: bool,
    life: u32,
    next_id: u64,
    /// Ground truth: this incarnation's processes and their slots (a registered name as the
    /// one slot of its group).
    truth: BTreeMap<u64, BTreeMap<String, u32>>,
    /// Ground truth: the metadata of this incarnation's processes, by (process, group).
    truth_meta: BTreeMap<(u64, String), Meta>,
    subscriber: Option<Subscriber>,
    /// Peers this node sees as unreachable, since when, and whether it purged them.
    unreachable: BTreeMap<usize, (u64, bool)>,
    ae_cursor: usize,
}

struct Sim {
    rng: StdRng,
    now: u64,
    nodes: Vec<SimNode>,
    /// `cut[a * n + b]`: the link between a and b is down.
    cut: Vec<bool>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    flights: BTreeMap<u64, InFlight>,
    order: u64,
    faults: Faults,
    grace: u64,
    anti_entropy: u64,
    seed: u64,
}

fn core_config(seed: u64, node: usize) -> CoreConfig {
    CoreConfig {
        max_groups: 0,
        max_members_per_group: if is_tight(node) {
            TIGHT_MEMBERS as usize
        } else {
            0
        },
        reorder_window: Duration::from_millis(20),
        reorder_capacity: 8,
        sync_timeout: Duration::from_millis(60),
        // Small, so that bursts are cut into several deltas.
        max_delta_bytes: 400,
        hash_seed: seed,
        max_meta_bytes: 1024,
    }
}

/// Whether one more slot of each of `names` keeps node `i`'s own slots within its budget.
fn fits_own_budget(node: &SimNode, i: usize, names: &[&str]) -> bool {
    if !is_tight(i) {
        return true;
    }
    names.iter().all(|name| {
        let held: u32 = node.truth.values().filter_map(|g| g.get(*name)).sum();
        let adding = names.iter().filter(|n| *n == name).count() as u32;
        held + adding <= TIGHT_MEMBERS
    })
}

impl Sim {
    fn new(seed: u64, n: usize, faults: Faults) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = (0..n)
            .map(|i| {
                let peer = PeerId::from_public_key(
                    &libp2p::identity::Keypair::ed25519_from_bytes([i as u8 + 1; 32])
                        .expect("32 bytes")
                        .public(),
                );
                let mut core = ScopeCore::new(peer, rng.r#gen(), core_config(seed, i));
                core.share();
                SimNode {
                    peer,
                    core,
                    alive: true,
                    life: 0,
                    next_id: 1,
                    truth: BTreeMap::new(),
                    truth_meta: BTreeMap::new(),
                    subscriber: None,
                    unreachable: BTreeMap::new(),
                    ae_cursor: i,
                }
            })
            .collect();
        Self {
            rng,
            now: 0,
            cut: vec![false; n * n],
            nodes,
            queue: BinaryHeap::new(),
            flights: BTreeMap::new(),
            order: 0,
            faults,
            grace: 40,
            anti_entropy: 5,
            seed,
        }
    }

    fn now(&self) -> Duration {
        Duration::from_millis(self.now)
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        a != b && self.nodes[a].alive && self.nodes[b].alive && !self.cut[a * self.nodes.len() + b]
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if !self.reachable(from, to) || self.rng.gen_bool(self.faults.loss) {
            return;
        }
        let copies = if self.rng.gen_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        let is_delta = matches!(msg, Msg::Delta(_));
        for _ in 0..copies {
            let mut delay = 1 + self.rng.gen_range(0..=self.faults.max_delay);
            if is_delta && self.rng.gen_bool(self.faults.straggler) {
                delay += self.rng.gen_range(50..400);
            }
            let m = msg.clone();
            self.order += 1;
            self.queue.push(Reverse((self.now + delay, self.order)));
            self.flights.insert(
                self.order,
                InFlight {
                    from,
                    to,
                    from_life: self.nodes[from].life,
                    to_life: self.nodes[to].life,
                    msg: m,
                },
            );
        }
    }

    // ------------------------------------------------------------------ workload

    fn workload(&mut self) {
        let i = self.rng.gen_range(0..self.nodes.len());
        if !self.nodes[i].alive {
            return;
        }
        let node = &mut self.nodes[i];
        let procs: Vec<u64> = node.truth.keys().copied().collect();
        let now = self.now;
        match self.rng.gen_range(0..14) {
            0..=1 => {
                let id = node.next_id;
                node.next_id += 1;
                node.truth.insert(id, BTreeMap::new());
            }
            2..=5 if !procs.is_empty() => {
                let id = *procs.choose(&mut self.rng).expect("non-empty");
                let k = self.rng.gen_range(1..=3);
                let names: Vec<&str> = (0..k)
                    .map(|_| *GROUPS.choose(&mut self.rng).expect("non-empty"))
                    .collect();
                let fits = fits_own_budget(node, i, &names);
                let joined = node.core.join(id, &names);
                assert_eq!(joined.is_ok(), fits, "seed {}: join {names:?}", self.seed);
                if joined.is_ok() {
                    let slots = node.truth.get_mut(&id).expect("live process");
                    for name in names {
                        *slots.entry(name.to_owned()).or_insert(0) += 1;
                    }
                }
            }
            6..=7 if !procs.is_empty() => {
                let id = *procs.choose(&mut self.rng).expect("non-empty");
                let names: Vec<&str> = (0..self.rng.gen_range(1..=2))
                    .map(|_| *GROUPS.choose(&mut self.rng).expect("non-empty"))
                    .collect();
                let left = node.core.leave(id, &names);
                let slots = node.truth.get_mut(&id).expect("live process");
                let mut expected = 0;
                for name in names {
                    if let Some(c) = slots.get_mut(name) {
                        *c -= 1;
                        expected += 1;
                        if *c == 0 {
                            slots.remove(name);
                            node.truth_meta.remove(&(id, name.to_owned()));
                        }
                    }
                }
                assert_eq!(left, expected, "seed {}: leave count", self.seed);
            }
            8 if !procs.is_empty() => {
                let id = *procs.choose(&mut self.rng).expect("non-empty");
                node.core.exit(id);
                node.truth.remove(&id);
                node.truth_meta.retain(|(p, _), _| *p != id);
            }
            10 if !procs.is_empty() => {
                let id = *procs.choose(&mut self.rng).expect("non-empty");
                let group = *GROUPS.choose(&mut self.rng).expect("non-empty");
                let meta = Meta::encode(&self.rng.gen_range(0..4u8)).expect("encodes");
                let fits = fits_own_budget(node, i, &[group]);
                let joined = node.core.join_with(id, group, meta.clone());
                assert_eq!(
                    joined.is_ok(),
                    fits,
                    "seed {}: join_with {group}",
                    self.seed
                );
                if joined.is_ok() {
                    let slots = node.truth.get_mut(&id).expect("live process");
                    *slots.entry(group.to_owned()).or_insert(0) += 1;
                    node.truth_meta.insert((id, group.to_owned()), meta);
                }
            }
            11 if !procs.is_empty() => {
                let id = *procs.choose(&mut self.rng).expect("non-empty");
                let group = *GROUPS.choose(&mut self.rng).expect("non-empty");
                let meta = Meta::encode(&self.rng.gen_range(0..4u8)).expect("encodes");
                let member = node.truth[&id].contains_key(group);
                assert_eq!(
                    node.core.update(id, group, meta.clone()),
                    member,
                    "seed {}: update",
                    self.seed
                );
                if member {
                    node.truth_meta.insert((id, group.to_owned()), meta);
                }
            }
            12 if !procs.is_empty() => {
                let id = *procs.choose(&mut self.rng).expect("non-empty");
                let name = *NAMES.choose(&mut self.rng).expect("non-empty");
                let meta = Meta::encode(&id).expect("encodes");
                // The clock in milliseconds: claims made in one step tie, and the Pid decides.
                let group = name_group(name);
                let held = node.truth[&id].contains_key(&group);
                let at_micros = match node.truth_meta.get(&(id, group.clone())) {
                    Some(claim) if held => {
                        Claim::decode(claim.as_bytes()).expect("a claim").at_micros
                    }
                    _ => now * 1000,
                };
                if node
                    .core
                    .register(id, name, now * 1000, meta.clone())
                    .is_ok()
                {
                    let claim = Claim {
                        at_micros,
                        meta: meta.as_bytes().clone(),
                    };
                    node.truth
                        .get_mut(&id)
                        .expect("live process")
                        .insert(group.clone(), 1);
                    node.truth_meta
                        .insert((id, group), Meta::from_bytes(claim.encode()));
                }
            }
            13 if !procs.is_empty() => {
                let id = *procs.choose(&mut self.rng).expect("non-empty");
                let name = *NAMES.choose(&mut self.rng).expect("non-empty");
                let group = name_group(name);
                let held = node.truth[&id].contains_key(&group);
                assert_eq!(
                    node.core.leave(id, &[&group]) == 1,
                    held,
                    "seed {}: unregister",
                    self.seed
                );
                node.truth
                    .get_mut(&id)
                    .expect("live process")
                    .remove(&group);
                node.truth_meta.remove(&(id, group));
            }
            _ => {}
        }
    }

    fn faults(&mut self) {
        let n = self.nodes.len();
        if self.rng.gen_bool(self.faults.partition) {
            let side: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.5)).collect();
            for a in 0..n {
                for b in 0..n {
                    if side[a] != side[b] {
                        self.cut[a * n + b] = true;
                    }
                }
            }
        }
        if self.rng.gen_bool(self.faults.heal) {
            self.cut.fill(false);
        }
        if self.rng.gen_bool(self.faults.kill) {
            let i = self.rng.gen_range(0..n);
            if self.nodes[i].alive && self.nodes.iter().filter(|n| n.alive).count() > 2 {
                let node = &mut self.nodes[i];
                node.alive = false;
                node.truth.clear();
                node.truth_meta.clear();
                node.subscriber = None;
            }
        }
        if self.rng.gen_bool(self.faults.restart) {
            let i = self.rng.gen_range(0..n);
            if !self.nodes[i].alive {
                let incarnation = self.rng.r#gen();
                let node = &mut self.nodes[i];
                node.alive = true;
                node.life += 1;
                node.core = ScopeCore::new(node.peer, incarnation, core_config(self.seed, i));
                node.core.share();
                node.unreachable.clear();
            }
        }
    }

    // ------------------------------------------------------------------ the network

    fn step(&mut self, active: bool) {
        self.now += 1;
        let n = self.nodes.len();
        if active {
            for _ in 0..2 {
                self.workload();
            }
            self.faults();
            for i in 0..n {
                if self.nodes[i].alive
                    && self.nodes[i].subscriber.is_none()
                    && self.rng.gen_bool(0.02)
                {
                    // Subscribe: snapshot now, events from now on.
                    let view = user_groups(self.nodes[i].core.view());
                    let meta = user_groups(self.nodes[i].core.meta_view());
                    self.nodes[i].core.drain_changes().for_each(drop);
                    self.nodes[i].subscriber = Some(Subscriber { view, meta });
                }
            }
        }
        self.connectivity();
        for i in 0..n {
            if !self.nodes[i].alive {
                continue;
            }
            for delta in self.nodes[i].core.take_deltas() {
                let delta = Arc::new(delta);
                for j in 0..n {
                    if j != i {
                        self.send(i, j, Msg::Delta(delta.clone()));
                    }
                }
            }
        }
        self.deliver();
        let now = self.now();
        for i in 0..n {
            if !self.nodes[i].alive {
                continue;
            }
            self.nodes[i].core.tick(now);
            while let Some(peer) = self.nodes[i].core.poll_request() {
                let j = self.index(peer);
                if self.reachable(i, j) {
                    self.send(i, j, Msg::SyncRequest);
                } else {
                    self.nodes[i].core.sync_failed(peer, now);
                }
            }
            if self.now.is_multiple_of(self.anti_entropy) {
                let j = (self.nodes[i].ae_cursor + 1) % n;
                self.nodes[i].ae_cursor = j;
                if self.reachable(i, j) {
                    let v = self.nodes[i].core.version();
                    self.send(i, j, Msg::Discover(v));
                }
            }
            self.record_events(i);
            self.record_names_lost(i);
        }
    }

    /// A claim dropped by the core because another ranks first is gone from the truth.
    fn record_names_lost(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        for (name, id, winner) in node.core.take_names_lost() {
            let group = name_group(&name);
            assert_ne!(
                winner,
                Pid::new(node.peer, id),
                "seed {}: a process lost to itself",
                self.seed
            );
            if let Some(groups) = node.truth.get_mut(&id) {
                groups.remove(&group);
            }
            node.truth_meta.remove(&(id, group));
        }
    }

    fn index(&self, peer: PeerId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.peer == peer)
            .expect("a simulated peer")
    }

    /// Node-down after `grace`, Discover both ways on (re)connection.
    fn connectivity(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            if !self.nodes[i].alive {
                continue;
            }
            for j in 0..n {
                if i == j {
                    continue;
                }
                if self.reachable(i, j) {
                    if self.nodes[i].unreachable.remove(&j).is_some() {
                        let v = self.nodes[i].core.version();
                        self.send(i, j, Msg::Discover(v));
                    }
                } else {
                    let now = self.now;
                    let entry = self.nodes[i].unreachable.entry(j).or_insert((now, false));
                    if !entry.1 && now - entry.0 >= self.grace {
                        entry.1 = true;
                        let peer = self.nodes[j].peer;
                        self.nodes[i].core.peer_down(peer);
                    }
                }
            }
        }
    }

    fn deliver(&mut self) {
        let now = self.now();
        while let Some(Reverse((at, order))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            let f = self.flights.remove(&order).expect("queued flight");
            let (from, to) = (f.from, f.to);
            if !self.nodes[to].alive || self.nodes[to].life != f.to_life {
                continue;
            }
            let stream = !matches!(f.msg, Msg::Delta(_));
            // A request or response dies with its connection; a delta may be relayed late.
            if stream && (!self.reachable(from, to) || self.nodes[from].life != f.from_life) {
                if matches!(f.msg, Msg::SyncRequest) && self.nodes[from].alive {
                    let peer = self.nodes[to].peer;
                    self.nodes[from].core.sync_failed(peer, now);
                }
                continue;
            }
            let sender = self.nodes[from].peer;
            match f.msg {
                Msg::Delta(delta) => {
                    self.nodes[to]
                        .core
                        .handle_delta(sender, Arc::unwrap_or_clone(delta), now)
                        .expect("honest deltas are valid");
                }
                Msg::SyncRequest => {
                    let state = self.nodes[to].core.sync_state();
                    self.send(to, from, Msg::SyncResponse(state));
                }
                Msg::SyncResponse(state) => {
                    self.nodes[to]
                        .core
                        .handle_sync(sender, state, now)
                        .expect("honest syncs are valid");
                }
                Msg::Discover(v) => {
                    self.nodes[to].core.handle_peer_version(sender, v, now);
                    let mine = self.nodes[to].core.version();
                    self.send(to, from, Msg::DiscoverReply(mine));
                }
                Msg::DiscoverReply(v) => {
                    self.nodes[to].core.handle_peer_version(sender, v, now);
                }
            }
        }
    }

    fn record_events(&mut self, i: usize) {
        let seed = self.seed;
        let node = &mut self.nodes[i];
        let changes: Vec<_> = node.core.drain_changes().collect();
        let Some(sub) = node.subscriber.as_mut() else {
            return;
        };
        for change in changes {
            assert!(
                !is_name_group(&change.group),
                "seed {seed}: an event of a name"
            );
            let group = sub.view.entry(change.group.to_string()).or_default();
            let slots = group.entry(change.pid).or_insert(0);
            match change.kind {
                EventKind::MemberJoined => *slots += change.count,
                EventKind::MemberLeft => {
                    assert!(
                        *slots >= change.count,
                        "seed {seed}: node {i} reported a leave of slots it never reported"
                    );
                    *slots -= change.count;
                }
                EventKind::MemberUpdated => {
                    assert_eq!(*slots, change.count, "seed {seed}: an update's slots")
                }
            }
            let metas = sub.meta.entry(change.group.to_string()).or_default();
            match (&change.meta, *slots) {
                (_, 0) | (None, _) => {
                    metas.remove(&change.pid);
                }
                (Some(meta), _) => {
                    metas.insert(change.pid, meta.clone());
                }
            }
            if metas.is_empty() {
                sub.meta.remove(&*change.group);
            }
            if *slots == 0 {
                group.remove(&change.pid);
            }
            if group.is_empty() {
                sub.view.remove(&*change.group);
            }
        }
    }

    // ------------------------------------------------------------------ the property

    fn expected_view(&self) -> View {
        let mut view = View::new();
        for node in self.nodes.iter().filter(|n| n.alive) {
            for (id, groups) in &node.truth {
                for (group, slots) in groups {
                    view.entry(group.clone())
                        .or_default()
                        .insert(Pid::new(node.peer, *id), *slots);
                }
            }
        }
        view
    }

    fn expected_meta(&self) -> MetaView {
        let mut view = MetaView::new();
        for node in self.nodes.iter().filter(|n| n.alive) {
            for ((id, group), meta) in &node.truth_meta {
                view.entry(group.clone())
                    .or_default()
                    .insert(Pid::new(node.peer, *id), meta.clone());
            }
        }
        view
    }

    fn check(&self) {
        let truth = self.expected_view();
        let truth_meta = self.expected_meta();
        for (i, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            let view = node.core.view();
            let (expected, refused) = restricted(i, node.peer, self.seed, &truth, &view);
            assert!(
                view == expected,
                "seed {}: node {i} did not converge:{}",
                self.seed,
                view_diff(&view, &expected)
            );
            let held: BTreeMap<PeerId, u64> = node.core.refused_slots().into_iter().collect();
            assert_eq!(
                held, refused,
                "seed {}: node {i}'s refused slots per origin",
                self.seed
            );
            // The metadata of what the node holds.
            let expected_meta: MetaView = truth_meta
                .iter()
                .map(|(group, metas)| {
                    let kept = metas
                        .iter()
                        .filter(|(pid, _)| {
                            expected.get(group).is_some_and(|m| m.contains_key(*pid))
                        })
                        .map(|(pid, meta)| (*pid, meta.clone()))
                        .collect::<BTreeMap<_, _>>();
                    (group.clone(), kept)
                })
                .filter(|(_, kept)| !kept.is_empty())
                .collect();
            let meta = node.core.meta_view();
            assert!(
                meta == expected_meta,
                "seed {}: node {i}'s metadata did not converge: {}",
                self.seed,
                meta_diff(&meta, &expected_meta)
            );
            if let Some(sub) = &node.subscriber {
                let view = user_groups(view);
                assert!(
                    sub.view == view,
                    "seed {}: node {i}'s subscriber (snapshot + events) differs from its view\n  subscriber: {:?}\n  view:       {view:?}",
                    self.seed,
                    sub.view
                );
                assert!(
                    sub.meta == user_groups(meta),
                    "seed {}: node {i}'s subscriber's metadata differs from its view",
                    self.seed
                );
            }
        }
        // One claim of each name stands, and every node finds it.
        for name in NAMES {
            let group = name_group(name);
            let claims: Vec<Pid> = self
                .nodes
                .iter()
                .filter(|n| n.alive)
                .flat_map(|n| {
                    n.truth
                        .iter()
                        .filter(|(_, groups)| groups.contains_key(&group))
                        .map(|(id, _)| Pid::new(n.peer, *id))
                })
                .collect();
            assert!(
                claims.len() <= 1,
                "seed {}: {name} claimed by {claims:?}",
                self.seed
            );
            for (i, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
                let holder = node.core.whereis(name).map(|h| h.pid);
                assert_eq!(
                    holder,
                    claims.first().copied(),
                    "seed {}: node {i}'s holder of {name}",
                    self.seed
                );
            }
        }
    }
}

fn run(seed: u64, nodes: usize) -> SimStats {
    let faults = Faults {
        loss: 0.05,
        duplicate: 0.03,
        max_delay: 8,
        partition: 0.01,
        heal: 0.02,
        kill: 0.004,
        restart: 0.02,
        straggler: 0.01,
    };
    let mut sim = Sim::new(seed, nodes, faults);
    for _ in 0..300 {
        sim.step(true);
    }
    // Heal and go quiet: no loss, no faults, no workload.
    sim.cut.fill(false);
    sim.faults.loss = 0.0;
    sim.faults.duplicate = 0.0;
    // Long enough for node-down and an anti-entropy round over every peer.
    let quiet = sim.grace + (nodes as u64 + 2) * sim.anti_entropy;
    for _ in 0..quiet {
        sim.step(false);
    }
    // Stragglers sent in the active phase may still be in flight: let the last land, then give
    // anti-entropy another round over every peer.
    let last = sim
        .queue
        .iter()
        .map(|Reverse((at, _))| *at)
        .max()
        .unwrap_or(0);
    while sim.now < last {
        sim.step(false);
    }
    for _ in 0..(nodes as u64 + 2) * sim.anti_entropy {
        sim.step(false);
    }
    sim.check();
    SimStats {
        slots: sim
            .expected_view()
            .values()
            .map(|g| g.values().sum::<u32>() as u64)
            .sum(),
        syncs: sim.nodes.iter().map(|n| n.core.stats().syncs_applied).sum(),
        held: sim.nodes.iter().map(|n| n.core.stats().deltas_held).sum(),
        purges: sim.nodes.iter().map(|n| n.core.stats().purges).sum(),
        restarts: sim.nodes.iter().map(|n| u64::from(n.life)).sum(),
        refused: sim.nodes.iter().map(|n| n.core.stats().slots_refused).sum(),
    }
}

#[derive(Debug, Default)]
struct SimStats {
    slots: u64,
    syncs: u64,
    held: u64,
    purges: u64,
    restarts: u64,
    /// Slots refused by the tight nodes' budgets.
    refused: u64,
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn every_seed_converges() {
    let nodes = env("PROCGROUPS_SIM_NODES", 20) as usize;
    let seeds: Vec<u64> = match std::env::var("PROCGROUPS_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("PROCGROUPS_SIM_SEED is a u64")],
        Err(_) => (0..env("PROCGROUPS_SIM_SEEDS", 500)).collect(),
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let totals = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let seeds = &seeds;
                s.spawn(move || {
                    let mut total = SimStats::default();
                    for seed in seeds.iter().skip(w).step_by(workers) {
                        let stats = run(*seed, nodes);
                        total.slots += stats.slots;
                        total.syncs += stats.syncs;
                        total.held += stats.held;
                        total.purges += stats.purges;
                        total.restarts += stats.restarts;
                        total.refused += stats.refused;
                    }
                    total
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a seed failed"))
            .fold(SimStats::default(), |mut a, b| {
                a.slots += b.slots;
                a.syncs += b.syncs;
                a.held += b.held;
                a.purges += b.purges;
                a.restarts += b.restarts;
                a.refused += b.refused;
                a
            })
    });
    // The faults must actually have happened, or the property proves little.
    assert!(
        totals.slots > 0 && totals.syncs > 0 && totals.held > 0 && totals.refused > 0,
        "{totals:?}"
    );
    assert!(
        seeds.len() < 50 || (totals.purges > 0 && totals.restarts > 0),
        "{totals:?}"
    );
    eprintln!(
        "{} seeds of {nodes} nodes converged: {totals:?}",
        seeds.len()
    );
}
