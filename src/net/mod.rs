//! The network layer: the libp2p [`Behaviour`](behaviour::Behaviour) that carries a node's
//! scopes to its peers, the protocols it composes, their codec and wire types, the per-peer
//! outboxes, and the swarm a node runs it in.
//!
//! It never imports the application's side: it reaches the scopes and the inboxes through the
//! traits of [`host`], and the application drives it through [`handle::NetHandle`].

pub(crate) mod behaviour;
pub mod capped_streams;
pub mod codec;
pub mod delta_stream;
pub(crate) mod forward;
pub(crate) mod handle;
pub(crate) mod host;
pub(crate) mod keep_alive;
pub(crate) mod outbox;
pub(crate) mod paging;
pub(crate) mod peer;
pub mod protocols;
pub mod relay;
pub(crate) mod relaying;
pub(crate) mod request_budget;
pub mod scoring;
pub(crate) mod swarm;
pub(crate) mod view;
pub mod wake_gate;
pub mod wire;

pub(crate) use behaviour::NetConfig;
pub(crate) use handle::{NetHandle, NetShared};
pub(crate) use swarm::spawn_swarm;
