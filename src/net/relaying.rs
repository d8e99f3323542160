//! What a node keeps for relaying: the relays it knows of, its reservations at them, and its
//! dials through them in flight (the behaviour drives it, in `behaviour/relay.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

use crate::net::relay::{RelayAdmission, RelayConfig, RelayServer, peer_of};

/// One relay's reservation, as this node asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// Asked for through the listener `listener`; not yet accepted. `backoff` is the wait
    /// that preceded it.
    Asked {
        listener: ListenerId,
        backoff: Duration,
    },
    /// Accepted: the relay forwards circuits to this node.
    Held { listener: ListenerId },
    /// Refused or lost; asked for again at `at` if the relay is still connected then.
    Retry { at: Instant, backoff: Duration },
}

/// What the behaviour keeps for relaying: the relays it knows of, its reservations, and its
/// dials through relays.
pub(crate) struct Relaying {
    /// The relay client is in place (the swarm handed it over).
    pub(crate) client: bool,
    /// This node relays without waiting for AutoNAT: its listen addresses are its external
    /// addresses (a relay gives them in its reservations, and gives none without them).
    pub(crate) declares_listen_addrs: bool,
    /// Reservations at relays the node finds on its own, at most.
    pub(crate) reservations_wanted: usize,
    /// Relays the application named, by peer.
    pub(crate) named: HashMap<PeerId, Multiaddr>,
    /// Peers whose identify info lists the relay protocol.
    pub(crate) capable: HashSet<PeerId>,
    pub(crate) reservations: HashMap<PeerId, Reservation>,
    pub(crate) listeners: HashMap<ListenerId, PeerId>,
    /// Dials through relays in flight: their failure is the end of the attempt.
    pub(crate) relayed_dials: HashSet<ConnectionId>,
    /// Who may use this node as a relay.
    pub(crate) admission: Arc<RelayAdmission>,
}

impl Relaying {
    pub(crate) fn new(config: &RelayConfig, admission: Arc<RelayAdmission>) -> Self {
        Relaying {
            client: false,
            declares_listen_addrs: matches!(
                config.server,
                RelayServer::ScopePeers | RelayServer::Anyone
            ),
            reservations_wanted: config.reservations,
            named: config
                .relays
                .iter()
                .filter_map(|a| Some((peer_of(a)?, a.clone())))
                .collect(),
            capable: HashSet::new(),
            reservations: HashMap::new(),
            listeners: HashMap::new(),
            relayed_dials: HashSet::new(),
            admission,
        }
    }

    /// A relay with no connection left is no relay of ours until it is back.
    pub(crate) fn forget_relay(&mut self, peer: &PeerId) {
        self.capable.remove(peer);
    }

    pub(crate) fn named(&self) -> impl Iterator<Item = &Multiaddr> {
        self.named.values()
    }

    /// Reservations accepted by relays.
    pub(crate) fn held(&self) -> usize {
        self.reservations
            .values()
            .filter(|r| matches!(r, Reservation::Held { .. }))
            .count()
    }

    pub(crate) fn found_reservations(&self) -> usize {
        self.reservations
            .iter()
            .filter(|(peer, r)| {
                !self.named.contains_key(peer) && !matches!(r, Reservation::Retry { .. })
            })
            .count()
    }
}
