//! Membership snapshots.

use std::sync::Arc;

use libp2p::PeerId;

use crate::Pid;

/// An immutable snapshot of a group's members: one entry per slot (a process that joined
/// twice is listed twice), in [`Pid`] order.
///
/// Cloning is a pointer copy. A snapshot never changes; take a new one (or
/// [`monitor`](crate::Instance::monitor) the group) to follow changes. A slot takes 16 bytes:
/// the node is stored as an index into a table the snapshot shares with its scope.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> procgroups::Result<()> {
/// # let node = procgroups::Node::builder().mdns(false)
/// #     .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
/// #     .scope("app:pg", procgroups::ScopeConfig::default()).build().await?;
/// let (a, b) = (node.spawn_process(), node.spawn_process());
/// a.open("app:pg")?.join(["g", "g"])?; // two slots
/// let pg = b.open("app:pg")?;
/// pg.join("g")?;
/// let members = pg.get_members("g")?;
/// assert_eq!(members.len(), 3); // slots
/// assert_eq!(members.count(&a.pid()), 2);
/// assert_eq!(members.unique().count(), 2); // processes
/// pg.leave("g")?;
/// assert!(members.contains(&b.pid())); // a snapshot does not change
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Members {
    inner: Option<Arc<Slots>>,
}

struct Slots {
    nodes: Arc<[PeerId]>,
    /// `(index into nodes, process id)`, sorted in `Pid` order.
    slots: Box<[(u32, u64)]>,
}

impl Members {
    /// Builds a snapshot from slots in any order; `nodes` resolves their node indices.
    pub(crate) fn from_slots(nodes: Arc<[PeerId]>, mut slots: Vec<(u32, u64)>) -> Self {
        if slots.is_empty() {
            return Self::default();
        }
        // Sort by the nodes' PeerId order without comparing PeerIds per slot: rank the few
        // nodes present once, then sort by (rank, id).
        let mut present: Vec<u32> = slots.iter().map(|(n, _)| *n).collect();
        present.sort_unstable();
        present.dedup();
        present.sort_unstable_by_key(|n| nodes[*n as usize]);
        let mut rank = vec![0u32; nodes.len()];
        for (r, n) in present.iter().enumerate() {
            rank[*n as usize] = r as u32;
        }
        slots.sort_unstable_by_key(|(n, id)| (rank[*n as usize], *id));
        Self {
            inner: Some(Arc::new(Slots {
                nodes,
                slots: slots.into_boxed_slice(),
            })),
        }
    }

    fn slots(&self) -> &[(u32, u64)] {
        self.inner.as_deref().map_or(&[], |s| &s.slots)
    }

    fn pid(&self, (node, id): (u32, u64)) -> Pid {
        let nodes = &self.inner.as_ref().expect("a slot implies a table").nodes;
        Pid::new(nodes[node as usize], id)
    }

    /// Number of member slots (a process that joined twice counts twice).
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// `true` when the group has no member (empty and non-existent groups are the same).
    pub fn is_empty(&self) -> bool {
        self.slots().is_empty()
    }

    /// Iterates over the slots in [`Pid`] order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            members: self,
            range: 0..self.len(),
        }
    }

    /// The slots grouped by node: each node once, with its process ids (once per slot).
    pub(crate) fn node_runs(&self) -> impl Iterator<Item = (PeerId, Arc<[u64]>)> + '_ {
        let nodes = self.inner.as_ref().map(|s| &s.nodes);
        self.slots()
            .chunk_by(|a, b| a.0 == b.0)
            .filter_map(move |run| {
                let node = *nodes?.get(run[0].0 as usize)?;
                Some((node, run.iter().map(|(_, id)| *id).collect()))
            })
    }

    /// The distinct processes of each node: each node once, with each of its processes once
    /// (a process that joined twice is listed once).
    pub(crate) fn node_processes(&self) -> impl Iterator<Item = (PeerId, Arc<[u64]>)> + '_ {
        self.node_runs().map(|(node, mut ids)| {
            if ids.windows(2).any(|w| w[0] == w[1]) {
                let mut unique = ids.to_vec();
                unique.dedup();
                ids = unique.into();
            }
            (node, ids)
        })
    }

    /// One process, at random by node: a node among those with slots, uniformly, then one
    /// of its processes, uniformly (however many slots each holds). `None` when empty.
    pub(crate) fn pick_by_node(&self, rng: &mut impl rand::Rng) -> Option<Pid> {
        use rand::seq::SliceRandom;
        let nodes: Vec<(PeerId, Arc<[u64]>)> = self.node_processes().collect();
        let (node, ids) = nodes.choose(rng)?;
        Some(Pid::new(*node, *ids.choose(rng)?))
    }

    /// The process ids of the slots, without their nodes: for snapshots of one node.
    pub(crate) fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots().iter().map(|(_, id)| *id)
    }

    /// The slots as a vector, in [`Pid`] order.
    pub fn to_vec(&self) -> Vec<Pid> {
        self.iter().collect()
    }

    /// `true` if `pid` holds at least one slot. O(log n).
    pub fn contains(&self, pid: &Pid) -> bool {
        self.count(pid) > 0
    }

    /// How many slots `pid` holds. O(log n).
    pub fn count(&self, pid: &Pid) -> usize {
        let slots = self.slots();
        let below = slots.partition_point(|s| self.pid(*s) < *pid);
        let through = slots.partition_point(|s| self.pid(*s) <= *pid);
        through - below
    }

    /// Whether both snapshots are the same allocation (a cached read).
    #[cfg(test)]
    pub(crate) fn shares_with(&self, other: &Members) -> bool {
        match (&self.inner, &other.inner) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The distinct processes, each once, in order.
    pub fn unique(&self) -> impl Iterator<Item = Pid> + '_ {
        let slots = self.slots();
        (0..slots.len())
            .filter(move |i| *i == 0 || slots[i - 1] != slots[*i])
            .map(move |i| self.pid(slots[i]))
    }
}

/// The slots of a [`Members`] snapshot, in [`Pid`] order.
#[derive(Clone)]
pub struct Iter<'a> {
    members: &'a Members,
    range: std::ops::Range<usize>,
}

impl Iterator for Iter<'_> {
    type Item = Pid;
    fn next(&mut self) -> Option<Pid> {
        let i = self.range.next()?;
        Some(self.members.pid(self.members.slots()[i]))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.range.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Pid> {
        let i = self.range.next_back()?;
        Some(self.members.pid(self.members.slots()[i]))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Members {
    type Item = Pid;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl PartialEq for Members {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Members {}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_counted_lookups() {
        let (x, y) = (PeerId::random(), PeerId::random());
        let (lo, hi) = if x < y { (x, y) } else { (y, x) };
        // Node indices in the opposite order of the peers' order.
        let nodes: Arc<[PeerId]> = vec![hi, lo].into();
        let m = Members::from_slots(nodes, vec![(0, 1), (1, 9), (0, 1), (1, 2), (0, 1)]);
        let (a, b, c) = (Pid::new(lo, 2), Pid::new(lo, 9), Pid::new(hi, 1));
        assert_eq!(m.to_vec(), vec![a, b, c, c, c], "Pid order");
        assert_eq!((m.len(), m.count(&c), m.count(&a)), (5, 3, 1));
        assert!(m.contains(&b) && !m.contains(&Pid::new(hi, 2)));
        assert_eq!(m.unique().collect::<Vec<_>>(), vec![a, b, c]);
        assert_eq!(m.iter().next_back(), Some(c));
        assert!(Members::default().is_empty());
        assert_eq!(
            Members::default(),
            Members::from_slots(vec![].into(), vec![])
        );
        let by_node: Vec<(PeerId, Vec<u64>)> = m
            .node_processes()
            .map(|(n, ids)| (n, ids.to_vec()))
            .collect();
        assert_eq!(
            by_node,
            [(lo, vec![2, 9]), (hi, vec![1])],
            "each process once"
        );
    }

    #[test]
    fn a_pick_by_node_is_uniform_over_nodes_then_processes() {
        use rand::SeedableRng;
        let (x, y) = (PeerId::random(), PeerId::random());
        let nodes: Arc<[PeerId]> = vec![x, y].into();
        // x has three processes (one with many slots), y one: each node half of the picks.
        let slots = vec![(0, 1), (0, 2), (0, 3), (0, 3), (0, 3), (0, 3), (1, 7)];
        let m = Members::from_slots(nodes, slots);
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut picks = std::collections::HashMap::new();
        for _ in 0..6000 {
            *picks
                .entry(m.pick_by_node(&mut rng).expect("a member"))
                .or_insert(0) += 1;
        }
        let y_picks = picks[&Pid::new(y, 7)];
        assert!((2700..3300).contains(&y_picks), "{picks:?}");
        for id in [1, 2, 3] {
            let n = picks[&Pid::new(x, id)];
            assert!((800..1200).contains(&n), "{id}: {picks:?}");
        }
        assert_eq!(Members::default().pick_by_node(&mut rng), None);
    }
}
