//! This node's own state for its peers: queued local changes cut into deltas under the size
//! cap, and the whole local state for a Sync.

use super::{DELTA_OVERHEAD, LOCAL, ScopeCore};
use crate::proto::groups::GroupName;
use crate::proto::messages::packed_ops::packed_len;
use crate::proto::messages::{Delta, Op, SyncGroup, SyncMember, SyncState};
use crate::vocab::meta::Meta;

impl ScopeCore {
    /// The deltas to publish, oldest first, each below `max_delta_bytes`.
    pub(super) fn on_flush(&mut self) -> Vec<Delta> {
        self.flush_pending();
        self.ready.drain(..).collect()
    }

    /// The depth of the outgoing queue, in deltas: those built and not yet taken by the
    /// network task, plus the queued ops counted as the deltas they will fill.
    pub(crate) fn queued_deltas(&self) -> usize {
        let pending = if self.pending.is_empty() {
            0
        } else {
            self.pending_bytes.div_ceil(self.cfg.max_delta_bytes)
        };
        self.ready.len() + pending
    }

    /// This node's whole local state with its version, for a Sync request. Queued changes are
    /// cut into deltas first, so the version covers them and a peer that applies this state
    /// ignores those deltas as duplicates.
    pub(crate) fn sync_state(&mut self) -> SyncState {
        self.flush_pending();
        let mut groups: Vec<SyncGroup> = self
            .groups
            .values()
            .filter_map(|g| {
                g.node(LOCAL).map(|n| {
                    let mut members: Vec<SyncMember> = n
                        .ids
                        .iter()
                        .map(|(id, slots)| SyncMember {
                            id,
                            slots,
                            meta: g.meta(LOCAL, id).map(|m| m.as_bytes().clone()),
                        })
                        .collect();
                    members.sort_unstable_by_key(|m| m.id);
                    SyncGroup {
                        name: g.name.to_string(),
                        members,
                    }
                })
            })
            .collect();
        groups.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        SyncState {
            origin: self.local_peer(),
            version: self.version,
            groups,
        }
    }

    pub(super) fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.pending);
        let names = std::mem::take(&mut self.pending_names);
        self.pending_index.clear();
        let bytes = std::mem::replace(&mut self.pending_bytes, DELTA_OVERHEAD);
        if bytes <= self.cfg.max_delta_bytes {
            // The common case, one delta: the queue is it, as it stands.
            let mut delta = Delta {
                origin: self.local_peer(),
                incarnation: self.version.incarnation,
                seq: 0,
                groups: names,
                ops,
            };
            self.seal(&mut delta);
            return;
        }
        // Per global name index: (chunk number + 1, index in that chunk's table).
        let mut remap: Vec<(u32, u32)> = vec![(0, 0); names.len()];
        let mut chunk = Delta {
            origin: self.local_peer(),
            incarnation: self.version.incarnation,
            seq: 0,
            groups: Vec::new(),
            ops: Vec::new(),
        };
        let mut chunk_no = 1u32;
        let mut bytes = DELTA_OVERHEAD;
        for op in ops {
            let g = op.group as usize;
            let fresh = remap[g].0 != chunk_no;
            // The op's index in the chunk packs into no more bytes than its index here.
            let op_bytes = packed_len(&op);
            let cost = op_bytes + if fresh { names[g].len() + 4 } else { 0 };
            if bytes + cost > self.cfg.max_delta_bytes && !chunk.ops.is_empty() {
                self.seal(&mut chunk);
                chunk_no += 1;
                bytes = DELTA_OVERHEAD;
            }
            if remap[g].0 != chunk_no {
                remap[g] = (chunk_no, chunk.groups.len() as u32);
                chunk.groups.push(names[g].clone());
                bytes += names[g].len() + 4;
            }
            chunk.ops.push(Op {
                group: remap[g].1,
                ..op
            });
            bytes += op_bytes;
        }
        self.seal(&mut chunk);
    }

    pub(super) fn seal(&mut self, chunk: &mut Delta) {
        self.version.seq += 1;
        let mut delta = Delta {
            origin: chunk.origin,
            incarnation: chunk.incarnation,
            seq: self.version.seq,
            groups: Vec::new(),
            ops: Vec::new(),
        };
        std::mem::swap(&mut delta.groups, &mut chunk.groups);
        std::mem::swap(&mut delta.ops, &mut chunk.ops);
        self.stats.deltas_built += 1;
        self.ready.push_back(delta);
    }

    /// Queues a change of local process `id` in the group at `index`, named `name`.
    pub(super) fn queue_op(
        &mut self,
        index: u32,
        name: &GroupName,
        id: u64,
        change: i64,
        meta: Option<Meta>,
    ) {
        let group = *self.pending_index.entry(index).or_insert_with(|| {
            self.pending_bytes += name.len() + 4;
            self.pending_names.push(name.clone());
            (self.pending_names.len() - 1) as u32
        });
        let op = Op {
            group,
            id,
            change,
            meta: meta.map(|m| m.as_bytes().clone()),
        };
        self.pending_bytes += packed_len(&op);
        self.pending.push(op);
    }
}
