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

// The layers, lowest first; a layer imports only the layers below it (`tests/architecture.rs`
// checks it, and docs/architecture.md describes each):
// - `vocab`: the shared vocabulary (pids, errors, configuration, policy, member lists, events,
//   delivery outcomes);
// - `proto`: the sans-IO core, one state machine per scope;
// - `net`: the libp2p behaviour, which reaches the application through `net::host`'s traits;
// - `app`: the application's side (node, processes, instances, scopes, subscriptions, health,
//   metrics), which implements those traits;
// - `testing`: the test and fuzz support, built only for tests and the fuzz targets.
mod app;
mod net;
mod proto;
#[cfg(any(test, feature = "fuzzing"))]
mod testing;
mod vocab;

pub mod behaviour {
    //! The libp2p side of a node: [`Behaviour`], the node's network logic as one
    //! [`NetworkBehaviour`](libp2p::swarm::NetworkBehaviour), over [`Protocols`], the libp2p
    //! protocols it composes.
    pub use crate::net::behaviour::{Behaviour, Event};
    pub use crate::net::capped_streams;
    pub use crate::net::delta_stream;
    pub use crate::net::protocols::*;
    pub use crate::net::scoring;
    pub use crate::net::wake_gate;
}
pub use net::{codec, wire};
/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use testing::fuzzing;
pub use vocab::config;

pub use app::calls::{CallResults, DEFAULT_CALL_TIMEOUT, Reply};
pub use app::health::{HealthProblem, HealthStatus, PeerPaths, RefusedSlots, ScopeHealth};
pub use app::instance::{GroupNames, Instance};
pub use app::mailbox::{Inbox, Message};
pub use app::node::{DEFAULT_MAILBOX_CAPACITY, Node, NodeBuilder};
pub use app::process::Process;
pub use app::stats::{NodeStats, ScopeStats};
pub use app::subscription::Subscription;
pub use net::relay;
pub use net::relay::{Reach, RelayConfig, RelayServer};
pub use net::view::BreakerCounts;
pub use proto::groups::MAX_GROUP_NAME_LEN;
pub use proto::registry::MAX_NAME_LEN;
pub use vocab::config::{
    ConfigError, DEFAULT_MAX_META_BYTES, MAX_META_BYTES_CEILING, ScopeConfig, ScopeConfigBuilder,
};
pub use vocab::delivery::{AttemptError, Delivery, DeliveryOutcome, FailedNode, FailureReason};
pub use vocab::error::{Error, ErrorKind, Limit, Result};
pub use vocab::event::{Event, EventKind};
pub use vocab::members::Members;
pub use vocab::meta::{MemberMeta, Meta};
pub use vocab::names::{NAME_LOST_TOPIC, NameLost, Registration};
pub use vocab::pid::{ParsePidError, Pid};
pub use vocab::policy::{AllowAll, Permission, Policy, Request};

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Re-exported so that users name the same libp2p types (`PeerId`, `Keypair`, `Multiaddr`).
pub use libp2p::{Multiaddr, PeerId, identity::Keypair, multiaddr, pnet::PreSharedKey};
/// Re-exported: [`Node::register_metrics`] takes a registry of this version.
pub use prometheus_client;
