//! The behaviour driven without sockets: connection, request and gossip events are injected
//! as the swarm would hand them over, against test doubles of the scope and the inboxes
//! (`testing::hosts`), and the tests check what the behaviour asks for and what it changes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::noop_waker_ref;
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::gossipsub::{self, MessageAcceptance};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
use libp2p::swarm::{ConnectionId, FromSwarm, NetworkBehaviour, ToSwarm};
use libp2p::{Multiaddr, PeerId};

use super::{Behaviour, NetConfig, SyncOut, build};
use crate::net::handle::{Command, NetHandle, NetShared};
use crate::net::host::{InboxSink, ScopeHost};
use crate::net::outbox::DeliveryPolicy;
use crate::net::peer::Standing;
use crate::net::protocols::{BehaviourConfig, scope_topic};
use crate::net::wire::{DeliverAck, DeliverBatch, Frame, SyncResponse};
use crate::proto::messages::{Delta, Op, Version};
use crate::testing::hosts::{RecordingInbox, TestScope};
use crate::vocab::config::ScopeConfig;
use crate::vocab::delivery::{
    AttemptError, Delivery, DeliveryOutcome, FailedNode, FailureReason, Tracking,
};
use crate::vocab::pid::Pid;

const SCOPE: &str = "test:unit";
const GRACE: Duration = Duration::from_millis(300);

struct Rig {
    behaviour: Behaviour,
    /// The application's side: keeps the behaviour's command channel open, and hands it
    /// frames as the application does.
    handle: NetHandle,
    shared: Arc<NetShared>,
    scope: Arc<TestScope>,
    inbox: Arc<RecordingInbox>,
    connections: usize,
}

fn rig(allowed: Option<Vec<PeerId>>) -> Rig {
    let keypair = Keypair::generate_ed25519();
    let me = keypair.public().to_peer_id();
    let config = ScopeConfig::builder()
        .node_down_grace(GRACE)
        .build()
        .expect("a valid config");
    let scope = TestScope::new(SCOPE, config.clone(), me);
    let inbox = Arc::new(RecordingInbox::default());
    let shared = Arc::new(NetShared::default());
    let network = BehaviourConfig {
        mdns: false,
        ..BehaviourConfig::default()
    };
    let policy = DeliveryPolicy::from_scopes([&config], network.max_request_bytes / 2);
    let (behaviour, handle) = build(
        NetConfig {
            keypair,
            bootstrap: Vec::new(),
            behaviour: network,
            policy,
            incarnation: 1,
            allowed: allowed.map(|peers| peers.into_iter().collect()),
        },
        vec![scope.clone() as Arc<dyn ScopeHost>],
        inbox.clone() as Arc<dyn InboxSink>,
        shared.clone(),
    )
    .expect("a behaviour");
    Rig {
        behaviour,
        handle,
        shared,
        scope,
        inbox,
        connections: 0,
    }
}

fn addr(port: u16) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}")
        .parse()
        .expect("multiaddr")
}

impl Rig {
    /// The swarm reports a new inbound connection from `peer`.
    fn connect(&mut self, peer: PeerId) -> ConnectionId {
        self.connections += 1;
        let id = ConnectionId::new_unchecked(self.connections);
        let endpoint = ConnectedPoint::Listener {
            local_addr: addr(1),
            send_back_addr: addr(2),
        };
        // As the swarm does: the handler first (the protocols count the connection), then
        // the event.
        let handler =
            self.behaviour
                .handle_established_inbound_connection(id, peer, &addr(1), &addr(2));
        assert!(handler.is_ok(), "the connection is admitted");
        self.behaviour
            .on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id: peer,
                connection_id: id,
                endpoint: &endpoint,
                failed_addresses: &[],
                other_established: 0,
            }));
        id
    }

    fn disconnect(&mut self, peer: PeerId, id: ConnectionId) {
        let endpoint = ConnectedPoint::Listener {
            local_addr: addr(1),
            send_back_addr: addr(2),
        };
        self.behaviour
            .on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id: peer,
                connection_id: id,
                endpoint: &endpoint,
                cause: None,
                remaining_established: 0,
            }));
    }

    /// Polls the behaviour until it has nothing more to do; returns the dials it asked for.
    fn poll_dials(&mut self) -> Vec<Option<PeerId>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut dials = Vec::new();
        for _ in 0..1000 {
            match self.behaviour.poll(&mut cx) {
                Poll::Ready(ToSwarm::Dial { opts }) => dials.push(opts.get_peer_id()),
                Poll::Ready(_) => {}
                Poll::Pending => return dials,
            }
        }
        panic!("the behaviour never stopped asking for something");
    }

    fn discovers_sent(&self) -> usize {
        self.behaviour
            .sync_out
            .values()
            .filter(|o| matches!(o, SyncOut::Discover))
            .count()
    }

    fn syncs_sent_to(&self, peer: PeerId) -> usize {
        self.behaviour
            .sync_out
            .values()
            .filter(|o| matches!(o, SyncOut::Sync { peer: p, .. } if *p == peer))
            .count()
    }

    fn gossip(&mut self, source: Option<PeerId>, delta: &Delta) -> MessageAcceptance {
        let mut data = Vec::new();
        ciborium::into_writer(delta, &mut data).expect("a delta encodes");
        let message = gossipsub::Message {
            source,
            data,
            sequence_number: Some(1),
            topic: scope_topic(SCOPE).hash(),
        };
        self.behaviour.accept_delta(&message)
    }
}

/// A delta of `origin` (incarnation 1) joining its process `id` to `group`.
fn join_delta(origin: PeerId, seq: u64, group: &str, id: u64) -> Delta {
    Delta {
        origin,
        incarnation: 1,
        seq,
        groups: vec![group.into()],
        ops: vec![Op {
            group: 0,
            id,
            change: 1,
            meta: None,
        }],
    }
}

fn member(group: &str, peer: PeerId, id: u64) -> crate::testing::harness::View {
    [(group.to_string(), [(Pid::new(peer, id), 1)].into())].into()
}

#[tokio::test]
async fn every_new_connection_gets_a_discover_at_most_eight_at_once() {
    let mut rig = rig(None);
    let peers: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
    for peer in &peers {
        rig.connect(*peer);
    }
    assert_eq!(rig.discovers_sent(), super::MAX_DISCOVERS_IN_FLIGHT);
    assert_eq!(
        rig.behaviour.discover_queue.len(),
        2,
        "the rest wait their turn"
    );
    let connected: std::collections::HashSet<PeerId> = rig
        .shared
        .connected
        .read()
        .unwrap()
        .keys()
        .copied()
        .collect();
    assert_eq!(connected, peers.iter().copied().collect());
}

#[tokio::test]
async fn a_peer_not_on_the_allow_list_is_refused_and_counted() {
    let friend = PeerId::random();
    let mut rig = rig(Some(vec![friend]));
    let outsider = PeerId::random();
    let inbound = |rig: &mut Rig, peer| {
        rig.behaviour
            .handle_established_inbound_connection(
                ConnectionId::new_unchecked(99),
                peer,
                &addr(1),
                &addr(2),
            )
            .is_ok()
    };
    assert!(!inbound(&mut rig, outsider));
    assert!(inbound(&mut rig, friend));
    assert!(
        rig.behaviour
            .handle_established_outbound_connection(
                ConnectionId::new_unchecked(100),
                outsider,
                &addr(3),
                Endpoint::Dialer,
                PortUse::Reuse,
            )
            .is_err()
    );
    assert_eq!(rig.shared.stats.peers_refused.load(Ordering::Relaxed), 2);
    // Its deltas are refused too, even relayed by an admitted peer.
    let delta = join_delta(outsider, 1, "g", 7);
    assert_eq!(
        rig.gossip(Some(outsider), &delta),
        MessageAcceptance::Reject
    );
    assert!(rig.scope.members().is_empty());
}

#[tokio::test]
async fn a_disconnected_peer_is_not_dialed_until_the_application_dials_it() {
    let mut rig = rig(None);
    let peer = PeerId::random();
    let id = rig.connect(peer);
    rig.behaviour.on_command(Command::Disconnect(peer));
    rig.disconnect(peer, id);
    let dial = |rig: &mut Rig| {
        rig.behaviour
            .handle_pending_outbound_connection(
                ConnectionId::new_unchecked(50),
                Some(peer),
                &[],
                Endpoint::Dialer,
            )
            .is_ok()
    };
    assert!(
        !dial(&mut rig),
        "any dial of a disconnected peer is refused"
    );
    assert_eq!(rig.behaviour.peers[&peer].redial, None);
    rig.behaviour
        .on_command(Command::Dial(addr(4).with(Protocol::P2p(peer))));
    assert!(dial(&mut rig));
    assert_eq!(rig.behaviour.peers[&peer].standing, Standing::Known);
}

#[tokio::test]
async fn a_delta_is_taken_only_from_its_origin() {
    let mut rig = rig(None);
    let origin = PeerId::random();
    let relay = PeerId::random();
    let delta = join_delta(origin, 1, "g", 7);

    assert_eq!(rig.gossip(None, &delta), MessageAcceptance::Reject);
    assert_eq!(rig.gossip(Some(relay), &delta), MessageAcceptance::Reject);
    assert!(
        rig.scope.members().is_empty(),
        "a forged delta changes nothing"
    );
    let rejected = rig.scope.counters().deltas_rejected.load(Ordering::Relaxed);
    assert_eq!(rejected, 1, "the unsigned one, refused before the core");

    assert!(!rig.scope.is_publishing());
    assert_eq!(rig.gossip(Some(origin), &delta), MessageAcceptance::Accept);
    assert_eq!(rig.scope.members(), member("g", origin, 7));
    assert!(rig.behaviour.peers[&origin].scopes.contains(&0));
    assert!(
        rig.scope.is_publishing(),
        "a peer shares the scope: publish from now on"
    );

    let mut garbage = rig_message(b"not cbor");
    garbage.source = Some(origin);
    assert_eq!(
        rig.behaviour.accept_delta(&garbage),
        MessageAcceptance::Reject
    );
    assert_eq!(rig.shared.stats.malformed.load(Ordering::Relaxed), 1);
}

fn rig_message(data: &[u8]) -> gossipsub::Message {
    gossipsub::Message {
        source: None,
        data: data.to_vec(),
        sequence_number: None,
        topic: scope_topic(SCOPE).hash(),
    }
}

#[tokio::test]
async fn a_discover_answer_pulls_what_differs_and_meets_the_peers_it_names() {
    let mut rig = rig(None);
    let peer = PeerId::random();
    let other = PeerId::random();
    rig.connect(peer);
    let (&id, _) = rig
        .behaviour
        .sync_out
        .iter()
        .find(|(_, o)| matches!(o, SyncOut::Discover))
        .expect("a Discover in flight");
    let answer = SyncResponse::Discover {
        scopes: vec![(
            SCOPE.to_string(),
            Version {
                incarnation: 1,
                seq: 3,
            },
        )],
        peers: vec![(other, vec![addr(5)])],
    };
    rig.behaviour.on_sync_response(peer, id, answer);
    assert_eq!(
        rig.syncs_sent_to(peer),
        1,
        "the peer's state differs: pull it"
    );
    assert_eq!(rig.behaviour.discovers_in_flight, 0);
    assert_eq!(rig.behaviour.peers[&other].standing, Standing::Told);
    assert!(
        rig.poll_dials().contains(&Some(other)),
        "a named peer is dialed"
    );

    // An answer that does not fit its request is malformed input.
    rig.connect(other);
    let (&id, _) = rig
        .behaviour
        .sync_out
        .iter()
        .find(|(_, o)| matches!(o, SyncOut::Discover))
        .expect("a Discover to the new peer");
    rig.behaviour.on_sync_response(other, id, SyncResponse::Ack);
    assert_eq!(rig.shared.stats.malformed.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_delivery_batch_is_delivered_once() {
    let mut rig = rig(None);
    let peer = PeerId::random();
    let batch = DeliverBatch {
        incarnation: 9,
        seq: 1,
        frames: vec![Frame {
            from: 3,
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"\x01"),
            targets: vec![5, 5, 6].into(),
            call: None,
        }],
    };
    rig.behaviour.on_batch(peer, batch.clone());
    rig.behaviour.on_batch(peer, batch.clone());
    let frames = rig.inbox.frames.lock().unwrap().clone();
    assert_eq!(frames, vec![(peer, batch.frames[0].clone())]);
    let stats = &rig.shared.stats;
    assert_eq!(stats.batches_duplicate.load(Ordering::Relaxed), 1);
    assert_eq!(stats.frames_received.load(Ordering::Relaxed), 3);
    // A new incarnation of the sender starts its sequence again.
    rig.behaviour.on_batch(
        peer,
        DeliverBatch {
            incarnation: 10,
            ..batch
        },
    );
    assert_eq!(rig.inbox.frames.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_lost_peer_is_purged_after_the_grace_and_redialed() {
    let mut rig = rig(None);
    let peer = PeerId::random();
    let id = rig.connect(peer);
    let delta = join_delta(peer, 1, "g", 7);
    assert_eq!(rig.gossip(Some(peer), &delta), MessageAcceptance::Accept);
    rig.disconnect(peer, id);
    let lost = Instant::now();
    assert!(
        rig.behaviour.peers[&peer].redial.is_some(),
        "a lost peer is redialed"
    );

    rig.behaviour.node_down(lost + GRACE / 2);
    assert_eq!(
        rig.scope.members(),
        member("g", peer, 7),
        "inside the grace"
    );
    rig.behaviour.publish_views(lost + GRACE / 2);
    let unreachable = rig.scope.view.lock().unwrap().unreachable.clone();
    assert_eq!(
        unreachable.iter().map(|u| u.peer).collect::<Vec<_>>(),
        [peer]
    );

    rig.behaviour.node_down(lost + GRACE * 2);
    assert!(rig.scope.members().is_empty(), "purged after the grace");
}

#[tokio::test]
async fn sync_pages_come_from_one_state() {
    let mut rig = rig(None);
    for id in 0..50 {
        rig.scope.join(id, &format!("group-{id:03}"));
    }
    rig.behaviour.page_bytes = 256;
    let peer = PeerId::random();
    let SyncResponse::Page { version, pages, .. } = rig.behaviour.serve_sync(peer, SCOPE, 0, None)
    else {
        panic!("page 0 served");
    };
    assert!(pages > 2, "{pages} pages");
    assert!(matches!(
        rig.behaviour.serve_sync(peer, SCOPE, 1, Some(version)),
        SyncResponse::Page { page: 1, .. }
    ));
    let other = Version {
        seq: version.seq + 1,
        ..version
    };
    assert!(matches!(
        rig.behaviour.serve_sync(peer, SCOPE, 2, Some(other)),
        SyncResponse::Refused { .. }
    ));
    assert!(matches!(
        rig.behaviour.serve_sync(peer, "test:elsewhere", 0, None),
        SyncResponse::Refused { .. }
    ));
}

/// A relayed address: through `relay` to `peer`.
fn circuit(relay: PeerId, peer: PeerId) -> Multiaddr {
    addr(3)
        .with(Protocol::P2p(relay))
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(peer))
}

impl Rig {
    /// A peer of the scope that relays (its identify info lists the hop protocol), directly
    /// connected, at `addr(port)`.
    fn relay_of_the_scope(&mut self, port: u16) -> PeerId {
        let relay = PeerId::random();
        self.connect(relay);
        self.behaviour
            .peers
            .get_mut(&relay)
            .expect("connected")
            .remember(addr(port));
        self.behaviour.note_sharing(relay, 0);
        self.behaviour
            .note_relay_protocols(relay, &[libp2p::relay::HOP_PROTOCOL_NAME]);
        relay
    }

    /// The swarm reports an outbound connection to `peer` at `address`.
    fn dialed(&mut self, peer: PeerId, address: Multiaddr) -> ConnectionId {
        self.connections += 1;
        let id = ConnectionId::new_unchecked(self.connections);
        let endpoint = ConnectedPoint::Dialer {
            address: address.clone(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        };
        let handler = self.behaviour.handle_established_outbound_connection(
            id,
            peer,
            &address,
            Endpoint::Dialer,
            PortUse::Reuse,
        );
        assert!(handler.is_ok(), "the connection is admitted");
        self.behaviour
            .on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id: peer,
                connection_id: id,
                endpoint: &endpoint,
                failed_addresses: &[],
                other_established: 0,
            }));
        id
    }

    fn dial_failed(&mut self, peer: PeerId, connection_id: ConnectionId) {
        self.behaviour.on_swarm_event(FromSwarm::DialFailure(
            libp2p::swarm::behaviour::DialFailure {
                peer_id: Some(peer),
                error: &libp2p::swarm::DialError::Aborted,
                connection_id,
            },
        ));
    }

    /// Polls the behaviour until it has nothing more to do; returns its dials and listeners.
    fn poll_actions(&mut self) -> (Vec<libp2p::swarm::dial_opts::DialOpts>, Vec<Multiaddr>) {
        let mut cx = Context::from_waker(noop_waker_ref());
        let (mut dials, mut listens) = (Vec::new(), Vec::new());
        for _ in 0..1000 {
            match self.behaviour.poll(&mut cx) {
                Poll::Ready(ToSwarm::Dial { opts }) => dials.push(opts),
                Poll::Ready(ToSwarm::ListenOn { opts }) => listens.push(opts.address().clone()),
                Poll::Ready(_) => {}
                Poll::Pending => return (dials, listens),
            }
        }
        panic!("the behaviour never stopped asking for something");
    }
}

#[tokio::test]
async fn relays_of_the_scope_are_asked_for_reservations_up_to_the_limit() {
    let mut rig = rig(None);
    rig.behaviour.relaying.client = true;
    let first = rig.relay_of_the_scope(7);
    let second = rig.relay_of_the_scope(8);
    let (_, listens) = rig.poll_actions();
    assert_eq!(
        listens,
        [
            addr(7)
                .with(Protocol::P2p(first))
                .with(Protocol::P2pCircuit),
            addr(8)
                .with(Protocol::P2p(second))
                .with(Protocol::P2pCircuit)
        ],
        "a reservation at each relay of the scope"
    );
    rig.relay_of_the_scope(9);
    let (_, listens) = rig.poll_actions();
    assert!(
        listens.is_empty(),
        "no more than crate::net::relay::DEFAULT_RESERVATIONS"
    );

    // A relay that is not a peer of the scope is not asked.
    let mut rig = self::rig(None);
    rig.behaviour.relaying.client = true;
    let outsider = PeerId::random();
    rig.connect(outsider);
    rig.behaviour
        .peers
        .get_mut(&outsider)
        .expect("connected")
        .remember(addr(7));
    rig.behaviour
        .note_relay_protocols(outsider, &[libp2p::relay::HOP_PROTOCOL_NAME]);
    assert!(rig.poll_actions().1.is_empty());
}

#[tokio::test]
async fn a_peer_that_cannot_be_dialed_is_dialed_through_a_relay_once_per_attempt() {
    let mut rig = rig(None);
    rig.behaviour.relaying.client = true;
    let relay = rig.relay_of_the_scope(7);
    rig.poll_actions();
    let peer = PeerId::random();
    rig.behaviour
        .peers
        .entry(peer)
        .or_default()
        .remember(addr(9));
    rig.behaviour.peers.get_mut(&peer).unwrap().scopes.insert(0);

    rig.dial_failed(peer, ConnectionId::new_unchecked(1000));
    let (dials, _) = rig.poll_actions();
    assert_eq!(dials.len(), 1, "one dial through the relays");
    assert_eq!(dials[0].get_peer_id(), Some(peer));
    let relayed = dials[0].connection_id();
    assert!(rig.behaviour.relaying.relayed_dials.contains(&relayed));

    rig.dial_failed(peer, relayed);
    let (dials, _) = rig.poll_actions();
    assert!(dials.is_empty(), "a failed relayed dial ends the attempt");
    assert!(
        rig.behaviour.peers[&peer].redial.is_some(),
        "and the peer is redialed later"
    );

    // Connected through the relay: reached, relayed.
    let id = rig.dialed(peer, circuit(relay, peer));
    assert_eq!(
        rig.shared.connected.read().unwrap().get(&peer),
        Some(&crate::net::relay::Reach::Relayed)
    );
    rig.behaviour.publish_views(Instant::now());
    let view = rig.scope.view.lock().unwrap().clone();
    assert_eq!((view.peers, view.relayed), (2, 1), "the relay and the peer");
    let _ = id;
}

#[tokio::test]
async fn a_direct_connection_replaces_the_relayed_one() {
    let mut rig = rig(None);
    let relay = PeerId::random();
    let peer = PeerId::random();
    let relayed = rig.dialed(peer, circuit(relay, peer));
    rig.poll_actions();
    rig.dialed(peer, addr(9));
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut closed = Vec::new();
    for _ in 0..1000 {
        match rig.behaviour.poll(&mut cx) {
            Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: libp2p::swarm::CloseConnection::One(id),
            }) => closed.push((peer_id, id)),
            Poll::Ready(_) => {}
            Poll::Pending => break,
        }
    }
    assert_eq!(
        closed,
        [(peer, relayed)],
        "the relayed connection is closed"
    );
    assert_eq!(
        rig.shared.connected.read().unwrap().get(&peer),
        Some(&crate::net::relay::Reach::Direct)
    );
}

impl Rig {
    /// Hands the behaviour a frame for `peer` as the application does (through the handle,
    /// with a ticket), and lets it take the command; returns the frame's delivery.
    fn send_tracked(&mut self, peer: PeerId) -> Delivery {
        let tracking = Tracking::new();
        let frame = Frame {
            from: 3,
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"\x01"),
            targets: vec![5].into(),
            call: None,
        };
        self.handle
            .deliver(peer, frame, Some(tracking.ticket(peer)))
            .expect("queued");
        self.poll_dials();
        tracking.finish(1)
    }

    /// The one delivery batch in flight: its request and sequence number.
    fn batch_in_flight(&self) -> (OutboundRequestId, u64) {
        assert_eq!(self.behaviour.deliver_out.len(), 1, "one batch in flight");
        let (id, batch) = self.behaviour.deliver_out.iter().next().expect("a batch");
        (*id, batch.seq)
    }

    fn deliver_event(&mut self, event: request_response::Event<DeliverBatch, DeliverAck>) {
        self.behaviour.on_deliver_event(event);
    }

    fn lost(&self) -> u64 {
        self.shared.stats.frames_lost.load(Ordering::Relaxed)
    }

    fn waiting(&self) -> usize {
        self.shared.queued_frames.load(Ordering::Relaxed)
    }
}

fn failed(peer: PeerId, reason: FailureReason) -> Option<DeliveryOutcome> {
    Some(DeliveryOutcome::Failed {
        delivered: vec![],
        failed: vec![FailedNode { peer, reason }],
    })
}

#[tokio::test]
async fn a_delivery_is_delivered_when_its_batch_is_acknowledged() {
    let mut rig = rig(None);
    let peer = PeerId::random();
    rig.connect(peer);
    let delivery = rig.send_tracked(peer);
    assert_eq!(delivery.try_outcome(), None, "not acknowledged yet");
    let (request_id, seq) = rig.batch_in_flight();
    rig.deliver_event(request_response::Event::Message {
        peer,
        connection_id: ConnectionId::new_unchecked(1),
        message: request_response::Message::Response {
            request_id,
            response: DeliverAck { seq },
        },
    });
    assert_eq!(delivery.try_outcome(), Some(DeliveryOutcome::Delivered));
    assert_eq!(rig.waiting(), 0);
    assert_eq!(rig.lost(), 0);
    assert_eq!(rig.shared.stats.frames_sent.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_delivery_given_up_fails_with_its_attempts_then_the_breaker_refuses() {
    let mut rig = rig(None);
    let peer = PeerId::random();
    let delivery = rig.send_tracked(peer);
    // The default settings: the third failure in a row opens the breaker, before the
    // retries (3) are used up.
    let defaults = ScopeConfig::default();
    let attempts = defaults.circuit_breaker_failures();
    assert!(attempts <= defaults.max_retries());
    let mut later = Instant::now();
    for attempt in 1..=attempts {
        let (request_id, _) = rig.batch_in_flight();
        let error = if attempt == attempts {
            request_response::OutboundFailure::DialFailure
        } else {
            request_response::OutboundFailure::Timeout
        };
        rig.deliver_event(request_response::Event::OutboundFailure {
            peer,
            connection_id: ConnectionId::new_unchecked(1),
            request_id,
            error,
        });
        if attempt < attempts {
            assert_eq!(delivery.try_outcome(), None, "retried");
            later += defaults.retry_max_delay();
            rig.behaviour.pump(peer, later);
        }
    }
    assert_eq!(
        delivery.try_outcome(),
        failed(
            peer,
            FailureReason::AttemptsFailed {
                attempts,
                last_error: AttemptError::Unreachable,
            }
        )
    );
    assert!(rig.behaviour.deliver_out.is_empty());
    // The breaker is open: the next frame is refused at once.
    let refused = rig.send_tracked(peer);
    assert_eq!(
        refused.try_outcome(),
        failed(peer, FailureReason::BreakerOpen)
    );
    assert_eq!(rig.lost(), 2);
    assert_eq!(rig.waiting(), 0);
}

#[tokio::test]
async fn an_unanswered_batch_fails_as_a_timeout() {
    let mut rig = rig(None);
    let peer = PeerId::random();
    rig.connect(peer);
    let delivery = rig.send_tracked(peer);
    let defaults = ScopeConfig::default();
    let mut later = Instant::now();
    for _ in 0..defaults.circuit_breaker_failures() {
        later += defaults.broadcast_timeout() + defaults.retry_max_delay();
        rig.behaviour.expire_deliveries(later);
        rig.behaviour.pump(peer, later + defaults.retry_max_delay());
    }
    assert_eq!(
        delivery.try_outcome(),
        failed(
            peer,
            FailureReason::AttemptsFailed {
                attempts: defaults.circuit_breaker_failures(),
                last_error: AttemptError::Timeout,
            }
        )
    );
}

#[tokio::test]
async fn stopping_fails_what_waits_as_a_shutdown() {
    let mut rig = rig(None);
    let peer = PeerId::random();
    rig.connect(peer);
    let in_flight = rig.send_tracked(peer);
    let queued = rig.send_tracked(peer);
    // Handed over but not taken yet: still in the command channel.
    let tracking = Tracking::new();
    let frame = Frame {
        from: 3,
        topic: "t".into(),
        payload: bytes::Bytes::from_static(b"\x02"),
        targets: vec![5].into(),
        call: None,
    };
    rig.handle
        .deliver(peer, frame.clone(), Some(tracking.ticket(peer)))
        .expect("queued");
    let unread = tracking.finish(1);
    assert_eq!(rig.waiting(), 3);

    rig.behaviour.stop();
    for delivery in [&in_flight, &queued, &unread] {
        assert_eq!(
            delivery.try_outcome(),
            failed(peer, FailureReason::Shutdown)
        );
    }
    assert_eq!(rig.lost(), 3);
    assert_eq!(rig.waiting(), 0);
    // The channel is closed: later frames are refused at the call.
    assert!(rig.handle.deliver(peer, frame, None).is_err());
    assert_eq!(rig.waiting(), 0);
}
