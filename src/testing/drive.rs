//! The core's inputs as methods, for the simulator, the harness and the core's unit tests:
//! each one is a [`ScopeCore::handle`] call with the matching [`Input`], so they drive the
//! core exactly like the application and the network layer do, with shorter lines.

use std::time::Duration;

use libp2p::PeerId;

use crate::proto::input::{DeltaOutcome, LimitError, Rejection, SyncOutcome};
use crate::proto::messages::{Delta, SyncState, Version};
use crate::proto::{Input, Outcome, Refusal, ScopeCore};
use crate::vocab::meta::Meta;

/// [`ScopeCore::handle`] by input. Local operations do not read the clock.
// The fuzz targets (built without `test`) use only part of it.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) trait Drive {
    fn join(&mut self, process: u64, groups: &[&str]) -> Result<(), LimitError>;
    /// How many slots were left.
    fn leave(&mut self, process: u64, groups: &[&str]) -> usize;
    fn exit(&mut self, process: u64);
    fn join_with(&mut self, process: u64, group: &str, meta: Meta) -> Result<(), LimitError>;
    /// Whether the process was a member.
    fn update(&mut self, process: u64, group: &str, meta: Meta) -> bool;
    fn register(
        &mut self,
        process: u64,
        name: &str,
        at_micros: u64,
        meta: Meta,
    ) -> Result<(), Refusal>;
    /// A peer shares the scope: local changes are published from now on.
    fn share(&mut self);
    /// The network layer's turn: the deltas to publish (the other outputs stay queued).
    fn take_deltas(&mut self) -> Vec<Delta>;
    fn handle_delta(
        &mut self,
        sender: PeerId,
        delta: Delta,
        now: Duration,
    ) -> Result<DeltaOutcome, Rejection>;
    fn handle_sync(
        &mut self,
        sender: PeerId,
        state: SyncState,
        now: Duration,
    ) -> Result<SyncOutcome, Rejection>;
    fn sync_failed(&mut self, origin: PeerId, now: Duration);
    fn handle_peer_version(&mut self, peer: PeerId, version: Version, now: Duration);
    fn peer_down(&mut self, peer: PeerId);
    fn tick(&mut self, now: Duration);
}

/// A peer's input is never refused for a limit, nor a local one for a rule of the protocol.
fn rejection(refusal: Refusal) -> Rejection {
    match refusal {
        Refusal::Rejected(r) => r,
        Refusal::Limit(e) => panic!("a peer's input refused for a limit: {e:?}"),
        Refusal::Taken { name, .. } => panic!("a peer's input refused for the name {name}"),
    }
}

impl Drive for ScopeCore {
    fn join_with(&mut self, process: u64, group: &str, meta: Meta) -> Result<(), LimitError> {
        let input = Input::JoinWith {
            process,
            group,
            meta,
        };
        match self.handle(input, Duration::ZERO) {
            Ok(_) => Ok(()),
            Err(Refusal::Limit(e)) => Err(e),
            Err(other) => panic!("a local join_with refused: {other}"),
        }
    }

    fn update(&mut self, process: u64, group: &str, meta: Meta) -> bool {
        let input = Input::Update {
            process,
            group,
            meta,
        };
        match self.handle(input, Duration::ZERO) {
            Ok(Outcome::NotMember) => false,
            Ok(_) => true,
            Err(other) => panic!("a local update refused: {other}"),
        }
    }

    fn register(
        &mut self,
        process: u64,
        name: &str,
        at_micros: u64,
        meta: Meta,
    ) -> Result<(), Refusal> {
        let input = Input::Register {
            process,
            name,
            at_micros,
            meta,
        };
        self.handle(input, Duration::ZERO).map(|_| ())
    }

    fn join(&mut self, process: u64, groups: &[&str]) -> Result<(), LimitError> {
        match self.handle(Input::Join { process, groups }, Duration::ZERO) {
            Ok(_) => Ok(()),
            Err(Refusal::Limit(e)) => Err(e),
            Err(Refusal::Rejected(r)) => panic!("a local join rejected: {r}"),
            Err(Refusal::Taken { .. }) => panic!("a join refused for a name"),
        }
    }

    fn leave(&mut self, process: u64, groups: &[&str]) -> usize {
        match self.handle(Input::Leave { process, groups }, Duration::ZERO) {
            Ok(Outcome::Left { slots }) => slots,
            other => panic!("a leave answered {other:?}"),
        }
    }

    fn exit(&mut self, process: u64) {
        self.handle(Input::Exit { process }, Duration::ZERO)
            .expect("an exit is never refused");
    }

    fn share(&mut self) {
        self.handle(Input::PeerShares, Duration::ZERO)
            .expect("never refused");
    }

    fn take_deltas(&mut self) -> Vec<Delta> {
        self.handle(Input::Flush, Duration::ZERO)
            .expect("never refused");
        self.take_published()
    }

    fn handle_delta(
        &mut self,
        sender: PeerId,
        delta: Delta,
        now: Duration,
    ) -> Result<DeltaOutcome, Rejection> {
        match self.handle(Input::Delta { sender, delta }, now) {
            Ok(Outcome::Delta(outcome)) => Ok(outcome),
            Ok(other) => panic!("a delta answered {other:?}"),
            Err(refusal) => Err(rejection(refusal)),
        }
    }

    fn handle_sync(
        &mut self,
        sender: PeerId,
        state: SyncState,
        now: Duration,
    ) -> Result<SyncOutcome, Rejection> {
        match self.handle(Input::Sync { sender, state }, now) {
            Ok(Outcome::Sync(outcome)) => Ok(outcome),
            Ok(other) => panic!("a sync answered {other:?}"),
            Err(refusal) => Err(rejection(refusal)),
        }
    }

    fn sync_failed(&mut self, origin: PeerId, now: Duration) {
        self.handle(Input::SyncFailed { origin }, now)
            .expect("never refused");
    }

    fn handle_peer_version(&mut self, peer: PeerId, version: Version, now: Duration) {
        self.handle(Input::PeerVersion { peer, version }, now)
            .expect("never refused");
    }

    fn peer_down(&mut self, peer: PeerId) {
        self.handle(Input::PeerDown { peer }, Duration::ZERO)
            .expect("never refused");
    }

    fn tick(&mut self, now: Duration) {
        self.handle(Input::Tick, now).expect("never refused");
    }
}
