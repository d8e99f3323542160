//! Group names and the tables of slots behind each group: per group, the nodes with members in
//! it; per node, its processes' slot counts (inline for the common single process); per local
//! process, the groups it is in.

use std::sync::Arc;

use foldhash::fast::FixedState;
use hashbrown::{HashMap, HashSet};

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

pub(crate) struct NodeSlots {
    pub(crate) node: u32,
    pub(crate) slots: usize,
    pub(crate) ids: Ids,
}

/// One node's processes in one group with their slot counts: inline while there is one (the
/// common case of a process alone in its group on that node), a map beyond.
pub(crate) enum Ids {
    One(u64, u32),
    Many(Map<u64, u32>),
}

impl Ids {
    pub(crate) fn get(&self, id: u64) -> Option<u32> {
        match self {
            Ids::One(only, count) => (*only == id).then_some(*count),
            Ids::Many(map) => map.get(&id).copied(),
        }
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut u32> {
        match self {
            Ids::One(only, count) => (*only == id).then_some(count),
            Ids::Many(map) => map.get_mut(&id),
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
                map.insert(*only, *count);
                map.insert(id, n);
                *self = Ids::Many(map);
                true
            }
            Ids::Many(map) => {
                let count = map.entry(id).or_insert(0);
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
                map.remove(&id);
            }
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let (one, many) = match self {
            Ids::One(id, count) => (Some((*id, *count)).filter(|(_, c)| *c > 0), None),
            Ids::Many(map) => (None, Some(map.iter().map(|(i, c)| (*i, *c)))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

pub(crate) struct GroupState {
    pub(crate) name: GroupName,
    pub(crate) slots: usize,
    /// Few nodes per group: a vector beats a map.
    pub(crate) nodes: Vec<NodeSlots>,
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

/// The groups a local process has slots in: inline for the common case of one group, so a
/// process in a single group costs no allocation of its own.
pub(crate) enum ProcGroups {
    One(GroupName),
    Many(Box<Set<GroupName>>),
}

impl ProcGroups {
    pub(crate) fn insert(&mut self, name: GroupName, seed: u64) {
        match self {
            ProcGroups::One(first) if *first == name => {}
            ProcGroups::One(first) => {
                let mut set = Set::with_hasher(FixedState::with_seed(seed));
                set.insert(first.clone());
                set.insert(name);
                *self = ProcGroups::Many(Box::new(set));
            }
            ProcGroups::Many(set) => {
                set.insert(name);
            }
        }
    }

    /// Removes `name`; `true` when no group is left.
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        match self {
            ProcGroups::One(only) => &**only == name,
            ProcGroups::Many(set) => {
                set.remove(name);
                set.is_empty()
            }
        }
    }

    pub(crate) fn into_names(self) -> Vec<GroupName> {
        match self {
            ProcGroups::One(name) => vec![name],
            ProcGroups::Many(set) => set.into_iter().collect(),
        }
    }
}

pub(crate) fn sorted(names: impl Iterator<Item = GroupName>) -> Arc<[GroupName]> {
    let mut v: Vec<GroupName> = names.collect();
    v.sort_unstable();
    v.into()
}
