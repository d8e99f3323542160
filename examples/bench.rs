//! The cross-node rows of the README's Performance section: two nodes in two OS processes over
//! loopback TCP, the same shape as the Erlang `pg` runs those rows are compared with.
//!
//! `cargo run --release --example bench [-- --json]`
//!
//! This process is node A. It re-executes itself with `--role b` for node B, and the two talk
//! over B's stdin (commands from A) and stdout (reports from B), one line each; B's stderr is
//! A's. B dials A. Both processes read the same wall clock, so B reports the times it saw
//! things (`SystemTime`, in nanoseconds) and A subtracts its own start times.
//!
//! The rows:
//! 1. the floor: a bare libp2p swarm in each process with only gossipsub, configured exactly as
//!    a node's (it is taken from [`procgroups::behaviour::Protocols`]: signed, strict
//!    validation, manual acceptance), on the same transport (TCP + noise + yamux, nodelay) and
//!    the same runtime shape (a `current_thread` runtime on its own thread, the application
//!    on another). One way, application to application: the sender's application thread
//!    stamps the message and hands it to the swarm's thread; the receiver's swarm thread
//!    accepts it and hands it to the application, which stamps its arrival. The swarm-to-
//!    swarm time is reported beside it. The same shape on the delta stream is the stream
//!    floor. As in a node, the delta stream sits outside the gate the other protocols are
//!    behind ([`procgroups::behaviour::wake_gate`]), so that its frames poll no other handler.
//!    With `--floor-protocols node` both floors' swarms also carry, behind that gate, every
//!    other protocol of a node (request-response, Kademlia, identify, ping, connection limits,
//!    the relay server, hole punching and AutoNAT as a node's defaults have them, mDNS off as
//!    in the nodes here, the relay client off: it needs the swarm's transport), unused, so that
//!    the floor pays for the node's composition of handlers: the join row's ratio to it is then
//!    the cost of procgroups' own logic.
//! 2. a join on A visible on B: `join` on A to the event out of B's `monitor` subscription,
//!    one at a time, interleaved with the floor's messages so that both see the same machine.
//! 3. 10k joins of one process into distinct groups, until a whole-scope subscriber on B has
//!    seen the last one.
//! 4. 10k processes join one group, until B's monitor of the group has counted 10k pids.
//! 5. those 10k processes exit, until B has counted 10k left pids.
//! 6. broadcasts to 1000 members, half on each node, until every member has taken every
//!    message out of its inbox.
//! 7. broadcasts to 1000 members all on B, likewise.
//!
//! The table's Erlang column is fixed text: Erlang/OTP 25 `pg` in the same shapes, measured
//! on this project's 2-vCPU machine on 2026-12-03 (21:2x UTC). A comparison is only fair with
//! the anchor run again in the same hour on the same machine.
//!
//! `--only latency,distinct,one-group,broadcast` runs some of the rows, for profiling one
//! (`perf record -g` of the whole bench follows B too).
//!
//! Throughput rows run `--trials` times and report the median; the JSON keeps the trials in
//! their order (the first is on cold tables). Both nodes run the default
//! scope configuration except for buffers: subscriptions hold a whole burst
//! (`monitor_buffer`), inboxes a whole trial (`mailbox_capacity`), and a peer's outbox a whole
//! trial's frames (`action_queue_max_size`, which also bounds it); anything lost anyway is
//! reported, not hidden.
//!
//! Where the time goes: with `--cpu`, each row also shows the CPU time every thread of both
//! nodes spent in its timed part (and how long they waited, runnable, for a core), read from
//! `/proc/self/task/*/schedstat`; the JSON always has it. `procgroups-net` is a node's
//! network thread, `app-worker` the application's tokio workers, `bench` the main thread (A's
//! joins and broadcasts, B's subscribers), `floor-swarm` the bare gossipsub swarm.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Multiaddr, Swarm, noise, tcp, yamux};
use procgroups::behaviour::capped_streams::CappedRequestResponse;
use procgroups::behaviour::delta_stream::{DeltaStreamEvent, DeltaStreams};
use procgroups::behaviour::scoring::ScoredGossipsub;
use procgroups::behaviour::wake_gate::WakeGated;
use procgroups::behaviour::{BehaviourConfig, DeliverCodec, Protocols, SyncCodec};
use procgroups::{
    DEFAULT_MAILBOX_CAPACITY, EventKind, Inbox, Instance, Node, Process, ScopeConfig,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

mod common;
use common::child::{self, AsyncLines, ChildProcess, NoLine};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SCOPE: &str = "bench:pg";
const FLOOR_TOPIC: &str = "bench/floor/1";
/// The topic of the broadcast rows.
const TOPIC: &str = "m";
/// The longest any single wait of B may take before it gives up and says so.
const WAIT: Duration = Duration::from_secs(20);
/// A count that makes no progress for this long is reported as it stands.
const STALL: Duration = Duration::from_secs(5);
/// A waits this much longer than B for a report, so that B's own timeouts speak first.
const REPORT_WAIT: Duration = Duration::from_secs(40);

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Cross-node benchmarks of procgroups: two nodes in two OS processes over loopback TCP"
)]
struct Args {
    /// Print one JSON object keyed by row instead of the table.
    #[arg(long)]
    json: bool,
    /// Which node this process is; `b` is started by `a`.
    #[arg(long, value_enum, default_value_t = Role::A)]
    role: Role,
    /// Sequential messages and joins timed for rows 1 and 2 (after the warm-up).
    #[arg(long, default_value_t = 200)]
    latency_samples: usize,
    /// Untimed messages and joins before them.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Joins (rows 3, 4) and exits (row 5).
    #[arg(long, default_value_t = 10_000)]
    joins: usize,
    /// Members of the broadcast rows (6, 7).
    #[arg(long, default_value_t = 1000)]
    members: usize,
    /// Broadcasts per trial of rows 6 and 7.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Trials of each throughput row (3 to 7); the median is reported.
    #[arg(long, default_value_t = 3)]
    trials: usize,
    /// Also print, per row, the CPU time each thread of both nodes spent in the timed part
    /// (always in the JSON).
    #[arg(long)]
    cpu: bool,
    /// The floors' protocols: a node's gossipsub and delta stream alone, or beside every other
    /// protocol of a node.
    #[arg(long, value_enum, default_value_t = FloorStack::Bare)]
    floor_protocols: FloorStack,
    /// Only these rows (comma-separated), for profiling one of them; all when not given.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<RowSet>,
    /// B: A's floor swarm.
    #[arg(long, hide = true)]
    floor_addr: Option<Multiaddr>,
    /// B: A's node.
    #[arg(long, hide = true)]
    node_addr: Option<Multiaddr>,
}

/// What the floors' swarms carry beside gossipsub and the delta stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FloorStack {
    /// Nothing.
    Bare,
    /// Every other protocol of a node, unused.
    Node,
}

/// A row, or rows measured together, that `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RowSet {
    /// Rows 1 and 2: the floors and a join's latency.
    Latency,
    /// Row 3: joins into distinct groups.
    Distinct,
    /// Rows 4 and 5: joins into one group, then exits.
    OneGroup,
    /// Rows 6 and 7: broadcasts.
    Broadcast,
}

impl Args {
    /// Whether `--only` leaves `rows` in.
    fn runs(&self, rows: RowSet) -> bool {
        self.only.is_empty() || self.only.contains(&rows)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    A,
    B,
}

fn main() -> Res<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("app-worker")
        .enable_all()
        .build()?;
    match args.role {
        Role::A => runtime.block_on(run_a(args)),
        Role::B => runtime.block_on(run_b(args)),
    }
}

/// Wall-clock nanoseconds: comparable between the two processes of one machine.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn err(msg: impl Into<String>) -> Box<dyn std::error::Error + Send + Sync> {
    msg.into().into()
}

// ------------------------------------------------------------------------------ CPU time

/// CPU time of this process's threads, by thread name: (ns on a CPU, ns runnable but waiting
/// for one), from `/proc/self/task/*/schedstat`. Empty where that is not available.
type Cpu = BTreeMap<String, (u64, u64)>;

fn thread_cpu() -> Cpu {
    let mut cpu = Cpu::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let mut fields = stat
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        let (run, wait) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
        let e = cpu.entry(name.trim().to_owned()).or_default();
        e.0 += run;
        e.1 += wait;
    }
    cpu
}

fn cpu_encode(cpu: &Cpu) -> String {
    cpu.iter()
        .map(|(name, (run, wait))| format!("{}={run}:{wait}", name.replace(' ', "_")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpu_decode<'a>(words: impl Iterator<Item = &'a str>) -> Cpu {
    words
        .filter_map(|w| {
            let (name, times) = w.split_once('=')?;
            let (run, wait) = times.split_once(':')?;
            Some((name.to_owned(), (run.parse().ok()?, wait.parse().ok()?)))
        })
        .collect()
}

/// CPU spent between two snapshots, added to `into`.
fn cpu_add(into: &mut Cpu, before: &Cpu, after: &Cpu) {
    for (name, (run, wait)) in after {
        let (r0, w0) = before.get(name).copied().unwrap_or_default();
        let e = into.entry(name.clone()).or_default();
        e.0 += run.saturating_sub(r0);
        e.1 += wait.saturating_sub(w0);
    }
}

/// The CPU of both nodes over a row's timed parts.
#[derive(Default)]
struct RowCpu {
    a: Cpu,
    b: Cpu,
    trials: u64,
}

impl RowCpu {
    fn add(&mut self, a: (&Cpu, &Cpu), b: (&Cpu, &Cpu)) {
        cpu_add(&mut self.a, a.0, a.1);
        cpu_add(&mut self.b, b.0, b.1);
        self.trials += 1;
    }

    /// Milliseconds per trial, busy threads only.
    fn per_trial(cpu: &Cpu, trials: u64) -> Vec<(String, f64, f64)> {
        let t = trials.max(1) as f64;
        cpu.iter()
            .map(|(n, (r, w))| (n.clone(), *r as f64 / 1e6 / t, *w as f64 / 1e6 / t))
            .filter(|(_, r, _)| *r >= 0.05)
            .collect()
    }

    fn text(&self) -> String {
        let side = |cpu: &Cpu| {
            let parts: Vec<String> = Self::per_trial(cpu, self.trials)
                .into_iter()
                .map(|(n, r, w)| format!("{n} {r:.1} ms (+{w:.1} runnable)"))
                .collect();
            parts.join(", ")
        };
        format!(
            "CPU per trial: A [{}]; B [{}]",
            side(&self.a),
            side(&self.b)
        )
    }

    fn json(&self) -> Value {
        let side = |cpu: &Cpu| {
            let map: serde_json::Map<String, Value> = Self::per_trial(cpu, self.trials)
                .into_iter()
                .map(|(n, r, w)| (n, json!({ "cpu_ms": r, "runnable_ms": w })))
                .collect();
            Value::Object(map)
        };
        json!({ "a": side(&self.a), "b": side(&self.b) })
    }
}

// ---------------------------------------------------------------------------------- nodes

/// Both nodes: the default scope configuration except buffers big enough that a burst of
/// 10k events, or of `messages` frames for one peer, is never dropped or refused.
async fn build_node(args: &Args) -> Res<Node> {
    let config = ScopeConfig::builder()
        .monitor_buffer(4 * args.joins.max(1024))
        .action_queue_max_size(2 * args.messages.max(1024))
        .build()?;
    let node = Node::builder()
        .mdns(false)
        .listen_on("/ip4/127.0.0.1/tcp/0".parse()?)
        .scope(SCOPE, config)
        .mailbox_capacity(args.messages.max(DEFAULT_MAILBOX_CAPACITY))
        .build()
        .await?;
    Ok(node)
}

/// A process and its instance on the bench scope.
struct Member {
    pg: Instance,
    process: Process,
}

fn member(node: &Node) -> Res<Member> {
    let process = node.spawn_process();
    let pg = process.open(SCOPE)?;
    Ok(Member { pg, process })
}

/// Polls `f` every millisecond until it holds; `false` after `limit`.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

// ---------------------------------------------------------------------------------- floor

enum FloorCmd {
    Dial(Multiaddr),
    /// `[seq, application send time, swarm send time]`, u64 little-endian each; the swarm
    /// thread writes the third.
    Publish(Vec<u8>),
    /// The same, as one frame on the delta stream to the peer.
    Stream(Vec<u8>),
    Stop,
}

/// Which floor a message took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FloorPath {
    Gossip,
    Stream,
}

enum FloorEvent {
    Listening(Multiaddr),
    Subscribed,
    /// The delta stream to the peer is open.
    StreamOpen,
    Message {
        path: FloorPath,
        data: Vec<u8>,
        swarm_at: u64,
    },
}

/// The floors' protocols: a node's delta stream and, behind the gate a node puts before its
/// other protocols ([`WakeGated`]), a node's gossipsub, with [`FloorStack::Node`] the rest of
/// a node's protocols: a delta stream's frame polls no other handler, as in a node.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct FloorProtocols {
    streams: DeltaStreams,
    others: WakeGated<FloorOthers>,
}

/// The floors' protocols behind the gate.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct FloorOthers {
    gossipsub: ScoredGossipsub,
    rest: Toggle<NodeRest>,
}

/// A node's protocols other than gossipsub and the delta stream (`Protocols` less those two,
/// and less its keep-alive, which is internal), as a node builds them.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct NodeRest {
    connection_limits: libp2p::connection_limits::Behaviour,
    sync: CappedRequestResponse<SyncCodec>,
    deliver: CappedRequestResponse<DeliverCodec>,
    mdns: Toggle<libp2p::mdns::tokio::Behaviour>,
    kad: libp2p::kad::Behaviour<libp2p::kad::store::MemoryStore>,
    identify: libp2p::identify::Behaviour,
    ping: libp2p::ping::Behaviour,
    relay_client: Toggle<libp2p::relay::client::Behaviour>,
    relay: Toggle<libp2p::relay::Behaviour>,
    dcutr: Toggle<libp2p::dcutr::Behaviour>,
    autonat: Toggle<libp2p::autonat::v2::client::Behaviour>,
    autonat_server: Toggle<libp2p::autonat::v2::server::Behaviour>,
}

/// A bare swarm of gossipsub and the delta stream, on its own thread.
struct Floor {
    commands: mpsc::UnboundedSender<FloorCmd>,
    events: mpsc::UnboundedReceiver<FloorEvent>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn floor_swarm(stack: FloorStack) -> Res<Swarm<FloorProtocols>> {
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            // Exactly a node's gossipsub and delta stream, with or without the others.
            let config = BehaviourConfig {
                mdns: false,
                ..BehaviourConfig::default()
            };
            Protocols::new(key, &config)
                .map(|p| {
                    let others = p.others.into_inner();
                    let rest = NodeRest {
                        connection_limits: p.connection_limits,
                        sync: others.sync,
                        deliver: others.deliver,
                        mdns: others.mdns,
                        kad: others.kad,
                        identify: others.identify,
                        ping: others.ping,
                        relay_client: others.relay_client,
                        relay: others.relay,
                        dcutr: others.dcutr,
                        autonat: others.autonat,
                        autonat_server: others.autonat_server,
                    };
                    FloorProtocols {
                        streams: p.delta_streams,
                        others: WakeGated::new(FloorOthers {
                            gossipsub: others.gossipsub,
                            rest: (stack == FloorStack::Node).then_some(rest).into(),
                        }),
                    }
                })
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    Ok(swarm)
}

async fn floor_loop(
    mut swarm: Swarm<FloorProtocols>,
    mut commands: mpsc::UnboundedReceiver<FloorCmd>,
    events: mpsc::UnboundedSender<FloorEvent>,
) {
    let topic = IdentTopic::new(FLOOR_TOPIC);
    let me = *swarm.local_peer_id();
    let mut peer = None;
    loop {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    let addr = address.with_p2p(me).unwrap_or_else(|a| a);
                    events.send(FloorEvent::Listening(addr)).ok();
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    peer = Some(peer_id);
                    swarm.behaviour_mut().streams.want(peer_id);
                }
                SwarmEvent::Behaviour(FloorProtocolsEvent::Others(FloorOthersEvent::Gossipsub(gossipsub::Event::Subscribed { .. }))) => {
                    events.send(FloorEvent::Subscribed).ok();
                }
                SwarmEvent::Behaviour(FloorProtocolsEvent::Others(FloorOthersEvent::Gossipsub(gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                }))) => {
                    let swarm_at = now_ns();
                    // As a node does: hand it over, then report the validation.
                    events
                        .send(FloorEvent::Message { path: FloorPath::Gossip, data: message.data, swarm_at })
                        .ok();
                    swarm.behaviour_mut().others.gossipsub.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        MessageAcceptance::Accept,
                    );
                }
                SwarmEvent::Behaviour(FloorProtocolsEvent::Streams(DeltaStreamEvent::Opened { .. })) => {
                    events.send(FloorEvent::StreamOpen).ok();
                }
                SwarmEvent::Behaviour(FloorProtocolsEvent::Streams(DeltaStreamEvent::Frame { data, .. })) => {
                    let swarm_at = now_ns();
                    events
                        .send(FloorEvent::Message { path: FloorPath::Stream, data: data.to_vec(), swarm_at })
                        .ok();
                }
                _ => {}
            },
            command = commands.recv() => match command {
                Some(FloorCmd::Dial(addr)) => {
                    if let Err(e) = swarm.dial(addr) {
                        eprintln!("floor dial: {e}");
                    }
                }
                Some(FloorCmd::Publish(mut data)) => {
                    data[16..24].copy_from_slice(&now_ns().to_le_bytes());
                    if let Err(e) = swarm.behaviour_mut().others.gossipsub.publish(topic.clone(), data) {
                        eprintln!("floor publish: {e}");
                    }
                }
                Some(FloorCmd::Stream(mut data)) => {
                    data[16..24].copy_from_slice(&now_ns().to_le_bytes());
                    let sent = peer
                        .ok_or("not connected")
                        .and_then(|p| swarm.behaviour_mut().streams.send(p, data.into()).map_err(|_| "not sent"));
                    if let Err(e) = sent {
                        eprintln!("floor stream: {e}");
                    }
                }
                Some(FloorCmd::Stop) | None => return,
            },
        }
    }
}

impl Floor {
    fn start(stack: FloorStack) -> Res<Self> {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("floor-swarm".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        ready_tx.send(Err(e.to_string())).ok();
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut swarm = match floor_swarm(stack) {
                        Ok(s) => s,
                        Err(e) => {
                            ready_tx.send(Err(e.to_string())).ok();
                            return;
                        }
                    };
                    let listen = "/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr");
                    let topic = IdentTopic::new(FLOOR_TOPIC);
                    let started =
                        swarm
                            .listen_on(listen)
                            .map_err(|e| e.to_string())
                            .and_then(|_| {
                                swarm
                                    .behaviour_mut()
                                    .others
                                    .gossipsub
                                    .subscribe_scored(&topic)
                                    .map_err(|e| e.to_string())
                            });
                    let ok = started.is_ok();
                    ready_tx.send(started.map(|_| ())).ok();
                    if ok {
                        floor_loop(swarm, command_rx, event_tx).await;
                    }
                });
            })?;
        ready_rx
            .recv_timeout(WAIT)
            .map_err(|_| err("floor swarm did not start"))?
            .map_err(|e| err(format!("floor swarm: {e}")))?;
        Ok(Self {
            commands,
            events,
            thread: Some(thread),
        })
    }

    fn send(&self, command: FloorCmd) -> Res<()> {
        self.commands
            .send(command)
            .map_err(|_| err("the floor swarm stopped"))
    }

    async fn next(&mut self) -> Res<FloorEvent> {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(err("the floor swarm stopped")),
            Err(_) => Err(err("floor: nothing happened for 20 s")),
        }
    }

    async fn listening(&mut self) -> Res<Multiaddr> {
        loop {
            if let FloorEvent::Listening(addr) = self.next().await? {
                return Ok(addr);
            }
        }
    }

    async fn subscribed(&mut self) -> Res<()> {
        loop {
            if let FloorEvent::Subscribed = self.next().await? {
                return Ok(());
            }
        }
    }

    /// Subscribed to the peer's topic, and with a delta stream to it open, in either order.
    async fn ready(&mut self) -> Res<()> {
        let (mut subscribed, mut open) = (false, false);
        while !(subscribed && open) {
            match self.next().await? {
                FloorEvent::Subscribed => subscribed = true,
                FloorEvent::StreamOpen => open = true,
                _ => {}
            }
        }
        Ok(())
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.commands.send(FloorCmd::Stop).ok();
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

fn read_u64(data: &[u8], at: usize) -> u64 {
    data.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

// ------------------------------------------------------------------------- B, the child

/// Node B's half: builds its node and floor swarm, dials A's, then obeys A's commands.
async fn run_b(args: Args) -> Res<()> {
    // At the end of input A ended, however it ended (A closes B's stdin only after B's
    // "bye"), so B ends then, whatever it was waiting for.
    let mut commands = child::stdin_lines()?;
    let result = serve_b(&args, &mut commands).await;
    if let Err(e) = &result {
        say(&format!("error {e}"));
    }
    result
}

/// A report with this process's CPU snapshot appended.
fn say_cpu(line: &str) {
    say(&format!("{line} cpu {}", cpu_encode(&thread_cpu())));
}

fn say(line: &str) {
    child::say(line);
}

async fn serve_b(args: &Args, commands: &mut mpsc::UnboundedReceiver<String>) -> Res<()> {
    let floor_addr = args.floor_addr.clone().ok_or_else(|| err("--floor-addr"))?;
    let node_addr = args.node_addr.clone().ok_or_else(|| err("--node-addr"))?;
    let mut floor = Some(Floor::start(args.floor_protocols)?);
    if let Some(f) = &mut floor {
        f.listening().await?;
        f.send(FloorCmd::Dial(floor_addr))?;
        f.subscribed().await?;
    }
    let node = build_node(args).await?;
    node.dial(node_addr)?;
    if !eventually(WAIT, || !node.connected_peers().is_empty()).await {
        return Err(err("B: no connection to A's node"));
    }
    let me = member(&node)?;
    say("ready");
    let mut receivers: Vec<Member> = Vec::new();
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| -> Res<usize> {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| err(format!("bad command {line:?}")))
        };
        match words.first().copied() {
            Some("latency") => {
                let f = floor.as_mut().ok_or_else(|| err("floor stopped"))?;
                b_latency(&me.pg, f, number(1)?).await?;
            }
            Some("floor-stop") => {
                floor = None;
                say("ok");
            }
            Some("distinct") => {
                let prefix = words.get(2).ok_or_else(|| err("prefix"))?;
                b_distinct(&me.pg, number(1)?, prefix).await?;
            }
            Some("one") => {
                let group = words.get(2).ok_or_else(|| err("group"))?;
                b_one(&me.pg, number(1)?, group).await?;
            }
            Some("recv") => {
                let group = words.get(3).ok_or_else(|| err("group"))?;
                receivers = b_receive(&node, number(1)?, number(2)?, group).await?;
            }
            Some("release") => {
                receivers.clear();
                say("ok");
            }
            Some("quit") => break,
            _ => return Err(err(format!("unknown command {line:?}"))),
        }
    }
    drop(receivers);
    drop(me);
    drop(floor);
    tokio::time::timeout(WAIT, node.shutdown()).await.ok();
    say("bye");
    Ok(())
}

/// Rows 1 and 2 on B: reports each floor message and each join event on "lat" as it arrives.
async fn b_latency(pg: &Instance, floor: &mut Floor, n: usize) -> Res<()> {
    let (mut sub, _) = pg.monitor("lat")?;
    say_cpu("ready");
    let (mut messages, mut joins) = (0, 0);
    while messages < 2 * n || joins < n {
        tokio::select! {
            event = floor.events.recv() => match event {
                Some(FloorEvent::Message { path, data, swarm_at }) => {
                    let at = now_ns();
                    messages += 1;
                    let tag = match path {
                        FloorPath::Gossip => "floor",
                        FloorPath::Stream => "stream",
                    };
                    say(&format!(
                        "{tag} {} {} {} {swarm_at} {at}",
                        read_u64(&data, 0),
                        read_u64(&data, 8),
                        read_u64(&data, 16)
                    ));
                }
                Some(_) => {}
                None => return Err(err("the floor swarm stopped")),
            },
            event = sub.recv() => match event {
                Some(e) if e.kind == EventKind::MemberJoined => {
                    let at = now_ns();
                    joins += e.pids.len();
                    say(&format!("join {at} {}", e.pids.len()));
                }
                Some(_) => {}
                None => return Err(err("the monitor of lat closed")),
            },
            () = tokio::time::sleep(WAIT) => {
                return Err(err(format!("latency: stuck at {messages} messages, {joins} joins")));
            }
        }
    }
    say_cpu("latency-done");
    Ok(())
}

/// What B counted: pids, the events that carried them, the time of the last one.
struct Seen {
    pids: usize,
    events: usize,
    last: u64,
}

/// Counts the pids of `kind` events accepted by `filter` until `want`, or until nothing
/// comes for `STALL`.
async fn count_events(
    sub: &mut procgroups::Subscription,
    kind: EventKind,
    want: usize,
    filter: impl Fn(&str) -> bool,
) -> Seen {
    let mut seen = Seen {
        pids: 0,
        events: 0,
        last: 0,
    };
    while seen.pids < want {
        let first = match tokio::time::timeout(STALL, sub.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) | Err(_) => break,
        };
        // The events already queued are read at once, and the clock once after them: the
        // time of the last event is when the batch holding it was read.
        // Not past `want`, so that what follows is left for the next count.
        let mut counted = false;
        let mut next = Some(first);
        while let Some(e) = next {
            if e.kind == kind && filter(&e.group) {
                seen.pids += e.pids.len();
                seen.events += 1;
                counted = true;
            }
            next = if seen.pids < want {
                sub.try_recv()
            } else {
                None
            };
        }
        if counted {
            seen.last = now_ns();
        }
    }
    seen
}

/// Row 3 on B: a whole-scope subscriber sees `n` joins into groups named `prefix…`, then
/// (untimed) their leaves.
async fn b_distinct(pg: &Instance, n: usize, prefix: &str) -> Res<()> {
    let (mut sub, _) = pg.events()?;
    say_cpu("ready");
    let s = count_events(&mut sub, EventKind::MemberJoined, n, |g| {
        g.starts_with(prefix)
    })
    .await;
    say_cpu(&format!(
        "seen {} {} {} {}",
        s.last,
        s.pids,
        s.events,
        sub.dropped()
    ));
    let s = count_events(&mut sub, EventKind::MemberLeft, n, |g| {
        g.starts_with(prefix)
    })
    .await;
    say(&format!(
        "clean {} {} {} {}",
        s.last,
        s.pids,
        s.events,
        sub.dropped()
    ));
    Ok(())
}

/// Rows 4 and 5 on B: a monitor of `group` counts `n` joined pids, then `n` left ones.
async fn b_one(pg: &Instance, n: usize, group: &str) -> Res<()> {
    let (mut sub, _) = pg.monitor(group)?;
    say_cpu("ready");
    let s = count_events(&mut sub, EventKind::MemberJoined, n, |_| true).await;
    say_cpu(&format!(
        "joined {} {} {} {}",
        s.last,
        s.pids,
        s.events,
        sub.dropped()
    ));
    let s = count_events(&mut sub, EventKind::MemberLeft, n, |_| true).await;
    say_cpu(&format!(
        "left {} {} {} {}",
        s.last,
        s.pids,
        s.events,
        sub.dropped()
    ));
    Ok(())
}

/// Rows 6 and 7 on B: `members` processes listen and join `group`; reports when they have
/// taken `messages` messages each out of their inboxes.
async fn b_receive(node: &Node, members: usize, messages: usize, group: &str) -> Res<Vec<Member>> {
    let counter = Counter::new((members * messages) as u64);
    let receivers = receivers(node, members, group, &counter)?;
    say_cpu("ready");
    let complete = counter.wait().await;
    let dropped: u64 = receivers.iter().map(|m| m.process.dropped()).sum();
    say_cpu(&format!(
        "done {} {} {} {}",
        counter.last.load(Ordering::Relaxed),
        counter.count.load(Ordering::Relaxed),
        dropped,
        complete
    ));
    Ok(receivers)
}

// ------------------------------------------------------------------------------- delivery

/// Deliveries taken out of inboxes, and when the last were.
struct Counter {
    count: AtomicU64,
    last: AtomicU64,
    total: u64,
    done: Notify,
}

impl Counter {
    fn new(total: u64) -> Arc<Self> {
        Arc::new(Self {
            count: AtomicU64::new(0),
            last: AtomicU64::new(0),
            total,
            done: Notify::new(),
        })
    }

    fn add(&self, n: u64) {
        self.last.fetch_max(now_ns(), Ordering::Relaxed);
        if self.count.fetch_add(n, Ordering::Relaxed) + n >= self.total {
            self.done.notify_one();
        }
    }

    /// Until every delivery is counted (`true`), or the count stalls or takes longer than
    /// `REPORT_WAIT` (`false`).
    async fn wait(&self) -> bool {
        let mut seen = self.count.load(Ordering::Relaxed);
        let start = Instant::now();
        let mut progress = start;
        loop {
            if self.count.load(Ordering::Relaxed) >= self.total {
                return true;
            }
            tokio::time::timeout(Duration::from_millis(100), self.done.notified())
                .await
                .ok();
            let now = self.count.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                progress = Instant::now();
            } else if progress.elapsed() > STALL {
                return false;
            }
            if start.elapsed() > REPORT_WAIT {
                return false;
            }
        }
    }
}

/// One task per process drains its inbox, counting what it takes out.
fn drain(mut inbox: Inbox, counter: Arc<Counter>) {
    tokio::spawn(async move {
        while inbox.recv().await.is_some() {
            let mut n = 1;
            while inbox.try_recv().is_some() {
                n += 1;
            }
            counter.add(n);
        }
    });
}

/// `count` processes that listen to `TOPIC` and join `group`, each drained by its own task.
fn receivers(node: &Node, count: usize, group: &str, counter: &Arc<Counter>) -> Res<Vec<Member>> {
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let m = member(node)?;
        drain(m.process.listen(TOPIC), counter.clone());
        m.pg.join(group)?;
        members.push(m);
    }
    Ok(members)
}

// ------------------------------------------------------------------------ A, the parent

/// Node B as a child process, killed when this is dropped (however A ends): B exits by
/// itself after `quit`, or when its stdin closes; it is given a moment, then killed.
struct ChildB {
    child: ChildProcess,
    lines: AsyncLines,
    /// B's CPU snapshot from its last report that had one.
    cpu: Cpu,
}

impl ChildB {
    fn spawn(args: &Args, floor_addr: &Multiaddr, node_addr: &Multiaddr) -> Res<Self> {
        let mut command = child::own_command(["--role", "b"])?;
        command
            .args(["--floor-addr", &floor_addr.to_string()])
            .args(["--node-addr", &node_addr.to_string()])
            .args(["--messages", &args.messages.to_string()])
            .args(["--joins", &args.joins.to_string()])
            .arg("--floor-protocols")
            .arg(match args.floor_protocols {
                FloorStack::Bare => "bare",
                FloorStack::Node => "node",
            });
        let (child, lines) = ChildProcess::with_async_lines("b-reports", command)?;
        Ok(Self {
            child,
            lines,
            cpu: Cpu::new(),
        })
    }

    fn send(&mut self, line: &str) -> Res<()> {
        Ok(self.child.send(line)?)
    }

    /// The next report, which must start with `tag`; its other words parsed as numbers.
    async fn expect(&mut self, tag: &str) -> Res<Vec<u64>> {
        let line = match self.lines.next(REPORT_WAIT).await {
            Ok(line) => line,
            Err(NoLine::Closed) => return Err(err(format!("B exited while A waited for {tag:?}"))),
            Err(NoLine::TimedOut) => return Err(err(format!("B did not report {tag:?} in time"))),
        };
        let mut words = line.split_whitespace();
        match words.next() {
            Some(t) if t == tag => {
                let mut numbers = Vec::new();
                while let Some(w) = words.next() {
                    match w {
                        "cpu" => {
                            self.cpu = cpu_decode(words.by_ref());
                            break;
                        }
                        "true" => numbers.push(1),
                        "false" => numbers.push(0),
                        w => numbers.push(w.parse().unwrap_or(0)),
                    }
                }
                Ok(numbers)
            }
            Some("error") => Err(err(format!("B: {line}"))),
            _ => Err(err(format!("B said {line:?}, expected {tag:?}"))),
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() - 1) as f64 * p).round() as usize;
    values[i]
}

/// Per second, from a count and a span in nanoseconds.
fn rate(count: u64, from: u64, to: u64) -> f64 {
    if to <= from {
        return f64::NAN;
    }
    count as f64 * 1e9 / (to - from) as f64
}

/// One printed row.
struct Row {
    key: &'static str,
    measure: String,
    shown: String,
    target: &'static str,
    anchor: &'static str,
    json: Value,
}

impl Row {
    /// Adds the CPU the threads of both nodes spent in the row's timed parts: always to the
    /// JSON, to the notes when `show`.
    fn with_cpu(mut self, cpu: &RowCpu, show: bool) -> Self {
        if let Value::Object(map) = &mut self.json {
            map.insert("cpu".into(), cpu.json());
            if show {
                let notes = map.get("notes").and_then(Value::as_str).unwrap_or_default();
                let notes = format!("{notes}; {}", cpu.text());
                map.insert("notes".into(), Value::String(notes));
            }
        }
        self
    }
}

async fn run_a(args: Args) -> Res<()> {
    let (model, cores) = machine();
    if !args.json {
        println!("machine: {model}, {cores} cores");
        println!("nodes: two OS processes over loopback TCP (noise, yamux); running the rows…");
    }
    let mut floor = Floor::start(args.floor_protocols)?;
    let floor_addr = floor.listening().await?;
    let node = build_node(&args).await?;
    let node_addr = node
        .listen_addrs()
        .into_iter()
        .next()
        .ok_or_else(|| err("A's node has no address"))?;
    let mut b = ChildB::spawn(&args, &floor_addr, &node_addr)?;
    b.expect("ready").await?;
    floor.ready().await?;
    if !eventually(WAIT, || !node.connected_peers().is_empty()).await {
        return Err(err("A: no connection from B's node"));
    }

    let mut rows = Vec::new();
    if args.runs(RowSet::Latency) {
        let (floor_row, stream_row, join_row) = latency(&args, &mut floor, &node, &mut b).await?;
        rows.push(floor_row);
        rows.push(stream_row);
        rows.push(join_row);
    }
    drop(floor);
    b.send("floor-stop")?;
    b.expect("ok").await?;

    if args.runs(RowSet::Distinct) {
        rows.push(distinct_joins(&args, &node, &mut b).await?);
    }
    if args.runs(RowSet::OneGroup) {
        let (one, exit) = one_group(&args, &node, &mut b).await?;
        rows.push(one);
        rows.push(exit);
    }
    if args.runs(RowSet::Broadcast) {
        rows.push(broadcast(&args, &node, &mut b, args.members / 2).await?);
        rows.push(broadcast(&args, &node, &mut b, 0).await?);
    }

    b.send("quit")?;
    b.expect("bye").await?;
    drop(b);
    tokio::time::timeout(WAIT, node.shutdown()).await.ok();

    if args.json {
        let mut out = serde_json::Map::new();
        out.insert("machine".into(), json!({ "cpu": model, "cores": cores }));
        for r in &rows {
            out.insert(r.key.into(), r.json.clone());
        }
        println!("{}", serde_json::to_string_pretty(&Value::Object(out))?);
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn machine() -> (String, usize) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = info
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
        .max(std::thread::available_parallelism().map_or(0, |n| n.get()));
    (model, cores)
}

fn print_table(rows: &[Row]) {
    let headers = [
        "measure",
        "procgroups (this run)",
        "target",
        "Erlang pg anchor (2026-12-03)",
    ];
    let cells: Vec<[&str; 4]> = rows
        .iter()
        .map(|r| [r.measure.as_str(), r.shown.as_str(), r.target, r.anchor])
        .collect();
    let mut widths = headers.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: [&str; 4]| {
        let padded: Vec<String> = cols
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    println!();
    line(headers);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!("|-{}-|", rule.join("-|-"));
    for row in cells {
        line(row);
    }
    println!();
    for r in rows {
        if let Some(notes) = r.json.get("notes").and_then(Value::as_str)
            && !notes.is_empty()
        {
            println!("{}: {notes}", r.key);
        }
    }
}

fn us(ns: f64) -> String {
    format!("{:.0} µs", ns / 1000.0)
}

fn per_s(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return format!("n/a {unit}/s");
    }
    if v >= 1e6 {
        format!("{:.2}M {unit}/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k {unit}/s", v / 1e3)
    } else {
        format!("{v:.0} {unit}/s")
    }
}

/// Rows 1 and 2, interleaved: a floor message, then a join, each waited for.
async fn latency(
    args: &Args,
    floor: &mut Floor,
    node: &Node,
    b: &mut ChildB,
) -> Res<(Row, Row, Row)> {
    let total = args.warmup + args.latency_samples;
    let me = member(node)?;
    b.send(&format!("latency {total}"))?;
    b.expect("ready").await?;
    let (a0, b0) = (thread_cpu(), b.cpu.clone());
    let mut floor_app = Vec::new();
    let mut floor_swarm = Vec::new();
    let mut stream_app = Vec::new();
    let mut stream_swarm = Vec::new();
    let mut joins = Vec::new();
    for i in 0..total {
        // The three one after the other, so that all see the same machine.
        for (command, tag) in [
            (FloorCmd::Publish as fn(Vec<u8>) -> FloorCmd, "floor"),
            (FloorCmd::Stream, "stream"),
        ] {
            let mut data = vec![0u8; 24];
            data[0..8].copy_from_slice(&(i as u64).to_le_bytes());
            data[8..16].copy_from_slice(&now_ns().to_le_bytes());
            floor.send(command(data))?;
            let f = b.expect(tag).await?;
            let [seq, app_sent, swarm_sent, swarm_got, app_got] = f[..] else {
                return Err(err(format!("short {tag} report")));
            };
            if seq != i as u64 {
                return Err(err(format!("{tag} message {seq} arrived, {i} expected")));
            }
            if i >= args.warmup {
                let (app, swarm) = match tag {
                    "floor" => (&mut floor_app, &mut floor_swarm),
                    _ => (&mut stream_app, &mut stream_swarm),
                };
                app.push(app_got.saturating_sub(app_sent) as f64);
                swarm.push(swarm_got.saturating_sub(swarm_sent) as f64);
            }
        }

        let t0 = now_ns();
        me.pg.join("lat")?;
        let j = b.expect("join").await?;
        if i >= args.warmup {
            joins.push(j[0].saturating_sub(t0) as f64);
        }
    }
    b.expect("latency-done").await?;
    let mut cpu = RowCpu::default();
    cpu.add((&a0, &thread_cpu()), (&b0, &b.cpu));
    // CPU per message (floor) and per join (procgroups) of each node's network thread: both
    // are idle between the sequential operations, so this is their share of each path.
    let per_op = |side: &Cpu, thread: &str| {
        side.get(thread)
            .map_or(f64::NAN, |(run, _)| *run as f64 / total as f64 / 1000.0)
    };
    let net_cpu = json!({
        "floor_swarm_a_us": per_op(&cpu.a, "floor-swarm"),
        "floor_swarm_b_us": per_op(&cpu.b, "floor-swarm"),
        "procgroups_net_a_us": per_op(&cpu.a, "procgroups-net"),
        "procgroups_net_b_us": per_op(&cpu.b, "procgroups-net"),
    });
    let net_cpu_text = format!(
        "CPU of the network threads per operation: floor swarm A {:.0} µs + B {:.0} µs per message; procgroups A {:.0} µs + B {:.0} µs per join",
        per_op(&cpu.a, "floor-swarm"),
        per_op(&cpu.b, "floor-swarm"),
        per_op(&cpu.a, "procgroups-net"),
        per_op(&cpu.b, "procgroups-net"),
    );
    let floor_median = median(&mut floor_app);
    let swarm_median = median(&mut floor_swarm);
    let stream_median = median(&mut stream_app);
    let stream_swarm_median = median(&mut stream_swarm);
    let join_median = median(&mut joins);
    let ratio = join_median / floor_median;
    let stream_ratio = join_median / stream_median;
    let beside = match args.floor_protocols {
        FloorStack::Bare => "",
        FloorStack::Node => " beside a node's other protocols",
    };
    let floor_row = floor_row_of(
        "gossipsub_floor",
        &format!("raw gossipsub one way{beside}, app to app (floor, median)"),
        "sequential signed messages",
        &mut floor_app,
        swarm_median,
    );
    let stream_row = floor_row_of(
        "stream_floor",
        &format!("raw delta stream one way{beside}, app to app (floor, median)"),
        "sequential frames on /procgroups/deltas/2",
        &mut stream_app,
        stream_swarm_median,
    );
    let mut join_row = Row {
        key: "join_visible",
        measure: "a join on node A visible on node B (median)".into(),
        shown: format!(
            "{} ({stream_ratio:.2}× stream, {ratio:.2}× gossipsub); p99 {}",
            us(join_median),
            us(percentile(&mut joins, 0.99))
        ),
        target: "≤ 1.5× stream floor",
        anchor: "78–84 µs",
        json: json!({
            "median_us": join_median / 1000.0,
            "p10_us": percentile(&mut joins, 0.1) / 1000.0,
            "p90_us": percentile(&mut joins, 0.9) / 1000.0,
            "p99_us": percentile(&mut joins, 0.99) / 1000.0,
            "ratio_to_floor": ratio,
            "ratio_to_stream_floor": stream_ratio,
            "target_ratio_to_stream_floor": 1.5,
            "samples": joins.len(),
            "cpu": net_cpu,
        }),
    };
    if args.cpu
        && let Value::Object(map) = &mut join_row.json
    {
        map.insert("notes".into(), Value::String(net_cpu_text));
    }
    Ok((floor_row, stream_row, join_row))
}

/// A floor's row: the app-to-app times `app` (ns), the median of its swarm-to-swarm times.
fn floor_row_of(
    key: &'static str,
    measure: &str,
    what: &str,
    app: &mut [f64],
    swarm_median: f64,
) -> Row {
    let app_median = median(app);
    Row {
        key,
        measure: measure.into(),
        shown: us(app_median),
        target: "—",
        anchor: "—",
        json: json!({
            "median_us": app_median / 1000.0,
            "p10_us": percentile(app, 0.1) / 1000.0,
            "p90_us": percentile(app, 0.9) / 1000.0,
            "p99_us": percentile(app, 0.99) / 1000.0,
            "swarm_to_swarm_median_us": swarm_median / 1000.0,
            "samples": app.len(),
            "notes": format!(
                "{} {what}; swarm thread to swarm thread {}",
                app.len(),
                us(swarm_median)
            ),
        }),
    }
}

/// Medians and the spread of a throughput row's trials, the trials in their order.
fn summary(rates: Vec<f64>) -> (f64, Value) {
    let m = median(&mut rates.clone());
    (m, json!(rates))
}

/// Row 3: one process joins `joins` distinct groups.
async fn distinct_joins(args: &Args, node: &Node, b: &mut ChildB) -> Res<Row> {
    let mut rates = Vec::new();
    let mut local = Vec::new();
    let mut problems = Vec::new();
    let mut events = 0;
    let mut deltas = Vec::new();
    let mut cpu = RowCpu::default();
    for t in 0..args.trials {
        let prefix = format!("d{t}-");
        let names: Vec<String> = (0..args.joins).map(|i| format!("{prefix}{i}")).collect();
        let m = member(node)?;
        b.send(&format!("distinct {} {prefix}", args.joins))?;
        b.expect("ready").await?;
        let (a0, b0) = (thread_cpu(), b.cpu.clone());
        let before = node.stats(SCOPE)?;
        let t0 = now_ns();
        for name in &names {
            m.pg.join(name.as_str())?;
        }
        let t_local = now_ns();
        let seen = b.expect("seen").await?;
        cpu.add((&a0, &thread_cpu()), (&b0, &b.cpu));
        let after = node.stats(SCOPE)?;
        deltas.push(format!(
            "{}+{}",
            after.deltas_streamed - before.deltas_streamed,
            after.deltas_sent - before.deltas_sent
        ));
        let [last, pids, evs, dropped] = seen[..] else {
            return Err(err("short report"));
        };
        events = evs;
        if pids < args.joins as u64 || dropped > 0 {
            problems.push(format!(
                "trial {t}: B saw {pids} of {} joins ({dropped} events dropped)",
                args.joins
            ));
        }
        rates.push(rate(pids, t0, last));
        local.push(rate(args.joins as u64, t0, t_local));
        drop(m);
        let clean = b.expect("clean").await?;
        if clean.get(1).copied().unwrap_or(0) < args.joins as u64 {
            problems.push(format!("trial {t}: B saw {} of the leaves", clean[1]));
        }
    }
    let local_median = median(&mut local);
    let (value, trials) = summary(rates);
    let mut notes = format!(
        "{} trials; the joins alone take A {} ({} events on B in the last trial; deltas A \
         streamed+gossiped per trial: {})",
        args.trials,
        per_s(local_median, "joins"),
        events,
        deltas.join(" ")
    );
    for p in &problems {
        notes.push_str("; ");
        notes.push_str(p);
    }
    let row = Row {
        key: "joins_distinct_groups",
        measure: format!("{} joins, distinct groups, visible on B", args.joins),
        shown: per_s(value, "joins"),
        target: "≥ 1M joins/s",
        anchor: "101k–118k joins/s",
        json: json!({
            "per_s": value,
            "trials_per_s": trials,
            "local_joins_per_s": local_median,
            "problems": problems,
            "notes": notes,
        }),
    };
    Ok(row.with_cpu(&cpu, args.cpu))
}

/// Rows 4 and 5: `joins` processes join one group, then exit.
async fn one_group(args: &Args, node: &Node, b: &mut ChildB) -> Res<(Row, Row)> {
    let mut join_rates = Vec::new();
    let mut exit_rates = Vec::new();
    let mut join_local = Vec::new();
    let mut exit_local = Vec::new();
    let mut problems = Vec::new();
    let (mut join_events, mut exit_events) = (0, 0);
    let (mut join_cpu, mut exit_cpu) = (RowCpu::default(), RowCpu::default());
    for t in 0..args.trials {
        let group = format!("one-{t}");
        let mut members = Vec::with_capacity(args.joins);
        for _ in 0..args.joins {
            members.push(member(node)?);
        }
        b.send(&format!("one {} {group}", args.joins))?;
        b.expect("ready").await?;

        let (a0, b0) = (thread_cpu(), b.cpu.clone());
        let t0 = now_ns();
        for m in &members {
            m.pg.join(group.as_str())?;
        }
        let t_local = now_ns();
        let r = b.expect("joined").await?;
        join_cpu.add((&a0, &thread_cpu()), (&b0, &b.cpu));
        let [last, pids, evs, dropped] = r[..] else {
            return Err(err("short report"));
        };
        join_events = evs;
        if pids < args.joins as u64 || dropped > 0 {
            problems.push(format!(
                "trial {t}: B saw {pids} of {} joins ({dropped} events dropped)",
                args.joins
            ));
        }
        join_rates.push(rate(pids, t0, last));
        join_local.push(rate(args.joins as u64, t0, t_local));

        let (a0, b0) = (thread_cpu(), b.cpu.clone());
        let t0 = now_ns();
        members.clear();
        let t_local = now_ns();
        let r = b.expect("left").await?;
        exit_cpu.add((&a0, &thread_cpu()), (&b0, &b.cpu));
        let [last, pids, evs, dropped] = r[..] else {
            return Err(err("short report"));
        };
        exit_events = evs;
        if pids < args.joins as u64 || dropped > 0 {
            problems.push(format!(
                "trial {t}: B saw {pids} of {} exits ({dropped} events dropped)",
                args.joins
            ));
        }
        exit_rates.push(rate(pids, t0, last));
        exit_local.push(rate(args.joins as u64, t0, t_local));
    }
    let (jv, jt) = summary(join_rates);
    let (ev, et) = summary(exit_rates);
    let jl = median(&mut join_local);
    let el = median(&mut exit_local);
    let problem_text = problems.join("; ");
    let join_row = Row {
        key: "joins_one_group",
        measure: format!("{} joins into one group, visible on B", args.joins),
        shown: per_s(jv, "joins"),
        target: "≥ 1M joins/s",
        anchor: "3.6k–5.0k joins/s",
        json: json!({
            "per_s": jv,
            "trials_per_s": jt,
            "local_joins_per_s": jl,
            "events_on_b_last_trial": join_events,
            "problems": problems,
            "notes": format!(
                "{} trials; the joins alone take A {}; B got them in {join_events} events{}",
                args.trials,
                per_s(jl, "joins"),
                if problems.is_empty() { String::new() } else { format!("; {problem_text}") }
            ),
        }),
    };
    let exit_row = Row {
        key: "members_exit",
        measure: format!("{} members exit, visible on B", args.joins),
        shown: per_s(ev, "leaves"),
        target: "≥ 1M leaves/s",
        anchor: "1.6k–1.7k leaves/s",
        json: json!({
            "per_s": ev,
            "trials_per_s": et,
            "local_exits_per_s": el,
            "events_on_b_last_trial": exit_events,
            "notes": format!(
                "the exits alone take A {}; B got them in {exit_events} events",
                per_s(el, "exits")
            ),
        }),
    };
    Ok((
        join_row.with_cpu(&join_cpu, args.cpu),
        exit_row.with_cpu(&exit_cpu, args.cpu),
    ))
}

/// Rows 6 (`local` members on A, the rest on B) and 7 (`local` = 0): a process on A
/// broadcasts `messages` times to a group of `members`.
async fn broadcast(args: &Args, node: &Node, b: &mut ChildB, local: usize) -> Res<Row> {
    let remote = args.members - local;
    let mut rates = Vec::new();
    let mut problems = Vec::new();
    let mut lost_total = 0u64;
    let mut dropped_total = 0u64;
    let mut cpu = RowCpu::default();
    for t in 0..args.trials {
        let group = format!("bc{local}-{t}");
        let sender = member(node)?;
        let a_counter = Counter::new((local * args.messages) as u64);
        let a_members = receivers(node, local, &group, &a_counter)?;
        b.send(&format!("recv {remote} {} {group}", args.messages))?;
        b.expect("ready").await?;
        let everyone = eventually(WAIT, || {
            sender
                .pg
                .get_members(&group)
                .is_ok_and(|m| m.len() == args.members)
        })
        .await;
        if !everyone {
            return Err(err(format!(
                "A never saw the {} members of {group}",
                args.members
            )));
        }

        let (a0, b0) = (thread_cpu(), b.cpu.clone());
        let t0 = now_ns();
        let mut targeted = 0;
        for i in 0..args.messages {
            targeted += sender.pg.broadcast(&group, TOPIC, &(i as u64))?.slots();
        }
        let a_complete = a_counter.wait().await;
        let r = b.expect("done").await?;
        cpu.add((&a0, &thread_cpu()), (&b0, &b.cpu));
        let [b_last, b_count, b_dropped, b_complete] = r[..] else {
            return Err(err("short report"));
        };
        let a_dropped: u64 = a_members.iter().map(|m| m.process.dropped()).sum();
        let a_count = a_counter.count.load(Ordering::Relaxed);
        let a_last = a_counter.last.load(Ordering::Relaxed);
        let expected = (args.members * args.messages) as u64;
        let delivered = a_count + b_count;
        let lost = expected.saturating_sub(delivered);
        lost_total += lost;
        dropped_total += a_dropped + b_dropped;
        if targeted != args.members * args.messages {
            problems.push(format!("trial {t}: {targeted} slots targeted"));
        }
        if lost > 0 || b_complete == 0 || !a_complete {
            problems.push(format!(
                "trial {t}: {lost} of {expected} deliveries lost ({} dropped at full inboxes)",
                a_dropped + b_dropped
            ));
        }
        rates.push(rate(delivered, t0, a_last.max(b_last)));
        b.send("release")?;
        b.expect("ok").await?;
        drop(a_members);
        drop(sender);
    }
    let (value, trials) = summary(rates);
    let mut shown = per_s(value, "deliveries");
    if lost_total > 0 {
        shown.push_str(&format!(" ({lost_total} lost)"));
    }
    let (key, measure, anchor) = if local > 0 {
        (
            "broadcast_half_remote",
            format!(
                "broadcast to {} members, {local} on each of 2 nodes",
                args.members
            ),
            "570k–966k deliveries/s",
        )
    } else {
        (
            "broadcast_all_remote",
            format!(
                "broadcast to {} members all on the other node",
                args.members
            ),
            "374k–439k deliveries/s",
        )
    };
    let row = Row {
        key,
        measure,
        shown,
        target: "≥ 2M deliveries/s",
        anchor,
        json: json!({
            "per_s": value,
            "trials_per_s": trials,
            "broadcasts_per_trial": args.messages,
            "lost": lost_total,
            "dropped_at_full_inboxes": dropped_total,
            "notes": format!(
                "{} trials of {} broadcasts; {lost_total} deliveries lost, {dropped_total} dropped at full inboxes{}",
                args.trials,
                args.messages,
                if problems.is_empty() { String::new() } else { format!("; {}", problems.join("; ")) }
            ),
        }),
    };
    Ok(row.with_cpu(&cpu, args.cpu))
}
