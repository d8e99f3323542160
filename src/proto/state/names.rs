//! Registered names in the core: claims made by local processes, and the rule that leaves one
//! claim of each name standing (`proto::registry`).

use super::{LOCAL, ScopeCore};
use crate::proto::groups::GroupName;
use crate::proto::input::{LimitError, Output, Refusal};
use crate::proto::registry::{Claim, name_group, name_of, rank};
use crate::vocab::meta::Meta;
use crate::vocab::pid::Pid;

/// The claim of a name that stands, as [`ScopeCore::whereis`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub pid: Pid,
    /// When it registered, in microseconds since the Unix epoch (its node's clock).
    pub at_micros: u64,
    /// The metadata it registered with.
    pub meta: Meta,
}

impl ScopeCore {
    /// The process that holds `name`: of the claims this node knows, the one that ranks
    /// first.
    pub(crate) fn whereis(&self, name: &str) -> Option<Holder> {
        self.winner(&name_group(name))
    }

    fn winner(&self, group: &str) -> Option<Holder> {
        let g = self.groups.get(group)?;
        let mut best: Option<((u64, Pid), Option<Claim>)> = None;
        for n in &g.nodes {
            for (id, _) in n.ids.iter() {
                let pid = Pid::new(self.nodes[n.node as usize], id);
                let claim = g.meta(n.node, id).and_then(|m| Claim::decode(m.as_bytes()));
                let rank = rank(claim.as_ref(), pid);
                if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                    best = Some((rank, claim));
                }
            }
        }
        best.map(|((at_micros, pid), claim)| Holder {
            pid,
            at_micros,
            meta: Meta::from_bytes(claim.map(|c| c.meta).unwrap_or_default()),
        })
    }

    /// Registers `name` for local process `id`, or replaces its metadata if it holds it.
    pub(super) fn on_register(
        &mut self,
        id: u64,
        name: &str,
        at_micros: u64,
        meta: Meta,
    ) -> Result<(), Refusal> {
        let group = name_group(name);
        if meta.len() > self.cfg.max_meta_bytes {
            return Err(Refusal::Limit(LimitError {
                limit: crate::vocab::error::Limit::MaxMetaBytes,
                group: name.to_owned(),
                max: self.cfg.max_meta_bytes,
            }));
        }
        let me = Pid::new(self.local_peer(), id);
        let at_micros = match self.winner(&group) {
            Some(holder) if holder.pid == me => holder.at_micros,
            Some(holder) => {
                return Err(Refusal::Taken {
                    name: name.to_owned(),
                    holder: Box::new(holder.pid),
                });
            }
            None => {
                self.check_join(id, &[&group]).map_err(Refusal::Limit)?;
                at_micros
            }
        };
        let claim = Meta::from_bytes(
            Claim {
                at_micros,
                meta: meta.as_bytes().clone(),
            }
            .encode(),
        );
        if self
            .groups
            .get(group.as_str())
            .is_some_and(|g| g.count(LOCAL, id) > 0)
        {
            self.set_meta(LOCAL, &group, id, Some(claim));
        } else {
            self.add_local(&group, id, Some(claim))
                .map_err(Refusal::Limit)?;
        }
        self.local_changed();
        Ok(())
    }

    /// Drops local process `id`'s claim of `name`; `false` when it has none.
    pub(super) fn on_unregister(&mut self, id: u64, name: &str) -> bool {
        let group = name_group(name);
        let held = self
            .groups
            .get(group.as_str())
            .map_or(0, |g| g.count(LOCAL, id));
        if held == 0 {
            return false;
        }
        self.drop_claim(id, &group, held);
        self.local_changed();
        true
    }

    fn drop_claim(&mut self, id: u64, group: &str, held: u32) {
        let removed = self.remove(LOCAL, group, id, held);
        if removed.id_gone {
            self.local_procs.remove(id, removed.group);
        }
    }

    /// Leaves one claim standing in every name group the last input changed: a local claim
    /// that another outranks is dropped (a leave for the peers) and its process told.
    pub(super) fn resolve_names(&mut self) {
        let mut touched: Vec<GroupName> = std::mem::take(&mut self.names_touched);
        touched.sort_unstable();
        touched.dedup();
        let mut lost = false;
        for group in touched {
            let Some(winner) = self.winner(&group) else {
                continue;
            };
            let losers: Vec<(u64, u32)> = self
                .groups
                .get(&group)
                .and_then(|g| g.node(LOCAL))
                .map(|n| {
                    n.ids
                        .iter()
                        .filter(|(id, _)| Pid::new(self.local_peer(), *id) != winner.pid)
                        .collect()
                })
                .unwrap_or_default();
            for (id, held) in losers {
                self.drop_claim(id, &group, held);
                self.stats.names_lost += 1;
                lost = true;
                self.outputs.push_back(Output::NameLost {
                    name: name_of(&group).to_owned(),
                    process: id,
                    winner: winner.pid,
                });
            }
        }
        // The drops touched the groups again; nothing is left to resolve there.
        self.names_touched.clear();
        if lost {
            self.local_changed();
        }
    }
}
