//! The crate's error type.

use crate::vocab::policy::Permission;

/// The broad class of an [`Error`]: what a caller can act on without matching every variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The [`Policy`](crate::Policy) refused the operation.
    PermissionDenied,
    /// A missing, empty or malformed argument, a leave of a group the process is not in, or a
    /// released instance / exited process.
    Invalid,
    /// The scope (or the local process) does not exist, or a group has no member to send to.
    NotFound,
    /// A configured limit (`max_groups`, `max_members_per_group`, …) would be exceeded.
    LimitReached,
    /// The node cannot do it now (shut down, no route, queue full); the same call may succeed
    /// later.
    Unavailable,
    /// The name is registered by another process.
    AlreadyExists,
}

/// Which configured limit refused an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `max_groups`: the number of groups this node's own processes are in.
    MaxGroups,
    /// `max_members_per_group`: the number of member slots this node's own processes hold in
    /// one group, counting multi-joins.
    MaxMembersPerGroup,
    /// `max_meta_bytes`: the encoded size of one metadata value.
    MaxMetaBytes,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::MaxGroups => "max_groups",
            Limit::MaxMembersPerGroup => "max_members_per_group",
            Limit::MaxMetaBytes => "max_meta_bytes",
        })
    }
}

/// Every error the crate returns. Match on [`Error::kind`] for the class; the variants carry
/// the group, scope or limit concerned, and the message names them.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> procgroups::Result<()> {
/// use procgroups::{Error, ErrorKind, Limit, Node, ScopeConfig};
///
/// let one_each = ScopeConfig::builder().max_members_per_group(1).build()?;
/// let node = Node::builder()
///     .mdns(false)
///     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
///     .scope("chat:users", one_each)
///     .build()
///     .await?;
/// let (alice, mallory) = (node.spawn_process(), node.spawn_process());
/// alice.open("chat:users")?.join("alice")?;
/// let err = mallory.open("chat:users")?.join("alice").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::LimitReached);
/// assert!(matches!(err, Error::LimitReached { limit: Limit::MaxMembersPerGroup, .. }));
/// assert!(err.to_string().contains("max_members_per_group"), "{err}");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The policy refused `permission` on `resource` (a group name or a scope id).
    #[error("permission {permission} denied on {resource:?}")]
    PermissionDenied {
        /// The permission that was checked.
        permission: Permission,
        /// The group name or scope id it was checked on.
        resource: String,
    },
    /// A group name is empty or longer than [`MAX_GROUP_NAME_LEN`](crate::MAX_GROUP_NAME_LEN)
    /// bytes.
    #[error("invalid group name {name:?}: {reason}")]
    InvalidGroupName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A batch of group names was empty.
    #[error("empty list of group names")]
    EmptyBatch,
    /// A topic is empty.
    #[error("empty topic")]
    EmptyTopic,
    /// The process left a group (or every group of a batch) it was not a member of.
    #[error("process is not a member of {groups:?} in scope {scope:?}")]
    NotMember {
        /// The scope.
        scope: String,
        /// The groups it tried to leave.
        groups: Vec<String>,
    },
    /// The instance was released (explicitly, by drop, or by the process's exit).
    #[error("instance of scope {scope:?} is released")]
    Released {
        /// The scope of the instance.
        scope: String,
    },
    /// The scope id is not of the form `namespace:name`.
    #[error("invalid scope id {scope:?}: {reason}")]
    InvalidScopeId {
        /// The offending id.
        scope: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No scope with this id runs on the node.
    #[error("scope {scope:?} not found")]
    ScopeNotFound {
        /// The id asked for.
        scope: String,
    },
    /// The target process does not exist on this node (it exited, or never did).
    #[error("process {pid} not found")]
    ProcessNotFound {
        /// The target.
        pid: String,
    },
    /// A join would exceed a configured limit; nothing of the batch was applied.
    #[error("{limit} reached in scope {scope:?} (group {group:?}, limit {max})")]
    LimitReached {
        /// The limit.
        limit: Limit,
        /// The scope.
        scope: String,
        /// The group that would exceed it.
        group: String,
        /// The configured value.
        max: usize,
    },
    /// The node cannot serve the call now; it may succeed later.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// Another process holds the name (as far as this node knows).
    #[error("name {name:?} in scope {scope:?} is held by {holder}")]
    NameTaken {
        /// The scope.
        scope: String,
        /// The name.
        name: String,
        /// The process that holds it (boxed: a Pid is large, and errors travel in every
        /// `Result`).
        holder: Box<crate::Pid>,
    },
    /// The process does not hold the name it unregisters.
    #[error("name {name:?} in scope {scope:?} is not registered by this process")]
    NotRegistered {
        /// The scope.
        scope: String,
        /// The name.
        name: String,
    },
    /// A registered name is empty or longer than
    /// [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The offending name (its first 64 characters).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A payload could not be encoded to or decoded from CBOR.
    #[error("payload codec: {reason}")]
    Payload {
        /// The codec's message.
        reason: String,
    },
    /// A configuration value or file is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::vocab::config::ConfigError),
    /// The group has no member to send to (`send_to_one`).
    #[error("group {group:?} of scope {scope:?} has no member")]
    NoMembers {
        /// The scope.
        scope: String,
        /// The group.
        group: String,
    },
    /// `reply` on a message that is not the request of a call.
    #[error("the message under topic {topic:?} is not a request: there is nobody to reply to")]
    NotARequest {
        /// The message's topic.
        topic: String,
    },
    /// `reply` on a request that was answered already (by this handle or a clone of it).
    #[error("the request under topic {topic:?} was answered already")]
    AlreadyReplied {
        /// The request's topic.
        topic: String,
    },
}

impl Error {
    /// [`Error::Unavailable`] with `reason`.
    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        Error::Unavailable {
            reason: reason.into(),
        }
    }

    /// The class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Error::InvalidGroupName { .. }
            | Error::EmptyBatch
            | Error::EmptyTopic
            | Error::NotMember { .. }
            | Error::Released { .. }
            | Error::InvalidScopeId { .. }
            | Error::Payload { .. }
            | Error::InvalidName { .. }
            | Error::Config(_)
            | Error::NotARequest { .. }
            | Error::AlreadyReplied { .. } => ErrorKind::Invalid,
            Error::NameTaken { .. } => ErrorKind::AlreadyExists,
            Error::ScopeNotFound { .. }
            | Error::ProcessNotFound { .. }
            | Error::NotRegistered { .. }
            | Error::NoMembers { .. } => ErrorKind::NotFound,
            Error::LimitReached { .. } => ErrorKind::LimitReached,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
