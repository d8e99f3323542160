//! The node's network behaviour: it drives the protocols, the timers and the outboxes, and
//! feeds the scopes' cores with what peers say (docs/protocol.md says what; docs/architecture.md
//! says how the modules below divide the work).
//!
//! The application's calls never wait for it: a join changes the scope's core under its mutex
//! and wakes the behaviour, which publishes what queued since its last turn as one delta, so
//! changes batch themselves under load.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::gossipsub::{self, TopicHash};
use libp2p::identity::Keypair;
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, identify, kad, mdns, ping};
use tokio::sync::{mpsc, oneshot};

use crate::net::handle::{Command, NetHandle, NetShared};
use crate::net::host::{InboxSink, ScopeHost};
use crate::net::outbox::DeliveryPolicy;
use crate::net::peer::Peer;
use crate::net::protocols::{
    BehaviourConfig, ProtocolCounters, Protocols, ProtocolsEvent, scope_provider_key, scope_topic,
};
use crate::net::relay::RelayAdmission;
use crate::net::relaying::Relaying;
use crate::net::request_budget::RequestBudget;
use crate::proto::Output;
use crate::proto::messages::{SyncGroup, Version};
use crate::vocab::error::{Error, Result};

mod commands;
mod delivery;
mod deltas;
mod discovery;
mod peers;
mod relay;
mod sync;
#[cfg(test)]
mod tests;
mod timers;

/// How often timers are checked: retries, reorder windows, grace periods, anti-entropy.
const HOUSEKEEPING: Duration = Duration::from_millis(20);
/// Commands taken per round of `poll`, and busy rounds before `poll` yields to the swarm.
const COMMAND_BUDGET: usize = 256;
const POLL_ROUNDS: usize = 32;
/// Discover requests in flight at once; more peers wait their turn.
const MAX_DISCOVERS_IN_FLIGHT: usize = 8;
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

/// A delivery batch sent and not yet answered.
struct BatchInFlight {
    peer: PeerId,
    /// The batch's sequence number, which its retries keep.
    seq: u64,
    /// Unanswered by then, it counts as failed.
    deadline: Instant,
}

/// The last batch delivered from a sender: its incarnation and sequence number.
struct LastBatch {
    incarnation: u64,
    seq: u64,
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
/// logic that drives them (Discover, Sync, deltas, anti-entropy, node-down, delivery with
/// outboxes and breakers, discovery by mDNS and Kademlia; docs/protocol.md describes each).
///
/// [`NodeBuilder::build`](crate::NodeBuilder::build) runs one in a swarm of its own. To run it
/// in an application's swarm instead (one set of connections for everything),
/// [`NodeBuilder::build_behaviour`](crate::NodeBuilder::build_behaviour) returns the
/// [`Node`](crate::Node) and its behaviour: add the behaviour as a field of the application's
/// `#[derive(NetworkBehaviour)]` and keep polling the swarm. The swarm must run on tokio
/// (mDNS and the timers use it); its idle-connection timeout does not matter, because the
/// behaviour keeps the connections to peers that share a scope.
///
/// What it does:
/// - **Deltas**: a local change wakes it; everything queued since its last turn goes out as
///   one delta (cut below the core's `MAX_DELTA_BYTES`), so a single join is sent at once and
///   a burst batches itself. It goes on the delta stream of every connected peer of the scope
///   ([`DeltaStreams`](crate::behaviour::delta_stream::DeltaStreams)), and on gossipsub too
///   while some peer of the scope has no stream. A delta is accepted only if its origin is the
///   authenticated sender (the stream's peer, or the gossipsub message's signed source) and
///   the core takes it; gossipsub forwards only what was accepted, and a streamed delta is
///   never forwarded.
/// - **Discover** on every new connection, both ways, at most `MAX_DISCOVERS_IN_FLIGHT` in
///   flight (the rest wait their turn), and again when the peer subscribes to a scope's topic
///   (a delta published between its sync and its subscription is not lost). The answer also
///   names the other connected peers of the shared scopes (at most
///   [`MAX_PEERS_EXCHANGED`](crate::wire::MAX_PEERS_EXCHANGED), with their addresses): the node dials
///   them, because a sync needs a direct connection to the origin, so every member of a
///   scope ends up connected to every other. A peer known only from such answers is forgotten
///   when its dial fails, and none is taken once the node knows `max_known_peers`
///   ([`BehaviourConfig`]), so answers cannot make it keep state without bound.
/// - **Sync** of one origin's state, pulled from the origin itself when the core asks (gap,
///   new incarnation, unknown or purged origin), paged under half the response cap, at most
///   `MAX_SYNC_PAGES` pages. A node whose deltas reach us through others but that we are not
///   connected to is dialed.
/// - **Anti-entropy**: every `anti_entropy_interval`, a Discover of that scope to the next
///   connected peer of the scope (round robin).
/// - **Node down**: a peer with no connection (or never connected, but whose members we
///   hold) is purged from a scope once that scope's `node_down_grace` has passed; lost
///   peers are redialed with backoff (`REDIAL_FIRST` doubling to `REDIAL_MAX`, `MAX_REDIALS`
///   attempts). A ping that
///   fails closes its connection. A peer that says goodbye (graceful shutdown) is purged at
///   once and not redialed.
/// - **Delivery**: one ordered outbox per peer (see `broadcast`); the retry and breaker
///   settings are per node, taken from the scopes: the longest `broadcast_timeout`,
///   `max_retries` and `retry_max_delay`, the shortest `retry_base_delay`, the fewest
///   `circuit_breaker_failures` and the longest `circuit_breaker_reset_time` (most nodes host
///   one scope, for which these are exactly its settings). A retried batch keeps its
///   sequence number; the receiver delivers each (sender incarnation, sequence) once. The
///   caller's `Delivery` resolves when the batch carrying its frame is acknowledged, or fails
///   with the reason when the frame is given up.
/// - **Kademlia** (when bootstrap addresses are given): the node provides a key per scope and
///   looks up its providers `KAD_FIRST` after its first connection, then at doubling
///   intervals up to every `KAD_MAX`, and dials the providers it finds.
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
    /// Delivery batches sent and not yet answered.
    deliver_out: HashMap<OutboundRequestId, BatchInFlight>,
    partial_syncs: HashMap<(PeerId, usize), PartialSync>,
    served_pages: HashMap<(PeerId, usize), ServedPages>,
    /// Per sender, the last batch delivered (a retry of it or of an earlier one is not).
    received: HashMap<PeerId, LastBatch>,
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
    /// Each connected peer's budget of inbound sync requests.
    request_budget: RequestBudget,
    relaying: Relaying,
    /// Peers whose delta stream from this node is open.
    delta_streams_open: hashbrown::HashSet<PeerId>,
}

impl Behaviour {
    fn new(
        config: NetConfig,
        scopes: Vec<Arc<dyn ScopeHost>>,
        processes: Arc<dyn InboxSink>,
        shared: Arc<NetShared>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Result<Self> {
        let admission = RelayAdmission::new(config.behaviour.relay.server);
        let mut protocols = Protocols::with_counters(
            &config.keypair,
            &config.behaviour,
            ProtocolCounters {
                malformed: shared.stats.malformed.clone(),
                streams_reset: shared.stats.inbound_streams_reset.clone(),
            },
            &admission,
        )
        .map_err(|e| Error::unavailable(format!("behaviour: {e}")))?;
        let me = config.keypair.public().to_peer_id();
        let now = Instant::now();
        let mut by_topic = HashMap::new();
        let mut by_id = HashMap::new();
        let mut nets = Vec::new();
        for (i, scope) in scopes.into_iter().enumerate() {
            let topic = scope_topic(scope.id());
            protocols
                .others
                .gossipsub
                .subscribe_scored(&topic)
                .map_err(|e| Error::unavailable(format!("gossipsub subscribe: {e}")))?;
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
            request_budget: RequestBudget::new(
                config.behaviour.requests_per_second,
                config.behaviour.request_burst,
            ),
            relaying: Relaying::new(&config.behaviour.relay, admission),
            delta_streams_open: hashbrown::HashSet::new(),
        };
        let named: Vec<Multiaddr> = net.relaying.named().cloned().collect();
        for addr in config.bootstrap.into_iter().chain(named) {
            net.bootstrap(addr);
        }
        Ok(net)
    }

    /// The protocols, for inspection (their own state and configuration).
    pub fn protocols(&self) -> &Protocols {
        &self.protocols
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
            ProtocolsEvent::DeltaStream(event) => self.on_delta_stream_event(event),
            ProtocolsEvent::Sync(event) => self.on_sync_event(event),
            ProtocolsEvent::Deliver(event) => self.on_deliver_event(event),
            ProtocolsEvent::Mdns(mdns::Event::Discovered(found)) => self.on_mdns_found(found),
            ProtocolsEvent::Mdns(mdns::Event::Expired(_)) => {}
            ProtocolsEvent::Kad(event) => self.on_kad_event(event),
            ProtocolsEvent::Identify(event) => {
                if let identify::Event::Received { peer_id, info, .. } = *event {
                    self.note_relay_protocols(peer_id, &info.protocols);
                    self.on_identified(peer_id, info);
                }
            }
            ProtocolsEvent::RelayClient(event) => self.on_relay_client_event(event),
            ProtocolsEvent::Relay(event) => self.on_relay_event(*event),
            ProtocolsEvent::Dcutr(event) => self.on_dcutr_event(event),
            ProtocolsEvent::Autonat(event) => self.on_autonat_event(event),
            ProtocolsEvent::AutonatServer(event) => {
                tracing::debug!(client = %event.client, addr = %event.tested_addr, ok = event.result.is_ok(), "dialed back");
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
            && self.peers.get(&peer).is_some_and(|p| !p.may_dial())
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
                self.on_connection_established(e.peer_id, e.connection_id, e.endpoint)
            }
            FromSwarm::ConnectionClosed(e) => self.on_connection_closed(
                e.peer_id,
                e.connection_id,
                e.endpoint,
                e.remaining_established,
            ),
            // A dial not made because the peer is connected or being dialed says nothing of it.
            FromSwarm::DialFailure(e)
                if matches!(e.error, libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
            FromSwarm::DialFailure(e) => {
                if let libp2p::swarm::DialError::Denied { cause } = e.error {
                    self.count_connection_refused(cause);
                }
                if let Some(peer) = e.peer_id {
                    tracing::debug!(%peer, error = %e.error, "dial failed");
                    self.on_dial_failure(peer, e.connection_id);
                }
            }
            FromSwarm::NewListenAddr(e) => {
                self.on_listen_addr(e.addr, true);
                self.on_relay_listen_addr(e.listener_id, e.addr);
            }
            FromSwarm::ExpiredListenAddr(e) => {
                self.on_listen_addr(e.addr, false);
                self.on_relay_listen_addr_expired(e.addr);
            }
            FromSwarm::ListenerClosed(e) => self.on_listener_closed(e.listener_id),
            FromSwarm::ListenFailure(e) => {
                if let libp2p::swarm::ListenError::Denied { cause } = e.error {
                    self.count_connection_refused(cause);
                }
            }
            // Relayed addresses (reservations); the ones AutoNAT confirms come with its event.
            FromSwarm::ExternalAddrConfirmed(e) if crate::net::relay::is_relayed(e.addr) => {
                self.note_external_addr(e.addr, true)
            }
            FromSwarm::ExternalAddrExpired(e) => self.note_external_addr(e.addr, false),
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
