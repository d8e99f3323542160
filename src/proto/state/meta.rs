//! Metadata in the core: local `join_with` and `update`, the one place a value is set or
//! cleared (`set_meta`), and the reads that return values.

use foldhash::fast::FixedState;

use super::{LOCAL, ScopeCore};
use crate::proto::groups::Map;
use crate::proto::input::{Change, LimitError, Output};
use crate::proto::registry::is_name_group;
use crate::vocab::error::Limit;
use crate::vocab::event::EventKind;
use crate::vocab::meta::{MemberMeta, Meta};
use crate::vocab::pid::Pid;

impl ScopeCore {
    pub(super) fn check_meta(&self, group: &str, meta: &Meta) -> Result<(), LimitError> {
        if meta.len() > self.cfg.max_meta_bytes {
            return Err(LimitError {
                limit: Limit::MaxMetaBytes,
                group: group.to_owned(),
                max: self.cfg.max_meta_bytes,
            });
        }
        Ok(())
    }

    /// Joins one slot of `name` with `meta`, which replaces the process's metadata there.
    pub(super) fn on_join_with(
        &mut self,
        id: u64,
        name: &str,
        meta: Meta,
    ) -> Result<(), LimitError> {
        self.check_meta(name, &meta)?;
        self.check_join(id, &[name])?;
        self.add_local(name, id, Some(meta))?;
        self.local_changed();
        Ok(())
    }

    /// Replaces the metadata of a member; `false` when the process has no slot in `name`.
    pub(super) fn on_update(
        &mut self,
        id: u64,
        name: &str,
        meta: Meta,
    ) -> Result<bool, LimitError> {
        self.check_meta(name, &meta)?;
        let updated = self.set_meta(LOCAL, name, id, Some(meta));
        if updated {
            self.local_changed();
        }
        Ok(updated)
    }

    /// Each member of `group` once, with its slots and metadata, sorted by pid.
    pub(crate) fn members_with_meta(&self, group: &str) -> Vec<MemberMeta> {
        let Some(g) = self.groups.get(group) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(g.nodes.len());
        for n in &g.nodes {
            for (id, slots) in n.ids.iter() {
                out.push(MemberMeta {
                    pid: Pid::new(self.nodes[n.node as usize], id),
                    slots,
                    meta: g.meta(n.node, id).cloned(),
                });
            }
        }
        out.sort_unstable_by_key(|m| m.pid);
        out
    }

    /// Sets (or, with `None`, clears) the metadata of `(node, id)` in `name`; `false` when
    /// the process has no slot there. A change is an event (`MemberUpdated`) and, for a local
    /// process, an op for the peers.
    pub(super) fn set_meta(&mut self, node: u32, name: &str, id: u64, meta: Option<Meta>) -> bool {
        let seed = self.hash_seed;
        let Some(index) = self.groups.index(name) else {
            return false;
        };
        let Some(group) = self.groups.at_mut(index) else {
            return false;
        };
        let count = group.count(node, id);
        if count == 0 {
            return false;
        }
        if group.meta(node, id) == meta.as_ref() {
            return true;
        }
        match &meta {
            Some(m) => {
                group
                    .meta
                    .get_or_insert_with(|| Box::new(Map::with_hasher(FixedState::with_seed(seed))))
                    .insert((node, id), m.clone());
            }
            None => {
                if let Some(table) = &mut group.meta {
                    table.remove(&(node, id));
                    if table.is_empty() {
                        group.meta = None;
                    }
                }
            }
        }
        let name = group.name.clone();
        if is_name_group(&name) {
            self.names_touched.push(name.clone());
        } else if self.record_changes {
            self.outputs.push_back(Output::Changed(Change {
                kind: EventKind::MemberUpdated,
                group: name.clone(),
                pid: Pid::new(self.nodes[node as usize], id),
                count,
                meta: meta.clone(),
            }));
        }
        if node == LOCAL && self.publishing {
            self.queue_op(index, &name, id, 0, meta);
        }
        true
    }

    /// Every metadata value this node holds, by group (registered names' claims included):
    /// the oracle of tests and the simulator.
    #[cfg(test)]
    pub(crate) fn meta_view(
        &self,
    ) -> std::collections::BTreeMap<String, std::collections::BTreeMap<Pid, Meta>> {
        let mut out: std::collections::BTreeMap<String, std::collections::BTreeMap<Pid, Meta>> =
            Default::default();
        for g in self.groups.values() {
            for ((node, id), meta) in g.meta.iter().flat_map(|m| m.iter()) {
                assert!(
                    g.count(*node, *id) > 0,
                    "metadata of a non-member in {}",
                    g.name
                );
                out.entry(g.name.to_string())
                    .or_default()
                    .insert(Pid::new(self.nodes[*node as usize], *id), meta.clone());
            }
        }
        out
    }
}
