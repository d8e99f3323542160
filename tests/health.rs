//! The health check and the metrics, observed as an operator would: through `Node::health`,
//! `Node::stats` and a scraped Prometheus registry, on real swarms over loopback TCP.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use procgroups::{HealthProblem, HealthStatus, Keypair, Node, ScopeConfig};
use prometheus_client::registry::Registry;

mod support;
use support::{WAIT, connect, embedded_pausable, eventually, holds_for};

const SCOPE: &str = "test:health";
const GRACE: Duration = Duration::from_millis(400);
const TIMEOUT: Duration = Duration::from_millis(300);

fn config() -> ScopeConfig {
    ScopeConfig::builder()
        .node_down_grace(GRACE)
        .protocol_timeout(TIMEOUT)
        .build()
        .expect("a valid config")
}

fn builder() -> procgroups::NodeBuilder {
    support::builder(SCOPE, config())
}

async fn node() -> Node {
    builder().build().await.expect("node")
}

fn healthy(node: &Node) -> bool {
    node.scope_health(SCOPE).unwrap().is_healthy()
}

/// The samples of a scraped registry: `name{labels}` → value.
fn scrape(registry: &Registry) -> BTreeMap<String, f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("name and value");
            (key.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {samples:#?}"))
}

/// The reference fails an idle lone node; we do not. Idle for several times every
/// threshold (protocol timeout, grace), the scope stays healthy, on one node and on two.
#[tokio::test]
async fn an_idle_node_and_an_idle_pair_stay_healthy() {
    let a = node().await;
    assert!(healthy(&a), "{:?}", a.health());
    holds_for("a lone idle node is healthy", TIMEOUT * 4, || healthy(&a)).await;

    let b = node().await;
    connect(&b, &a).await;
    eventually("each sees the other host the scope", WAIT, || {
        a.stats(SCOPE).unwrap().peers == 1 && b.stats(SCOPE).unwrap().peers == 1
    })
    .await;
    holds_for("an idle pair is healthy", GRACE * 3, || {
        healthy(&a) && healthy(&b)
    })
    .await;
    assert_eq!(a.health().len(), 1);
    assert!(a.scope_health("test:none").is_err());
}

/// A peer that says goodbye left on purpose: no partition.
#[tokio::test]
async fn a_peer_that_said_goodbye_is_not_a_partition() {
    let a = node().await;
    let b = node().await;
    connect(&b, &a).await;
    let pb = b.spawn_process();
    pb.open(SCOPE).unwrap().join("g").unwrap();
    eventually("b's member on a", WAIT, || {
        a.stats(SCOPE).unwrap().members == 1
    })
    .await;
    b.shutdown().await;
    eventually("b's member gone at once", Duration::from_secs(5), || {
        a.stats(SCOPE).unwrap().members == 0
    })
    .await;
    holds_for("a is healthy", GRACE * 3, || healthy(&a)).await;
    assert_eq!(a.stats(SCOPE).unwrap().peers_unreachable, 0);
}

/// A peer lost without a goodbye is reported as a partition once the grace has passed (its
/// members are purged then), and no longer once it is back.
#[tokio::test]
async fn a_lost_peer_is_a_partition_until_it_returns() {
    let a = node().await;
    let key = Keypair::generate_ed25519();
    let b = builder().keypair(key.clone()).build().await.unwrap();
    let b_id = b.peer_id();
    connect(&b, &a).await;
    let pb = b.spawn_process();
    pb.open(SCOPE).unwrap().join("g").unwrap();
    eventually("b's member on a", WAIT, || {
        a.stats(SCOPE).unwrap().members == 1
    })
    .await;

    let lost_at = Instant::now();
    drop(pb);
    drop(b); // no goodbye: the connection just closes
    eventually("a reports the partition", WAIT, || !healthy(&a)).await;
    let health = a.scope_health(SCOPE).unwrap();
    assert!(lost_at.elapsed() >= GRACE, "reported before the grace");
    assert_eq!(health.status, HealthStatus::Degraded, "{health}");
    match &health.problems[..] {
        [
            HealthProblem::Partitioned {
                peers,
                for_at_least,
            },
        ] => {
            assert_eq!(peers, &[b_id]);
            assert!(*for_at_least >= GRACE);
        }
        other => panic!("unexpected problems: {other:?}"),
    }
    let stats = a.stats(SCOPE).unwrap();
    assert_eq!((stats.peers, stats.peers_unreachable), (0, 1));
    eventually("b's member purged", WAIT, || {
        a.stats(SCOPE).unwrap().members == 0
    })
    .await;

    let b = builder().keypair(key).build().await.unwrap();
    connect(&b, &a).await;
    eventually("healthy again once b is back", WAIT, || healthy(&a)).await;
    let stats = a.stats(SCOPE).unwrap();
    assert_eq!((stats.peers, stats.peers_unreachable), (1, 0));
}

/// An application that embeds the behaviour and stops polling its swarm wedges the node:
/// unhealthy (and metric 2) until it polls again. Local changes pile up meanwhile: a full
/// action queue is reported too, and drains to the peer once the swarm runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_that_is_not_polled_is_a_stalled_loop() {
    let small_queue = config()
        .to_builder()
        .action_queue_size(2)
        .action_queue_max_size(4)
        .build()
        .unwrap();
    // `true` polls the swarm, `false` holds it without polling.
    let (node, polling, driver) = embedded_pausable(SCOPE, small_queue);
    let mut registry = Registry::default();
    node.register_metrics(&mut registry);
    let health_metric = format!("procgroups_health{{scope=\"{SCOPE}\"}}");
    eventually("the swarm listens", Duration::from_secs(5), || {
        !node.listen_addrs().is_empty()
    })
    .await;
    let peer = self::node().await;
    connect(&peer, &node).await;
    eventually("the peer shares the scope", WAIT, || {
        node.stats(SCOPE).unwrap().peers == 1
    })
    .await;
    holds_for("healthy while polled", TIMEOUT * 2, || healthy(&node)).await;
    assert_eq!(sample(&scrape(&registry), &health_metric), 0.0);

    polling.send(false).unwrap();
    eventually("unhealthy once not polled", Duration::from_secs(5), || {
        !healthy(&node)
    })
    .await;
    let health = node.scope_health(SCOPE).unwrap();
    assert_eq!(health.status, HealthStatus::Unhealthy, "{health}");
    assert!(
        matches!(health.problems[..], [HealthProblem::LoopStalled { silent_for }] if silent_for > TIMEOUT),
        "{health}"
    );
    assert_eq!(sample(&scrape(&registry), &health_metric), 2.0);

    let p = node.spawn_process();
    let pg = p.open(SCOPE).unwrap();
    // The queue counts deltas (each up to 60 KiB of ops): a few thousand joins fill one.
    let mut joined = 0;
    let refused = loop {
        match pg.join("g") {
            Ok(()) => joined += 1,
            Err(e) => break e,
        }
        assert!(joined <= 1_000_000, "the action queue did not fill");
    };
    assert_eq!(
        refused.kind(),
        procgroups::ErrorKind::Unavailable,
        "{refused}"
    );
    let health = node.scope_health(SCOPE).unwrap();
    assert!(
        health
            .problems
            .contains(&HealthProblem::Backlog { queued: 4, max: 4 }),
        "{health}"
    );
    assert_eq!(node.stats(SCOPE).unwrap().deltas_queued, 4);

    polling.send(true).unwrap();
    eventually("healthy once polled again", Duration::from_secs(5), || {
        healthy(&node)
    })
    .await;
    eventually("the queued joins reach the peer", WAIT, || {
        peer.stats(SCOPE).unwrap().members == joined
    })
    .await;
    pg.join("after").unwrap();
    drop((pg, p));
    node.shutdown().await;
    eventually("stopped after shutdown", Duration::from_secs(5), || {
        node.scope_health(SCOPE).unwrap().problems == [HealthProblem::Stopped]
    })
    .await;
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the swarm reports the stop")
        .unwrap();
}

/// The figures an operator reads: sizes, peers, deltas, deliveries and frames, the same in
/// `Node::stats` and in the scraped registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_members_deltas_and_deliveries() {
    let a = node().await;
    let b = node().await;
    let (mut reg_a, mut reg_b) = (Registry::default(), Registry::default());
    a.register_metrics(&mut reg_a);
    b.register_metrics(&mut reg_b);
    connect(&b, &a).await;

    let pa = a.spawn_process();
    let ga = pa.open(SCOPE).unwrap();
    let pb = b.spawn_process();
    let gb = pb.open(SCOPE).unwrap();
    // Deltas made before a node's delta stream to the other is open go by gossipsub.
    eventually("the delta streams open both ways", WAIT, || {
        a.node_stats().delta_streams_open == 1 && b.node_stats().delta_streams_open == 1
    })
    .await;
    ga.join(["g", "g", "h"]).unwrap();
    let mut inbox = pb.listen("news");
    gb.join("g").unwrap();
    eventually("both views complete", WAIT, || {
        a.stats(SCOPE).unwrap().members == 4 && b.stats(SCOPE).unwrap().members == 4
    })
    .await;
    // The first joins may reach b by a sync; one made now is a delta.
    ga.join("late").unwrap();
    eventually("the late join on b", WAIT, || {
        b.stats(SCOPE).unwrap().members == 5
    })
    .await;
    let mut a_inbox = pa.listen("news");
    assert_eq!(ga.broadcast("g", "news", &1u8).unwrap().slots(), 3);
    tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .unwrap()
        .unwrap();
    for _ in 0..2 {
        a_inbox.recv().await.unwrap();
    }
    eventually("the frame acknowledged", WAIT, || {
        a.node_stats().frames_sent == 1
    })
    .await;

    let stats = a.stats(SCOPE).unwrap();
    assert_eq!(
        (stats.groups, stats.members, stats.local_members),
        (3, 5, 4)
    );
    assert_eq!(stats.peers, 1);
    // Two connected nodes: the deltas go on the delta stream, none on gossipsub.
    assert!(stats.deltas_streamed >= 1, "{stats:?}");
    assert_eq!(stats.deltas_sent, 0, "{stats:?}");
    assert_eq!(
        (
            stats.broadcasts,
            stats.delivered_local,
            stats.delivered_remote,
            stats.frames_queued
        ),
        (1, 2, 1, 1)
    );
    assert_eq!(stats.breakers.closed, 1, "{stats:?}");
    assert_eq!(b.node_stats().frames_received, 1);
    assert!(b.stats(SCOPE).unwrap().deltas_applied >= 1);

    let scope = format!("scope=\"{SCOPE}\"");
    let m = scrape(&reg_a);
    for (key, value) in [
        (format!("procgroups_groups{{{scope}}}"), 3.0),
        (format!("procgroups_members{{{scope}}}"), 5.0),
        (format!("procgroups_local_members{{{scope}}}"), 4.0),
        (format!("procgroups_peers{{{scope}}}"), 1.0),
        (format!("procgroups_peers_unreachable{{{scope}}}"), 0.0),
        (
            format!("procgroups_breakers{{{scope},state=\"closed\"}}"),
            1.0,
        ),
        (
            format!("procgroups_breakers{{{scope},state=\"open\"}}"),
            0.0,
        ),
        (format!("procgroups_broadcasts_total{{{scope}}}"), 1.0),
        (
            format!("procgroups_deliveries_total{{{scope},target=\"local\"}}"),
            2.0,
        ),
        (
            format!("procgroups_deliveries_total{{{scope},target=\"remote\"}}"),
            1.0,
        ),
        (
            format!("procgroups_drops_total{{{scope},what=\"event\"}}"),
            0.0,
        ),
        (format!("procgroups_health{{{scope}}}"), 0.0),
        ("procgroups_node_peers".to_owned(), 1.0),
        ("procgroups_frames_total{outcome=\"sent\"}".to_owned(), 1.0),
        ("procgroups_frames_total{outcome=\"lost\"}".to_owned(), 0.0),
        ("procgroups_frames_waiting".to_owned(), 0.0),
        ("procgroups_delta_frames_lost_total".to_owned(), 0.0),
    ] {
        assert_eq!(sample(&m, &key), value, "{key}");
    }
    assert_eq!(
        sample(
            &m,
            &format!("procgroups_deltas_total{{{scope},outcome=\"sent\"}}")
        ),
        stats.deltas_sent as f64
    );
    assert_eq!(
        sample(
            &m,
            &format!("procgroups_deltas_total{{{scope},outcome=\"streamed\"}}")
        ),
        stats.deltas_streamed as f64
    );
    let m = scrape(&reg_b);
    assert_eq!(
        sample(&m, "procgroups_frames_total{outcome=\"received\"}"),
        1.0
    );
    assert_eq!(sample(&m, &format!("procgroups_members{{{scope}}}")), 5.0);
    assert_eq!(
        sample(
            &m,
            &format!("procgroups_deltas_total{{{scope},outcome=\"applied\"}}")
        ),
        b.stats(SCOPE).unwrap().deltas_applied as f64
    );

    // A registry outliving its node reports nothing for it.
    drop((ga, pa, gb, pb));
    a.shutdown().await;
    drop(a);
    assert!(
        !scrape(&reg_a)
            .keys()
            .any(|k| k.starts_with("procgroups_members"))
    );
}
