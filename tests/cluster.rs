//! Several nodes in one test process over loopback TCP.

use std::time::Duration;

use procgroups::{Node, ScopeConfig};

const SCOPE: &str = "test:cluster";

async fn node() -> Node {
    Node::builder()
        .mdns(false)
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .scope(SCOPE, ScopeConfig::default())
        .build()
        .await
        .expect("node")
}

/// Waits until `cond` holds, polling; fails after `secs`.
async fn eventually(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn remote_join_is_visible() {
    let a = node().await;
    let b = node().await;
    b.dial(a.listen_addrs()[0].clone()).unwrap();
    let pa = a.spawn_process();
    let ga = pa.open(SCOPE).unwrap();
    ga.join("g").unwrap();
    let pb = b.spawn_process();
    let gb = pb.open(SCOPE).unwrap();
    eventually("a's join on b", 10, || {
        gb.get_members("g").unwrap().contains(&pa.pid())
    })
    .await;
    gb.join("g").unwrap();
    eventually("b's join on a", 10, || {
        ga.get_members("g").unwrap().len() == 2
    })
    .await;
    let mut inbox = pb.listen("t");
    assert_eq!(ga.broadcast("g", "t", &"hi").unwrap(), 2);
    let m = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.decode::<String>().unwrap(), "hi");
    assert_eq!(m.from(), pa.pid());
    a.shutdown().await;
    eventually("a's leave on b", 5, || {
        gb.get_members("g").unwrap().len() == 1
    })
    .await;
    b.shutdown().await;
}
