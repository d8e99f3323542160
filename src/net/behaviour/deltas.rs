//! Deltas: the scopes' changes written to the delta streams of the peers this node is
//! connected to, and published on gossipsub for the others; peers' deltas validated (the
//! origin must be the authenticated sender: the stream's peer, or the gossipsub message's
//! signed source) and handed to the cores.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use libp2p::PeerId;
use libp2p::gossipsub::{self, MessageAcceptance};

use crate::net::delta_stream::DeltaStreamEvent;
use crate::net::wire::{DeltaFrame, DeltaFrameRef};
use crate::proto::messages::Delta;
use crate::proto::{Input, Outcome, Output, Refusal};
use crate::vocab::error::Result;

use super::Behaviour;

impl Behaviour {
    /// The network layer's turn: every scope's queued local changes go out as deltas.
    pub(super) fn publish_deltas(&mut self) {
        for i in 0..self.scopes.len() {
            self.feed(i, Input::Flush).ok();
        }
    }

    /// Sends `delta` on the delta stream of every peer of the scope that has one open, and
    /// publishes it on gossipsub as well if any peer of the scope has none (it is not
    /// connected, its stream is still opening or full, or it does not speak the protocol):
    /// gossipsub reaches it, directly or through others. A peer that gets it both ways takes
    /// it once (the core's versions).
    pub(super) fn publish_delta(&mut self, scope: usize, delta: Delta) {
        let net = &self.scopes[scope];
        let mut frame = Vec::new();
        let framed = DeltaFrameRef {
            scope: net.scope.id(),
            delta: &delta,
        };
        if let Err(e) = ciborium::into_writer(&framed, &mut frame) {
            tracing::error!(error = %e, "cannot encode a delta");
            return;
        }
        let frame = Bytes::from(frame);
        let mut gossip = net.peers.is_empty();
        let mut streamed = 0;
        for peer in &net.peers {
            match self.protocols.delta_streams.send(*peer, frame.clone()) {
                Ok(()) => streamed += 1,
                Err(_) => gossip = true,
            }
        }
        let counters = net.scope.counters();
        counters
            .deltas_streamed
            .fetch_add(streamed, Ordering::Relaxed);
        if gossip {
            self.gossip_delta(scope, delta);
        }
    }

    fn gossip_delta(&mut self, scope: usize, delta: Delta) {
        let mut data = Vec::new();
        if let Err(e) = ciborium::into_writer(&delta, &mut data) {
            tracing::error!(error = %e, "cannot encode a delta");
            return;
        }
        let topic = self.scopes[scope].topic.clone();
        match self.protocols.others.gossipsub.publish(topic, data) {
            Ok(_) => {
                self.scopes[scope]
                    .scope
                    .counters()
                    .deltas_published
                    .fetch_add(1, Ordering::Relaxed);
            }
            // Peers that miss it see the gap or a newer version and pull a sync.
            Err(e) => {
                tracing::debug!(scope = %self.scopes[scope].scope.id(), seq = delta.seq, error = %e, "delta not published")
            }
        }
    }

    /// Hands `input` to scope `scope`'s core and carries out what the core asks.
    pub(super) fn feed(&mut self, scope: usize, input: Input<'_>) -> Result<Outcome, Refusal> {
        let mut outputs = std::mem::take(&mut self.outputs);
        let result = self.scopes[scope].scope.handle(input, &mut outputs);
        for output in outputs.drain(..) {
            match output {
                Output::Publish(delta) => self.publish_delta(scope, delta),
                Output::RequestSync { peer } => self.request_sync(peer, scope, 0, None),
                Output::Timer { at } => {
                    let next = &mut self.scopes[scope].next_tick;
                    *next = Some(next.map_or(at, |t| t.min(at)));
                }
                // The host gives the changes to its subscribers, and tells the processes that
                // lost a name.
                Output::Changed(_) | Output::NameLost { .. } => {}
            }
        }
        // A nested feed (a sync request that fails at once) took a buffer of its own.
        if self.outputs.capacity() < outputs.capacity() {
            self.outputs = outputs;
        }
        result
    }

    pub(super) fn on_gossip_message(
        &mut self,
        propagation_source: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let acceptance = self.accept_delta(&message);
        self.protocols
            .others
            .gossipsub
            .report_message_validation_result(&id, &propagation_source, acceptance);
    }

    pub(super) fn accept_delta(&mut self, message: &gossipsub::Message) -> MessageAcceptance {
        let Some(&scope) = self.by_topic.get(&message.topic) else {
            return MessageAcceptance::Ignore;
        };
        // The core counts what it rejects; what never reaches it is counted here.
        let rejected = &self.scopes[scope].scope.counters().deltas_rejected;
        let Some(source) = message.source else {
            rejected.fetch_add(1, Ordering::Relaxed);
            return MessageAcceptance::Reject;
        };
        if !self.admits(&source) {
            rejected.fetch_add(1, Ordering::Relaxed);
            return MessageAcceptance::Reject;
        }
        let delta: Delta = match ciborium::from_reader(&message.data[..]) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%source, error = %e, "malformed delta");
                rejected.fetch_add(1, Ordering::Relaxed);
                self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
                return MessageAcceptance::Reject;
            }
        };
        match self.feed(
            scope,
            Input::Delta {
                sender: source,
                delta,
            },
        ) {
            Ok(_) => {
                self.note_sharing(source, scope);
                MessageAcceptance::Accept
            }
            Err(rejection) => {
                tracing::warn!(%source, scope = %self.scopes[scope].scope.id(), %rejection, "delta rejected");
                MessageAcceptance::Reject
            }
        }
    }

    pub(super) fn on_delta_stream_event(&mut self, event: DeltaStreamEvent) {
        match event {
            DeltaStreamEvent::Frame { peer, data } => self.on_delta_frame(peer, &data),
            DeltaStreamEvent::Opened { peer } => {
                tracing::debug!(%peer, "delta stream open");
                self.delta_streams_open.insert(peer);
                self.share_delta_streams_open();
            }
            DeltaStreamEvent::Closed { peer, lost_frames } => {
                tracing::debug!(%peer, lost_frames, "delta stream closed");
                self.delta_streams_open.remove(&peer);
                self.share_delta_streams_open();
                self.shared
                    .stats
                    .delta_frames_lost
                    .fetch_add(lost_frames as u64, Ordering::Relaxed);
                // The peer may not see a gap until our next change: tell it our versions now
                // (if the connection is gone, the next one does).
                if lost_frames > 0 && self.peers.get(&peer).is_some_and(|p| p.is_connected()) {
                    self.send_discover(peer, None);
                }
            }
            DeltaStreamEvent::Malformed { peer, error } => {
                tracing::warn!(%peer, %error, "malformed delta stream");
                self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn share_delta_streams_open(&self) {
        self.shared
            .delta_streams_open
            .store(self.delta_streams_open.len(), Ordering::Relaxed);
    }

    /// A frame of `peer`'s delta stream: a delta the core checks against `peer`, the
    /// connection's authenticated end.
    fn on_delta_frame(&mut self, peer: PeerId, data: &[u8]) {
        // As gossipsub does with its RPCs.
        if self.protocols.others.gossipsub.is_graylisted(&peer) {
            self.protocols.others.gossipsub.count_dropped_frame();
            return;
        }
        let frame: DeltaFrame = match ciborium::from_reader(data) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "malformed delta frame");
                self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
                // What gossipsub would reject and score.
                self.protocols.others.gossipsub.penalize_direct(peer);
                return;
            }
        };
        let Some(&scope) = self.by_id.get(&frame.scope) else {
            // Peers send deltas only for the scopes we told them we host.
            tracing::warn!(%peer, scope = %frame.scope, "delta frame of a scope not hosted here");
            self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let input = Input::Delta {
            sender: peer,
            delta: frame.delta,
        };
        match self.feed(scope, input) {
            Ok(_) => self.note_sharing(peer, scope),
            Err(rejection) => {
                tracing::warn!(%peer, scope = %self.scopes[scope].scope.id(), %rejection, "streamed delta rejected");
                self.protocols.others.gossipsub.penalize_direct(peer);
            }
        }
    }

    /// `peer` hosts `scope`: keep its connections, publish our changes for it.
    pub(super) fn note_sharing(&mut self, peer: PeerId, scope: usize) {
        if peer == self.me {
            return;
        }
        let p = self.peers.entry(peer).or_default();
        if p.scopes.insert(scope) {
            self.scopes[scope].peers.push(peer);
            self.protocols.others.keep_alive.set(peer, true);
            self.protocols.delta_streams.want(peer);
            self.relaying.admission.add(peer);
            self.feed(scope, Input::PeerShares).ok();
            self.reserve_if_useful(peer);
        }
    }
}
