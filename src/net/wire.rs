//! What nodes say to each other over request-response, and the frame of the delta stream
//! ([`DeltaFrame`]); on gossipsub, a delta travels as a bare CBOR [`Delta`].
//!
//! Two protocols: `/procgroups/sync/1` (membership: Discover, Sync pages, Goodbye) and
//! `/procgroups/deliver/1` (message batches of `broadcast` and `send`, and the requests and
//! replies of `multi_call`, tagged with their [`CallTag`]).

use std::sync::Arc;

use bytes::Bytes;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

pub use crate::proto::messages::{Delta, Op, SyncGroup, SyncMember, SyncState, Version};

/// The membership protocol.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/procgroups/sync/1");
/// The delivery protocol.
pub const DELIVER_PROTOCOL: StreamProtocol = StreamProtocol::new("/procgroups/deliver/1");

/// A frame of the delta stream (`/procgroups/deltas/2`): one delta of one scope, from the
/// peer at the other end of the connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeltaFrame {
    /// The scope id.
    pub scope: String,
    /// The delta; its `origin` must be the sending peer.
    pub delta: Delta,
}

/// [`DeltaFrame`] borrowed, for encoding a delta without copying it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DeltaFrameRef<'a> {
    /// The scope id.
    pub scope: &'a str,
    /// The delta.
    pub delta: &'a Delta,
}

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
    /// For the request of a call and its replies: which call. Absent from the encoding of a
    /// plain message (so that it reads as before this field existed), and ignored by a
    /// receiver that does not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallTag>,
}

impl Frame {
    /// A generous estimate of the frame's encoded size.
    pub fn encoded_len(&self) -> usize {
        // `"call": {"Request": {"id": u64}}`: 27 bytes at most.
        let call = if self.call.is_some() { 28 } else { 0 };
        16 + self.topic.len() + self.payload.len() + 9 * self.targets.len() + call
    }
}

/// What a frame of a call is: the request (to each of its targets, who may answer once) or
/// one target's reply (to the calling process, its only target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CallTag {
    /// A request of the call `id` of the sending process.
    Request {
        /// The call, numbered by the calling node.
        id: u64,
    },
    /// The sending process's reply to the call `id` of the target.
    Reply {
        /// The call, as its request named it.
        id: u64,
    },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(call: Option<CallTag>) -> Frame {
        Frame {
            from: 1,
            topic: "t".into(),
            payload: Bytes::from_static(b"\x01"),
            targets: vec![2, 3].into(),
            call,
        }
    }

    fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).expect("encode");
        out
    }

    /// The frame as it was before calls: what nodes that do not know them send and read.
    #[derive(Serialize, Deserialize)]
    struct PlainFrame {
        from: u64,
        topic: String,
        payload: Bytes,
        targets: Vec<u64>,
    }

    #[test]
    fn a_plain_frame_reads_and_writes_as_before_calls_and_a_call_tag_round_trips() {
        let plain = PlainFrame {
            from: 1,
            topic: "t".into(),
            payload: Bytes::from_static(b"\x01"),
            targets: vec![2, 3],
        };
        assert_eq!(cbor(&frame(None)), cbor(&plain), "no call key");
        let read: Frame = ciborium::from_reader(&cbor(&plain)[..]).expect("decode");
        assert_eq!(read, frame(None));
        for tag in [CallTag::Request { id: 7 }, CallTag::Reply { id: u64::MAX }] {
            let tagged = frame(Some(tag));
            let bytes = cbor(&tagged);
            let (more, estimated) = (
                bytes.len() - cbor(&plain).len(),
                tagged.encoded_len() - frame(None).encoded_len(),
            );
            assert!(
                more <= estimated,
                "the tag takes {more} bytes, estimated {estimated}"
            );
            let read: Frame = ciborium::from_reader(&bytes[..]).expect("decode");
            assert_eq!(read, tagged);
            // A node that does not know calls reads the frame as a plain message.
            let old: PlainFrame = ciborium::from_reader(&bytes[..]).expect("decode");
            assert_eq!(old.targets, [2, 3]);
        }
    }
}
