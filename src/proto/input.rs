//! The core's vocabulary: one [`Input`] enum in, one [`Output`] enum out.
//!
//! A host (the application's scope, the simulator, the test harness) hands every input to
//! [`ScopeCore::handle`] with the time, then takes the outputs with
//! [`ScopeCore::poll_output`]: membership changes for subscribers, deltas to publish, syncs to
//! pull, and the time at which it wants [`Input::Tick`]. Reads (member lists, versions, the
//! state to serve) are plain methods of [`ScopeCore`]: they change nothing the peers see.

use std::time::Duration;

use libp2p::PeerId;

use super::messages::{Delta, SyncState, Version};
use super::state::{Change, DeltaOutcome, LimitError, Rejection, ScopeCore, SyncOutcome};

/// Something that happened to a scope: a local operation, a message from a peer, a peer's
/// fate, or time passing.
#[derive(Debug)]
pub(crate) enum Input<'a> {
    /// A local process joins each group of `groups` (a name may repeat), all or nothing.
    Join { process: u64, groups: &'a [&'a str] },
    /// A local process leaves one slot of each group of `groups`, best effort.
    Leave { process: u64, groups: &'a [&'a str] },
    /// A local process is gone: every slot of it, in every group, in one change.
    Exit { process: u64 },
    /// The network layer's turn: the local changes queued since the last one become
    /// [`Output::Publish`] deltas.
    Flush,
    /// A peer shares the scope: from now on local changes are queued for deltas.
    PeerShares,
    /// A delta from `sender`, the authenticated source of the message.
    Delta { sender: PeerId, delta: Delta },
    /// `sender`'s whole state, pulled from it after an [`Output::RequestSync`].
    Sync { sender: PeerId, state: SyncState },
    /// The sync pulled from `origin` failed (no connection, timeout, refusal).
    SyncFailed { origin: PeerId },
    /// A peer told its own version (Discover, anti-entropy).
    PeerVersion { peer: PeerId, version: Version },
    /// A peer is taken for gone (its grace period passed): its members are purged.
    PeerDown { peer: PeerId },
    /// A peer said goodbye for `incarnation`: purged unless what we hold of it is of
    /// another incarnation (a goodbye of an old run must not purge the new one).
    Goodbye { peer: PeerId, incarnation: u64 },
    /// Time passes: gaps that stayed open past the reorder window and syncs unanswered past
    /// their timeout are pulled again.
    Tick,
}

/// What the core asks of its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Output {
    /// Members joined or left (only while recording, see
    /// [`ScopeCore::set_record_changes`]): for subscribers.
    Changed(Change),
    /// A delta of this node's changes, for every peer of the scope.
    Publish(Delta),
    /// Pull `peer`'s full state of this scope (a Sync request); answer with [`Input::Sync`] or
    /// [`Input::SyncFailed`].
    RequestSync { peer: PeerId },
    /// Hand the core [`Input::Tick`] once the time reaches `at` (ticking earlier or more often
    /// is harmless).
    Timer { at: Duration },
}

/// What the core made of an input it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done; nothing more to say.
    Done,
    /// How many slots a [`Input::Leave`] left (0: the process was a member of none of the
    /// groups, and nothing changed).
    Left { slots: usize },
    /// What became of a delta.
    Delta(DeltaOutcome),
    /// What became of a sync.
    Sync(SyncOutcome),
    /// Whether a [`Input::Goodbye`] purged the peer.
    Goodbye { purged: bool },
}

/// Why the core refused an input. A refused input changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// A local join would exceed a limit.
    #[error("{0:?}")]
    Limit(LimitError),
    /// A peer's delta or sync breaks the protocol's rules.
    #[error(transparent)]
    Rejected(#[from] Rejection),
}

impl ScopeCore {
    /// Takes one input at time `now` (the host's clock, from any fixed start); the outputs
    /// it causes wait in [`poll_output`](Self::poll_output).
    pub(crate) fn handle(&mut self, input: Input<'_>, now: Duration) -> Result<Outcome, Refusal> {
        match input {
            Input::Join { process, groups } => {
                self.join(process, groups).map_err(Refusal::Limit)?;
            }
            Input::Leave { process, groups } => {
                return Ok(Outcome::Left {
                    slots: self.leave(process, groups),
                });
            }
            Input::Exit { process } => self.exit(process),
            Input::Flush => {
                for delta in self.take_deltas() {
                    self.push_output(Output::Publish(delta));
                }
            }
            Input::PeerShares => {
                if !self.is_publishing() {
                    self.set_publishing(true);
                }
            }
            Input::Delta { sender, delta } => {
                return Ok(Outcome::Delta(self.handle_delta(sender, delta, now)?));
            }
            Input::Sync { sender, state } => {
                return Ok(Outcome::Sync(self.handle_sync(sender, state, now)?));
            }
            Input::SyncFailed { origin } => self.sync_failed(origin, now),
            Input::PeerVersion { peer, version } => self.handle_peer_version(peer, version, now),
            Input::PeerDown { peer } => self.peer_down(peer),
            Input::Goodbye { peer, incarnation } => {
                let purged = self
                    .applied_version(&peer)
                    .is_none_or(|v| v.incarnation == incarnation);
                if purged {
                    self.peer_down(peer);
                }
                return Ok(Outcome::Goodbye { purged });
            }
            Input::Tick => self.tick(now),
        }
        Ok(Outcome::Done)
    }
}
