//! Backpressure: a subscriber that never reads, a process that never reads its inbox and a
//! peer that never reads its socket each leave this node's memory bounded and its scope
//! responsive.
//!
//! "Bounded" is shown twice: by the node's own counters (what a subscription or an inbox
//! holds, what the outboxes hold, what was dropped or lost and counted) and by the resident
//! memory of this test process (`/proc/self/statm`) before and after, against a generous
//! bound. The tests of this file take a lock so that they run one at a time: they share the
//! process whose memory they measure.
//!
//! Every wait is on a condition with a deadline; the floods are bounded in count and time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use procgroups::behaviour::BehaviourConfig;
use procgroups::{ErrorKind, EventKind, Instance, Node, Process, ScopeConfig};

mod support;
use support::{WAIT, connect, embedded_pausable, eventually};

const SCOPE: &str = "test:backpressure";
/// Changes, or messages, of each flood.
const FLOOD: u64 = 100_000;
/// Frames waiting for the network beyond which `broadcast` is `Unavailable` (documented on
/// `Instance::broadcast`).
const MAX_FRAMES_WAITING: usize = 65_536;
/// Any one call of the probes of responsiveness must take less than this.
const RESPONSIVE: Duration = Duration::from_millis(250);

/// The tests of this file measure the memory of the process they share: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Resident memory of this process, in bytes (`/proc/self/statm`, 4 KiB pages).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages in /proc/self/statm");
    pages * 4096
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn builder(config: ScopeConfig) -> procgroups::NodeBuilder {
    support::builder(SCOPE, config)
}

async fn node(config: ScopeConfig) -> Node {
    builder(config).build().await.expect("node")
}

fn spawn(node: &Node) -> (Process, Instance) {
    support::spawn(node, SCOPE)
}

/// A task that, every 100 ms until stopped, times a join, a read of the members and a leave
/// of the group "probe" by a process of its own: the scope's responsiveness while something
/// else floods it. Reports the slowest round and the number of rounds.
///
/// Not more often: each change is a signed gossipsub message that every peer verifies, on
/// the connection's task; in a debug build (dependencies unoptimised) a verification takes
/// about 10 ms, and a peer flooded with changes falls behind on everything else that
/// connection carries, deliveries included.
struct Probe {
    stop: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<(Duration, u64)>,
}

impl Probe {
    fn start(node: &Node) -> Probe {
        let (p, pg) = spawn(node);
        let stop = Arc::new(AtomicUsize::new(0));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let _p = p;
            let (mut slowest, mut rounds) = (Duration::ZERO, 0u64);
            while stopped.load(Ordering::Relaxed) == 0 {
                let t = Instant::now();
                pg.join("probe").expect("probe join");
                assert_eq!(pg.get_members("probe").expect("probe read").len(), 1);
                pg.leave("probe").expect("probe leave");
                slowest = slowest.max(t.elapsed());
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (slowest, rounds)
        });
        Probe { stop, task }
    }

    async fn finish(self) -> (Duration, u64) {
        self.stop.store(1, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the probe stops")
            .expect("the probe did not panic")
    }
}

/// (a) A monitor and an `events` subscription that are never read while 100 000 changes
/// happen: each holds `monitor_buffer` events (the oldest ones, in order), the others are
/// dropped and counted by the subscription and by `Node::stats`, the changes never wait for
/// the subscriber, and a process of the same scope keeps joining and reading at once. Once
/// read, the subscription delivers new changes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_holds_monitor_buffer_events_and_counts_the_rest() {
    let _serial = SERIAL.lock().await;
    let config = ScopeConfig::default();
    let buffer = config.monitor_buffer();
    let node = node(config).await;
    let (_watcher, watch) = spawn(&node);
    let (mut monitor, members) = watch.monitor("g").unwrap();
    let (mut events, snapshot) = watch.events().unwrap();
    assert!(members.is_empty() && snapshot.is_empty());
    let (worker, pg) = spawn(&node);

    let rss_before = rss();
    let probe = Probe::start(&node);
    let started = Instant::now();
    let (mut slowest, mut refused) = (Duration::ZERO, 0u64);
    for i in 0..FLOOD {
        let t = Instant::now();
        let result = if i % 2 == 0 {
            pg.join("g")
        } else {
            pg.leave("g")
        };
        match result {
            Ok(()) => {}
            // The action queue (changes waiting for the network task) is full: back off.
            // Never seen here, since the network task has no peer to wait for.
            Err(e) if e.kind() == ErrorKind::Unavailable => {
                refused += 1;
                tokio::task::yield_now().await;
                continue;
            }
            Err(e) => panic!("change {i}: {e}"),
        }
        slowest = slowest.max(t.elapsed());
        if i % 1000 == 0 {
            tokio::task::yield_now().await; // let the probe run on this worker too
        }
    }
    let took = started.elapsed();
    let (probe_slowest, probes) = probe.finish().await;
    let rss_after = rss();
    let stats = node.stats(SCOPE).unwrap();
    eprintln!(
        "(a) {FLOOD} changes in {took:.2?} (slowest {slowest:.2?}, {refused} refused), \
         monitor holds {} and dropped {}, events holds {} and dropped {}, \
         stats.events_dropped {}; probe: {probes} rounds, slowest {probe_slowest:.2?}; \
         RSS {:.1} MiB -> {:.1} MiB",
        monitor.len(),
        monitor.dropped(),
        events.len(),
        events.dropped(),
        stats.events_dropped,
        mib(rss_before),
        mib(rss_after),
    );
    assert_eq!(
        refused, 0,
        "no change was refused: the network task keeps up"
    );

    // Bounded: the buffers are full, every other event dropped and counted.
    assert_eq!(monitor.len(), buffer);
    assert_eq!(monitor.dropped(), FLOOD - buffer as u64);
    // `events` also saw the probe's join and leave of each round.
    assert_eq!(events.len(), buffer);
    assert_eq!(events.dropped(), FLOOD + 2 * probes - buffer as u64);
    assert_eq!(stats.events_dropped, monitor.dropped() + events.dropped());
    // Responsive: no change waited for the subscribers.
    assert!(probes > 0, "the probe ran");
    assert!(
        slowest < RESPONSIVE && probe_slowest < RESPONSIVE,
        "a change took {slowest:?}, a probe round {probe_slowest:?}"
    );
    // Memory: 2 x 64 events held; 200 000 held events would be about 20 MiB.
    let grew = rss_after.saturating_sub(rss_before);
    assert!(
        grew < 16 << 20,
        "RSS grew by {:.1} MiB during the flood",
        mib(grew)
    );

    // What the monitor holds: the oldest changes, in order.
    let held: Vec<_> = std::iter::from_fn(|| monitor.try_recv()).collect();
    assert_eq!(held.len(), buffer);
    for (i, ev) in held.iter().enumerate() {
        let kind = if i % 2 == 0 {
            EventKind::MemberJoined
        } else {
            EventKind::MemberLeft
        };
        assert_eq!(
            (ev.kind, &*ev.group, &*ev.pids),
            (kind, "g", &[worker.pid()][..])
        );
    }
    // Read, it works again.
    pg.join("g").unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), monitor.recv())
        .await
        .expect("an event")
        .expect("the monitor is open");
    assert_eq!(
        (ev.kind, &*ev.pids),
        (EventKind::MemberJoined, &[worker.pid()][..])
    );
    events.close();
}

/// (b) A process that listens but never reads while 100 000 messages are broadcast to a
/// group it is in, on this node and on another: its inbox holds the mailbox capacity (the
/// oldest messages, in order), the rest is dropped and counted (`Process::dropped`,
/// `node_stats().messages_dropped`), and the other members of the group, which read, get
/// every message once and in order. The sender paces itself on the readers (a reader's
/// inbox is bounded too), not on the process that never reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_never_reads_holds_its_mailbox_capacity_and_others_still_receive() {
    let _serial = SERIAL.lock().await;
    let capacity = procgroups::DEFAULT_MAILBOX_CAPACITY;
    let a = node(ScopeConfig::default()).await;
    let b = node(ScopeConfig::default()).await;
    connect(&b, &a).await;

    // A process that never reads and one that reads, on each node.
    let mut idle = Vec::new();
    let mut readers = Vec::new();
    let received: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for (n, node) in [&a, &b].into_iter().enumerate() {
        let (p, pg) = spawn(node);
        let inbox = p.listen("t");
        pg.join("g").unwrap();
        idle.push((p, pg, inbox));
        let (p, pg) = spawn(node);
        let mut inbox = p.listen("t");
        pg.join("g").unwrap();
        let count = received[n].clone();
        readers.push(tokio::spawn(async move {
            let _keep = (p, pg);
            for expected in 0..FLOOD {
                let m = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
                    .await
                    .expect("the next message within 10 s")
                    .expect("the inbox is open");
                assert_eq!(m.decode::<u64>().unwrap(), expected, "in order, once");
                count.store(expected + 1, Ordering::Release);
            }
            inbox.try_recv().is_none()
        }));
    }
    let (_sender, sender) = spawn(&a);
    eventually("the four members on both nodes", WAIT, || {
        sender.get_members("g").unwrap().len() == 4 && {
            let (_, pg, _) = &idle[1];
            pg.get_members("g").unwrap().len() == 4
        }
    })
    .await;

    let rss_before = rss();
    let probe = Probe::start(&b);
    let started = Instant::now();
    for i in 0..FLOOD {
        assert_eq!(sender.broadcast("g", "t", &i).unwrap().slots(), 4);
        // Paced on the readers: at most 512 messages ahead of the slower one.
        if i % 512 == 511 {
            let deadline = Instant::now() + Duration::from_secs(10);
            while received
                .iter()
                .any(|r| r.load(Ordering::Acquire) + 512 < i + 1)
            {
                assert!(
                    Instant::now() < deadline,
                    "the readers stopped receiving at {i}: {received:?}; a {:?}; b {:?}",
                    a.node_stats(),
                    b.node_stats()
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    for reader in readers {
        let nothing_more = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("the readers finish")
            .expect("a reader failed");
        assert!(nothing_more, "a reader got a message after the last one");
    }
    let took = started.elapsed();
    let (probe_slowest, probes) = probe.finish().await;
    let rss_after = rss();
    let (sa, sb) = (a.node_stats(), b.node_stats());
    eprintln!(
        "(b) {FLOOD} broadcasts to 2 + 2 members in {took:.2?}; the idle inboxes hold {} and \
         {} and dropped {} and {}; messages_dropped a {} b {}; probe on b: {probes} rounds, \
         slowest {probe_slowest:.2?}; RSS {:.1} MiB -> {:.1} MiB",
        idle[0].2.len(),
        idle[1].2.len(),
        idle[0].0.dropped(),
        idle[1].0.dropped(),
        sa.messages_dropped,
        sb.messages_dropped,
        mib(rss_before),
        mib(rss_after),
    );
    for (n, ((p, _, inbox), stats)) in idle.iter().zip([&sa, &sb]).enumerate() {
        assert_eq!(inbox.len(), capacity, "node {n}: the idle inbox is full");
        assert_eq!(p.dropped(), FLOOD - capacity as u64, "node {n}");
        assert_eq!(
            stats.messages_dropped,
            p.dropped(),
            "node {n}: only its drops"
        );
    }
    assert!(probes > 0, "the probe ran");
    assert!(
        probe_slowest < RESPONSIVE,
        "b's scope took {probe_slowest:?} for a join and a read"
    );
    let grew = rss_after.saturating_sub(rss_before);
    assert!(
        grew < 32 << 20,
        "RSS grew by {:.1} MiB during the flood",
        mib(grew)
    );
    // What an idle inbox holds: the oldest messages, in order.
    for (_, _, inbox) in &mut idle {
        let held: Vec<u64> = std::iter::from_fn(|| inbox.try_recv())
            .map(|m| m.decode().unwrap())
            .collect();
        assert_eq!(held, (0..capacity as u64).collect::<Vec<_>>());
    }
}

/// (c) A peer that never reads its socket: a node embedded in a swarm that the test stops
/// polling (its connections stop reading once their few buffered events are not taken), a
/// member of a group on it, and a node that floods that group with broadcasts. The first
/// node's outboxes never hold more than 65 536 frames: past that `broadcast` is
/// `Unavailable` at once (memory stays bounded instead of growing). Its batch to the stalled
/// peer times out, is retried, is given up and counted lost, and the breaker opens, which
/// frees the queue. Meanwhile, and after, its scope answers at once and it still delivers to
/// a third node.
///
/// Each attempt fails at `broadcast_timeout` (500 ms here), also the retry, whose new stream
/// the stalled peer never negotiates (libp2p would wait 10 s for it; the node does not): the
/// give-up comes about 1 s after the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_its_socket_leaves_the_outboxes_bounded() {
    let _serial = SERIAL.lock().await;
    // Fail fast and keep the breaker open for the rest of the test (no half-open probe).
    let config = ScopeConfig::builder()
        .broadcast_timeout(Duration::from_millis(500))
        .max_retries(1)
        .retry_base_delay(Duration::from_millis(50))
        .retry_max_delay(Duration::from_millis(100))
        .circuit_breaker_failures(2)
        .circuit_breaker_reset_time(Duration::from_secs(600))
        .node_down_grace(Duration::from_secs(600))
        .build()
        .unwrap();
    // The flooding node must not close its connection to the stalled peer (its pings go
    // unanswered): what is measured is the outbox, not the ping.
    let patient = BehaviourConfig {
        mdns: false,
        ping_timeout: Duration::from_secs(600),
        ..BehaviourConfig::default()
    };
    let a = builder(config.clone())
        .network_config(patient.clone())
        .build()
        .await
        .unwrap();
    let c = builder(config.clone())
        .network_config(patient)
        .build()
        .await
        .unwrap();

    // The stalled peer: the behaviour in a swarm of the test's own, whose polling
    // `polling` holds (`false`) and resumes (`true`).
    let (stalled, polling, driver) = embedded_pausable(SCOPE, config);
    eventually("the stalled node listens", Duration::from_secs(5), || {
        !stalled.listen_addrs().is_empty()
    })
    .await;
    connect(&a, &stalled).await;
    connect(&a, &c).await;
    let (far, far_pg) = spawn(&stalled);
    let mut far_inbox = far.listen("t");
    far_pg.join("g").unwrap();
    let (near, near_pg) = spawn(&c);
    let mut near_inbox = near.listen("t");
    near_pg.join("h").unwrap();
    let (_sender, sender) = spawn(&a);
    eventually("the members on a", WAIT, || {
        sender.get_members("g").unwrap().len() == 1 && sender.get_members("h").unwrap().len() == 1
    })
    .await;
    // Both deliver while the peer reads.
    assert_eq!(sender.broadcast("g", "t", &0u64).unwrap().slots(), 1);
    assert_eq!(sender.broadcast("h", "t", &0u64).unwrap().slots(), 1);
    for inbox in [&mut far_inbox, &mut near_inbox] {
        let m = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("a message")
            .unwrap();
        assert_eq!(m.decode::<u64>().unwrap(), 0);
    }
    eventually("both frames acknowledged", WAIT, || {
        a.node_stats().frames_sent == 2 && a.node_stats().frames_waiting == 0
    })
    .await;

    polling.send(false).unwrap();
    let rss_before = rss();
    let probe = Probe::start(&a);

    // Flood the stalled peer until the outboxes are full.
    let started = Instant::now();
    let mut sent = 0u64;
    let mut most_waiting = 0;
    let full = loop {
        match sender.broadcast("g", "t", &(sent + 1)).map(|d| d.slots()) {
            Ok(1) => sent += 1,
            Ok(n) => panic!("{n} slots targeted"),
            Err(e) => break e,
        }
        most_waiting = most_waiting.max(a.node_stats().frames_waiting);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{sent} broadcasts and the outboxes are not full: {:?}",
            a.node_stats()
        );
    };
    let filled_in = started.elapsed();
    let at_full = a.node_stats();
    let rss_full = rss();
    assert_eq!(full.kind(), ErrorKind::Unavailable, "{full}");
    assert!(
        most_waiting <= MAX_FRAMES_WAITING,
        "{most_waiting} frames waited"
    );
    assert!(at_full.frames_waiting <= MAX_FRAMES_WAITING, "{at_full:?}");
    // Every broadcast to a node while the outboxes are full is refused, this one included.
    let err = sender.broadcast("h", "t", &1u64).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    // The batch in flight times out and is retried, then given up with everything queued
    // behind it: the breaker opens.
    let (frames_lost_before, sent_before) = (at_full.frames_lost, at_full.frames_sent);
    let lost_at = Instant::now();
    eventually(
        "the frames for the stalled peer given up",
        Duration::from_secs(30),
        || a.node_stats().frames_waiting < 1000,
    )
    .await;
    let freed_in = lost_at.elapsed();
    // Two attempts of 500 ms and a 50 ms wait between them; libp2p's own substream timeout
    // (10 s) would be far past this bound.
    assert!(
        freed_in < Duration::from_secs(5),
        "given up after {freed_in:?}: broadcast_timeout was not honoured"
    );
    let after = a.node_stats();
    assert!(
        after.frames_lost >= frames_lost_before + at_full.frames_waiting as u64 - 1000,
        "what waited was counted lost: {at_full:?} then {after:?}"
    );
    assert_eq!(
        after.frames_sent, sent_before,
        "nothing reached the stalled peer"
    );
    // The scope's figures follow the behaviour's state at its next turn (20 ms).
    eventually(
        "the stalled peer's breaker open, the third node's closed",
        Duration::from_secs(5),
        || {
            let b = a.stats(SCOPE).unwrap().breakers;
            (b.open, b.closed) == (1, 1)
        },
    )
    .await;

    // Delivery to the third node works again, and the flooded scope answered all along.
    assert_eq!(sender.broadcast("h", "t", &2u64).unwrap().slots(), 1);
    let m = tokio::time::timeout(Duration::from_secs(5), near_inbox.recv())
        .await
        .expect("the third node gets its message")
        .unwrap();
    assert_eq!(m.decode::<u64>().unwrap(), 2);
    // A broadcast to the stalled peer is now refused by its open breaker at once, and counted.
    let lost = a.node_stats().frames_lost;
    assert_eq!(sender.broadcast("g", "t", &0u64).unwrap().slots(), 1);
    eventually(
        "the refused frame counted lost",
        Duration::from_secs(5),
        || a.node_stats().frames_lost == lost + 1,
    )
    .await;
    let (probe_slowest, probes) = probe.finish().await;
    let rss_after = rss();
    eprintln!(
        "(c) {sent} broadcasts to the stalled peer filled the outboxes in {filled_in:.2?} \
         (most frames waiting {most_waiting}); given up {freed_in:.2?} later \
         (frames_lost {} -> {}); probe on the flooding node: {probes} rounds, slowest \
         {probe_slowest:.2?}; RSS {:.1} MiB before, {:.1} MiB full, {:.1} MiB after",
        frames_lost_before,
        after.frames_lost,
        mib(rss_before),
        mib(rss_full),
        mib(rss_after),
    );
    assert!(probes > 0, "the probe ran");
    assert!(
        probe_slowest < RESPONSIVE,
        "the flooding node's scope took {probe_slowest:?} for a join and a read"
    );
    // 65 536 frames of a u64 payload: a few MiB; generous for the allocator's slack.
    let grew = rss_full.saturating_sub(rss_before);
    assert!(
        grew < 128 << 20,
        "RSS grew by {:.1} MiB while the outboxes filled",
        mib(grew)
    );

    polling.send(true).unwrap();
    drop((far_pg, far));
    stalled.shutdown().await;
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("the stalled swarm stops once polled and shut down")
        .unwrap();
}
