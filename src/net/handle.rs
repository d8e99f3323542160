//! The application's side of the network layer: [`NetHandle`] sends it commands, and
//! [`NetShared`] is what the application's threads read of its state and how they wake it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::task::AtomicWaker;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::net::outbox::MAX_QUEUED_FRAMES;
use crate::net::relay::Reach;
use crate::net::view::Heartbeat;
use crate::net::wire::Frame;
use crate::vocab::delivery::{FailureReason, Ticket};
use crate::vocab::error::{Error, Result};

/// Counters of the network side, readable from any thread.
#[derive(Debug, Default)]
pub(crate) struct NetStats {
    pub requests_failed: AtomicU64,
    /// Connections refused by the connection limits.
    pub connections_refused: AtomicU64,
    /// Inbound sync requests refused by their peer's budget.
    pub requests_over_budget: AtomicU64,
    /// Inbound requests whose stream failed before an answer was sent (closed, timed out).
    pub inbound_requests_failed: AtomicU64,
    /// Inbound streams reset at the cap of a connection (shared with the protocols).
    pub inbound_streams_reset: Arc<AtomicU64>,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub frames_lost: AtomicU64,
    /// Delta frames taken by a peer's delta stream and lost with it.
    pub delta_frames_lost: AtomicU64,
    pub batches_duplicate: AtomicU64,
    /// Shared with the request-response codecs, which count the malformed frames they read.
    pub malformed: Arc<AtomicU64>,
    /// Messages for this node's processes that nobody listened to or found a full inbox.
    pub messages_dropped: AtomicU64,
    /// Connections and deltas of peers that are not admitted.
    pub peers_refused: AtomicU64,
    /// Peers named by peer exchange and not taken: the node knew `max_known_peers` already.
    pub peers_ignored: AtomicU64,
    /// Relayed connections made direct by hole punching.
    pub holes_punched: AtomicU64,
    /// Hole punches that failed (the connection stays relayed).
    pub hole_punches_failed: AtomicU64,
    /// Circuits this node relayed between other peers.
    pub circuits_relayed: AtomicU64,
    /// RPCs and delta frames of graylisted peers dropped unread (copied from the behaviour's
    /// gossipsub every housekeeping pass).
    pub graylisted_dropped: AtomicU64,
    /// RPCs of peers below the gossip threshold (copied like `graylisted_dropped`).
    pub gossip_ignored: AtomicU64,
}

/// What the application's threads can read of the behaviour's state, and how they wake it.
#[derive(Default)]
pub(crate) struct NetShared {
    /// Frames handed over and not yet acknowledged, given up or refused.
    pub queued_frames: AtomicUsize,
    pub listen_addrs: RwLock<Vec<Multiaddr>>,
    /// Addresses others can reach it at: confirmed by AutoNAT, or at a relay (a reservation).
    pub external_addrs: RwLock<Vec<Multiaddr>>,
    /// Connected peers, and how.
    pub connected: RwLock<HashMap<PeerId, Reach>>,
    /// Reservations held at relays.
    pub relay_reservations: AtomicUsize,
    /// Peers the behaviour keeps state of (connected or not), as of its last turn.
    pub known_peers: AtomicUsize,
    /// Peers whose delta stream from this node is open.
    pub delta_streams_open: AtomicUsize,
    /// Connected peers below gossipsub's graylist threshold.
    pub peers_graylisted: AtomicUsize,
    pub stats: NetStats,
    pub heartbeat: Heartbeat,
    /// The behaviour stopped (shutdown, or every handle dropped).
    pub stopped: AtomicBool,
    /// Set with [`wake`](Self::wake) when a scope queued a change for the peers.
    pub(crate) dirty: AtomicBool,
    pub(crate) waker: AtomicWaker,
}

impl NetShared {
    /// A local change waits for the peers: the behaviour publishes it at its next turn,
    /// with whatever else queued meanwhile.
    pub(crate) fn wake(&self) {
        if !self.dirty.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }
}

/// How long a shutting-down node waits for its goodbyes to be acknowledged.
pub(crate) const GOODBYE_WAIT: Duration = Duration::from_secs(1);

pub(crate) enum Command {
    Dial(Multiaddr),
    Disconnect(PeerId),
    /// A frame for `peer`'s outbox, with the ticket of its delivery (if it is tracked).
    Deliver {
        peer: PeerId,
        frame: Frame,
        ticket: Option<Ticket>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// The application's side of the behaviour.
pub(crate) struct NetHandle {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) shared: Arc<NetShared>,
    /// The thread that drives the node's own swarm; `None` when the application embeds the
    /// behaviour in its swarm.
    pub(crate) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl NetHandle {
    fn send(&self, command: Command) -> Result<()> {
        self.commands.send(command).map_err(|_| Error::Unavailable {
            reason: "the node's network behaviour has stopped".into(),
        })
    }

    pub(crate) fn dial(&self, addr: Multiaddr) -> Result<()> {
        self.send(Command::Dial(addr))
    }

    pub(crate) fn disconnect(&self, peer: PeerId) -> Result<()> {
        self.send(Command::Disconnect(peer))
    }

    /// `Unavailable` when [`MAX_QUEUED_FRAMES`] frames wait already.
    pub(crate) fn check_room(&self) -> Result<()> {
        let queued = self.shared.queued_frames.load(Ordering::Relaxed);
        if queued >= MAX_QUEUED_FRAMES {
            return Err(Error::Unavailable {
                reason: format!("{queued} messages wait for the network"),
            });
        }
        Ok(())
    }

    /// Queues a frame, or refuses it at once when [`MAX_QUEUED_FRAMES`] wait already (its
    /// ticket fails as [`QueueFull`](FailureReason::QueueFull)) or the behaviour has stopped
    /// (the ticket, dropped, fails as a shutdown).
    pub(crate) fn deliver(&self, peer: PeerId, frame: Frame, ticket: Option<Ticket>) -> Result<()> {
        let queued = self.shared.queued_frames.fetch_add(1, Ordering::Relaxed);
        if queued >= MAX_QUEUED_FRAMES {
            self.shared.queued_frames.fetch_sub(1, Ordering::Relaxed);
            if let Some(t) = ticket {
                t.failed(FailureReason::QueueFull);
            }
            return Err(Error::Unavailable {
                reason: format!("{queued} messages wait for the network"),
            });
        }
        let sent = self.send(Command::Deliver {
            peer,
            frame,
            ticket,
        });
        if sent.is_err() {
            self.shared.queued_frames.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }

    /// Says goodbye to the peers and stops the behaviour; returns once it has stopped (and,
    /// for the node's own swarm, once its thread has ended).
    pub(crate) async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        let stopped = match self.send(Command::Shutdown(tx)) {
            // The bound is for an application's swarm that is no longer polled; an error of
            // `rx` means the behaviour is gone already.
            Ok(()) => tokio::time::timeout(GOODBYE_WAIT * 3, rx).await.is_ok(),
            Err(_) => true,
        };
        if !stopped {
            tracing::warn!("the network behaviour did not stop: is its swarm still polled?");
            return;
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            // The behaviour has stopped, so the thread is ending: joining is short.
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .ok();
        }
    }
}
