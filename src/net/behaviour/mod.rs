//! The node's network task: it drives the swarm, the timers and the outboxes, and feeds the
//! scopes' cores with what peers say (the protocol of DESIGN section 4).
//!
//! The task runs on its own thread with a `current_thread` runtime: the swarm is one state
//! machine, and on small machines a single-threaded runtime drives it with less overhead than
//! a work-stealing one (measured: PERFORMANCE.md). The application's calls never wait for it:
//! a join changes the scope's core under its mutex and wakes the task, which publishes what
//! queued since its last turn as one delta, so changes batch themselves under load.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::task::AtomicWaker;
use libp2p::core::Transport as _;
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::gossipsub::{self, MessageAcceptance, TopicHash};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, SwarmEvent,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns, noise, ping, tcp, yamux};
use tokio::sync::{mpsc, oneshot};

use crate::net::host::{InboxSink, ScopeHost};
use crate::net::outbox::{BreakerState, DeliveryPolicy, MAX_QUEUED_FRAMES, Outbox};
use crate::net::protocols::{
    BehaviourConfig, Protocols, ProtocolsEvent, scope_provider_key, scope_topic,
};
use crate::net::view::{Heartbeat, ScopeNetView};
use crate::net::wire::{
    DeliverAck, DeliverBatch, Frame, MAX_PEERS_EXCHANGED, SyncRequest, SyncResponse,
};
use crate::proto::messages::{Delta, SyncGroup, SyncState, Version};
use crate::proto::{Input, Outcome, Output, Refusal};
use crate::vocab::error::{Error, Result};

/// How often timers are checked: retries, reorder windows, grace periods, anti-entropy.
const HOUSEKEEPING: Duration = Duration::from_millis(20);
/// Commands taken per round of `poll`, and busy rounds before `poll` yields to the swarm.
const COMMAND_BUDGET: usize = 256;
const POLL_ROUNDS: usize = 32;
/// Discover requests in flight at once; more peers wait their turn.
const MAX_DISCOVERS_IN_FLIGHT: usize = 8;
/// First and longest wait before dialing a known peer again.
const REDIAL_FIRST: Duration = Duration::from_millis(250);
const REDIAL_MAX: Duration = Duration::from_secs(30);
/// Dial attempts to a lost peer before it is left to discovery.
const MAX_REDIALS: u32 = 10;
/// How long a shutting-down node waits for its goodbyes to be acknowledged.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);
/// Kademlia rounds (provide + look up providers): first soon after a connection, then less
/// and less often.
const KAD_FIRST: Duration = Duration::from_millis(200);
const KAD_MAX: Duration = Duration::from_secs(30);
/// Pages of one sync, at most: with the default 4 MiB response cap, a state of up to about
/// 1 GiB. A peer announcing more is refused before anything is buffered.
const MAX_SYNC_PAGES: u32 = 256;
/// A peer lost without a goodbye counts as unreachable (stats, health) until it reconnects,
/// the application disconnects it, or this long has passed: then it is taken for gone.
const UNREACHABLE_REPORTED_FOR: Duration = Duration::from_secs(600);
/// Addresses remembered per peer for dialing it again.
const MAX_ADDRS: usize = 8;

/// What the node's builder hands the behaviour.
pub(crate) struct NetConfig {
    pub keypair: Keypair,
    pub bootstrap: Vec<Multiaddr>,
    pub behaviour: BehaviourConfig,
    pub policy: DeliveryPolicy,
    pub incarnation: u64,
    /// The admitted peers; `None` admits every peer.
    pub allowed: Option<hashbrown::HashSet<PeerId>>,
}

/// Counters of the network side, readable from any thread.
#[derive(Debug, Default)]
pub(crate) struct NetStats {
    pub requests_failed: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub frames_lost: AtomicU64,
    pub batches_duplicate: AtomicU64,
    /// Shared with the request-response codecs, which count the malformed frames they read.
    pub malformed: Arc<AtomicU64>,
    /// Messages for this node's processes that nobody listened to or found a full inbox.
    pub messages_dropped: AtomicU64,
    /// Connections and deltas of peers that are not admitted.
    pub peers_refused: AtomicU64,
    /// Peers named by peer exchange and not taken: the node knew `max_known_peers` already.
    pub peers_ignored: AtomicU64,
}

/// What the application's threads can read of the behaviour's state, and how they wake it.
#[derive(Default)]
pub(crate) struct NetShared {
    /// Frames handed over and not yet acknowledged, given up or refused.
    pub queued_frames: AtomicUsize,
    pub listen_addrs: RwLock<Vec<Multiaddr>>,
    pub connected: RwLock<HashSet<PeerId>>,
    /// Peers the behaviour keeps state of (connected or not), as of its last turn.
    pub known_peers: AtomicUsize,
    pub stats: NetStats,
    pub heartbeat: Heartbeat,
    /// The behaviour stopped (shutdown, or every handle dropped).
    pub stopped: AtomicBool,
    /// Set with [`wake`](Self::wake) when a scope queued a change for the peers.
    dirty: AtomicBool,
    waker: AtomicWaker,
}

impl NetShared {
    /// A local change waits for the peers: the behaviour publishes it at its next turn,
    /// with whatever else queued meanwhile.
    pub(crate) fn wake(&self) {
        if !self.dirty.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }
}

enum Command {
    Dial(Multiaddr),
    Disconnect(PeerId),
    Deliver { peer: PeerId, frame: Frame },
    Shutdown(oneshot::Sender<()>),
}

/// The application's side of the behaviour.
pub(crate) struct NetHandle {
    commands: mpsc::UnboundedSender<Command>,
    pub(crate) shared: Arc<NetShared>,
    /// The thread that drives the node's own swarm; `None` when the application embeds the
    /// behaviour in its swarm.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl NetHandle {
    fn send(&self, command: Command) -> Result<()> {
        self.commands.send(command).map_err(|_| Error::Unavailable {
            reason: "the node's network behaviour has stopped".into(),
        })
    }

    pub(crate) fn dial(&self, addr: Multiaddr) -> Result<()> {
        self.send(Command::Dial(addr))
    }

    pub(crate) fn disconnect(&self, peer: PeerId) -> Result<()> {
        self.send(Command::Disconnect(peer))
    }

    /// `Unavailable` when [`MAX_QUEUED_FRAMES`] frames wait already.
    pub(crate) fn check_room(&self) -> Result<()> {
        let queued = self.shared.queued_frames.load(Ordering::Relaxed);
        if queued >= MAX_QUEUED_FRAMES {
            return Err(Error::Unavailable {
                reason: format!("{queued} messages wait for the network"),
            });
        }
        Ok(())
    }

    /// Queues a frame, or refuses it at once when [`MAX_QUEUED_FRAMES`] wait already.
    pub(crate) fn deliver(&self, peer: PeerId, frame: Frame) -> Result<()> {
        let queued = self.shared.queued_frames.fetch_add(1, Ordering::Relaxed);
        if queued >= MAX_QUEUED_FRAMES {
            self.shared.queued_frames.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::Unavailable {
                reason: format!("{queued} messages wait for the network"),
            });
        }
        let sent = self.send(Command::Deliver { peer, frame });
        if sent.is_err() {
            self.shared.queued_frames.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }

    /// Says goodbye to the peers and stops the behaviour; returns once it has stopped (and,
    /// for the node's own swarm, once its thread has ended).
    pub(crate) async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        let stopped = match self.send(Command::Shutdown(tx)) {
            // The bound is for an application's swarm that is no longer polled; an error of
            // `rx` means the behaviour is gone already.
            Ok(()) => tokio::time::timeout(GOODBYE_WAIT * 3, rx).await.is_ok(),
            Err(_) => true,
        };
        if !stopped {
            tracing::warn!("the network behaviour did not stop: is its swarm still polled?");
            return;
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            // The behaviour has stopped, so the thread is ending: joining is short.
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .ok();
        }
    }
}

/// Builds the behaviour and the application's handle on it.
pub(crate) fn build(
    config: NetConfig,
    scopes: Vec<Arc<dyn ScopeHost>>,
    processes: Arc<dyn InboxSink>,
    shared: Arc<NetShared>,
) -> Result<(Behaviour, NetHandle)> {
    let (commands, command_rx) = mpsc::unbounded_channel();
    let behaviour = Behaviour::new(config, scopes, processes, shared.clone(), command_rx)?;
    let handle = NetHandle {
        commands,
        shared,
        thread: Mutex::new(None),
    };
    Ok((behaviour, handle))
}

/// Runs `behaviour` in a swarm of its own (TCP and QUIC, noise, yamux; with a pre-shared key,
/// TCP with pnet below noise and no QUIC) on a dedicated thread with a `current_thread`
/// runtime, listening on `listen`; returns once every listener is bound.
pub(crate) async fn spawn_swarm(
    keypair: Keypair,
    behaviour: Behaviour,
    handle: &NetHandle,
    listen: Vec<Multiaddr>,
    psk: Option<PreSharedKey>,
) -> Result<()> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("procgroups-net".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    ready_tx
                        .send(Err(unavailable(format!("runtime: {e}"))))
                        .ok();
                    return;
                }
            };
            runtime.block_on(async move {
                let mut swarm = match bind(keypair, behaviour, listen, psk).await {
                    Ok(swarm) => {
                        ready_tx.send(Ok(())).ok();
                        swarm
                    }
                    Err(e) => {
                        ready_tx.send(Err(e)).ok();
                        return;
                    }
                };
                loop {
                    match swarm.select_next_some().await {
                        SwarmEvent::Behaviour(Event::Stopped) => return,
                        other => tracing::trace!(?other, "swarm event"),
                    }
                }
            });
        })
        .map_err(|e| unavailable(format!("cannot start the network thread: {e}")))?;
    *handle.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    match ready_rx.await {
        Ok(result) => result,
        Err(_) => Err(unavailable(
            "the network thread ended while starting".into(),
        )),
    }
}

/// Builds the node's swarm and waits until every listener has an address.
async fn bind(
    keypair: Keypair,
    behaviour: Behaviour,
    listen: Vec<Multiaddr>,
    psk: Option<PreSharedKey>,
) -> Result<Swarm<Behaviour>> {
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(10));
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let mut swarm = match psk {
        None => {
            let tcp = builder
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .map_err(|e| unavailable(format!("tcp transport: {e}")))?;
            #[cfg(feature = "quic")]
            let transports = tcp.with_quic();
            #[cfg(not(feature = "quic"))]
            let transports = tcp;
            transports
                .with_behaviour(|_| behaviour)
                .map_err(|e| unavailable(format!("behaviour: {e}")))?
                .with_swarm_config(idle)
                .build()
        }
        Some(psk) => builder
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
                let transport = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(Duration::from_secs(20));
                Ok(transport)
            })
            .map_err(|e| unavailable(format!("pnet transport: {e}")))?
            .with_behaviour(|_| behaviour)
            .map_err(|e| unavailable(format!("behaviour: {e}")))?
            .with_swarm_config(idle)
            .build(),
    };
    let mut listeners = Vec::new();
    for addr in &listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| unavailable(format!("cannot listen on {addr}: {e}")))?;
        listeners.push(id);
    }
    let mut bound: HashSet<_> = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bound.len() < listeners.len() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| unavailable("listeners not bound within 10 s".into()))?;
        match event {
            // The behaviour records the address too (for `listen_addrs`).
            SwarmEvent::NewListenAddr { listener_id, .. } => {
                bound.insert(listener_id);
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                return Err(unavailable(format!(
                    "listener on {addresses:?} closed: {reason:?}"
                )));
            }
            SwarmEvent::ListenerError { error, .. } => {
                return Err(unavailable(format!("listener error: {error}")));
            }
            other => tracing::trace!(?other, "event while binding"),
        }
    }
    Ok(swarm)
}

fn unavailable(reason: String) -> Error {
    Error::Unavailable { reason }
}

struct ScopeNet {
    scope: Arc<dyn ScopeHost>,
    /// When the core wants its next tick, on its clock ([`Output::Timer`]).
    next_tick: Option<Duration>,
    topic: gossipsub::IdentTopic,
    key: kad::RecordKey,
    /// Peers known to host the scope, for anti-entropy's round robin.
    peers: Vec<PeerId>,
    next_anti_entropy: Option<Instant>,
    cursor: usize,
}

#[derive(Default)]
struct Peer {
    connections: usize,
    /// Indices of the scopes the peer hosts.
    scopes: HashSet<usize>,
    /// Unreachable since; `None` while connected or before anything was known.
    down_since: Option<Instant>,
    /// Scopes in which the peer's members were purged during this outage.
    purged: HashSet<usize>,
    addrs: Vec<Multiaddr>,
    redial: Option<(Instant, Duration, u32)>,
    /// The application disconnected it: no dial to it, by us or by any protocol, until it
    /// dials the peer again or the peer connects to us.
    forgotten: bool,
    /// It said goodbye: not redialed when its connection closes.
    departed: bool,
    /// Known only from a peer-exchange answer: never connected, and not dialed by the
    /// application or found by any other means. Forgotten when a dial to it fails.
    told: bool,
    outbox: Outbox,
}

impl Peer {
    fn remember(&mut self, addr: Multiaddr) {
        if !self.addrs.contains(&addr) {
            if self.addrs.len() >= MAX_ADDRS {
                self.addrs.remove(0);
            }
            self.addrs.push(addr);
        }
    }
}

enum SyncOut {
    Discover,
    Sync { peer: PeerId, scope: usize },
    Goodbye,
}

struct PartialSync {
    version: Version,
    pages: u32,
    groups: Vec<SyncGroup>,
}

struct ServedPages {
    version: Version,
    pages: Vec<Vec<SyncGroup>>,
    at: Instant,
}

struct Shutdown {
    done: oneshot::Sender<()>,
    deadline: Instant,
    waiting: usize,
}

/// Why a connection was refused: the peer is not on the node's allow-list.
#[derive(Debug, thiserror::Error)]
#[error("this peer is not admitted (NodeBuilder::allow_peers)")]
struct NotAdmitted;

/// Why a dial was refused: the application disconnected that peer.
#[derive(Debug, thiserror::Error)]
#[error("the application disconnected this peer (Node::disconnect); dial it to reconnect")]
struct Disconnected;

/// What a procgroups [`Behaviour`] tells the swarm's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The node shut down, or every handle on it was dropped: the behaviour does nothing more
    /// and the swarm may be dropped.
    Stopped,
}

/// A procgroups node's network side as one [`NetworkBehaviour`]: the [`Protocols`] and the
/// logic that drives them (DESIGN section 4: Discover, Sync, deltas, anti-entropy, node-down,
/// delivery with outboxes and breakers, discovery by mDNS and Kademlia).
///
/// [`NodeBuilder::build`](crate::NodeBuilder::build) runs one in a swarm of its own. To run it
/// in an application's swarm instead (one set of connections for everything),
/// [`NodeBuilder::build_behaviour`](crate::NodeBuilder::build_behaviour) returns the
/// [`Node`](crate::Node) and its behaviour: add the behaviour as a field of the application's
/// `#[derive(NetworkBehaviour)]` and keep polling the swarm. The swarm must run on tokio
/// (mDNS and the timers use it); its idle-connection timeout does not matter, because the
/// behaviour keeps the connections to peers that share a scope.
///
/// What it does, and the decisions DESIGN leaves open:
/// - **Deltas**: a local change wakes it; everything queued since its last turn goes out as
///   one delta (cut below 60 KiB), so a single join is published at once and a burst batches
///   itself. A delta is accepted (and forwarded by gossipsub) only if its origin is the
///   message's signed source and the core takes it; otherwise it is rejected, which also
///   lowers the sender's gossipsub score.
/// - **Discover** on every new connection, both ways, at most 8 in flight (the rest wait
///   their turn), and again when the peer subscribes to a scope's topic (a delta published
///   between its sync and its subscription is not lost). The answer also names the other
///   connected peers of the shared scopes (at most 64, with their addresses): the node dials
///   them, because a sync needs a direct connection to the origin, so every member of a
///   scope ends up connected to every other. A peer known only from such answers is forgotten
///   when its dial fails, and none is taken once the node knows `max_known_peers`
///   ([`BehaviourConfig`]), so answers cannot make it keep state without bound.
/// - **Sync** of one origin's state, pulled from the origin itself when the core asks (gap,
///   new incarnation, unknown or purged origin), paged under half the response cap, at most
///   256 pages. A node whose deltas reach us through others but that we are not connected
///   to is dialed.
/// - **Anti-entropy**: every `anti_entropy_interval`, a Discover of that scope to the next
///   connected peer of the scope (round robin).
/// - **Node down**: a peer with no connection (or never connected, but whose members we
///   hold) is purged from a scope once that scope's `node_down_grace` has passed; lost
///   peers are redialed with backoff (250 ms doubling to 30 s, 10 attempts). A ping that
///   fails closes its connection. A peer that says goodbye (graceful shutdown) is purged at
///   once and not redialed.
/// - **Delivery**: one ordered outbox per peer (see `broadcast`); the retry and breaker
///   settings are per node, taken from the scopes: the longest `broadcast_timeout`,
///   `max_retries` and `retry_max_delay`, the shortest `retry_base_delay`, the fewest
///   `circuit_breaker_failures` and the longest `circuit_breaker_reset_time` (most nodes host
///   one scope, for which these are exactly its settings). A retried batch keeps its
///   sequence number; the receiver delivers each (sender incarnation, sequence) once.
/// - **Kademlia** (when bootstrap addresses are given): the node provides a key per scope and
///   looks up its providers 200 ms after its first connection, then at doubling intervals up
///   to every 30 s, and dials the providers it finds.
///
/// [`Protocols`]: crate::net::protocols::Protocols
pub struct Behaviour {
    protocols: Protocols,
    commands: mpsc::UnboundedReceiver<Command>,
    pending: VecDeque<ToSwarm<Event, THandlerInEvent<Protocols>>>,
    housekeeping: Option<tokio::time::Interval>,
    stopped: bool,
    me: PeerId,
    scopes: Vec<ScopeNet>,
    by_topic: HashMap<TopicHash, usize>,
    by_id: HashMap<String, usize>,
    peers: HashMap<PeerId, Peer>,
    sync_out: HashMap<OutboundRequestId, SyncOut>,
    /// Delivery batches in flight: peer, batch sequence, and when the batch counts as failed.
    deliver_out: HashMap<OutboundRequestId, (PeerId, u64, Instant)>,
    partial_syncs: HashMap<(PeerId, usize), PartialSync>,
    served_pages: HashMap<(PeerId, usize), ServedPages>,
    /// Per sender: (incarnation, last batch delivered).
    received: HashMap<PeerId, (u64, u64)>,
    discover_queue: VecDeque<PeerId>,
    discovers_in_flight: usize,
    policy: DeliveryPolicy,
    incarnation: u64,
    page_bytes: usize,
    shared: Arc<NetShared>,
    processes: Arc<dyn InboxSink>,
    /// The core's outputs being carried out (kept to reuse its allocation).
    outputs: Vec<Output>,
    kad_enabled: bool,
    kad_next: Option<Instant>,
    kad_interval: Duration,
    shutdown: Option<Shutdown>,
    allowed: Option<hashbrown::HashSet<PeerId>>,
    /// See [`BehaviourConfig::max_known_peers`].
    max_known_peers: usize,
}

impl Behaviour {
    fn new(
        config: NetConfig,
        scopes: Vec<Arc<dyn ScopeHost>>,
        processes: Arc<dyn InboxSink>,
        shared: Arc<NetShared>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Result<Self> {
        let mut protocols = Protocols::counting_malformed(
            &config.keypair,
            &config.behaviour,
            shared.stats.malformed.clone(),
        )
        .map_err(|e| unavailable(format!("behaviour: {e}")))?;
        let me = config.keypair.public().to_peer_id();
        let now = Instant::now();
        let mut by_topic = HashMap::new();
        let mut by_id = HashMap::new();
        let mut nets = Vec::new();
        for (i, scope) in scopes.into_iter().enumerate() {
            let topic = scope_topic(scope.id());
            protocols
                .gossipsub
                .subscribe(&topic)
                .map_err(|e| unavailable(format!("gossipsub subscribe: {e}")))?;
            by_topic.insert(topic.hash(), i);
            by_id.insert(scope.id().to_string(), i);
            let next_anti_entropy = scope.config().anti_entropy_interval().map(|d| now + d);
            nets.push(ScopeNet {
                key: scope_provider_key(scope.id()),
                topic,
                scope,
                next_tick: None,
                peers: Vec::new(),
                next_anti_entropy,
                cursor: 0,
            });
        }
        let mut net = Behaviour {
            protocols,
            commands,
            pending: VecDeque::new(),
            housekeeping: None,
            stopped: false,
            me,
            scopes: nets,
            by_topic,
            by_id,
            peers: HashMap::new(),
            sync_out: HashMap::new(),
            deliver_out: HashMap::new(),
            partial_syncs: HashMap::new(),
            served_pages: HashMap::new(),
            received: HashMap::new(),
            discover_queue: VecDeque::new(),
            discovers_in_flight: 0,
            page_bytes: config.behaviour.max_response_bytes / 2,
            policy: config.policy,
            incarnation: config.incarnation,
            shared,
            processes,
            outputs: Vec::new(),
            kad_enabled: !config.bootstrap.is_empty(),
            kad_next: None,
            kad_interval: KAD_FIRST,
            shutdown: None,
            allowed: config.allowed,
            max_known_peers: config.behaviour.max_known_peers,
        };
        for addr in config.bootstrap {
            net.bootstrap(addr);
        }
        Ok(net)
    }

    /// The protocols, for inspection (their own state and configuration).
    pub fn protocols(&self) -> &Protocols {
        &self.protocols
    }

    /// Whether the allow-list (if any) admits `peer`; counts a refusal.
    fn admits(&self, peer: &PeerId) -> bool {
        let admitted = self.allowed.as_ref().is_none_or(|a| a.contains(peer));
        if !admitted {
            self.shared
                .stats
                .peers_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "peer not admitted");
        }
        admitted
    }

    fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.connections > 0)
    }

    fn bootstrap(&mut self, addr: Multiaddr) {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            self.protocols.kad.add_address(&peer, addr.clone());
            let p = self.peers.entry(peer).or_default();
            p.told = false;
            p.remember(addr.clone());
        }
        self.dial(addr);
    }

    fn dial(&mut self, addr: Multiaddr) {
        self.pending.push_back(ToSwarm::Dial {
            opts: DialOpts::from(addr),
        });
    }

    // ------------------------------------------------------------------ commands

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial(addr) => {
                if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                    let p = self.peers.entry(peer).or_default();
                    p.forgotten = false;
                    p.told = false;
                    p.remember(addr.clone());
                }
                self.dial(addr);
            }
            Command::Disconnect(peer) => {
                let p = self.peers.entry(peer).or_default();
                p.forgotten = true;
                p.told = false;
                p.redial = None;
                self.pending.push_back(ToSwarm::CloseConnection {
                    peer_id: peer,
                    connection: CloseConnection::All,
                });
            }
            Command::Deliver { peer, frame } => {
                let now = Instant::now();
                let p = self.peers.entry(peer).or_default();
                if let Err(refused) = p.outbox.push(frame, &self.policy, now) {
                    // Counted as waiting by `NetHandle::deliver`: it waits no more.
                    self.shared.queued_frames.fetch_sub(1, Ordering::Relaxed);
                    self.shared
                        .stats
                        .frames_lost
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, ?refused, "frame refused");
                }
                self.pump(peer, now);
            }
            Command::Shutdown(done) => self.begin_shutdown(done),
        }
    }

    fn begin_shutdown(&mut self, done: oneshot::Sender<()>) {
        self.publish_deltas();
        let peers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.connections > 0 && !p.scopes.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for peer in &peers {
            let id = self.protocols.sync.send_request(
                peer,
                SyncRequest::Goodbye {
                    incarnation: self.incarnation,
                },
            );
            self.sync_out.insert(id, SyncOut::Goodbye);
        }
        self.shutdown = Some(Shutdown {
            done,
            deadline: Instant::now() + GOODBYE_WAIT,
            waiting: peers.len(),
        });
    }

    fn goodbye_answered(&mut self) {
        if let Some(s) = &mut self.shutdown {
            s.waiting = s.waiting.saturating_sub(1);
        }
    }

    // ------------------------------------------------------------------ deltas

    /// The network layer's turn: every scope's queued local changes go out as deltas.
    fn publish_deltas(&mut self) {
        for i in 0..self.scopes.len() {
            self.feed(i, Input::Flush).ok();
        }
    }

    fn publish_delta(&mut self, scope: usize, delta: Delta) {
        let mut data = Vec::new();
        if let Err(e) = ciborium::into_writer(&delta, &mut data) {
            tracing::error!(error = %e, "cannot encode a delta");
            return;
        }
        let topic = self.scopes[scope].topic.clone();
        match self.protocols.gossipsub.publish(topic, data) {
            Ok(_) => {
                self.scopes[scope]
                    .scope
                    .counters()
                    .deltas_published
                    .fetch_add(1, Ordering::Relaxed);
            }
            // Peers that miss it see the gap or a newer version and pull a sync.
            Err(e) => {
                tracing::debug!(scope = %self.scopes[scope].scope.id(), seq = delta.seq, error = %e, "delta not published")
            }
        }
    }

    /// Hands `input` to scope `scope`'s core and carries out what the core asks.
    fn feed(&mut self, scope: usize, input: Input<'_>) -> Result<Outcome, Refusal> {
        let mut outputs = std::mem::take(&mut self.outputs);
        let result = self.scopes[scope].scope.handle(input, &mut outputs);
        for output in outputs.drain(..) {
            match output {
                Output::Publish(delta) => self.publish_delta(scope, delta),
                Output::RequestSync { peer } => self.request_sync(peer, scope, 0, None),
                Output::Timer { at } => {
                    let next = &mut self.scopes[scope].next_tick;
                    *next = Some(next.map_or(at, |t| t.min(at)));
                }
                // The host gives the changes to its subscribers.
                Output::Changed(_) => {}
            }
        }
        // A nested feed (a sync request that fails at once) took a buffer of its own.
        if self.outputs.capacity() < outputs.capacity() {
            self.outputs = outputs;
        }
        result
    }

    fn on_gossip_message(
        &mut self,
        propagation_source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let acceptance = self.accept_delta(&message);
        self.protocols.gossipsub.report_message_validation_result(
            &id,
            &propagation_source,
            acceptance,
        );
    }

    fn accept_delta(&mut self, message: &gossipsub::Message) -> MessageAcceptance {
        let Some(&scope) = self.by_topic.get(&message.topic) else {
            return MessageAcceptance::Ignore;
        };
        // The core counts what it rejects; what never reaches it is counted here.
        let rejected = &self.scopes[scope].scope.counters().deltas_rejected;
        let Some(source) = message.source else {
            rejected.fetch_add(1, Ordering::Relaxed);
            return MessageAcceptance::Reject;
        };
        if !self.admits(&source) {
            rejected.fetch_add(1, Ordering::Relaxed);
            return MessageAcceptance::Reject;
        }
        let delta: Delta = match ciborium::from_reader(&message.data[..]) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%source, error = %e, "malformed delta");
                rejected.fetch_add(1, Ordering::Relaxed);
                self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
                return MessageAcceptance::Reject;
            }
        };
        match self.feed(
            scope,
            Input::Delta {
                sender: source,
                delta,
            },
        ) {
            Ok(_) => {
                self.note_sharing(source, scope);
                MessageAcceptance::Accept
            }
            Err(rejection) => {
                tracing::warn!(%source, scope = %self.scopes[scope].scope.id(), %rejection, "delta rejected");
                MessageAcceptance::Reject
            }
        }
    }

    // ------------------------------------------------------------------ sync protocol

    fn request_sync(&mut self, peer: PeerId, scope: usize, page: u32, version: Option<Version>) {
        if !self.is_connected(&peer) {
            // Its deltas reached us through others: reach it directly (the addresses come
            // from what the protocols know of it), and pull again once connected.
            self.dial_known(peer);
            self.feed(scope, Input::SyncFailed { origin: peer }).ok();
            return;
        }
        let request = SyncRequest::Sync {
            scope: self.scopes[scope].scope.id().to_string(),
            page,
            version,
        };
        let id = self.protocols.sync.send_request(&peer, request);
        self.sync_out.insert(id, SyncOut::Sync { peer, scope });
    }

    /// Dials a peer we know of, unless the application disconnected it or it is being dialed.
    fn dial_known(&mut self, peer: PeerId) {
        if peer == self.me {
            return;
        }
        let p = self.peers.entry(peer).or_default();
        if p.forgotten || p.connections > 0 {
            return;
        }
        let opts = DialOpts::peer_id(peer).addresses(p.addrs.clone()).build();
        self.pending.push_back(ToSwarm::Dial { opts });
    }

    /// Peers a Discover answer told us of: remember their addresses and connect. A new peer
    /// is taken only while the node knows fewer than `max_known_peers`.
    fn meet(&mut self, peers: Vec<(PeerId, Vec<Multiaddr>)>) {
        for (peer, addrs) in peers.into_iter().take(MAX_PEERS_EXCHANGED) {
            if peer == self.me {
                continue;
            }
            if !self.peers.contains_key(&peer) && self.peers.len() >= self.max_known_peers {
                self.shared
                    .stats
                    .peers_ignored
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let p = self.peers.entry(peer).or_insert_with(|| Peer {
                told: true,
                ..Peer::default()
            });
            for addr in addrs.into_iter().take(MAX_ADDRS) {
                p.remember(addr);
            }
            self.dial_known(peer);
        }
    }

    fn my_versions(&self, only: Option<usize>) -> Vec<(String, Version)> {
        self.scopes
            .iter()
            .enumerate()
            .filter(|(i, _)| only.is_none_or(|o| o == *i))
            .map(|(_, s)| (s.scope.id().to_string(), s.scope.version()))
            .collect()
    }

    fn send_discover(&mut self, peer: PeerId, only: Option<usize>) {
        let scopes = self.my_versions(only);
        if scopes.is_empty() {
            return;
        }
        let id = self
            .protocols
            .sync
            .send_request(&peer, SyncRequest::Discover { scopes });
        self.sync_out.insert(id, SyncOut::Discover);
        self.discovers_in_flight += 1;
    }

    fn pump_discovers(&mut self) {
        while self.discovers_in_flight < MAX_DISCOVERS_IN_FLIGHT {
            let Some(peer) = self.discover_queue.pop_front() else {
                break;
            };
            if self.is_connected(&peer) {
                self.send_discover(peer, None);
            }
        }
    }

    /// The peer told us its versions: remember that it hosts those scopes, pull what differs.
    fn on_peer_versions(&mut self, peer: PeerId, versions: Vec<(String, Version)>) {
        for (id, version) in versions {
            let Some(&scope) = self.by_id.get(&id) else {
                continue;
            };
            self.note_sharing(peer, scope);
            self.feed(scope, Input::PeerVersion { peer, version }).ok();
        }
    }

    /// `peer` hosts `scope`: keep its connections, publish our changes for it.
    fn note_sharing(&mut self, peer: PeerId, scope: usize) {
        if peer == self.me {
            return;
        }
        let p = self.peers.entry(peer).or_default();
        if p.scopes.insert(scope) {
            self.scopes[scope].peers.push(peer);
            self.protocols.keep_alive.set(peer, true);
            self.feed(scope, Input::PeerShares).ok();
        }
    }

    fn on_sync_event(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_sync_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_sync_response(peer, request_id, response),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.shared
                    .stats
                    .requests_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, %error, "sync request failed");
                match self.sync_out.remove(&request_id) {
                    Some(SyncOut::Discover) => {
                        self.discovers_in_flight = self.discovers_in_flight.saturating_sub(1);
                        self.pump_discovers();
                    }
                    Some(SyncOut::Sync { peer, scope }) => {
                        self.partial_syncs.remove(&(peer, scope));
                        self.feed(scope, Input::SyncFailed { origin: peer }).ok();
                    }
                    Some(SyncOut::Goodbye) => self.goodbye_answered(),
                    None => {}
                }
            }
            // A malformed request is counted by the codec (request-response reports no
            // failure for it); what is left here is a stream that failed otherwise.
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound sync request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn respond(&mut self, channel: ResponseChannel<SyncResponse>, response: SyncResponse) {
        if self
            .protocols
            .sync
            .send_response(channel, response)
            .is_err()
        {
            tracing::debug!("sync response not sent: the connection closed");
        }
    }

    fn on_sync_request(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        match request {
            SyncRequest::Discover { scopes } => {
                let shared: Vec<usize> = scopes
                    .iter()
                    .filter_map(|(id, _)| self.by_id.get(id).copied())
                    .collect();
                self.on_peer_versions(peer, scopes);
                let mut mine = Vec::new();
                for &i in &shared {
                    mine.extend(self.my_versions(Some(i)));
                }
                let peers = self
                    .peers
                    .iter()
                    .filter(|(id, p)| {
                        **id != peer
                            && p.connections > 0
                            && !p.addrs.is_empty()
                            && shared.iter().any(|s| p.scopes.contains(s))
                    })
                    .take(MAX_PEERS_EXCHANGED)
                    .map(|(id, p)| (*id, p.addrs.clone()))
                    .collect();
                self.respond(
                    channel,
                    SyncResponse::Discover {
                        scopes: mine,
                        peers,
                    },
                );
            }
            SyncRequest::Sync {
                scope,
                page,
                version,
            } => {
                let response = self.serve_sync(peer, &scope, page, version);
                self.respond(channel, response);
            }
            SyncRequest::Goodbye { incarnation } => {
                for i in 0..self.scopes.len() {
                    let leaving = self.feed(i, Input::Goodbye { peer, incarnation });
                    if let Ok(Outcome::Goodbye { purged: true }) = leaving
                        && let Some(p) = self.peers.get_mut(&peer)
                    {
                        p.purged.insert(i);
                    }
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    // It left on purpose: do not dial it again (it may come back and dial).
                    p.departed = true;
                    p.redial = None;
                }
                self.respond(channel, SyncResponse::Ack);
            }
        }
    }

    fn serve_sync(
        &mut self,
        peer: PeerId,
        scope_id: &str,
        page: u32,
        version: Option<Version>,
    ) -> SyncResponse {
        let Some(&scope) = self.by_id.get(scope_id) else {
            return SyncResponse::Refused {
                reason: format!("scope {scope_id:?} is not hosted here"),
            };
        };
        self.note_sharing(peer, scope);
        self.scopes[scope]
            .scope
            .counters()
            .syncs_served
            .fetch_add(1, Ordering::Relaxed);
        if page == 0 {
            let state = self.scopes[scope].scope.sync_state();
            let pages = paginate(state.groups, self.page_bytes);
            let count = pages.len() as u32;
            let mut pages = pages.into_iter();
            let first = pages.next().unwrap_or_default();
            let rest: Vec<Vec<SyncGroup>> = pages.collect();
            if !rest.is_empty() {
                // Keep the later pages: they must come from the same state as the first.
                let mut all = vec![Vec::new()];
                all.extend(rest);
                self.served_pages.insert(
                    (peer, scope),
                    ServedPages {
                        version: state.version,
                        pages: all,
                        at: Instant::now(),
                    },
                );
            }
            return SyncResponse::Page {
                scope: scope_id.to_owned(),
                version: state.version,
                page: 0,
                pages: count,
                groups: first,
            };
        }
        let Some(served) = self.served_pages.get_mut(&(peer, scope)) else {
            return SyncResponse::Refused {
                reason: "pages expired".into(),
            };
        };
        if Some(served.version) != version || page as usize >= served.pages.len() {
            return SyncResponse::Refused {
                reason: "no such page of that version".into(),
            };
        }
        let version = served.version;
        let pages = served.pages.len() as u32;
        let groups = std::mem::take(&mut served.pages[page as usize]);
        if page + 1 == pages {
            self.served_pages.remove(&(peer, scope));
        }
        SyncResponse::Page {
            scope: scope_id.to_owned(),
            version,
            page,
            pages,
            groups,
        }
    }

    /// Counts an answer that does not fit its request (another kind, or a page of another
    /// scope) as malformed input; a refusal is an answer the protocol allows.
    fn unfitting_answer(&self, peer: PeerId, answer: &SyncResponse) {
        if !matches!(answer, SyncResponse::Refused { .. }) {
            tracing::debug!(%peer, "an answer that does not fit its request");
            self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_sync_response(&mut self, peer: PeerId, id: OutboundRequestId, response: SyncResponse) {
        let Some(out) = self.sync_out.remove(&id) else {
            return;
        };
        match (out, response) {
            (SyncOut::Discover, SyncResponse::Discover { scopes, peers }) => {
                self.discovers_in_flight = self.discovers_in_flight.saturating_sub(1);
                self.on_peer_versions(peer, scopes);
                self.meet(peers);
                self.pump_discovers();
            }
            (
                SyncOut::Sync { scope, .. },
                SyncResponse::Page {
                    scope: scope_id,
                    version,
                    page,
                    pages,
                    groups,
                },
            ) if self.scopes[scope].scope.id().as_ref() == scope_id => {
                self.on_sync_page(peer, scope, version, page, pages, groups);
            }
            (SyncOut::Goodbye, _) => self.goodbye_answered(),
            (SyncOut::Discover, other) => {
                self.discovers_in_flight = self.discovers_in_flight.saturating_sub(1);
                self.unfitting_answer(peer, &other);
                tracing::debug!(%peer, ?other, "Discover refused or answered amiss");
            }
            (SyncOut::Sync { scope, .. }, other) => {
                self.unfitting_answer(peer, &other);
                tracing::debug!(%peer, ?other, "sync refused or answered amiss");
                self.partial_syncs.remove(&(peer, scope));
                self.feed(scope, Input::SyncFailed { origin: peer }).ok();
            }
        }
    }

    fn on_sync_page(
        &mut self,
        peer: PeerId,
        scope: usize,
        version: Version,
        page: u32,
        pages: u32,
        groups: Vec<SyncGroup>,
    ) {
        let key = (peer, scope);
        if pages > MAX_SYNC_PAGES {
            // More than any state we would hold: refuse it before buffering any of it.
            tracing::warn!(%peer, pages, "sync of too many pages refused");
            self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
            self.partial_syncs.remove(&key);
            self.feed(scope, Input::SyncFailed { origin: peer }).ok();
            return;
        }
        let complete = if page == 0 {
            if pages <= 1 {
                Some(groups)
            } else {
                self.partial_syncs.insert(
                    key,
                    PartialSync {
                        version,
                        pages,
                        groups,
                    },
                );
                None
            }
        } else {
            match self.partial_syncs.get_mut(&key) {
                Some(p) if p.version == version && p.pages == pages => {
                    append_page(&mut p.groups, groups);
                    if page + 1 == pages {
                        self.partial_syncs.remove(&key).map(|p| p.groups)
                    } else {
                        None
                    }
                }
                _ => {
                    self.partial_syncs.remove(&key);
                    self.feed(scope, Input::SyncFailed { origin: peer }).ok();
                    return;
                }
            }
        };
        match complete {
            None => self.request_sync(peer, scope, page + 1, Some(version)),
            Some(groups) => {
                let state = SyncState {
                    origin: peer,
                    version,
                    groups,
                };
                let sync = Input::Sync {
                    sender: peer,
                    state,
                };
                if let Err(rejection) = self.feed(scope, sync) {
                    tracing::warn!(%peer, %rejection, "sync rejected");
                }
            }
        }
    }

    // ------------------------------------------------------------------ delivery

    fn pump(&mut self, peer: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        while let Some(send) = p.outbox.poll_send(&self.policy, now) {
            let batch = DeliverBatch {
                incarnation: self.incarnation,
                seq: send.seq,
                frames: send.frames,
            };
            let id = self.protocols.deliver.send_request(&peer, batch);
            self.deliver_out
                .insert(id, (peer, send.seq, now + self.policy.timeout));
        }
    }

    fn on_deliver_event(&mut self, event: request_response::Event<DeliverBatch, DeliverAck>) {
        let now = Instant::now();
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let seq = request.seq;
                    self.on_batch(peer, request);
                    if self
                        .protocols
                        .deliver
                        .send_response(channel, DeliverAck { seq })
                        .is_err()
                    {
                        tracing::debug!(%peer, "delivery ack not sent: the connection closed");
                    }
                }
                request_response::Message::Response { request_id, .. } => {
                    if let Some((peer, seq, _)) = self.deliver_out.remove(&request_id)
                        && let Some(p) = self.peers.get_mut(&peer)
                    {
                        let done = p.outbox.on_success(seq);
                        self.shared.queued_frames.fetch_sub(done, Ordering::Relaxed);
                        self.shared
                            .stats
                            .frames_sent
                            .fetch_add(done as u64, Ordering::Relaxed);
                        self.pump(peer, now);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((peer, seq, _)) = self.deliver_out.remove(&request_id) {
                    tracing::debug!(%peer, seq, %error, "delivery batch failed");
                    self.delivery_failed(peer, seq, now);
                }
            }
            // A malformed request is counted by the codec (request-response reports no
            // failure for it); what is left here is a stream that failed otherwise.
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound delivery failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// A batch failed (an error, or no answer within the policy's timeout): retried later or given
    /// up, as the outbox decides.
    fn delivery_failed(&mut self, peer: PeerId, seq: u64, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if let Some(lost) = p.outbox.on_failure(seq, &self.policy, now) {
            self.shared.queued_frames.fetch_sub(lost, Ordering::Relaxed);
            self.shared
                .stats
                .frames_lost
                .fetch_add(lost as u64, Ordering::Relaxed);
            tracing::warn!(%peer, lost, "delivery given up");
        }
        self.pump(peer, now);
    }

    /// Batches unanswered past the policy's timeout (the longest `broadcast_timeout`, also
    /// request-response's `deliver_timeout`) fail now. request-response's own timeout
    /// starts only once the stream is negotiated, which a peer that never reads can put off
    /// for the swarm's 10 s upgrade timeout. The batch keeps its sequence number, so a late
    /// first copy and its retry are still delivered once; a late answer is ignored.
    fn expire_deliveries(&mut self, now: Instant) {
        let expired: Vec<(OutboundRequestId, PeerId, u64)> = self
            .deliver_out
            .iter()
            .filter(|(_, (_, _, deadline))| *deadline <= now)
            .map(|(id, (peer, seq, _))| (*id, *peer, *seq))
            .collect();
        for (id, peer, seq) in expired {
            self.deliver_out.remove(&id);
            tracing::debug!(%peer, seq, "delivery batch unanswered within the timeout");
            self.delivery_failed(peer, seq, now);
        }
    }

    /// Delivers a batch once: a retried batch (same incarnation, a sequence already seen) is
    /// acknowledged again but not delivered again.
    fn on_batch(&mut self, peer: PeerId, batch: DeliverBatch) {
        if let Some(&(incarnation, last)) = self.received.get(&peer)
            && incarnation == batch.incarnation
            && batch.seq <= last
        {
            self.shared
                .stats
                .batches_duplicate
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.received.insert(peer, (batch.incarnation, batch.seq));
        let count =
            self.processes
                .deliver_batch(peer, batch.frames, &self.shared.stats.messages_dropped);
        self.shared
            .stats
            .frames_received
            .fetch_add(count, Ordering::Relaxed);
    }

    // ------------------------------------------------------------------ swarm events

    fn on_connection_established(&mut self, peer_id: PeerId, endpoint: &ConnectedPoint) {
        let p = self.peers.entry(peer_id).or_default();
        p.connections += 1;
        p.told = false;
        if endpoint.is_dialer() {
            p.remember(endpoint.get_remote_address().clone());
        }
        if p.connections == 1 {
            p.down_since = None;
            p.purged.clear();
            p.redial = None;
            p.forgotten = false;
            p.departed = false;
            self.shared
                .connected
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer_id);
            self.discover_queue.push_back(peer_id);
            self.pump_discovers();
            if self.kad_enabled && self.kad_next.is_none() {
                self.kad_next = Some(Instant::now() + KAD_FIRST);
            }
        }
    }

    fn on_connection_closed(&mut self, peer_id: PeerId, remaining: usize) {
        if remaining > 0 {
            if let Some(p) = self.peers.get_mut(&peer_id) {
                p.connections = remaining;
            }
            return;
        }
        let p = self.peers.entry(peer_id).or_default();
        p.connections = 0;
        p.down_since = Some(Instant::now());
        if !p.scopes.is_empty() && !p.forgotten && !p.departed {
            p.redial = Some((Instant::now() + REDIAL_FIRST, REDIAL_FIRST, 0));
        }
        self.shared
            .connected
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer_id);
    }

    fn on_dial_failure(&mut self, peer: PeerId) {
        if self
            .peers
            .get(&peer)
            .is_some_and(|p| p.told && p.connections == 0 && p.outbox.len() == 0)
        {
            self.peers.remove(&peer);
            return;
        }
        if let Some(p) = self.peers.get_mut(&peer)
            && p.connections == 0
            && !p.forgotten
        {
            let (_, backoff, attempts) = p.redial.unwrap_or((Instant::now(), REDIAL_FIRST / 2, 0));
            if attempts < MAX_REDIALS {
                let backoff = (backoff * 2).min(REDIAL_MAX);
                p.redial = Some((Instant::now() + backoff, backoff, attempts + 1));
            } else {
                p.redial = None;
            }
        }
    }

    fn on_listen_addr(&mut self, address: &Multiaddr, added: bool) {
        let mut addrs = self
            .shared
            .listen_addrs
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if added {
            if !addrs.contains(address) {
                addrs.push(address.clone());
            }
        } else {
            addrs.retain(|a| a != address);
        }
    }

    /// Everything stops: no more timers, requests or events; the owner may drop the swarm.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.stopped.store(true, Ordering::Release);
        if let Some(s) = self.shutdown.take() {
            s.done.send(()).ok();
        }
        self.pending
            .push_back(ToSwarm::GenerateEvent(Event::Stopped));
    }

    fn on_behaviour_event(&mut self, event: ProtocolsEvent) {
        match event {
            ProtocolsEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip_message(propagation_source, message_id, message),
            ProtocolsEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic }) => {
                // From now on our deltas reach it; ask for versions once more in case one
                // was published between its sync and its subscription.
                if let Some(&scope) = self.by_topic.get(&topic) {
                    self.note_sharing(peer_id, scope);
                    self.send_discover(peer_id, Some(scope));
                }
            }
            ProtocolsEvent::Gossipsub(_) => {}
            ProtocolsEvent::Sync(event) => self.on_sync_event(event),
            ProtocolsEvent::Deliver(event) => self.on_deliver_event(event),
            ProtocolsEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    if peer == self.me {
                        continue;
                    }
                    let p = self.peers.entry(peer).or_default();
                    p.told = false;
                    for a in &addrs {
                        p.remember(a.clone());
                    }
                    if p.connections == 0 {
                        // Both sides discover each other at once: a fresh port for the
                        // outgoing socket, so the two dials cannot collide on one TCP
                        // connection (DESIGN section 4).
                        let opts = DialOpts::peer_id(peer)
                            .addresses(addrs)
                            .allocate_new_port()
                            .build();
                        self.pending.push_back(ToSwarm::Dial { opts });
                    }
                }
            }
            ProtocolsEvent::Mdns(mdns::Event::Expired(_)) => {}
            ProtocolsEvent::Kad(event) => self.on_kad_event(event),
            ProtocolsEvent::Identify(event) => {
                if let identify::Event::Received { peer_id, info, .. } = *event {
                    let speaks_kad = info
                        .protocols
                        .iter()
                        .any(|p| p.as_ref() == "/ipfs/kad/1.0.0");
                    let p = self.peers.entry(peer_id).or_default();
                    for addr in info.listen_addrs.into_iter().take(MAX_ADDRS) {
                        p.remember(addr.clone());
                        if speaks_kad {
                            self.protocols.kad.add_address(&peer_id, addr);
                        }
                    }
                }
            }
            ProtocolsEvent::Ping(ping::Event {
                peer,
                result: Err(ping::Failure::Unsupported),
                ..
            }) => {
                // Not a procgroups peer, or one without ping: liveness is the transport's.
                tracing::debug!(%peer, "peer does not speak ping");
            }
            ProtocolsEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error),
            }) => {
                tracing::debug!(%peer, %error, "ping failed: closing the connection");
                self.pending.push_back(ToSwarm::CloseConnection {
                    peer_id: peer,
                    connection: CloseConnection::One(connection),
                });
            }
            ProtocolsEvent::Ping(_) => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        if let kad::Event::OutboundQueryProgressed {
            result:
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })),
            ..
        } = event
        {
            for peer in providers {
                if peer != self.me && !self.is_connected(&peer) {
                    // The query is still running: Kademlia supplies the addresses it learnt.
                    self.pending.push_back(ToSwarm::Dial {
                        opts: DialOpts::peer_id(peer).build(),
                    });
                }
            }
        }
    }

    fn kad_round(&mut self) {
        let kad = &mut self.protocols.kad;
        if kad.bootstrap().is_err() {
            return; // no known peer yet
        }
        for s in &self.scopes {
            if let Err(e) = kad.start_providing(s.key.clone()) {
                tracing::warn!(scope = %s.scope.id(), error = %e, "cannot provide");
            }
            kad.get_providers(s.key.clone());
        }
    }

    // ------------------------------------------------------------------ timers

    fn housekeeping(&mut self) {
        let now = Instant::now();
        self.shared.heartbeat.beat(now);
        for i in 0..self.scopes.len() {
            let scope = &mut self.scopes[i];
            if scope.next_tick.is_some_and(|at| at <= scope.scope.now()) {
                // The core asks again for what stays pending.
                scope.next_tick = None;
                self.feed(i, Input::Tick).ok();
            }
            self.anti_entropy(i, now);
        }
        self.watch_origins(now);
        self.node_down(now);
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.outbox.next_due().is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for peer in due {
            self.pump(peer, now);
        }
        self.expire_deliveries(now);
        self.redials(now);
        self.publish_views(now);
        self.shared
            .known_peers
            .store(self.peers.len(), Ordering::Relaxed);
        let ttl = self.policy.timeout.max(Duration::from_secs(5)) * 2;
        self.served_pages
            .retain(|_, s| now.duration_since(s.at) < ttl);
        if self.kad_enabled && self.kad_next.is_some_and(|t| t <= now) {
            self.kad_round();
            self.kad_interval = (self.kad_interval * 2).min(KAD_MAX);
            self.kad_next = Some(now + self.kad_interval);
        }
    }

    fn anti_entropy(&mut self, scope: usize, now: Instant) {
        let s = &mut self.scopes[scope];
        let (Some(next), Some(interval)) = (
            s.next_anti_entropy,
            s.scope.config().anti_entropy_interval(),
        ) else {
            return;
        };
        if now < next {
            return;
        }
        s.next_anti_entropy = Some(now + interval);
        let connected: Vec<PeerId> = s
            .peers
            .iter()
            .filter(|p| self.peers.get(p).is_some_and(|p| p.connections > 0))
            .copied()
            .collect();
        if connected.is_empty() {
            return;
        }
        s.cursor = (s.cursor + 1) % connected.len();
        let peer = connected[s.cursor];
        self.send_discover(peer, Some(scope));
    }

    /// Origins whose members we hold but to which we have no connection (their deltas came
    /// through other peers) are unreachable too: start their grace period and try to reach
    /// them.
    fn watch_origins(&mut self, now: Instant) {
        for i in 0..self.scopes.len() {
            let origins = self.scopes[i].scope.live_origins();
            for origin in origins {
                let p = self.peers.entry(origin).or_default();
                p.scopes.insert(i);
                if p.connections == 0 && p.down_since.is_none() {
                    p.down_since = Some(now);
                    if !p.forgotten && p.redial.is_none() {
                        p.redial = Some((now, REDIAL_FIRST, 0));
                    }
                }
            }
        }
    }

    /// Purges the members of peers unreachable for longer than each scope's grace period.
    fn node_down(&mut self, now: Instant) {
        let mut purge = Vec::new();
        for (peer, p) in &mut self.peers {
            let Some(since) = p.down_since else { continue };
            for &i in &p.scopes {
                if !p.purged.contains(&i)
                    && now.duration_since(since) >= self.scopes[i].scope.config().node_down_grace()
                {
                    purge.push((*peer, i));
                }
            }
            for (_, i) in purge.iter().filter(|(q, _)| q == peer) {
                p.purged.insert(*i);
            }
        }
        for (peer, i) in purge {
            tracing::info!(%peer, scope = %self.scopes[i].scope.id(), "node down: purging its members");
            self.feed(i, Input::PeerDown { peer }).ok();
            self.partial_syncs.remove(&(peer, i));
        }
    }

    /// Tells each scope what the behaviour knows of its peers, for stats and health.
    fn publish_views(&mut self, now: Instant) {
        let mut views = vec![ScopeNetView::default(); self.scopes.len()];
        for (id, p) in &self.peers {
            let connected = p.connections > 0;
            let lost = match p.down_since {
                Some(since) if !connected && !p.forgotten && !p.departed => {
                    (now.duration_since(since) < UNREACHABLE_REPORTED_FOR).then_some(since)
                }
                _ => None,
            };
            if !connected && lost.is_none() {
                continue;
            }
            for &i in &p.scopes {
                let view = &mut views[i];
                if let Some(since) = lost {
                    view.unreachable.push((*id, since));
                } else {
                    view.peers += 1;
                }
                match p.outbox.breaker_state() {
                    BreakerState::Closed => view.breakers.closed += 1,
                    BreakerState::HalfOpen => view.breakers.half_open += 1,
                    BreakerState::Open => view.breakers.open += 1,
                }
            }
        }
        for (s, view) in self.scopes.iter().zip(views) {
            s.scope.set_view(view);
        }
    }

    fn redials(&mut self, now: Instant) {
        let due: Vec<(PeerId, Vec<Multiaddr>)> = self
            .peers
            .iter_mut()
            .filter(|(_, p)| p.connections == 0 && !p.forgotten)
            .filter_map(|(id, p)| match p.redial {
                Some((at, backoff, attempts)) if at <= now => {
                    // Until the dial reports back, wait as if it failed.
                    p.redial = Some((now + backoff.max(REDIAL_FIRST) * 4, backoff, attempts));
                    Some((*id, p.addrs.clone()))
                }
                _ => None,
            })
            .collect();
        for (peer, addrs) in due {
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .allocate_new_port()
                .build();
            self.pending.push_back(ToSwarm::Dial { opts });
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = THandler<Protocols>;
    type ToSwarm = Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> std::result::Result<(), ConnectionDenied> {
        self.protocols
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> std::result::Result<THandler<Self>, ConnectionDenied> {
        if !self.admits(&peer) {
            return Err(ConnectionDenied::new(NotAdmitted));
        }
        self.protocols.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> std::result::Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = maybe_peer
            && self.peers.get(&peer).is_some_and(|p| p.forgotten)
        {
            // Whoever dials (Kademlia's own bootstrap, a request): the application said no.
            return Err(ConnectionDenied::new(Disconnected));
        }
        if let Some(peer) = maybe_peer
            && !self.admits(&peer)
        {
            return Err(ConnectionDenied::new(NotAdmitted));
        }
        self.protocols.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> std::result::Result<THandler<Self>, ConnectionDenied> {
        if !self.admits(&peer) {
            return Err(ConnectionDenied::new(NotAdmitted));
        }
        self.protocols.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.protocols.on_swarm_event(event);
        if self.stopped {
            return;
        }
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.on_connection_established(e.peer_id, e.endpoint)
            }
            FromSwarm::ConnectionClosed(e) => {
                self.on_connection_closed(e.peer_id, e.remaining_established)
            }
            FromSwarm::DialFailure(e) => {
                if let Some(peer) = e.peer_id {
                    tracing::debug!(%peer, error = %e.error, "dial failed");
                    self.on_dial_failure(peer);
                }
            }
            FromSwarm::NewListenAddr(e) => self.on_listen_addr(e.addr, true),
            FromSwarm::ExpiredListenAddr(e) => self.on_listen_addr(e.addr, false),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.protocols
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        // Each round serves every source once (commands up to a budget), so that a flood from
        // one (the application's sends, a peer's messages) cannot starve the others; after
        // `POLL_ROUNDS` busy rounds it yields to the swarm, which must get to do the I/O.
        for _ in 0..POLL_ROUNDS {
            if let Some(action) = self.pending.pop_front() {
                return Poll::Ready(action);
            }
            if self.stopped {
                // The protocols still answer what is in flight; nothing new starts.
                return match self.protocols.poll(cx) {
                    Poll::Ready(ToSwarm::GenerateEvent(_)) => continue,
                    Poll::Ready(action) => Poll::Ready(action.map_out(|_| Event::Stopped)),
                    Poll::Pending => Poll::Pending,
                };
            }
            if let Some(s) = &self.shutdown
                && (s.waiting == 0 || Instant::now() >= s.deadline)
            {
                self.stop();
                continue;
            }
            let mut busy = false;
            for _ in 0..COMMAND_BUDGET {
                match self.commands.poll_recv(cx) {
                    Poll::Ready(Some(command)) => {
                        self.on_command(command);
                        busy = true;
                    }
                    Poll::Ready(None) => {
                        // Every handle is gone: nobody is left to say goodbye for.
                        tracing::debug!("node dropped; its behaviour stops");
                        self.stop();
                        busy = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            self.shared.waker.register(cx.waker());
            if self.shared.dirty.swap(false, Ordering::AcqRel) {
                self.publish_deltas();
                busy = true;
            }
            let timer = self.housekeeping.get_or_insert_with(|| {
                let mut t = tokio::time::interval(HOUSEKEEPING);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                t
            });
            if timer.poll_tick(cx).is_ready() {
                self.housekeeping();
                busy = true;
            }
            match self.protocols.poll(cx) {
                Poll::Ready(ToSwarm::GenerateEvent(event)) => {
                    self.on_behaviour_event(event);
                    busy = true;
                }
                // Only `GenerateEvent` carries an event, and it is handled above.
                Poll::Ready(action) => return Poll::Ready(action.map_out(|_| Event::Stopped)),
                Poll::Pending => {}
            }
            if !busy && self.pending.is_empty() {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Appends a page to the groups of the pages before it: a group too big for one page
/// continues on the next.
fn append_page(groups: &mut Vec<SyncGroup>, page: Vec<SyncGroup>) {
    for g in page {
        match groups.last_mut() {
            Some(last) if last.name == g.name => last.members.extend(g.members),
            _ => groups.push(g),
        }
    }
}

/// Cuts a state into pages of about `page_bytes` each (a group is never split unless it alone
/// is bigger, in which case its members are). Always at least one page.
fn paginate(groups: Vec<SyncGroup>, page_bytes: usize) -> Vec<Vec<SyncGroup>> {
    const MEMBER_BYTES: usize = 14;
    let mut pages = vec![Vec::new()];
    let mut size = 0;
    for group in groups {
        let per_member_cap =
            (page_bytes.saturating_sub(16 + group.name.len()) / MEMBER_BYTES).max(1);
        let chunks: Vec<Vec<(u64, u32)>> = if group.members.len() > per_member_cap {
            group
                .members
                .chunks(per_member_cap)
                .map(<[_]>::to_vec)
                .collect()
        } else {
            vec![group.members]
        };
        for members in chunks {
            let bytes = 16 + group.name.len() + MEMBER_BYTES * members.len();
            if size + bytes > page_bytes && !pages.last().is_some_and(Vec::is_empty) {
                pages.push(Vec::new());
                size = 0;
            }
            size += bytes;
            if let Some(page) = pages.last_mut() {
                page.push(SyncGroup {
                    name: group.name.clone(),
                    members,
                });
            }
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, members: u64) -> SyncGroup {
        SyncGroup {
            name: name.into(),
            members: (1..=members).map(|id| (id, 1)).collect(),
        }
    }

    #[test]
    fn pages_stay_under_the_size_and_reassemble_to_the_same_state() {
        let groups: Vec<SyncGroup> = (0..50)
            .map(|i| group(&format!("g{i}"), i * 7))
            .chain([group("huge", 5000)])
            .filter(|g| !g.members.is_empty())
            .collect();
        let pages = paginate(groups.clone(), 4096);
        assert!(pages.len() > 10, "{} pages", pages.len());
        for page in &pages {
            let bytes: usize = page
                .iter()
                .map(|g| 16 + g.name.len() + 14 * g.members.len())
                .sum();
            assert!(bytes <= 4096, "page of {bytes} bytes");
        }
        let mut back = Vec::new();
        for page in pages {
            append_page(&mut back, page);
        }
        assert_eq!(back, groups);
    }

    #[test]
    fn an_empty_state_is_one_empty_page() {
        assert_eq!(paginate(Vec::new(), 4096), vec![Vec::<SyncGroup>::new()]);
    }
}
