//! Delivery of messages to other nodes' processes: batches from the per-peer outboxes, their
//! acknowledgements, failures and deadlines, and received batches delivered once to the inboxes.

use std::sync::atomic::Ordering;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::request_response::{self, OutboundRequestId};

use crate::net::wire::{DeliverAck, DeliverBatch};
use crate::vocab::delivery::AttemptError;

use super::{BatchInFlight, Behaviour, LastBatch};

impl Behaviour {
    pub(super) fn pump(&mut self, peer: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        while let Some(send) = p.outbox.poll_send(&self.policy, now) {
            let batch = DeliverBatch {
                incarnation: self.incarnation,
                seq: send.seq,
                frames: send.frames,
            };
            let id = self.protocols.others.deliver.send_request(&peer, batch);
            let in_flight = BatchInFlight {
                peer,
                seq: send.seq,
                deadline: now + self.policy.timeout,
            };
            self.deliver_out.insert(id, in_flight);
        }
    }

    pub(super) fn on_deliver_event(
        &mut self,
        event: request_response::Event<DeliverBatch, DeliverAck>,
    ) {
        let now = Instant::now();
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let seq = request.seq;
                    self.on_batch(peer, request);
                    if self
                        .protocols
                        .others
                        .deliver
                        .send_response(channel, DeliverAck { seq })
                        .is_err()
                    {
                        tracing::debug!(%peer, "delivery ack not sent: the connection closed");
                    }
                }
                request_response::Message::Response { request_id, .. } => {
                    if let Some(BatchInFlight { peer, seq, .. }) =
                        self.deliver_out.remove(&request_id)
                        && let Some(p) = self.peers.get_mut(&peer)
                    {
                        let done = p.outbox.on_success(seq);
                        self.shared
                            .queued_frames
                            .fetch_sub(done.frames, Ordering::Relaxed);
                        self.shared
                            .stats
                            .frames_sent
                            .fetch_add(done.frames as u64, Ordering::Relaxed);
                        // Counted: now the deliveries may learn it.
                        done.settle();
                        self.pump(peer, now);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(BatchInFlight { peer, seq, .. }) = self.deliver_out.remove(&request_id)
                {
                    tracing::debug!(%peer, seq, %error, "delivery batch failed");
                    self.delivery_failed(peer, seq, now, attempt_error(&error));
                }
            }
            // A malformed request is counted by the codec (request-response reports no
            // failure for it); what is left here is a stream that failed otherwise.
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound delivery failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// A batch failed (an error, or no answer within the policy's timeout): retried later or given
    /// up, as the outbox decides (which then fails the deliveries of its frames).
    pub(super) fn delivery_failed(
        &mut self,
        peer: PeerId,
        seq: u64,
        now: Instant,
        error: AttemptError,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if let Some(lost) = p.outbox.on_failure(seq, &self.policy, now, error) {
            self.shared
                .queued_frames
                .fetch_sub(lost.frames, Ordering::Relaxed);
            self.shared
                .stats
                .frames_lost
                .fetch_add(lost.frames as u64, Ordering::Relaxed);
            tracing::warn!(%peer, lost = lost.frames, "delivery given up");
            // Counted: now the deliveries may learn it.
            lost.settle();
        }
        self.pump(peer, now);
    }

    /// Batches unanswered past the policy's timeout (the longest `broadcast_timeout`, also
    /// request-response's `deliver_timeout`) fail now. request-response's own timeout
    /// starts only once the stream is negotiated, which a peer that never reads can put off
    /// for the swarm's 10 s upgrade timeout. The batch keeps its sequence number, so a late
    /// first copy and its retry are still delivered once; a late answer is ignored.
    pub(super) fn expire_deliveries(&mut self, now: Instant) {
        let expired: Vec<OutboundRequestId> = self
            .deliver_out
            .iter()
            .filter(|(_, batch)| batch.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(BatchInFlight { peer, seq, .. }) = self.deliver_out.remove(&id) {
                tracing::debug!(%peer, seq, "delivery batch unanswered within the timeout");
                self.delivery_failed(peer, seq, now, AttemptError::Timeout);
            }
        }
    }

    /// Delivers a batch once: a retried batch (same incarnation, a sequence already seen) is
    /// acknowledged again but not delivered again.
    pub(super) fn on_batch(&mut self, peer: PeerId, batch: DeliverBatch) {
        if let Some(last) = self.received.get(&peer)
            && last.incarnation == batch.incarnation
            && batch.seq <= last.seq
        {
            self.shared
                .stats
                .batches_duplicate
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let last = LastBatch {
            incarnation: batch.incarnation,
            seq: batch.seq,
        };
        self.received.insert(peer, last);
        let count =
            self.processes
                .deliver_batch(peer, batch.frames, &self.shared.stats.messages_dropped);
        self.shared
            .stats
            .frames_received
            .fetch_add(count, Ordering::Relaxed);
    }
}

/// What a failed attempt tells the delivery's caller.
fn attempt_error(error: &request_response::OutboundFailure) -> AttemptError {
    use request_response::OutboundFailure as F;
    match error {
        F::DialFailure => AttemptError::Unreachable,
        F::Timeout => AttemptError::Timeout,
        F::ConnectionClosed => AttemptError::ConnectionClosed,
        F::UnsupportedProtocols => AttemptError::Unsupported,
        F::Io(_) => AttemptError::Io,
    }
}
