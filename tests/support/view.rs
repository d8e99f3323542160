//! The membership of a scope as a value: what a node sees, what it should see, and waiting
//! until they agree.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use procgroups::{Event, EventKind, Instance, Members, Pid};

use super::wait::{WAIT, eventually};

/// Every non-empty group of a scope with its member slots, sorted.
pub type View = BTreeMap<String, Vec<Pid>>;

/// Every non-empty group of the scope with its slots, as this instance's node sees it.
pub fn view(pg: &Instance) -> View {
    pg.which_groups()
        .expect("which_groups")
        .iter()
        .map(|g| {
            (
                g.to_string(),
                pg.get_members(g).expect("get_members").to_vec(),
            )
        })
        .filter(|(_, m)| !m.is_empty())
        .collect()
}

/// The expected view: each group with its slots (in any order; sorted here like `Members`).
pub fn truth(groups: &[(&str, &[Pid])]) -> View {
    let mut v = View::new();
    for (g, pids) in groups {
        v.entry(g.to_string()).or_default().extend(pids.iter());
    }
    normalise(v)
}

fn normalise(mut v: View) -> View {
    for pids in v.values_mut() {
        pids.sort();
    }
    v.retain(|_, p| !p.is_empty());
    v
}

/// A snapshot (from `events()`) with `events` applied in order; `Err` names the first leave
/// of a slot that is not there.
pub fn replay(snapshot: &BTreeMap<Arc<str>, Members>, events: &[Event]) -> Result<View, String> {
    let mut v: View = snapshot
        .iter()
        .map(|(g, m)| (g.to_string(), m.to_vec()))
        .collect();
    for (n, ev) in events.iter().enumerate() {
        let slots = v.entry(ev.group.to_string()).or_default();
        match ev.kind {
            EventKind::MemberJoined => slots.extend(ev.pids.iter()),
            EventKind::MemberUpdated => {}
            EventKind::MemberLeft => {
                for pid in ev.pids.iter() {
                    let i = slots.iter().position(|p| p == pid).ok_or_else(|| {
                        format!(
                            "event {n} {ev:?} removes {pid} from {}: not a member",
                            ev.group
                        )
                    })?;
                    slots.remove(i);
                }
            }
        }
    }
    Ok(normalise(v))
}

/// What `seen` has more and less than `want`, per group; empty when they are equal.
pub fn diff(seen: &View, want: &View) -> String {
    let mut out = Vec::new();
    let groups: BTreeSet<&String> = seen.keys().chain(want.keys()).collect();
    for g in groups {
        let s = seen.get(g).cloned().unwrap_or_default();
        let w = want.get(g).cloned().unwrap_or_default();
        let extra = without(&s, &w);
        let missing = without(&w, &s);
        if !extra.is_empty() || !missing.is_empty() {
            out.push(format!("{g}: extra {extra:?}, missing {missing:?}"));
        }
    }
    out.join("; ")
}

/// The slots of `from` beyond those of `other`, counted.
fn without(from: &[Pid], other: &[Pid]) -> Vec<Pid> {
    let mut left = from.to_vec();
    for p in other {
        if let Some(k) = left.iter().position(|x| x == p) {
            left.remove(k);
        }
    }
    left
}

/// Waits until every instance sees `expected`; fails after [`WAIT`] showing how each differs.
pub async fn converge(what: &str, pgs: &[&Instance], expected: &View) {
    let each: Vec<(&Instance, &View)> = pgs.iter().map(|pg| (*pg, expected)).collect();
    converge_each(what, &each).await;
}

/// Waits until each instance sees its own expected view; fails after [`WAIT`] showing how
/// each differs.
pub async fn converge_each(what: &str, expected: &[(&Instance, &View)]) {
    eventually(what, WAIT, || {
        let wrong: Vec<String> = expected
            .iter()
            .enumerate()
            .filter_map(|(i, (pg, want))| {
                let seen = view(pg);
                (seen != **want).then(|| format!("instance {i}: {}", diff(&seen, want)))
            })
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("\n"))
        }
    })
    .await;
}
