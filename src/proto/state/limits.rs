//! The limits a local join is checked against before anything changes: this node's own
//! groups (`max_groups`), a group's slots (`max_members_per_group`), a process's slots in one
//! group (`u32::MAX`) and the group indices left. A batch is checked whole, so that it joins
//! all or nothing.

use super::{LOCAL, MAX_GROUP_INDICES, ScopeCore};
use crate::proto::groups::{GroupState, Map};
use crate::proto::input::LimitError;
use crate::vocab::error::Limit;

impl ScopeCore {
    /// The most groups this node holds: the configured `max_groups`, and never more than a
    /// `u32` indexes.
    pub(super) fn max_groups(&self) -> usize {
        match self.cfg.max_groups {
            0 => MAX_GROUP_INDICES,
            max => max.min(MAX_GROUP_INDICES),
        }
    }

    pub(super) fn check_join(&self, id: u64, names: &[&str]) -> Result<(), LimitError> {
        // Occurrences per distinct name, in first-seen order (the error names the first group
        // that does not fit). A scan for small batches, a map for large ones.
        let mut tally: Vec<(&str, usize)> = Vec::with_capacity(names.len());
        if names.len() <= 16 {
            for name in names {
                match tally.iter_mut().find(|(n, _)| n == name) {
                    Some((_, k)) => *k += 1,
                    None => tally.push((name, 1)),
                }
            }
        } else {
            let mut index: Map<&str, usize> = Map::with_hasher(self.hasher());
            for name in names {
                match index.get(name) {
                    Some(i) => tally[*i].1 += 1,
                    None => {
                        index.insert(name, tally.len());
                        tally.push((name, 1));
                    }
                }
            }
        }
        let mut new_groups = 0;
        for (name, k) in tally {
            self.check_group(id, name, self.groups.get(name), k, &mut new_groups)?;
        }
        Ok(())
    }

    /// Whether `k` more slots of local process `id` fit `name` (`group`, if it exists), the
    /// batch having counted `new_groups` groups new to this node before it (this one is added
    /// if it is new too). Only this node's own slots count: what peers hold never takes a
    /// local budget.
    pub(super) fn check_group(
        &self,
        id: u64,
        name: &str,
        group: Option<&GroupState>,
        k: usize,
        new_groups: &mut usize,
    ) -> Result<(), LimitError> {
        let (max_groups, max_members) = (self.max_groups(), self.cfg.max_members_per_group);
        if let Some(g) = group
            && u64::from(g.count(LOCAL, id)) + k as u64 > u64::from(u32::MAX)
        {
            return Err(LimitError {
                limit: Limit::MaxMembersPerGroup,
                group: name.to_owned(),
                max: u32::MAX as usize,
            });
        }
        let current = match group.and_then(|g| g.node(LOCAL)) {
            Some(local) => local.slots,
            None => {
                *new_groups += 1;
                if self.local_groups + *new_groups > max_groups
                    || (group.is_none() && self.groups.len() + *new_groups > MAX_GROUP_INDICES)
                {
                    return Err(LimitError {
                        limit: Limit::MaxGroups,
                        group: name.to_owned(),
                        max: max_groups,
                    });
                }
                0
            }
        };
        if max_members != 0 && current + k > max_members {
            return Err(LimitError {
                limit: Limit::MaxMembersPerGroup,
                group: name.to_owned(),
                max: max_members,
            });
        }
        Ok(())
    }
}
