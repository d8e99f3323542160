//! What the core exchanges with peers. Encoded with CBOR by the codec; kept compact because a
//! delta of 10k joins is common: groups are named once per delta, and its ops are packed into
//! one byte string (`packed_ops`).

use std::sync::Arc;

use bytes::Bytes;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

pub(crate) mod packed_ops;

/// The version of one origin's state in one scope: its incarnation (chosen at start) and the
/// sequence number of its last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    /// Random per start of the node: a restart is a new incarnation.
    pub incarnation: u64,
    /// Bumped by every batch of local changes.
    pub seq: u64,
}

/// One change of one of the origin's own processes in one group: slots joined or left, and
/// the process's new metadata in that group, if the change sets it. On the wire, a delta's ops
/// are packed together (`packed_ops`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Index into [`Delta::groups`].
    pub group: u32,
    /// The process id on the origin.
    pub id: u64,
    /// Slots joined (> 0) or left (< 0); 0 only for a change of metadata alone.
    pub change: i64,
    /// The process's metadata in the group from this change on (CBOR); `None` keeps what it
    /// had. A process that leaves its last slot loses its metadata.
    pub meta: Option<Bytes>,
}

/// The changes an origin made in one tick (or one chunk of them), in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The node whose processes changed; must be the authenticated sender.
    pub origin: PeerId,
    /// The origin's incarnation.
    pub incarnation: u64,
    /// Applies on top of `seq - 1` of the same incarnation.
    pub seq: u64,
    /// The group names the ops refer to by index; shared, so that a group made by this delta
    /// keeps the decoded name.
    #[serde(deserialize_with = "shared_names")]
    pub groups: Vec<Arc<str>>,
    /// The changes, in the order the origin made them; one CBOR byte string on the wire.
    #[serde(with = "packed_ops")]
    pub ops: Vec<Op>,
}

/// Decodes an array of text strings each straight into an `Arc<str>`, one allocation a name
/// (serde's own `Arc<str>` goes through a `Box<str>` first).
fn shared_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Arc<str>>, D::Error> {
    use serde::de::{SeqAccess, Visitor};
    use std::fmt;

    struct Name(Arc<str>);
    impl<'de> Deserialize<'de> for Name {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Name;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a group name")
                }
                fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Name, E> {
                    Ok(Name(name.into()))
                }
            }
            d.deserialize_str(V)
        }
    }

    struct Names;
    impl<'de> Visitor<'de> for Names {
        type Value = Vec<Arc<str>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of group names")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // The length is the peer's word: reserved only up to what a small frame holds.
            let mut names =
                Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_NAMES_RESERVED));
            while let Some(Name(name)) = seq.next_element()? {
                names.push(name);
            }
            Ok(names)
        }
    }
    d.deserialize_seq(Names)
}

/// The most names [`shared_names`] reserves room for before it has read them.
const MAX_NAMES_RESERVED: usize = 4096;

/// One group of a [`SyncState`]: the origin's processes in it, their slot counts and
/// metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncGroup {
    /// The group.
    pub name: String,
    /// The members, each once.
    pub members: Vec<SyncMember>,
}

/// One process of a [`SyncGroup`]. Encoded as `[id, slots]`, or `[id, slots, meta]` for a
/// process with metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncMember {
    /// The process id on the origin.
    pub id: u64,
    /// Its slots, ≥ 1.
    pub slots: u32,
    /// Its metadata in the group (CBOR), if it has any.
    pub meta: Option<Bytes>,
}

impl SyncMember {
    /// A member without metadata.
    pub fn plain(id: u64, slots: u32) -> Self {
        Self {
            id,
            slots,
            meta: None,
        }
    }
}

impl Serialize for SyncMember {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(if self.meta.is_some() { 3 } else { 2 })?;
        t.serialize_element(&self.id)?;
        t.serialize_element(&self.slots)?;
        if let Some(meta) = &self.meta {
            t.serialize_element(meta)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for SyncMember {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SyncMember;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member: [id, slots] or [id, slots, meta]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<SyncMember, A::Error> {
                use serde::de::Error;
                let id = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let slots = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                let meta = seq.next_element::<Bytes>()?;
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(4, &self));
                }
                Ok(SyncMember { id, slots, meta })
            }
        }
        d.deserialize_seq(V)
    }
}

/// An origin's whole local state of one scope, at a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The node the state belongs to; must be the authenticated sender.
    pub origin: PeerId,
    /// Its version: the state includes every delta up to `version.seq`.
    pub version: Version,
    /// Its non-empty groups.
    pub groups: Vec<SyncGroup>,
}
