//! The node's behaviour embedded in an application's own swarm.

use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use procgroups::behaviour::Event;
use procgroups::{Keypair, Node, ScopeConfig};

mod support;
use support::{WAIT, app_swarm, eventually};

const SCOPE: &str = "test:embed";

#[derive(NetworkBehaviour)]
struct App {
    groups: procgroups::behaviour::Behaviour,
    ping: libp2p::ping::Behaviour,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_node_talks_to_a_standalone_one() {
    let keypair = Keypair::generate_ed25519();
    let (a, groups) = Node::builder()
        .keypair(keypair.clone())
        .mdns(false)
        .scope(SCOPE, ScopeConfig::default())
        .build_behaviour()
        .unwrap();
    let mut swarm = app_swarm(
        keypair,
        App {
            groups,
            ping: Default::default(),
        },
    );
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(AppEvent::Groups(Event::Stopped)) =
                swarm.select_next_some().await
            {
                stopped_tx.send(()).ok();
                return;
            }
        }
    });
    eventually(
        "the application's swarm listens",
        Duration::from_secs(5),
        || !a.listen_addrs().is_empty(),
    )
    .await;

    let b = support::node(SCOPE, ScopeConfig::default()).await;
    b.dial(a.listen_addrs()[0].clone()).unwrap();

    let pa = a.spawn_process();
    let ga = pa.open(SCOPE).unwrap();
    let mut inbox = pa.listen("news");
    ga.join("g").unwrap();
    let pb = b.spawn_process();
    let gb = pb.open(SCOPE).unwrap();
    gb.join("g").unwrap();
    eventually("both members on both nodes", WAIT, || {
        ga.get_members("g").unwrap().len() == 2 && gb.get_members("g").unwrap().len() == 2
    })
    .await;
    gb.broadcast("g", "news", &7u32).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.from(), m.decode::<u32>().unwrap()), (pb.pid(), 7));

    // A graceful shutdown tells B, and the behaviour reports that it stopped.
    drop(ga);
    drop(pa);
    a.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), stopped_rx)
        .await
        .unwrap()
        .unwrap();
    eventually("a's member gone from b", Duration::from_secs(5), || {
        gb.get_members("g").unwrap().len() == 1
    })
    .await;
    b.shutdown().await;
}

/// A node whose behaviour nobody polls (or that was dropped) still shuts down, in bounded
/// time.
#[tokio::test]
async fn shutdown_is_bounded_when_the_swarm_is_not_polled() {
    let (node, behaviour) = Node::builder()
        .mdns(false)
        .scope(SCOPE, ScopeConfig::default())
        .build_behaviour()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .expect("shutdown returns although the behaviour is never polled");
    let (node, _) = Node::builder()
        .mdns(false)
        .scope(SCOPE, ScopeConfig::default())
        .build_behaviour()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), node.shutdown())
        .await
        .expect("shutdown returns at once when the behaviour is gone");
    drop(behaviour);
}
