//! The simulator's views: their types, their differences as a failure shows them, and the
//! truth restricted by a tight node's budgets (see the module docs of `testing::sim`).

use std::collections::BTreeMap;

use libp2p::PeerId;

use crate::Pid;
use crate::proto::registry::is_name_group;
use crate::vocab::meta::Meta;

pub(super) type View = BTreeMap<String, BTreeMap<Pid, u32>>;
pub(super) type MetaView = BTreeMap<String, BTreeMap<Pid, Meta>>;

/// The slots one origin may hold in one group on a tight node.
pub(super) const TIGHT_MEMBERS: u32 = 2;

/// Every fourth node runs with `max_members_per_group` at [`TIGHT_MEMBERS`].
pub(super) fn is_tight(node: usize) -> bool {
    node % 4 == 1
}

/// The entries that differ between two views of per-process values, each shown as `show`
/// makes it: `group pid: held / expected`.
fn diff<V, T: PartialEq + std::fmt::Debug>(
    held: &BTreeMap<String, BTreeMap<Pid, V>>,
    expected: &BTreeMap<String, BTreeMap<Pid, V>>,
    show: impl Fn(&V) -> T,
) -> String {
    let mut out = String::new();
    let keys: std::collections::BTreeSet<(&String, &Pid)> = held
        .iter()
        .chain(expected)
        .flat_map(|(g, m)| m.keys().map(move |p| (g, p)))
        .collect();
    for (group, pid) in keys {
        let get = |v: &BTreeMap<String, BTreeMap<Pid, V>>| {
            v.get(group).and_then(|m| m.get(pid)).map(&show)
        };
        let (h, e) = (get(held), get(expected));
        if h != e {
            out.push_str(&format!("\n  {group:?} {pid}: held {h:?} / expected {e:?}"));
        }
    }
    out
}

/// The metadata values that differ between two views.
pub(super) fn meta_diff(held: &MetaView, expected: &MetaView) -> String {
    diff(held, expected, |m| m.as_bytes().to_vec())
}

/// The slot counts that differ between two views.
pub(super) fn view_diff(held: &View, expected: &View) -> String {
    diff(held, expected, |slots| *slots)
}

/// The groups of the application in a view: what subscribers see.
pub(super) fn user_groups<V>(view: BTreeMap<String, V>) -> BTreeMap<String, V> {
    view.into_iter()
        .filter(|(g, _)| !is_name_group(g))
        .collect()
}

/// What node `i`'s view must hold of `truth`: all of it, or on a tight node the truth
/// restricted by the budgets: a group of an origin that fits as it is, one that does not
/// as `held` has it once `held` is checked to be `TIGHT_MEMBERS` of the origin's slots,
/// none of them a process lacks. Also the slots refused, per origin.
pub(super) fn restricted(
    i: usize,
    local: PeerId,
    seed: u64,
    truth: &View,
    held: &View,
) -> (View, BTreeMap<PeerId, u64>) {
    let mut refused = BTreeMap::new();
    if !is_tight(i) {
        return (truth.clone(), refused);
    }
    let mut view = View::new();
    for (group, members) in truth {
        let mut of_origin: BTreeMap<PeerId, BTreeMap<Pid, u32>> = BTreeMap::new();
        for (pid, slots) in members {
            of_origin
                .entry(pid.node())
                .or_default()
                .insert(*pid, *slots);
        }
        for (origin, pids) in of_origin {
            let total: u32 = pids.values().sum();
            if origin == local || total <= TIGHT_MEMBERS {
                view.entry(group.clone()).or_default().extend(pids);
                continue;
            }
            let kept: BTreeMap<Pid, u32> = held
                .get(group)
                .map(|m| {
                    m.iter()
                        .filter(|(p, _)| p.node() == origin)
                        .map(|(p, s)| (*p, *s))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(
                kept.values().sum::<u32>(),
                TIGHT_MEMBERS,
                "seed {}: node {i} holds {kept:?} of {origin}'s {pids:?} in {group:?}",
                seed
            );
            for (pid, slots) in &kept {
                assert!(
                    pids.get(pid).is_some_and(|s| slots <= s),
                    "seed {}: node {i} holds {slots} slots of {pid} in {group:?}, which has {:?}",
                    seed,
                    pids.get(pid)
                );
            }
            *refused.entry(origin).or_insert(0) += u64::from(total - TIGHT_MEMBERS);
            view.entry(group.clone()).or_default().extend(kept);
        }
    }
    (view, refused)
}
