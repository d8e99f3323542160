//! The per-peer outbox of `broadcast` and `send`, and its circuit breaker. Sans-IO: the node
//! task pushes frames, asks for the next batch to send, and reports how each batch went.
//!
//! One batch is in flight per peer, so frames reach a peer in the order they were pushed;
//! everything pushed meanwhile goes in the next batch. A failed batch is retried with the same
//! sequence number (the receiver delivers it once) after an exponential backoff, up to
//! `max_retries` times, then given up and its frames counted as lost. Consecutive failures
//! open the breaker: while open, frames for the peer are refused at once (and counted)
//! instead of queueing behind a dead peer; after `reset` it lets one batch through as a probe
//! (half-open), whose success closes it and whose failure opens it again.
//!
//! A frame may carry the [`Ticket`] of its [`Delivery`](crate::Delivery): when the batch
//! carrying the frame is acknowledged, or wherever the outbox gives the frame up (refused,
//! attempts failed, breaker opened, [`abandon`](Outbox::abandon)ed), it hands the frame back
//! [`Settled`], which resolves the ticket (delivered, or failed with the reason) once the
//! node has counted it; a ticket dropped with the outbox fails as a shutdown.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::net::wire::Frame;
use crate::vocab::delivery::{AttemptError, FailureReason, Ticket};

/// Frames waiting for the network on one node (all peers together) beyond which `broadcast`
/// and `send` to other nodes are `Unavailable` at once: a frame is a few handles (the payload
/// is shared), so this bounds memory to a few MiB plus the payloads, and no loop of sends
/// outruns the network unnoticed.
pub const MAX_QUEUED_FRAMES: usize = 65_536;

/// How the node retries and when it stops trying a peer. Built from the scopes' settings (see
/// [`DeliveryPolicy::from_scopes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryPolicy {
    pub timeout: Duration,
    pub max_retries: u32,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    pub breaker_failures: u32,
    pub breaker_reset: Duration,
    /// Frames queued for one peer beyond which new ones are refused.
    pub max_queued_frames: usize,
    /// A batch stops growing at this many bytes (estimated).
    pub max_batch_bytes: usize,
}

impl DeliveryPolicy {
    /// One policy for the node: an outbox is per peer, and its frames may come from several
    /// scopes (and from direct sends, which have none). It takes the most patient retry
    /// settings and the most protective breaker among the scopes, or the defaults of
    /// [`ScopeConfig`](crate::ScopeConfig) when the node hosts none.
    pub(crate) fn from_scopes<'a>(
        scopes: impl IntoIterator<Item = &'a crate::ScopeConfig>,
        max_batch_bytes: usize,
    ) -> Self {
        let mut scopes = scopes.into_iter().peekable();
        let default = crate::ScopeConfig::default();
        let first = scopes.peek().copied().unwrap_or(&default);
        let mut p = Self {
            timeout: first.broadcast_timeout(),
            max_retries: first.max_retries(),
            retry_base_delay: first.retry_base_delay(),
            retry_max_delay: first.retry_max_delay(),
            breaker_failures: first.circuit_breaker_failures(),
            breaker_reset: first.circuit_breaker_reset_time(),
            max_queued_frames: MAX_QUEUED_FRAMES,
            max_batch_bytes,
        };
        for s in scopes {
            p.timeout = p.timeout.max(s.broadcast_timeout());
            p.max_retries = p.max_retries.max(s.max_retries());
            p.retry_base_delay = p.retry_base_delay.min(s.retry_base_delay());
            p.retry_max_delay = p.retry_max_delay.max(s.retry_max_delay());
            p.breaker_failures = p.breaker_failures.min(s.circuit_breaker_failures());
            p.breaker_reset = p.breaker_reset.max(s.circuit_breaker_reset_time());
        }
        p
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.retry_base_delay
            .saturating_mul(factor)
            .min(self.retry_max_delay)
    }
}

/// The breaker's state, as metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe batch may be in flight.
    HalfOpen,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    BreakerOpen,
    QueueFull,
}

impl From<Refused> for FailureReason {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::BreakerOpen => FailureReason::BreakerOpen,
            Refused::QueueFull => FailureReason::QueueFull,
        }
    }
}

/// Frames the outbox is done with (acknowledged or given up), and the fates of their
/// deliveries, which are told when it is dropped (or [`settle`](Self::settle)d): after the
/// node has counted the frames, so that whoever sees an outcome sees the counters that go
/// with it, and never forgotten.
#[derive(Debug)]
pub(crate) struct Settled {
    /// The frames, tracked or not.
    pub(crate) frames: usize,
    delivered: Vec<Ticket>,
    failed: Vec<(Ticket, FailureReason)>,
}

impl Settled {
    fn new(frames: usize) -> Self {
        Self {
            frames,
            delivered: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn fail(&mut self, ticket: Option<Ticket>, reason: FailureReason) {
        self.failed.extend(ticket.map(|t| (t, reason)));
    }

    /// Tells the deliveries now (the same as dropping it).
    pub(crate) fn settle(self) {}
}

impl Drop for Settled {
    fn drop(&mut self) {
        for t in self.delivered.drain(..) {
            t.delivered();
        }
        for (t, reason) in self.failed.drain(..) {
            t.failed(reason);
        }
    }
}

/// A frame waiting, with the ticket of its delivery if it has one.
struct Queued {
    frame: Frame,
    ticket: Option<Ticket>,
}

struct InFlight {
    seq: u64,
    frames: Vec<Frame>,
    /// The tickets of the frames that have one.
    tickets: Vec<Ticket>,
    /// Attempts made so far, the first included.
    attempts: u32,
    /// Sent while half-open: one attempt only.
    probe: bool,
    /// Not before this instant (backoff of a retry).
    due: Option<Instant>,
    /// The attempt is on the wire.
    sent: bool,
}

/// What the outbox asks the node to send.
pub(crate) struct Send {
    pub seq: u64,
    pub frames: Vec<Frame>,
}

/// Counters of one outbox.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutboxStats {
    pub batches_sent: u64,
    pub batches_retried: u64,
    pub frames_delivered: u64,
    /// Frames given up after their retries, or refused (breaker open, queue full).
    pub frames_lost: u64,
}

/// The outbox of one peer.
pub(crate) struct Outbox {
    queue: VecDeque<Queued>,
    in_flight: Option<InFlight>,
    next_seq: u64,
    breaker: Breaker,
    pub(crate) stats: OutboxStats,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            in_flight: None,
            next_seq: 1,
            breaker: Breaker::Closed { failures: 0 },
            stats: OutboxStats::default(),
        }
    }
}

impl Outbox {
    pub(crate) fn breaker_state(&self) -> BreakerState {
        match self.breaker {
            Breaker::Closed { .. } => BreakerState::Closed,
            Breaker::Open { .. } => BreakerState::Open,
            Breaker::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// Nothing queued and nothing in flight.
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight.is_none()
    }

    /// Frames waiting, in flight included.
    pub(crate) fn len(&self) -> usize {
        self.queue.len() + self.in_flight.as_ref().map_or(0, |f| f.frames.len())
    }

    fn open_expired(&mut self, now: Instant) {
        if let Breaker::Open { until } = self.breaker
            && now >= until
        {
            self.breaker = Breaker::HalfOpen;
        }
    }

    /// Queues a frame, or refuses it: counts it lost and returns it settled, its ticket to
    /// fail with the reason.
    pub(crate) fn push(
        &mut self,
        frame: Frame,
        ticket: Option<Ticket>,
        policy: &DeliveryPolicy,
        now: Instant,
    ) -> Result<(), (Refused, Settled)> {
        self.open_expired(now);
        let refused = if matches!(self.breaker, Breaker::Open { .. }) {
            Refused::BreakerOpen
        } else if self.len() >= policy.max_queued_frames {
            Refused::QueueFull
        } else {
            self.queue.push_back(Queued { frame, ticket });
            return Ok(());
        };
        self.stats.frames_lost += 1;
        let mut settled = Settled::new(1);
        settled.fail(ticket, refused.into());
        Err((refused, settled))
    }

    /// The batch to put on the wire now, if any: a retry that is due, or a new batch of what
    /// is queued when nothing is in flight.
    pub(crate) fn poll_send(&mut self, policy: &DeliveryPolicy, now: Instant) -> Option<Send> {
        self.open_expired(now);
        if let Some(f) = &mut self.in_flight {
            if f.sent || f.due.is_some_and(|d| now < d) {
                return None;
            }
            f.sent = true;
            f.attempts += 1;
            self.stats.batches_retried += 1;
            return Some(Send {
                seq: f.seq,
                frames: f.frames.clone(),
            });
        }
        let probe = match self.breaker {
            Breaker::Open { .. } => return None,
            Breaker::HalfOpen => true,
            Breaker::Closed { .. } => false,
        };
        if self.queue.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut frames = Vec::new();
        let mut tickets = Vec::new();
        while let Some(q) = self.queue.front() {
            let len = q.frame.encoded_len();
            if !frames.is_empty() && bytes + len > policy.max_batch_bytes {
                break;
            }
            bytes += len;
            if let Some(q) = self.queue.pop_front() {
                frames.push(q.frame);
                tickets.extend(q.ticket);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.stats.batches_sent += 1;
        self.in_flight = Some(InFlight {
            seq,
            frames: frames.clone(),
            tickets,
            attempts: 1,
            probe,
            due: None,
            sent: true,
        });
        Some(Send { seq, frames })
    }

    /// The batch `seq` was acknowledged: returns its frames settled, their tickets to resolve
    /// as delivered (nothing for a stale acknowledgement).
    pub(crate) fn on_success(&mut self, seq: u64) -> Settled {
        match self.in_flight.take_if(|f| f.seq == seq) {
            Some(f) => {
                self.stats.frames_delivered += f.frames.len() as u64;
                self.breaker = Breaker::Closed { failures: 0 };
                Settled {
                    frames: f.frames.len(),
                    delivered: f.tickets,
                    failed: Vec::new(),
                }
            }
            None => Settled::new(0),
        }
    }

    /// The batch `seq` failed (`error`: timeout, connection, refused). Returns the frames given
    /// up, settled, if it was given up (retries used up, half-open probe failed, or the
    /// failure opened the breaker): the batch's tickets are to fail as
    /// [`AttemptsFailed`](FailureReason::AttemptsFailed), and those of the frames queued
    /// behind a batch whose failure opened the breaker as
    /// [`BreakerOpen`](FailureReason::BreakerOpen).
    pub(crate) fn on_failure(
        &mut self,
        seq: u64,
        policy: &DeliveryPolicy,
        now: Instant,
        error: AttemptError,
    ) -> Option<Settled> {
        let f = self.in_flight.as_mut().filter(|f| f.seq == seq)?;
        f.sent = false;
        let give_up = f.probe || f.attempts > policy.max_retries;
        let opens = match &mut self.breaker {
            Breaker::Closed { failures } => {
                *failures += 1;
                *failures >= policy.breaker_failures
            }
            Breaker::HalfOpen => true,
            Breaker::Open { .. } => false,
        };
        if opens {
            self.breaker = Breaker::Open {
                until: now + policy.breaker_reset,
            };
        }
        if give_up || opens {
            let f = self.in_flight.take()?;
            let reason = FailureReason::AttemptsFailed {
                attempts: f.attempts,
                last_error: error,
            };
            let mut settled = Settled::new(f.frames.len());
            for t in f.tickets {
                settled.fail(Some(t), reason);
            }
            if opens {
                // Nothing queued behind a dead peer: what waits is refused like what comes.
                settled.frames += self.queue.len();
                for q in self.queue.drain(..) {
                    settled.fail(q.ticket, FailureReason::BreakerOpen);
                }
            }
            self.stats.frames_lost += settled.frames as u64;
            return Some(settled);
        }
        f.due = Some(now + policy.backoff(f.attempts));
        None
    }

    /// Gives up everything queued and in flight (the node stops), counted lost: returns it
    /// settled, the tickets to fail as [`Shutdown`](FailureReason::Shutdown).
    pub(crate) fn abandon(&mut self) -> Settled {
        let mut settled = Settled::new(0);
        if let Some(f) = self.in_flight.take() {
            settled.frames += f.frames.len();
            for t in f.tickets {
                settled.fail(Some(t), FailureReason::Shutdown);
            }
        }
        settled.frames += self.queue.len();
        for q in self.queue.drain(..) {
            settled.fail(q.ticket, FailureReason::Shutdown);
        }
        self.stats.frames_lost += settled.frames as u64;
        settled
    }

    /// When the outbox next wants to be polled: a retry's due time or the end of the open
    /// breaker.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        match (&self.in_flight, &self.breaker) {
            (Some(f), _) if !f.sent => f.due,
            (None, Breaker::Open { until }) => Some(*until),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::delivery::{DeliveryOutcome, FailedNode, Tracking};
    use libp2p::PeerId;

    const TIMEOUT: AttemptError = AttemptError::Timeout;

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy {
            timeout: Duration::from_secs(1),
            max_retries: 2,
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_millis(150),
            breaker_failures: 5,
            breaker_reset: Duration::from_secs(10),
            max_queued_frames: 4,
            max_batch_bytes: 1000,
        }
    }

    fn frame(from: u64) -> Frame {
        Frame {
            from,
            topic: "t".into(),
            payload: bytes::Bytes::from_static(&[0; 100]),
            targets: vec![1].into(),
            call: None,
        }
    }

    #[test]
    fn one_batch_in_flight_and_the_rest_in_the_next_in_order() {
        let p = policy();
        let now = Instant::now();
        let mut o = Outbox::default();
        o.push(frame(1), None, &p, now).unwrap();
        let first = o.poll_send(&p, now).unwrap();
        assert_eq!(first.frames.len(), 1);
        o.push(frame(2), None, &p, now).unwrap();
        o.push(frame(3), None, &p, now).unwrap();
        assert!(o.poll_send(&p, now).is_none(), "one batch in flight");
        o.on_success(first.seq);
        let second = o.poll_send(&p, now).unwrap();
        assert_eq!(second.seq, first.seq + 1);
        let froms: Vec<u64> = second.frames.iter().map(|f| f.from).collect();
        assert_eq!(froms, [2, 3]);
        o.on_success(second.seq);
        assert!(o.is_idle());
        assert_eq!(o.stats.frames_delivered, 3);
    }

    #[test]
    fn a_batch_stops_at_the_byte_cap_but_takes_at_least_one_frame() {
        let mut p = policy();
        p.max_batch_bytes = 300;
        p.max_queued_frames = 100;
        let now = Instant::now();
        let mut o = Outbox::default();
        for i in 0..5 {
            o.push(frame(i), None, &p, now).unwrap();
        }
        let b = o.poll_send(&p, now).unwrap();
        assert_eq!(b.frames.len(), 2);
        p.max_batch_bytes = 1;
        o.on_success(b.seq);
        assert_eq!(o.poll_send(&p, now).unwrap().frames.len(), 1);
    }

    #[test]
    fn a_failed_batch_is_retried_with_its_sequence_after_backoff_then_given_up() {
        let p = policy();
        let t0 = Instant::now();
        let mut o = Outbox::default();
        o.push(frame(1), None, &p, t0).unwrap();
        let b = o.poll_send(&p, t0).unwrap();
        assert_eq!(o.on_failure(b.seq, &p, t0, TIMEOUT).map(|s| s.frames), None);
        assert!(o.poll_send(&p, t0).is_none(), "backoff");
        assert_eq!(o.next_due(), Some(t0 + Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        let retry = o.poll_send(&p, t1).unwrap();
        assert_eq!(retry.seq, b.seq);
        assert_eq!(o.on_failure(b.seq, &p, t1, TIMEOUT).map(|s| s.frames), None);
        assert_eq!(
            o.next_due(),
            Some(t1 + Duration::from_millis(150)),
            "capped"
        );
        let t2 = t1 + Duration::from_millis(150);
        let last = o.poll_send(&p, t2).unwrap();
        assert_eq!(last.seq, b.seq);
        assert_eq!(
            o.on_failure(b.seq, &p, t2, TIMEOUT).map(|s| s.frames),
            Some(1),
            "3 attempts = 1 + 2 retries"
        );
        assert!(o.is_idle());
        assert_eq!(o.stats.frames_lost, 1);
        assert_eq!(o.stats.batches_retried, 2);
    }

    #[test]
    fn zero_retries_gives_up_at_the_first_failure() {
        let mut p = policy();
        p.max_retries = 0;
        let now = Instant::now();
        let mut o = Outbox::default();
        o.push(frame(1), None, &p, now).unwrap();
        let b = o.poll_send(&p, now).unwrap();
        assert_eq!(
            o.on_failure(b.seq, &p, now, TIMEOUT).map(|s| s.frames),
            Some(1)
        );
    }

    #[test]
    fn the_breaker_opens_refuses_then_lets_one_probe_through() {
        let mut p = policy();
        p.max_retries = 0;
        p.breaker_failures = 2;
        p.max_queued_frames = 100;
        let t0 = Instant::now();
        let mut o = Outbox::default();
        for i in 0..2 {
            o.push(frame(i), None, &p, t0).unwrap();
            let b = o.poll_send(&p, t0).unwrap();
            o.on_failure(b.seq, &p, t0, TIMEOUT);
        }
        assert_eq!(o.breaker_state(), BreakerState::Open);
        assert_eq!(
            o.push(frame(9), None, &p, t0).map_err(|(r, _)| r),
            Err(Refused::BreakerOpen)
        );
        assert_eq!(o.next_due(), Some(t0 + p.breaker_reset));
        let t1 = t0 + p.breaker_reset;
        o.push(frame(10), None, &p, t1).unwrap();
        assert_eq!(o.breaker_state(), BreakerState::HalfOpen);
        let probe = o.poll_send(&p, t1).unwrap();
        o.push(frame(11), None, &p, t1).unwrap();
        assert!(o.poll_send(&p, t1).is_none(), "one probe only");
        // The probe fails: open again, and what waited is refused too.
        assert_eq!(
            o.on_failure(probe.seq, &p, t1, TIMEOUT).map(|s| s.frames),
            Some(2)
        );
        assert_eq!(o.breaker_state(), BreakerState::Open);
        let t2 = t1 + p.breaker_reset;
        o.push(frame(12), None, &p, t2).unwrap();
        let probe = o.poll_send(&p, t2).unwrap();
        o.on_success(probe.seq);
        assert_eq!(o.breaker_state(), BreakerState::Closed);
    }

    #[test]
    fn a_full_queue_refuses_and_counts() {
        let p = policy();
        let now = Instant::now();
        let mut o = Outbox::default();
        for i in 0..4 {
            o.push(frame(i), None, &p, now).unwrap();
        }
        assert_eq!(
            o.push(frame(5), None, &p, now).map_err(|(r, _)| r),
            Err(Refused::QueueFull)
        );
        assert_eq!(o.stats.frames_lost, 1);
    }

    #[test]
    fn a_stale_acknowledgement_changes_nothing() {
        let p = policy();
        let now = Instant::now();
        let mut o = Outbox::default();
        o.push(frame(1), None, &p, now).unwrap();
        let b = o.poll_send(&p, now).unwrap();
        o.on_success(b.seq + 7);
        assert_eq!(
            o.on_failure(b.seq + 7, &p, now, TIMEOUT).map(|s| s.frames),
            None
        );
        assert!(!o.is_idle());
    }

    /// One tracked frame for a peer: its ticket in the outbox, its handle for the test.
    fn tracked(peer: PeerId) -> (Ticket, crate::Delivery) {
        let tracking = Tracking::new();
        let ticket = tracking.ticket(peer);
        (ticket, tracking.finish(1))
    }

    fn failed(peer: PeerId, reason: FailureReason) -> Option<DeliveryOutcome> {
        Some(DeliveryOutcome::Failed {
            delivered: vec![],
            failed: vec![FailedNode { peer, reason }],
        })
    }

    #[test]
    fn an_acknowledged_batch_resolves_its_tickets_delivered() {
        let p = policy();
        let now = Instant::now();
        let peer = PeerId::random();
        let mut o = Outbox::default();
        let (t1, d1) = tracked(peer);
        let (t2, d2) = tracked(peer);
        o.push(frame(1), Some(t1), &p, now).unwrap();
        o.push(frame(2), None, &p, now).unwrap();
        o.push(frame(3), Some(t2), &p, now).unwrap();
        let b = o.poll_send(&p, now).unwrap();
        assert_eq!(b.frames.len(), 3);
        assert_eq!(d1.try_outcome(), None, "in flight");
        assert_eq!(
            o.on_failure(b.seq, &p, now, TIMEOUT).map(|s| s.frames),
            None,
            "retried"
        );
        assert_eq!(d1.try_outcome(), None, "waiting for the retry");
        let retry = o.poll_send(&p, now + p.retry_max_delay).unwrap();
        assert_eq!(o.on_success(retry.seq).frames, 3);
        assert_eq!(d1.try_outcome(), Some(DeliveryOutcome::Delivered));
        assert_eq!(d2.try_outcome(), Some(DeliveryOutcome::Delivered));
    }

    #[test]
    fn every_give_up_fails_the_ticket_with_its_reason() {
        let mut p = policy();
        p.max_queued_frames = 1;
        let peer = PeerId::random();
        let t0 = Instant::now();
        let mut o = Outbox::default();

        // Retries exhausted: 1 + max_retries attempts, the last error named.
        let (t, exhausted) = tracked(peer);
        o.push(frame(1), Some(t), &p, t0).unwrap();
        // The queue is full (one frame for this policy): refused.
        let (t, full) = tracked(peer);
        assert_eq!(
            o.push(frame(2), Some(t), &p, t0).map_err(|(r, _)| r),
            Err(Refused::QueueFull)
        );
        assert_eq!(full.try_outcome(), failed(peer, FailureReason::QueueFull));
        let mut now = t0;
        for attempt in 0..=p.max_retries {
            let b = o.poll_send(&p, now).unwrap();
            let error = if attempt == p.max_retries {
                AttemptError::Unreachable
            } else {
                TIMEOUT
            };
            o.on_failure(b.seq, &p, now, error);
            now += p.retry_max_delay;
        }
        assert_eq!(
            exhausted.try_outcome(),
            failed(
                peer,
                FailureReason::AttemptsFailed {
                    attempts: p.max_retries + 1,
                    last_error: AttemptError::Unreachable,
                }
            )
        );

        // The failure that opens the breaker fails the batch and what waits behind it.
        p.max_queued_frames = 100;
        p.breaker_failures = 1;
        let (t, in_flight) = tracked(peer);
        o.push(frame(3), Some(t), &p, now).unwrap();
        let b = o.poll_send(&p, now).unwrap();
        let (t, queued) = tracked(peer);
        o.push(frame(4), Some(t), &p, now).unwrap();
        assert_eq!(
            o.on_failure(b.seq, &p, now, TIMEOUT).map(|s| s.frames),
            Some(2)
        );
        assert_eq!(
            in_flight.try_outcome(),
            failed(
                peer,
                FailureReason::AttemptsFailed {
                    attempts: 1,
                    last_error: TIMEOUT
                }
            )
        );
        assert_eq!(
            queued.try_outcome(),
            failed(peer, FailureReason::BreakerOpen)
        );
        // While open: refused.
        let (t, refused) = tracked(peer);
        assert_eq!(
            o.push(frame(5), Some(t), &p, now).map_err(|(r, _)| r),
            Err(Refused::BreakerOpen)
        );
        assert_eq!(
            refused.try_outcome(),
            failed(peer, FailureReason::BreakerOpen)
        );
        assert_eq!(o.stats.frames_lost, 5);
    }

    #[test]
    fn abandoned_or_dropped_frames_fail_as_shutdown() {
        let p = policy();
        let now = Instant::now();
        let peer = PeerId::random();
        let mut o = Outbox::default();
        let (t, in_flight) = tracked(peer);
        o.push(frame(1), Some(t), &p, now).unwrap();
        o.poll_send(&p, now).unwrap();
        let (t, queued) = tracked(peer);
        o.push(frame(2), Some(t), &p, now).unwrap();
        assert_eq!(o.abandon().frames, 2);
        assert!(o.is_idle());
        assert_eq!(
            in_flight.try_outcome(),
            failed(peer, FailureReason::Shutdown)
        );
        assert_eq!(queued.try_outcome(), failed(peer, FailureReason::Shutdown));

        let (t, dropped) = tracked(peer);
        o.push(frame(3), Some(t), &p, now).unwrap();
        drop(o);
        assert_eq!(dropped.try_outcome(), failed(peer, FailureReason::Shutdown));
    }
}
