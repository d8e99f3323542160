//! A pool of workers on one node: they join a group, a dispatcher broadcasts tasks to it, a
//! monitor watches the pool change, and a worker's exit removes it everywhere.
//!
//! `cargo run --example workers`

use std::time::Duration;

use procgroups::{EventKind, Node, ScopeConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Task {
    id: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> procgroups::Result<()> {
    let node = Node::builder()
        .mdns(false)
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
        .scope("app:pg", ScopeConfig::default())
        .build()
        .await?;

    let dispatcher = node.spawn_process();
    let pg = dispatcher.open("app:pg")?;
    let (mut pool, members) = pg.monitor("workers")?;
    println!("pool at start: {} members", members.len());

    let mut workers = Vec::new();
    for n in 0..3 {
        let worker = node.spawn_process();
        let inbox = worker.listen("task");
        let instance = worker.open("app:pg")?;
        instance.join("workers")?;
        println!("worker {n} is {}", worker.pid());
        workers.push((worker, instance, inbox));
    }

    let delivery = pg.broadcast("workers", "task", &Task { id: 42 })?;
    // Every slot is on this node: delivered at once (to another node, once it acknowledged).
    println!(
        "task 42 sent to {} slots: {}",
        delivery.slots(),
        delivery.outcome().await
    );
    for (worker, _, inbox) in &mut workers {
        let msg = inbox.recv().await.expect("the worker is alive");
        let task: Task = msg.decode()?;
        println!("{} got task {} from {}", worker.pid(), task.id, msg.from());
    }

    // One worker exits: it leaves every group, and the monitor sees it.
    let (leaving, _, _) = workers.remove(0);
    let pid = leaving.pid();
    drop(leaving);
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), pool.recv()).await {
        println!("{} {} {:?}", event.kind, event.group, event.pids);
        if event.kind == EventKind::MemberLeft && event.pids.contains(&pid) {
            break;
        }
    }
    println!(
        "pool now: {} members; groups: {:?}",
        pg.get_members("workers")?.len(),
        pg.which_groups()?
    );
    node.shutdown().await;
    Ok(())
}
