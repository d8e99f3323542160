//! What the network layer needs of the application, as traits the application implements:
//! the layer never imports the application's types, and a unit test can drive it with a test
//! double of each.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use libp2p::PeerId;

use crate::net::view::{ScopeNetCounters, ScopeNetView};
use crate::net::wire::Frame;
use crate::proto::messages::{SyncState, Version};
use crate::proto::{Input, Outcome, Output, Refusal};
use crate::vocab::config::ScopeConfig;

/// One scope hosted by the node, as the network layer sees it: its identity and settings, and
/// its core behind the host's lock.
pub(crate) trait ScopeHost: Send + Sync {
    /// The scope id (`"namespace:name"`).
    fn id(&self) -> &Arc<str>;
    /// The scope's settings (anti-entropy, node-down grace, delivery).
    fn config(&self) -> &ScopeConfig;
    /// Hands `input` to the scope's core, gives the membership changes it causes to the
    /// scope's subscribers, and appends the other outputs to `out` (with those of local
    /// operations since the last call).
    fn handle(&self, input: Input<'_>, out: &mut Vec<Output>) -> Result<Outcome, Refusal>;
    /// The core's clock (time since the node started), which [`Output::Timer`] is in.
    fn now(&self) -> Duration;
    /// This node's own version of the scope.
    fn version(&self) -> Version;
    /// This node's whole local state with its version, to serve a Sync request.
    fn sync_state(&self) -> SyncState;
    /// The peers whose members this node holds (applied and not purged).
    fn live_origins(&self) -> Vec<PeerId>;
    /// The counters the network layer bumps for this scope.
    fn counters(&self) -> &ScopeNetCounters;
    /// What the network layer knows of the scope's peers, as of its last turn.
    fn set_view(&self, view: ScopeNetView);
}

/// Where messages for this node's processes go.
pub(crate) trait InboxSink: Send + Sync {
    /// Delivers each frame of a batch from `peer` to its target processes (once per slot); a
    /// message nobody listens to, or that finds a full inbox, is counted in `dropped`.
    /// Returns how many messages the batch carried (one per target slot).
    fn deliver_batch(&self, peer: PeerId, frames: Vec<Frame>, dropped: &AtomicU64) -> u64;
}
