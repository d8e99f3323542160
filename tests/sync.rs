//! Sync of a large state: paged under the response cap, reassembled, applied once.

use std::collections::BTreeSet;
use std::time::Duration;

use procgroups::behaviour::BehaviourConfig;
use procgroups::{ErrorKind, Node, ScopeConfig};

mod support;
use support::eventually;

const SCOPE: &str = "test:sync";

fn small_pages() -> BehaviourConfig {
    BehaviourConfig {
        mdns: false,
        max_response_bytes: 4096,
        ..BehaviourConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_larger_than_a_response_arrives_in_pages() {
    let build = || {
        Node::builder()
            .network_config(small_pages())
            .listen_on(support::loopback())
            .scope(SCOPE, ScopeConfig::default())
            .build()
    };
    let a = build().await.unwrap();
    // Joined before B exists: B can only learn them by a sync, and 2000 slots in 20 groups
    // (one of 1000) make about 1100 (process, slots) entries, several times the page size.
    let procs: Vec<_> = (0..100).map(|_| a.spawn_process()).collect();
    let mut expected = BTreeSet::new();
    for (i, p) in procs.iter().enumerate() {
        let pg = p.open(SCOPE).unwrap();
        let mut groups: Vec<String> = (0..10).map(|g| format!("group-{}", (i + g) % 20)).collect();
        groups.extend((0..10).map(|_| "big".to_string()));
        pg.join(groups.clone()).unwrap();
        for g in groups {
            expected.insert((g, p.pid()));
        }
    }
    let b = build().await.unwrap();
    let observer = b.spawn_process();
    let pg = observer.open(SCOPE).unwrap();
    b.dial(a.listen_addrs()[0].clone()).unwrap();
    eventually("the whole state on B", Duration::from_secs(20), || {
        pg.get_members("big").unwrap().len() == 1000
    })
    .await;
    let mut seen = BTreeSet::new();
    for g in pg.which_groups().unwrap().iter() {
        let members = pg.get_members(g).unwrap();
        for pid in members.iter() {
            seen.insert((g.to_string(), pid));
        }
    }
    assert_eq!(seen, expected);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn network_caps_are_validated() {
    let err = Node::builder()
        .network_config(BehaviourConfig {
            max_request_bytes: 10,
            mdns: false,
            ..BehaviourConfig::default()
        })
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("max_request_bytes"), "{err}");
}
