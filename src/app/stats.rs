//! Counters and snapshots of a node and its scopes: what [`Node::stats`](crate::Node::stats)
//! returns, what the metrics export and what the health check reads.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::net::view::{BreakerCounts, ScopeNetCounters};

/// Counters of one scope that the application's threads and the network behaviour bump
/// without the scope's lock.
#[derive(Debug, Default)]
pub(crate) struct ScopeCounters {
    /// The network layer's own.
    pub net: ScopeNetCounters,
    pub broadcasts: AtomicU64,
    pub slots_local: AtomicU64,
    pub slots_remote: AtomicU64,
    pub frames_queued: AtomicU64,
    pub events_dropped: AtomicU64,
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// One scope's figures on this node, read at one moment: the sizes and the core's counters
/// under the scope's lock, the others from counters that never wait.
///
/// Counters (`_total` in the metrics) only grow while the node runs; the others are gauges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeStats {
    /// The scope id.
    pub scope: String,
    /// Non-empty groups in this node's view.
    pub groups: usize,
    /// Member slots in this node's view, of every node (a process that joined twice counts
    /// twice).
    pub members: usize,
    /// Member slots of this node's processes.
    pub local_members: usize,
    /// Connected peers that host the scope.
    pub peers: usize,
    /// Of those, the ones reached only through a relay (the others are reached directly).
    pub peers_relayed: usize,
    /// Peers of the scope lost without a goodbye and not reconnected (see
    /// [`ScopeHealth`](crate::ScopeHealth)).
    pub peers_unreachable: usize,
    /// The circuit breakers towards the scope's connected and lost peers.
    pub breakers: BreakerCounts,
    /// Local changes waiting for the network (the action queue).
    pub deltas_queued: usize,
    /// Deltas of local changes published to the scope's gossipsub topic (for peers this node
    /// has no delta stream to).
    pub deltas_sent: u64,
    /// Deltas of local changes written to peers' delta streams, one per peer and delta.
    pub deltas_streamed: u64,
    /// Deltas of peers applied.
    pub deltas_applied: u64,
    /// Deltas already applied (a gossip duplicate, or covered by a sync).
    pub deltas_duplicate: u64,
    /// Deltas refused: malformed, spoofed (an origin other than their signed source) or
    /// inconsistent with what the origin said before.
    pub deltas_rejected: u64,
    /// Syncs (an origin's whole state) applied.
    pub syncs_applied: u64,
    /// Syncs refused as inconsistent or hostile.
    pub syncs_rejected: u64,
    /// Sync pages served to peers.
    pub syncs_served: u64,
    /// Remote peers' members purged because the peer was down longer than
    /// `node_down_grace` (or said goodbye): one per peer and outage.
    pub purges: u64,
    /// Remote member slots refused by `max_groups` / `max_members_per_group`.
    pub slots_refused: u64,
    /// Remote leaves of slots this node did not hold (the slot was refused, or the origin
    /// left what it never joined): ignored and counted.
    pub leaves_unmatched: u64,
    /// Remote changes of metadata of processes this node does not hold in the group:
    /// ignored and counted.
    pub updates_unmatched: u64,
    /// Remote metadata values over `max_meta_bytes`: refused (the member is held without a
    /// value) and counted.
    pub meta_refused: u64,
    /// Names this node's processes lost to an earlier claim (see
    /// [`Instance::register`](crate::Instance::register)).
    pub names_lost: u64,
    /// `broadcast` and `broadcast_local` calls that targeted at least one slot.
    pub broadcasts: u64,
    /// Slots served in place by those broadcasts.
    pub delivered_local: u64,
    /// Slots on other nodes targeted by those broadcasts.
    pub delivered_remote: u64,
    /// Frames (one per other node and broadcast, or `multi_call` request) handed to the
    /// outboxes. What becomes of them is per node, in [`NodeStats`].
    pub frames_queued: u64,
    /// Events dropped because a subscription was full (`monitor_buffer`).
    pub events_dropped: u64,
}

/// Node-wide figures: the delivery of messages to other nodes goes through one outbox per
/// peer whatever the scope, so it is counted here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Connected peers.
    pub peers: usize,
    /// Of those, the ones reached only through a relay ([`Node::reach`](crate::Node::reach)).
    pub peers_relayed: usize,
    /// Reservations this node holds at relays (so that peers that cannot dial it reach it
    /// through them).
    pub relay_reservations: usize,
    /// Relayed connections made direct by hole punching.
    pub holes_punched: u64,
    /// Hole punches that failed: the connection stays relayed.
    pub hole_punches_failed: u64,
    /// Circuits this node relayed between other peers.
    pub circuits_relayed: u64,
    /// Peers the node keeps state of: connected, lost and remembered, or told of and being
    /// dialed; updated every 20 ms. Peer exchange adds none once there are
    /// [`BehaviourConfig::max_known_peers`](crate::net::protocols::BehaviourConfig::max_known_peers).
    pub known_peers: usize,
    /// Peers whose delta stream from this node is open (`/procgroups/deltas/2`): this node's
    /// deltas reach them directly, without gossipsub.
    pub delta_streams_open: usize,
    /// Frames waiting in the outboxes (at most 65 536).
    pub frames_waiting: usize,
    /// Frames acknowledged by their receiving node.
    pub frames_sent: u64,
    /// Messages received from other nodes, one per target slot of each frame (whether the
    /// target process still runs or not); a retried batch is counted once.
    pub frames_received: u64,
    /// Frames given up: every attempt failed (retries used up, or the breaker opened), refused
    /// by the peer's outbox (breaker open, queue full), or waiting when the node stopped. Each
    /// is a [`FailedNode`](crate::FailedNode) of its [`Delivery`](crate::Delivery).
    pub frames_lost: u64,
    /// Delta frames taken by a peer's delta stream and lost when the stream or its
    /// connection broke; the peer catches up by a sync (a Discover follows at once).
    pub delta_frames_lost: u64,
    /// Batches received twice (a retry whose first try had arrived) and delivered once.
    pub batches_duplicate: u64,
    /// Requests of the sync protocol (Discover, Sync, Goodbye) that failed (timeout,
    /// connection lost, refused). Failed delivery batches are retried, and their frames given
    /// up are counted in `frames_lost`.
    pub requests_failed: u64,
    /// Connections refused by the connection limits
    /// ([`BehaviourConfig::max_connections_per_peer`](crate::net::protocols::BehaviourConfig::max_connections_per_peer),
    /// `max_connections`, `max_pending_incoming`), incoming or dialed.
    pub connections_refused: u64,
    /// Peers' sync requests (Discover, Sync) refused because the peer was over its budget
    /// ([`BehaviourConfig::requests_per_second`](crate::net::protocols::BehaviourConfig::requests_per_second)):
    /// answered with a refusal, not served.
    pub requests_over_budget: u64,
    /// Peers' requests whose stream failed before this node answered (the connection
    /// closed, the request timed out).
    pub inbound_requests_failed: u64,
    /// Peers' inbound streams (sync, deliver) reset unread because their connection held
    /// [`BehaviourConfig::max_inbound_streams`](crate::net::protocols::BehaviourConfig::max_inbound_streams)
    /// of that protocol already ([`capped_streams`](crate::net::capped_streams)).
    pub inbound_streams_reset: u64,
    /// Connected peers whose gossipsub score is below
    /// [`GRAYLIST_THRESHOLD`](crate::net::scoring::GRAYLIST_THRESHOLD), most often for the
    /// deltas of theirs this node rejected ([`scoring`](crate::net::scoring)); recounted every
    /// [`SCORE_DECAY_INTERVAL`](crate::net::scoring::SCORE_DECAY_INTERVAL).
    pub peers_graylisted: usize,
    /// Gossipsub RPCs (messages and gossip alike) and delta-stream frames from graylisted
    /// peers, dropped unread.
    pub graylisted_dropped: u64,
    /// Gossipsub RPCs from peers below
    /// [`GOSSIP_THRESHOLD`](crate::net::scoring::GOSSIP_THRESHOLD) and not graylisted:
    /// gossipsub ignores the IHAVE/IWANT gossip they carry, and reads their messages. Counted
    /// per RPC, whether or not it held gossip
    /// ([`ScoredGossipsub::gossip_ignored`](crate::net::scoring::ScoredGossipsub::gossip_ignored)).
    pub gossip_ignored: u64,
    /// Malformed input from peers: undecodable, truncated or over-cap deltas, requests or
    /// responses, and answers that do not fit their request (another kind, another scope).
    pub malformed: u64,
    /// Messages to this node's processes dropped: nobody listened to the topic, or the inbox
    /// was full.
    pub messages_dropped: u64,
    /// Connections refused and deltas rejected because their peer is not admitted
    /// ([`NodeBuilder::allow_peers`](crate::NodeBuilder::allow_peers)).
    pub peers_refused: u64,
    /// Peers named by peer exchange and ignored because the node already knew
    /// [`BehaviourConfig::max_known_peers`](crate::net::protocols::BehaviourConfig::max_known_peers).
    pub peers_ignored: u64,
    /// Replies to this node's calls ([`multi_call`](crate::Instance::multi_call)) dropped
    /// because they came late: after their call ended (its timeout passed, or it was
    /// cancelled), after the call gave their process up (the request to its node failed), or
    /// for a call this node does not know.
    pub call_replies_late: u64,
    /// Replies to this node's calls dropped because the call did not wait for them: from a
    /// process it did not ask, a second reply of one, or addressed to another process than
    /// the caller.
    pub call_replies_rejected: u64,
}

impl ScopeCounters {
    pub(crate) fn fill(&self, stats: &mut ScopeStats) {
        stats.deltas_sent = read(&self.net.deltas_published);
        stats.deltas_streamed = read(&self.net.deltas_streamed);
        stats.syncs_served = read(&self.net.syncs_served);
        stats.broadcasts = read(&self.broadcasts);
        stats.delivered_local = read(&self.slots_local);
        stats.delivered_remote = read(&self.slots_remote);
        stats.frames_queued = read(&self.frames_queued);
        stats.events_dropped = read(&self.events_dropped);
    }
}
