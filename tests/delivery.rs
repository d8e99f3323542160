//! The fate of a remote delivery, over real swarms on loopback: what `send` and `broadcast`
//! report once the target nodes have acknowledged the message or it was given up.
//!
//! Every wait is on the delivery's own outcome or a condition, with a deadline; no test
//! sleeps to synchronise.

use std::time::{Duration, Instant};

use procgroups::{
    AttemptError, Delivery, DeliveryOutcome, FailedNode, FailureReason, Node, PeerId, Pid,
    ScopeConfig,
};

mod support;
use support::{WAIT, connect, cut, eventually, next_message, spawn, view};

const SCOPE: &str = "test:delivery";
/// Deliveries given up quickly, with a dead node's members kept (the test's broadcasts still target it).
fn config() -> ScopeConfig {
    support::quick_give_up()
}

async fn node() -> Node {
    support::node(SCOPE, config()).await
}

/// The outcome of `delivery`, which must come within [`WAIT`].
async fn outcome(delivery: &Delivery) -> DeliveryOutcome {
    tokio::time::timeout(WAIT, delivery.outcome())
        .await
        .expect("the delivery resolves within the timeout")
}

/// Every attempt failed because the node could not be reached.
fn unreachable(peer: PeerId) -> FailedNode {
    FailedNode {
        peer,
        reason: FailureReason::AttemptsFailed {
            attempts: support::RETRIES + 1,
            last_error: AttemptError::Unreachable,
        },
    }
}

#[tokio::test]
async fn a_send_to_a_live_node_is_delivered() {
    let (a, b) = (node().await, node().await);
    connect(&a, &b).await;
    let pa = a.spawn_process();
    let pb = b.spawn_process();
    let mut inbox = pb.listen("t");
    let delivery = pa.send(&pb.pid(), "t", &1u32).expect("sent");
    assert_eq!(delivery.slots(), 1);
    assert_eq!(outcome(&delivery).await, DeliveryOutcome::Delivered);
    assert_eq!(next_message(&mut inbox).await.decode::<u32>().unwrap(), 1);

    // "Delivered" is the node's acceptance: a process that does not run there still is.
    let nobody = Pid::new(b.peer_id(), 1);
    let delivery = pa.send(&nobody, "t", &2u32).expect("sent");
    assert_eq!(outcome(&delivery).await, DeliveryOutcome::Delivered);
    assert_eq!(a.node_stats().frames_lost, 0);
}

#[tokio::test]
async fn a_send_to_a_shut_down_node_fails_within_the_retry_budget() {
    let (a, b) = (node().await, node().await);
    connect(&a, &b).await;
    let pa = a.spawn_process();
    let target = b.spawn_process().pid();
    b.shutdown().await;
    eventually("the connection closed", WAIT, || {
        !a.connected_peers().contains(&b.peer_id())
    })
    .await;

    let started = Instant::now();
    let delivery = pa.send(&target, "t", &1u32).expect("queued");
    let DeliveryOutcome::Failed { delivered, failed } = outcome(&delivery).await else {
        panic!("delivered to a node that shut down");
    };
    assert!(delivered.is_empty());
    assert_eq!(failed, [unreachable(b.peer_id())]);
    eprintln!("given up after {:?}", started.elapsed());
    assert_eq!(a.node_stats().frames_lost, 1);
    assert_eq!(a.node_stats().frames_waiting, 0);
}

#[tokio::test]
async fn a_send_to_a_node_never_reached_fails_and_the_reason_reads() {
    let a = node().await;
    let pa = a.spawn_process();
    let stranger = PeerId::random();
    let delivery = pa.send(&Pid::new(stranger, 7), "t", &1u32).expect("queued");
    let outcome = outcome(&delivery).await;
    assert_eq!(
        outcome,
        DeliveryOutcome::Failed {
            delivered: vec![],
            failed: vec![unreachable(stranger)],
        }
    );
    let text = outcome.to_string();
    assert!(text.contains(&stranger.to_string()), "{text}");
    assert!(text.contains("3 attempt(s)"), "{text}");
    assert_eq!(delivery.try_outcome(), Some(outcome));
}

#[tokio::test]
async fn a_broadcast_to_a_live_node_and_a_dead_one_reports_both() {
    let (a, b) = (node().await, node().await);
    // c talks to a only, so that nothing of c reaches a through b once a and c are cut.
    let c = support::builder(SCOPE, config())
        .allow_peers([a.peer_id()])
        .build()
        .await
        .expect("the node starts");
    connect(&a, &b).await;
    connect(&a, &c).await;
    let (_pa, ga) = spawn(&a, SCOPE);
    let (pb, gb) = spawn(&b, SCOPE);
    let (pc, gc) = spawn(&c, SCOPE);
    let mut inbox = pb.listen("t");
    let _c_inbox = pc.listen("t");
    gb.join("g").unwrap();
    gc.join(["g", "g"]).unwrap();
    eventually("b's and c's members on a", WAIT, || {
        view(&ga).get("g").is_some_and(|m| m.len() == 3)
    })
    .await;

    // Both alive: delivered, once both nodes acknowledged.
    let delivery = ga.broadcast("g", "t", &1u32).expect("sent");
    assert_eq!(delivery.slots(), 3);
    assert_eq!(outcome(&delivery).await, DeliveryOutcome::Delivered);
    next_message(&mut inbox).await;

    // c becomes unreachable and dies without a word (its process's leave reaches nobody):
    // a keeps its members, since the grace outlasts the test.
    let c_peer = c.peer_id();
    cut(&a, &c).await;
    drop((gc, pc, c));
    let delivery = ga.broadcast("g", "t", &2u32).expect("sent");
    assert_eq!(delivery.slots(), 3, "c's two slots are still targeted");
    assert_eq!(
        outcome(&delivery).await,
        DeliveryOutcome::Failed {
            delivered: vec![b.peer_id()],
            failed: vec![unreachable(c_peer)],
        }
    );
    assert_eq!(next_message(&mut inbox).await.decode::<u32>().unwrap(), 2);
}

#[tokio::test]
async fn a_delivery_pending_when_its_node_shuts_down_fails_as_a_shutdown() {
    // Patient retries towards a node that cannot be reached: the delivery is still pending
    // when the sender shuts down.
    let patient = ScopeConfig::builder()
        .max_retries(1000)
        .retry_base_delay(Duration::from_secs(1))
        .retry_max_delay(Duration::from_secs(1))
        .circuit_breaker_failures(1000)
        .build()
        .expect("a valid config");
    let a = support::node(SCOPE, patient).await;
    let pa = a.spawn_process();
    let stranger = PeerId::random();
    let delivery = pa.send(&Pid::new(stranger, 7), "t", &1u32).expect("queued");
    assert_eq!(delivery.try_outcome(), None);
    a.shutdown().await;
    assert_eq!(
        outcome(&delivery).await,
        DeliveryOutcome::Failed {
            delivered: vec![],
            failed: vec![FailedNode {
                peer: stranger,
                reason: FailureReason::Shutdown,
            }],
        }
    );
    assert!(pa.send(&Pid::new(stranger, 7), "t", &2u32).is_err());
}

#[tokio::test]
async fn local_slots_are_delivered_at_once_and_the_handle_may_be_dropped() {
    let (a, b) = (node().await, node().await);
    connect(&a, &b).await;
    let (pa, ga) = spawn(&a, SCOPE);
    let mut local = pa.listen("t");
    ga.join("g").unwrap();
    let delivery = ga.broadcast("g", "t", &1u32).expect("sent");
    assert_eq!(delivery.try_outcome(), Some(DeliveryOutcome::Delivered));
    let delivery = ga.broadcast_local("g", "t", &2u32).expect("sent");
    assert_eq!(delivery.slots(), 1);
    assert_eq!(delivery.try_outcome(), Some(DeliveryOutcome::Delivered));
    next_message(&mut local).await;
    next_message(&mut local).await;

    // Dropped at once: the message goes on its way the same.
    let pb = b.spawn_process();
    let mut remote = pb.listen("t");
    drop(pa.send(&pb.pid(), "t", &3u32).expect("sent"));
    assert_eq!(next_message(&mut remote).await.decode::<u32>().unwrap(), 3);
}
