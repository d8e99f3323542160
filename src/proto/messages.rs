//! What the core exchanges with peers. Encoded with CBOR by the codec; kept compact because a
//! delta of 10k joins is common: ops are arrays, groups are named once per delta.

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// The version of one origin's state in one scope: its incarnation (chosen at start) and the
/// sequence number of its last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Random per start of the node: a restart is a new incarnation.
    pub incarnation: u64,
    /// Bumped by every batch of local changes.
    pub seq: u64,
}

/// One counted change of one of the origin's own processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u32, u64, i64)", into = "(u32, u64, i64)")]
pub struct Op {
    /// Index into [`Delta::groups`].
    pub group: u32,
    /// The process id on the origin.
    pub id: u64,
    /// Slots joined (> 0) or left (< 0); never 0.
    pub change: i64,
}

impl From<(u32, u64, i64)> for Op {
    fn from((group, id, change): (u32, u64, i64)) -> Self {
        Op { group, id, change }
    }
}

impl From<Op> for (u32, u64, i64) {
    fn from(op: Op) -> Self {
        (op.group, op.id, op.change)
    }
}

/// The changes an origin made in one tick (or one chunk of them), in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The node whose processes changed; must be the authenticated sender.
    pub origin: PeerId,
    /// The origin's incarnation.
    pub incarnation: u64,
    /// Applies on top of `seq - 1` of the same incarnation.
    pub seq: u64,
    /// The group names the ops refer to by index.
    pub groups: Vec<String>,
    /// The changes, in the order the origin made them.
    pub ops: Vec<Op>,
}

/// One group of a [`SyncState`]: the origin's processes in it and their slot counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncGroup {
    /// The group.
    pub name: String,
    /// `(process id, slots)`, slots ≥ 1.
    pub members: Vec<(u64, u32)>,
}

/// An origin's whole local state of one scope, at a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The node the state belongs to; must be the authenticated sender.
    pub origin: PeerId,
    /// Its version: the state includes every delta up to `version.seq`.
    pub version: Version,
    /// Its non-empty groups.
    pub groups: Vec<SyncGroup>,
}
