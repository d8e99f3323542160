//! Gossipsub peer scoring: the parameters a node scores its peers with, and
//! [`ScoredGossipsub`], the gossipsub behaviour with scoring on, which also scores the deltas
//! of the direct path and counts what it drops from graylisted peers.
//!
//! The score is gossipsub's (P1 to P7 of its specification). What moves it here:
//! - **A rejected delta** (malformed, a wrong origin, an invalid op: every `Reject` the
//!   behaviour reports) costs [`INVALID_DELTA_WEIGHT`] times the square of the peer's count of
//!   rejected deltas, which decays by [`INVALID_DELTA_DECAY`] every [`SCORE_DECAY_INTERVAL`].
//!   On gossipsub that is P4 (invalid message deliveries); on the direct path
//!   ([`delta_stream`](crate::net::delta_stream)) gossipsub never sees the delta, so the same
//!   count and decay are kept here and given to gossipsub as the peer's application score
//!   (P5, weight 1). A peer pays the same whichever path it sends by. A frame of a scope this
//!   node does not host is counted as malformed but not scored (gossipsub ignores a topic it
//!   is not subscribed to), nor is a frame over the cap (the stream is dropped for it).
//! - **Time in the mesh and first deliveries** (P1, P2) earn a little, capped in all at
//!   [`TOPIC_SCORE_CAP`], so that a peer cannot bank credit against later rejections: three
//!   rejected deltas in a row take any peer below [`GRAYLIST_THRESHOLD`].
//! - **Off**: mesh delivery deficits (P3, P3b), since deltas come only when a scope changes and
//!   between connected peers by the direct path, so a quiet mesh peer is the normal case; and
//!   IP colocation (P6), since peers behind one NAT, or several nodes on one machine, share an
//!   address.
//!
//! What a score does (gossipsub's thresholds): below 0 a peer is pruned from the mesh at the
//! next heartbeat; below [`GOSSIP_THRESHOLD`] its IHAVE/IWANT gossip is ignored; below
//! [`PUBLISH_THRESHOLD`] this node publishes nothing to it; below [`GRAYLIST_THRESHOLD`] every
//! RPC it sends is dropped unread, and so is every frame of its delta stream, each counted
//! ([`NodeStats::graylisted_dropped`](crate::NodeStats::graylisted_dropped)). As the count of
//! rejections decays, the peer comes back: after three rejections in a row, some 14 seconds
//! later (the count must fall below 2). A peer that goes on sending bad deltas thus has one
//! read every 14 seconds or so, on each path.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::net::forward::forward_connection_hooks;
use libp2p::PeerId;
use libp2p::gossipsub::{self, PeerScoreParams, PeerScoreThresholds, TopicScoreParams};
use libp2p::swarm::{
    ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// Below this score a peer's IHAVE/IWANT gossip is ignored.
pub const GOSSIP_THRESHOLD: f64 = -10.0;
/// Below this score this node publishes nothing to the peer.
pub const PUBLISH_THRESHOLD: f64 = -50.0;
/// Below this score everything the peer sends by gossipsub or by its delta stream is dropped
/// unread, and counted.
pub const GRAYLIST_THRESHOLD: f64 = -80.0;
/// The weight of a peer's count of rejected deltas, squared, in its score.
pub const INVALID_DELTA_WEIGHT: f64 = -20.0;
/// What remains of a count of rejected deltas after each [`SCORE_DECAY_INTERVAL`].
pub const INVALID_DELTA_DECAY: f64 = 0.97;
/// How often the counts behind a score decay.
pub const SCORE_DECAY_INTERVAL: Duration = Duration::from_secs(1);
/// The most a peer's scopes can add to its score, in all.
pub const TOPIC_SCORE_CAP: f64 = 10.0;
/// Score per second in a scope's mesh, up to [`TIME_IN_MESH_CAP`] seconds.
pub const TIME_IN_MESH_WEIGHT: f64 = 0.01;
/// Seconds in a mesh that count toward a score.
pub const TIME_IN_MESH_CAP: f64 = 300.0;
/// Score per delta a peer was first to bring, up to [`FIRST_DELIVERIES_CAP`] deltas.
pub const FIRST_DELIVERIES_WEIGHT: f64 = 0.1;
/// First deliveries that count toward a score.
pub const FIRST_DELIVERIES_CAP: f64 = 50.0;
/// What remains of a count of first deliveries after each [`SCORE_DECAY_INTERVAL`].
pub const FIRST_DELIVERIES_DECAY: f64 = 0.9;
/// How long the score of a peer that disconnected is kept (a reconnection does not clear it).
pub const RETAIN_SCORE: Duration = Duration::from_secs(3600);

/// The peer score parameters every node uses (the topics' are added as it subscribes).
pub fn peer_score_params() -> PeerScoreParams {
    PeerScoreParams {
        topic_score_cap: TOPIC_SCORE_CAP,
        app_specific_weight: 1.0,
        ip_colocation_factor_weight: 0.0,
        decay_interval: SCORE_DECAY_INTERVAL,
        retain_score: RETAIN_SCORE,
        ..PeerScoreParams::default()
    }
}

/// The thresholds every node uses.
pub fn peer_score_thresholds() -> PeerScoreThresholds {
    PeerScoreThresholds {
        gossip_threshold: GOSSIP_THRESHOLD,
        publish_threshold: PUBLISH_THRESHOLD,
        graylist_threshold: GRAYLIST_THRESHOLD,
        ..PeerScoreThresholds::default()
    }
}

/// The score parameters of a scope's topic.
pub fn topic_score_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: TIME_IN_MESH_WEIGHT,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: TIME_IN_MESH_CAP,
        first_message_deliveries_weight: FIRST_DELIVERIES_WEIGHT,
        first_message_deliveries_decay: FIRST_DELIVERIES_DECAY,
        first_message_deliveries_cap: FIRST_DELIVERIES_CAP,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: INVALID_DELTA_WEIGHT,
        invalid_message_deliveries_decay: INVALID_DELTA_DECAY,
        ..TopicScoreParams::default()
    }
}

/// Gossipsub with the scoring of this module: it derefs to the [`gossipsub::Behaviour`].
pub struct ScoredGossipsub {
    inner: gossipsub::Behaviour,
    /// Each peer's count of deltas rejected on the direct path, decaying like P4's.
    direct_rejections: HashMap<PeerId, f64>,
    next_decay: Instant,
    graylisted_dropped: u64,
    gossip_ignored: u64,
    peers_graylisted: usize,
}

impl ScoredGossipsub {
    /// `inner` with scoring on.
    pub fn new(mut inner: gossipsub::Behaviour) -> Result<Self, String> {
        inner.with_peer_score(peer_score_params(), peer_score_thresholds())?;
        Ok(ScoredGossipsub {
            inner,
            direct_rejections: HashMap::new(),
            next_decay: Instant::now() + SCORE_DECAY_INTERVAL,
            graylisted_dropped: 0,
            gossip_ignored: 0,
            peers_graylisted: 0,
        })
    }

    /// Subscribes to `topic` and scores its messages.
    pub fn subscribe_scored(
        &mut self,
        topic: &gossipsub::IdentTopic,
    ) -> Result<bool, gossipsub::SubscriptionError> {
        let subscribed = self.inner.subscribe(topic)?;
        // Scoring is on since `new`, so this cannot fail.
        let _ = self
            .inner
            .set_topic_params(topic.clone(), topic_score_params());
        Ok(subscribed)
    }

    /// Whether `peer`'s score is below [`GRAYLIST_THRESHOLD`].
    pub fn is_graylisted(&self, peer: &PeerId) -> bool {
        self.inner
            .peer_score(peer)
            .is_some_and(|score| score < GRAYLIST_THRESHOLD)
    }

    /// A delta of `peer`'s direct path was rejected: it costs what a rejected gossipsub
    /// message does.
    pub fn penalize_direct(&mut self, peer: PeerId) {
        let count = self.direct_rejections.entry(peer).or_default();
        *count += 1.0;
        let score = INVALID_DELTA_WEIGHT * *count * *count;
        self.inner.set_application_score(&peer, score);
    }

    /// A frame of `peer`'s delta stream dropped because the peer is graylisted.
    pub fn count_dropped_frame(&mut self) {
        self.graylisted_dropped += 1;
    }

    /// RPCs and delta-stream frames dropped unread because their peer was graylisted. An RPC
    /// is counted as gossipsub's connection handler hands it over, so the count also holds
    /// the rare other event of that handler (a message to the peer that timed out).
    pub fn graylisted_dropped(&self) -> u64 {
        self.graylisted_dropped
    }

    /// RPCs from peers below [`GOSSIP_THRESHOLD`] and not graylisted, whose IHAVE/IWANT
    /// gossip gossipsub ignores (their messages are still read). Counted as gossipsub's
    /// connection handler hands an RPC over: gossipsub's types do not say whether it held
    /// gossip, so this bounds the gossip ignored from above, by RPC.
    pub fn gossip_ignored(&self) -> u64 {
        self.gossip_ignored
    }

    /// Connected peers below [`GRAYLIST_THRESHOLD`], as of the last decay.
    pub fn peers_graylisted(&self) -> usize {
        self.peers_graylisted
    }

    /// Decays the direct path's counts and recounts the graylisted peers, once every
    /// [`SCORE_DECAY_INTERVAL`].
    pub fn decay(&mut self, now: Instant) {
        if now < self.next_decay {
            return;
        }
        self.next_decay = now + SCORE_DECAY_INTERVAL;
        let inner = &mut self.inner;
        self.direct_rejections.retain(|peer, count| {
            *count *= INVALID_DELTA_DECAY;
            // Gossipsub's own decay stops at the same point.
            let alive = *count >= 0.01;
            let score = if alive {
                INVALID_DELTA_WEIGHT * *count * *count
            } else {
                0.0
            };
            inner.set_application_score(peer, score);
            alive
        });
        let peers: Vec<PeerId> = self.inner.all_peers().map(|(peer, _)| *peer).collect();
        self.peers_graylisted = peers.iter().filter(|p| self.is_graylisted(p)).count();
    }
}

impl Deref for ScoredGossipsub {
    type Target = gossipsub::Behaviour;

    fn deref(&self) -> &gossipsub::Behaviour {
        &self.inner
    }
}

impl DerefMut for ScoredGossipsub {
    fn deref_mut(&mut self) -> &mut gossipsub::Behaviour {
        &mut self.inner
    }
}

impl NetworkBehaviour for ScoredGossipsub {
    type ConnectionHandler = THandler<gossipsub::Behaviour>;
    type ToSwarm = gossipsub::Event;

    forward_connection_hooks!(to inner);

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        // Gossipsub drops a graylisted peer's RPCs, and the gossip of a peer below the gossip
        // threshold, without a word: count them here.
        match self.inner.peer_score(&peer) {
            Some(score) if score < GRAYLIST_THRESHOLD => self.graylisted_dropped += 1,
            Some(score) if score < GOSSIP_THRESHOLD => self.gossip_ignored += 1,
            _ => {}
        }
        self.inner
            .on_connection_handler_event(peer, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<gossipsub::Event, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameters_are_valid() {
        let mut params = peer_score_params();
        let topic = gossipsub::IdentTopic::new("t");
        params.topics.insert(topic.hash(), topic_score_params());
        params.validate().unwrap();
        peer_score_thresholds().validate().unwrap();
    }

    #[test]
    fn three_rejections_graylist_a_peer_with_all_the_credit_it_can_have() {
        let after = |n: f64| TOPIC_SCORE_CAP + INVALID_DELTA_WEIGHT * n * n;
        assert!(after(2.0) >= GRAYLIST_THRESHOLD);
        assert!(after(3.0) < GRAYLIST_THRESHOLD);
        // And one rejection alone takes even a peer with full credit out of the mesh.
        assert!(after(1.0) < 0.0);
    }
}
