//! The application's side of a node: the [`Node`](node::Node) and its builder, processes and
//! their inboxes, scope instances, the scopes themselves (a core behind a short mutex, and its
//! subscribers), pending calls, health and metrics. It drives the network layer through
//! [`NetHandle`](crate::net::handle::NetHandle) and serves it through the traits of
//! [`net::host`](crate::net::host).

pub(crate) mod calls;
pub(crate) mod health;
pub(crate) mod instance;
pub(crate) mod mailbox;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod process;
pub(crate) mod scope;
pub(crate) mod shared;
pub(crate) mod stats;
pub(crate) mod subscription;
