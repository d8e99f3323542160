//! A delta's ops on the wire: one CBOR byte string holding every op packed, rather than an
//! array of arrays. Each op is four varints (`unsigned-varint`: LEB128, minimal, at most
//! `u64`): the group's index in the delta's names, the process id, the change zigzag-encoded
//! (`0, -1, 1, -2, …` as `0, 1, 2, 3, …`), and the metadata's length plus one (0: no metadata)
//! followed by that many bytes. A delta of 10k joins is then one CBOR item instead of 40k,
//! which was most of what encoding and decoding it cost.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};
use unsigned_varint::{decode, encode};

use super::Op;

/// The fewest bytes an op packs into (four one-byte varints): bounds the ops a byte string
/// can hold, so that what is reserved before decoding is the peer's bytes, not its word.
const MIN_OP_BYTES: usize = 4;

/// Serializes `ops` as one byte string (`#[serde(with = "packed_ops")]`).
pub(crate) fn serialize<S: Serializer>(ops: &[Op], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(&pack(ops))
}

/// Deserializes the byte string [`serialize`] wrote.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Op>, D::Error> {
    struct Packed;
    impl Visitor<'_> for Packed {
        type Value = Vec<Op>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a byte string of packed ops")
        }
        fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<Op>, E> {
            unpack(bytes).map_err(E::custom)
        }
    }
    // A byte string as long as it is (`deserialize_bytes` of ciborium takes only those that
    // fit its scratch buffer).
    d.deserialize_byte_buf(Packed)
}

/// `ops` packed.
pub(crate) fn pack(ops: &[Op]) -> Vec<u8> {
    // A plain op of a large process id takes about 12 bytes.
    let mut out = Vec::with_capacity(ops.len() * 12);
    let mut buf = encode::u64_buffer();
    for op in ops {
        out.extend_from_slice(encode::u32(op.group, &mut encode::u32_buffer()));
        out.extend_from_slice(encode::u64(op.id, &mut buf));
        out.extend_from_slice(encode::u64(zigzag(op.change), &mut buf));
        match &op.meta {
            None => out.push(0),
            Some(meta) => {
                out.extend_from_slice(encode::u64(meta.len() as u64 + 1, &mut buf));
                out.extend_from_slice(meta);
            }
        }
    }
    out
}

/// The bytes `op` packs into.
pub(crate) fn packed_len(op: &Op) -> usize {
    let meta = op.meta.as_ref().map_or(0, Bytes::len);
    varint_len(u64::from(op.group))
        + varint_len(op.id)
        + varint_len(zigzag(op.change))
        + varint_len(meta as u64 + u64::from(op.meta.is_some()))
        + meta
}

fn varint_len(n: u64) -> usize {
    ((u64::BITS - (n | 1).leading_zeros()) as usize).div_ceil(7)
}

/// Why packed ops could not be read: which op, and what was wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("op {op}: {problem}")]
pub(crate) struct UnpackError {
    /// The op's position among the ops.
    op: usize,
    problem: &'static str,
}

/// The ops `bytes` holds.
pub(crate) fn unpack(mut bytes: &[u8]) -> Result<Vec<Op>, UnpackError> {
    // At most this many ops; a third of it is about what ops of large process ids take.
    let mut ops = Vec::with_capacity(bytes.len() / MIN_OP_BYTES / 3);
    while !bytes.is_empty() {
        let fail = |problem| UnpackError {
            op: ops.len(),
            problem,
        };
        let (group, rest) = decode::u32(bytes).map_err(|e| fail(varint_problem(e, "group")))?;
        let (id, rest) = decode::u64(rest).map_err(|e| fail(varint_problem(e, "id")))?;
        let (change, rest) = decode::u64(rest).map_err(|e| fail(varint_problem(e, "change")))?;
        let (meta_len, rest) = decode::u64(rest).map_err(|e| fail(varint_problem(e, "meta")))?;
        let (meta, rest) = match meta_len {
            0 => (None, rest),
            n => {
                let len = usize::try_from(n - 1)
                    .ok()
                    .filter(|len| *len <= rest.len())
                    .ok_or_else(|| fail("metadata longer than the bytes left"))?;
                let (meta, rest) = rest.split_at(len);
                (Some(Bytes::copy_from_slice(meta)), rest)
            }
        };
        ops.push(Op {
            group,
            id,
            change: unzigzag(change),
            meta,
        });
        bytes = rest;
    }
    Ok(ops)
}

fn varint_problem(e: decode::Error, field: &'static str) -> &'static str {
    match (e, field) {
        (decode::Error::Insufficient, _) => "cut short",
        (decode::Error::Overflow, "group") => "group index over u32",
        (decode::Error::Overflow, _) => "a varint over u64",
        (decode::Error::NotMinimal, _) => "a varint not in its shortest form",
        _ => "a malformed varint",
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(group: u32, id: u64, change: i64, meta: Option<&'static [u8]>) -> Op {
        Op {
            group,
            id,
            change,
            meta: meta.map(Bytes::from_static),
        }
    }

    #[test]
    fn ops_round_trip_and_a_plain_join_of_a_small_id_is_four_bytes() {
        let ops = vec![
            op(0, 1, 1, None),
            op(7, u64::MAX, i64::MIN, None),
            op(
                u32::MAX,
                1_732_240_000_000_000_001,
                i64::MAX,
                Some(b"\x63abc"),
            ),
            op(1, 2, 0, Some(b"")),
            op(1, 2, -3, None),
        ];
        let packed = pack(&ops);
        assert_eq!(unpack(&packed), Ok(ops.clone()));
        for op in &ops {
            assert_eq!(packed_len(op), pack(std::slice::from_ref(op)).len());
        }
        assert_eq!(pack(&ops[..1]), [0, 1, 2, 0]);
        assert_eq!(unpack(&[]), Ok(Vec::new()));
    }

    /// Ops through CBOR, as `Delta` has them.
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Ops(#[serde(with = "super")] Vec<Op>);

    #[test]
    fn ops_are_one_cbor_byte_string_of_any_length() {
        for n in [0, 1, 10_000] {
            let ops = Ops((0..n)
                .map(|i| op(i as u32, 1_732_240_000_000_000_000 + i, 1, None))
                .collect());
            let mut cbor = Vec::new();
            ciborium::into_writer(&ops, &mut cbor).unwrap();
            assert_eq!(cbor[0] >> 5, 2, "one CBOR byte string");
            assert_eq!(ciborium::from_reader::<Ops, _>(&cbor[..]).unwrap(), ops);
        }
    }

    #[test]
    fn malformed_ops_are_refused_naming_the_op() {
        let good = pack(&[op(0, 1, 1, None)]);
        let refused = |bytes: &[u8]| unpack(bytes).unwrap_err().to_string();
        let mut cut = good.clone();
        cut.extend_from_slice(&good[..3]);
        assert_eq!(refused(&cut), "op 1: cut short");
        assert_eq!(
            refused(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 1, 2, 0]),
            "op 0: group index over u32"
        );
        assert_eq!(
            refused(&[0x81, 0x00, 1, 2, 0]),
            "op 0: a varint not in its shortest form"
        );
        assert_eq!(
            refused(&[0, 1, 2, 5, b'a']),
            "op 0: metadata longer than the bytes left"
        );
        let mut huge = vec![0, 1, 2];
        huge.extend_from_slice(encode::u64(u64::MAX, &mut encode::u64_buffer()));
        assert_eq!(refused(&huge), "op 0: metadata longer than the bytes left");
    }
}
