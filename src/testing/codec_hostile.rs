//! Hostile bytes for the codec and the message decoders: the checks shared by the property
//! tests below and the fuzz targets (`crate::fuzzing`), panicking on a broken property.
//!
//! - [`read_checked`]: one frame read from arbitrary bytes by the request-response codec of
//!   either protocol, either side, under the default caps or tiny ones. A length over the cap
//!   is refused after reading the 4 bytes of the prefix and nothing else (no read of the
//!   body is even attempted, so no body buffer exists); a frame never reads past its end; a
//!   frame that decodes re-encodes to the same value.
//! - [`decode_checked`]: arbitrary bytes decoded as every message a peer sends (gossipsub
//!   [`Delta`], [`SyncState`], [`SyncRequest`], [`SyncResponse`], [`DeliverBatch`],
//!   [`DeliverAck`]); what decodes re-encodes to the same value.

use std::fmt::Debug;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::AsyncRead;
use futures::io::Cursor;
use libp2p::request_response::Codec as _;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::net::codec::{Codec, decode_body};
use crate::net::wire::{
    DeliverAck, DeliverBatch, Delta, SYNC_PROTOCOL, SyncRequest, SyncResponse, SyncState,
};
use crate::proto::messages::SyncMember;
use crate::testing::harness::Seeds;

/// The caps of the "tiny" codecs.
pub(crate) const TINY_CAP: usize = 64;

/// A reader over bytes that records what was asked of it.
pub(crate) struct Probe<'a> {
    inner: Cursor<&'a [u8]>,
    /// Bytes handed out.
    pub consumed: usize,
    /// The largest buffer a read offered to fill: the largest allocation made to read into.
    pub largest_read: usize,
}

impl<'a> Probe<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self {
            inner: Cursor::new(bytes),
            consumed: 0,
            largest_read: 0,
        }
    }
}

impl AsyncRead for Probe<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.largest_read = self.largest_read.max(buf.len());
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = read {
            self.consumed += n;
        }
        read
    }
}

/// Which codec and side a selector byte picks: bits 0–1 (sync request, sync response,
/// deliver request, deliver response), bit 2 tiny caps.
pub(crate) fn read_checked(selector: u8, stream: &[u8]) {
    let tiny = selector & 4 != 0;
    match selector & 3 {
        0 => read_one::<SyncRequest, SyncResponse>(true, tiny, stream),
        1 => read_one::<SyncRequest, SyncResponse>(false, tiny, stream),
        2 => read_one::<DeliverBatch, DeliverAck>(true, tiny, stream),
        _ => read_one::<DeliverBatch, DeliverAck>(false, tiny, stream),
    }
}

fn codec<Req, Resp>(tiny: bool) -> Codec<Req, Resp> {
    let codec = Codec::default();
    if tiny {
        codec
            .set_request_size_maximum(TINY_CAP)
            .set_response_size_maximum(TINY_CAP)
    } else {
        codec
    }
}

fn read_one<Req, Resp>(request: bool, tiny: bool, stream: &[u8])
where
    Req: Serialize + DeserializeOwned + PartialEq + Debug + Clone + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + PartialEq + Debug + Clone + Send + Sync + 'static,
{
    let mut c = codec::<Req, Resp>(tiny);
    let mut probe = Probe::new(stream);
    let p = SYNC_PROTOCOL;
    if request {
        let cap = c.request_size_maximum();
        let result = futures::executor::block_on(c.read_request(&p, &mut probe));
        check_read(stream, &probe, cap, result, |v| {
            let mut buf = Vec::new();
            futures::executor::block_on(c.write_request(&p, &mut Cursor::new(&mut buf), v))?;
            futures::executor::block_on(c.read_request(&p, &mut Cursor::new(&buf)))
        });
    } else {
        let cap = c.response_size_maximum();
        let result = futures::executor::block_on(c.read_response(&p, &mut probe));
        check_read(stream, &probe, cap, result, |v| {
            let mut buf = Vec::new();
            futures::executor::block_on(c.write_response(&p, &mut Cursor::new(&mut buf), v))?;
            futures::executor::block_on(c.read_response(&p, &mut Cursor::new(&buf)))
        });
    }
}

fn check_read<T: PartialEq + Debug + Clone>(
    stream: &[u8],
    probe: &Probe<'_>,
    cap: usize,
    result: io::Result<T>,
    round_trip: impl FnOnce(T) -> io::Result<T>,
) {
    let Some(prefix) = stream.get(..4) else {
        let err = result.expect_err("a frame without its length");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        return;
    };
    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if len > cap {
        let err = result.expect_err("a frame over the cap");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert_eq!(
            probe.consumed, 4,
            "read past the length of a frame over the cap"
        );
        assert_eq!(
            probe.largest_read, 4,
            "offered a buffer for a frame over the cap"
        );
        return;
    }
    assert!(probe.largest_read <= len.max(4), "a read beyond the frame");
    if stream.len() - 4 < len {
        let err = result.expect_err("a truncated frame");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        return;
    }
    assert_eq!(probe.consumed, 4 + len, "read past the end of the frame");
    match result {
        Err(err) => assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}"),
        Ok(value) => match round_trip(value.clone()) {
            Ok(again) => assert_eq!(again, value, "a decoded frame re-encodes differently"),
            // Re-encoded bigger than it came (a non-canonical input can be smaller): refused
            // by the sender's cap, which is right.
            Err(err) => {
                assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
                assert!(err.to_string().contains("over the cap"), "{err}");
            }
        },
    }
}

/// Decodes `data` as every message a peer sends; what decodes must re-encode to itself.
pub(crate) fn decode_checked(data: &[u8]) -> usize {
    decode_one::<Delta>(data)
        + decode_one::<SyncState>(data)
        + decode_one::<SyncRequest>(data)
        + decode_one::<SyncResponse>(data)
        + decode_one::<DeliverBatch>(data)
        + decode_one::<DeliverAck>(data)
}

/// 1 if `data` decodes as a `T`, after checking that it re-encodes to the same value.
fn decode_one<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) -> usize {
    // The delta's decoder in the network layer is `ciborium::from_reader`, which is what
    // `decode_body` is.
    let Ok(value) = decode_body::<T>(data) else {
        return 0;
    };
    let mut again = Vec::new();
    ciborium::into_writer(&value, &mut again).expect("encoding to memory");
    let back: T = decode_body(&again).expect("a re-encoded message decodes");
    assert_eq!(back, value, "a decoded message re-encodes differently");
    1
}

/// Valid frames and messages to start fuzzing from: `(name, selector byte + stream)` for
/// [`read_checked`] and `(name, CBOR)` for [`decode_checked`].
pub(crate) fn seeds() -> (Seeds, Seeds) {
    use crate::net::wire::{Frame, SyncGroup, Version};
    use crate::testing::harness::{Mode, Session, cbor, peer};

    let version = Version {
        incarnation: 0xa1,
        seq: 7,
    };
    let groups = vec![
        SyncGroup {
            name: "a".into(),
            members: vec![SyncMember::plain(1, 1), SyncMember::plain(2, 3)],
        },
        SyncGroup {
            name: "workers".into(),
            members: vec![SyncMember::plain(9, 1)],
        },
    ];
    let requests = [
        SyncRequest::Discover {
            scopes: vec![("app:pg".into(), version), ("other:x".into(), version)],
        },
        SyncRequest::Sync {
            scope: "app:pg".into(),
            page: 0,
            version: None,
        },
        SyncRequest::Sync {
            scope: "app:pg".into(),
            page: 2,
            version: Some(version),
        },
        SyncRequest::Goodbye { incarnation: 0xa1 },
    ];
    let responses = [
        SyncResponse::Discover {
            scopes: vec![("app:pg".into(), version)],
            peers: vec![(
                peer(0xb),
                vec![
                    "/ip4/10.0.0.2/tcp/4001".parse().expect("multiaddr"),
                    "/ip6/::1/udp/4001/quic-v1".parse().expect("multiaddr"),
                ],
            )],
        },
        SyncResponse::Page {
            scope: "app:pg".into(),
            version,
            page: 0,
            pages: 2,
            groups: groups.clone(),
        },
        SyncResponse::Ack,
        SyncResponse::Refused {
            reason: "unknown scope".into(),
        },
    ];
    let batch = DeliverBatch {
        incarnation: 0xa1,
        seq: 3,
        frames: vec![
            Frame {
                from: 1,
                topic: "workers".into(),
                payload: cbor(&("hello", 42u32)).into(),
                targets: vec![4, 4, 5].into(),
            },
            Frame {
                from: 2,
                topic: "".into(),
                payload: Vec::new().into(),
                targets: Vec::new().into(),
            },
        ],
    };
    let ack = DeliverAck { seq: 3 };
    let frame = |value: &dyn erased::Encode| {
        let body = value.cbor();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    };
    let mut codec = Vec::new();
    let mut decode = Vec::new();
    let mut add = |name: String, selector: u8, value: &dyn erased::Encode| {
        for tiny in [0, 4] {
            let mut input = vec![selector | tiny];
            input.extend(frame(value));
            let size = if tiny == 0 { "" } else { "-tiny-cap" };
            codec.push((format!("{name}{size}"), input));
        }
        decode.push((name, value.cbor()));
    };
    for (i, r) in requests.iter().enumerate() {
        add(format!("sync-request-{i}"), 0, r);
    }
    for (i, r) in responses.iter().enumerate() {
        add(format!("sync-response-{i}"), 1, r);
    }
    add("deliver-batch".into(), 2, &batch);
    add("deliver-ack".into(), 3, &ack);
    // The core's own messages, as the decoder sees them (the body of each session's step).
    for (name, step) in Session::seeds(Mode::Syncs) {
        decode.push((format!("core-{name}"), step[3..].to_vec()));
    }
    (codec, decode)
}

/// Encoding values of different types through one reference.
mod erased {
    pub(super) trait Encode {
        fn cbor(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn cbor(&self) -> Vec<u8> {
            crate::testing::harness::cbor(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn a_length_of_4_gib_with_no_body_is_refused_after_reading_the_prefix() {
        for (request, announce) in [(true, u32::MAX), (false, u32::MAX), (true, 1 << 30)] {
            let mut c = Codec::<SyncRequest, SyncResponse>::default();
            let stream = announce.to_be_bytes();
            let mut probe = Probe::new(&stream);
            let err = if request {
                block(c.read_request(&SYNC_PROTOCOL, &mut probe)).unwrap_err()
            } else {
                block(c.read_response(&SYNC_PROTOCOL, &mut probe))
                    .map(drop)
                    .unwrap_err()
            };
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(err.to_string().contains("over the cap"), "{err}");
            // Had it allocated the body, it would have offered that buffer to the reader.
            assert_eq!((probe.consumed, probe.largest_read), (4, 4));
        }
    }

    #[test]
    fn a_frame_at_the_cap_is_read_and_one_byte_over_it_is_refused() {
        let body = (0..TINY_CAP)
            .map(|n| {
                crate::testing::harness::cbor(&SyncResponse::Refused {
                    reason: "x".repeat(n),
                })
            })
            .find(|b| b.len() == TINY_CAP)
            .expect("some reason fills the cap exactly");
        for announce in [TINY_CAP, TINY_CAP + 1] {
            let mut stream = (announce as u32).to_be_bytes().to_vec();
            stream.extend(&body);
            stream.push(0);
            let mut probe = Probe::new(&stream);
            let mut c = codec::<SyncRequest, SyncResponse>(true);
            let result = block(c.read_response(&SYNC_PROTOCOL, &mut probe));
            if announce == TINY_CAP {
                assert!(
                    matches!(result, Ok(SyncResponse::Refused { .. })),
                    "{result:?}"
                );
                assert_eq!(probe.consumed, 4 + TINY_CAP);
            } else {
                assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
                assert_eq!((probe.consumed, probe.largest_read), (4, 4));
            }
            read_checked(5, &stream); // a response under tiny caps
        }
    }

    #[test]
    fn the_seeds_pass_the_checks() {
        let (codec, decode) = seeds();
        for (name, input) in &codec {
            read_checked(input[0], &input[1..]);
            assert!(
                decode_checked(&input[5..]) >= 1,
                "{name} decodes as nothing"
            );
        }
        for (name, input) in &decode {
            assert!(decode_checked(input) >= 1, "{name} decodes as nothing");
        }
    }

    fn mutation() -> impl Strategy<Value = (usize, u8, u8)> {
        // (position, kind, byte)
        (any::<usize>(), 0..5u8, any::<u8>())
    }

    /// Flips, overwrites, inserts, deletes or truncates at a few positions.
    fn mutate(mut bytes: Vec<u8>, mutations: &[(usize, u8, u8)]) -> Vec<u8> {
        for (pos, kind, byte) in mutations {
            let at = if bytes.is_empty() {
                0
            } else {
                pos % bytes.len()
            };
            match kind {
                0 if !bytes.is_empty() => bytes[at] ^= 1 << (byte % 8),
                1 if !bytes.is_empty() => bytes[at] = *byte,
                2 => bytes.insert(at, *byte),
                3 if !bytes.is_empty() => {
                    bytes.remove(at);
                }
                4 => bytes.truncate(at),
                _ => {}
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes behind any length prefix, read by every codec and side, tiny caps or not.
        #[test]
        fn any_frame_reads_without_panic_and_within_the_cap(
            selector in any::<u8>(),
            prefix in prop_oneof![
                any::<u32>(),
                0..200u32,
                Just(u32::MAX),
                Just(crate::net::codec::DEFAULT_MAX_REQUEST_BYTES as u32 + 1),
            ],
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut stream = prefix.to_be_bytes().to_vec();
            stream.extend(&body);
            read_checked(selector, &stream);
            // And the same bytes with their own length.
            let mut exact = (body.len() as u32).to_be_bytes().to_vec();
            exact.extend(&body);
            read_checked(selector, &exact);
        }

        /// Arbitrary streams, including ones shorter than a prefix.
        #[test]
        fn any_stream_reads_without_panic(
            selector in any::<u8>(),
            stream in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            read_checked(selector, &stream);
        }

        /// Valid frames with a few mutations (flips, overwrites, insertions, deletions,
        /// truncations), in the body or the prefix.
        #[test]
        fn mutated_valid_frames_read_without_panic(
            seed in any::<prop::sample::Index>(),
            mutations in proptest::collection::vec(mutation(), 1..6),
        ) {
            let (codec, decode) = seeds();
            let (_, input) = &codec[seed.index(codec.len())];
            let mutated = mutate(input[1..].to_vec(), &mutations);
            read_checked(input[0], &mutated);
            let (_, message) = &decode[seed.index(decode.len())];
            decode_checked(&mutate(message.clone(), &mutations));
        }

        /// Arbitrary bytes decoded as every message a peer sends.
        #[test]
        fn any_bytes_decode_as_any_message_without_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            decode_checked(&bytes);
        }

        /// CBOR headers announcing huge lengths (arrays, maps, strings) fail without
        /// allocating them: a decoder that trusted them would abort the test process.
        #[test]
        fn announced_huge_lengths_do_not_allocate(
            major in prop_oneof![Just(0x40u8), Just(0x60), Just(0x80), Just(0xa0)],
            depth in 0usize..4,
            tail in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            // A valid prefix of a delta (a map of five fields, the first one named), then a
            // header announcing 2^64 - 1 items.
            let mut bytes = vec![0xa5, 0x66];
            bytes.extend_from_slice(b"origin");
            bytes.extend(std::iter::repeat_n(0x81, depth)); // nested one-item arrays
            bytes.push(major | 0x1b);
            bytes.extend_from_slice(&u64::MAX.to_be_bytes());
            bytes.extend(&tail);
            decode_checked(&bytes);
            let mut bare = vec![major | 0x1b];
            bare.extend_from_slice(&u64::MAX.to_be_bytes());
            decode_checked(&bare);
        }
    }
}
