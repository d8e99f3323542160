//! # procgroups
//!
//! Erlang/OTP-style process groups for Rust programs, over libp2p.
//!
//! Processes join named groups; every node knows every group's members; a broadcast reaches
//! every member wherever it runs. Groups live in *scopes* (`"namespace:name"`), isolated
//! namespaces with their own configuration. There is no central registry: each node is the
//! only authority on its own processes and reconciles with its peers.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> procgroups::Result<()> {
//! use procgroups::{EventKind, Node, ScopeConfig};
//!
//! let node = Node::builder()
//!     .mdns(false) // mDNS is for LANs; here one node is enough
//!     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
//!     .scope("app:pg", ScopeConfig::default())
//!     .build()
//!     .await?;
//! let p = node.spawn_process();
//! let pg = p.open("app:pg")?;
//!
//! let (mut sub, members) = pg.monitor("workers")?; // snapshot + subscription, atomically
//! assert!(members.is_empty());
//! pg.join("workers")?;
//! pg.join(["workers", "all"])?;                     // counted: now two slots in "workers"
//! assert_eq!(pg.get_members("workers")?.count(&p.pid()), 2);
//!
//! let ev = sub.recv().await.unwrap();
//! assert_eq!((ev.kind, &*ev.group, &*ev.pids), (EventKind::MemberJoined, "workers", &[p.pid()][..]));
//! # Ok(()) }
//! ```
//!
//! Semantics, in short (the full contract is in the items' docs):
//! - **Counted membership**: a process may join a group many times and must leave as many
//!   times; member lists and broadcasts count slots.
//! - **Batch join** is all or nothing; **batch leave** is best effort.
//! - **Read your writes** on the local node; remote views are eventually consistent.
//! - **Exit** (dropping the [`Process`]) removes every slot in every scope.
//! - **Monitors** take their snapshot and subscribe in one step and never block the scope: a
//!   full subscription drops and counts.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod behaviour;
pub mod codec;
pub mod config;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod instance;
mod keep_alive;
mod members;
mod metrics;
mod net;
mod node;
mod outbox;
mod pid;
mod policy;
mod process;
mod proto;
mod scope;
mod stats;
mod subscription;
pub mod wire;

pub use config::{ConfigError, ScopeConfig, ScopeConfigBuilder};
pub use error::{Error, ErrorKind, Limit, Result};
pub use health::{HealthProblem, HealthStatus, ScopeHealth};
pub use instance::{GroupNames, Instance};
/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Re-exported so that users name the same libp2p types (`PeerId`, `Keypair`, `Multiaddr`).
pub use libp2p::{Multiaddr, PeerId, identity::Keypair, multiaddr, pnet::PreSharedKey};
pub use members::Members;
pub use node::{DEFAULT_MAILBOX_CAPACITY, Node, NodeBuilder};
pub use pid::{ParsePidError, Pid};
pub use policy::{AllowAll, Permission, Policy, Request};
pub use process::{Inbox, Message, Process};
/// Re-exported: [`Node::register_metrics`] takes a registry of this version.
pub use prometheus_client;
pub use proto::state::MAX_GROUP_NAME_LEN;
pub use stats::{BreakerCounts, NodeStats, ScopeStats};
pub use subscription::{Event, EventKind, Subscription};
