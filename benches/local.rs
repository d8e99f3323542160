//! Local (single-node) benchmarks: the local rows of the README's Performance section, and
//! the cost of the `send` call to another node's process (`send_remote_call_only`, two nodes
//! over loopback: the call is timed, the arrival of the messages is not).
//!
//! Run with `cargo bench --bench local`. Every operation measured here is synchronous; the
//! tokio runtime only builds the nodes (and waits for the remote messages).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use procgroups::{Inbox, Instance, Node, Process, ScopeConfig, Subscription};

const SCOPE: &str = "app:pg";
/// Names per batch join when filling a scope with other groups.
const SETUP_CHUNK: usize = 500;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn node_with(rt: &tokio::runtime::Runtime, config: ScopeConfig) -> Node {
    rt.block_on(
        Node::builder()
            .mdns(false)
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
            .scope(SCOPE, config)
            .build(),
    )
    .expect("node")
}

fn node(rt: &tokio::runtime::Runtime) -> Node {
    node_with(rt, ScopeConfig::default())
}

/// A process and its instance on the scope: the instance must not outlive the process's
/// usefulness, and dropping the process makes it leave every group.
struct Member {
    pg: Instance,
    process: Process,
}

fn member(node: &Node) -> Member {
    let process = node.spawn_process();
    let pg = process.open(SCOPE).expect("open");
    Member { pg, process }
}

/// Joins `pg` to `count` distinct groups (`other-0`, `other-1`, …) in batches.
fn join_others(pg: &Instance, count: usize) {
    let names: Vec<String> = (0..count).map(|i| format!("other-{i}")).collect();
    for chunk in names.chunks(SETUP_CHUNK) {
        pg.join(chunk).expect("batch join");
    }
}

fn join_leave(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("join_leave");
    for others in [1usize, 100, 10_000, 100_000] {
        let node = node(&rt);
        let filler = member(&node);
        let started = Instant::now();
        join_others(&filler.pg, others);
        eprintln!(
            "join_leave/{others}: setup of {others} groups took {:?}",
            started.elapsed()
        );
        let me = member(&node);
        assert_eq!(me.pg.which_groups().unwrap().len(), others);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(others), &others, |b, _| {
            b.iter(|| {
                me.pg.join(black_box("g")).unwrap();
                me.pg.leave(black_box("g")).unwrap();
            });
        });
        assert!(me.pg.get_members("g").unwrap().is_empty());
        drop(me);
        drop(filler);
    }
    group.finish();
}

/// The exit of a process in `n` groups, each held by another process too (so the exit leaves
/// the groups standing): the exit alone is timed, not the spawn and the joins before it.
fn exit(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("exit");
    for n in [1usize, 100, 1000] {
        let node = node(&rt);
        let names: Vec<String> = (0..n).map(|i| format!("exit-{i}")).collect();
        let filler = member(&node);
        filler.pg.join(&names).expect("filler join");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &names, |b, names| {
            b.iter_batched(
                || {
                    let m = member(&node);
                    m.pg.join(names).expect("join");
                    m
                },
                drop,
                BatchSize::SmallInput,
            );
        });
        assert_eq!(filler.pg.get_members(&names[0]).unwrap().len(), 1);
    }
    group.finish();
}

/// A batch join of `n` distinct new groups, then a batch leave of them, per iteration.
fn join_batch(c: &mut Criterion) {
    let rt = runtime();
    let node = node(&rt);
    let me = member(&node);
    let mut group = c.benchmark_group("join_batch_distinct");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for n in [100usize, 1000, 10_000] {
        let names: Vec<String> = (0..n).map(|i| format!("batch-{i:06}")).collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &names, |b, names| {
            b.iter(|| {
                me.pg.join(names).unwrap();
                me.pg.leave(names).unwrap();
            });
        });
        assert!(me.pg.which_groups().unwrap().is_empty());
    }
    group.finish();
}

fn get_members(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("get_members");
    for members in [1usize, 100, 10_000] {
        let node = node(&rt);
        // Distinct processes; the handles stay alive for the whole benchmark.
        let joined: Vec<Member> = (0..members)
            .map(|_| {
                let m = member(&node);
                m.pg.join("g").unwrap();
                m
            })
            .collect();
        let reader = member(&node);
        // The first read builds the cached snapshot; every read after it is a pointer copy.
        assert_eq!(reader.pg.get_members("g").unwrap().len(), members);
        group.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter(|| reader.pg.get_members(black_box("g")).unwrap());
        });
        drop(reader);
        drop(joined);
    }
    group.finish();
}

/// Drains every subscription; returns how many events were read.
fn drain_subscriptions(subs: &mut [Subscription]) -> usize {
    let mut n = 0;
    for sub in subs {
        while let Some(ev) = sub.try_recv() {
            black_box(&ev);
            n += 1;
        }
    }
    n
}

fn events_fanout(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 100;
    let rt = runtime();
    let node = node(&rt);
    // The processes must stay alive: an exit closes its subscriptions.
    let watchers: Vec<Member> = (0..SUBSCRIBERS).map(|_| member(&node)).collect();
    let mut subs: Vec<Subscription> = watchers
        .iter()
        .map(|w| w.pg.events().expect("events").0)
        .collect();
    let me = member(&node);

    me.pg.join("g").unwrap();
    me.pg.leave("g").unwrap();
    assert_eq!(drain_subscriptions(&mut subs), 2 * SUBSCRIBERS);

    let mut group = c.benchmark_group("events_fanout");
    group.throughput(Throughput::Elements(1));
    // A join + leave pair, then every subscriber reads both events.
    group.bench_function(BenchmarkId::from_parameter(SUBSCRIBERS), |b| {
        b.iter(|| {
            me.pg.join(black_box("g")).unwrap();
            me.pg.leave(black_box("g")).unwrap();
            drain_subscriptions(&mut subs)
        });
    });
    group.finish();

    // The publishing side alone: the pair is timed, the draining is not.
    let mut group = c.benchmark_group("events_fanout_publish_only");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::from_parameter(SUBSCRIBERS), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                me.pg.join(black_box("g")).unwrap();
                me.pg.leave(black_box("g")).unwrap();
                total += start.elapsed();
                drain_subscriptions(&mut subs);
            }
            total
        });
    });
    group.finish();

    let dropped: u64 = subs.iter().map(Subscription::dropped).sum();
    assert_eq!(dropped, 0, "a subscription overflowed");
    drop(subs);
    drop(me);
    drop(watchers);
}

/// 1000 members of "g", each listening on "t", and a sender outside the group.
struct BroadcastSetup {
    sender: Member,
    inboxes: Vec<Inbox>,
    members: Vec<Member>,
}

fn broadcast_setup(node: &Node, members: usize) -> BroadcastSetup {
    let mut inboxes = Vec::with_capacity(members);
    let members: Vec<Member> = (0..members)
        .map(|_| {
            let m = member(node);
            inboxes.push(m.process.listen("t"));
            m.pg.join("g").unwrap();
            m
        })
        .collect();
    BroadcastSetup {
        sender: member(node),
        inboxes,
        members,
    }
}

/// Takes one message out of every inbox; returns how many were read.
fn drain_inboxes(inboxes: &mut [Inbox]) -> usize {
    let mut n = 0;
    for inbox in inboxes {
        while let Some(msg) = inbox.try_recv() {
            black_box(&msg);
            n += 1;
        }
    }
    n
}

fn broadcast_local(c: &mut Criterion) {
    const MEMBERS: usize = 1000;
    let rt = runtime();
    let node = node(&rt);
    let mut s = broadcast_setup(&node, MEMBERS);
    assert_eq!(
        s.sender.pg.broadcast("g", "t", &42u64).unwrap().slots(),
        MEMBERS
    );
    assert_eq!(drain_inboxes(&mut s.inboxes), MEMBERS);

    // One broadcast, then every member takes the message out of its inbox.
    let mut group = c.benchmark_group("broadcast_local");
    group.throughput(Throughput::Elements(MEMBERS as u64));
    group.bench_function(BenchmarkId::from_parameter(MEMBERS), |b| {
        b.iter(|| {
            let n = s
                .sender
                .pg
                .broadcast(black_box("g"), black_box("t"), black_box(&42u64))
                .unwrap();
            debug_assert_eq!(n.slots(), MEMBERS);
            drain_inboxes(&mut s.inboxes)
        });
    });
    group.finish();

    // The broadcast call alone; the inboxes are drained outside the timed section.
    let mut group = c.benchmark_group("broadcast_local_send_only");
    group.throughput(Throughput::Elements(MEMBERS as u64));
    group.bench_function(BenchmarkId::from_parameter(MEMBERS), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                black_box(
                    s.sender
                        .pg
                        .broadcast(black_box("g"), black_box("t"), black_box(&42u64))
                        .unwrap(),
                );
                total += start.elapsed();
                drain_inboxes(&mut s.inboxes);
            }
            total
        });
    });
    group.finish();

    let dropped: u64 = s.members.iter().map(|m| m.process.dropped()).sum();
    assert_eq!(dropped, 0, "an inbox overflowed");
}

/// `send` to one process: on this node (served in place), and to another node's process (the
/// call alone, which queues a frame for that node's outbox; the messages are then awaited
/// outside the timed section).
fn send(c: &mut Criterion) {
    const BATCH: usize = 100;
    let rt = runtime();
    let a = node(&rt);
    let sender = a.spawn_process();
    let local = a.spawn_process();
    let mut local_inbox = local.listen("t");
    sender.send(&local.pid(), "t", &42u64).unwrap();
    assert!(local_inbox.try_recv().is_some());

    let mut group = c.benchmark_group("send_local");
    group.bench_function(BenchmarkId::from_parameter(1), |b| {
        b.iter(|| {
            black_box(
                sender
                    .send(black_box(&local.pid()), black_box("t"), black_box(&42u64))
                    .unwrap(),
            );
            local_inbox.try_recv()
        });
    });
    group.finish();

    let b_node = node(&rt);
    a.dial(b_node.listen_addrs()[0].clone()).unwrap();
    let remote = b_node.spawn_process();
    let mut remote_inbox = remote.listen("t");
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !a.connected_peers().contains(&b_node.peer_id()) {
            assert!(Instant::now() < deadline, "the nodes did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut group = c.benchmark_group("send_remote_call_only");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::from_parameter(BATCH), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for _ in 0..BATCH {
                    black_box(
                        sender
                            .send(black_box(&remote.pid()), black_box("t"), black_box(&42u64))
                            .unwrap(),
                    );
                }
                total += start.elapsed();
                rt.block_on(async {
                    for _ in 0..BATCH {
                        tokio::time::timeout(Duration::from_secs(10), remote_inbox.recv())
                            .await
                            .expect("the remote message arrives")
                            .expect("the inbox is open");
                    }
                });
            }
            total
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = join_leave, exit, join_batch, get_members, events_fanout, broadcast_local, send
}
criterion_main!(benches);
