//! The fate of a message: [`Delivery`], the handle that `send` and `broadcast` return, and
//! what it resolves to. The network layer resolves it through the [`Ticket`] each frame for
//! another node carries in that node's outbox.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use tokio::sync::Notify;

/// What became of a message once every node it was sent to has answered for it.
///
/// "Delivered" means *accepted by the target's node*: that node acknowledged the batch that
/// carried the message. What the node then does with it is the recipient's business, as for
/// a local message: it is in the target process's inbox, or counted in its
/// [`dropped`](crate::Process::dropped) (nobody listening to the topic, inbox full), or
/// dropped because no such process runs there. Slots on the sending node count as delivered
/// at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Every node targeted accepted the message (or only local slots were targeted).
    Delivered,
    /// At least one node targeted did not get the message.
    Failed {
        /// The other nodes that did accept it, in the order they answered (the local slots,
        /// if any, are delivered too and not listed).
        delivered: Vec<PeerId>,
        /// The nodes that did not get it, each with the reason, in the order they were given
        /// up.
        failed: Vec<FailedNode>,
    },
}

impl DeliveryOutcome {
    /// `true` for [`Delivered`](Self::Delivered).
    pub fn is_delivered(&self) -> bool {
        matches!(self, DeliveryOutcome::Delivered)
    }
}

impl fmt::Display for DeliveryOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryOutcome::Delivered => f.write_str("delivered"),
            DeliveryOutcome::Failed { delivered, failed } => {
                write!(f, "failed for {} node(s)", failed.len())?;
                for (i, node) in failed.iter().enumerate() {
                    let sep = if i == 0 { ": " } else { "; " };
                    write!(f, "{sep}{} ({})", node.peer, node.reason)?;
                }
                if !delivered.is_empty() {
                    write!(f, "; delivered to {} other node(s)", delivered.len())?;
                }
                Ok(())
            }
        }
    }
}

/// A node that did not get a message, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedNode {
    /// The node.
    pub peer: PeerId,
    /// Why it did not get the message.
    pub reason: FailureReason,
}

/// Why a node did not get a message: what its outbox on the sending node knew when it gave
/// the message up. A message given up by the outbox is also counted in the sending node's
/// [`NodeStats::frames_lost`](crate::NodeStats::frames_lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureReason {
    /// Too many messages waited for the network (`MAX_QUEUED_FRAMES` in src/net/outbox.rs,
    /// for the node and for one peer): refused without being queued. The node-wide bound is
    /// checked by the call itself, which is `Unavailable` when it is reached before anything
    /// was queued (that refusal is not counted lost); a broadcast that reaches it midway
    /// reports the nodes left out with this reason.
    QueueFull,
    /// The node's circuit breaker was open: the message was not tried, refused at once or
    /// dropped from the outbox, where it waited behind the batch whose failure opened the
    /// breaker (`circuit_breaker_failures` failed attempts in a row, or a failed half-open
    /// probe).
    BreakerOpen,
    /// The batch carrying the message was tried and every attempt failed; no more are made:
    /// its retries were used up (the first attempt and `max_retries` retries), or its
    /// failure opened the node's circuit breaker (which ends the retries early), or it was
    /// the breaker's one half-open probe.
    AttemptsFailed {
        /// Attempts made, the first included.
        attempts: u32,
        /// How the last attempt failed.
        last_error: AttemptError,
    },
    /// The sending node shut down (or its network behaviour stopped or was dropped) before
    /// the node acknowledged the message.
    Shutdown,
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureReason::QueueFull => f.write_str("too many messages wait for the network"),
            FailureReason::BreakerOpen => f.write_str("circuit breaker open"),
            FailureReason::AttemptsFailed {
                attempts,
                last_error,
            } => write!(f, "gave up after {attempts} attempt(s), last: {last_error}"),
            FailureReason::Shutdown => f.write_str("the sending node shut down"),
        }
    }
}

/// How one attempt to hand a batch to a node failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptError {
    /// No connection to the node could be made (no address, dial refused or failed).
    Unreachable,
    /// No acknowledgement within the `broadcast_timeout`.
    Timeout,
    /// The connection closed before the acknowledgement came.
    ConnectionClosed,
    /// The node does not speak the delivery protocol.
    Unsupported,
    /// The stream failed otherwise.
    Io,
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttemptError::Unreachable => "node unreachable",
            AttemptError::Timeout => "no acknowledgement in time",
            AttemptError::ConnectionClosed => "connection closed",
            AttemptError::Unsupported => "delivery protocol not supported",
            AttemptError::Io => "stream error",
        })
    }
}

/// The fate of one `send` or `broadcast`, returned at once by the call: how many slots it
/// targeted, and (with [`outcome`](Self::outcome) or [`try_outcome`](Self::try_outcome))
/// whether every node targeted got it.
///
/// It may be dropped freely: the message goes on its way the same, and nothing waits for the
/// handle. A delivery that targets only this node's slots (or none) is
/// [`Delivered`](DeliveryOutcome::Delivered) from the start and costs no allocation; one to
/// other nodes resolves once each of them has acknowledged the batch carrying the message or
/// has been given up (attempts failed, breaker open, queue full, shutdown: see
/// [`FailureReason`]), so [`outcome`](Self::outcome) never waits forever, and at most about
/// the retry budget of the scopes (`broadcast_timeout`, `max_retries`, `retry_*_delay`).
/// Wrap it in `tokio::time::timeout` to wait less.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> procgroups::Result<()> {
/// use procgroups::{DeliveryOutcome, Node, ScopeConfig};
/// let node = Node::builder()
///     .mdns(false)
///     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
///     .scope("app:pg", ScopeConfig::default())
///     .build()
///     .await?;
/// let (a, b) = (node.spawn_process(), node.spawn_process());
/// let _inbox = b.listen("hi");
/// let delivery = a.send(&b.pid(), "hi", "there")?;
/// assert_eq!(delivery.slots(), 1);
/// assert_eq!(delivery.try_outcome(), Some(DeliveryOutcome::Delivered)); // local: at once
/// assert!(delivery.outcome().await.is_delivered());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Delivery {
    slots: usize,
    /// `None` when no other node was targeted.
    state: Option<Arc<State>>,
}

impl Delivery {
    /// A delivery to this node's slots only: delivered already.
    pub(crate) fn local(slots: usize) -> Self {
        Self { slots, state: None }
    }

    /// The number of slots targeted: one for a `send`, the group's slots for a broadcast (a
    /// process that joined twice counts twice; 0 for an empty group).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// What became of the message, once every node targeted has answered for it (at once for
    /// local slots). Any number of tasks may wait on clones of the handle.
    pub async fn outcome(&self) -> DeliveryOutcome {
        let Some(state) = &self.state else {
            return DeliveryOutcome::Delivered;
        };
        if let Some(outcome) = state.outcome() {
            return outcome;
        }
        // From now on the last resolution notifies (see `State::release`).
        state.watched.store(true, Ordering::SeqCst);
        loop {
            let notified = state.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so that a resolution in between is not missed.
            notified.as_mut().enable();
            if let Some(outcome) = state.outcome() {
                return outcome;
            }
            notified.await;
        }
    }

    /// The outcome if it is known already, without waiting.
    pub fn try_outcome(&self) -> Option<DeliveryOutcome> {
        match &self.state {
            None => Some(DeliveryOutcome::Delivered),
            Some(state) => state.outcome(),
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("slots", &self.slots)
            .field("outcome", &self.try_outcome())
            .finish()
    }
}

/// What the handles and the tickets of one delivery share.
struct State {
    /// Tickets not yet resolved, plus one while the [`Tracking`] that issues them lives.
    pending: AtomicUsize,
    /// Someone waits in [`Delivery::outcome`]: the last resolution notifies. Nobody waits
    /// for most deliveries, which then skip `Notify`'s lock.
    watched: AtomicBool,
    results: Mutex<Results>,
    notify: Notify,
}

/// The nodes resolved so far. The first to acknowledge is kept inline: a `send` (one node)
/// allocates nothing more.
#[derive(Default)]
struct Results {
    first_delivered: Option<PeerId>,
    more_delivered: Vec<PeerId>,
    failed: Vec<FailedNode>,
}

impl State {
    fn outcome(&self) -> Option<DeliveryOutcome> {
        if self.pending.load(Ordering::SeqCst) != 0 {
            return None;
        }
        let results = self.results.lock().unwrap_or_else(|e| e.into_inner());
        Some(if results.failed.is_empty() {
            DeliveryOutcome::Delivered
        } else {
            DeliveryOutcome::Failed {
                delivered: results
                    .first_delivered
                    .iter()
                    .chain(&results.more_delivered)
                    .copied()
                    .collect(),
                failed: results.failed.clone(),
            }
        })
    }

    fn resolve(&self, peer: PeerId, result: Option<FailureReason>) {
        {
            let mut results = self.results.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                None if results.first_delivered.is_none() => results.first_delivered = Some(peer),
                None => results.more_delivered.push(peer),
                Some(reason) => results.failed.push(FailedNode { peer, reason }),
            }
        }
        self.release();
    }

    fn release(&self) {
        // SeqCst with `watched`: either the waiter sees `pending` at 0 after it set
        // `watched`, or this sees `watched` set and notifies.
        if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 && self.watched.load(Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }
}

/// Builds the [`Delivery`] of a message to other nodes: one [`Ticket`] per node, then
/// [`finish`](Self::finish). Until it is finished (or dropped) the delivery stays pending,
/// so a node that answers before the last ticket is issued cannot resolve it early.
pub(crate) struct Tracking {
    state: Arc<State>,
}

impl Tracking {
    pub(crate) fn new() -> Self {
        Self {
            state: Arc::new(State {
                pending: AtomicUsize::new(1),
                watched: AtomicBool::new(false),
                results: Mutex::new(Results::default()),
                notify: Notify::new(),
            }),
        }
    }

    /// The ticket of the frame for `peer`: the delivery waits for it.
    pub(crate) fn ticket(&self, peer: PeerId) -> Ticket {
        self.state.pending.fetch_add(1, Ordering::Relaxed);
        Ticket {
            state: Some(self.state.clone()),
            peer,
        }
    }

    /// Every ticket is issued: the handle, which resolves once they are.
    pub(crate) fn finish(self, slots: usize) -> Delivery {
        Delivery {
            slots,
            state: Some(self.state.clone()),
        }
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        self.state.release();
    }
}

/// The part of a [`Delivery`] that rides with the frame for one node: resolved by the
/// node's outbox on the acknowledgement or when it gives the frame up. Dropped unresolved
/// (the outbox or the command carrying it dropped with the network behaviour), it resolves
/// as [`FailureReason::Shutdown`], so no handle waits forever.
pub(crate) struct Ticket {
    state: Option<Arc<State>>,
    peer: PeerId,
}

impl Ticket {
    /// The node acknowledged the batch carrying the frame.
    pub(crate) fn delivered(mut self) {
        if let Some(state) = self.state.take() {
            state.resolve(self.peer, None);
        }
    }

    /// The frame is given up.
    pub(crate) fn failed(mut self, reason: FailureReason) {
        if let Some(state) = self.state.take() {
            state.resolve(self.peer, Some(reason));
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            state.resolve(self.peer, Some(FailureReason::Shutdown));
        }
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket").field("peer", &self.peer).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_delivery_is_delivered_at_once() {
        let d = Delivery::local(3);
        assert_eq!(d.slots(), 3);
        assert_eq!(d.try_outcome(), Some(DeliveryOutcome::Delivered));
    }

    #[test]
    fn it_waits_for_every_ticket_and_for_the_last_to_be_issued() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let tracking = Tracking::new();
        let ta = tracking.ticket(a);
        ta.delivered();
        let tb = tracking.ticket(b);
        let d = tracking.finish(2);
        assert_eq!(d.try_outcome(), None, "b has not answered");
        tb.failed(FailureReason::BreakerOpen);
        assert_eq!(
            d.try_outcome(),
            Some(DeliveryOutcome::Failed {
                delivered: vec![a],
                failed: vec![FailedNode {
                    peer: b,
                    reason: FailureReason::BreakerOpen
                }],
            })
        );
    }

    #[test]
    fn a_ticket_dropped_unresolved_fails_as_shutdown() {
        let peer = PeerId::random();
        let tracking = Tracking::new();
        let t = tracking.ticket(peer);
        let d = tracking.finish(1);
        drop(t);
        let outcome = d.try_outcome().expect("resolved");
        assert_eq!(
            outcome,
            DeliveryOutcome::Failed {
                delivered: vec![],
                failed: vec![FailedNode {
                    peer,
                    reason: FailureReason::Shutdown
                }],
            }
        );
        assert!(outcome.to_string().contains("shut down"), "{outcome}");
    }

    #[tokio::test]
    async fn outcome_wakes_every_waiter() {
        let tracking = Tracking::new();
        let t = tracking.ticket(PeerId::random());
        let d = tracking.finish(1);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move { d.outcome().await })
            })
            .collect();
        tokio::task::yield_now().await;
        t.delivered();
        for w in waiters {
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(10), w)
                .await
                .expect("woken")
                .expect("the task ran");
            assert_eq!(outcome, DeliveryOutcome::Delivered);
        }
    }
}
