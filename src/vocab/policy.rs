//! Permissions: which process may do what to which group.

use std::fmt;

use crate::Pid;

/// One permission. Each is checked on a resource: the scope id for
/// [`Open`](Permission::Open), [`WhichGroups`](Permission::WhichGroups),
/// [`WhichLocalGroups`](Permission::WhichLocalGroups) and [`Events`](Permission::Events); the
/// name for [`Register`](Permission::Register) and [`Whereis`](Permission::Whereis); the
/// group name for the others (once per group of a batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `pg.open`: open an instance of a scope.
    Open,
    /// `pg.join`
    Join,
    /// `pg.leave`
    Leave,
    /// `pg.get_members`
    GetMembers,
    /// `pg.get_local_members`
    GetLocalMembers,
    /// `pg.which_groups`
    WhichGroups,
    /// `pg.which_local_groups`
    WhichLocalGroups,
    /// `pg.broadcast`
    Broadcast,
    /// `pg.broadcast_local`
    BroadcastLocal,
    /// `pg.monitor`
    Monitor,
    /// `pg.events`
    Events,
    /// `pg.register`: register or unregister a name (checked on the name).
    Register,
    /// `pg.whereis`: look a registered name up (checked on the name).
    Whereis,
}

impl Permission {
    /// Every permission, in a fixed order.
    pub const ALL: [Permission; 13] = [
        Permission::Open,
        Permission::Join,
        Permission::Leave,
        Permission::GetMembers,
        Permission::GetLocalMembers,
        Permission::WhichGroups,
        Permission::WhichLocalGroups,
        Permission::Broadcast,
        Permission::BroadcastLocal,
        Permission::Monitor,
        Permission::Events,
        Permission::Register,
        Permission::Whereis,
    ];

    /// The name of the permission, e.g. `"pg.join"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Permission::Open => "pg.open",
            Permission::Join => "pg.join",
            Permission::Leave => "pg.leave",
            Permission::GetMembers => "pg.get_members",
            Permission::GetLocalMembers => "pg.get_local_members",
            Permission::WhichGroups => "pg.which_groups",
            Permission::WhichLocalGroups => "pg.which_local_groups",
            Permission::Broadcast => "pg.broadcast",
            Permission::BroadcastLocal => "pg.broadcast_local",
            Permission::Monitor => "pg.monitor",
            Permission::Events => "pg.events",
            Permission::Register => "pg.register",
            Permission::Whereis => "pg.whereis",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a [`Policy`] is asked about.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The process asking.
    pub process: Pid,
    /// The scope it works in.
    pub scope: &'a str,
    /// The permission needed.
    pub permission: Permission,
    /// The group name, or the scope id for scope-wide permissions.
    pub resource: &'a str,
}

/// Decides every permission, per process and resource.
///
/// The default policy is [`AllowAll`]. Any `Fn(&Request) -> bool` is a policy:
///
/// ```
/// use procgroups::{Permission, Request};
/// let read_only = |r: &Request<'_>| !matches!(r.permission, Permission::Join | Permission::Broadcast);
/// # let _ = procgroups::Node::builder().policy(read_only);
/// ```
///
/// A policy is called on the caller's thread, inside the operation, so it must be quick and
/// must not call back into procgroups.
pub trait Policy: Send + Sync + 'static {
    /// `true` to allow the request.
    fn allows(&self, request: &Request<'_>) -> bool;
}

impl<F> Policy for F
where
    F: Fn(&Request<'_>) -> bool + Send + Sync + 'static,
{
    fn allows(&self, request: &Request<'_>) -> bool {
        self(request)
    }
}

/// The default policy: every process may do everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Policy for AllowAll {
    fn allows(&self, _: &Request<'_>) -> bool {
        true
    }
}
