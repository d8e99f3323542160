//! Kademlia for the WAN: with mDNS off, nodes given only a bootstrap node find the other
//! members of their scope through the DHT (providers of the scope's key), connect to them
//! directly and converge.

use std::collections::BTreeSet;
use std::time::Duration;

use procgroups::{Node, PeerId, ScopeConfig};

mod support;
use support::{WAIT, eventually};

const SCOPE: &str = "test:wan";

fn builder() -> procgroups::NodeBuilder {
    support::builder(SCOPE, ScopeConfig::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_find_each_other_through_the_dht_from_one_bootstrap_node() {
    let first = builder().build().await.unwrap();
    let bootstrap = first.listen_addrs()[0].clone();
    converge(vec![first], bootstrap, 4).await;
}

/// The bootstrap node hosts no scope: it relays no delta and knows no member, so the members
/// can only meet through the providers of the scope's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_meet_through_the_providers_of_the_scope_key() {
    let dht_only = Node::builder()
        .mdns(false)
        .listen_on(support::loopback())
        .build()
        .await
        .unwrap();
    let bootstrap = dht_only.listen_addrs()[0].clone();
    converge(Vec::new(), bootstrap, 5).await;
    dht_only.shutdown().await;
}

/// Starts `more` members bootstrapping from `bootstrap` beside `nodes`, and checks that every
/// member connects to every other and sees every member.
async fn converge(mut nodes: Vec<Node>, bootstrap: procgroups::Multiaddr, more: usize) {
    for _ in 0..more {
        nodes.push(
            builder()
                .bootstrap([bootstrap.clone()])
                .build()
                .await
                .unwrap(),
        );
    }
    let ids: BTreeSet<PeerId> = nodes.iter().map(Node::peer_id).collect();
    let bootstrap_peer = match bootstrap.iter().last() {
        Some(procgroups::multiaddr::Protocol::P2p(peer)) => peer,
        _ => panic!("bootstrap address without /p2p"),
    };
    let mut processes = Vec::new();
    let mut instances = Vec::new();
    for node in &nodes {
        let p = node.spawn_process();
        let pg = p.open(SCOPE).unwrap();
        pg.join("g").unwrap();
        processes.push(p);
        instances.push(pg);
    }

    // Nobody was given another node's address but the first's: every direct connection
    // between two of the others comes from the DHT.
    for node in &nodes {
        let others: BTreeSet<PeerId> = ids
            .iter()
            .copied()
            .filter(|p| *p != node.peer_id())
            .collect();
        eventually(
            "every member connected to every other",
            Duration::from_secs(30),
            || {
                let connected: BTreeSet<PeerId> = node
                    .connected_peers()
                    .into_iter()
                    .filter(|p| *p != bootstrap_peer || ids.contains(p))
                    .collect();
                connected == others
            },
        )
        .await;
    }
    let all: BTreeSet<_> = processes.iter().map(|p| p.pid()).collect();
    for pg in &instances {
        eventually("every member everywhere", WAIT, || {
            pg.get_members("g").unwrap().iter().collect::<BTreeSet<_>>() == all
        })
        .await;
    }
    drop(instances);
    drop(processes);
    for node in &nodes {
        node.shutdown().await;
    }
}
