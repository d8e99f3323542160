//! The core's vocabulary: one [`Input`] enum in, one [`Output`] enum out.
//!
//! A host (the application's scope, the simulator, the test harness) hands every input to
//! [`ScopeCore::handle`](super::ScopeCore::handle) with the time, then takes the outputs with
//! [`ScopeCore::poll_output`](super::ScopeCore::poll_output): membership changes for subscribers, deltas to publish, syncs to
//! pull, and the time at which it wants [`Input::Tick`]. Reads (member lists, versions, the
//! state to serve) are plain methods of [`ScopeCore`](super::ScopeCore): they change nothing the peers see.

use std::time::Duration;

use libp2p::PeerId;

use super::groups::GroupName;
use super::messages::{Delta, SyncState, Version};
use crate::vocab::error::Limit;
use crate::vocab::event::EventKind;
use crate::vocab::meta::Meta;
use crate::vocab::pid::Pid;

/// Something that happened to a scope: a local operation, a message from a peer, a peer's
/// fate, or time passing. The local operations (`Join`, `Leave`, `Exit`), `Flush` and
/// `PeerShares` do not read the time they are handed.
#[derive(Debug)]
pub(crate) enum Input<'a> {
    /// A local process joins each group of `groups` (a name may repeat), all or nothing.
    Join { process: u64, groups: &'a [&'a str] },
    /// A local process leaves one slot of each group of `groups`, best effort.
    Leave { process: u64, groups: &'a [&'a str] },
    /// A local process joins one slot of `group` and its metadata there becomes `meta`.
    JoinWith {
        process: u64,
        group: &'a str,
        meta: Meta,
    },
    /// A local process's metadata in `group` becomes `meta`; [`Outcome::NotMember`] when it
    /// has no slot there.
    Update {
        process: u64,
        group: &'a str,
        meta: Meta,
    },
    /// A local process registers `name` with `meta`, at `at_micros` (the node's wall clock,
    /// which the core does not read). Refused ([`Refusal::Taken`]) when another process holds
    /// it; the holder registering again replaces the metadata and keeps its place.
    Register {
        process: u64,
        name: &'a str,
        at_micros: u64,
        meta: Meta,
    },
    /// A local process gives up `name`; [`Outcome::NotMember`] when it does not hold it.
    Unregister { process: u64, name: &'a str },
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
    /// [`ScopeCore::set_record_changes`](super::ScopeCore::set_record_changes)): for subscribers.
    Changed(Change),
    /// A delta of this node's changes, for every peer of the scope.
    Publish(Delta),
    /// Pull `peer`'s full state of this scope (a Sync request); answer with [`Input::Sync`] or
    /// [`Input::SyncFailed`].
    RequestSync { peer: PeerId },
    /// Hand the core [`Input::Tick`] once the time reaches `at` (ticking earlier or more often
    /// is harmless).
    Timer { at: Duration },
    /// Local process `process` lost `name` to `winner` (their claims met, and the winner's
    /// ranks first); its claim is dropped.
    NameLost {
        name: String,
        process: u64,
        winner: Pid,
    },
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
    /// An [`Input::Update`] or [`Input::Unregister`] of what the process does not have:
    /// nothing changed.
    NotMember,
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
    /// A local registration of a name another process holds.
    #[error("the name {name:?} is held by {holder}")]
    /// Boxed: every local operation returns a `Result` of this, and a Pid is large.
    Taken { name: String, holder: Box<Pid> },
}

/// One change of membership, for subscribers: `count` slots of `pid` joined or left `group`,
/// or its metadata changed (`count` is then its slots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub kind: EventKind,
    pub group: GroupName,
    pub pid: Pid,
    pub count: u32,
    /// The process's metadata in the group after the change (before it, for the last slot
    /// left).
    pub meta: Option<Meta>,
}

/// Why a delta or a sync from a peer was refused. A refused input changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejection {
    #[error("the sender is not the origin {origin} it claims")]
    WrongOrigin { origin: Box<PeerId> },
    #[error("input claims to come from this node")]
    FromSelf,
    #[error("sequence number 0")]
    ZeroSeq,
    #[error("op refers to group {index} of {len}")]
    BadGroupIndex { index: u32, len: usize },
    #[error("invalid group name: {0}")]
    InvalidGroupName(&'static str),
    #[error("op with a change of 0 and no metadata, or beyond u32")]
    BadChange,
    #[error("group {0:?} twice in one sync")]
    DuplicateGroup(String),
    #[error("process {0} twice in one group of a sync")]
    DuplicateMember(u64),
    #[error("member with 0 slots")]
    ZeroSlots,
}

/// What became of a delta that was not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeltaOutcome {
    /// Applied (with any held deltas that followed it).
    Applied,
    /// Already applied: ignored.
    Duplicate,
    /// Held until the deltas before it arrive, or a sync replaces them.
    Held,
}

/// What happened to a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncOutcome {
    Applied,
    /// Not newer than what this node holds: ignored.
    Stale,
}

/// A local join refused by a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LimitError {
    pub limit: Limit,
    pub group: String,
    pub max: usize,
}
