//! Soak tests, bounded in time: a cluster under a seeded storm of joins, leaves, broadcasts,
//! process exits, node kills and restarts and partitions must end with every view equal to
//! the truth, no member of a dead process anywhere, and every broadcast that could be
//! delivered delivered exactly once and in order.
//!
//! - [`five_nodes_under_random_faults_converge_and_deliver_once_in_order`]: five nodes in this
//!   test process over loopback TCP (mDNS off), partitions made with `Node::disconnect`.
//! - [`a_host_whose_link_goes_down_is_purged_then_heals`]: three nodes as child OS processes in
//!   network namespaces on a bridge (mDNS only inside them); the partition is a bridge port set
//!   down for longer than `node_down_grace`, then up. Run as root, it makes the namespaces
//!   itself; run by anyone else, it runs inside a user namespace (`support::netns::as_root`).
//!
//! Both print their seed; `PROCGROUPS_SOAK_SEED=<seed>` replays the same schedule of
//! operations and faults (the network's timing is not replayed). `PROCGROUPS_SOAK_SECS` sets
//! the duration of the storm of the first test (default 45 s; CI uses the default),
//! `PROCGROUPS_SOAK_NETNS_ROUNDS` the number of link-down rounds of the second (default 1),
//! and `PROCGROUPS_SOAK_TRACE=procgroups` prints the library's debug events (with
//! `libp2p_request_response`, `libp2p_swarm`, ... for libp2p's).
//!
//! Run with `--nocapture` to see the figures printed at the end (faults per kind, broadcasts
//! sent, delivered and lost, time to converge after the final heal).

mod support;
use support::{View, diff, eventually, holds_for, replay, view};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use procgroups::{
    ErrorKind, Event, HealthProblem, Inbox, Instance, Keypair, Members, Multiaddr, Node, PeerId,
    Pid, Process, ScopeConfig, Subscription,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Runs a child node when the netns test re-executes this binary; in an ordinary `cargo test`
/// run (no `PROCGROUPS_CHILD` in the environment) it returns at once and passes.
#[test]
fn child_node_entry_point() {
    support::child::child_main();
}

/// With `PROCGROUPS_SOAK_TRACE=<target prefix>,...` (e.g. `procgroups`), prints the
/// library's `tracing` events of those targets, debug and above, with the time and thread (each
/// node runs its swarm on a thread of its own): a diagnosis aid for a failing seed.
fn trace_if_asked() {
    use std::fmt::Write as _;
    use tracing::field::{Field, Visit};

    struct Fields(String);
    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            // Writing to a String cannot fail.
            write!(self.0, " {}={value:?}", field.name()).expect("write to a String");
        }
    }
    struct Printer {
        targets: Vec<String>,
        start: Instant,
    }
    impl tracing::Subscriber for Printer {
        fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
            *meta.level() <= tracing::Level::DEBUG
                && self.targets.iter().any(|t| meta.target().starts_with(t))
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            eprintln!(
                "TRACE {:>9.3?} {:?} {} {}{}",
                self.start.elapsed(),
                std::thread::current().id(),
                event.metadata().level(),
                event.metadata().target(),
                fields.0
            );
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
    if let Ok(targets) = std::env::var("PROCGROUPS_SOAK_TRACE") {
        let printer = Printer {
            targets: targets.split(',').map(str::to_owned).collect(),
            start: Instant::now(),
        };
        // The soak tests of this binary share the process: the first one to get here installs
        // the printer, and the others find it installed.
        tracing::subscriber::set_global_default(printer).ok();
    }
}

/// The seed of this run: `PROCGROUPS_SOAK_SEED` (decimal or `0x` hex), or a fresh one.
fn seed() -> u64 {
    match std::env::var("PROCGROUPS_SOAK_SEED") {
        Ok(s) if !s.trim().is_empty() => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("PROCGROUPS_SOAK_SEED={s:?}: {e}"))
        }
        _ => rand::random(),
    }
}

// ============================================================================================
// Five nodes in one process.

const SCOPE: &str = "soak:pg";
const NODES: usize = 5;
const GROUPS: usize = 5;
const TOPIC: &str = "seq";
/// The topic of the end markers (see [`Soak::markers_through`]).
const MARKER: &str = "marker";
/// One step of the schedule: every random decision is taken at a step, so a seed replays the
/// same operations whatever the machine's speed.
const STEP: Duration = Duration::from_millis(20);
/// Default duration of the storm.
const DEFAULT_SECS: u64 = 45;
/// Worker processes per node, at most (the watcher of each node is not one).
const MAX_WORKERS: usize = 4;
/// Slots of one process in one group, at most.
const MAX_SLOTS: usize = 3;
/// Nodes down at the same time, at most.
const MAX_DOWN: usize = 2;
/// An operation of the workload happens at a step with this probability (40 a second on
/// average, a fifth of them membership changes, each a signed gossipsub message that every
/// node verifies).
const OP_PER_STEP: f64 = 0.8;
/// A fault starts at a step with this probability (one every 3 s on average).
const FAULT_PER_STEP: f64 = 1.0 / 150.0;
/// Steps a partition or a dead node lasts: 0.2 s to 3 s, often longer than `GRACE`.
const OUTAGE_STEPS: std::ops::RangeInclusive<u64> = 10..=150;
/// The scope's `node_down_grace`.
const GRACE: Duration = Duration::from_secs(1);
/// Steps before the end of the storm at which a last partition starts, healed only by the
/// final heal: it outlasts `GRACE`, so the convergence measured after the final heal
/// includes purges to undo.
const FINAL_PARTITION_STEPS: u64 = 125;
/// The scope's `circuit_breaker_reset_time`: short, so that deliveries resume soon after a
/// heal (the default, 10 s, would excuse most of the run). The other delivery settings are
/// the defaults (`broadcast_timeout` 5 s, 3 retries from 100 ms to 1 s, breaker after 3
/// failures).
const BREAKER_RESET: Duration = Duration::from_millis(500);
/// How long a pair of nodes must have been up and connected before a broadcast between them
/// counts as deliverable: a failed batch's last retries and the breaker's reset fit in it.
const SETTLE: Duration = Duration::from_secs(3);
/// How long after a broadcast the pair must stay up and connected, and the recipient alive,
/// for the broadcast to count as deliverable: longer than `broadcast_timeout`, and far longer
/// than a delivery over loopback.
const WINDOW: Duration = Duration::from_secs(6);
/// Bound of each wait of the end phase.
const END_WAIT: Duration = Duration::from_secs(30);

fn group(g: usize) -> String {
    format!("g{g}")
}

fn soak_config() -> ScopeConfig {
    ScopeConfig::builder()
        .node_down_grace(GRACE)
        .circuit_breaker_reset_time(BREAKER_RESET)
        // Drained every step: no event is ever dropped.
        .monitor_buffer(1 << 14)
        .build()
        .expect("a valid config")
}

async fn start_node(key: &Keypair) -> Node {
    Node::builder()
        .mdns(false)
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
        .keypair(key.clone())
        .scope(SCOPE, soak_config())
        // Drained every step: no message is ever dropped for a full inbox.
        .mailbox_capacity(1 << 16)
        .build()
        .await
        .expect("node")
}

/// A process of the workload, with its slots (the truth of its memberships).
struct Worker {
    /// Declared before the process: dropped first.
    pg: Instance,
    process: Process,
    slots: [usize; GROUPS],
    next_seq: u64,
}

/// A running incarnation of a node.
struct Running {
    /// Its subscription to every change of the scope, the snapshot it started from and the
    /// events read so far: replayed at the end, they must give the node's view.
    events: Subscription,
    snapshot: BTreeMap<Arc<str>, Members>,
    log: Vec<Event>,
    workers: Vec<Worker>,
    /// A process that never joins: the node's view is read through it, and it exchanges the
    /// end markers with the other watchers.
    watch: Instance,
    markers: Inbox,
    watcher: Process,
    node: Node,
    started: Instant,
}

/// One of the five node slots: a fixed identity, restarted as new incarnations.
struct Slot {
    key: Keypair,
    peer: PeerId,
    running: Option<Running>,
    /// Counters of the incarnations that are gone.
    past_dropped: u64,
    past_lost: u64,
    past_sent: u64,
}

/// One recipient of a broadcast: its slots in the sender's view just before and just after
/// the call, and in the truth.
struct Target {
    pid: Pid,
    before: usize,
    after: usize,
    truth: usize,
}

struct Sent {
    sender: Pid,
    node: usize,
    seq: u64,
    group: usize,
    at: Instant,
    targets: Vec<Target>,
}

#[derive(Default)]
struct PairLog {
    /// Not up and connected since (an upper bound of when it stopped being).
    bad_since: Option<Instant>,
    /// Closed periods when it was not.
    bad: Vec<(Instant, Instant)>,
}

#[derive(Default, Debug)]
struct Counts {
    kills: u64,
    restarts: u64,
    pair_cuts: u64,
    isolations: u64,
    splits: u64,
    links_cut: u64,
    heals: u64,
    joins: u64,
    leaves: u64,
    spawns: u64,
    exits: u64,
    broadcasts: u64,
    broadcast_unavailable: u64,
    slots_targeted: u64,
    refused_changes: u64,
}

enum Pending {
    Restart(usize),
    Heal(Vec<(usize, usize)>),
}

struct Soak {
    rng: StdRng,
    slots: Vec<Slot>,
    index: HashMap<PeerId, usize>,
    /// Pairs (i < j) cut by `disconnect` and not healed.
    cuts: BTreeSet<(usize, usize)>,
    pending: Vec<(u64, Pending)>,
    pairs: BTreeMap<(usize, usize), PairLog>,
    last_observed: Instant,
    /// `frames_lost` of each running node at each observation: when a tracked copy is
    /// lost, shows whether its sender's node counted a loss then.
    lost_log: Vec<(Instant, [Option<u64>; NODES])>,
    /// Every inbox ever opened (a dead process's inbox is drained of what reached it).
    inboxes: Vec<(Pid, Inbox)>,
    /// When each process died (`None`: alive).
    deaths: HashMap<Pid, Option<Instant>>,
    /// Per recipient: (sender, seq, when read), in the order read.
    received: HashMap<Pid, Vec<(Pid, u64, Instant)>>,
    sent: Vec<Sent>,
    counts: Counts,
    max_lag: Duration,
    /// The faults and heals, with when they happened: printed when something fails.
    timeline: Vec<(Instant, String)>,
    /// Every report of a stalled network loop by a node's health check (`LoopStalled`: its
    /// loop silent beyond `protocol_timeout`): node, when, silent for.
    stalls: Vec<(usize, Instant, Duration)>,
}

fn pair(i: usize, j: usize) -> (usize, usize) {
    (i.min(j), i.max(j))
}

impl Soak {
    fn running(&self) -> Vec<usize> {
        (0..NODES)
            .filter(|i| self.slots[*i].running.is_some())
            .collect()
    }

    fn node(&self, i: usize) -> &Node {
        &self.slots[i].running.as_ref().expect("running").node
    }

    fn addr(&self, i: usize) -> Multiaddr {
        self.node(i).listen_addrs()[0].clone()
    }

    fn spawn_worker(&mut self, i: usize) {
        let running = self.slots[i].running.as_mut().expect("running");
        let process = running.node.spawn_process();
        let inbox = process.listen(TOPIC);
        let pg = process.open(SCOPE).expect("open");
        self.deaths.insert(process.pid(), None);
        self.inboxes.push((process.pid(), inbox));
        running.workers.push(Worker {
            pg,
            process,
            slots: [0; GROUPS],
            next_seq: 0,
        });
        self.counts.spawns += 1;
    }

    async fn start(&mut self, i: usize) {
        let node = start_node(&self.slots[i].key).await;
        let watcher = node.spawn_process();
        let watch = watcher.open(SCOPE).expect("open");
        let markers = watcher.listen(MARKER);
        let (events, snapshot) = watch.events().expect("events");
        self.slots[i].running = Some(Running {
            events,
            snapshot,
            log: Vec::new(),
            workers: Vec::new(),
            watch,
            markers,
            watcher,
            node,
            started: Instant::now(),
        });
        let workers = self.rng.gen_range(1..=3);
        for _ in 0..workers {
            self.spawn_worker(i);
        }
    }

    /// A crash: every handle dropped without `shutdown`.
    fn kill(&mut self, i: usize) {
        self.drain();
        let now = Instant::now();
        let slot = &mut self.slots[i];
        let running = slot.running.take().expect("running");
        let stats = running.node.node_stats();
        slot.past_dropped += stats.messages_dropped;
        slot.past_lost += stats.frames_lost;
        slot.past_sent += stats.frames_sent;
        for w in &running.workers {
            self.deaths.insert(w.process.pid(), Some(now));
        }
        drop(running);
        self.counts.kills += 1;
        self.timeline.push((now, format!("kill node {i}")));
    }

    async fn restart(&mut self, i: usize) {
        self.start(i).await;
        // A new incarnation starts with no cut: it dials every running node (which accepts
        // it even if it had disconnected the old one).
        self.cuts.retain(|&(a, b)| a != i && b != i);
        for j in self.running() {
            if j != i {
                let addr = self.addr(j);
                self.node(i).dial(addr).expect("dial");
            }
        }
        let joins: Vec<(usize, usize)> = {
            let workers = self.slots[i].running.as_ref().unwrap().workers.len();
            (0..workers)
                .map(|w| (w, self.rng.gen_range(0..GROUPS)))
                .collect()
        };
        for (w, g) in joins {
            self.join(i, w, &[g]);
        }
        self.counts.restarts += 1;
        self.timeline
            .push((Instant::now(), format!("node {i} restarted and dialed")));
    }

    fn cut(&mut self, pairs: &[(usize, usize)]) {
        for &(i, j) in pairs {
            let (pi, pj) = (self.slots[i].peer, self.slots[j].peer);
            self.node(i).disconnect(pj).expect("disconnect");
            self.node(j).disconnect(pi).expect("disconnect");
            self.cuts.insert(pair(i, j));
            self.counts.links_cut += 1;
        }
        self.timeline
            .push((Instant::now(), format!("cut {pairs:?}")));
    }

    fn heal(&mut self, pairs: &[(usize, usize)]) {
        for &(i, j) in pairs {
            let p = pair(i, j);
            if self.cuts.remove(&p)
                && self.slots[i].running.is_some()
                && self.slots[j].running.is_some()
            {
                let addr = self.addr(p.1);
                self.node(p.0).dial(addr).expect("dial");
                self.counts.heals += 1;
                self.timeline
                    .push((Instant::now(), format!("heal {p:?} (node {} dials)", p.0)));
            }
        }
    }

    /// Joins worker `w` of node `i` to `groups` (a batch); the truth follows the outcome.
    fn join(&mut self, i: usize, w: usize, groups: &[usize]) {
        let worker = &mut self.slots[i].running.as_mut().unwrap().workers[w];
        let names: Vec<String> = groups.iter().map(|g| group(*g)).collect();
        match worker.pg.join(names.as_slice()) {
            Ok(()) => {
                for g in groups {
                    worker.slots[*g] += 1;
                }
                self.counts.joins += 1;
            }
            Err(e) if e.kind() == ErrorKind::Unavailable => self.counts.refused_changes += 1,
            Err(e) => panic!("join {names:?}: {e}"),
        }
    }

    fn leave(&mut self, i: usize, w: usize, g: usize) {
        let worker = &mut self.slots[i].running.as_mut().unwrap().workers[w];
        match worker.pg.leave(group(g)) {
            Ok(()) => {
                worker.slots[g] -= 1;
                self.counts.leaves += 1;
            }
            Err(e) if e.kind() == ErrorKind::Unavailable => self.counts.refused_changes += 1,
            Err(e) => panic!("leave g{g}: {e}"),
        }
    }

    /// Slots of `pid` in group `g`, in the truth.
    fn truth_slots(&self, pid: Pid, g: usize) -> usize {
        let Some(&i) = self.index.get(&pid.node()) else {
            return 0;
        };
        self.slots[i].running.as_ref().map_or(0, |r| {
            r.workers
                .iter()
                .find(|w| w.process.pid() == pid)
                .map_or(0, |w| w.slots[g])
        })
    }

    fn broadcast(&mut self, i: usize, w: usize, g: usize) {
        let name = group(g);
        let at = Instant::now();
        let (sender, seq, before, result, after) = {
            let worker = &mut self.slots[i].running.as_mut().unwrap().workers[w];
            let seq = worker.next_seq;
            let before = worker.pg.get_members(&name).expect("get_members");
            let result = worker.pg.broadcast(&name, TOPIC, &(seq, g as u8));
            let after = worker.pg.get_members(&name).expect("get_members");
            if result.is_ok() {
                worker.next_seq += 1;
            }
            (worker.process.pid(), seq, before, result, after)
        };
        let n = match result {
            Ok(delivery) => delivery.slots(),
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                self.counts.broadcast_unavailable += 1;
                return;
            }
            Err(e) => panic!("broadcast to {name}: {e}"),
        };
        let pids: BTreeSet<Pid> = before.unique().chain(after.unique()).collect();
        let targets = pids
            .into_iter()
            .map(|pid| Target {
                pid,
                before: before.count(&pid),
                after: after.count(&pid),
                truth: self.truth_slots(pid, g),
            })
            .collect();
        self.counts.broadcasts += 1;
        self.counts.slots_targeted += n as u64;
        self.sent.push(Sent {
            sender,
            node: i,
            seq,
            group: g,
            at,
            targets,
        });
    }

    /// Reads every inbox and every event subscription.
    fn drain(&mut self) {
        let now = Instant::now();
        for (pid, inbox) in &mut self.inboxes {
            while let Some(m) = inbox.try_recv() {
                let (seq, _g): (u64, u8) = m.decode().expect("a soak payload");
                self.received
                    .entry(*pid)
                    .or_default()
                    .push((m.from(), seq, now));
            }
        }
        for slot in &mut self.slots {
            if let Some(r) = &mut slot.running {
                while let Some(ev) = r.events.try_recv() {
                    r.log.push(ev);
                }
            }
        }
    }

    /// Records, for each pair of node slots, whether both are running, not cut, and connected
    /// both ways. A pair that is not starts a bad period at the previous observation.
    fn observe(&mut self) {
        let now = Instant::now();
        let mut connected: Vec<Option<Vec<PeerId>>> = Vec::with_capacity(NODES);
        for slot in &self.slots {
            connected.push(slot.running.as_ref().map(|r| r.node.connected_peers()));
        }
        for i in 0..NODES {
            for j in i + 1..NODES {
                let ok = match (&connected[i], &connected[j]) {
                    (Some(ci), Some(cj)) => {
                        !self.cuts.contains(&(i, j))
                            && ci.contains(&self.slots[j].peer)
                            && cj.contains(&self.slots[i].peer)
                    }
                    _ => false,
                };
                let log = self.pairs.entry((i, j)).or_default();
                match (ok, log.bad_since) {
                    (false, None) => log.bad_since = Some(self.last_observed),
                    (true, Some(since)) => {
                        log.bad.push((since, now));
                        log.bad_since = None;
                    }
                    _ => {}
                }
            }
        }
        self.last_observed = now;
        let mut lost = [None; NODES];
        for (i, slot) in self.slots.iter().enumerate() {
            lost[i] = slot
                .running
                .as_ref()
                .map(|r| r.node.node_stats().frames_lost);
        }
        if self.lost_log.last().is_none_or(|(_, l)| *l != lost) {
            self.lost_log.push((now, lost));
        }
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(r) = &slot.running else { continue };
            for problem in r.node.scope_health(SCOPE).expect("health").problems {
                if let HealthProblem::LoopStalled { silent_for } = problem {
                    self.stalls.push((i, now, silent_for));
                }
            }
        }
    }

    /// Losses counted by node `i` between `from` and `to`: (time after `from`, frames).
    fn losses(&self, i: usize, from: Instant, to: Instant) -> Vec<(Duration, u64)> {
        let mut out = Vec::new();
        let mut prev: Option<u64> = None;
        for (at, lost) in &self.lost_log {
            if let (Some(p), Some(l)) = (prev, lost[i])
                && l > p
                && *at >= from
                && *at <= to
            {
                out.push((at.duration_since(from), l - p));
            }
            prev = lost[i];
        }
        out
    }

    /// The end of the pair's last bad period before `at`, as time before `at`.
    fn stable_for(&self, i: usize, j: usize, at: Instant) -> Option<Duration> {
        let log = self.pairs.get(&pair(i, j))?;
        log.bad
            .iter()
            .map(|(_, b)| *b)
            .filter(|b| *b <= at)
            .max()
            .map(|b| at.duration_since(b))
    }

    /// `true` if the pair was not up and connected at some moment of `[from, to]`.
    fn disturbed(&self, i: usize, j: usize, from: Instant, to: Instant) -> bool {
        let Some(log) = self.pairs.get(&pair(i, j)) else {
            return true;
        };
        log.bad_since.is_some_and(|since| since <= to)
            || log.bad.iter().any(|&(a, b)| a <= to && b >= from)
    }

    /// One random fault, among those the current state allows.
    fn fault(&mut self, step: u64) {
        let running = self.running();
        let mut kinds = vec!["pair"];
        if NODES - running.len() < MAX_DOWN && running.len() > 2 {
            kinds.push("kill");
        }
        if running.len() >= 3 {
            kinds.push("isolate");
        }
        if running.len() >= 4 {
            kinds.push("split");
        }
        let kind = *kinds.choose(&mut self.rng).expect("a kind");
        let until = step + self.rng.gen_range(OUTAGE_STEPS);
        let mut shuffled = running.clone();
        shuffled.shuffle(&mut self.rng);
        match kind {
            "kill" => {
                let i = shuffled[0];
                self.kill(i);
                self.pending.push((until, Pending::Restart(i)));
            }
            other => {
                let side = match other {
                    "pair" => 1,
                    "isolate" => 1,
                    _ => 2,
                };
                let (a, b) = shuffled.split_at(side);
                let rest: &[usize] = if other == "pair" { &b[..1] } else { b };
                let pairs: Vec<(usize, usize)> = a
                    .iter()
                    .flat_map(|&i| rest.iter().map(move |&j| pair(i, j)))
                    .filter(|p| !self.cuts.contains(p))
                    .collect();
                match other {
                    "pair" => self.counts.pair_cuts += 1,
                    "isolate" => self.counts.isolations += 1,
                    _ => self.counts.splits += 1,
                }
                self.cut(&pairs);
                self.pending.push((until, Pending::Heal(pairs)));
            }
        }
    }

    /// The last partition: one or two running nodes cut from the others, not healed before
    /// the end of the storm (nor is any earlier cut: their heals are cancelled).
    fn final_partition(&mut self) {
        let mut running = self.running();
        running.shuffle(&mut self.rng);
        let side = if running.len() >= 4 { 2 } else { 1 };
        let (a, b) = running.split_at(side);
        let pairs: Vec<(usize, usize)> = a
            .iter()
            .flat_map(|&i| b.iter().map(move |&j| pair(i, j)))
            .collect();
        self.pending
            .retain(|(_, p)| matches!(p, Pending::Restart(_)));
        if side == 2 {
            self.counts.splits += 1;
        } else {
            self.counts.isolations += 1;
        }
        self.cut(&pairs);
    }

    /// One random operation of the workload on a random running node.
    fn operate(&mut self) {
        let running = self.running();
        let i = *running.choose(&mut self.rng).expect("a running node");
        let workers = self.slots[i].running.as_ref().unwrap().workers.len();
        let roll: f64 = self.rng.r#gen();
        if workers == 0 || (roll < 0.03 && workers < MAX_WORKERS) {
            self.spawn_worker(i);
            return;
        }
        let w = self.rng.gen_range(0..workers);
        let slots = self.slots[i].running.as_ref().unwrap().workers[w].slots;
        if roll < 0.06 {
            // Exit: read what reached it first, as its owner would have.
            self.drain();
            let worker = self.slots[i].running.as_mut().unwrap().workers.remove(w);
            self.deaths
                .insert(worker.process.pid(), Some(Instant::now()));
            drop(worker);
            self.counts.exits += 1;
        } else if roll < 0.17 {
            let g = self.rng.gen_range(0..GROUPS);
            if slots[g] >= MAX_SLOTS {
                return;
            }
            if self.rng.gen_bool(0.2) {
                let h = self.rng.gen_range(0..GROUPS);
                if slots[h] + usize::from(g == h) < MAX_SLOTS {
                    self.join(i, w, &[g, h]);
                    return;
                }
            }
            self.join(i, w, &[g]);
        } else if roll < 0.25 {
            let member_of: Vec<usize> = (0..GROUPS).filter(|g| slots[*g] > 0).collect();
            if let Some(&g) = member_of.choose(&mut self.rng) {
                self.leave(i, w, g);
            }
        } else {
            let g = self.rng.gen_range(0..GROUPS);
            self.broadcast(i, w, g);
        }
    }

    /// The truth: every slot of every live worker of every running node.
    fn truth_view(&self) -> View {
        let mut v = View::new();
        for r in self.slots.iter().filter_map(|s| s.running.as_ref()) {
            for w in &r.workers {
                for (g, n) in w.slots.iter().enumerate() {
                    v.entry(group(g))
                        .or_default()
                        .extend(std::iter::repeat_n(w.process.pid(), *n));
                }
            }
        }
        for pids in v.values_mut() {
            pids.sort();
        }
        v.retain(|_, p| !p.is_empty());
        v
    }

    /// `Ok` when every running node's view is the truth and holds no dead process.
    fn converged(&self) -> Result<(), String> {
        let truth = self.truth_view();
        let mut problems = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(r) = &slot.running else { continue };
            let v = view(&r.watch);
            let ghosts: BTreeSet<Pid> = v
                .values()
                .flatten()
                .filter(|p| self.deaths.get(p).is_none_or(|d| d.is_some()))
                .copied()
                .collect();
            if !ghosts.is_empty() {
                problems.push(format!("node {i} lists dead processes {ghosts:?}"));
            }
            if v != truth {
                problems.push(format!("node {i}: {}", diff(&v, &truth)));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    fn mesh(&self) -> Result<(), String> {
        let running = self.running();
        let mut missing = Vec::new();
        for &i in &running {
            let peers = self.node(i).connected_peers();
            for &j in &running {
                if i != j && !peers.contains(&self.slots[j].peer) {
                    missing.push((i, j));
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not connected (from, to): {missing:?}"))
        }
    }

    /// Sends an end marker from each running node's watcher to every other's.
    fn send_markers(&self, missing: &BTreeSet<(usize, usize)>) {
        for &(i, j) in missing {
            let to = self.slots[j].running.as_ref().unwrap().watcher.pid();
            let from = &self.slots[i].running.as_ref().unwrap().watcher;
            from.send(&to, MARKER, &(i as u8)).expect("send a marker");
        }
    }

    /// Reads the markers that arrived; returns the (from, to) pairs still without one. An
    /// outbox is one ordered queue per peer: once a node's marker reached another node, every
    /// frame it queued for that node before was delivered or given up.
    fn markers_through(&mut self, missing: &mut BTreeSet<(usize, usize)>) {
        for j in 0..NODES {
            let Some(r) = &mut self.slots[j].running else {
                continue;
            };
            while let Some(m) = r.markers.try_recv() {
                let i: u8 = m.decode().expect("a marker");
                missing.remove(&(i as usize, j));
            }
        }
    }

    fn frames_waiting(&self) -> Vec<(usize, usize)> {
        self.running()
            .into_iter()
            .map(|i| (i, self.node(i).node_stats().frames_waiting))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Fails the test, naming the seed that replays it.
fn fail(seed: u64, what: &str, detail: &str) -> ! {
    panic!("soak seed {seed}: {what}\n{detail}\n(replay: PROCGROUPS_SOAK_SEED={seed})")
}

/// Waits (bounded) until `check` is `Ok`; returns how long that took, or the last `Err`.
async fn wait_for(
    soak: &mut Soak,
    bound: Duration,
    mut check: impl FnMut(&Soak) -> Result<(), String>,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        soak.drain();
        soak.observe();
        match check(soak) {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() >= bound => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Five nodes under a seeded storm for `PROCGROUPS_SOAK_SECS` (default 45 s): random joins
/// (single, batches, counted up to 3 slots), leaves, broadcasts, process spawns and exits;
/// node kills (every handle dropped, no `shutdown`) and restarts with the same keypair after
/// 0.1–3 s (at most two nodes down); partitions of 0.1–3 s made with `disconnect` both ways
/// (one pair, one node from all, or two nodes from three), healed by a dial; a last
/// partition 2.5 s before the end. The grace is 1 s: many outages outlast it. Then every cut
/// is healed (nodes still down stay down: their members must be purged) and the test waits,
/// bounded, for:
///
/// - every running pair connected, and every running node's view equal to the truth (the
///   slots of the live processes of the running nodes), with no dead process anywhere;
/// - each node's `events()` subscription, replayed on its snapshot, giving its view;
/// - an end marker from every running node's watcher to every other's (an outbox is one
///   ordered queue per peer: behind the marker, everything sent before was delivered or
///   given up), then no frame waiting in any outbox, then every inbox read.
///
/// **Deliveries.** Every broadcast is recorded with its sender, its sequence number (per
/// sender, in the payload) and, for each process in the sender's view just before or just
/// after the call, its slots there and in the truth. A recipient of a broadcast is *tracked*
/// (it must get exactly as many copies as it had slots) when, conservatively:
///
/// - its slots were the same in the sender's view before and after the call and in the truth
///   (so the call's own snapshot had them too);
/// - it runs on the sender's node (served in place, at once), or else: it stayed alive for
///   `WINDOW` (3 s) after the call, and the two nodes were both running, not cut and
///   connected both ways (as observed every step) for the whole of
///   `[call - SETTLE, call + WINDOW]` (`SETTLE` = 3 s covers a failed batch's retries and the
///   breaker's reset, so that losses the outbox reports for a recent outage are excused).
///
/// For every recipient, tracked or not: messages from one sender arrive in the order sent
/// (sequence numbers never go down), no copy arrives beyond the slots the sender's view gave
/// it, and nothing arrives that no view addressed to it. Missing copies of untracked
/// recipients are the losses the faults are allowed to cause, and are reported as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_under_random_faults_converge_and_deliver_once_in_order() {
    trace_if_asked();
    let seed = seed();
    let secs: u64 = std::env::var("PROCGROUPS_SOAK_SECS")
        .ok()
        .map_or(DEFAULT_SECS, |s| {
            s.trim()
                .parse()
                .unwrap_or_else(|e| panic!("PROCGROUPS_SOAK_SECS={s:?}: {e}"))
        });
    eprintln!("soak seed {seed} (replay: PROCGROUPS_SOAK_SEED={seed}), storm of {secs} s");
    let steps = secs * 1000 / STEP.as_millis() as u64;

    let rng = StdRng::seed_from_u64(seed);
    let slots: Vec<Slot> = (0..NODES)
        .map(|_| {
            let key = Keypair::generate_ed25519();
            Slot {
                peer: key.public().to_peer_id(),
                key,
                running: None,
                past_dropped: 0,
                past_lost: 0,
                past_sent: 0,
            }
        })
        .collect();
    let index = slots.iter().enumerate().map(|(i, s)| (s.peer, i)).collect();
    let mut soak = Soak {
        rng,
        slots,
        index,
        cuts: BTreeSet::new(),
        pending: Vec::new(),
        pairs: BTreeMap::new(),
        last_observed: Instant::now(),
        lost_log: Vec::new(),
        inboxes: Vec::new(),
        deaths: HashMap::new(),
        received: HashMap::new(),
        sent: Vec::new(),
        counts: Counts::default(),
        max_lag: Duration::ZERO,
        timeline: Vec::new(),
        stalls: Vec::new(),
    };

    // A full mesh, and a first converged state.
    for i in 0..NODES {
        soak.start(i).await;
        for j in 0..i {
            let addr = soak.addr(j);
            soak.node(i).dial(addr).expect("dial");
        }
    }
    if let Err(e) = wait_for(&mut soak, END_WAIT, Soak::mesh).await {
        fail(seed, "the first mesh", &e);
    }
    if let Err(e) = wait_for(&mut soak, END_WAIT, Soak::converged).await {
        fail(seed, "the first convergence", &e);
    }

    // The storm.
    let storm_start = Instant::now();
    let origin = tokio::time::Instant::now();
    for step in 0..steps {
        let due = origin + STEP * step as u32;
        tokio::time::sleep_until(due).await;
        soak.max_lag = soak.max_lag.max(tokio::time::Instant::now() - due);
        soak.drain();
        let (now_due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut soak.pending)
            .into_iter()
            .partition(|(at, _)| *at <= step);
        soak.pending = later;
        for (_, p) in now_due {
            match p {
                Pending::Restart(i) => soak.restart(i).await,
                Pending::Heal(pairs) => soak.heal(&pairs),
            }
        }
        if step + FINAL_PARTITION_STEPS == steps {
            soak.final_partition();
        } else if soak.rng.gen_bool(FAULT_PER_STEP) {
            soak.fault(step);
        }
        if soak.rng.gen_bool(OP_PER_STEP) {
            soak.operate();
        }
        soak.observe();
    }
    let storm = storm_start.elapsed();

    // Heal every cut; nodes still down stay down.
    let down: Vec<usize> = (0..NODES)
        .filter(|i| soak.slots[*i].running.is_none())
        .collect();
    soak.pending.clear();
    let cuts: Vec<(usize, usize)> = soak.cuts.iter().copied().collect();
    let truth = soak.truth_view();
    let before_heal = soak
        .slots
        .iter()
        .filter_map(|s| s.running.as_ref())
        .filter(|r| view(&r.watch) != truth)
        .count();
    soak.heal(&cuts);
    soak.observe();
    let healed_at = Instant::now();
    let mesh_took = match wait_for(&mut soak, END_WAIT, Soak::mesh).await {
        Ok(t) => t,
        Err(e) => fail(seed, "every running pair connected after the heal", &e),
    };
    let converge_took = match wait_for(&mut soak, END_WAIT, Soak::converged).await {
        Ok(_) => healed_at.elapsed(),
        Err(e) => fail(seed, "every view equal to the truth after the heal", &e),
    };
    // Every outbox flushed: a marker from every running node to every other, sent again
    // every second until it arrives (a breaker opened by the storm may refuse the first).
    let running = soak.running();
    let mut missing: BTreeSet<(usize, usize)> = running
        .iter()
        .flat_map(|&i| running.iter().map(move |&j| (i, j)))
        .filter(|(i, j)| i != j)
        .collect();
    let markers_start = Instant::now();
    let mut resend_at = markers_start;
    while !missing.is_empty() {
        if Instant::now() >= resend_at {
            soak.send_markers(&missing);
            resend_at += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        soak.markers_through(&mut missing);
        if markers_start.elapsed() >= END_WAIT {
            fail(
                seed,
                "the end markers after the heal",
                &format!("no marker (from node, to node): {missing:?}"),
            );
        }
    }
    let markers_took = markers_start.elapsed();
    // Nothing waits in any outbox once the markers' acknowledgements are back (a frame that
    // is given up leaves the count too).
    if let Err(e) = wait_for(&mut soak, END_WAIT, |s| {
        let waiting = s.frames_waiting();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!("frames waiting (node, frames): {waiting:?}"))
        }
    })
    .await
    {
        fail(seed, "the outboxes empty after the end markers", &e);
    }
    soak.drain();
    soak.observe();

    // The events of every running incarnation give its view.
    let mut violations: Vec<String> = Vec::new();
    for (i, slot) in soak.slots.iter().enumerate() {
        let Some(r) = &slot.running else { continue };
        if r.events.dropped() > 0 {
            violations.push(format!("node {i}: {} events dropped", r.events.dropped()));
            continue;
        }
        match replay(&r.snapshot, &r.log) {
            Ok(v) if v == view(&r.watch) => {}
            Ok(v) => violations.push(format!(
                "node {i} (started {:?} into the run): its events replay to a view that is not \
                 its view: {}",
                r.started.duration_since(storm_start),
                diff(&v, &view(&r.watch))
            )),
            Err(e) => violations.push(format!("node {i}: {e}")),
        }
    }

    // Deliveries.
    let mut copies: HashMap<(Pid, Pid, u64), Vec<Instant>> = HashMap::new();
    for (to, msgs) in &soak.received {
        // In order per sender.
        let mut last: HashMap<Pid, u64> = HashMap::new();
        for &(from, seq, at) in msgs {
            if let Some(prev) = last.insert(from, seq)
                && seq < prev
            {
                violations.push(format!(
                    "{to} got seq {seq} from {from} after seq {prev}: out of order"
                ));
            }
            copies.entry((*to, from, seq)).or_default().push(at);
        }
    }
    let mut addressed: BTreeSet<(Pid, Pid, u64)> = BTreeSet::new();
    let (mut tracked, mut tracked_remote, mut tracked_got) = (0u64, 0u64, 0u64);
    let (mut untracked, mut untracked_lost) = (0u64, 0u64);
    let (mut max_latency_local, mut max_latency_remote) = (Duration::ZERO, Duration::ZERO);
    for s in &soak.sent {
        for t in &s.targets {
            addressed.insert((t.pid, s.sender, s.seq));
            let got = copies
                .get(&(t.pid, s.sender, s.seq))
                .map_or(&[][..], Vec::as_slice);
            let most = t.before.max(t.after);
            if got.len() > most {
                violations.push(format!(
                    "{} got {} copies of seq {} from {} to g{}: its slots in the sender's view \
                     were {} before the call and {} after",
                    t.pid,
                    got.len(),
                    s.seq,
                    s.sender,
                    s.group,
                    t.before,
                    t.after
                ));
            }
            let c = t.before;
            let consistent = c > 0 && t.after == c && t.truth == c;
            let Some(&rnode) = soak.index.get(&t.pid.node()) else {
                continue;
            };
            let local = rnode == s.node;
            let deliverable = consistent
                && (local
                    || (soak
                        .deaths
                        .get(&t.pid)
                        .is_some_and(|d| d.is_none_or(|d| d > s.at + WINDOW))
                        && !soak.disturbed(s.node, rnode, s.at - SETTLE, s.at + WINDOW)));
            if deliverable {
                tracked += c as u64;
                tracked_got += got.len().min(c) as u64;
                if !local {
                    tracked_remote += c as u64;
                }
                for at in got {
                    let latency = at.saturating_duration_since(s.at);
                    if local {
                        max_latency_local = max_latency_local.max(latency);
                    } else {
                        max_latency_remote = max_latency_remote.max(latency);
                    }
                }
                if got.len() != c {
                    let next_fault = soak.pairs.get(&pair(s.node, rnode)).and_then(|log| {
                        log.bad
                            .iter()
                            .map(|(a, _)| *a)
                            .chain(log.bad_since)
                            .filter(|a| *a > s.at)
                            .min()
                    });
                    violations.push(format!(
                        "lost: {} (node {rnode}) got {} of {c} copies of seq {} from {} \
                         (node {}) to g{}, sent {:?} into the storm; the pair was up and \
                         connected for {:?} before the call and its next fault came {:?} after \
                         it; node {}'s frames_lost grew (time after the call, frames) {:?}",
                        t.pid,
                        got.len(),
                        s.seq,
                        s.sender,
                        s.node,
                        s.group,
                        s.at.saturating_duration_since(storm_start),
                        soak.stable_for(s.node, rnode, s.at),
                        next_fault.map(|f| f.duration_since(s.at)),
                        s.node,
                        soak.losses(s.node, s.at, s.at + WINDOW),
                    ));
                }
            } else if consistent {
                untracked += c as u64;
                untracked_lost += c.saturating_sub(got.len()) as u64;
            }
        }
    }
    let mut received_total = 0u64;
    for (key, got) in &copies {
        received_total += got.len() as u64;
        if !addressed.contains(key) {
            violations.push(format!(
                "{} got seq {} from {} though no view of the sender listed it",
                key.0, key.2, key.1
            ));
        }
    }

    // The node-wide counters.
    let (mut dropped, mut lost, mut frames_sent) = (0, 0, 0);
    for slot in &soak.slots {
        dropped += slot.past_dropped;
        lost += slot.past_lost;
        frames_sent += slot.past_sent;
        if let Some(r) = &slot.running {
            let s = r.node.node_stats();
            dropped += s.messages_dropped;
            lost += s.frames_lost;
            frames_sent += s.frames_sent;
        }
    }
    if dropped > 0 {
        violations.push(format!(
            "{dropped} messages dropped by the nodes (every inbox was read every step)"
        ));
    }

    let c = &soak.counts;
    eprintln!(
        "soak seed {seed}: {secs} s storm ({steps} steps, took {storm:.1?}, largest step lag \
         {:.1?})\n\
         faults: {} kills, {} restarts, {} pair cuts, {} isolations, {} splits ({} links cut, \
         {} healed by a dial); nodes down at the end: {down:?}\n\
         workload: {} joins, {} leaves, {} spawns, {} exits, {} changes refused (Unavailable)\n\
         broadcasts: {} sent ({} Unavailable), {} slots targeted, {} copies delivered; \
         tracked (deliverable) copies {} ({} remote), delivered {}, lost {}; untracked copies \
         {}, lost to faults {}; slowest tracked delivery read: local {:.1?}, remote {:.1?}\n\
         frames: {} acknowledged, {} lost (node counters); messages dropped {}\n\
         final heal of {} cut links ({before_heal} running nodes' views differed from the truth): mesh in {mesh_took:.1?}, every view equal to the truth in \
         {converge_took:.1?}, outboxes flushed (end markers through) {markers_took:.1?} later",
        soak.max_lag,
        c.kills,
        c.restarts,
        c.pair_cuts,
        c.isolations,
        c.splits,
        c.links_cut,
        c.heals,
        c.joins,
        c.leaves,
        c.spawns,
        c.exits,
        c.refused_changes,
        c.broadcasts,
        c.broadcast_unavailable,
        c.slots_targeted,
        received_total,
        tracked,
        tracked_remote,
        tracked_got,
        tracked - tracked_got,
        untracked,
        untracked_lost,
        max_latency_local,
        max_latency_remote,
        frames_sent,
        lost,
        dropped,
        cuts.len(),
    );
    if !soak.stalls.is_empty() {
        eprintln!("network loops reported stalled (node, time into the storm, silent for):");
        for (i, at, silent) in &soak.stalls {
            eprintln!(
                "  node {i} {:>8.3?} {silent:.3?}",
                at.saturating_duration_since(storm_start)
            );
        }
    }
    if !violations.is_empty() {
        eprintln!("timeline (time into the storm: what):");
        for (at, what) in &soak.timeline {
            eprintln!(
                "  {:>8.3?} {what}",
                at.saturating_duration_since(storm_start)
            );
        }
        let shown: Vec<&String> = violations.iter().take(30).collect();
        fail(
            seed,
            &format!("{} violations", violations.len()),
            &shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    assert!(
        tracked_remote > 0,
        "soak seed {seed}: no remote delivery was tracked: the test checked nothing"
    );

    for slot in &mut soak.slots {
        if let Some(r) = slot.running.take() {
            r.node.shutdown().await;
        }
    }
}

// ============================================================================================
// Link down in network namespaces.

/// `node_down_grace` of the children of the netns test.
const NETNS_GRACE: Duration = Duration::from_secs(1);
/// Processes (one slot each in `support::child::GROUP`) per child.
const NETNS_PROCESSES: usize = 2;
/// Link-down rounds of the netns test (about 20 s each); `PROCGROUPS_SOAK_NETNS_ROUNDS` for
/// more.
const NETNS_ROUNDS: usize = 1;

/// Three hosts in network namespaces on a bridge, a child node each (mDNS on, only inside the
/// namespaces; nothing dialed), two members each. Each round (seeded choice of the host) sets
/// that host's port of the bridge down, a cable pulled: no goodbye, no connection error, the
/// hosts notice by their pings failing. The link stays down until both sides have purged the
/// other's members (which must take longer than `node_down_grace`), then comes up: the nodes
/// must reconnect by themselves (their redial; mDNS does not announce again) and converge on
/// everyone's members. Prints how long the purge and the heal took.
///
/// The purge comes about 17 s after the cable is pulled, not `ping_timeout` (5 s) plus the
/// grace: libp2p's ping forgives a first failure (the 5-s timeout of the ping in flight),
/// and the next ping opens a new stream, whose negotiation fails only at libp2p's 10-s
/// substream timeout; the connection closes then, and the grace (1 s here) starts. Hence the
/// bound of 25 s on the purge.
#[test]
fn a_host_whose_link_goes_down_is_purged_then_heals() {
    // Bounds of its waits: each child's start (10 s), the first convergence (20 s), and per
    // round the purge (25 s), the hold (1 s) and the heal (30 s); with room to spare.
    let limit = Duration::from_secs(90 + 60 * netns_rounds() as u64);
    support::netns::as_root(
        "a_host_whose_link_goes_down_is_purged_then_heals",
        limit,
        || support::block_on(link_down_in_namespaces()),
    );
}

/// Link-down rounds: [`NETNS_ROUNDS`], or `PROCGROUPS_SOAK_NETNS_ROUNDS`.
fn netns_rounds() -> usize {
    std::env::var("PROCGROUPS_SOAK_NETNS_ROUNDS")
        .ok()
        .map_or(NETNS_ROUNDS, |s| {
            s.trim()
                .parse()
                .unwrap_or_else(|e| panic!("PROCGROUPS_SOAK_NETNS_ROUNDS={s:?}: {e}"))
        })
}

/// On a current-thread runtime: the children answer through blocking calls.
async fn link_down_in_namespaces() {
    use support::child::{Child, ChildSpec, GROUP, each_sees, union};
    use support::netns::{Lan, ip};

    let seed = seed();
    eprintln!("netns soak seed {seed} (replay: PROCGROUPS_SOAK_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let lan = Lan::create(3); // deletes the namespaces of dead earlier runs
    let mut children: Vec<Child> = lan
        .hosts
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            Child::spawn(ChildSpec {
                processes: NETNS_PROCESSES,
                node_down_grace: NETNS_GRACE,
                ..ChildSpec::on_host(format!("host{} ({ns})", i + 1), ns)
            })
        })
        .collect();
    let locals: Vec<Vec<Pid>> = children
        .iter_mut()
        .map(|c| c.local_members(GROUP))
        .collect();
    let lists: Vec<&[Pid]> = locals.iter().map(Vec::as_slice).collect();
    let everyone = union(&lists);
    let all = vec![everyone.clone(); children.len()];
    let took = eventually("the first convergence", Duration::from_secs(20), || {
        each_sees(children.iter_mut().zip(&all))
    })
    .await;
    eprintln!("netns soak: first convergence by mDNS in {took:.1?}");

    let rounds = netns_rounds();
    let mut figures = Vec::new();
    for round in 1..=rounds {
        let h = rng.gen_range(0..children.len());
        let port = format!("vb{}", h + 1);
        let others: Vec<&[Pid]> = (0..children.len())
            .filter(|i| *i != h)
            .map(|i| locals[i].as_slice())
            .collect();
        let without_h = union(&others);
        let split: Vec<Vec<Pid>> = (0..children.len())
            .map(|i| {
                if i == h {
                    locals[h].clone()
                } else {
                    without_h.clone()
                }
            })
            .collect();

        let down_at = Instant::now();
        ip(&["-n", &lan.bridge, "link", "set", &port, "down"]);
        let purged = eventually(
            &format!(
                "round {round}: host{} and the others purge each other",
                h + 1
            ),
            Duration::from_secs(25),
            || each_sees(children.iter_mut().zip(&split)),
        )
        .await;
        assert!(
            down_at.elapsed() >= NETNS_GRACE,
            "round {round}: purged {:?} after the link went down, before the grace",
            down_at.elapsed()
        );
        // Sometimes a little longer, purged on both sides.
        let extra = Duration::from_millis(rng.gen_range(0..1000));
        holds_for(
            &format!("round {round}: purged on both sides while the link is down"),
            extra,
            || each_sees(children.iter_mut().zip(&split)),
        )
        .await;
        let up_at = Instant::now();
        ip(&["-n", &lan.bridge, "link", "set", &port, "up"]);
        let healed = eventually(
            &format!(
                "round {round}: everyone sees everyone once host{}'s link is up",
                h + 1
            ),
            Duration::from_secs(30),
            || each_sees(children.iter_mut().zip(&all)),
        )
        .await;
        eprintln!(
            "netns soak round {round}: host{} link down {:.1?}; purged on both sides \
             {purged:.1?} after the link went down; converged {healed:.1?} after it came up",
            h + 1,
            up_at.duration_since(down_at),
        );
        figures.push((purged, healed));
    }
    eprintln!(
        "netns soak seed {seed}: {rounds} rounds, (purge, heal) times {figures:.1?}; whole \
         test {:.1?}",
        started.elapsed()
    );
    drop(children);
    lan.delete();
}
