//! Membership snapshots.

use std::sync::Arc;

use crate::Pid;

/// An immutable snapshot of a group's members: one entry per slot (a process that joined
/// twice is listed twice), sorted by [`Pid`].
///
/// Cloning is a pointer copy. A snapshot never changes; take a new one (or
/// [`monitor`](crate::Instance::monitor) the group) to follow changes.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Members {
    pids: Option<Arc<[Pid]>>,
}

impl Members {
    /// Builds a snapshot from slots in any order.
    pub(crate) fn from_unsorted(mut pids: Vec<Pid>) -> Self {
        if pids.is_empty() {
            return Self::default();
        }
        pids.sort_unstable();
        Self {
            pids: Some(pids.into()),
        }
    }

    /// Number of member slots (a process that joined twice counts twice).
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// `true` when the group has no member (empty and non-existent groups are the same).
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// The slots, sorted by [`Pid`].
    pub fn as_slice(&self) -> &[Pid] {
        self.pids.as_deref().unwrap_or(&[])
    }

    /// Iterates over the slots, sorted by [`Pid`].
    pub fn iter(&self) -> std::slice::Iter<'_, Pid> {
        self.as_slice().iter()
    }

    /// `true` if `pid` holds at least one slot. O(log n).
    pub fn contains(&self, pid: &Pid) -> bool {
        self.as_slice().binary_search(pid).is_ok()
    }

    /// How many slots `pid` holds. O(log n).
    pub fn count(&self, pid: &Pid) -> usize {
        let s = self.as_slice();
        s.partition_point(|p| p <= pid) - s.partition_point(|p| p < pid)
    }

    /// The distinct processes, each once, sorted.
    pub fn unique(&self) -> impl Iterator<Item = &Pid> {
        let s = self.as_slice();
        s.iter()
            .enumerate()
            .filter(move |(i, p)| *i == 0 || s[i - 1] != **p)
            .map(|(_, p)| p)
    }
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Members {
    type Item = &'a Pid;
    type IntoIter = std::slice::Iter<'a, Pid>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::PeerId;

    #[test]
    fn counts_and_lookups() {
        let node = PeerId::random();
        let (a, b, c) = (Pid::new(node, 1), Pid::new(node, 2), Pid::new(node, 3));
        let m = Members::from_unsorted(vec![b, a, b, b]);
        assert_eq!(m.len(), 4);
        assert_eq!(m.count(&b), 3);
        assert_eq!(m.count(&a), 1);
        assert_eq!(m.count(&c), 0);
        assert!(m.contains(&a) && !m.contains(&c));
        assert_eq!(m.unique().copied().collect::<Vec<_>>(), vec![a, b]);
        assert!(Members::default().is_empty());
    }
}
