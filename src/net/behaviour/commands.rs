//! The application's commands (dial, disconnect, deliver, shut down) and the graceful stop.

use std::sync::atomic::Ordering;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{CloseConnection, ToSwarm};
use tokio::sync::oneshot;

use crate::net::wire::SyncRequest;

use super::{Behaviour, Event, Shutdown, SyncOut};
use crate::net::handle::Command;
use crate::net::handle::GOODBYE_WAIT;

impl Behaviour {
    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial(addr) => {
                if let Some(Protocol::P2p(peer)) = addr.iter().last() {
                    let p = self.peers.entry(peer).or_default();
                    p.dialed_by_application();
                    if addr.iter().count() == 1 {
                        // `/p2p/<peer>` alone: at the addresses identify, Kademlia or peer
                        // exchange gave, else through a relay.
                        self.dial_known(peer);
                        return;
                    }
                    p.remember(addr.clone());
                }
                self.dial(addr);
            }
            Command::Disconnect(peer) => {
                let p = self.peers.entry(peer).or_default();
                p.disconnect();
                self.relaying.admission.remove(&peer);
                self.pending.push_back(ToSwarm::CloseConnection {
                    peer_id: peer,
                    connection: CloseConnection::All,
                });
            }
            Command::Deliver {
                peer,
                frame,
                ticket,
            } => {
                let now = Instant::now();
                let p = self.peers.entry(peer).or_default();
                // A refusal fails the ticket with its reason.
                if let Err((refused, settled)) = p.outbox.push(frame, ticket, &self.policy, now) {
                    // Counted as waiting by `NetHandle::deliver`: it waits no more.
                    self.shared.queued_frames.fetch_sub(1, Ordering::Relaxed);
                    self.shared
                        .stats
                        .frames_lost
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, ?refused, "frame refused");
                    settled.settle();
                }
                self.pump(peer, now);
            }
            Command::Shutdown(done) => self.begin_shutdown(done),
        }
    }

    pub(super) fn begin_shutdown(&mut self, done: oneshot::Sender<()>) {
        self.publish_deltas();
        let peers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.connections > 0 && !p.scopes.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for peer in &peers {
            let id = self.protocols.others.sync.send_request(
                peer,
                SyncRequest::Goodbye {
                    incarnation: self.incarnation,
                },
            );
            self.sync_out.insert(id, SyncOut::Goodbye);
        }
        self.shutdown = Some(Shutdown {
            done,
            deadline: Instant::now() + GOODBYE_WAIT,
            waiting: peers.len(),
        });
    }

    pub(super) fn goodbye_answered(&mut self) {
        if let Some(s) = &mut self.shutdown {
            s.waiting = s.waiting.saturating_sub(1);
        }
    }

    /// Everything stops: no more timers, requests or events; the owner may drop the swarm.
    /// What waits in the outboxes, or in commands not taken yet, is given up: counted lost,
    /// and its deliveries fail as [`Shutdown`](crate::FailureReason::Shutdown) (no
    /// acknowledgement is read any more). Later commands are refused by the closed channel.
    pub(super) fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.stopped.store(true, Ordering::Release);
        self.commands.close();
        let mut lost = 0;
        // Held until counted, then dropped: their tickets fail as a shutdown.
        let mut unsent = Vec::new();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Deliver { ticket, .. } => {
                    lost += 1;
                    unsent.extend(ticket);
                }
                Command::Shutdown(done) => {
                    done.send(()).ok();
                }
                Command::Dial(_) | Command::Disconnect(_) => {}
            }
        }
        let abandoned: Vec<_> = self
            .peers
            .values_mut()
            .map(|p| p.outbox.abandon())
            .collect();
        lost += abandoned.iter().map(|s| s.frames).sum::<usize>();
        self.deliver_out.clear();
        if lost > 0 {
            self.shared.queued_frames.fetch_sub(lost, Ordering::Relaxed);
            self.shared
                .stats
                .frames_lost
                .fetch_add(lost as u64, Ordering::Relaxed);
            tracing::debug!(lost, "stopped: frames not delivered given up");
        }
        drop(unsent);
        drop(abandoned);
        if let Some(s) = self.shutdown.take() {
            s.done.send(()).ok();
        }
        self.pending
            .push_back(ToSwarm::GenerateEvent(Event::Stopped));
    }
}
