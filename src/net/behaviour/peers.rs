//! Peers: admission, connections, dials and redials with backoff, node-down purges after each
//! scope's grace period, and the view of each scope's peers for stats and health.

use std::sync::atomic::Ordering;
use std::time::Instant;

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, ToSwarm};
use libp2p::{Multiaddr, PeerId};

use crate::net::outbox::BreakerState;
use crate::net::peer::Standing;
use crate::net::relay::Reach;
use crate::net::view::{ScopeNetView, Unreachable};
use crate::proto::Input;

use super::{Behaviour, KAD_FIRST, UNREACHABLE_REPORTED_FOR};

impl Behaviour {
    /// Whether the allow-list (if any) admits `peer`; counts a refusal.
    pub(super) fn admits(&self, peer: &PeerId) -> bool {
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

    pub(super) fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.connections > 0)
    }

    pub(super) fn dial(&mut self, addr: Multiaddr) {
        self.pending.push_back(ToSwarm::Dial {
            opts: DialOpts::from(addr),
        });
    }

    /// Dials a peer we know of, unless the application disconnected it or it is being dialed.
    pub(super) fn dial_known(&mut self, peer: PeerId) {
        if peer == self.me {
            return;
        }
        let p = self.peers.entry(peer).or_default();
        if !p.may_dial() || p.is_connected() {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(p.addrs.clone())
            .extend_addresses_through_behaviour()
            .build();
        self.pending.push_back(ToSwarm::Dial { opts });
    }

    pub(super) fn bootstrap(&mut self, addr: Multiaddr) {
        if let Some(Protocol::P2p(peer)) = addr.iter().last() {
            self.protocols.others.kad.add_address(&peer, addr.clone());
            let p = self.peers.entry(peer).or_default();
            p.found();
            p.remember(addr.clone());
        }
        self.dial(addr);
    }

    pub(super) fn on_connection_established(
        &mut self,
        peer_id: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        let p = self.peers.entry(peer_id).or_default();
        p.connections += 1;
        p.found();
        if endpoint.is_dialer() {
            p.remember(endpoint.get_remote_address().clone());
        }
        let first = p.connections == 1;
        if first {
            p.reconnected();
            if !p.scopes.is_empty() {
                // Disconnected by the application before, and back: it may relay again.
                self.relaying.admission.add(peer_id);
            }
        }
        self.note_path(peer_id, connection, endpoint.is_relayed());
        self.share_reach(peer_id);
        if first {
            self.discover_queue.push_back(peer_id);
            self.pump_discovers();
            if self.kad_enabled && self.kad_next.is_none() {
                self.kad_next = Some(Instant::now() + KAD_FIRST);
            }
        }
    }

    /// A connection the `connection_limits` behaviour refused (another behaviour's refusal,
    /// such as admission's, is counted where it is made).
    pub(super) fn count_connection_refused(&self, cause: &libp2p::swarm::ConnectionDenied) {
        if let Some(exceeded) = cause.downcast_ref::<libp2p::connection_limits::Exceeded>() {
            tracing::debug!(%exceeded, "connection refused by a limit");
            self.shared
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn on_connection_closed(
        &mut self,
        peer_id: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
        remaining: usize,
    ) {
        if remaining > 0 {
            self.forget_path(peer_id, connection, endpoint.is_relayed());
            if let Some(p) = self.peers.get_mut(&peer_id) {
                p.connections = remaining;
            }
        } else {
            self.peers.entry(peer_id).or_default().lost(Instant::now());
            // Its identify info says again whether it relays when it is back.
            self.relaying.forget_relay(&peer_id);
            self.request_budget.forget(&peer_id);
        }
        self.share_reach(peer_id);
    }

    /// Tells the application how `peer` is reached now ([`Node::reach`](crate::Node::reach)).
    fn share_reach(&self, peer: PeerId) {
        let reach = self
            .peers
            .get(&peer)
            .map_or(Reach::Unreached, |p| p.reach());
        let mut connected = self
            .shared
            .connected
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if reach == Reach::Unreached {
            connected.remove(&peer);
        } else {
            connected.insert(peer, reach);
        }
    }

    /// A dial failed. A direct one is followed by one through relays, if any may reach the
    /// peer; the attempt fails when that one does too.
    pub(super) fn on_dial_failure(&mut self, peer: PeerId, connection: ConnectionId) {
        if !self.relayed_dial_failed(connection) && self.dial_relayed(peer) {
            return;
        }
        if self.peers.get(&peer).is_some_and(|p| {
            p.standing == Standing::Told && !p.is_connected() && p.outbox.len() == 0
        }) {
            self.peers.remove(&peer);
            return;
        }
        if let Some(p) = self.peers.get_mut(&peer)
            && !p.is_connected()
            && p.may_dial()
        {
            p.dial_failed(Instant::now());
        }
    }

    pub(super) fn on_listen_addr(&mut self, address: &Multiaddr, added: bool) {
        update_addrs(&self.shared.listen_addrs, address, added);
    }

    /// An address others can reach this node at ([`Node::external_addrs`](crate::Node::external_addrs)).
    pub(super) fn note_external_addr(&mut self, address: &Multiaddr, added: bool) {
        update_addrs(&self.shared.external_addrs, address, added);
    }

    /// Origins whose members we hold but to which we have no connection (their deltas came
    /// through other peers) are unreachable too: start their grace period and try to reach
    /// them.
    pub(super) fn watch_origins(&mut self, now: Instant) {
        for i in 0..self.scopes.len() {
            let origins = self.scopes[i].scope.live_origins();
            for origin in origins {
                let p = self.peers.entry(origin).or_default();
                p.scopes.insert(i);
                p.unreached_origin(now);
            }
        }
    }

    /// Purges the members of peers unreachable for longer than each scope's grace period.
    pub(super) fn node_down(&mut self, now: Instant) {
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
    pub(super) fn publish_views(&mut self, now: Instant) {
        let mut views = vec![ScopeNetView::default(); self.scopes.len()];
        for (id, p) in &self.peers {
            let connected = p.is_connected();
            let lost = match p.down_since {
                Some(since) if !connected && p.is_lost_unexpectedly() => {
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
                    view.unreachable.push(Unreachable { peer: *id, since });
                } else {
                    view.peers += 1;
                    if p.reach() == Reach::Relayed {
                        view.relayed += 1;
                    }
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

    pub(super) fn redials(&mut self, now: Instant) {
        let due: Vec<(PeerId, Vec<Multiaddr>)> = self
            .peers
            .iter_mut()
            .filter_map(|(id, p)| p.take_due_redial(now).then(|| (*id, p.addrs.clone())))
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

/// Adds `address` to `list` (once) or removes it.
fn update_addrs(list: &std::sync::RwLock<Vec<Multiaddr>>, address: &Multiaddr, added: bool) {
    let mut addrs = list.write().unwrap_or_else(|e| e.into_inner());
    if added {
        if !addrs.contains(address) {
            addrs.push(address.clone());
        }
    } else {
        addrs.retain(|a| a != address);
    }
}
