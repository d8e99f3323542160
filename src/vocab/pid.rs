//! Process identifiers.

use std::fmt;
use std::str::FromStr;

use libp2p::PeerId;

/// The address of a process: the node it runs on and its id on that node.
///
/// A `Pid` is printed and parsed as `{<peer-id>|<id>}`, for example
/// `{12D3KooW…|1732240000000000001}`; [`Display`](fmt::Display) and [`FromStr`] round-trip.
///
/// Ids are never reused by a node, not even across restarts with the same identity: a node
/// starts counting from the wall-clock time of its start in nanoseconds, so a new incarnation's
/// ids are above every id the previous one handed out (unless it spawned more than one process
/// per nanosecond of its life, or the clock stepped back by more than the downtime).
///
/// ```
/// use procgroups::{PeerId, Pid};
/// let pid = Pid::new(PeerId::random(), 7);
/// let text = pid.to_string(); // "{12D3KooW…|7}"
/// assert_eq!(text.parse::<Pid>().unwrap(), pid);
/// assert!("{nonsense}".parse::<Pid>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid {
    node: PeerId,
    id: u64,
}

impl Pid {
    /// A `Pid` from its parts. Only the node itself hands out ids; this is for parsing and tests.
    pub fn new(node: PeerId, id: u64) -> Self {
        Self { node, id }
    }

    /// The node that runs the process (its origin).
    pub fn node(&self) -> PeerId {
        self.node
    }

    /// The id of the process on its node.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}|{}}}", self.node, self.id)
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a [`Pid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pid {input:?}: {reason}")]
pub struct ParsePidError {
    input: String,
    reason: &'static str,
}

impl FromStr for Pid {
    type Err = ParsePidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ParsePidError {
            input: s.to_owned(),
            reason,
        };
        let inner = s
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .ok_or_else(|| fail("expected {<peer-id>|<id>}"))?;
        let (node, id) = inner
            .split_once('|')
            .ok_or_else(|| fail("missing '|' between peer id and id"))?;
        let node = node.parse::<PeerId>().map_err(|_| fail("not a peer id"))?;
        let id = id.parse::<u64>().map_err(|_| fail("id is not a u64"))?;
        Ok(Pid { node, id })
    }
}

impl serde::Serialize for Pid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let pid = Pid::new(PeerId::random(), 1_732_240_000_000_000_001);
        let text = pid.to_string();
        assert!(text.starts_with('{') && text.ends_with('}') && text.contains('|'));
        assert_eq!(text.parse::<Pid>().unwrap(), pid);
    }

    #[test]
    fn rejects_malformed() {
        let peer = PeerId::random();
        for bad in [
            String::new(),
            format!("{peer}|1"),
            format!("{{{peer}}}"),
            format!("{{{peer}|x}}"),
            format!("{{{peer}|-1}}"),
            "{notapeer|1}".to_owned(),
        ] {
            assert!(bad.parse::<Pid>().is_err(), "{bad:?} parsed");
        }
    }
}
