//! Scatter-gather calls and send-to-one over real swarms on loopback: `multi_call` gathers the
//! replies of a group's members on every node within its timeout and names those that did
//! not answer; `send_to_one` prefers a local member, and spreads over the nodes otherwise.
//!
//! Every wait is on a call's own result or on a condition, with a deadline; no test sleeps to
//! synchronise.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use procgroups::{CallResults, Error, ErrorKind, Inbox, Instance, Node, Pid, Process, ScopeConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod support;
use support::{WAIT, connect, cut, eventually, next_message, spawn};

const SCOPE: &str = "test:calls";
/// What a call may take past its timeout on a loaded machine.
const MARGIN: Duration = Duration::from_secs(2);
/// Deliveries given up quickly, with a dead node's members kept (the test's calls still ask its members).
fn config() -> ScopeConfig {
    support::quick_give_up()
}

async fn node() -> Node {
    support::node(SCOPE, config()).await
}

/// A member of `group` on `node`, which listens to `topic` (before joining, `slots` times).
fn member(node: &Node, group: &str, topic: &str, slots: usize) -> (Process, Instance, Inbox) {
    let (p, pg) = spawn(node, SCOPE);
    let inbox = p.listen(topic);
    pg.join(vec![group; slots]).expect("join");
    (p, pg, inbox)
}

/// Answers every request of `inbox` (the inbox of process `pid`) with `pid` as text, until
/// the inbox ends; gives the number of requests answered.
fn answer_with_pid(pid: Pid, mut inbox: Inbox) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let mut answered = 0;
        while let Some(request) = inbox.recv().await {
            assert!(request.is_request(), "{request:?}");
            request.reply(&pid.to_string()).expect("a reply");
            answered += 1;
        }
        answered
    })
}

/// Waits until `pg` sees `slots` slots in `group`.
async fn members_seen(pg: &Instance, group: &str, slots: usize) {
    eventually(&format!("{slots} slots of {group}"), WAIT, || {
        let seen = pg.get_members(group).expect("get_members").len();
        if seen == slots {
            Ok(())
        } else {
            Err(format!("{seen} slots"))
        }
    })
    .await;
}

fn sorted(mut pids: Vec<Pid>) -> Vec<Pid> {
    pids.sort();
    pids
}

fn repliers(results: &CallResults) -> Vec<Pid> {
    sorted(results.replies.iter().map(|r| r.from()).collect())
}

#[tokio::test]
async fn every_member_on_three_nodes_answers_once_through_one_frame_per_node() {
    let (a, b, c) = (node().await, node().await, node().await);
    connect(&a, &b).await;
    connect(&a, &c).await;
    // One member on a, two on b (one of them joined twice), three on c.
    let mut members = Vec::new();
    let mut answering = Vec::new();
    for (node, slots) in [(&a, vec![1]), (&b, vec![2, 1]), (&c, vec![1, 1, 1])] {
        for n in slots {
            let (p, pg, inbox) = member(node, "g", "whoami", n);
            answering.push((p.pid(), answer_with_pid(p.pid(), inbox)));
            members.push((p, pg));
        }
    }
    let (_caller, ga) = spawn(&a, SCOPE);
    members_seen(&ga, "g", 7).await;
    let queued = a.stats(SCOPE).expect("stats").frames_queued;
    let received = (
        b.node_stats().frames_received,
        c.node_stats().frames_received,
    );

    let results = ga
        .multi_call("g", "whoami", &(), None)
        .await
        .expect("the call");
    assert!(results.bad.is_empty(), "{results:?}");
    let expected = sorted(members.iter().map(|(p, _)| p.pid()).collect());
    assert_eq!(repliers(&results), expected, "each member process once");
    for reply in &results.replies {
        let sender = reply.decode::<String>().expect("a string");
        assert_eq!(
            sender,
            reply.from().to_string(),
            "the reply names its sender"
        );
    }
    assert_eq!(
        a.stats(SCOPE).expect("stats").frames_queued,
        queued + 2,
        "one frame for b and one for c"
    );
    // Each frame names each member process of its node once.
    assert_eq!(b.node_stats().frames_received, received.0 + 2);
    assert_eq!(c.node_stats().frames_received, received.1 + 3);
    assert_eq!(a.node_stats().call_replies_late, 0);
    assert_eq!(a.node_stats().call_replies_rejected, 0);

    // The processes exit: their inboxes end, and each answered exactly one request.
    drop(members);
    for (pid, task) in answering {
        let answered = tokio::time::timeout(WAIT, task)
            .await
            .expect("the inbox ends")
            .expect("the task ran");
        assert_eq!(answered, 1, "{pid} was asked {answered} times");
    }
}

#[tokio::test]
async fn a_slow_member_is_bad_at_the_timeout_and_its_late_reply_counted() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let (a, b) = (node().await, node().await);
    connect(&a, &b).await;
    let (quick, _gq, inbox) = member(&b, "g", "t", 1);
    let _quick_task = answer_with_pid(quick.pid(), inbox);
    // Two slow members, on b and on a: each answers once the call has returned.
    let mut slow = Vec::new();
    let mut released = Vec::new();
    for node in [&b, &a] {
        let (p, pg, mut inbox) = member(node, "g", "t", 1);
        let (release, wait) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let request = next_message(&mut inbox).await;
            wait.await.expect("released");
            request.reply(&"late").expect("sent")
        });
        slow.push((p, pg));
        released.push((release, task));
    }
    let (_caller, ga) = spawn(&a, SCOPE);
    members_seen(&ga, "g", 3).await;
    let before = a.node_stats();

    let started = Instant::now();
    let results = ga.multi_call("g", "t", &(), TIMEOUT).await.expect("call");
    let took = started.elapsed();
    assert!(
        took >= TIMEOUT,
        "returned after {took:?}, before its timeout"
    );
    assert!(took < TIMEOUT + MARGIN, "returned after {took:?}");
    assert_eq!(repliers(&results), [quick.pid()]);
    let slow_pids = sorted(slow.iter().map(|(p, _)| p.pid()).collect());
    assert_eq!(results.bad, slow_pids);

    // Now they answer: both replies arrive late, are dropped and counted.
    for (release, task) in released {
        release.send(()).expect("the slow member waits");
        let delivery = task.await.expect("the slow member replied");
        assert!(delivery.outcome().await.is_delivered());
    }
    eventually("two late replies counted", WAIT, || {
        a.node_stats().call_replies_late == before.call_replies_late + 2
    })
    .await;
    assert_eq!(
        a.node_stats().call_replies_rejected,
        before.call_replies_rejected
    );
    // And in the metrics.
    let mut registry = prometheus_client::registry::Registry::default();
    a.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("the metrics");
    let late = r#"procgroups_call_replies_dropped_total{reason="late"} 2"#;
    assert!(text.contains(late), "{text}");
}

#[tokio::test]
async fn the_members_of_a_dead_node_are_bad_as_soon_as_its_frame_is_given_up() {
    let (a, b) = (node().await, node().await);
    // c talks to a only, so that nothing of c reaches a through b once a and c are cut.
    let c = support::builder(SCOPE, config())
        .allow_peers([a.peer_id()])
        .build()
        .await
        .expect("the node starts");
    connect(&a, &b).await;
    connect(&a, &c).await;
    let (pb, _gb, inbox) = member(&b, "g", "t", 1);
    let _b_task = answer_with_pid(pb.pid(), inbox);
    let mut on_c = Vec::new();
    for _ in 0..2 {
        let (p, pg, inbox) = member(&c, "g", "t", 1);
        let task = answer_with_pid(p.pid(), inbox);
        on_c.push((p, pg, task));
    }
    let c_pids = sorted(on_c.iter().map(|(p, _, _)| p.pid()).collect());
    let (_caller, ga) = spawn(&a, SCOPE);
    members_seen(&ga, "g", 3).await;
    let alive = ga.multi_call("g", "t", &(), None).await.expect("call");
    assert_eq!(alive.replies.len(), 3, "{alive:?}");

    // c becomes unreachable and dies without a word: a keeps its members (the grace outlasts
    // the test) and asks them, but the frame for c is given up after its attempts.
    cut(&a, &c).await;
    drop((on_c, c));
    let timeout = Duration::from_secs(60);
    let started = Instant::now();
    let results = ga.multi_call("g", "t", &(), timeout).await.expect("call");
    let took = started.elapsed();
    assert!(took < WAIT, "waited {took:?} for a dead node");
    assert_eq!(repliers(&results), [pb.pid()]);
    assert_eq!(results.bad, c_pids);
    assert!(a.node_stats().frames_lost >= 1);
    eprintln!("a dead node's members known bad after {took:?}");
}

#[tokio::test]
async fn a_member_that_never_replies_is_bad_at_the_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let (a, b) = (node().await, node().await);
    connect(&a, &b).await;
    let (silent, _gs, mut silent_inbox) = member(&b, "silent", "t", 1);
    // A local member with no inbox for the topic: known bad at once.
    let (deaf, gd) = spawn(&a, SCOPE);
    gd.join("deaf").expect("join");
    let (caller, ga) = spawn(&a, SCOPE);
    members_seen(&ga, "silent", 1).await;

    let started = Instant::now();
    let results = ga
        .multi_call("silent", "t", &(), TIMEOUT)
        .await
        .expect("call");
    let took = started.elapsed();
    assert!(took >= TIMEOUT && took < TIMEOUT + MARGIN, "took {took:?}");
    assert_eq!(results.bad, [silent.pid()]);
    assert!(results.replies.is_empty());
    let request = next_message(&mut silent_inbox).await;
    assert!(request.is_request());
    assert_eq!(request.from(), caller.pid());

    let started = Instant::now();
    let long = Duration::from_secs(60);
    let results = ga.multi_call("deaf", "t", &(), long).await.expect("call");
    assert!(
        started.elapsed() < MARGIN,
        "waited for a member without an inbox"
    );
    assert_eq!(results.bad, [deaf.pid()]);

    let results = ga.multi_call("nobody", "t", &(), long).await.expect("call");
    assert_eq!(results, CallResults::default());
}

/// Drains `inbox`, counting what it holds now into `counts` under `pid`.
fn drain(inbox: &mut Inbox, pid: Pid, counts: &mut HashMap<Pid, usize>) {
    while inbox.try_recv().is_some() {
        *counts.entry(pid).or_default() += 1;
    }
}

#[tokio::test]
async fn send_to_one_prefers_a_local_member() {
    let (a, b) = (node().await, node().await);
    connect(&a, &b).await;
    // Two local processes, one of them with three slots, and a remote one.
    let (p1, _g1, mut i1) = member(&a, "g", "t", 1);
    let (p3, _g3, mut i3) = member(&a, "g", "t", 3);
    let (_pb, _gb, mut ib) = member(&b, "g", "t", 1);
    let (_sender, ga) = spawn(&a, SCOPE);
    members_seen(&ga, "g", 5).await;

    const SENDS: usize = 100;
    for n in 0..SENDS {
        let delivery = ga.send_to_one("g", "t", &n).expect("sent");
        assert_eq!(delivery.slots(), 1);
    }
    let mut counts = HashMap::new();
    drain(&mut i1, p1.pid(), &mut counts);
    drain(&mut i3, p3.pid(), &mut counts);
    assert_eq!(counts.values().sum::<usize>(), SENDS, "{counts:?}");
    // At random among the local processes, not their slots.
    let ones = counts.get(&p1.pid()).copied().unwrap_or(0);
    assert!((30..=70).contains(&ones), "{counts:?}");
    let stats = a.node_stats();
    assert_eq!(
        (stats.frames_waiting, stats.frames_sent, stats.frames_lost),
        (0, 0, 0),
        "nothing went to the network"
    );
    assert!(ib.try_recv().is_none());

    let err = ga.send_to_one("empty", "t", &0u8).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(
        err,
        Error::NoMembers {
            scope: SCOPE.into(),
            group: "empty".into()
        }
    );
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test]
async fn send_to_one_from_a_node_without_members_spreads_over_the_nodes() {
    let (a, b, c) = (node().await, node().await, node().await);
    connect(&a, &b).await;
    connect(&a, &c).await;
    // One member on b, three on c: by node, b gets half of the messages.
    let mut members = vec![member(&b, "g", "t", 1)];
    for _ in 0..3 {
        members.push(member(&c, "g", "t", 1));
    }
    let (_sender, ga) = spawn(&a, SCOPE);
    members_seen(&ga, "g", 4).await;

    const SENDS: usize = 200;
    for n in 0..SENDS {
        ga.send_to_one("g", "t", &n).expect("sent");
    }
    let mut counts = HashMap::new();
    eventually("every message arrived", WAIT, || {
        for (p, _, inbox) in &mut members {
            drain(inbox, p.pid(), &mut counts);
        }
        let total: usize = counts.values().sum();
        if total == SENDS {
            Ok(())
        } else {
            Err(format!("{total} of {SENDS}: {counts:?}"))
        }
    })
    .await;
    let on_b = counts.get(&members[0].0.pid()).copied().unwrap_or(0);
    assert!((60..=140).contains(&on_b), "b got {on_b}: {counts:?}");
    for (p, _, _) in &members[1..] {
        assert!(counts.get(&p.pid()).is_some_and(|n| *n > 0), "{counts:?}");
    }
    assert_eq!(a.node_stats().frames_lost, 0);
}

#[test]
fn a_call_outside_a_tokio_runtime_is_unavailable_and_sends_nothing() {
    let (node, p, pg) = support::block_on(async {
        let node = node().await;
        let (p, pg) = spawn(&node, SCOPE);
        pg.join("g").expect("join");
        (node, p, pg)
    });
    let mut inbox = p.listen("t");
    let call = futures::executor::block_on(pg.multi_call("g", "t", &(), None));
    assert_eq!(call.map_err(|e| e.kind()), Err(ErrorKind::Unavailable));
    assert!(inbox.try_recv().is_none(), "the member was not asked");
    drop((pg, p, node));
}
