//! A cluster on one machine: N nodes in N OS processes join groups, converge on one view of
//! the membership, and broadcast to each other; the demo checks every message arrives exactly
//! once and in order.
//!
//! ```sh
//! cargo run --example cluster -- --nodes 5                 # the nodes find each other by mDNS
//! cargo run --example cluster -- --nodes 5 --no-mdns       # no multicast: they dial node 0
//! cargo run --example cluster -- --nodes 3 --config examples/procgroups.toml
//! cargo run --example cluster -- --nodes 4 --processes 50 --groups 10 --broadcasts 200 --seed 7
//! cargo run --example cluster -- --nodes 3 --no-mdns --metrics 127.0.0.1:9100 --hold 60s
//! ```
//!
//! `--no-mdns` is the flag for any host where multicast is unwanted (CI, shared machines, a
//! laptop on someone else's network): each node then listens on `/ip4/127.0.0.1/tcp/0` only
//! and dials node 0, whose address the demo reads first; the nodes meet the others through it.
//! With mDNS on (the default) every node listens on all interfaces and they find each other on
//! the LAN by themselves.
//!
//! This process is the coordinator; it hosts no node. It re-executes its own binary once per
//! node (with a hidden `--child INDEX`) and talks to each over the child's stdin (commands)
//! and stdout (reports), one JSON object a line; the children's stderr is this process's. A
//! child exits when its stdin closes, so none outlives the coordinator, and the coordinator
//! kills any that is still there when it ends.
//!
//! The run, in phases:
//! 1. **connect**: every node waits to see the N-1 others connected;
//! 2. **workload**: every node spawns `--processes` processes; each listens for messages, then
//!    joins `all` and one to three random groups `g0`..`g{groups-1}` (a group drawn twice is
//!    joined twice: membership is counted); then some leave one of their `gN`, a few leave
//!    `all`, and some exit. Each node reports its own local memberships; their union is the
//!    expected view;
//! 3. **converge**: every node's view of the scope `cluster:work` must equal the expected one
//!    (per group: the number of member slots and a digest of their pids). The time to converge
//!    is measured from the end of the workload to the last membership event that made the
//!    slowest node's view right;
//! 4. **broadcast**: every node broadcasts `--broadcasts` messages to `all` from one sender
//!    process, each carrying (sender node, sequence number). Every process in `all` checks
//!    that each sender's sequence reaches it exactly once and in order, and a process not in
//!    `all` that receives anything counts it as unexpected;
//! 5. **summary**: the time to converge and the message counts. The exit status is 0 only if
//!    the views converged and no message was lost, duplicated, reordered or unexpected.
//!
//! While it runs, the coordinator shows each node's view (member slots and groups of the
//! scope) and the messages it received: redrawn in place about every 250 ms on a terminal,
//! a plain line a second in a pipe. `--timeout` bounds the whole run.
//!
//! The scope `cluster:work` runs the default [`ScopeConfig`], or the `cluster:work` entry of a
//! registry file given with `--config` (`examples/procgroups.toml` has one).
//!
//! `--metrics IP:PORT` has node `i` serve `/metrics` (Prometheus) and `/health` on `PORT + i`
//! (or on a port of its own with port 0); the addresses are printed, and `--hold 60s` keeps
//! the nodes up that long after the run, to scrape them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

mod common;
use common::child::{self, ChildProcess};
use procgroups::{
    DEFAULT_MAILBOX_CAPACITY, ErrorKind, Inbox, Instance, Members, Multiaddr, Node, Pid, Process,
    ScopeConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The scope of the demo.
const SCOPE: &str = "cluster:work";
/// The group every process joins and every broadcast goes to.
const ALL: &str = "all";
/// The topic of the broadcasts.
const TOPIC: &str = "seq";
/// How often a child reports its state.
const STATUS_EVERY: Duration = Duration::from_millis(100);
/// How often the live view is redrawn on a terminal, and printed in a pipe.
const DRAW_TTY: Duration = Duration::from_millis(250);
const DRAW_PIPE: Duration = Duration::from_secs(1);
/// After the last expected delivery, how long the coordinator keeps listening for late
/// duplicates before it asks for the final counts.
const LINGER: Duration = Duration::from_millis(300);

#[derive(Parser, Debug, Clone)]
#[command(
    about = "procgroups on one machine: N nodes in N OS processes join groups, converge and \
             broadcast; exits 0 only if every view converged and every message arrived exactly \
             once, in order"
)]
struct Args {
    /// Nodes, one OS process each.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=64))]
    nodes: u32,
    /// No mDNS (no multicast at all): the nodes listen on 127.0.0.1 and dial node 0. Use it
    /// wherever multicast is unwanted.
    #[arg(long)]
    no_mdns: bool,
    /// A registry file (TOML or YAML) with an entry for the scope `cluster:work`; default: the
    /// default scope configuration.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Processes spawned per node.
    #[arg(long, default_value_t = 20)]
    processes: usize,
    /// Groups `g0`.. besides `all`.
    #[arg(long, default_value_t = 8)]
    groups: usize,
    /// Broadcasts to `all` per node.
    #[arg(long, default_value_t = 100)]
    broadcasts: u64,
    /// Seed of the workload (default: from the clock; printed in the summary).
    #[arg(long)]
    seed: Option<u64>,
    /// Bound on the whole run, e.g. `60s`, `90`, `2m`, `500ms`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
    /// Serve `/metrics` and `/health`: node i on this IP and port + i (port 0: any port).
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<SocketAddr>,
    /// Keep the nodes up this long after the run (to scrape their metrics), e.g. `60s`.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    hold: Duration,
    /// Internal: run node INDEX (the coordinator starts the nodes this way).
    #[arg(long, hide = true, value_name = "INDEX")]
    child: Option<u32>,
    /// Internal: the address a child dials (node 0's).
    #[arg(long, hide = true)]
    dial: Option<Multiaddr>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit (ms, s, m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.child {
        Some(index) => child_main(args, index),
        None => match coordinator(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("cluster: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn err(msg: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
    msg.into().into()
}

/// Wall-clock nanoseconds: comparable between the processes of one machine.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

// --------------------------------------------------------------------------- the protocol

/// Per group: (member slots, the wrapping sum of [`pid_hash`] over the slots). The sum does
/// not depend on the order of the slots, so the expected view is the sum of the nodes' local
/// digests.
type Digest = BTreeMap<String, (u64, u64)>;

/// Coordinator to child.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
enum Command {
    Workload,
    Broadcast,
    Report,
    Quit,
}

/// The message counts of one node's processes.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Counts {
    /// First deliveries to processes in `all`.
    delivered: u64,
    /// Deliveries of a (sender, seq) the process had already received.
    duplicated: u64,
    /// First deliveries that did not come next in their sender's sequence.
    out_of_order: u64,
    /// Messages received by processes that are not in `all`.
    unexpected: u64,
    /// Messages dropped at full inboxes (counted by the library).
    inbox_dropped: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.delivered += o.delivered;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.unexpected += o.unexpected;
        self.inbox_dropped += o.inbox_dropped;
    }
}

/// Child to coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Report {
    /// The node is up.
    Ready {
        peer: String,
        addrs: Vec<String>,
        /// Where it serves `/metrics`, with `--metrics`.
        metrics: Option<String>,
    },
    /// Every `STATUS_EVERY`.
    Status {
        connected: usize,
        view: Digest,
        /// When the node's view last changed (wall clock, ns).
        last_change_ns: u64,
        counts: Counts,
    },
    /// The workload is done: this node's own memberships.
    Local {
        local: Digest,
        /// Processes alive, and those of them in `all`.
        alive: usize,
        in_all: usize,
        done_ns: u64,
    },
    /// The broadcasts are out: how many, and the member slots they targeted.
    Sent { broadcasts: u64, targets: u64 },
    /// The final counts.
    Final { counts: Counts },
    /// The node shut down and is about to exit.
    Bye,
    /// Something went wrong; the child exits.
    Error { message: String },
}

/// The payload of a broadcast.
#[derive(Debug, Serialize, Deserialize)]
struct Seq {
    node: u32,
    seq: u64,
}

/// A stable hash of a pid (FNV-1a over its bytes, then a 64-bit finalizer so that sums of
/// hashes mix well).
fn pid_hash(pid: &Pid) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let node = pid.node().to_bytes();
    for b in node.iter().chain(pid.id().to_le_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn digest_of(members: &Members) -> (u64, u64) {
    let sum = members
        .iter()
        .fold(0u64, |acc, pid| acc.wrapping_add(pid_hash(&pid)));
    (members.len() as u64, sum)
}

fn slots(d: &Digest) -> u64 {
    d.values().map(|(n, _)| n).sum()
}

// ------------------------------------------------------------------------------ the child

fn child_main(args: Args, index: u32) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&Report::Error {
                message: format!("node {index}: tokio runtime: {e}"),
            });
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(child(&args, index)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&Report::Error {
                message: format!("node {index}: {e}"),
            });
            ExitCode::FAILURE
        }
    }
}

/// One line to the coordinator.
fn say(report: &Report) {
    if let Ok(line) = serde_json::to_string(report) {
        child::say(&line);
    }
}

/// Builds a node of the demo: the scope `cluster:work` (from `--config` or the default
/// configuration), mDNS unless `--no-mdns` (then loopback only), inboxes big enough for every
/// message of the run (a full inbox drops, and the demo is about the network).
async fn build_node(args: &Args) -> Res<Node> {
    let mut builder = Node::builder().mdns(!args.no_mdns);
    let config = match &args.config {
        Some(path) => common::scope_from_file(path, SCOPE).map_err(err)?,
        None => ScopeConfig::default(),
    };
    builder = builder.scope(SCOPE, config);
    if args.no_mdns {
        builder = builder.listen_on("/ip4/127.0.0.1/tcp/0".parse()?);
    }
    let everything = (args.broadcasts as usize).saturating_mul(args.nodes as usize);
    let node = builder
        .mailbox_capacity(everything.max(DEFAULT_MAILBOX_CAPACITY))
        .build()
        .await?;
    Ok(node)
}

/// A process of the workload.
struct Worker {
    process: Process,
    pg: Instance,
    inbox: Option<Inbox>,
    /// The groups it is in, once per slot.
    groups: Vec<String>,
}

async fn child(args: &Args, index: u32) -> Res<()> {
    // Commands from the coordinator; when it goes away (stdin closes), so does this node.
    let mut commands = child::stdin_lines()?;

    let node = build_node(args).await?;
    let metrics = match args.metrics {
        Some(base) => {
            let port = match base.port() {
                0 => 0,
                port => port
                    .checked_add(u16::try_from(index)?)
                    .ok_or_else(|| err("--metrics: port out of range"))?,
            };
            let bound = common::serve_metrics(SocketAddr::new(base.ip(), port), &node)
                .map_err(|e| err(format!("--metrics: {e}")))?;
            Some(format!("http://{bound}/metrics"))
        }
        None => None,
    };
    if let Some(addr) = &args.dial {
        node.dial(addr.clone())?;
    }
    let observer = node.spawn_process();
    let view = observer.open(SCOPE)?;

    // The time of the view's last change, from a whole-scope subscription. A full buffer
    // drops events, but the drainer then runs later still, so the time stays an upper bound.
    let last_change = Arc::new(AtomicU64::new(now_ns()));
    let (mut sub, _) = view.events()?;
    let lc = last_change.clone();
    tokio::spawn(async move {
        while sub.recv().await.is_some() {
            while sub.try_recv().is_some() {}
            lc.store(now_ns(), Ordering::Relaxed);
        }
    });

    say(&Report::Ready {
        peer: node.peer_id().to_string(),
        addrs: node.listen_addrs().iter().map(|a| a.to_string()).collect(),
        metrics,
    });

    let seed = args.seed.unwrap_or(0) ^ u64::from(index).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut rng = StdRng::seed_from_u64(seed);
    let counters: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let mut workers: Vec<Worker> = Vec::new();
    let mut sender: Option<Process> = None;
    let (failed_tx, mut failed) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut ticker = tokio::time::interval(STATUS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            line = commands.recv() => {
                let Some(line) = line else { break };
                let command: Command = serde_json::from_str(&line)
                    .map_err(|e| err(format!("bad command {line:?}: {e}")))?;
                match command {
                    Command::Workload => {
                        workers = workload(args, &node, &mut rng)?;
                        let mut local = Digest::new();
                        for group in view.which_local_groups()?.iter() {
                            local.insert(group.to_string(), digest_of(&view.get_local_members(group)?));
                        }
                        let done_ns = now_ns();
                        let in_all = receive(&mut workers, &counters);
                        say(&Report::Local { local, alive: workers.len(), in_all, done_ns });
                    }
                    Command::Broadcast => {
                        let process = node.spawn_process();
                        let pg = process.open(SCOPE)?;
                        sender = Some(process);
                        let broadcasts = args.broadcasts;
                        let failed_tx = failed_tx.clone();
                        tokio::spawn(async move {
                            match broadcast(&pg, index, broadcasts).await {
                                Ok(targets) => say(&Report::Sent { broadcasts, targets }),
                                Err(e) => { failed_tx.send(e.to_string()).ok(); }
                            }
                        });
                    }
                    Command::Report => say(&Report::Final { counts: counts(&counters, &workers) }),
                    Command::Quit => break,
                }
            }
            Some(message) = failed.recv() => return Err(err(message)),
            _ = ticker.tick() => {
                let mut digest = Digest::new();
                for group in view.which_groups()?.iter() {
                    digest.insert(group.to_string(), digest_of(&view.get_members(group)?));
                }
                say(&Report::Status {
                    connected: node.connected_peers().len(),
                    view: digest,
                    last_change_ns: last_change.load(Ordering::Relaxed),
                    counts: counts(&counters, &workers),
                });
            }
        }
    }
    drop(workers);
    drop(sender);
    drop(view);
    drop(observer);
    tokio::time::timeout(Duration::from_secs(5), node.shutdown())
        .await
        .ok();
    say(&Report::Bye);
    Ok(())
}

/// Spawns the processes, joins, leaves and exits; returns the processes alive.
fn workload(args: &Args, node: &Node, rng: &mut StdRng) -> Res<Vec<Worker>> {
    let mut workers = Vec::with_capacity(args.processes);
    for _ in 0..args.processes {
        let process = node.spawn_process();
        let inbox = process.listen(TOPIC); // listen before joining
        let pg = process.open(SCOPE)?;
        let mut groups = vec![ALL.to_owned()];
        if args.groups > 0 {
            for _ in 0..rng.gen_range(1..=3) {
                groups.push(format!("g{}", rng.gen_range(0..args.groups)));
            }
        }
        pg.join(groups.as_slice())?;
        workers.push(Worker {
            process,
            pg,
            inbox: Some(inbox),
            groups,
        });
    }
    for w in &mut workers {
        // A quarter leave one of their groups gN (one slot of it).
        if w.groups.len() > 1 && rng.gen_bool(0.25) {
            let at = rng.gen_range(1..w.groups.len());
            let group = w.groups.remove(at);
            w.pg.leave(group.as_str())?;
        }
        // A few leave `all`: they must receive nothing.
        if rng.gen_bool(0.1) {
            w.groups.retain(|g| g != ALL);
            w.pg.leave(ALL)?;
        }
    }
    // Some exit: every slot of theirs goes at once.
    workers.retain(|_| !rng.gen_bool(0.15));
    Ok(workers)
}

/// Starts a reader per process; returns how many are in `all`.
fn receive(workers: &mut [Worker], counters: &Arc<[AtomicU64; 4]>) -> usize {
    let mut in_all = 0;
    for w in workers.iter_mut() {
        let Some(mut inbox) = w.inbox.take() else {
            continue;
        };
        let member = w.groups.iter().any(|g| g == ALL);
        in_all += usize::from(member);
        let counters = counters.clone();
        tokio::spawn(async move {
            let [delivered, duplicated, out_of_order, unexpected] = &*counters;
            let mut next: HashMap<u32, u64> = HashMap::new();
            let mut seen: HashSet<(u32, u64)> = HashSet::new();
            while let Some(message) = inbox.recv().await {
                if !member {
                    unexpected.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Ok(Seq { node, seq }) = message.decode::<Seq>() else {
                    unexpected.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if !seen.insert((node, seq)) {
                    duplicated.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                delivered.fetch_add(1, Ordering::Relaxed);
                let expected = next.entry(node).or_insert(0);
                if seq != *expected {
                    out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                *expected = (*expected).max(seq + 1);
            }
        });
    }
    in_all
}

fn counts(counters: &[AtomicU64; 4], workers: &[Worker]) -> Counts {
    let [delivered, duplicated, out_of_order, unexpected] =
        counters.each_ref().map(|c| c.load(Ordering::Relaxed));
    Counts {
        delivered,
        duplicated,
        out_of_order,
        unexpected,
        inbox_dropped: workers.iter().map(|w| w.process.dropped()).sum(),
    }
}

/// Broadcasts `n` sequence numbers to `all`; returns the member slots targeted. A full
/// queue to the network (`Unavailable`) is backpressure: wait a little and try again.
async fn broadcast(pg: &Instance, node: u32, n: u64) -> Res<u64> {
    let mut targets = 0u64;
    for seq in 0..n {
        let started = Instant::now();
        loop {
            match pg.broadcast(ALL, TOPIC, &Seq { node, seq }) {
                Ok(delivery) => {
                    targets += delivery.slots() as u64;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Unavailable => {
                    if started.elapsed() > Duration::from_secs(10) {
                        return Err(err(format!(
                            "broadcast {seq}: still refused after 10 s: {e}"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => return Err(err(format!("broadcast {seq}: {e}"))),
            }
        }
        if seq % 16 == 15 {
            tokio::task::yield_now().await;
        }
    }
    Ok(targets)
}

// ------------------------------------------------------------------------ the coordinator

/// What a child said, or that its stdout closed.
enum Line {
    Report(Report),
    Other(String),
    Closed,
}

/// The children, killed when this is dropped, however the coordinator ends.
struct Children {
    procs: Vec<ChildProcess>,
    /// Each child's reader thread sends its lines here.
    lines: mpsc::Sender<(u32, Line)>,
}

impl Children {
    fn spawn(&mut self, args: &Args, index: u32, seed: u64, dial: Option<&str>) -> Res<()> {
        let mut cmd = child::own_command(["--child", &index.to_string()])?;
        cmd.args(["--nodes", &args.nodes.to_string()])
            .args(["--processes", &args.processes.to_string()])
            .args(["--groups", &args.groups.to_string()])
            .args(["--broadcasts", &args.broadcasts.to_string()])
            .args(["--seed", &seed.to_string()]);
        if args.no_mdns {
            cmd.arg("--no-mdns");
        }
        if let Some(path) = &args.config {
            cmd.arg("--config").arg(path);
        }
        if let Some(metrics) = args.metrics {
            cmd.args(["--metrics", &metrics.to_string()]);
        }
        if let Some(addr) = dial {
            cmd.args(["--dial", addr]);
        }
        let lines = self.lines.clone();
        let child = ChildProcess::spawn(format!("node-{index}"), cmd, move |line| {
            let parsed = match line {
                Some(line) => match serde_json::from_str::<Report>(&line) {
                    Ok(report) => Line::Report(report),
                    Err(_) => Line::Other(line),
                },
                None => Line::Closed,
            };
            lines.send((index, parsed)).is_ok()
        })
        .map_err(|e| err(format!("starting node {index}: {e}")))?;
        self.procs.push(child);
        Ok(())
    }

    fn send(&mut self, index: usize, command: &Command) -> Res<()> {
        let line = serde_json::to_string(command)?;
        self.procs[index]
            .send(&line)
            .map_err(|e| err(format!("node {index}: {e}")))
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        // Closing stdin makes a child exit: all at once, then each is waited for (up to
        // `child::EXIT_GRACE`) and killed if still there.
        for child in &mut self.procs {
            child.close_stdin();
        }
        self.procs.clear();
    }
}

/// What the coordinator knows of one node.
#[derive(Default)]
struct NodeState {
    addrs: Option<Vec<String>>,
    metrics: Option<String>,
    connected: usize,
    /// The view of its latest status.
    view: Option<Digest>,
    /// Whether that status came after its workload report (only those count for convergence).
    fresh: bool,
    last_change_ns: u64,
    counts: Counts,
    /// Its workload report: local memberships, processes alive and in `all`, end time.
    local: Option<(Digest, usize, usize, u64)>,
    /// Broadcasts sent and slots targeted.
    sent: Option<(u64, u64)>,
    final_counts: Option<Counts>,
    bye: bool,
}

struct Coordinator {
    args: Args,
    children: Children,
    lines: mpsc::Receiver<(u32, Line)>,
    nodes: Vec<NodeState>,
    started: Instant,
    phase: &'static str,
    tty: bool,
    next_draw: Instant,
    /// Lines of the last frame drawn on the terminal.
    drawn: usize,
    expected: Option<Digest>,
    /// Slots targeted by every broadcast, summed.
    expected_deliveries: u64,
}

impl Coordinator {
    fn n(&self) -> usize {
        self.nodes.len()
    }

    fn send_all(&mut self, command: &Command) -> Res<()> {
        for i in 0..self.n() {
            self.children.send(i, command)?;
        }
        Ok(())
    }

    /// Handles the children's lines and redraws until `done` holds (`true`) or `deadline`
    /// passes (`false`). A child's error or unexpected exit is an error.
    fn wait(&mut self, deadline: Instant, done: impl Fn(&Self) -> bool) -> Res<bool> {
        loop {
            if done(self) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            if now >= self.next_draw {
                self.draw();
                self.next_draw = now + if self.tty { DRAW_TTY } else { DRAW_PIPE };
            }
            let until = deadline.min(self.next_draw);
            match self
                .lines
                .recv_timeout(until.saturating_duration_since(now))
            {
                Ok((index, line)) => self.handle(index as usize, line)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(err("every node is gone"));
                }
            }
        }
    }

    fn handle(&mut self, i: usize, line: Line) -> Res<()> {
        let node = &mut self.nodes[i];
        match line {
            Line::Report(Report::Ready { addrs, metrics, .. }) => {
                node.addrs = Some(addrs);
                node.metrics = metrics;
            }
            Line::Report(Report::Status {
                connected,
                view,
                last_change_ns,
                counts,
            }) => {
                node.connected = connected;
                node.last_change_ns = last_change_ns;
                node.counts = counts;
                node.view = Some(view);
                node.fresh = node.local.is_some();
            }
            Line::Report(Report::Local {
                local,
                alive,
                in_all,
                done_ns,
            }) => node.local = Some((local, alive, in_all, done_ns)),
            Line::Report(Report::Sent {
                broadcasts,
                targets,
            }) => node.sent = Some((broadcasts, targets)),
            Line::Report(Report::Final { counts }) => {
                node.counts = counts;
                node.final_counts = Some(counts);
            }
            Line::Report(Report::Bye) => node.bye = true,
            Line::Report(Report::Error { message }) => return Err(err(message)),
            Line::Other(text) => eprintln!("node {i}: {text}"),
            Line::Closed if node.bye => {}
            Line::Closed => {
                return Err(err(format!(
                    "node {i} exited unexpectedly (its messages, if any, are above)"
                )));
            }
        }
        Ok(())
    }

    fn all(&self, f: impl Fn(&NodeState) -> bool) -> bool {
        self.nodes.iter().all(f)
    }

    fn converged(&self) -> bool {
        match &self.expected {
            Some(expected) => self.all(|n| n.fresh && n.view.as_ref() == Some(expected)),
            None => false,
        }
    }

    fn received(&self) -> Counts {
        let mut total = Counts::default();
        for n in &self.nodes {
            total.add(&n.counts);
        }
        total
    }

    /// The live view: a frame redrawn in place on a terminal, one line in a pipe.
    fn draw(&mut self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let view = |n: &NodeState| {
            n.view
                .as_ref()
                .map_or_else(|| "-".to_owned(), |v| format!("{}/{}", slots(v), v.len()))
        };
        let expected = self
            .expected
            .as_ref()
            .map_or_else(|| "-".to_owned(), |v| format!("{}/{}", slots(v), v.len()));
        let received = self.received().delivered;
        let mut out = std::io::stdout().lock();
        if !self.tty {
            let views: Vec<String> = self.nodes.iter().map(view).collect();
            writeln!(
                out,
                "[{elapsed:6.1}s] {:<12} views (slots/groups) {} | expected {expected} | received {received}/{}",
                self.phase,
                views.join(" "),
                self.expected_deliveries
            )
            .ok();
            out.flush().ok();
            return;
        }
        let mut frame = vec![
            format!(
                "{SCOPE}  {} nodes  {:<12} {elapsed:6.1} s",
                self.n(),
                self.phase
            ),
            format!(
                "{:>6} {:>6} {:>8} {:>7} {:>10}  {}",
                "node", "peers", "slots", "groups", "received", "metrics"
            ),
        ];
        for (i, n) in self.nodes.iter().enumerate() {
            let (slots, groups) = n.view.as_ref().map_or(("-".into(), "-".into()), |v| {
                (slots(v).to_string(), v.len().to_string())
            });
            frame.push(format!(
                "{i:>6} {:>6} {slots:>8} {groups:>7} {:>10}  {}",
                n.connected,
                n.counts.delivered,
                n.metrics.as_deref().unwrap_or("")
            ));
        }
        let (es, eg) = self
            .expected
            .as_ref()
            .map_or(("-".into(), "-".into()), |v| {
                (slots(v).to_string(), v.len().to_string())
            });
        frame.push(format!(
            "{:>6} {:>6} {es:>8} {eg:>7} {:>10}",
            "want", "", self.expected_deliveries
        ));
        if self.drawn > 0 {
            // Up to the first line of the last frame, and clear from there down.
            write!(out, "\x1b[{}F\x1b[J", self.drawn).ok();
        }
        for line in &frame {
            writeln!(out, "{line}").ok();
        }
        out.flush().ok();
        self.drawn = frame.len();
    }

    /// Why the views differ from the expected one, node by node (a few groups each).
    fn differences(&self) -> Vec<String> {
        let Some(expected) = &self.expected else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(view) = &n.view else {
                out.push(format!("node {i}: no view reported"));
                continue;
            };
            let groups: BTreeMap<&String, ()> = expected
                .keys()
                .chain(view.keys())
                .map(|g| (g, ()))
                .collect();
            let diffs: Vec<String> = groups
                .keys()
                .filter_map(|g| {
                    let (want, got) = (expected.get(*g), view.get(*g));
                    (want != got).then(|| {
                        let count = |d: Option<&(u64, u64)>| d.map_or(0, |(n, _)| *n);
                        if count(want) == count(got) {
                            format!("{g}: {} slots but other pids", count(got))
                        } else {
                            format!("{g}: {} of {} slots", count(got), count(want))
                        }
                    })
                })
                .collect();
            if !diffs.is_empty() {
                let more = diffs.len().saturating_sub(4);
                let mut line = format!("node {i}: {}", diffs[..diffs.len().min(4)].join("; "));
                if more > 0 {
                    line.push_str(&format!("; {more} more groups differ"));
                }
                out.push(line);
            }
        }
        out
    }
}

/// The figures of a run.
#[derive(Default)]
struct Outcome {
    timed_out: Option<&'static str>,
    connected_in: Option<Duration>,
    converged_in: Option<Duration>,
    broadcasts: u64,
    counts: Counts,
    counts_final: bool,
}

fn coordinator(args: Args) -> Res<ExitCode> {
    if let Some(path) = &args.config {
        // Checked before any node starts, for one clear message.
        common::scope_from_file(path, SCOPE).map_err(|e| err(format!("--config: {e}")))?;
    }
    let seed = args
        .seed
        .unwrap_or_else(|| now_ns() ^ u64::from(std::process::id()));
    let n = args.nodes as usize;
    let started = Instant::now();
    // The last few seconds of the budget are for the final counts and the goodbyes.
    let hard_deadline = started + args.timeout;
    let deadline = hard_deadline - (args.timeout / 4).min(Duration::from_secs(4));
    let (tx, lines) = mpsc::channel();
    let mut c = Coordinator {
        children: Children {
            procs: Vec::new(),
            lines: tx,
        },
        lines,
        nodes: (0..n).map(|_| NodeState::default()).collect(),
        started,
        phase: "starting",
        tty: std::io::stdout().is_terminal(),
        next_draw: started,
        drawn: 0,
        expected: None,
        expected_deliveries: 0,
        args,
    };
    let mode = if c.args.no_mdns {
        "mDNS off, dialing node 0 over loopback"
    } else {
        "mDNS on"
    };
    println!(
        "cluster: {n} nodes ({mode}), {} processes, {} groups and {} broadcasts per node, seed {seed}",
        c.args.processes, c.args.groups, c.args.broadcasts
    );
    let mut outcome = Outcome::default();
    let result = run(&mut c, seed, deadline, hard_deadline, &mut outcome);
    if let Err(e) = result {
        if c.drawn > 0 || !c.tty {
            println!();
        }
        return Err(e);
    }
    c.phase = "done";
    c.draw();
    Ok(summary(&c, seed, &outcome))
}

fn run(
    c: &mut Coordinator,
    seed: u64,
    deadline: Instant,
    hard_deadline: Instant,
    outcome: &mut Outcome,
) -> Res<()> {
    let n = c.n();
    let args = c.args.clone();
    c.children.spawn(&args, 0, seed, None)?;
    let dial = if args.no_mdns {
        if !c.wait(deadline, |c| c.nodes[0].addrs.is_some())? {
            outcome.timed_out = Some("starting node 0");
            return Ok(());
        }
        let addrs = c.nodes[0].addrs.clone().unwrap_or_default();
        let addr = addrs
            .iter()
            .find(|a| a.contains("/tcp/"))
            .or(addrs.first())
            .cloned()
            .ok_or_else(|| err("node 0 listens on no address"))?;
        Some(addr)
    } else {
        None
    };
    for i in 1..n {
        c.children.spawn(&args, i as u32, seed, dial.as_deref())?;
    }
    if !c.wait(deadline, |c| c.all(|n| n.addrs.is_some()))? {
        outcome.timed_out = Some("starting the nodes");
        return Ok(());
    }

    c.phase = "connecting";
    let connecting = Instant::now();
    if !c.wait(deadline, |c| c.all(|node| node.connected + 1 >= n))? {
        outcome.timed_out = Some("connecting (every node to see the others)");
        return Ok(());
    }
    outcome.connected_in = Some(connecting.elapsed());

    c.phase = "workload";
    c.send_all(&Command::Workload)?;
    if !c.wait(deadline, |c| c.all(|n| n.local.is_some()))? {
        outcome.timed_out = Some("the workload");
        return Ok(());
    }
    let mut expected = Digest::new();
    let mut workload_end = 0;
    for node in &c.nodes {
        let Some((local, _, _, done_ns)) = &node.local else {
            continue;
        };
        workload_end = workload_end.max(*done_ns);
        for (group, (count, sum)) in local {
            let e = expected.entry(group.clone()).or_insert((0, 0));
            e.0 += count;
            e.1 = e.1.wrapping_add(*sum);
        }
    }
    c.expected = Some(expected);

    c.phase = "converging";
    if !c.wait(deadline, Coordinator::converged)? {
        outcome.timed_out = Some("converging");
        return Ok(());
    }
    let last_change = c.nodes.iter().map(|n| n.last_change_ns).max().unwrap_or(0);
    outcome.converged_in = Some(Duration::from_nanos(
        last_change.saturating_sub(workload_end),
    ));

    c.phase = "broadcasting";
    c.send_all(&Command::Broadcast)?;
    let sent = c.wait(deadline, |c| c.all(|n| n.sent.is_some()))?;
    outcome.broadcasts = c.nodes.iter().filter_map(|n| n.sent).map(|s| s.0).sum();
    c.expected_deliveries = c.nodes.iter().filter_map(|n| n.sent).map(|s| s.1).sum();
    if !sent {
        outcome.timed_out = Some("broadcasting");
    } else {
        c.phase = "delivering";
        let want = c.expected_deliveries;
        if c.wait(deadline, |c| c.received().delivered >= want)? {
            // Late duplicates would show now.
            c.wait(Instant::now() + LINGER, |_| false)?;
        } else {
            outcome.timed_out = Some("delivering");
        }
    }

    c.phase = "counting";
    c.send_all(&Command::Report)?;
    outcome.counts_final = c.wait(hard_deadline, |c| c.all(|n| n.final_counts.is_some()))?;
    outcome.counts = c.received();

    if !args.hold.is_zero() {
        c.phase = "holding";
        if !c.tty {
            println!(
                "holding the nodes for {:?} (metrics: {})",
                args.hold,
                c.nodes
                    .iter()
                    .filter_map(|n| n.metrics.as_deref())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        c.wait(Instant::now() + args.hold, |_| false)?;
    }

    c.phase = "stopping";
    c.send_all(&Command::Quit)?;
    // The hold is not part of the run's budget: the goodbyes still get a few seconds.
    let hard_deadline = hard_deadline.max(Instant::now() + Duration::from_secs(4));
    c.wait(hard_deadline, |c| c.all(|n| n.bye))?;
    Ok(())
}

fn summary(c: &Coordinator, seed: u64, o: &Outcome) -> ExitCode {
    let secs = |d: Option<Duration>| d.map(|d| format!("{:.3} s", d.as_secs_f64()));
    let expected = c.expected.as_ref();
    let alive: usize = c
        .nodes
        .iter()
        .filter_map(|n| n.local.as_ref())
        .map(|l| l.1)
        .sum();
    let in_all: usize = c
        .nodes
        .iter()
        .filter_map(|n| n.local.as_ref())
        .map(|l| l.2)
        .sum();
    let k = &o.counts;
    let lost = c.expected_deliveries.saturating_sub(k.delivered);
    let converged = o.converged_in.is_some();
    let mut problems = Vec::new();
    if let Some(phase) = o.timed_out {
        problems.push(format!("timed out ({:?}) while {phase}", c.args.timeout));
    }
    if !converged {
        problems.push("the views did not converge".to_owned());
    }
    for (what, count) in [
        ("lost", lost),
        ("duplicated", k.duplicated),
        ("out of order", k.out_of_order),
        ("unexpected", k.unexpected),
    ] {
        if count > 0 {
            problems.push(format!("{count} messages {what}"));
        }
    }
    if converged && c.expected_deliveries == 0 && c.args.broadcasts > 0 && in_all > 0 {
        problems.push("the broadcasts targeted nobody".to_owned());
    }
    if !o.counts_final && o.broadcasts > 0 {
        problems.push("some nodes did not report their final counts".to_owned());
    }

    println!("summary");
    println!("  nodes: {}", c.n());
    println!("  seed: {seed}");
    println!(
        "  connected: {}",
        secs(o.connected_in).map_or("no".into(), |t| format!("yes, in {t}"))
    );
    if let Some(e) = expected {
        println!(
            "  workload: {alive} processes alive ({in_all} in {ALL}), {} member slots in {} groups",
            slots(e),
            e.len()
        );
    }
    match secs(o.converged_in) {
        Some(t) => println!("  converged: yes, {t} after the end of the workload"),
        None => {
            println!("  converged: no");
            for line in c.differences() {
                println!("    {line}");
            }
        }
    }
    println!("  messages sent: {}", o.broadcasts);
    println!("  expected deliveries: {}", c.expected_deliveries);
    println!("  delivered: {}", k.delivered);
    println!("  lost: {lost}");
    println!("  duplicated: {}", k.duplicated);
    println!("  out of order: {}", k.out_of_order);
    println!("  unexpected: {}", k.unexpected);
    if k.inbox_dropped > 0 {
        println!("  dropped at full inboxes: {}", k.inbox_dropped);
    }
    println!("  elapsed: {:.3} s", c.started.elapsed().as_secs_f64());
    if problems.is_empty() {
        println!("  result: ok");
        ExitCode::SUCCESS
    } else {
        println!("  result: FAILED: {}", problems.join("; "));
        ExitCode::FAILURE
    }
}
