//! Deltas: the scopes' changes published on gossipsub, and peers' deltas validated (the
//! origin must be the message's signed source) and handed to the cores.

use std::sync::atomic::Ordering;

use libp2p::PeerId;
use libp2p::gossipsub::{self, MessageAcceptance};

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

    pub(super) fn publish_delta(&mut self, scope: usize, delta: Delta) {
        let mut data = Vec::new();
        if let Err(e) = ciborium::into_writer(&delta, &mut data) {
            tracing::error!(error = %e, "cannot encode a delta");
            return;
        }
        let topic = self.scopes[scope].topic.clone();
        match self.protocols.gossipsub.publish(topic, data) {
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
        self.protocols.gossipsub.report_message_validation_result(
            &id,
            &propagation_source,
            acceptance,
        );
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

    /// `peer` hosts `scope`: keep its connections, publish our changes for it.
    pub(super) fn note_sharing(&mut self, peer: PeerId, scope: usize) {
        if peer == self.me {
            return;
        }
        let p = self.peers.entry(peer).or_default();
        if p.scopes.insert(scope) {
            self.scopes[scope].peers.push(peer);
            self.protocols.keep_alive.set(peer, true);
            self.relaying.admission.add(peer);
            self.feed(scope, Input::PeerShares).ok();
            self.reserve_if_useful(peer);
        }
    }
}
