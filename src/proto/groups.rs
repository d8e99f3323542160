//! Group names and the tables of slots behind each group: the groups by name, each at an index
//! of its own; per group, the nodes with members in it; per node, its processes' slot counts
//! (inline for the common single process); per local process, the indices of the groups it is
//! in.
//!
//! Every membership slot is in two tables (a group's processes, a process's groups), so that a
//! join, a leave and an exit are each O(1) per group; their entries are kept small (12 bytes:
//! an id stored as two `u32`s and a `u32`), because at 1M entries a table sits just past a
//! power-of-two resize and holds about two buckets per entry.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use foldhash::fast::FixedState;
use hashbrown::{HashMap, HashSet, HashTable};
use smallvec::SmallVec;

use crate::vocab::members::Members;
use crate::vocab::meta::Meta;

pub(crate) type Map<K, V> = HashMap<K, V, FixedState>;

pub(crate) type Set<K> = HashSet<K, FixedState>;

/// A group name, shared between the structures that refer to it.
pub(crate) type GroupName = Arc<str>;

/// The longest group name, in bytes.
pub const MAX_GROUP_NAME_LEN: usize = 255;

/// Why `name` is not a valid group name, if it is not.
pub(crate) fn group_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_GROUP_NAME_LEN {
        Some("longer than 255 bytes")
    } else if name.starts_with('\0') {
        Some("starts with a NUL byte, which marks registered names")
    } else {
        None
    }
}

/// Why `name` cannot be a group a peer sends: like [`group_name_problem`], except that the
/// groups holding registered names (`proto::registry`) are allowed.
pub(crate) fn wire_group_problem(name: &str) -> Option<&'static str> {
    match name.strip_prefix('\0') {
        Some("") => Some("an empty registered name"),
        Some(_) if name.len() > MAX_GROUP_NAME_LEN => Some("longer than 255 bytes"),
        Some(_) => None,
        None => group_name_problem(name),
    }
}

/// A process id stored as two `u32`s, so that a table entry of an id and a `u32` takes 12
/// bytes, not the 16 bytes a `(u64, u32)` pads to. Hashed as the `u64` it stands for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackedId([u32; 2]);

impl PackedId {
    pub(crate) fn new(id: u64) -> Self {
        Self([id as u32, (id >> 32) as u32])
    }

    pub(crate) fn get(self) -> u64 {
        u64::from(self.0[0]) | (u64::from(self.0[1]) << 32)
    }
}

impl Hash for PackedId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.get());
    }
}

pub(crate) struct NodeSlots {
    pub(crate) node: u32,
    pub(crate) slots: usize,
    pub(crate) ids: Ids,
}

/// One node's processes in one group with their slot counts: inline while there is one (the
/// common case of a process alone in its group on that node), a map beyond.
pub(crate) enum Ids {
    One(u64, u32),
    Many(Map<PackedId, u32>),
}

impl Ids {
    pub(crate) fn get(&self, id: u64) -> Option<u32> {
        match self {
            Ids::One(only, count) => (*only == id).then_some(*count),
            Ids::Many(map) => map.get(&PackedId::new(id)).copied(),
        }
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut u32> {
        match self {
            Ids::One(only, count) => (*only == id).then_some(count),
            Ids::Many(map) => map.get_mut(&PackedId::new(id)),
        }
    }

    /// Adds `n` slots of `id`; whether `id` is new here.
    pub(crate) fn add(&mut self, id: u64, n: u32, seed: u64) -> bool {
        match self {
            Ids::One(only, count) if *only == id => {
                let fresh = *count == 0;
                *count += n;
                fresh
            }
            Ids::One(only, count) if *count == 0 => {
                *only = id;
                *count = n;
                true
            }
            Ids::One(only, count) => {
                let mut map = Map::with_capacity_and_hasher(4, FixedState::with_seed(seed));
                map.insert(PackedId::new(*only), *count);
                map.insert(PackedId::new(id), n);
                *self = Ids::Many(map);
                true
            }
            Ids::Many(map) => {
                let count = map.entry(PackedId::new(id)).or_insert(0);
                let fresh = *count == 0;
                *count += n;
                fresh
            }
        }
    }

    pub(crate) fn remove(&mut self, id: u64) {
        match self {
            Ids::One(only, count) if *only == id => *count = 0,
            Ids::One(..) => {}
            Ids::Many(map) => {
                map.remove(&PackedId::new(id));
            }
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let (one, many) = match self {
            Ids::One(id, count) => (Some((*id, *count)).filter(|(_, c)| *c > 0), None),
            Ids::Many(map) => (None, Some(map.iter().map(|(i, c)| (i.get(), *c)))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

pub(crate) struct GroupState {
    pub(crate) name: GroupName,
    pub(crate) slots: usize,
    /// Few nodes per group: a vector beats a map, and the first is inline (most groups are
    /// one node's).
    pub(crate) nodes: SmallVec<[NodeSlots; 1]>,
    pub(crate) members: Option<Members>,
    pub(crate) local: Option<Members>,
    /// The metadata of the processes that have some, by `(node, id)`: boxed and absent while
    /// nobody has any, so that a group of plain joins pays one pointer for it.
    pub(crate) meta: Option<Box<Map<(u32, u64), Meta>>>,
}

impl GroupState {
    pub(crate) fn meta(&self, node: u32, id: u64) -> Option<&Meta> {
        self.meta.as_ref()?.get(&(node, id))
    }

    pub(crate) fn node(&self, node: u32) -> Option<&NodeSlots> {
        self.nodes.iter().find(|n| n.node == node)
    }
    pub(crate) fn count(&self, node: u32, id: u64) -> u32 {
        self.node(node).and_then(|n| n.ids.get(id)).unwrap_or(0)
    }
}

pub(crate) fn push_slots(out: &mut Vec<(u32, u64)>, slots: &NodeSlots) {
    for (id, count) in slots.ids.iter() {
        out.extend(std::iter::repeat_n((slots.node, id), count as usize));
    }
}

/// The groups by name, each at an index that stays its own while the group exists (a freed
/// index is taken again by a later group). The per-process table refers to a group by its
/// index: 4 bytes, not a 16-byte shared name.
pub(crate) struct Groups {
    /// Indices into `slab`, hashed by the name of the group there: the name is not stored
    /// twice.
    by_name: HashTable<u32>,
    slab: Vec<Option<GroupState>>,
    free: FreeIndices,
    hasher: FixedState,
}

impl Groups {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            by_name: HashTable::new(),
            slab: Vec::new(),
            free: FreeIndices::default(),
            hasher: FixedState::with_seed(seed),
        }
    }

    /// The number of groups.
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    pub(crate) fn index(&self, name: &str) -> Option<u32> {
        self.lookup(name).index
    }

    /// Where `name` is, with its hash, which [`insert_new`](Self::insert_new) takes when the
    /// group is absent: a new group's name is hashed once.
    pub(crate) fn lookup(&self, name: &str) -> Lookup {
        let slab = &self.slab;
        let hash = self.hasher.hash_one(name);
        let index = self
            .by_name
            .find(hash, |i| Self::is(slab, *i, name))
            .copied();
        Lookup { index, hash }
    }

    fn is(slab: &[Option<GroupState>], index: u32, name: &str) -> bool {
        slab.get(index as usize)
            .and_then(Option::as_ref)
            .is_some_and(|g| &*g.name == name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&GroupState> {
        self.at(self.index(name)?)
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut GroupState> {
        let index = self.index(name)?;
        self.at_mut(index)
    }

    pub(crate) fn at(&self, index: u32) -> Option<&GroupState> {
        self.slab.get(index as usize)?.as_ref()
    }

    pub(crate) fn at_mut(&mut self, index: u32) -> Option<&mut GroupState> {
        self.slab.get_mut(index as usize)?.as_mut()
    }

    /// Every group, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &GroupState> + '_ {
        self.slab.iter().flatten()
    }

    /// The index of `name`, and whether the group is new: a new one is made empty. `None`
    /// when every `u32` index is taken.
    #[cfg(test)]
    pub(crate) fn get_or_insert(&mut self, name: &str) -> Option<(u32, Fresh)> {
        match self.index(name) {
            Some(index) => Some((index, Fresh::No)),
            None => {
                let hash = self.lookup(name).hash;
                self.insert_new(name.into(), hash)
                    .map(|index| (index, Fresh::Yes))
            }
        }
    }

    /// Makes the group `name`, empty, which the caller found absent ([`lookup`](Self::lookup)
    /// gave no index, and `hash`); its index. `None` when every `u32` index is taken (the
    /// limit checks before refuse that many groups).
    pub(crate) fn insert_new(&mut self, name: NameRef<'_>, hash: u64) -> Option<u32> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => u32::try_from(self.slab.len()).ok()?,
        };
        let group = GroupState {
            name: name.to_shared(),
            slots: 0,
            nodes: SmallVec::new(),
            members: None,
            local: None,
            meta: None,
        };
        match self.slab.get_mut(index as usize) {
            Some(slot) => *slot = Some(group),
            None => self.slab.push(Some(group)),
        }
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.by_name.insert_unique(hash, index, |i| {
            hasher.hash_one(slab[*i as usize].as_ref().map_or("", |g| &*g.name))
        });
        Some(index)
    }

    /// Removes the group at `index`; its index may be taken again.
    pub(crate) fn remove(&mut self, index: u32) {
        let Some(group) = self.slab.get_mut(index as usize).and_then(Option::take) else {
            return;
        };
        let hash = self.hasher.hash_one(&*group.name);
        if let Ok(entry) = self.by_name.find_entry(hash, |i| *i == index) {
            entry.remove();
        }
        self.free.push(index);
    }
}

/// The freed indices of a [`Groups`] slab. After a burst of frees (a process in many groups
/// exits) they are handed out lowest first, so that the groups made next fill the slab in
/// order: the frees come in the order of a hash set, and new groups at indices in that
/// order each touched a cold entry of the slab (most of a new group's cost on a peer
/// applying a delta of them, under `perf`). Sorting waits until more than half the list was
/// freed since the last sort, so that it costs O(log n) a free, amortized.
#[derive(Default)]
struct FreeIndices {
    /// Sorted descending up to `sorted`, then in the order freed.
    list: Vec<u32>,
    sorted: usize,
}

impl FreeIndices {
    fn push(&mut self, index: u32) {
        self.list.push(index);
    }

    fn pop(&mut self) -> Option<u32> {
        if self.list.len() - self.sorted > self.sorted {
            self.list.sort_unstable_by(|a, b| b.cmp(a));
            self.sorted = self.list.len();
        }
        let index = self.list.pop()?;
        self.sorted = self.sorted.min(self.list.len());
        Some(index)
    }
}

/// What [`Groups::lookup`] found of a name.
#[derive(Clone, Copy)]
pub(crate) struct Lookup {
    /// The group's index, if it exists.
    pub(crate) index: Option<u32>,
    /// The name's hash in the table.
    pub(crate) hash: u64,
}

/// Whether [`Groups::get_or_insert`] made the group.
#[cfg(test)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fresh {
    Yes,
    No,
}

/// A group name as its caller has it: borrowed (a local join's argument), or shared already (a
/// peer's delta decodes its names into [`GroupName`]s), so that a new group keeps the shared
/// one rather than copying it.
#[derive(Clone, Copy)]
pub(crate) enum NameRef<'a> {
    Borrowed(&'a str),
    Shared(&'a GroupName),
}

impl NameRef<'_> {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            NameRef::Borrowed(name) => name,
            NameRef::Shared(name) => name,
        }
    }

    fn to_shared(self) -> GroupName {
        match self {
            NameRef::Borrowed(name) => name.into(),
            NameRef::Shared(name) => name.clone(),
        }
    }
}

impl<'a> From<&'a str> for NameRef<'a> {
    fn from(name: &'a str) -> Self {
        NameRef::Borrowed(name)
    }
}

impl<'a> From<&'a GroupName> for NameRef<'a> {
    fn from(name: &'a GroupName) -> Self {
        NameRef::Shared(name)
    }
}

/// Local process id → the indices of the groups it has slots in (the counts live in the
/// groups). A process in one group (the common case) is a 12-byte entry of `one`; a process in
/// several is in `many` instead, with a set of its groups. A process is in one of the two
/// tables or in neither.
pub(crate) struct LocalProcs {
    one: Map<PackedId, u32>,
    many: Map<u64, Set<u32>>,
    seed: u64,
}

impl LocalProcs {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            one: Map::with_hasher(FixedState::with_seed(seed)),
            many: Map::with_hasher(FixedState::with_seed(seed)),
            seed,
        }
    }

    /// Notes that `id` has slots in the group at `group`.
    pub(crate) fn insert(&mut self, id: u64, group: u32) {
        if let Some(set) = self.many.get_mut(&id) {
            set.insert(group);
            return;
        }
        match self.one.entry(PackedId::new(id)) {
            hashbrown::hash_map::Entry::Vacant(e) => {
                e.insert(group);
            }
            hashbrown::hash_map::Entry::Occupied(e) if *e.get() == group => {}
            hashbrown::hash_map::Entry::Occupied(e) => {
                let first = e.remove();
                let mut set = Set::with_hasher(FixedState::with_seed(self.seed));
                set.insert(first);
                set.insert(group);
                self.many.insert(id, set);
            }
        }
    }

    /// Notes that `id` has no slot left in the group at `group`; a process left in no group is
    /// dropped.
    pub(crate) fn remove(&mut self, id: u64, group: u32) {
        match self.one.entry(PackedId::new(id)) {
            hashbrown::hash_map::Entry::Occupied(e) if *e.get() == group => {
                e.remove();
            }
            hashbrown::hash_map::Entry::Occupied(_) => {}
            hashbrown::hash_map::Entry::Vacant(_) => {
                if let Some(set) = self.many.get_mut(&id) {
                    set.remove(&group);
                    if set.is_empty() {
                        self.many.remove(&id);
                    }
                }
            }
        }
    }

    /// Drops `id`, with the indices of the groups it was in.
    pub(crate) fn take(&mut self, id: u64) -> impl Iterator<Item = u32> + use<> {
        let one = self.one.remove(&PackedId::new(id));
        let many = match one {
            Some(_) => None,
            None => self.many.remove(&id),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

pub(crate) fn sorted(names: impl Iterator<Item = GroupName>) -> Arc<[GroupName]> {
    let mut v: Vec<GroupName> = names.collect();
    v.sort_unstable();
    v.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_group_index_is_taken_again_and_the_old_name_is_gone() {
        let mut groups = Groups::new(7);
        let a = groups.get_or_insert("a").map(|(i, _)| i);
        let b = groups.get_or_insert("b").map(|(i, _)| i);
        assert!(groups.get_or_insert("a") == a.map(|i| (i, Fresh::No)));
        groups.remove(a.expect("an index"));
        assert_eq!((groups.len(), groups.index("a")), (1, None));
        let c = groups.get_or_insert("c").map(|(i, _)| i);
        assert_eq!(c, a, "the freed index is reused");
        assert_eq!(groups.at(c.expect("an index")).map(|g| &*g.name), Some("c"));
        assert_eq!(groups.index("b"), b);
        let names: Vec<&str> = groups.values().map(|g| &*g.name).collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn indices_freed_in_a_burst_are_taken_again_lowest_first_and_each_once() {
        let mut free = FreeIndices::default();
        for index in [40, 7, 93, 12, 0, 58] {
            free.push(index);
        }
        assert_eq!(free.pop(), Some(0));
        assert_eq!(free.pop(), Some(7));
        // One index freed among many sorted ones is taken first (no sort for it), and the
        // rest still come lowest first.
        free.push(99);
        let rest: Vec<u32> = std::iter::from_fn(|| free.pop()).collect();
        assert_eq!(rest, [99, 12, 40, 58, 93]);
        assert_eq!(free.pop(), None);
    }

    #[test]
    fn a_process_moves_between_one_group_and_several() {
        let mut procs = LocalProcs::new(7);
        let id = u64::MAX - 1; // both halves of the packed id matter
        procs.insert(id, 3);
        procs.insert(id, 3);
        procs.insert(id, 5);
        procs.insert(9, 1);
        procs.remove(id, 4); // not one of its groups: nothing changes
        let mut groups: Vec<u32> = procs.take(id).collect();
        groups.sort_unstable();
        assert_eq!(groups, [3, 5]);
        assert_eq!(procs.take(id).count(), 0, "taken once");
        procs.remove(9, 1);
        assert_eq!(
            procs.take(9).count(),
            0,
            "the last group removed drops the process"
        );
    }
}
