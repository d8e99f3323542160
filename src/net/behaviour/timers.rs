//! The housekeeping pass: cores' timers, outbox retries and deadlines, redials, node-down,
//! anti-entropy and Kademlia rounds.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::proto::Input;

use super::{Behaviour, KAD_MAX};

impl Behaviour {
    pub(super) fn housekeeping(&mut self) {
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
        self.relay_housekeeping(now);
        self.publish_views(now);
        self.shared
            .known_peers
            .store(self.peers.len(), Ordering::Relaxed);
        self.shared
            .relay_reservations
            .store(self.relaying.held(), Ordering::Relaxed);
        let gossipsub = &mut self.protocols.others.gossipsub;
        gossipsub.decay(now);
        self.shared
            .peers_graylisted
            .store(gossipsub.peers_graylisted(), Ordering::Relaxed);
        self.shared
            .stats
            .graylisted_dropped
            .store(gossipsub.graylisted_dropped(), Ordering::Relaxed);
        self.shared
            .stats
            .gossip_ignored
            .store(gossipsub.gossip_ignored(), Ordering::Relaxed);
        let ttl = self.policy.timeout.max(Duration::from_secs(5)) * 2;
        self.served_pages
            .retain(|_, s| now.duration_since(s.at) < ttl);
        if self.kad_enabled && self.kad_next.is_some_and(|t| t <= now) {
            self.kad_round();
            self.kad_interval = (self.kad_interval * 2).min(KAD_MAX);
            self.kad_next = Some(now + self.kad_interval);
        }
    }

    pub(super) fn anti_entropy(&mut self, scope: usize, now: Instant) {
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
}
