//! Registered names: one process per name per scope, cluster-wide.
//!
//! A name is held as a group of its own, under a name no group of the application can have
//! (a NUL byte, then the name), whose members are the processes that claim it, each with a
//! [`Claim`] as its metadata. So names travel in the same deltas and syncs as the groups,
//! under the same origin checks, and go away with their process, its node's purge or its
//! node's restart like any membership. Two claims of one name (they raced, or met when a
//! partition healed) are resolved on every node by one rule, [`rank`]: the earlier claim by
//! its origin's clock, ties broken by the smaller Pid. The node of a losing local claim
//! drops it and tells the process (`Output::NameLost`).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::proto::groups::MAX_GROUP_NAME_LEN;
use crate::vocab::pid::Pid;

/// The first byte of the group that holds a registered name.
const NAME_MARK: char = '\0';

/// The longest registered name, in bytes (a group name, less the mark).
pub const MAX_NAME_LEN: usize = MAX_GROUP_NAME_LEN - 1;

/// Why `name` is not a valid registered name, if it is not.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 254 bytes")
    } else {
        None
    }
}

/// The group that holds `name`.
pub(crate) fn name_group(name: &str) -> String {
    let mut group = String::with_capacity(name.len() + 1);
    group.push(NAME_MARK);
    group.push_str(name);
    group
}

/// Whether `group` holds a registered name.
pub(crate) fn is_name_group(group: &str) -> bool {
    group.starts_with(NAME_MARK)
}

/// The name a name group holds.
pub(crate) fn name_of(group: &str) -> &str {
    group.strip_prefix(NAME_MARK).unwrap_or(group)
}

/// What a process's membership of a name group says: when it registered the name and the
/// metadata it registered it with. Encoded as the CBOR array `[at_micros, meta]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claim {
    /// When the name was registered, in microseconds since the Unix epoch, by the clock of
    /// the registering node.
    pub at_micros: u64,
    /// The metadata given to `register`, CBOR-encoded.
    pub meta: Bytes,
}

impl Claim {
    pub(crate) fn encode(&self) -> Bytes {
        let mut buf = Vec::with_capacity(self.meta.len() + 12);
        // Writing to a vector fails only on a serializer error, which a u64 and bytes cannot
        // cause.
        ciborium::into_writer(&(self.at_micros, &self.meta), &mut buf).expect("a claim encodes");
        buf.into()
    }

    /// A claim as a peer sent it; `None` for bytes that are not one (such a claim loses to
    /// every well-formed one).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (at_micros, meta): (u64, Bytes) = ciborium::from_reader(bytes).ok()?;
        Some(Self { at_micros, meta })
    }
}

/// The bytes a claim adds to the metadata it carries, at most: the cap on metadata a peer
/// sends is this much larger for a name group.
pub(crate) const CLAIM_OVERHEAD: usize = 16;

/// The order of claims: `(when, who)`, the smallest wins. A claim that does not decode sorts
/// last.
pub(crate) fn rank(claim: Option<&Claim>, pid: Pid) -> (u64, Pid) {
    (claim.map_or(u64::MAX, |c| c.at_micros), pid)
}
