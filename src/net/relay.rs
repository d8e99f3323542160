//! Reaching peers without a direct path: the settings of the circuit relay (v2), hole punching
//! (DCUtR) and AutoNAT, which peers this node relays for, and how a connection reaches a peer
//! ([`Reach`]).
//!
//! Every node is a relay client: it reserves a slot at up to [`RelayConfig::reservations`]
//! relays it is connected to (peers that share a scope with it and advertise the relay
//! protocol, or relays the application names), so that peers which cannot dial it directly can
//! reach it through them, and hole punching can then make the connection direct.
//!
//! A node serves as a relay as [`RelayServer`] says: by default for the peers that share one of
//! its scopes, from the start, with circuit limits that fit steady group traffic
//! ([`RelayConfig`]'s `max_circuit_*`; libp2p's own defaults cut a circuit after 2 minutes or
//! 128 KiB). A peer of the scope that two others can reach is the relay they share; waiting
//! for AutoNAT to confirm that it is reachable (its first probe comes 5 s after the start)
//! would leave them apart past a scope's node-down grace. [`RelayServer::Auto`] waits.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId, relay};

/// Default of [`RelayConfig::reservations`].
pub const DEFAULT_RESERVATIONS: usize = 2;
/// Default of [`RelayConfig::max_circuit_duration`]: a day. A circuit cut by its limit is
/// redialed like any lost connection.
pub const DEFAULT_MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Default of [`RelayConfig::max_circuit_bytes`]: 1 GiB each way.
pub const DEFAULT_MAX_CIRCUIT_BYTES: u64 = 1 << 30;
/// Default of [`RelayConfig::max_circuits`].
pub const DEFAULT_MAX_CIRCUITS: usize = 256;
/// Default of [`RelayConfig::max_circuits_per_peer`].
pub const DEFAULT_MAX_CIRCUITS_PER_PEER: usize = 16;
/// Default of [`RelayConfig::max_reservations`].
pub const DEFAULT_MAX_RESERVATIONS: usize = 128;

/// Whether, and for whom, a node relays connections between other peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayServer {
    /// Never relays.
    Off,
    /// Relays for the peers that share one of its scopes, once AutoNAT has confirmed one of its
    /// external addresses (it is reachable by others); stops when it has none.
    Auto,
    /// Relays for the peers that share one of its scopes, from the start: any of them that
    /// reaches it may be the relay between two that cannot reach each other (a node on two
    /// networks, a server, a host with a public address). The default.
    #[default]
    ScopePeers,
    /// Relays for any peer, from the start: a public node run to relay and bootstrap for others
    /// (reservations and circuits still within the limits of [`RelayConfig`]).
    Anyone,
}

/// The relay, hole-punching and AutoNAT settings of a node
/// ([`BehaviourConfig::relay`](crate::behaviour::BehaviourConfig::relay)).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Whether and for whom this node relays. Default [`RelayServer::ScopePeers`].
    pub server: RelayServer,
    /// Relays this node reserves a slot at, at most, besides the ones the application names.
    /// Default [`DEFAULT_RESERVATIONS`]; 0 reserves at none but the named ones.
    pub reservations: usize,
    /// Relays of the application's choosing (`.../p2p/<relay-peer-id>`): dialed at start,
    /// reserved at, and used to reach peers that cannot be dialed directly. A relay of someone
    /// else's cuts circuits by its own limits (libp2p's defaults: 2 minutes, 128 KiB); over it,
    /// hole punching is what makes a lasting connection, and where punching fails the node
    /// dials through it again when the circuit is cut.
    pub relays: Vec<Multiaddr>,
    /// Upgrade relayed connections to direct ones by hole punching (DCUtR). Default `true`.
    pub hole_punching: bool,
    /// Learn which external addresses are reachable (AutoNAT v2, client and server).
    /// Default `true`.
    pub autonat: bool,
    /// A relayed circuit served by this node is cut after this long. Default
    /// [`DEFAULT_MAX_CIRCUIT_DURATION`].
    pub max_circuit_duration: Duration,
    /// A relayed circuit served by this node is cut after this many bytes in one direction.
    /// Default [`DEFAULT_MAX_CIRCUIT_BYTES`].
    pub max_circuit_bytes: u64,
    /// Circuits this node relays at once. Default [`DEFAULT_MAX_CIRCUITS`].
    pub max_circuits: usize,
    /// Circuits this node relays at once for one peer. Default [`DEFAULT_MAX_CIRCUITS_PER_PEER`].
    pub max_circuits_per_peer: usize,
    /// Reservations this node holds for others at once. Default [`DEFAULT_MAX_RESERVATIONS`].
    pub max_reservations: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            server: RelayServer::default(),
            reservations: DEFAULT_RESERVATIONS,
            relays: Vec::new(),
            hole_punching: true,
            autonat: true,
            max_circuit_duration: DEFAULT_MAX_CIRCUIT_DURATION,
            max_circuit_bytes: DEFAULT_MAX_CIRCUIT_BYTES,
            max_circuits: DEFAULT_MAX_CIRCUITS,
            max_circuits_per_peer: DEFAULT_MAX_CIRCUITS_PER_PEER,
            max_reservations: DEFAULT_MAX_RESERVATIONS,
        }
    }
}

impl RelayConfig {
    /// Checks the limits; [`BehaviourConfig::validate`](crate::behaviour::BehaviourConfig::validate)
    /// calls it.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        let invalid = |field: &'static str, reason: &str| {
            Err(crate::ConfigError::InvalidField {
                field,
                reason: reason.into(),
            })
        };
        if self.max_circuit_duration < Duration::from_secs(1) {
            return invalid("max_circuit_duration", "must be at least 1 s");
        }
        if self.max_circuit_bytes == 0 {
            return invalid("max_circuit_bytes", "must be at least 1 byte");
        }
        if self.max_circuits == 0 || self.max_circuits_per_peer == 0 {
            return invalid(
                "max_circuits",
                "circuits (in all and per peer) must be >= 1",
            );
        }
        if self.max_reservations == 0 {
            return invalid("max_reservations", "must be at least 1");
        }
        for addr in &self.relays {
            if peer_of(addr).is_none() {
                return invalid("relays", "each relay address must end with /p2p/<peer-id>");
            }
        }
        Ok(())
    }
}

/// How a node reaches a peer right now ([`Node::reach`](crate::Node::reach)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// At least one direct connection.
    Direct,
    /// Only through relays.
    Relayed,
    /// No connection.
    Unreached,
}

/// The peers a relay serves: every peer, or those that share a scope with it. The behaviour
/// adds a peer when it learns that it shares a scope; the relay's limiters read it.
#[derive(Debug, Default)]
pub(crate) struct RelayAdmission {
    anyone: bool,
    scope_peers: RwLock<HashSet<PeerId>>,
}

impl RelayAdmission {
    pub(crate) fn new(server: RelayServer) -> Arc<Self> {
        Arc::new(RelayAdmission {
            anyone: server == RelayServer::Anyone,
            scope_peers: RwLock::default(),
        })
    }

    pub(crate) fn admits(&self, peer: &PeerId) -> bool {
        self.anyone
            || self
                .scope_peers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(peer)
    }

    pub(crate) fn add(&self, peer: PeerId) {
        if !self.anyone {
            self.scope_peers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer);
        }
    }

    pub(crate) fn remove(&self, peer: &PeerId) {
        if !self.anyone {
            self.scope_peers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(peer);
        }
    }
}

/// The relay server of a node with these settings, or `None` when it relays for nobody.
pub(crate) fn relay_server(
    me: PeerId,
    config: &RelayConfig,
    admission: &Arc<RelayAdmission>,
) -> Option<relay::Behaviour> {
    if config.server == RelayServer::Off {
        return None;
    }
    let admitted = |admission: &Arc<RelayAdmission>| {
        let admission = admission.clone();
        Box::new(move |peer: PeerId, _: &Multiaddr, _| admission.admits(&peer))
            as Box<dyn relay::RateLimiter>
    };
    // libp2p's defaults limit the rate per peer and per IP; the relay first admits by scope.
    let defaults = relay::Config::default();
    let mut relay_config = relay::Config {
        max_reservations: config.max_reservations,
        max_circuits: config.max_circuits,
        max_circuits_per_peer: config.max_circuits_per_peer,
        max_circuit_duration: config.max_circuit_duration,
        max_circuit_bytes: config.max_circuit_bytes,
        reservation_rate_limiters: vec![admitted(admission)],
        circuit_src_rate_limiters: vec![admitted(admission)],
        ..defaults
    };
    // A peer of the scope reconnecting through us after a cut must not wait minutes for a
    // token: a new one every second per peer, 60 at most saved up.
    let burst = NonZeroU32::new(60).expect("60 > 0");
    relay_config = relay_config
        .circuit_src_per_peer(burst, Duration::from_secs(1))
        .reservation_rate_per_peer(burst, Duration::from_secs(1));
    let mut server = relay::Behaviour::new(me, relay_config);
    match config.server {
        RelayServer::Auto => server.set_status(None),
        _ => server.set_status(Some(relay::Status::Enable)),
    }
    Some(server)
}

/// The peer a `.../p2p/<peer-id>` address names.
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// Whether an address goes through a relay.
pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_peers_only_unless_anyone() {
        let a = PeerId::random();
        let b = PeerId::random();
        let scoped = RelayAdmission::new(RelayServer::Auto);
        scoped.add(a);
        assert!(scoped.admits(&a));
        assert!(!scoped.admits(&b));
        scoped.remove(&a);
        assert!(!scoped.admits(&a));
        let public = RelayAdmission::new(RelayServer::Anyone);
        assert!(public.admits(&b));
    }

    #[test]
    fn limits_are_validated() {
        assert!(RelayConfig::default().validate().is_ok());
        let zero = RelayConfig {
            max_circuit_bytes: 0,
            ..RelayConfig::default()
        };
        assert!(zero.validate().is_err());
        let nameless = RelayConfig {
            relays: vec!["/ip4/10.0.0.1/tcp/1".parse().unwrap()],
            ..RelayConfig::default()
        };
        assert!(nameless.validate().is_err());
    }

    #[test]
    fn relayed_addresses_are_recognised() {
        let relay = PeerId::random();
        let addr: Multiaddr = format!("/ip4/10.0.0.1/tcp/1/p2p/{relay}/p2p-circuit")
            .parse()
            .unwrap();
        assert!(is_relayed(&addr));
        assert!(!is_relayed(&"/ip4/10.0.0.1/tcp/1".parse().unwrap()));
        let direct: Multiaddr = format!("/ip4/10.0.0.1/tcp/1/p2p/{relay}").parse().unwrap();
        assert_eq!(peer_of(&direct), Some(relay));
    }
}
