//! What every handle of a node shares: its identity, scopes, processes, network handle and
//! policy, and the operations processes and instances run through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hashbrown::HashMap;
use libp2p::PeerId;

use bytes::Bytes;

use crate::app::calls::{CallRef, Calls, ReplyRoute};
use crate::app::health::{HealthProblem, PeerPaths, RefusedSlots, ScopeHealth};
use crate::app::mailbox::{Mailroom, Message, ProcessShared, ProcessTable};
use crate::app::metrics::MetricsSource;
use crate::app::scope::Scope;
use crate::app::stats::{NodeStats, ScopeStats};
use crate::net::NetHandle;
use crate::net::relay::Reach;
use crate::net::wire::{CallTag, Frame};
use crate::vocab::delivery::{Delivery, Ticket, Tracking};
use crate::vocab::error::{Error, Result};
use crate::vocab::policy::{Permission, Policy, Request};
use crate::{Members, Pid};

/// The state a node's handles share.
pub(crate) struct NodeShared {
    pub(crate) peer_id: PeerId,
    pub(crate) incarnation: u64,
    pub(crate) scopes: HashMap<Arc<str>, Arc<Scope>>,
    pub(crate) processes: Arc<ProcessTable>,
    /// The calls this node's processes wait on.
    pub(crate) calls: Arc<Calls>,
    /// Delivers requests of calls to this node's processes (and other nodes' frames).
    pub(crate) mailroom: Arc<Mailroom>,
    pub(crate) net: NetHandle,
    /// The next process id (see `Pid`: ids of an incarnation start at its start time).
    pub(crate) next_pid: AtomicU64,
    pub(crate) policy: Arc<dyn Policy>,
    pub(crate) mailbox_capacity: usize,
    /// Cleared by `Node::shutdown`.
    pub(crate) running: AtomicBool,
}

impl NodeShared {
    pub(crate) fn hosted(&self, id: &str) -> Result<Arc<Scope>> {
        self.scope(id).ok_or_else(|| Error::ScopeNotFound {
            scope: id.to_owned(),
        })
    }

    fn sorted_scopes(&self) -> Vec<&Arc<Scope>> {
        let mut scopes: Vec<&Arc<Scope>> = self.scopes.values().collect();
        scopes.sort_by(|a, b| a.id.cmp(&b.id));
        scopes
    }

    pub(crate) fn all_stats(&self) -> Vec<ScopeStats> {
        self.sorted_scopes()
            .into_iter()
            .map(|s| s.stats())
            .collect()
    }

    pub(crate) fn all_health(&self) -> Vec<ScopeHealth> {
        self.sorted_scopes()
            .into_iter()
            .map(|s| self.health(s))
            .collect()
    }

    pub(crate) fn node_stats(&self) -> NodeStats {
        let net = &self.net.shared;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (peers, peers_relayed) = {
            let connected = net.connected.read().unwrap_or_else(|e| e.into_inner());
            let relayed = connected.values().filter(|r| **r == Reach::Relayed).count();
            (connected.len(), relayed)
        };
        NodeStats {
            peers,
            peers_relayed,
            relay_reservations: net.relay_reservations.load(Ordering::Relaxed),
            holes_punched: read(&net.stats.holes_punched),
            hole_punches_failed: read(&net.stats.hole_punches_failed),
            circuits_relayed: read(&net.stats.circuits_relayed),
            known_peers: net.known_peers.load(Ordering::Relaxed),
            delta_streams_open: net.delta_streams_open.load(Ordering::Relaxed),
            frames_waiting: net.queued_frames.load(Ordering::Relaxed),
            frames_sent: read(&net.stats.frames_sent),
            frames_received: read(&net.stats.frames_received),
            frames_lost: read(&net.stats.frames_lost),
            delta_frames_lost: read(&net.stats.delta_frames_lost),
            batches_duplicate: read(&net.stats.batches_duplicate),
            requests_failed: read(&net.stats.requests_failed),
            requests_over_budget: read(&net.stats.requests_over_budget),
            connections_refused: read(&net.stats.connections_refused),
            inbound_requests_failed: read(&net.stats.inbound_requests_failed),
            inbound_streams_reset: read(&net.stats.inbound_streams_reset),
            peers_graylisted: net.peers_graylisted.load(Ordering::Relaxed),
            graylisted_dropped: read(&net.stats.graylisted_dropped),
            gossip_ignored: read(&net.stats.gossip_ignored),
            malformed: read(&net.stats.malformed),
            messages_dropped: read(&net.stats.messages_dropped),
            peers_refused: read(&net.stats.peers_refused),
            peers_ignored: read(&net.stats.peers_ignored),
            call_replies_late: read(&self.calls.replies_late),
            call_replies_rejected: read(&self.calls.replies_rejected),
        }
    }

    /// The checks of [`ScopeHealth`]: the network loop's pulse, peers lost for longer than
    /// the grace, and the action queue.
    pub(crate) fn health(&self, scope: &Scope) -> ScopeHealth {
        let net = &self.net.shared;
        let mut problems = Vec::new();
        if net.stopped.load(Ordering::Acquire) {
            problems.push(HealthProblem::Stopped);
        } else {
            let silent_for = net.heartbeat.silence();
            if silent_for > scope.config.protocol_timeout() {
                problems.push(HealthProblem::LoopStalled { silent_for });
            }
        }
        let grace = scope.config.node_down_grace();
        let view = scope
            .net_view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let paths = PeerPaths {
            direct: view.peers - view.relayed,
            relayed: view.relayed,
            unreachable: view.unreachable.len(),
        };
        let mut lost: Vec<(PeerId, Duration)> = view
            .unreachable
            .iter()
            .map(|lost| (lost.peer, lost.since.elapsed()))
            .filter(|(_, gone)| *gone >= grace)
            .collect();
        lost.sort_by_key(|(_, gone)| std::cmp::Reverse(*gone));
        if let Some(&(_, longest)) = lost.first() {
            problems.push(HealthProblem::Partitioned {
                peers: lost.into_iter().map(|(peer, _)| peer).collect(),
                for_at_least: longest,
            });
        }
        let queued = scope.queued_deltas();
        let max = scope.config.action_queue_max_size();
        if queued >= max {
            problems.push(HealthProblem::Backlog { queued, max });
        }
        let refused = scope.refused_slots();
        if !refused.is_empty() {
            problems.push(HealthProblem::SlotsRefused {
                peers: refused
                    .into_iter()
                    .map(|(peer, slots)| RefusedSlots { peer, slots })
                    .collect(),
            });
        }
        ScopeHealth::new(scope.id.to_string(), problems, paths)
    }

    pub(crate) fn check_running(&self) -> Result<()> {
        if self.running.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Error::Unavailable {
                reason: "the node is shut down".into(),
            })
        }
    }

    pub(crate) fn scope(&self, id: &str) -> Option<Arc<Scope>> {
        self.scopes.get(id).cloned()
    }

    pub(crate) fn check(
        &self,
        process: Pid,
        scope: &str,
        permission: Permission,
        resource: &str,
    ) -> Result<()> {
        let request = Request {
            process,
            scope,
            permission,
            resource,
        };
        if self.policy.allows(&request) {
            Ok(())
        } else {
            Err(Error::PermissionDenied {
                permission,
                resource: resource.to_owned(),
            })
        }
    }

    /// Delivers to a local process; `false` if it does not exist.
    pub(crate) fn deliver_local(&self, id: u64, message: Message) -> bool {
        let process = self
            .processes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        match process {
            Some(p) => {
                p.deliver(message, &self.net.shared.stats.messages_dropped);
                true
            }
            None => false,
        }
    }

    /// Delivers one message per slot of `local` (slots of this node's processes), under one
    /// read lock of the process table. A process that exited meanwhile is skipped.
    pub(crate) fn deliver_local_slots(&self, local: &Members, message: &Message) {
        let processes = self.processes.read().unwrap_or_else(|e| e.into_inner());
        for id in local.ids() {
            if let Some(p) = processes.get(&id) {
                p.deliver(message.clone(), &self.net.shared.stats.messages_dropped);
            }
        }
    }

    /// `Unavailable` when too many messages wait for the network already.
    pub(crate) fn check_network_room(&self) -> Result<()> {
        self.net.check_room()
    }

    /// Queues a frame for processes of another node, with the ticket of its delivery.
    pub(crate) fn deliver_remote(&self, peer: PeerId, frame: Frame, ticket: Ticket) -> Result<()> {
        self.net.deliver(peer, frame, Some(ticket))
    }

    /// Sends a message from this node's process `from` to `to`, wherever it runs (see
    /// `Process::send`): a local target that does not exist is `NotFound`.
    pub(crate) fn send_to(
        &self,
        from: Pid,
        to: &Pid,
        topic: &str,
        payload: Bytes,
    ) -> Result<Delivery> {
        if to.node() != self.peer_id {
            let frame = Frame {
                from: from.id(),
                topic: topic.into(),
                payload,
                targets: Arc::new([to.id()]),
                call: None,
            };
            let tracking = Tracking::new();
            self.deliver_remote(to.node(), frame, tracking.ticket(to.node()))?;
            return Ok(tracking.finish(1));
        }
        let message = Message::new(from, topic, payload);
        if self.deliver_local(to.id(), message) {
            Ok(Delivery::local(1))
        } else {
            Err(Error::ProcessNotFound {
                pid: to.to_string(),
            })
        }
    }

    /// The exit of a process: idempotent.
    pub(crate) fn exit_process(&self, process: &ProcessShared) {
        if !process.mark_dead() {
            return;
        }
        let id = process.pid.id();
        for scope in self.scopes.values() {
            scope.exit(id);
        }
        self.processes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        process.close_inboxes();
    }
}

impl ReplyRoute for NodeShared {
    fn reply(&self, to: &CallRef, topic: Arc<str>, payload: Bytes) -> Result<Delivery> {
        self.check_running()?;
        if to.caller.node() == self.peer_id {
            // Late or not, the table has counted it.
            self.calls
                .on_reply(to.call, to.caller.id(), to.replier, payload);
            return Ok(Delivery::local(1));
        }
        let frame = Frame {
            from: to.replier.id(),
            topic,
            payload,
            targets: Arc::new([to.caller.id()]),
            call: Some(CallTag::Reply { id: to.call }),
        };
        let tracking = Tracking::new();
        self.deliver_remote(to.caller.node(), frame, tracking.ticket(to.caller.node()))?;
        Ok(tracking.finish(1))
    }
}

impl MetricsSource for NodeShared {
    fn scope_stats(&self) -> Vec<ScopeStats> {
        self.all_stats()
    }

    fn scope_health(&self) -> Vec<ScopeHealth> {
        self.all_health()
    }

    fn node_stats(&self) -> NodeStats {
        NodeShared::node_stats(self)
    }
}
