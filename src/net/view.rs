//! What the network layer tells the application of its state: each scope's peers as the
//! behaviour last saw them, and the behaviour's own pulse.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Counters of one scope that the network layer bumps without the scope's lock.
#[derive(Debug, Default)]
pub(crate) struct ScopeNetCounters {
    /// Deltas handed to gossipsub.
    pub deltas_published: AtomicU64,
    /// Deltas written to peers' delta streams, one per peer.
    pub deltas_streamed: AtomicU64,
    /// Deltas refused before they reached the core (no source, not admitted, malformed).
    pub deltas_rejected: AtomicU64,
    /// Sync pages served to peers.
    pub syncs_served: AtomicU64,
}

/// What the network behaviour knows of one scope's peers, written at each of its turns.
#[derive(Debug, Default, Clone)]
pub(crate) struct ScopeNetView {
    /// Connected peers that share the scope.
    pub peers: usize,
    /// Of those, the ones reached only through a relay.
    pub relayed: usize,
    pub breakers: BreakerCounts,
    /// Peers of the scope lost without a goodbye.
    pub unreachable: Vec<Unreachable>,
}

/// A peer lost without a goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unreachable {
    pub peer: PeerId,
    /// When it was lost.
    pub since: Instant,
}

/// The outboxes' circuit breakers towards a scope's peers, by state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BreakerCounts {
    /// Peers whose breaker is closed: messages flow.
    pub closed: usize,
    /// Peers whose breaker lets one probe through after its reset time.
    pub half_open: usize,
    /// Peers whose breaker is open: messages to them fail fast and are counted lost.
    pub open: usize,
}

/// The network behaviour's pulse, for the health check: when it last ran its housekeeping
/// (every 20 ms while its swarm is polled), and whether it stopped.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    last: Mutex<Instant>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            last: Mutex::new(Instant::now()),
        }
    }
}

impl Heartbeat {
    pub(crate) fn beat(&self, now: Instant) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// Time since the last beat (or since the node was built, before the first).
    pub(crate) fn silence(&self) -> Duration {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}
