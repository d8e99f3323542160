//! Membership events: what a subscription carries and the core records.

use std::sync::Arc;

use crate::vocab::meta::Meta;
use crate::vocab::pid::Pid;

/// What happened to the members of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// Slots were added: shown as `member.joined`.
    MemberJoined,
    /// Slots were removed (leave, exit, node down): shown as `member.left`.
    MemberLeft,
    /// A member's metadata changed (`update`, or a peer's sync that brought another value),
    /// its slots did not: shown as `member.updated`. A `join_with` is a `MemberJoined` that
    /// carries the new value.
    MemberUpdated,
}

impl EventKind {
    /// The name shown for the kind: `"member.joined"`, `"member.left"` or
    /// `"member.updated"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::MemberJoined => "member.joined",
            EventKind::MemberLeft => "member.left",
            EventKind::MemberUpdated => "member.updated",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One membership change of one group.
///
/// `pids` keeps multiplicity: a process that leaves a group it had joined three times is
/// listed three times. Consecutive changes of the same kind to the same group with the same
/// metadata, made in one operation (a sync, an exit, a delta from a peer), arrive as one
/// event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Joined or left.
    pub kind: EventKind,
    /// The group.
    pub group: Arc<str>,
    /// The affected processes, once per slot (for `MemberUpdated`: once per slot the
    /// process holds).
    pub pids: Arc<[Pid]>,
    /// The metadata of the processes in the group: after a join or an update, what they have
    /// now; after a leave, what they had. `None` for processes that joined with `join` only.
    pub meta: Option<Meta>,
}

impl Event {
    /// The system that emits every procgroups event: `"pg"`.
    pub const SYSTEM: &'static str = "pg";

    /// Always `"pg"`.
    pub fn system(&self) -> &'static str {
        Self::SYSTEM
    }
}
