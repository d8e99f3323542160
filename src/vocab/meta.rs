//! Metadata of a membership or a registered name: a serde value, kept CBOR-encoded.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Pid;
use crate::vocab::error::{Error, Result};

/// A metadata value (of one process in one group, or of a registered name), CBOR-encoded
/// once when it is set; cloning is a pointer copy.
///
/// ```
/// # fn main() -> procgroups::Result<()> {
/// use procgroups::Meta;
///
/// let meta = Meta::encode(&("alice", 42))?;
/// assert_eq!(meta.decode::<(String, u32)>()?, ("alice".to_string(), 42));
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Meta(Bytes);

impl Meta {
    /// Encodes `value` with CBOR.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let mut buf = Vec::new();
        ciborium::into_writer(value, &mut buf).map_err(|e| Error::Payload {
            reason: e.to_string(),
        })?;
        Ok(Self(buf.into()))
    }

    /// A value already encoded (as a peer sent it).
    pub(crate) fn from_bytes(bytes: Bytes) -> Self {
        Self(bytes)
    }

    /// Decodes the value.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        ciborium::from_reader(&self.0[..]).map_err(|e| Error::Payload {
            reason: e.to_string(),
        })
    }

    /// The CBOR encoding.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The size of the encoding, in bytes: what [`max_meta_bytes`] bounds.
    ///
    /// [`max_meta_bytes`]: crate::ScopeConfig::max_meta_bytes
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `true` for an empty encoding (only a peer can send one).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta").field("len", &self.0.len()).finish()
    }
}

/// One member of a group with its metadata, from
/// [`Instance::get_members_with_meta`](crate::Instance::get_members_with_meta).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMeta {
    /// The process.
    pub pid: Pid,
    /// Its slots in the group (how many times it joined).
    pub slots: u32,
    /// Its metadata: set by `join_with` or `update`; `None` for a process that only ever
    /// joined with `join`.
    pub meta: Option<Meta>,
}
