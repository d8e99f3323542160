//! Hostile peers: a raw libp2p peer (`support/hostile.rs`) speaks the
//! procgroups protocols to two honest nodes and misbehaves. Each test checks that the bad
//! input is rejected or bounded, that a counter of `Node::stats` / `Node::node_stats` shows
//! it, that the honest nodes' views are exactly what their processes did, and that the nodes
//! keep working (a later honest join still propagates).
//!
//! Every wait is on a condition with a deadline; nothing sleeps to synchronise.
//!
//! Malformed, truncated and over-cap requests and responses are counted by the codec
//! (`malformed`): libp2p's request-response drops such a stream without reporting it.
//!
//! Refused today but counted nowhere (so no test asserts a counter for them): a request that
//! announces a frame and then trickles it until the timeout, and a gossipsub message over
//! `max_transmit_size` or with a forged author (gossipsub drops it before the node sees it).
//! Inbound streams past `max_inbound_streams` per connection are reset and counted
//! (`inbound_streams_reset`, test 7). A peer-exchange answer is capped (64 peers, 8 addresses
//! each), and so is what all answers together can make the node keep (`max_known_peers`,
//! test 10).

use std::time::{Duration, Instant};

use procgroups::wire::{
    CallTag, DeliverBatch, Delta, DeltaFrameRef, Frame, Op, SyncGroup, SyncMember, SyncRequest,
    SyncResponse, Version,
};
use procgroups::{
    EventKind, HealthProblem, HealthStatus, Instance, Node, Pid, Process, RefusedSlots,
    ScopeConfig, ScopeStats,
};

mod support;
use support::{View, WAIT, converge, eventually, truth};

#[path = "support/hostile.rs"]
mod hostile;
use hostile::{Authorship, Hostile, Proto, cbor, frame, unframe};

const SCOPE: &str = "test:hostile";

// ------------------------------------------------------------------------------------ helpers

async fn honest(config: ScopeConfig) -> Node {
    support::node(SCOPE, config).await
}

/// Two honest nodes with `config`, connected.
async fn pair(config: ScopeConfig) -> (Node, Node) {
    let a = honest(config.clone()).await;
    let b = honest(config).await;
    b.dial(a.listen_addrs()[0].clone()).unwrap();
    eventually("A and B connected and sharing the scope", WAIT, || {
        stats(&a).peers == 1 && stats(&b).peers == 1
    })
    .await;
    (a, b)
}

fn stats(node: &Node) -> ScopeStats {
    node.stats(SCOPE).expect("the scope is hosted")
}

fn spawn(node: &Node) -> (Process, Instance) {
    support::spawn(node, SCOPE)
}

/// A process on each of `a` and `b` joins `g`; returns both and the view once both nodes
/// have it.
async fn one_member_each(a: &Node, b: &Node) -> ((Process, Instance), (Process, Instance), View) {
    let (pa, ga) = spawn(a);
    let (pb, gb) = spawn(b);
    ga.join("g").unwrap();
    gb.join("g").unwrap();
    let view = truth(&[("g", &[pa.pid(), pb.pid()])]);
    converge("both members everywhere", &[&ga, &gb], &view).await;
    ((pa, ga), (pb, gb), view)
}

/// The hostile peer connects to `nodes`; returns once each knows it shares the scope, it
/// knows each is subscribed to the scope's topic, and each has asked for its versions twice
/// (on the connection and on its subscription): a quiet start.
async fn attach(h: &Hostile, nodes: &[&Node]) {
    for n in nodes {
        h.dial(n.listen_addrs()[0].clone());
    }
    eventually("the hostile peer attached", WAIT, || {
        let seen = h.seen();
        nodes.iter().all(|n| {
            seen.subscribed.contains(&n.peer_id())
                && seen.discovers_from(&n.peer_id()) >= 2
                && n.connected_peers().contains(&h.peer_id)
        })
    })
    .await;
}

/// The version a node announces for the scope, asked by the hostile peer.
async fn version_of(h: &Hostile, node: &Node) -> Version {
    let discover = SyncRequest::Discover {
        scopes: vec![(SCOPE.into(), h.own().version())],
    };
    let answer = h
        .request(Proto::Sync, node.peer_id(), frame(&discover))
        .await
        .expect("a Discover answer");
    match unframe::<SyncResponse>(&answer).expect("a well-formed answer") {
        SyncResponse::Discover { scopes, .. } => {
            scopes
                .iter()
                .find(|(s, _)| s == SCOPE)
                .expect("the scope's version")
                .1
        }
        other => panic!("not a Discover answer: {other:?}"),
    }
}

/// `delta` as a frame of the delta stream, for `scope`.
fn stream_frame_of(scope: &str, delta: &Delta) -> Vec<u8> {
    cbor(&DeltaFrameRef { scope, delta })
}

/// A delta saying that `pid`, a process of another node, joins `group`: what a peer sends
/// when it speaks for an origin that is not its own.
fn joining_as(pid: Pid, incarnation: u64, seq: u64, group: &str) -> Delta {
    Delta {
        origin: pid.node(),
        incarnation,
        seq,
        groups: vec![group.into()],
        ops: vec![Op {
            group: 0,
            id: pid.id(),
            change: 1,
            meta: None,
        }],
    }
}

/// A later honest join on `joiner` reaches `observer` within `within`.
async fn honest_join_propagates(
    joiner: &Node,
    observer: &Instance,
    group: &str,
    within: Duration,
) -> (Process, Duration) {
    let (p, pg) = spawn(joiner);
    let start = Instant::now();
    pg.join(group).unwrap();
    eventually("a later honest join propagates", WAIT, || {
        observer.get_members(group).unwrap().contains(&p.pid())
    })
    .await;
    let took = start.elapsed();
    assert!(
        took < within,
        "an honest join took {took:?} to propagate (bound {within:?})"
    );
    (p, took)
}

/// Shuts every node down, then the hostile peers.
async fn finish(nodes: Vec<Node>, hostiles: Vec<Hostile>) {
    for h in hostiles {
        h.stop().await;
    }
    for n in nodes {
        tokio::time::timeout(Duration::from_secs(5), n.shutdown())
            .await
            .expect("a bounded shutdown");
    }
}

// -------------------------------------------------------------------------------------- tests

/// 1. Deltas whose origin is another node (signed by the hostile key) are rejected by the node
///    that receives them and not forwarded; a forged author (unsigned) is dropped by strict
///    validation. Both claim the exact next version of the victim, so that accepted they
///    would apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_deltas_are_rejected_and_do_not_spread() {
    let (a, b) = pair(ScopeConfig::default()).await;
    let ((pa, ga), (pb, gb), _) = one_member_each(&a, &b).await;

    // Connected to A only: what A refuses never reaches B.
    let h = Hostile::new(SCOPE);
    attach(&h, &[&a]).await;
    let va = version_of(&h, &a).await;
    let (a0, b0, na0) = (stats(&a), stats(&b), a.node_stats());

    // "A's process leaves g and joins evil": A's exact next version, signed by the hostile key.
    let as_a = Delta {
        origin: a.peer_id(),
        incarnation: va.incarnation,
        seq: va.seq + 1,
        groups: vec!["g".into(), "evil".into()],
        ops: vec![
            Op {
                group: 0,
                id: pa.pid().id(),
                change: -1,
                meta: None,
            },
            Op {
                group: 1,
                id: pa.pid().id(),
                change: 1,
                meta: None,
            },
        ],
    };
    // "B's process joins g twice more".
    let as_b = Delta {
        origin: b.peer_id(),
        incarnation: rand::random(),
        seq: 1,
        groups: vec!["g".into()],
        ops: vec![Op {
            group: 0,
            id: pb.pid().id(),
            change: 2,
            meta: None,
        }],
    };
    h.publish_delta(&as_a).await.unwrap();
    h.publish_delta(&as_b).await.unwrap();
    eventually("A rejects both spoofed deltas", WAIT, || {
        stats(&a).deltas_rejected == a0.deltas_rejected + 2
    })
    .await;

    // A forged author: B's id as the message's source, no signature, B's exact next version.
    let forger = Hostile::with_authorship(SCOPE, Authorship::Forged(b.peer_id()));
    attach(&forger, &[&a, &b]).await;
    let vb = version_of(&forger, &b).await;
    let forged = Delta {
        origin: b.peer_id(),
        incarnation: vb.incarnation,
        seq: vb.seq + 1,
        groups: vec!["g".into()],
        ops: vec![Op {
            group: 0,
            id: pb.pid().id(),
            change: -1,
            meta: None,
        }],
    };
    forger.publish_delta(&forged).await.unwrap();
    // A round trip on the same connections after the forged message.
    version_of(&forger, &a).await;
    version_of(&forger, &b).await;

    // (d) The nodes keep working: a later join on B reaches A, and on A reaches B.
    let (pb2, _) = honest_join_propagates(&b, &ga, "later", Duration::from_secs(5)).await;
    let (pa2, _) = honest_join_propagates(&a, &gb, "later", Duration::from_secs(5)).await;
    let expected = truth(&[
        ("g", &[pa.pid(), pb.pid()]),
        ("later", &[pa2.pid(), pb2.pid()]),
    ]);
    converge(
        "the honest views, untouched by the spoofs",
        &[&ga, &gb],
        &expected,
    )
    .await;

    let (a1, b1, na1) = (stats(&a), stats(&b), a.node_stats());
    // Rejected by A, never forwarded to B (B rejected nothing), nothing malformed.
    assert_eq!(a1.deltas_rejected, a0.deltas_rejected + 2, "{a1:?}");
    assert_eq!(b1.deltas_rejected, b0.deltas_rejected, "{b1:?}");
    assert_eq!(na1.malformed, na0.malformed);
    // Only the honest joins were applied: one delta each way.
    assert_eq!(a1.deltas_applied, a0.deltas_applied + 1, "{a1:?}");
    assert_eq!(b1.deltas_applied, b0.deltas_applied + 1, "{b1:?}");
    // The forged message was dropped by gossipsub's strict validation: the views show it was
    // not applied (none of the node's counters sees it).
    eprintln!(
        "spoofing: A deltas_rejected {} -> {}, B deltas_rejected {} -> {}",
        a0.deltas_rejected, a1.deltas_rejected, b0.deltas_rejected, b1.deltas_rejected
    );
    drop((pa, pb, pa2, pb2));
    finish(vec![a, b], vec![h, forger]).await;
}

/// 2. Malformed CBOR on the scope's topic, invalid deltas, and malformed request bodies on
///    both request-response protocols: all refused and nothing changes; the deltas are
///    counted (`deltas_rejected`, and `malformed` for the undecodable ones), the requests are
///    not (see the module's documentation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_and_counted() {
    let (a, b) = pair(ScopeConfig::default()).await;
    let ((pa, ga), (pb, gb), _) = one_member_each(&a, &b).await;
    let (a0, b0, na0, nb0) = (stats(&a), stats(&b), a.node_stats(), b.node_stats());

    // Gossip: not CBOR; CBOR of another shape; a truncated delta (these three are also
    // malformed). Then decodable but invalid deltas of the sender's own origin, which the
    // core refuses: a group index out of range, a change of 0, an empty name, a name too long,
    // sequence number 0.
    type Payload = fn(&Hostile) -> Vec<u8>;
    let payloads: [Payload; 8] = [
        |_| vec![0xff, 0x00, 0x13, 0x37],
        |_| cbor(&"a string, not a delta"),
        |h| {
            let encoded = cbor(&h.delta(&[("g", 1, 1)], false));
            encoded[..encoded.len() / 2].to_vec()
        },
        |h| {
            let mut d = h.delta(&[("g", 1, 1)], false);
            d.ops[0].group = 7;
            cbor(&d)
        },
        |h| {
            let mut d = h.delta(&[("g", 1, 1)], false);
            d.ops[0].change = 0;
            cbor(&d)
        },
        |h| cbor(&h.delta(&[("", 1, 1)], false)),
        |h| cbor(&h.delta(&[(&"x".repeat(256), 1, 1)], false)),
        |h| {
            let mut d = h.delta(&[("g", 1, 1)], false);
            d.seq = 0;
            cbor(&d)
        },
    ];
    // Two from each hostile peer: a third rejected delta would take its score below the
    // graylist threshold (`procgroups::behaviour::scoring`), and A would drop what it sends
    // next unread, which the last test of this file shows.
    let mut hostiles = Vec::new();
    for pair in payloads.chunks(2) {
        let h = Hostile::new(SCOPE);
        attach(&h, &[&a]).await;
        for payload in pair {
            h.publish(payload(&h)).await.unwrap();
        }
        hostiles.push(h);
    }
    eventually("eight deltas rejected, three undecodable", WAIT, || {
        stats(&a).deltas_rejected == a0.deltas_rejected + 8
            && a.node_stats().malformed == na0.malformed + 3
    })
    .await;
    let h = &hostiles[0];

    // Requests: a body that is not CBOR, one of another shape, a truncated frame (the prefix
    // says more than follows), on both protocols. Each is refused and counted: the stream is
    // closed without an answer, nothing reaches the protocol state.
    let mut not_cbor = 4u32.to_be_bytes().to_vec();
    not_cbor.extend_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[0x82, 0x01]);
    let requests = [not_cbor, frame(&("not", "a", "request")), truncated];
    for proto in [Proto::Sync, Proto::Deliver] {
        for r in &requests {
            let answer = h.request(proto, a.peer_id(), r.clone()).await;
            assert!(
                answer.is_err(),
                "{proto:?}: a malformed request was answered: {answer:?}"
            );
        }
    }
    // The same connection still carries well-formed requests.
    assert_eq!(version_of(h, &a).await.seq, 1);

    // (d) Still working, views exact.
    let (pb2, _) = honest_join_propagates(&b, &ga, "later", Duration::from_secs(5)).await;
    let expected = truth(&[("g", &[pa.pid(), pb.pid()]), ("later", &[pb2.pid()])]);
    converge("the honest views", &[&ga, &gb], &expected).await;
    let (a1, b1, na1, nb1) = (stats(&a), stats(&b), a.node_stats(), b.node_stats());
    assert_eq!(a1.deltas_rejected, a0.deltas_rejected + 8, "{a1:?}");
    assert_eq!(a1.deltas_applied, a0.deltas_applied + 1, "{a1:?}");
    assert_eq!(na1.malformed, na0.malformed + 3 + 6, "{na1:?}");
    // Nothing reached B.
    assert_eq!(b1.deltas_rejected, b0.deltas_rejected, "{b1:?}");
    assert_eq!(nb1.malformed, nb0.malformed, "{nb1:?}");
    eprintln!(
        "malformed: A malformed {} -> {}, deltas_rejected {} -> {}",
        na0.malformed, na1.malformed, a0.deltas_rejected, a1.deltas_rejected
    );
    assert_eq!(na1.peers_graylisted, 0, "{na1:?}");
    drop((pa, pb, pb2));
    finish(vec![a, b], hostiles).await;
}

/// 3. Frames over the caps: a request whose length prefix is over the request cap (refused
///    at the prefix: the stream is reset before the body arrives), and a gossipsub message
///    over `max_transmit_size` (dropped by gossipsub). Neither is counted today (see the
///    module's documentation); the node keeps its state and its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_caps_are_refused() {
    let (a, b) = pair(ScopeConfig::default()).await;
    let ((pa, ga), (pb, gb), _) = one_member_each(&a, &b).await;
    let h = Hostile::new(SCOPE);
    attach(&h, &[&a, &b]).await;
    let (a0, b0, na0) = (stats(&a), stats(&b), a.node_stats());

    // Length prefixes over the 1 MiB request cap, then the announced body a byte at a time,
    // never finished: a node that read on would wait for the request's timeout (5 s).
    h.trickle_requests(true);
    let cap = procgroups::codec::DEFAULT_MAX_REQUEST_BYTES as u32;
    for (proto, len) in [
        (Proto::Sync, u32::MAX),
        (Proto::Sync, cap + 1),
        (Proto::Deliver, u32::MAX),
        (Proto::Deliver, cap + 1),
    ] {
        let mut r = len.to_be_bytes().to_vec();
        r.extend_from_slice(&[0u8; 64]);
        let started = Instant::now();
        let answer = h.request(proto, a.peer_id(), r).await;
        eprintln!("{proto:?} {len}: {answer:?} after {:?}", started.elapsed());
        assert!(
            answer.is_err(),
            "{proto:?}: a frame over the cap was answered: {answer:?}"
        );
        // Refused at the prefix: no waiting for the announced megabytes.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    h.trickle_requests(false);
    assert_eq!(
        version_of(&h, &a).await.seq,
        1,
        "the connection still works"
    );

    // A delta of 300 KB (its own, valid but for its size) over the 256 KiB gossip cap.
    let name = "n".repeat(250);
    let names: Vec<String> = (0..1200).map(|i| format!("{i:04}{name}")).collect();
    let ops: Vec<(&str, u64, i64)> = names.iter().map(|n| (n.as_str(), 1, 1)).collect();
    let huge = h.delta(&ops, false);
    assert!(cbor(&huge).len() > 256 * 1024);
    h.publish_delta(&huge).await.unwrap();
    // Then an ordinary delta with the same sequence number. The receivers closed the gossip
    // stream the huge message came on, and this one may have been lost with it: the hostile
    // peer announces its version, and the nodes pull what they miss (the path of any lost
    // delta).
    let small = h.delta(&[("small", 1, 1)], true);
    h.publish_delta(&small).await.unwrap();
    version_of(&h, &a).await;
    version_of(&h, &b).await;
    let expected = truth(&[
        ("g", &[pa.pid(), pb.pid()]),
        ("small", &[Pid::new(h.peer_id, 1)]),
    ]);
    converge(
        "the small delta applied, the huge one not",
        &[&ga, &gb],
        &expected,
    )
    .await;

    // (d) Still working; H, which has no delta stream, gets B's join by gossipsub.
    let gossip0 = h.seen().gossip;
    let (pb2, _) = honest_join_propagates(&b, &ga, "later", Duration::from_secs(5)).await;
    eventually("B's join gossiped to H", WAIT, || h.seen().gossip > gossip0).await;
    let mut expected = expected;
    expected.insert("later".into(), vec![pb2.pid()]);
    converge("the honest views", &[&ga, &gb], &expected).await;
    let (a1, b1, na1) = (stats(&a), stats(&b), a.node_stats());
    assert_eq!(a1.groups, 3, "{a1:?}");
    // The small delta came by gossip or by a sync; B's join by gossip.
    let taken = |s: &ScopeStats| s.deltas_applied + s.syncs_applied;
    assert_eq!(taken(&a1), taken(&a0) + 2, "{a1:?}");
    assert_eq!(taken(&b1), taken(&b0) + 1, "{b1:?}");
    // The four over-cap requests, counted by the codec at their length prefix.
    assert_eq!(na1.malformed, na0.malformed + 4, "{na1:?}");
    eprintln!("over the caps: A {a1:?}\nA node {na0:?} -> {na1:?}");
    drop((pa, pb, pb2));
    finish(vec![a, b], vec![h]).await;
}

/// The events of `sub` as `(kind, group, pids)`, waiting until there are `n`.
async fn events(
    sub: &mut procgroups::Subscription,
    n: usize,
) -> Vec<(EventKind, String, Vec<Pid>)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(WAIT, sub.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out waiting for event {} of {n}: {out:?}",
                    out.len() + 1
                )
            })
            .expect("the subscription is open");
        out.push((ev.kind, ev.group.to_string(), ev.pids.to_vec()));
    }
    out
}

/// The delta stream: a frame is taken only as the sending peer's own delta of a scope this
/// node hosts. A delta naming another origin is rejected by the core (the origin check holds
/// without a signature: the sender is the connection's authenticated peer); undecodable bytes,
/// an unknown scope and a frame over the cap are counted as malformed (the last also drops the
/// stream it came on). None changes a view, and the peer's own valid delta is still applied
/// on a new stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_delta_frames_are_refused_and_counted() {
    let (a, b) = pair(ScopeConfig::default()).await;
    let ((pa, ga), (pb, gb), view) = one_member_each(&a, &b).await;
    let h = Hostile::with_delta_stream(SCOPE);
    attach(&h, &[&a]).await;
    eventually("H's delta stream to A open", WAIT, || {
        h.seen().streams_open.contains(&a.peer_id())
    })
    .await;
    let (a0, na0) = (stats(&a), a.node_stats());

    // (a) B's process joining "evil", said by H.
    let as_b = joining_as(pb.pid(), rand::random(), 1, "evil");
    h.stream_frame(a.peer_id(), stream_frame_of(SCOPE, &as_b))
        .await
        .unwrap();
    eventually("A rejects the delta of another origin", WAIT, || {
        stats(&a).deltas_rejected == a0.deltas_rejected + 1
    })
    .await;
    // (b) Not CBOR; (c) a scope A does not host.
    h.stream_frame(a.peer_id(), vec![0xff, 0x00, 0x13])
        .await
        .unwrap();
    let own = h.delta(&[("h", 1, 1)], false);
    h.stream_frame(a.peer_id(), stream_frame_of("test:elsewhere", &own))
        .await
        .unwrap();
    eventually("A counts both as malformed", WAIT, || {
        a.node_stats().malformed == na0.malformed + 2
    })
    .await;
    // (d) A frame over A's cap (`max_transmit_size`, 256 KiB by default).
    h.stream_frame(a.peer_id(), vec![0; 300 * 1024])
        .await
        .unwrap();
    eventually("A counts the frame over its cap", WAIT, || {
        a.node_stats().malformed == na0.malformed + 3
    })
    .await;
    converge("nothing changed", &[&ga, &gb], &view).await;
    assert_eq!(
        stats(&a).deltas_applied,
        a0.deltas_applied,
        "{:?}",
        stats(&a)
    );

    // (e) H's own delta is applied, on the stream H opens again once A dropped its old one.
    let own = h.delta(&[("h", 1, 1)], true);
    let frame = stream_frame_of(SCOPE, &own);
    let h1 = Pid::new(h.peer_id, 1);
    let deadline = Instant::now() + WAIT;
    loop {
        // A frame sent before H saw its old stream break is lost with it: send again.
        let sent = h.stream_frame(a.peer_id(), frame.clone()).await;
        if sent.is_ok() && ga.get_members("h").unwrap().contains(&h1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "H's own streamed delta never applied on A"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats(&a).deltas_rejected, a0.deltas_rejected + 1);
    assert_eq!(ga.get_members("g").unwrap().count(&pa.pid()), 1);
    assert!(ga.get_members("evil").unwrap().is_empty());
    finish(vec![a, b], vec![h]).await;
}

/// 4. Valid deltas of the hostile peer's own origin, sent out of order and then again: each
///    is applied once, in the origin's order (the events show the order), the copies are
///    counted as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_reordered_deltas_apply_once_in_order() {
    let (a, b) = pair(ScopeConfig::default()).await;
    let ((pa, ga), (pb, gb), _) = one_member_each(&a, &b).await;
    let h = Hostile::new(SCOPE);
    attach(&h, &[&a, &b]).await;
    let (mut sub_a, _) = ga.monitor("h1").unwrap();
    let (mut sub_b, _) = gb.monitor("h1").unwrap();
    let (a0, b0) = (stats(&a), stats(&b));

    let deltas = [
        h.delta(&[("h1", 1, 1)], true),
        h.delta(&[("h1", 1, -1)], true),
        h.delta(&[("h1", 1, 2), ("h2", 2, 1)], true),
        h.delta(&[("h1", 1, -1)], true),
        h.delta(&[("h3", 3, 1)], true),
    ];
    // Shuffled, then everything again, then two more copies.
    for i in [2, 0, 3, 1, 4, 0, 1, 2, 3, 4, 2, 4] {
        h.publish_delta(&deltas[i]).await.unwrap();
    }
    let h1 = Pid::new(h.peer_id, 1);
    let expected = truth(&[
        ("g", &[pa.pid(), pb.pid()]),
        ("h1", &[h1]),
        ("h2", &[Pid::new(h.peer_id, 2)]),
        ("h3", &[Pid::new(h.peer_id, 3)]),
    ]);
    converge("the origin's final state", &[&ga, &gb], &expected).await;
    eventually("seven copies counted as duplicates on both", WAIT, || {
        stats(&a).deltas_duplicate == a0.deltas_duplicate + 7
            && stats(&b).deltas_duplicate == b0.deltas_duplicate + 7
    })
    .await;
    // In the origin's order, on both nodes: join, leave, join twice, leave.
    let order = vec![
        (EventKind::MemberJoined, "h1".to_string(), vec![h1]),
        (EventKind::MemberLeft, "h1".to_string(), vec![h1]),
        (EventKind::MemberJoined, "h1".to_string(), vec![h1, h1]),
        (EventKind::MemberLeft, "h1".to_string(), vec![h1]),
    ];
    assert_eq!(events(&mut sub_a, 4).await, order);
    assert_eq!(events(&mut sub_b, 4).await, order);

    // (d) Still working.
    let (pb2, _) = honest_join_propagates(&b, &ga, "later", Duration::from_secs(5)).await;
    let mut expected = expected;
    expected.insert("later".into(), vec![pb2.pid()]);
    converge("the views", &[&ga, &gb], &expected).await;
    // B's join reaches A on B's delta stream and, because H has no delta stream, on gossipsub
    // as well: A takes it once and counts the other copy as a duplicate.
    eventually("the gossiped copy of B's join counted on A", WAIT, || {
        stats(&a).deltas_duplicate == a0.deltas_duplicate + 8
    })
    .await;
    let (a1, b1) = (stats(&a), stats(&b));
    for (s0, s1, joins) in [(&a0, &a1, 1), (&b0, &b1, 0)] {
        // Each of the five applied once (by delta: no sync was needed), plus B's join on A.
        assert_eq!(s1.deltas_applied, s0.deltas_applied + 5 + joins, "{s1:?}");
        assert_eq!(
            s1.deltas_duplicate,
            s0.deltas_duplicate + 7 + joins,
            "{s1:?}"
        );
        assert_eq!(s1.deltas_rejected, s0.deltas_rejected, "{s1:?}");
        assert_eq!(s1.syncs_applied, s0.syncs_applied, "{s1:?}");
    }
    assert!(
        sub_a.try_recv().is_none() && sub_b.try_recv().is_none(),
        "no further event"
    );
    eprintln!("replay: A {a0:?}\n  -> {a1:?}");

    // (e) A leave of a slot the origin never held changes nothing, and is counted.
    let unmatched = h.delta(&[("h3", 99, -1)], false);
    h.publish_delta(&unmatched).await.unwrap();
    eventually("the unmatched leave counted on both", WAIT, || {
        stats(&a).leaves_unmatched == a1.leaves_unmatched + 1
            && stats(&b).leaves_unmatched == b1.leaves_unmatched + 1
    })
    .await;
    converge("the views, unchanged", &[&ga, &gb], &expected).await;
    drop((pa, pb, pb2));
    finish(vec![a, b], vec![h]).await;
}

/// Has `h` announce its version to `node` until `node` asks it for its state `n` times.
async fn pull_sync(h: &Hostile, node: &Node, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.seen().syncs_from(&node.peer_id()) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Sync request {n}"
        );
        version_of(h, node).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 5. The honest node pulls the hostile peer's state, and gets lies: a page naming the ids of
///    the honest nodes' processes, a page with a duplicate member, a page of another scope, a
///    sync of more pages than any state. A page's ids are the responder's own processes by
///    construction (the wire has no way to name another node's Pid): the "foreign" ids become
///    the hostile peer's Pids and touch nobody else's membership; the invalid pages are
///    refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_sync_responses_touch_only_the_liar() {
    let config = ScopeConfig::builder()
        .protocol_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let (a, b) = pair(config).await;
    let ((pa, ga), (pb, gb), honest_view) = one_member_each(&a, &b).await;
    let h = Hostile::new(SCOPE);
    attach(&h, &[&a]).await;
    let (a0, na0) = (stats(&a), a.node_stats());

    // Its state moves to seq 1 without telling anyone: A will ask for it.
    h.delta(&[("mine", 1, 1)], true);
    let version = h.own().version();
    let page = |scope: &str, pages: u32, groups: Vec<SyncGroup>| SyncResponse::Page {
        scope: scope.into(),
        version,
        page: 0,
        pages,
        groups,
    };
    let group = |name: &str, members: &[(u64, u32)]| SyncGroup {
        name: name.into(),
        members: members
            .iter()
            .map(|(id, n)| SyncMember::plain(*id, *n))
            .collect(),
    };
    let (ia, ib) = (pa.pid().id(), pb.pid().id());
    h.script_sync([
        // More pages than any state: refused before anything is buffered (malformed).
        page(SCOPE, 1_000_000, vec![group("g", &[(ia, 1)])]),
        // Another scope's page: refused (malformed: it does not fit the request).
        page("test:other", 1, vec![group("g", &[(ia, 1)])]),
        // A member twice in a group: refused by the core (syncs_rejected).
        page(SCOPE, 1, vec![group("g", &[(ib, 1), (ib, 2)])]),
        // The ids of A's and B's processes: they are taken as the hostile peer's own.
        page(
            SCOPE,
            1,
            vec![group("g", &[(ib, 1)]), group("stolen", &[(ia, 3)])],
        ),
    ]);
    pull_sync(&h, &a, 1).await;
    eventually("the sync of a million pages refused", WAIT, || {
        a.node_stats().malformed == na0.malformed + 1
    })
    .await;
    pull_sync(&h, &a, 2).await;
    eventually("the page of another scope refused", WAIT, || {
        a.node_stats().malformed == na0.malformed + 2
    })
    .await;
    pull_sync(&h, &a, 3).await;
    eventually("the sync with a duplicate member rejected", WAIT, || {
        stats(&a).syncs_rejected == a0.syncs_rejected + 1
    })
    .await;
    // The core retries by itself after `protocol_timeout`; that answer is applied.
    let (hb, ha) = (Pid::new(h.peer_id, ib), Pid::new(h.peer_id, ia));
    let on_a = truth(&[("g", &[pa.pid(), pb.pid(), hb]), ("stolen", &[ha, ha, ha])]);
    converge("the lie, attributed to the liar", &[&ga], &on_a).await;
    assert_eq!(ga.get_members("g").unwrap().count(&pb.pid()), 1);
    assert_eq!(ga.get_members("g").unwrap().count(&pa.pid()), 1);
    assert!(ga.get_members("stolen").unwrap().count(&pa.pid()) == 0);
    assert_eq!(h.seen().syncs_from(&a.peer_id()), 4);

    // (d) Still working; B, which the liar never reached, has the honest view.
    let (pb2, _) = honest_join_propagates(&b, &ga, "later", Duration::from_secs(5)).await;
    let mut on_a = on_a;
    on_a.insert("later".into(), vec![pb2.pid()]);
    converge("A's view", &[&ga], &on_a).await;
    let mut on_b = honest_view;
    on_b.insert("later".into(), vec![pb2.pid()]);
    converge("B's view", &[&gb], &on_b).await;
    let (a1, na1) = (stats(&a), a.node_stats());
    assert_eq!(a1.syncs_rejected, a0.syncs_rejected + 1, "{a1:?}");
    assert_eq!(a1.syncs_applied, a0.syncs_applied + 1, "{a1:?}");
    assert_eq!(na1.malformed, na0.malformed + 2, "{na1:?}");
    eprintln!("lying syncs: A {a0:?}\n  -> {a1:?}\nA node {na1:?}");
    drop((pa, pb, pb2));
    finish(vec![a, b], vec![h]).await;
}

/// 6. A peer over its budget, `max_groups` 4: it gets four groups on each honest node and no
///    more, takes nothing of the room of A's own processes or of B's, and the nodes say so in
///    their health. Once the peer leaves enough for the rest to fit, they pull its state again
///    (the versions already agree) and hold all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_budget_takes_no_room_of_others_and_comes_back_whole() {
    let config = ScopeConfig::builder().max_groups(4).build().unwrap();
    let (a, b) = pair(config).await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    ga.join("a").unwrap();
    gb.join("b").unwrap();
    converge(
        "a and b everywhere",
        &[&ga, &gb],
        &truth(&[("a", &[pa.pid()]), ("b", &[pb.pid()])]),
    )
    .await;
    let h = Hostile::new(SCOPE);
    attach(&h, &[&a, &b]).await;
    let (a0, b0) = (stats(&a), stats(&b));

    // Ten new groups, one slot each, then three more slots in the first: four groups fit.
    let names: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
    let mut ops: Vec<(&str, u64, i64)> = names.iter().map(|n| (n.as_str(), 1, 1)).collect();
    ops.push(("h0", 2, 3));
    h.publish_delta(&h.delta(&ops, true)).await.unwrap();
    let (h1, h2) = (Pid::new(h.peer_id, 1), Pid::new(h.peer_id, 2));
    let mut expected = truth(&[
        ("a", &[pa.pid()]),
        ("b", &[pb.pid()]),
        ("h0", &[h1, h2, h2, h2]),
        ("h1", &[h1]),
        ("h2", &[h1]),
        ("h3", &[h1]),
    ]);
    converge("the peer's budget, on both", &[&ga, &gb], &expected).await;
    for (n, s0) in [(&a, &a0), (&b, &b0)] {
        let s1 = stats(n);
        // The counter counts every refusal: a sync of the peer's state pulled while its delta
        // was on the way (a Discover answer named the new version first) refuses the same six
        // again. The health below holds the exact number.
        let refused = s1.slots_refused - s0.slots_refused;
        assert!(refused > 0 && refused.is_multiple_of(6), "{s1:?}");
        let health = n.scope_health(SCOPE).unwrap();
        assert_eq!(health.status, HealthStatus::Degraded, "{health}");
        assert!(
            health.problems.contains(&HealthProblem::SlotsRefused {
                peers: vec![RefusedSlots {
                    peer: h.peer_id,
                    slots: 6
                }],
            }),
            "{health:?}"
        );
    }

    // The peer's groups take nothing from anyone else's budget: A's processes join three new
    // groups (four in all), and B's new group shows on A.
    ga.join(["a2", "a3", "a4"]).unwrap();
    gb.join("b2").unwrap();
    for g in ["a2", "a3", "a4"] {
        expected.insert(g.into(), vec![pa.pid()]);
    }
    expected.insert("b2".into(), vec![pb.pid()]);
    converge("A's and B's new groups everywhere", &[&ga, &gb], &expected).await;
    // A's own budget is as the config says.
    let err = ga.join("a5").unwrap_err();
    assert_eq!(err.kind(), procgroups::ErrorKind::LimitReached, "{err}");

    // The peer leaves six groups, two held and four refused: the four left all fit now, and
    // the honest nodes pull its state to find them.
    let leaves: Vec<(&str, u64, i64)> = (0..6)
        .map(|i| (names[i].as_str(), 1, -1))
        .chain([("h0", 2, -3)])
        .collect();
    h.publish_delta(&h.delta(&leaves, true)).await.unwrap();
    for g in ["h0", "h1", "h2", "h3"] {
        expected.remove(g);
    }
    for g in &names[6..] {
        expected.insert(g.clone(), vec![h1]);
    }
    converge("the peer's state whole, on both", &[&ga, &gb], &expected).await;
    for n in [&a, &b] {
        let health = n.scope_health(SCOPE).unwrap();
        assert!(health.is_healthy(), "{health}");
        assert!(h.seen().syncs_from(&n.peer_id()) >= 1, "pulled again");
    }
    drop((pa, pb));
    finish(vec![a, b], vec![h]).await;
}

/// The test process's resident and virtual memory, in MiB (Linux).
fn memory_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmSize:"))
}

/// 7. A request flood: 5000 Discover and Sync requests at once, then requests that never
///    finish. The node serves the peer's budget (`request_burst`, then `requests_per_second`)
///    and refuses the rest at once, each counted in `requests_over_budget`; it resets the
///    streams past `max_inbound_streams` per connection and protocol at once, each counted in
///    `inbound_streams_reset`; and it stays responsive: honest joins propagate within 100 ms
///    while the flood goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_is_bounded() {
    const DISCOVERS: usize = 3334;
    const SYNCS: usize = 1666;
    const STUCK: usize = 300;
    let (a, b) = pair(ScopeConfig::default()).await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    // A state worth serving: 200 groups.
    let names: Vec<String> = (0..200).map(|i| format!("s{i:03}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    ga.join(name_refs.as_slice()).unwrap();
    gb.join("g").unwrap();
    eventually("A's state on B", WAIT, || {
        gb.which_groups().unwrap().len() == 201 && ga.get_members("g").unwrap().len() == 1
    })
    .await;
    let h = Hostile::new(SCOPE);
    attach(&h, &[&a]).await;
    let (a0, na0, mem0) = (stats(&a), a.node_stats(), memory_mib());

    // Phase 1: everything at once.
    let started = Instant::now();
    let discover = frame(&SyncRequest::Discover {
        scopes: vec![(SCOPE.into(), h.own().version())],
    });
    let sync = frame(&SyncRequest::Sync {
        scope: SCOPE.into(),
        page: 0,
        version: None,
    });
    let mut answers = Vec::new();
    for i in 0..DISCOVERS + SYNCS {
        let r = if i % 3 == 2 { &sync } else { &discover };
        answers.push(h.request_later(Proto::Sync, a.peer_id(), r.clone()));
    }
    // Honest joins both ways while the flood goes on: B's budget is its own.
    let bound = Duration::from_millis(100);
    let (pb2, took_ab) = honest_join_propagates(&b, &ga, "during", bound).await;
    let (pa2, took_ba) = honest_join_propagates(&a, &gb, "during", bound).await;
    let (mut pages, mut discovered, mut over_budget, mut refused) = (0, 0, 0, 0);
    for rx in answers {
        let answer = tokio::time::timeout(WAIT, rx)
            .await
            .expect("every request of the flood ends")
            .expect("the hostile task answers");
        match answer.map(|bytes| unframe::<SyncResponse>(&bytes)) {
            Ok(Ok(SyncResponse::Page { groups, .. })) => {
                // A's whole state (its join "during" included, or not yet).
                assert!(
                    groups.len() == 200 || groups.len() == 201,
                    "{}",
                    groups.len()
                );
                pages += 1;
            }
            Ok(Ok(SyncResponse::Discover { .. })) => discovered += 1,
            Ok(Ok(SyncResponse::Refused { reason })) if reason.contains("budget") => {
                over_budget += 1;
            }
            Ok(other) => panic!("an unexpected answer: {other:?}"),
            Err(_) => refused += 1,
        }
    }
    let flood_took = started.elapsed();
    let (a1, na1, mem1) = (stats(&a), a.node_stats(), memory_mib());
    eprintln!(
        "flood: {} requests in {flood_took:?}: {pages} pages, {discovered} discovers, \
         {over_budget} over the budget, {refused} streams reset; honest joins took {took_ab:?} (B->A) and {took_ba:?} (A->B) meanwhile; \
         syncs_served {} -> {}; memory (RSS, virtual) {mem0:?} -> {mem1:?} MiB",
        DISCOVERS + SYNCS,
        a0.syncs_served,
        a1.syncs_served,
    );
    // Every request ended: answered or refused, none left hanging; each page served counted.
    assert_eq!(
        pages + discovered + over_budget + refused,
        DISCOVERS + SYNCS
    );
    // Served: at most the burst and what the rate refilled meanwhile; the rest refused at the
    // budget, each counted.
    let config = procgroups::behaviour::BehaviourConfig::default();
    let allowed = f64::from(config.request_burst)
        + f64::from(config.requests_per_second) * flood_took.as_secs_f64();
    assert!(
        (pages + discovered) as f64 <= allowed + 1.0,
        "{} served, {allowed} allowed",
        pages + discovered
    );
    assert!(over_budget > 0, "the budget refused nothing");
    assert_eq!(
        na1.requests_over_budget - na0.requests_over_budget,
        over_budget as u64,
        "{na1:?}"
    );
    // Every stream the flooder saw reset was reset at the cap, and counted.
    assert_eq!(
        na1.inbound_streams_reset - na0.inbound_streams_reset,
        refused as u64,
        "{na1:?}"
    );
    assert!(pages <= SYNCS && discovered <= DISCOVERS);
    assert!(a1.syncs_served >= a0.syncs_served + pages as u64, "{a1:?}");
    assert!(a1.syncs_served <= a0.syncs_served + SYNCS as u64, "{a1:?}");
    // Nothing of the flood changed the state.
    assert_eq!(a1.groups, 202, "{a1:?}");
    assert_eq!(a1.deltas_rejected, a0.deltas_rejected);
    assert_eq!(na1.peers, na0.peers);

    // Phase 2: requests that never finish (a prefix, then a byte every 20 ms). The node holds
    // at most `max_inbound_streams` of them on this connection and resets the others at once,
    // each counted.
    let cap = procgroups::behaviour::DEFAULT_MAX_INBOUND_STREAMS;
    let na2 = a.node_stats();
    h.trickle_requests(true);
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        let mut r = 100_000u32.to_be_bytes().to_vec();
        r.extend_from_slice(&[0x82; 16]);
        stuck.push(h.request_later(Proto::Sync, a.peer_id(), r));
    }
    let mut dropped = 0;
    eventually(
        "all but the cap of the stuck requests dropped",
        WAIT,
        || {
            dropped = stuck.iter_mut().filter(|rx| !rx.is_empty()).count();
            if dropped >= STUCK - cap {
                Ok(())
            } else {
                Err(format!("only {dropped} dropped"))
            }
        },
    )
    .await;
    eventually("the streams reset counted", WAIT, || {
        let reset = a.node_stats().inbound_streams_reset - na2.inbound_streams_reset;
        if reset == (STUCK - cap) as u64 {
            Ok(())
        } else {
            Err(format!("{reset} counted"))
        }
    })
    .await;
    let (pb3, took) = honest_join_propagates(&b, &ga, "stuck", Duration::from_secs(5)).await;
    let still = stuck.iter_mut().filter(|rx| rx.is_empty()).count();
    eprintln!(
        "stuck requests: {dropped} dropped at once, {still} held; an honest join took {took:?}; \
         memory (RSS, virtual) {:?} MiB",
        memory_mib()
    );
    assert!(still <= cap, "{still} streams held");
    // B: A's 200 groups and "during", its own "g", "during" and "stuck".
    assert_eq!(gb.which_groups().unwrap().len(), 203);
    drop((pa, pb, pa2, pb2, pb3));
    finish(vec![a, b], vec![h]).await;
}

/// A peer that opens many connections at once: the node keeps `max_connections_per_peer` of
/// them, refuses the rest as they complete and counts each (`connections_refused`), and
/// honest joins go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_peer_limit_are_refused_and_counted() {
    const DIALS: usize = 20;
    let (a, b) = pair(ScopeConfig::default()).await;
    let ((pa, ga), (pb, gb), _) = one_member_each(&a, &b).await;
    let limit = procgroups::behaviour::BehaviourConfig::default().max_connections_per_peer as usize;
    let h = Hostile::new(SCOPE);
    let before = a.node_stats();
    for _ in 0..DIALS {
        h.dial(a.listen_addrs()[0].clone());
    }
    eventually("the limit's connections up, the rest refused", WAIT, || {
        let refused = a.node_stats().connections_refused - before.connections_refused;
        let up = h.seen().connections.get(&a.peer_id()).copied().unwrap_or(0);
        if up == limit && refused as usize == DIALS - limit {
            Ok(())
        } else {
            Err(format!("{up} up, {refused} refused"))
        }
    })
    .await;
    assert_eq!(
        a.node_stats().peers,
        before.peers + 1,
        "one peer, however many connections"
    );
    let (p, took) = honest_join_propagates(&b, &ga, "after", Duration::from_millis(100)).await;
    eprintln!("{DIALS} dials: {limit} kept, the rest refused; an honest join then took {took:?}");
    drop((pa, pb, gb, p));
    finish(vec![a, b], vec![h]).await;
}

/// Frames waiting for the network on one node beyond which remote sends are `Unavailable`
/// (`outbox::MAX_QUEUED_FRAMES`, documented on `Instance::broadcast`).
const MAX_FRAMES_WAITING: usize = 65_536;

/// 8. A peer that never reads: it has a member (its own, by a valid delta), then stops reading
///    delivery streams. The broadcasting node's outbox bounds it: broadcasts keep returning at
///    once, at most 65 536 frames wait (then `Unavailable`), the failed batch opens the
///    peer's circuit breaker, whose frames are then counted lost, and deliveries to the honest
///    node go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_bounded_by_the_outbox() {
    let config = ScopeConfig::builder()
        .broadcast_timeout(Duration::from_secs(3))
        .max_retries(0)
        .circuit_breaker_failures(1)
        .circuit_breaker_reset_time(Duration::from_secs(60))
        .build()
        .unwrap();
    let (a, b) = pair(config).await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    let mut inbox_b = pb.listen("t");
    gb.join("b").unwrap();
    let h = Hostile::new(SCOPE);
    attach(&h, &[&a, &b]).await;
    h.publish_delta(&h.delta(&[("w", 1, 1)], true))
        .await
        .unwrap();
    let h1 = Pid::new(h.peer_id, 1);
    let expected = truth(&[("b", &[pb.pid()]), ("w", &[h1])]);
    converge("the hostile member everywhere", &[&ga, &gb], &expected).await;
    // A delivery works while it reads.
    assert_eq!(ga.broadcast("w", "t", &0u32).unwrap().slots(), 1);
    eventually("the first batch acknowledged", WAIT, || {
        h.seen().batches.len() == 1
    })
    .await;
    let na0 = a.node_stats();

    // It stops reading. Broadcasts to its member pile up until 65 536 frames wait.
    h.stall_deliveries(true);
    let started = Instant::now();
    let (mut sent, mut slowest) = (0usize, Duration::ZERO);
    let refusal = loop {
        assert!(
            sent <= MAX_FRAMES_WAITING + 1000,
            "no bound after {sent} broadcasts"
        );
        let call = Instant::now();
        let result = ga.broadcast("w", "t", &(sent as u32));
        slowest = slowest.max(call.elapsed());
        match result {
            Ok(delivery) => {
                assert_eq!(delivery.slots(), 1);
                sent += 1;
            }
            Err(e) => break e,
        }
    };
    let filled_in = started.elapsed();
    let (waiting, open) = (a.node_stats().frames_waiting, stats(&a).breakers.open);
    eprintln!(
        "never reads: {sent} broadcasts in {filled_in:?} (slowest call {slowest:?}), then \
         {refusal}; frames_waiting {waiting}; breakers open {open}"
    );
    // Refused by the bound on waiting frames (the batch in flight has not timed out yet).
    assert_eq!(
        refusal.kind(),
        procgroups::ErrorKind::Unavailable,
        "{refusal}"
    );
    assert_eq!(sent, MAX_FRAMES_WAITING, "{refusal}");
    assert!(waiting <= MAX_FRAMES_WAITING, "{waiting} frames wait");
    assert_eq!(
        open, 0,
        "the breaker opened before the bound was reached: too slow a machine"
    );
    // No call waits for the peer (the slowest is a scheduling hiccup of a loaded machine).
    assert!(
        slowest < Duration::from_secs(1),
        "a broadcast took {slowest:?}"
    );
    // The bound is the node's: a broadcast to the honest node is refused too while it holds.
    let to_b = ga.broadcast("b", "t", &0u32);
    assert!(
        to_b.is_err() || a.node_stats().frames_waiting < MAX_FRAMES_WAITING,
        "{to_b:?}"
    );

    // The batch in flight times out (3 s): the breaker opens and what waited is given up.
    eventually("the breaker open and the frames given up", WAIT, || {
        stats(&a).breakers.open == 1 && a.node_stats().frames_lost >= na0.frames_lost + sent as u64
    })
    .await;
    let na1 = a.node_stats();
    // While it is open, broadcasts return at once and its frames are counted lost.
    let call = Instant::now();
    for i in 0..1000u32 {
        assert_eq!(ga.broadcast("w", "t", &i).unwrap().slots(), 1);
    }
    let thousand = call.elapsed();
    eventually("the refused frames counted", WAIT, || {
        a.node_stats().frames_lost == na1.frames_lost + 1000
    })
    .await;
    let na2 = a.node_stats();
    eprintln!(
        "never reads: breaker open; {na0:?}\n  -> {na1:?}\n  -> {na2:?} (1000 broadcasts in {thousand:?})"
    );
    // Nothing waits any more: refused and given-up frames leave the count (they once stayed,
    // and 65 536 refusals blocked every remote send of the node for good).
    assert_eq!(na2.frames_waiting, 0, "{na2:?}");
    assert!(thousand < Duration::from_secs(2), "{thousand:?}");
    // Nothing reached the peer after it stopped reading (its stream was never read).
    assert_eq!(h.seen().batches.len(), 1);

    // (d) The honest node still gets A's broadcasts, in order, and joins still propagate.
    for i in 0..10u32 {
        assert_eq!(ga.broadcast("b", "t", &i).unwrap().slots(), 1);
    }
    for i in 0..10u32 {
        let m = tokio::time::timeout(WAIT, inbox_b.recv())
            .await
            .expect("B gets A's broadcast")
            .expect("the inbox is open");
        assert_eq!((m.from(), m.decode::<u32>().unwrap()), (pa.pid(), i));
    }
    let (pb2, _) = honest_join_propagates(&b, &ga, "later", Duration::from_secs(5)).await;
    let mut expected = expected;
    expected.insert("later".into(), vec![pb2.pid()]);
    converge("the views", &[&ga, &gb], &expected).await;
    drop((pa, pb, pb2));
    finish(vec![a, b], vec![h]).await;
}

/// 9. Peer exchange: a Discover answer naming 100 made-up peers with 10 addresses each. The
///    node dials at most 64 of the peers an answer names and at most 8 addresses of each; none
///    of them becomes a peer (they are not who they claim), and the views stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_exchange_is_capped_per_answer() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    // A Discover to each peer every 400 ms (anti-entropy's round robin over B and H).
    let config = ScopeConfig::builder()
        .anti_entropy_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    let (a, b) = pair(config).await;
    let ((pa, ga), (pb, gb), honest_view) = one_member_each(&a, &b).await;
    let h = Hostile::new(SCOPE);
    attach(&h, &[&a]).await;

    // Each made-up peer has a listener of its own, which records whether it was dialed.
    let mut hit = Vec::new();
    let mut own = Vec::new();
    for _ in 0..100 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        own.push(multiaddr(port));
        let dialed = Arc::new(AtomicBool::new(false));
        hit.push(dialed.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                dialed.store(true, Ordering::Relaxed);
                drop(socket);
            }
        });
    }
    // Nine addresses where nobody listens (refused at once).
    let (_held, closed) = refusing_addrs(9);
    // Peers 0..50 list their own address first, peers 50..100 ninth (beyond 8 addresses).
    let fakes: Vec<(libp2p::PeerId, Vec<libp2p::Multiaddr>)> = own
        .iter()
        .enumerate()
        .map(|(i, mine)| {
            let mut addrs = closed.clone();
            addrs.insert(if i < 50 { 0 } else { 8 }, mine.clone());
            (libp2p::PeerId::random(), addrs)
        })
        .collect();
    let d0 = h.seen().discovers_from(&a.peer_id());
    h.advertise_peers(fakes);
    eventually("A asks the hostile peer again", WAIT, || {
        h.seen().discovers_from(&a.peer_id()) > d0
    })
    .await;
    h.advertise_peers(Vec::new());
    // Peers 0..64 are dialed; of those, 50..64 only at their first 8 addresses (closed ones).
    let dialed = || hit.iter().filter(|d| d.load(Ordering::Relaxed)).count();
    eventually("the first 50 made-up peers dialed", WAIT, || dialed() == 50).await;
    assert!(hit[..50].iter().all(|d| d.load(Ordering::Relaxed)));

    // (d) None of them is a peer, the views are exact, and joins propagate.
    let (pb2, _) = honest_join_propagates(&b, &ga, "later", Duration::from_secs(5)).await;
    let mut expected = honest_view;
    expected.insert("later".into(), vec![pb2.pid()]);
    converge("the views", &[&ga, &gb], &expected).await;
    let mut peers = a.connected_peers();
    peers.sort();
    let mut want = vec![b.peer_id(), h.peer_id];
    want.sort();
    assert_eq!(peers, want);
    assert_eq!(stats(&a).peers, 2);
    // Still no listener of a peer beyond the caps was dialed.
    assert_eq!(
        dialed(),
        50,
        "a peer beyond 64, or an address beyond 8, was dialed"
    );
    drop((pa, pb, pb2));
    finish(vec![a, b], vec![h]).await;
}

fn multiaddr(port: u16) -> libp2p::Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
}

/// `n` loopback addresses that refuse connections, and the sockets that keep them so: each
/// port is held by a socket bound but not listening. A port merely bound and released could
/// be handed to a listener of a test running beside this one, which would then be dialed.
fn refusing_addrs(n: usize) -> (Vec<tokio::net::TcpSocket>, Vec<libp2p::Multiaddr>) {
    (0..n)
        .map(|_| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = multiaddr(socket.local_addr().unwrap().port());
            (socket, addr)
        })
        .unzip()
}

/// 10. Peer exchange answer after answer: a node with `max_known_peers = 20` asked again and
///     again by anti-entropy, each answer naming 64 made-up peers at addresses where nobody
///     listens. The node never keeps state of more than 20 peers; the made-up peers beyond
///     the cap are ignored and counted (`peers_ignored`); those it took are forgotten once
///     their dial fails; its views stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_exchange_answers_are_bounded_by_max_known_peers() {
    const MAX_KNOWN: usize = 20;
    let config = ScopeConfig::builder()
        .anti_entropy_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let a = Node::builder()
        .mdns(false)
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .network_config(procgroups::behaviour::BehaviourConfig {
            max_known_peers: MAX_KNOWN,
            mdns: false,
            ..Default::default()
        })
        .scope(SCOPE, config.clone())
        .build()
        .await
        .unwrap();
    let b = honest(config).await;
    b.dial(a.listen_addrs()[0].clone()).unwrap();
    let ((pa, ga), (pb, gb), honest_view) = one_member_each(&a, &b).await;
    let h = Hostile::new(SCOPE);
    attach(&h, &[&a]).await;
    eventually("A knows B and the hostile peer", WAIT, || {
        a.node_stats().known_peers == 2
    })
    .await;

    // Addresses where nobody listens: a dial fails at once.
    let (_held, closed) = refusing_addrs(8);
    let fakes = || -> Vec<(libp2p::PeerId, Vec<libp2p::Multiaddr>)> {
        (0..64)
            .map(|_| (libp2p::PeerId::random(), closed.clone()))
            .collect()
    };
    let n0 = a.node_stats();
    // Five answers in a row, each naming 64 new peers: 320 in all.
    let mut most_known = 0;
    for _ in 0..5 {
        let d0 = h.seen().discovers_from(&a.peer_id());
        h.advertise_peers(fakes());
        eventually("A asks the hostile peer again", WAIT, || {
            most_known = most_known.max(a.node_stats().known_peers);
            h.seen().discovers_from(&a.peer_id()) > d0 + 1
        })
        .await;
    }
    h.advertise_peers(Vec::new());
    eventually(
        "the made-up peers forgotten after their dials failed",
        WAIT,
        || {
            most_known = most_known.max(a.node_stats().known_peers);
            a.node_stats().known_peers == 2
        },
    )
    .await;
    let n1 = a.node_stats();
    assert!(most_known <= MAX_KNOWN, "A kept {most_known} peers");
    // Each answer found at most 18 free places (20 less B and the hostile peer).
    assert!(
        n1.peers_ignored >= n0.peers_ignored + 5 * (64 - 18),
        "{n0:?}\n  -> {n1:?}"
    );
    assert_eq!(n1.peers, 2, "{n1:?}");

    let (pb2, _) = honest_join_propagates(&b, &ga, "later", Duration::from_secs(5)).await;
    let mut expected = honest_view;
    expected.insert("later".into(), vec![pb2.pid()]);
    converge("the views", &[&ga, &gb], &expected).await;
    eprintln!("max_known_peers: most known {most_known}, A node {n0:?}\n  -> {n1:?}");
    drop((pa, pb, pb2));
    finish(vec![a, b], vec![h]).await;
}

/// 11. Replies to a call: the hostile peer's member is asked (one request frame for its node),
/// and the peer answers with replies the call did not ask for: from a process it did not
/// ask, naming two callers, to another process than the caller, to a call the node never
/// made; then the genuine reply, and the same again once the call has ended. Only the
/// genuine one is a reply; the others are counted, rejected or late, and reach no inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_replies_to_a_call_are_not_replies_and_are_counted() {
    let a = honest(ScopeConfig::default()).await;
    let (pa, ga) = spawn(&a);
    let h = Hostile::new(SCOPE);
    attach(&h, &[&a]).await;
    h.publish_delta(&h.delta(&[("w", 1, 1)], true))
        .await
        .unwrap();
    let h1 = Pid::new(h.peer_id, 1);
    converge("the hostile member", &[&ga], &truth(&[("w", &[h1])])).await;
    let before = a.node_stats();

    let call = tokio::spawn(async move {
        let results = ga
            .multi_call("w", "ask", &1u32, Duration::from_secs(30))
            .await;
        (ga, results)
    });
    let mut request = None;
    eventually("the request reached the hostile peer", WAIT, || {
        request = h.seen().batches.iter().find_map(|(_, batch)| {
            batch
                .frames
                .iter()
                .find(|f| matches!(f.call, Some(CallTag::Request { .. })))
                .cloned()
        });
        request.is_some()
    })
    .await;
    let request = request.unwrap();
    let Some(CallTag::Request { id }) = request.call else {
        unreachable!()
    };
    assert_eq!(
        (request.from, &request.targets[..]),
        (pa.pid().id(), &[1][..])
    );
    let reply = |from: u64, to: &[u64], id: u64| Frame {
        from,
        topic: "ask".into(),
        payload: cbor(&7u32).into(),
        targets: to.into(),
        call: Some(CallTag::Reply { id }),
    };
    let caller = pa.pid().id();
    let incarnation = h.own().incarnation;
    let strays = DeliverBatch {
        incarnation,
        seq: 1,
        frames: vec![
            reply(2, &[caller], id),
            reply(1, &[caller, caller], id),
            reply(1, &[caller + 1], id),
            reply(1, &[caller], id.wrapping_add(1000)),
            reply(1, &[caller], id),
        ],
    };
    let acked = h.request(Proto::Deliver, a.peer_id(), frame(&strays)).await;
    assert!(acked.is_ok(), "{acked:?}");
    let (ga, results) = tokio::time::timeout(WAIT, call)
        .await
        .expect("the call returns once its one member answered")
        .unwrap();
    let results = results.unwrap();
    assert!(results.bad.is_empty(), "{results:?}");
    let got: Vec<(Pid, u32)> = results
        .replies
        .iter()
        .map(|r| (r.from(), r.decode().unwrap()))
        .collect();
    assert_eq!(got, [(h1, 7)]);
    let again = DeliverBatch {
        incarnation,
        seq: 2,
        frames: vec![reply(1, &[caller], id)],
    };
    assert!(
        h.request(Proto::Deliver, a.peer_id(), frame(&again))
            .await
            .is_ok()
    );
    let after = a.node_stats();
    assert_eq!(
        after.call_replies_rejected,
        before.call_replies_rejected + 3,
        "{after:?}"
    );
    assert_eq!(
        after.call_replies_late,
        before.call_replies_late + 2,
        "{after:?}"
    );
    assert_eq!(
        (pa.dropped(), after.messages_dropped),
        (0, before.messages_dropped)
    );

    // The node keeps working.
    assert!(
        ga.multi_call("nobody", "ask", &(), None)
            .await
            .unwrap()
            .replies
            .is_empty()
    );
    drop((pa, ga));
    finish(vec![a], vec![h]).await;
}

/// 12. A peer that sends only rejected deltas (`procgroups::behaviour::scoring`): its first
///     costs it its place in A's gossipsub mesh (A prunes it at its next heartbeat, and the
///     peer sees the PRUNE) and takes it below the gossip threshold, so that its next RPCs
///     count in `gossip_ignored`; its third takes it below the graylist threshold, and from then on
///     A drops what it sends unread, gossipsub RPCs and delta-stream frames alike, counting
///     each. B, honest, is not touched: A graylists the hostile peer alone, and B's joins still
///     reach A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_only_rejected_deltas_is_pruned_and_graylisted() {
    let (a, b) = pair(ScopeConfig::default()).await;
    let ((pa, ga), (pb, gb), view) = one_member_each(&a, &b).await;
    let h = Hostile::with_delta_stream(SCOPE);
    attach(&h, &[&a]).await;
    eventually("A in H's mesh, H's delta stream to A open", WAIT, || {
        let seen = h.seen();
        seen.mesh.contains(&a.peer_id()) && seen.streams_open.contains(&a.peer_id())
    })
    .await;
    let (a0, na0) = (stats(&a), a.node_stats());
    let rejected = || stats(&a).deltas_rejected - a0.deltas_rejected;
    let seq_zero = |h: &Hostile| {
        let mut d = h.delta(&[("g", 1, 1)], false);
        d.seq = 0;
        d
    };

    // One rejected delta: out of the mesh, not yet graylisted.
    h.publish_delta(&seq_zero(&h)).await.unwrap();
    eventually("A rejects the first", WAIT, || rejected() == 1).await;
    eventually("A prunes H (A leaves H's mesh)", WAIT, || {
        !h.seen().mesh.contains(&a.peer_id())
    })
    .await;
    assert_eq!(a.node_stats().peers_graylisted, 0, "{:?}", a.node_stats());

    // Two more: graylisted.
    for _ in 0..2 {
        h.publish_delta(&seq_zero(&h)).await.unwrap();
    }
    eventually("A rejects three and graylists H", WAIT, || {
        rejected() == 3 && a.node_stats().peers_graylisted == 1
    })
    .await;
    // The second and third came while H was below the gossip threshold, above the graylist.
    eventually("A counts H's RPCs below the gossip threshold", WAIT, || {
        let ignored = a.node_stats().gossip_ignored - na0.gossip_ignored;
        if ignored >= 2 {
            Ok(())
        } else {
            Err(format!("{ignored} counted"))
        }
    })
    .await;

    // Now nothing H sends is read: 20 more bad deltas by gossipsub, then a valid delta of its
    // own by its delta stream.
    let dropped = || a.node_stats().graylisted_dropped - na0.graylisted_dropped;
    for _ in 0..20 {
        h.publish_delta(&seq_zero(&h)).await.unwrap();
    }
    eventually("A drops the 20 unread", WAIT, || dropped() >= 20).await;
    let before_frame = dropped();
    let own = h.delta(&[("h", 1, 1)], true);
    h.stream_frame(a.peer_id(), stream_frame_of(SCOPE, &own))
        .await
        .unwrap();
    eventually("A drops the frame unread", WAIT, || {
        dropped() > before_frame
    })
    .await;
    assert_eq!(rejected(), 3, "{:?}", stats(&a));
    assert!(ga.get_members("h").unwrap().is_empty());

    // B is untouched.
    let (pb2, took) = honest_join_propagates(&b, &ga, "later", Duration::from_secs(5)).await;
    let mut expected = view;
    expected.insert("later".into(), vec![pb2.pid()]);
    converge("the honest views", &[&ga, &gb], &expected).await;
    let na1 = a.node_stats();
    assert_eq!((na1.peers, na1.peers_graylisted), (2, 1), "{na1:?}");
    assert!(!h.seen().mesh.contains(&a.peer_id()));
    eprintln!(
        "graylisting: A rejected {}, dropped {} unread; B's join seen on A in {took:?}",
        rejected(),
        dropped()
    );
    drop((pa, pb, pb2));
    finish(vec![a, b], vec![h]).await;
}

/// 13. The same by the delta stream, which gossipsub never sees: three deltas of another
///     origin on the hostile peer's stream cost what three rejected gossipsub messages do
///     (the direct path's rejections are its application score), and its next frame, a valid
///     delta of its own, is dropped unread and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_streamed_deltas_graylist_their_peer_too() {
    let (a, b) = pair(ScopeConfig::default()).await;
    let ((pa, ga), (pb, gb), view) = one_member_each(&a, &b).await;
    let h = Hostile::with_delta_stream(SCOPE);
    attach(&h, &[&a]).await;
    eventually("H's delta stream to A open", WAIT, || {
        h.seen().streams_open.contains(&a.peer_id())
    })
    .await;
    let (a0, na0) = (stats(&a), a.node_stats());
    let rejected = || stats(&a).deltas_rejected - a0.deltas_rejected;
    let incarnation = rand::random();
    for seq in 1..=3 {
        let as_b = joining_as(pb.pid(), incarnation, seq, "evil");
        h.stream_frame(a.peer_id(), stream_frame_of(SCOPE, &as_b))
            .await
            .unwrap();
    }
    eventually("A rejects three and graylists H", WAIT, || {
        rejected() == 3 && a.node_stats().peers_graylisted == 1
    })
    .await;
    let own = h.delta(&[("h", 1, 1)], true);
    h.stream_frame(a.peer_id(), stream_frame_of(SCOPE, &own))
        .await
        .unwrap();
    eventually("A drops H's own delta unread", WAIT, || {
        a.node_stats().graylisted_dropped > na0.graylisted_dropped
    })
    .await;
    assert_eq!(rejected(), 3, "{:?}", stats(&a));
    assert!(ga.get_members("h").unwrap().is_empty());
    assert!(ga.get_members("evil").unwrap().is_empty());

    let (pb2, _) = honest_join_propagates(&b, &ga, "later", Duration::from_secs(5)).await;
    let mut expected = view;
    expected.insert("later".into(), vec![pb2.pid()]);
    converge("the honest views", &[&ga, &gb], &expected).await;
    drop((pa, pb, pb2));
    finish(vec![a, b], vec![h]).await;
}

/// 14. The scenario that made budgets per node, as first seen, with `max_groups` 100: the
///     hostile peer fills the budget with one delta of 100 groups of its own. A's process
///     still joins a new group, B's new group (joined meanwhile) is not refused on A, and once
///     the peer leaves all 100, A's view is exact, with no slot refused along the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_filling_max_groups_takes_nothing_from_the_node_or_its_peers() {
    const GROUPS: usize = 100;
    let config = ScopeConfig::builder().max_groups(GROUPS).build().unwrap();
    let (a, b) = pair(config).await;
    let ((pa, ga), (pb, gb), mut expected) = one_member_each(&a, &b).await;
    let h = Hostile::new(SCOPE);
    attach(&h, &[&a, &b]).await;
    let a0 = stats(&a);

    let names: Vec<String> = (0..GROUPS).map(|i| format!("h{i}")).collect();
    let joins: Vec<(&str, u64, i64)> = names.iter().map(|n| (n.as_str(), 1, 1)).collect();
    h.publish_delta(&h.delta(&joins, true)).await.unwrap();
    let h1 = Pid::new(h.peer_id, 1);
    let mut with_peer = expected.clone();
    for n in &names {
        with_peer.insert(n.clone(), vec![h1]);
    }
    converge("the peer's 100 groups on A and B", &[&ga, &gb], &with_peer).await;

    // A's own process joins a new group; B's joins one too.
    ga.join("a-new")
        .expect("a local join is not refused for a peer's groups");
    gb.join("b-new").unwrap();
    with_peer.insert("a-new".into(), vec![pa.pid()]);
    with_peer.insert("b-new".into(), vec![pb.pid()]);
    converge("both new groups everywhere", &[&ga, &gb], &with_peer).await;

    // The peer leaves all 100: A's view is exactly what the honest processes did.
    let leaves: Vec<(&str, u64, i64)> = names.iter().map(|n| (n.as_str(), 1, -1)).collect();
    h.publish_delta(&h.delta(&leaves, true)).await.unwrap();
    expected.insert("a-new".into(), vec![pa.pid()]);
    expected.insert("b-new".into(), vec![pb.pid()]);
    converge("A and B exact", &[&ga, &gb], &expected).await;
    let a1 = stats(&a);
    assert_eq!(a1.slots_refused, a0.slots_refused, "{a1:?}");
    let health = a.scope_health(SCOPE).unwrap();
    assert!(health.is_healthy(), "{health}");
    let (pa2, _) = honest_join_propagates(&a, &gb, "later", Duration::from_secs(5)).await;
    drop((pa, pb, pa2));
    finish(vec![a, b], vec![h]).await;
}
