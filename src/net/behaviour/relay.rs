//! Reaching peers without a direct path: reservations at relays, dials through them when a
//! direct dial fails, the path of each connection (direct or relayed; a relayed one is closed
//! once a direct one is up), and the events of the relay, hole-punching and AutoNAT protocols
//! (net/relay.rs has their settings).

use std::collections::HashSet;
use std::num::NonZeroU8;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{CloseConnection, ConnectionId, ListenOpts, ToSwarm};
use libp2p::{Multiaddr, PeerId, StreamProtocol, autonat, dcutr, relay};

use crate::net::relay::is_relayed;
use crate::net::relaying::Reservation;

use super::Behaviour;

/// A reservation refused or lost is asked for again after this long, while the relay is still
/// connected; the wait doubles after each refusal in a row, up to [`RESERVATION_RETRY_MAX`].
pub(crate) const RESERVATION_RETRY: Duration = Duration::from_millis(500);
/// The longest wait before asking a relay for a reservation again.
pub(crate) const RESERVATION_RETRY_MAX: Duration = Duration::from_secs(30);
/// Relayed addresses tried at once when a peer cannot be dialed directly.
pub(crate) const MAX_RELAYED_CANDIDATES: usize = 4;

impl Behaviour {
    /// Hands the behaviour the relay client that the swarm's transport was built with
    /// (`SwarmBuilder::with_relay_client`). [`NodeBuilder::build`](crate::NodeBuilder::build)
    /// does it; an application that embeds the behaviour
    /// ([`NodeBuilder::build_behaviour`](crate::NodeBuilder::build_behaviour)) does it before
    /// it builds its swarm, or the node neither reserves at relays nor dials through them.
    pub fn use_relay_client(&mut self, client: relay::client::Behaviour) {
        self.protocols.others.relay_client = Some(client).into();
        self.relaying.client = true;
    }

    /// A peer's identify info lists its protocols: a relay is a candidate for a reservation.
    pub(super) fn note_relay_protocols(&mut self, peer: PeerId, protocols: &[StreamProtocol]) {
        if protocols.contains(&relay::HOP_PROTOCOL_NAME) {
            let new = self.relaying.capable.insert(peer);
            self.reserve_if_useful(peer);
            if new {
                tracing::debug!(%peer, "peer relays");
                // A way, perhaps, to the peers of the scopes that could not be dialed.
                let unreached: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| {
                        !p.is_connected()
                            && p.may_dial()
                            && p.down_since.is_some()
                            && !p.scopes.is_empty()
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for other in unreached {
                    self.dial_relayed(other);
                }
            }
        } else {
            self.relaying.capable.remove(&peer);
        }
    }

    /// Asks `peer` for a reservation when it relays, is directly connected, shares a scope
    /// (or the application named it) and the node holds fewer than it wants.
    pub(super) fn reserve_if_useful(&mut self, peer: PeerId) {
        let r = &self.relaying;
        if !r.client || !r.capable.contains(&peer) {
            return;
        }
        let named = r.named.contains_key(&peer);
        let backoff = match r.reservations.get(&peer) {
            Some(Reservation::Retry { at, .. }) if *at > Instant::now() => return,
            Some(Reservation::Retry { backoff, .. }) => *backoff,
            None => Duration::ZERO,
            Some(_) => return,
        };
        if !named && r.found_reservations() >= r.reservations_wanted {
            return;
        }
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        if p.direct == 0 || (!named && p.scopes.is_empty()) {
            return;
        }
        let Some(addr) = p
            .addrs
            .iter()
            .find(|a| !is_relayed(a))
            .or(r.named.get(&peer))
            .cloned()
        else {
            return;
        };
        let addr = without_peer(addr)
            .with(Protocol::P2p(peer))
            .with(Protocol::P2pCircuit);
        let opts = ListenOpts::new(addr);
        let listener = opts.listener_id();
        tracing::debug!(%peer, "asking for a relay reservation");
        self.relaying
            .reservations
            .insert(peer, Reservation::Asked { listener, backoff });
        self.relaying.listeners.insert(listener, peer);
        self.pending.push_back(ToSwarm::ListenOn { opts });
    }

    /// A listener has an address: if it is a reservation's, the relay accepted it. Otherwise,
    /// for a node that relays without waiting for AutoNAT, the address is an external one.
    pub(super) fn on_relay_listen_addr(&mut self, listener: ListenerId, addr: &Multiaddr) {
        if let Some(peer) = self.relaying.listeners.get(&listener) {
            if let Some(r) = self.relaying.reservations.get_mut(peer) {
                *r = Reservation::Held { listener };
            }
        } else if self.relaying.declares_listen_addrs && !is_relayed(addr) {
            self.pending
                .push_back(ToSwarm::ExternalAddrConfirmed(addr.clone()));
        }
    }

    /// A listen address expired: so did the external address it stood for.
    pub(super) fn on_relay_listen_addr_expired(&mut self, addr: &Multiaddr) {
        if self.relaying.declares_listen_addrs && !is_relayed(addr) {
            self.pending
                .push_back(ToSwarm::ExternalAddrExpired(addr.clone()));
        }
    }

    /// A listener closed: a reservation's is asked for again later, sooner if it had been
    /// held.
    pub(super) fn on_listener_closed(&mut self, listener: ListenerId) {
        if let Some(peer) = self.relaying.listeners.remove(&listener) {
            let backoff = match self.relaying.reservations.get(&peer) {
                Some(Reservation::Asked { backoff, .. }) => {
                    (*backoff * 2).clamp(RESERVATION_RETRY, RESERVATION_RETRY_MAX)
                }
                _ => RESERVATION_RETRY,
            };
            tracing::debug!(%peer, ?backoff, "relay reservation refused or ended");
            self.relaying.reservations.insert(
                peer,
                Reservation::Retry {
                    at: Instant::now() + backoff,
                    backoff,
                },
            );
        }
    }

    /// Reservations due to be asked for again.
    pub(super) fn relay_housekeeping(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .relaying
            .reservations
            .iter()
            .filter(|(_, r)| matches!(r, Reservation::Retry { at, .. } if *at <= now))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            if self.peers.get(&peer).is_some_and(|p| p.direct > 0) {
                self.reserve_if_useful(peer);
            } else {
                self.relaying.reservations.remove(&peer);
            }
        }
        // A relay found later (or one whose reservation could not be taken before) gets its turn.
        let candidates: Vec<PeerId> = self
            .relaying
            .capable
            .iter()
            .filter(|p| !self.relaying.reservations.contains_key(p))
            .copied()
            .collect();
        for peer in candidates {
            self.reserve_if_useful(peer);
        }
    }

    /// Dials `peer` through the relays it may be reached by: its relayed addresses, and every
    /// relay this node is directly connected to (the peer may hold a reservation there).
    /// Returns whether a dial started.
    pub(super) fn dial_relayed(&mut self, peer: PeerId) -> bool {
        if !self.relaying.client || peer == self.me {
            return false;
        }
        let Some(p) = self.peers.get(&peer) else {
            return false;
        };
        if !p.may_dial() || p.is_connected() {
            return false;
        }
        let mut candidates: Vec<Multiaddr> =
            p.addrs.iter().filter(|a| is_relayed(a)).cloned().collect();
        for relay in self.relaying.capable.iter() {
            if *relay == peer {
                continue;
            }
            let Some(r) = self.peers.get(relay).filter(|r| r.direct > 0) else {
                continue;
            };
            // The relay client uses its connection to the relay; the address only has to
            // name one.
            let Some(addr) = r.addrs.iter().find(|a| !is_relayed(a)).cloned() else {
                continue;
            };
            candidates.push(
                without_peer(addr)
                    .with(Protocol::P2p(*relay))
                    .with(Protocol::P2pCircuit)
                    .with(Protocol::P2p(peer)),
            );
        }
        // One circuit per relay: the dial of each address would set one up.
        let mut relays = HashSet::new();
        candidates.retain(|a| relays.insert(relay_of(a)));
        candidates.truncate(MAX_RELAYED_CANDIDATES);
        if candidates.is_empty() {
            return false;
        }
        tracing::debug!(%peer, ?candidates, "dialing through relays");
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Disconnected)
            .addresses(candidates)
            .override_dial_concurrency_factor(
                NonZeroU8::new(MAX_RELAYED_CANDIDATES as u8).expect("> 0"),
            )
            .build();
        self.relaying.relayed_dials.insert(opts.connection_id());
        self.pending.push_back(ToSwarm::Dial { opts });
        true
    }

    /// Whether the dial that failed was one through relays (then it ends the attempt).
    pub(super) fn relayed_dial_failed(&mut self, connection: ConnectionId) -> bool {
        self.relaying.relayed_dials.remove(&connection)
    }

    /// A connection is up: note its path; a direct one replaces the relayed ones.
    pub(super) fn note_path(&mut self, peer: PeerId, connection: ConnectionId, relayed: bool) {
        self.relaying.relayed_dials.remove(&connection);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if relayed {
            p.relayed.push(connection);
        } else {
            p.direct += 1;
        }
        if p.direct > 0 && !p.relayed.is_empty() {
            tracing::debug!(%peer, "direct connection up: closing the relayed ones");
            for connection in std::mem::take(&mut p.relayed) {
                self.pending.push_back(ToSwarm::CloseConnection {
                    peer_id: peer,
                    connection: CloseConnection::One(connection),
                });
            }
        }
        if !relayed {
            self.reserve_if_useful(peer);
        }
    }

    /// A connection closed: forget its path.
    pub(super) fn forget_path(&mut self, peer: PeerId, connection: ConnectionId, relayed: bool) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if relayed {
                p.relayed.retain(|c| *c != connection);
            } else {
                p.direct = p.direct.saturating_sub(1);
            }
        }
    }

    pub(super) fn on_relay_client_event(&mut self, event: relay::client::Event) {
        tracing::debug!(?event, "relay client");
    }

    pub(super) fn on_relay_event(&mut self, event: relay::Event) {
        if let relay::Event::CircuitReqAccepted { .. } = event {
            self.shared
                .stats
                .circuits_relayed
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(?event, "relay server");
    }

    pub(super) fn on_dcutr_event(&mut self, event: dcutr::Event) {
        match &event.result {
            Ok(_) => {
                tracing::info!(peer = %event.remote_peer_id, "hole punched: direct connection");
                self.shared
                    .stats
                    .holes_punched
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::debug!(peer = %event.remote_peer_id, %error, "hole punching failed");
                self.shared
                    .stats
                    .hole_punches_failed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn on_autonat_event(&mut self, event: autonat::v2::client::Event) {
        match &event.result {
            Ok(()) => {
                tracing::info!(addr = %event.tested_addr, "reachable at this address");
                self.note_external_addr(&event.tested_addr, true);
            }
            Err(error) => {
                tracing::debug!(addr = %event.tested_addr, %error, "not reachable at this address")
            }
        }
    }
}

/// The relay a relayed address goes through: the peer named before `/p2p-circuit`.
fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

/// `addr` without a trailing `/p2p/<peer-id>`.
fn without_peer(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}
