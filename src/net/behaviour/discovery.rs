//! Discovery: mDNS on the LAN, identify's listen addresses, Kademlia providers per scope, and the
//! peers named in Discover answers (peer exchange).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use libp2p::swarm::ToSwarm;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, identify, kad};

use crate::net::wire::MAX_PEERS_EXCHANGED;

use super::Behaviour;
use crate::net::peer::{MAX_ADDRS, Peer};

impl Behaviour {
    /// Peers a Discover answer told us of: remember their addresses and connect. A new peer
    /// is taken only while the node knows fewer than `max_known_peers`.
    pub(super) fn meet(&mut self, peers: Vec<(PeerId, Vec<Multiaddr>)>) {
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
            let p = self.peers.entry(peer).or_insert_with(Peer::told);
            for addr in addrs.into_iter().take(MAX_ADDRS) {
                p.remember(addr);
            }
            self.dial_known(peer);
        }
    }

    /// Peers found on the LAN: dial the ones not connected.
    pub(super) fn on_mdns_found(&mut self, found: Vec<(PeerId, Multiaddr)>) {
        let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (peer, addr) in found {
            by_peer.entry(peer).or_default().push(addr);
        }
        for (peer, addrs) in by_peer {
            if peer == self.me {
                continue;
            }
            let p = self.peers.entry(peer).or_default();
            p.found();
            for a in &addrs {
                p.remember(a.clone());
            }
            if p.connections == 0 {
                // Both sides discover each other at once: a fresh port for the outgoing
                // socket, so the two dials cannot collide on one TCP connection.
                let opts = DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .allocate_new_port()
                    .build();
                self.pending.push_back(ToSwarm::Dial { opts });
            }
        }
    }

    /// A peer's identify info: remember its listen addresses, and give them to Kademlia when
    /// it speaks Kademlia.
    pub(super) fn on_identified(&mut self, peer_id: PeerId, info: identify::Info) {
        let speaks_kad = info
            .protocols
            .iter()
            .any(|p| p.as_ref() == "/ipfs/kad/1.0.0");
        let p = self.peers.entry(peer_id).or_default();
        for addr in info.listen_addrs.into_iter().take(MAX_ADDRS) {
            p.remember(addr.clone());
            if speaks_kad {
                self.protocols.others.kad.add_address(&peer_id, addr);
            }
        }
    }

    pub(super) fn on_kad_event(&mut self, event: kad::Event) {
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

    pub(super) fn kad_round(&mut self) {
        let kad = &mut self.protocols.others.kad;
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
}
