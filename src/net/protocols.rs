//! [`Protocols`], the libp2p protocols a node's [`Behaviour`](crate::behaviour::Behaviour)
//! composes, and their configuration ([`BehaviourConfig`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, ping, relay,
    request_response,
};

use crate::net::capped_streams::CappedRequestResponse;
use crate::net::codec::Codec;
use crate::net::delta_stream::{DeltaStreamConfig, DeltaStreamEvent, DeltaStreams};
use crate::net::keep_alive::KeepAlive;
use crate::net::relay::{RelayAdmission, RelayConfig, relay_server};
use crate::net::scoring::ScoredGossipsub;
use crate::net::wake_gate::WakeGated;
use crate::net::wire::{
    DELIVER_PROTOCOL, DeliverAck, DeliverBatch, SYNC_PROTOCOL, SyncRequest, SyncResponse,
};

/// The codec of `/procgroups/sync/1`.
pub type SyncCodec = Codec<SyncRequest, SyncResponse>;
/// The codec of `/procgroups/deliver/1`.
pub type DeliverCodec = Codec<DeliverBatch, DeliverAck>;

/// Gossipsub's heartbeat: how often it manages its mesh and gossips. Its timer also polls the
/// gated protocols ([`WakeGated`]) at least this often.
pub const GOSSIPSUB_HEARTBEAT: Duration = Duration::from_millis(500);

/// The identify protocol version procgroups announces.
pub const IDENTIFY_PROTOCOL: &str = "/procgroups/1";

/// The size caps and timers of the [`Protocols`]. `Default` gives the values a [`Node`]
/// uses unless told otherwise.
///
/// [`Node`]: crate::Node
#[derive(Debug, Clone)]
pub struct BehaviourConfig {
    /// Discover peers on the LAN by mDNS. Default `true`.
    pub mdns: bool,
    /// Largest gossipsub message (a delta), and largest frame of the delta stream, in bytes.
    /// Default 256 KiB; the core cuts deltas below its `MAX_DELTA_BYTES` (60 KiB).
    pub max_transmit_size: usize,
    /// Largest request frame of either request-response protocol. Default 1 MiB.
    pub max_request_bytes: usize,
    /// Largest response frame (a sync page). Default 4 MiB.
    pub max_response_bytes: usize,
    /// Timeout of Discover and Sync requests (`protocol_timeout`). Default 5 s.
    pub sync_timeout: Duration,
    /// Timeout of a delivery batch (`broadcast_timeout`). Default 5 s.
    pub deliver_timeout: Duration,
    /// How often every connection is pinged. Default 1 s.
    pub ping_interval: Duration,
    /// A ping unanswered this long closes the connection. Default 5 s.
    pub ping_timeout: Duration,
    /// Peers the node keeps track of, at most, before it stops taking new ones from peer
    /// exchange. Default 4096. Peers that connect, that the application dials, and that
    /// bootstrap, mDNS or Kademlia find are always taken; a peer named in a Discover answer
    /// once the node knows this many is ignored and counted
    /// ([`NodeStats::peers_ignored`](crate::NodeStats::peers_ignored)), so that a peer
    /// inventing others cannot make the node's memory grow. Such a peer is also forgotten
    /// when a dial to it fails (the next answer naming it brings it back).
    pub max_known_peers: usize,
    /// Inbound requests of the sync protocol (Discover, Sync) a second that one peer may
    /// make; the budget refills at this rate up to [`request_burst`](Self::request_burst).
    /// A request over it is answered at once with `SyncResponse::Refused` (which an honest
    /// requester retries later) and counted in
    /// [`NodeStats::requests_over_budget`](crate::NodeStats::requests_over_budget); a
    /// Goodbye is never refused. Default [`DEFAULT_REQUESTS_PER_SECOND`].
    pub requests_per_second: u32,
    /// Inbound requests one peer may make at once after a quiet time. Default
    /// [`DEFAULT_REQUEST_BURST`].
    pub request_burst: u32,
    /// Established connections with one peer, at most; one more is refused by the
    /// `connection_limits` behaviour and counted in
    /// [`NodeStats::connections_refused`](crate::NodeStats::connections_refused). An honest
    /// peer needs few (a direct one, a relayed one while hole punching, a second when both
    /// dial at once). Default [`DEFAULT_MAX_CONNECTIONS_PER_PEER`].
    pub max_connections_per_peer: u32,
    /// Established connections in all, at most. Default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: u32,
    /// Incoming connections still in their handshake, at most: a peer that opens many and
    /// never finishes them cannot hold more. Default [`DEFAULT_MAX_PENDING_INCOMING`].
    pub max_pending_incoming: u32,
    /// Inbound streams of one protocol (sync, deliver) that one connection holds at once;
    /// one more is reset at once and counted in
    /// [`NodeStats::inbound_streams_reset`](crate::NodeStats::inbound_streams_reset)
    /// ([`capped_streams`](crate::net::capped_streams)). An honest peer has few in flight:
    /// one delivery batch, a sync's pages. Default [`DEFAULT_MAX_INBOUND_STREAMS`].
    pub max_inbound_streams: usize,
    /// Relay, hole punching and AutoNAT ([`RelayConfig`]).
    pub relay: RelayConfig,
}

/// Inbound streams of one protocol that one connection holds at once, by default
/// ([`BehaviourConfig::max_inbound_streams`]): request-response's own default bound.
pub const DEFAULT_MAX_INBOUND_STREAMS: usize = 100;

/// Established connections with one peer, at most, by default
/// ([`BehaviourConfig::max_connections_per_peer`]).
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: u32 = 8;

/// Established connections in all, at most, by default
/// ([`BehaviourConfig::max_connections`]).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;

/// Incoming connections in their handshake, at most, by default
/// ([`BehaviourConfig::max_pending_incoming`]).
pub const DEFAULT_MAX_PENDING_INCOMING: u32 = 128;

/// Inbound requests a second a peer may make on the sync protocol, by default
/// ([`BehaviourConfig::requests_per_second`]).
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 256;

/// Inbound requests a peer may make at once after a quiet time, by default
/// ([`BehaviourConfig::request_burst`]): room for a whole sync of the most pages a node asks
/// for (256) and the Discovers beside it.
pub const DEFAULT_REQUEST_BURST: u32 = 512;

impl Default for BehaviourConfig {
    fn default() -> Self {
        Self {
            mdns: true,
            max_transmit_size: 256 * 1024,
            max_request_bytes: crate::net::codec::DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: crate::net::codec::DEFAULT_MAX_RESPONSE_BYTES,
            sync_timeout: Duration::from_secs(5),
            deliver_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(5),
            max_known_peers: 4096,
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            request_burst: DEFAULT_REQUEST_BURST,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_incoming: DEFAULT_MAX_PENDING_INCOMING,
            max_inbound_streams: DEFAULT_MAX_INBOUND_STREAMS,
            relay: RelayConfig::default(),
        }
    }
}

impl BehaviourConfig {
    /// Checks the caps and timers; [`NodeBuilder::build`](crate::NodeBuilder::build) calls it.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        let invalid = |field: &'static str, reason: &str| {
            Err(crate::ConfigError::InvalidField {
                field,
                reason: reason.into(),
            })
        };
        if self.max_transmit_size < 64 * 1024 {
            return invalid(
                "max_transmit_size",
                "must be at least 64 KiB: deltas are cut at 60 KiB",
            );
        }
        if self.max_request_bytes < 1024 {
            return invalid("max_request_bytes", "must be at least 1024 bytes");
        }
        if self.max_response_bytes < 1024 {
            return invalid("max_response_bytes", "must be at least 1024 bytes");
        }
        if self.ping_interval.is_zero() || self.ping_timeout.is_zero() {
            return invalid("ping_interval", "ping interval and timeout must be > 0");
        }
        if self.max_known_peers == 0 {
            return invalid("max_known_peers", "must be at least 1");
        }
        if self.requests_per_second == 0 {
            return invalid("requests_per_second", "must be at least 1");
        }
        if self.request_burst == 0 {
            return invalid("request_burst", "must be at least 1");
        }
        if self.max_connections_per_peer == 0 {
            return invalid("max_connections_per_peer", "must be at least 1");
        }
        if self.max_connections < self.max_connections_per_peer {
            return invalid(
                "max_connections",
                "must be at least max_connections_per_peer",
            );
        }
        if self.max_pending_incoming == 0 {
            return invalid("max_pending_incoming", "must be at least 1");
        }
        if self.max_inbound_streams == 0 {
            return invalid("max_inbound_streams", "must be at least 1");
        }
        self.relay.validate()
    }
}

/// Every protocol of a procgroups node, as one [`NetworkBehaviour`]:
///
/// | field | protocol | what for |
/// |---|---|---|
/// | `connection_limits` | none | connections per peer, in all, and in their handshake, at most |
/// | `delta_streams` | `/procgroups/deltas/2` ([`DeltaStreams`]): a long-lived stream each way per connected peer | deltas between peers connected to each other, authenticated by the connection |
/// | `gossipsub` | gossipsub, one topic per scope (`procgroups/<scope-id>/2`), signed messages, strict validation, manual acceptance | membership deltas; a delta is accepted only when its origin is the message's signed source and the core takes it |
/// | `sync` | `/procgroups/sync/1` request-response ([`SyncCodec`]) | Discover (versions), Sync (paged full state), Goodbye |
/// | `deliver` | `/procgroups/deliver/1` request-response ([`DeliverCodec`]) | batches of `broadcast` and `send` frames |
/// | `mdns` | mDNS (can be off) | peers on the LAN |
/// | `kad` | Kademlia, server mode | peers beyond the LAN: providers of a key per scope |
/// | `identify` | identify | listen addresses of peers, fed to Kademlia |
/// | `ping` | ping | liveness: a failed ping closes the connection |
/// | `keep_alive` | none | keeps connections to peers that share a scope |
/// | `relay_client` | circuit relay v2, client (`/libp2p/circuit/relay/0.2.0/stop`) | reservations at relays; connections through them (set by the swarm, which owns its transport) |
/// | `relay` | circuit relay v2, server (`.../hop`) (can be off) | relaying for peers that share a scope, or for anyone ([`RelayServer`](crate::net::relay::RelayServer)) |
/// | `dcutr` | DCUtR (can be off) | hole punching: a relayed connection made direct |
/// | `autonat` | AutoNAT v2, client (can be off) | which of its external addresses others can dial |
/// | `autonat_server` | AutoNAT v2, server (off with the client) | dialing back peers that ask |
///
/// The first two are fields of `Protocols`; the others are fields of [`OtherProtocols`], in
/// the field `others`, which is polled, and whose connection handlers are polled, only when one
/// of them was woken or handed something ([`WakeGated`]): a connection woken for a delta's
/// frame polls the delta stream's handler and not the thirteen others, and the swarm's turns
/// for it poll the delta streams' behaviour and not theirs.
///
/// [`Behaviour`](crate::behaviour::Behaviour) drives them: it reacts to their events and decides what they send. They are
/// public so that an application can read their state (for instance the Kademlia routing
/// table) through [`Behaviour::protocols`](crate::behaviour::Behaviour::protocols).
#[derive(NetworkBehaviour)]
#[behaviour(to_swarm = "ProtocolsEvent", prelude = "libp2p::swarm::derive_prelude")]
pub struct Protocols {
    /// Connections per peer and in all, at most ([`BehaviourConfig::max_connections_per_peer`],
    /// [`BehaviourConfig::max_connections`], [`BehaviourConfig::max_pending_incoming`]). First:
    /// a connection it refuses must reach no other behaviour, which would keep state of a
    /// connection the swarm never reports closed.
    pub connection_limits: connection_limits::Behaviour,
    /// Deltas to the peers this node is connected to. Polled right after the limits (whose
    /// poll does nothing), and outside the gate of the others: a delta's latency is the one
    /// users see, and its frames wake a connection that the others need not be polled for.
    pub delta_streams: DeltaStreams,
    /// Every other protocol, polled (the behaviours, and each connection's handlers) only when
    /// one of them has something to do ([`WakeGated`]). Fields are reached through it:
    /// `protocols.others.kad`.
    pub others: WakeGated<OtherProtocols>,
}

/// The [`Protocols`] other than the connection limits and the delta streams.
#[derive(NetworkBehaviour)]
#[behaviour(to_swarm = "ProtocolsEvent", prelude = "libp2p::swarm::derive_prelude")]
pub struct OtherProtocols {
    /// Deltas for the peers reached through others, with peer scoring
    /// ([`scoring`](crate::net::scoring)).
    pub gossipsub: ScoredGossipsub,
    /// Discover, Sync, Goodbye.
    pub sync: CappedRequestResponse<SyncCodec>,
    /// Message batches.
    pub deliver: CappedRequestResponse<DeliverCodec>,
    /// LAN discovery, when on.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// The DHT.
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Listen addresses.
    pub identify: identify::Behaviour,
    /// Liveness.
    pub ping: ping::Behaviour,
    /// Keeps connections to peers sharing a scope.
    pub keep_alive: KeepAlive,
    /// Relay client; `None` until the swarm that owns its transport hands it over
    /// ([`Behaviour::use_relay_client`](crate::behaviour::Behaviour::use_relay_client)).
    pub relay_client: Toggle<relay::client::Behaviour>,
    /// Relay server, when this node relays.
    pub relay: Toggle<relay::Behaviour>,
    /// Hole punching, when on.
    pub dcutr: Toggle<dcutr::Behaviour>,
    /// AutoNAT client, when on.
    pub autonat: Toggle<autonat::v2::client::Behaviour>,
    /// AutoNAT server, when on.
    pub autonat_server: Toggle<autonat::v2::server::Behaviour>,
}

/// The counters the [`Protocols`] share with the node's stats.
#[derive(Default)]
pub(crate) struct ProtocolCounters {
    /// Malformed frames the request-response codecs read.
    pub malformed: Arc<AtomicU64>,
    /// Inbound streams reset at [`BehaviourConfig::max_inbound_streams`].
    pub streams_reset: Arc<AtomicU64>,
}

/// An event of one of the [`Protocols`].
#[derive(Debug)]
pub enum ProtocolsEvent {
    /// From the delta streams.
    DeltaStream(DeltaStreamEvent),
    /// From gossipsub.
    Gossipsub(gossipsub::Event),
    /// From the sync protocol.
    Sync(request_response::Event<SyncRequest, SyncResponse>),
    /// From the delivery protocol.
    Deliver(request_response::Event<DeliverBatch, DeliverAck>),
    /// From mDNS.
    Mdns(mdns::Event),
    /// From Kademlia.
    Kad(kad::Event),
    /// From identify.
    Identify(Box<identify::Event>),
    /// From ping.
    Ping(ping::Event),
    /// From the relay client.
    RelayClient(relay::client::Event),
    /// From the relay server.
    Relay(Box<relay::Event>),
    /// From hole punching.
    Dcutr(dcutr::Event),
    /// From the AutoNAT client.
    Autonat(autonat::v2::client::Event),
    /// From the AutoNAT server.
    AutonatServer(autonat::v2::server::Event),
}

macro_rules! from_event {
    ($($variant:ident($ty:ty) => $wrap:expr),* $(,)?) => {$(
        impl From<$ty> for ProtocolsEvent {
            fn from(e: $ty) -> Self {
                ProtocolsEvent::$variant($wrap(e))
            }
        }
    )*};
}

from_event! {
    DeltaStream(DeltaStreamEvent) => std::convert::identity,
    Gossipsub(gossipsub::Event) => std::convert::identity,
    Sync(request_response::Event<SyncRequest, SyncResponse>) => std::convert::identity,
    Deliver(request_response::Event<DeliverBatch, DeliverAck>) => std::convert::identity,
    Mdns(mdns::Event) => std::convert::identity,
    Kad(kad::Event) => std::convert::identity,
    Identify(identify::Event) => Box::new,
    Ping(ping::Event) => std::convert::identity,
    RelayClient(relay::client::Event) => std::convert::identity,
    Relay(relay::Event) => Box::new,
    Dcutr(dcutr::Event) => std::convert::identity,
    Autonat(autonat::v2::client::Event) => std::convert::identity,
    AutonatServer(autonat::v2::server::Event) => std::convert::identity,
}

impl From<std::convert::Infallible> for ProtocolsEvent {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}

/// Why the [`Protocols`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BehaviourError {
    /// The gossipsub configuration was refused.
    #[error("gossipsub: {0}")]
    Gossipsub(String),
    /// mDNS could not open its sockets.
    #[error("mdns: {0}")]
    Mdns(#[from] std::io::Error),
}

/// The gossipsub topic of a scope.
pub fn scope_topic(scope: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("procgroups/{scope}/2"))
}

/// The Kademlia key whose providers are the nodes hosting `scope`.
pub fn scope_provider_key(scope: &str) -> kad::RecordKey {
    kad::RecordKey::new(&format!("/procgroups/scope/{scope}/1"))
}

impl Protocols {
    /// The protocols of a node with identity `keypair`.
    /// Its relay server (if on) relays for nobody but with [`RelayServer::Anyone`]: the
    /// [`Behaviour`](crate::behaviour::Behaviour) tells it which peers share a scope.
    ///
    /// [`RelayServer::Anyone`]: crate::net::relay::RelayServer::Anyone
    pub fn new(keypair: &Keypair, config: &BehaviourConfig) -> Result<Self, BehaviourError> {
        let admission = RelayAdmission::new(config.relay.server);
        Self::with_counters(keypair, config, ProtocolCounters::default(), &admission)
    }

    /// Like [`new`](Self::new), with both request-response protocols counting in `counters`,
    /// and the relay serving the peers `admission` admits.
    pub(crate) fn with_counters(
        keypair: &Keypair,
        config: &BehaviourConfig,
        counters: ProtocolCounters,
        admission: &Arc<RelayAdmission>,
    ) -> Result<Self, BehaviourError> {
        let ProtocolCounters {
            malformed,
            streams_reset,
        } = counters;
        let peer_id = keypair.public().to_peer_id();
        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(config.max_transmit_size)
            .heartbeat_interval(GOSSIPSUB_HEARTBEAT)
            .build()
            .map_err(|e| BehaviourError::Gossipsub(e.to_string()))?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(keypair.clone()),
            gossip_config,
        )
        .map_err(|e| BehaviourError::Gossipsub(e.to_string()))?;
        let gossipsub = ScoredGossipsub::new(gossipsub).map_err(BehaviourError::Gossipsub)?;
        let sync = CappedRequestResponse::new(
            SyncCodec::default()
                .count_malformed_in(malformed.clone())
                .set_request_size_maximum(config.max_request_bytes)
                .set_response_size_maximum(config.max_response_bytes),
            [(SYNC_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(config.sync_timeout),
            config.max_inbound_streams,
            streams_reset.clone(),
        );
        let deliver = CappedRequestResponse::new(
            DeliverCodec::default()
                .count_malformed_in(malformed)
                .set_request_size_maximum(config.max_request_bytes)
                .set_response_size_maximum(1024),
            [(DELIVER_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(config.deliver_timeout),
            config.max_inbound_streams,
            streams_reset,
        );
        let mdns = if config.mdns {
            Some(mdns::tokio::Behaviour::new(
                mdns::Config::default(),
                peer_id,
            )?)
        } else {
            None
        };
        let mut kad = kad::Behaviour::with_config(
            peer_id,
            kad::store::MemoryStore::new(peer_id),
            kad::Config::new(StreamProtocol::new("/ipfs/kad/1.0.0")),
        );
        kad.set_mode(Some(kad::Mode::Server));
        // Pushed when they change: a relayed address (a reservation) must reach the peers that
        // will pass it on to those who cannot dial us.
        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), keypair.public())
                .with_push_listen_addr_updates(true),
        );
        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(config.ping_interval)
                .with_timeout(config.ping_timeout),
        );
        let others = OtherProtocols {
            gossipsub,
            sync,
            deliver,
            mdns: mdns.into(),
            kad,
            identify,
            ping,
            keep_alive: KeepAlive::default(),
            relay_client: None.into(),
            relay: relay_server(peer_id, &config.relay, admission).into(),
            dcutr: config
                .relay
                .hole_punching
                .then(|| dcutr::Behaviour::new(peer_id))
                .into(),
            autonat: config
                .relay
                .autonat
                .then(autonat::v2::client::Behaviour::default)
                .into(),
            autonat_server: config
                .relay
                .autonat
                .then(autonat::v2::server::Behaviour::default)
                .into(),
        };
        Ok(Self {
            delta_streams: DeltaStreams::new(DeltaStreamConfig {
                max_frame_bytes: config.max_transmit_size,
                ..DeltaStreamConfig::default()
            }),
            others: WakeGated::new(others),
            connection_limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established_per_peer(Some(config.max_connections_per_peer))
                    .with_max_established(Some(config.max_connections))
                    .with_max_pending_incoming(Some(config.max_pending_incoming)),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConfigError;

    #[test]
    fn a_limit_out_of_range_is_refused_naming_its_field() {
        assert_eq!(BehaviourConfig::default().validate(), Ok(()));
        type OutOfRange = fn(&mut BehaviourConfig);
        let cases: [(&str, OutOfRange); 9] = [
            ("max_transmit_size", |c| c.max_transmit_size = 1024),
            ("max_request_bytes", |c| c.max_request_bytes = 1023),
            ("max_known_peers", |c| c.max_known_peers = 0),
            ("requests_per_second", |c| c.requests_per_second = 0),
            ("request_burst", |c| c.request_burst = 0),
            ("max_connections_per_peer", |c| {
                c.max_connections_per_peer = 0
            }),
            ("max_connections", |c| {
                c.max_connections = c.max_connections_per_peer - 1;
            }),
            ("max_pending_incoming", |c| c.max_pending_incoming = 0),
            ("max_inbound_streams", |c| c.max_inbound_streams = 0),
        ];
        for (field, put_out_of_range) in cases {
            let mut config = BehaviourConfig::default();
            put_out_of_range(&mut config);
            match config.validate() {
                Err(ConfigError::InvalidField { field: named, .. }) => {
                    assert_eq!(named, field);
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
