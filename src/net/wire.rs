//! What nodes say to each other over request-response, besides the deltas (which travel over
//! gossipsub as a CBOR [`Delta`]).
//!
//! Two protocols: `/procgroups/sync/1` (membership: Discover, Sync pages, Goodbye) and
//! `/procgroups/deliver/1` (message batches of `broadcast` and `send`).

use std::sync::Arc;

use bytes::Bytes;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

pub use crate::proto::messages::{Delta, Op, SyncGroup, SyncMember, SyncState, Version};

/// The membership protocol.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/procgroups/sync/1");
/// The delivery protocol.
pub const DELIVER_PROTOCOL: StreamProtocol = StreamProtocol::new("/procgroups/deliver/1");

/// Peers listed in one Discover answer, at most (and addresses per peer, at most 8).
pub const MAX_PEERS_EXCHANGED: usize = 64;

/// A request of the membership protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// "These are my scopes and my version of each": the responder pulls what it lacks and
    /// answers with its own.
    Discover {
        /// `(scope id, the requester's own version)`.
        scopes: Vec<(String, Version)>,
    },
    /// Asks for the responder's own state of `scope`: page 0 first; later pages name the
    /// version page 0 carried, so that every page comes from one state.
    Sync {
        /// The scope.
        scope: String,
        /// Page wanted, from 0.
        page: u32,
        /// For a page after the first, the version of the first.
        version: Option<Version>,
    },
    /// The requester shuts down: drop its members now instead of after the grace period.
    Goodbye {
        /// The incarnation that leaves (a newer one of the same peer is not affected).
        incarnation: u64,
    },
}

/// A response of the membership protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// The responder's scopes and its own version of each, and the other peers it is
    /// connected to that host one of those scopes (so that every member of a scope ends up
    /// connected to every other: a sync needs a direct connection to the origin).
    Discover {
        /// `(scope id, version)`.
        scopes: Vec<(String, Version)>,
        /// `(peer, its listen addresses)`, at most [`MAX_PEERS_EXCHANGED`].
        peers: Vec<(PeerId, Vec<Multiaddr>)>,
    },
    /// One page of the responder's state of a scope.
    Page {
        /// The scope.
        scope: String,
        /// The version of the whole state the pages make up.
        version: Version,
        /// This page, from 0.
        page: u32,
        /// How many pages there are.
        pages: u32,
        /// Some of the responder's non-empty groups.
        groups: Vec<SyncGroup>,
    },
    /// Goodbye acknowledged.
    Ack,
    /// The request cannot be served (unknown scope, expired pages); the requester may retry.
    Refused {
        /// Why, for logs.
        reason: String,
    },
}

/// One message for some processes of the receiving node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The sending process (on the sending node).
    pub from: u64,
    /// The topic.
    pub topic: Arc<str>,
    /// CBOR payload, encoded once by the sender and shared by every frame of the message.
    pub payload: Bytes,
    /// Process ids on the receiver, once per slot.
    pub targets: Arc<[u64]>,
}

impl Frame {
    /// A generous estimate of the frame's encoded size.
    pub fn encoded_len(&self) -> usize {
        16 + self.topic.len() + self.payload.len() + 9 * self.targets.len()
    }
}

/// A batch of frames from one node to another, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverBatch {
    /// The sender's incarnation.
    pub incarnation: u64,
    /// Per (sender incarnation, receiver) sequence: a retried batch keeps its number, so the
    /// receiver delivers it once.
    pub seq: u64,
    /// The frames.
    pub frames: Vec<Frame>,
}

/// The receiver took a batch (or had already taken it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverAck {
    /// `seq` of the batch.
    pub seq: u64,
}
