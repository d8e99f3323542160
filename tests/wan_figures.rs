//! Figures across networks: the latency of a join seen on another node and the throughput of
//! broadcasts to it, over three paths measured in one run, printed as one table.
//!
//! Two topologies of two NATs ([`Topology::two_nats`]), built side by side: in the first the
//! home nodes `h1` and `h2` get a direct connection by hole punching; in the second the direct
//! path between the two home routers is blocked ([`Topology::block_between`]), so they stay
//! relayed through the public node `p`. The paths:
//! 1. **direct**: `h1` to `p` in the first (TCP through `h1`'s NAT, no relay);
//! 2. **hole-punched**: `h1` to `h2` in the first, once `Node::reach` says `Direct` both ways;
//! 3. **relayed**: `h1` to `h2` in the second, `Node::reach` saying `Relayed` both ways.
//!
//! Every node runs in this process, on a thread that entered its node's network namespace with
//! `setns(2)` before it built the node: the node's network thread, which it spawns, inherits
//! the namespace (checked: the node listens on its namespace's addresses and no other). So the
//! measuring code is ordinary in-process code, one clock, as in `examples/bench.rs`:
//! - **join visible**: a process on `h1` joins a group, a monitor of that group on the other
//!   node sees the event; then the process leaves, and the leave is seen, before the next join.
//!   [`WARMUP`] untimed, then [`JOINS`] timed, one at a time: median and 99th percentile;
//! - **broadcast**: [`BROADCASTS`] broadcasts of a `u64` from `h1` to a group whose only member
//!   is on the other node, as fast as the caller can make them; messages per second from the
//!   first call until the last message is taken out of the member's inbox.
//!
//! What is asserted is what a user relies on, not timing: each path is what it says
//! (`Node::reach`, before and after its measurement), every join is seen, every broadcast
//! arrives exactly once and in order (none dropped at the inbox, no copy later). The figures
//! are printed (`cargo test --release --test wan_figures -- --nocapture`; the test's output
//! shows them on failure too) and quoted in README.md ("Measured across networks").
//!
//! Buffers as in `examples/bench.rs`: an inbox and a peer's outbox hold a whole burst
//! (`mailbox_capacity`, `action_queue_max_size`). mDNS is off (the nodes dial `p`); every
//! address used is inside the namespaces the test made, which the topologies' drops delete.
//! Run by a user other than root, the test runs inside a user namespace
//! (`support::netns::as_root`), where `setns` into the namespaces it made works the same.

mod support;

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use procgroups::multiaddr::Protocol;
use procgroups::{EventKind, Instance, Multiaddr, Node, PeerId, Pid, Process, Reach, ScopeConfig};
use support::eventually;
use support::netns::as_root;
use support::topology::Topology;

const SCOPE: &str = "figures:pg";
/// The topic of the broadcasts.
const TOPIC: &str = "m";
/// Every node's process joins this group at start, so that the nodes learn of each other.
const PRESENCE: &str = "here";
/// Untimed joins before the timed ones.
const WARMUP: usize = 20;
/// Timed joins per path.
const JOINS: usize = 200;
/// Broadcasts per trial.
const BROADCASTS: usize = 2000;
/// Trials of the broadcasts per path; the median is shown, with the range.
const TRIALS: usize = 3;
/// The longest wait for anything that must happen (an event, a message, a connection).
const WAIT: Duration = Duration::from_secs(20);
/// After the last broadcast arrived, how long no copy may follow.
const NO_COPY: Duration = Duration::from_millis(300);
/// The longest the test may take inside a user namespace (`support::netns::as_root`).
const LIMIT: Duration = Duration::from_secs(120);
/// Where iproute2 names its network namespaces.
const NETNS_RUN_DIR: &str = "/var/run/netns";

// ---------------------------------------------------------------------------------------------
// Nodes in namespaces, in this process.

/// Moves the calling thread into the network namespace `ns` (named by `ip netns`), and checks
/// that it is there. Threads it spawns afterwards are created in that namespace.
fn enter_netns(ns: &str) {
    let path = Path::new(NETNS_RUN_DIR).join(ns);
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: `setns` with a file descriptor this function owns (open until it returns) and
    // `CLONE_NEWNET`; it changes only the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns({}, CLONE_NEWNET): {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let wanted = file.metadata().expect("fstat the namespace");
    let now = std::fs::metadata("/proc/thread-self/ns/net").expect("stat /proc/thread-self/ns/net");
    assert_eq!(
        (now.dev(), now.ino()),
        (wanted.dev(), wanted.ino()),
        "after setns, this thread is not in {ns}"
    );
}

/// A node of a topology, running in this process inside the node's namespace.
struct NsNode {
    label: String,
    node: Node,
    id: PeerId,
    /// A process in [`PRESENCE`] (the process and its instance), kept alive.
    present: Instance,
    _process: Process,
}

/// Both ends' scope: the defaults but for a peer's outbox, which holds a whole burst.
fn scope_config() -> ScopeConfig {
    ScopeConfig::builder()
        .action_queue_max_size(2 * BROADCASTS)
        .build()
        .expect("scope config")
}

/// Starts a node on the node `name` of `topology`: a thread enters its namespace and builds
/// the node there (its network thread starts inside it), listening on TCP on every
/// interface, mDNS off; then it dials `dial` and a process joins [`PRESENCE`].
fn start(topology: &Topology, tag: &str, name: &str, dial: Vec<Multiaddr>) -> NsNode {
    let label = format!("{tag}/{name}");
    let ns = topology.ns(name).to_owned();
    let node = std::thread::Builder::new()
        .name(format!("in-{name}"))
        .spawn(move || {
            enter_netns(&ns);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on(
                    Node::builder()
                        .mdns(false)
                        .listen_on("/ip4/0.0.0.0/tcp/0".parse().expect("multiaddr"))
                        .scope(SCOPE, scope_config())
                        .mailbox_capacity(2 * BROADCASTS)
                        .build(),
                )
                .expect("a node")
        })
        .expect("a thread")
        .join()
        .unwrap_or_else(|_| panic!("{label}: starting the node in its namespace panicked"));
    // Its sockets are the namespace's: it listens on the node's addresses there, and on no
    // other but loopback (the namespace's own).
    let own = topology.addrs(name);
    let ips = |node: &Node| -> Vec<Ipv4Addr> {
        node.listen_addrs()
            .iter()
            .filter_map(|a| match a.iter().next() {
                Some(Protocol::Ip4(ip)) => Some(ip),
                _ => None,
            })
            .collect()
    };
    let at = ips(&node);
    assert!(
        at.iter().all(|ip| ip.is_loopback() || own.contains(ip)),
        "{label} listens on {at:?}, outside its namespace (whose addresses are {own:?})"
    );
    for addr in dial {
        node.dial(addr).expect("dial");
    }
    let process = node.spawn_process();
    let present = process.open(SCOPE).expect("open");
    present.join(PRESENCE).expect("join");
    NsNode {
        label,
        id: node.peer_id(),
        node,
        present,
        _process: process,
    }
}

/// The TCP addresses `n` listens on at `ip`, once it does (a node learns its interfaces'
/// addresses one by one).
async fn addrs_at(n: &NsNode, ip: Ipv4Addr) -> Vec<Multiaddr> {
    let at = |n: &NsNode| -> Vec<Multiaddr> {
        n.node
            .listen_addrs()
            .into_iter()
            .filter(|a| a.iter().next() == Some(Protocol::Ip4(ip)))
            .collect()
    };
    eventually(&format!("{} to listen at {ip}", n.label), WAIT, || {
        !at(n).is_empty()
    })
    .await;
    at(n)
}

/// `p`, `h1` and `h2` on a two-NAT topology; the home nodes dial `p`.
async fn three(t: &Topology, tag: &str) -> [NsNode; 3] {
    let p = start(t, tag, "p", Vec::new());
    let to_p = addrs_at(&p, t.addr("p", "internet")).await;
    let h1 = start(t, tag, "h1", to_p.clone());
    let h2 = start(t, tag, "h2", to_p);
    [p, h1, h2]
}

/// Every one of `nodes` sees the others' processes in [`PRESENCE`].
fn all_present(nodes: &[&NsNode]) -> Result<(), String> {
    for n in nodes {
        let seen = n.present.get_members(PRESENCE).expect("get_members").len();
        if seen != nodes.len() {
            return Err(format!("{} sees {seen} of {}", n.label, nodes.len()));
        }
    }
    Ok(())
}

/// How `x` reaches `y` and `y` reaches `x`.
fn reach(x: &NsNode, y: &NsNode) -> (Reach, Reach) {
    (x.node.reach(&y.id), y.node.reach(&x.id))
}

fn check_reach(x: &NsNode, y: &NsNode, want: Reach, when: &str) {
    assert_eq!(
        reach(x, y),
        (want, want),
        "{when}: {} and {} do not reach each other {want:?} ({} -> {}, {} -> {})",
        x.label,
        y.label,
        x.label,
        y.label,
        y.label,
        x.label
    );
}

// ---------------------------------------------------------------------------------------------
// Measuring.

/// One path's figures.
struct Figures {
    path: &'static str,
    reach: Reach,
    join_median: Duration,
    join_p99: Duration,
    joins: usize,
    /// Each trial's time for [`BROADCASTS`], sorted.
    broadcast_took: Vec<Duration>,
}

/// The value at quantile `q` of sorted `samples` (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Waits for the next event of `sub`, which must be `kind` for `pid` alone in `group`; returns
/// when it was taken out.
async fn next_change(
    sub: &mut procgroups::Subscription,
    kind: EventKind,
    group: &str,
    pid: Pid,
    what: &str,
) -> Instant {
    let event = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: no event within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: the monitor closed"));
    let at = Instant::now();
    assert!(
        event.kind == kind && &*event.group == group && event.pids[..] == [pid],
        "{what}: expected {kind:?} of {pid} in {group}, got {event:?}"
    );
    at
}

/// Joins on `x` seen on `y`, then broadcasts from `x` to a member on `y` (in groups named after
/// `key`); `want` is the path between them, checked before and after.
async fn measure(key: &str, path: &'static str, x: &NsNode, y: &NsNode, want: Reach) -> Figures {
    check_reach(x, y, want, &format!("before measuring {path}"));
    let (joiner, watcher) = (x.node.spawn_process(), y.node.spawn_process());
    let (xpg, ypg) = (
        joiner.open(SCOPE).expect("open"),
        watcher.open(SCOPE).expect("open"),
    );

    // Joins, one at a time.
    let group = format!("lat-{key}");
    let (mut sub, members) = ypg.monitor(&group).expect("monitor");
    assert!(members.is_empty(), "{group} has members already");
    let me = joiner.pid();
    let mut samples = Vec::with_capacity(JOINS);
    for i in 0..WARMUP + JOINS {
        let what = format!("{path}: join {i} of {} on {}", x.label, y.label);
        let t0 = Instant::now();
        xpg.join(group.as_str()).expect("join");
        let seen = next_change(&mut sub, EventKind::MemberJoined, &group, me, &what).await;
        if i >= WARMUP {
            samples.push(seen - t0);
        }
        xpg.leave(group.as_str()).expect("leave");
        let what = format!("{path}: leave {i} of {} on {}", x.label, y.label);
        next_change(&mut sub, EventKind::MemberLeft, &group, me, &what).await;
    }
    assert_eq!(sub.dropped(), 0, "{path}: the monitor dropped events");
    samples.sort();

    // Broadcasts to a group whose only member is on `y`, in trials.
    let mut took: Vec<Duration> = Vec::with_capacity(TRIALS);
    for trial in 0..TRIALS {
        took.push(broadcasts(&format!("bc-{key}-{trial}"), path, &xpg, me, y).await);
    }
    took.sort();
    check_reach(x, y, want, &format!("after measuring {path}"));
    Figures {
        path,
        reach: want,
        join_median: quantile(&samples, 0.5),
        join_p99: quantile(&samples, 0.99),
        joins: samples.len(),
        broadcast_took: took,
    }
}

/// One trial of [`BROADCASTS`] broadcasts from `xpg` (of the process `me`) to `group`, whose
/// only member joins on `y` first; returns the time from the first call until the last
/// message was taken out of the member's inbox. Every message must arrive once, in order.
async fn broadcasts(group: &str, path: &str, xpg: &Instance, me: Pid, y: &NsNode) -> Duration {
    let receiver = y.node.spawn_process();
    let mut inbox = receiver.listen(TOPIC);
    let member = receiver.open(SCOPE).expect("open");
    member.join(group).expect("join");
    eventually(
        &format!("{path}: {group}'s member to be seen"),
        WAIT,
        || {
            let m = xpg.get_members(group).expect("get_members");
            m.len() == 1 && m.contains(&receiver.pid())
        },
    )
    .await;
    let drain = tokio::spawn(async move {
        let mut got = Vec::with_capacity(BROADCASTS);
        let mut last = Instant::now();
        while got.len() < BROADCASTS {
            let Ok(Some(message)) = tokio::time::timeout(WAIT, inbox.recv()).await else {
                break;
            };
            last = Instant::now();
            got.push((message.from(), message.decode::<u64>().expect("a u64")));
        }
        (got, last, inbox)
    });
    let t0 = Instant::now();
    for i in 0..BROADCASTS as u64 {
        let targeted = xpg.broadcast(group, TOPIC, &i).expect("broadcast").slots();
        assert_eq!(
            targeted, 1,
            "{path}: broadcast {i} targeted {targeted} slots"
        );
    }
    let (got, last, mut inbox) = drain.await.expect("the drain task");
    tokio::time::sleep(NO_COPY).await;
    let later = std::iter::from_fn(|| inbox.try_recv()).count();
    let wanted: Vec<(Pid, u64)> = (0..BROADCASTS as u64).map(|i| (me, i)).collect();
    let first_wrong = got.iter().zip(&wanted).position(|(g, w)| g != w);
    assert!(
        got == wanted && later == 0 && receiver.dropped() == 0,
        "{path}, {group}: {} of {BROADCASTS} broadcasts arrived (first out of place at \
         {first_wrong:?}), {later} more after them, {} dropped at the inbox",
        got.len(),
        receiver.dropped()
    );
    member.leave(group).expect("leave");
    last - t0
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn table(rows: &[Figures]) -> String {
    let per_s = |d: &Duration| BROADCASTS as f64 / d.as_secs_f64();
    let mut out = format!(
        "| path | `reach` | join visible: median | p99 | broadcasts/s: median of {TRIALS} (range) |\n\
         |---|---|---|---|---|\n"
    );
    for r in rows {
        let rates: Vec<f64> = r.broadcast_took.iter().rev().map(per_s).collect();
        out.push_str(&format!(
            "| {} | {:?} | {} | {} | {:.0}k ({:.0}k–{:.0}k) |\n",
            r.path,
            r.reach,
            ms(r.join_median),
            ms(r.join_p99),
            rates[rates.len() / 2] / 1000.0,
            rates[0] / 1000.0,
            rates[rates.len() - 1] / 1000.0,
        ));
    }
    out.push_str(&format!(
        "{} timed joins (after {WARMUP} untimed) per path, one at a time; {TRIALS} trials of \
         {BROADCASTS} broadcasts of a u64 to one member on the other node; {} build\n",
        rows.first().map_or(0, |r| r.joins),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// The test.

#[test]
fn figures_direct_hole_punched_relayed() {
    as_root("figures_direct_hole_punched_relayed", LIMIT, || {
        // The measuring code's own runtime: the caller on this thread, the inbox's drain on
        // one worker. The nodes have their network threads.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(figures())
    });
}

async fn figures() {
    let started = Instant::now();
    let open = Topology::two_nats();
    let blocked = Topology::two_nats();
    blocked.block_between("r1", "r2", "internet");
    assert!(
        open.ping("h1", open.addr("r2", "internet")),
        "open: h1 cannot reach r2's public address"
    );
    assert!(
        !blocked.ping("h1", blocked.addr("r2", "internet")),
        "blocked: h1 reaches r2's public address through the block"
    );
    eprintln!("two topologies made and checked in {:?}", started.elapsed());

    // Declared after the topologies: the nodes go before their namespaces.
    let [op, o1, o2] = three(&open, "open").await;
    let [bp, b1, b2] = three(&blocked, "blocked").await;
    let spawned = Instant::now();
    let took = eventually(
        "the nodes of both topologies to see each other",
        WAIT,
        || {
            all_present(&[&op, &o1, &o2])?;
            all_present(&[&bp, &b1, &b2])
        },
    )
    .await;
    eprintln!("both topologies' nodes see each other after {took:?}");
    let took = eventually(
        "open: h1 and h2 to connect directly (hole punching)",
        WAIT,
        || match reach(&o1, &o2) {
            (Reach::Direct, Reach::Direct) => Ok(()),
            seen => Err(format!("{seen:?}")),
        },
    )
    .await;
    eprintln!("open: h1 and h2 direct {took:?} after they saw each other");
    eventually(
        "blocked: h1 and h2 to reach each other relayed",
        WAIT,
        || match reach(&b1, &b2) {
            (Reach::Relayed, Reach::Relayed) => Ok(()),
            seen => Err(format!("{seen:?}")),
        },
    )
    .await;
    // The paths, as TCP sees them from h1: in the open topology a connection to h2 goes to
    // r2's public address (through both NATs); in the blocked one nothing does.
    let to = |t: &Topology, router: &str| {
        let ip = t.addr(router, "internet");
        t.tcp_peers("h1").iter().filter(|a| *a.ip() == ip).count()
    };
    assert!(
        to(&open, "r2") > 0,
        "open: h1 has no TCP connection to r2's address: {:?}",
        open.tcp_peers("h1")
    );
    assert_eq!(
        to(&blocked, "r2"),
        0,
        "blocked: h1 has a TCP connection to r2's address: {:?}",
        blocked.tcp_peers("h1")
    );
    eprintln!(
        "paths ready {:?} after the nodes started (whole test so far {:?})",
        spawned.elapsed(),
        started.elapsed()
    );

    let measuring = Instant::now();
    let rows = [
        measure(
            "direct",
            "direct (h1 to p, through h1's NAT)",
            &o1,
            &op,
            Reach::Direct,
        )
        .await,
        measure(
            "punched",
            "hole-punched (h1 to h2, through both NATs)",
            &o1,
            &o2,
            Reach::Direct,
        )
        .await,
        measure(
            "relayed",
            "relayed (h1 to h2 through p)",
            &b1,
            &b2,
            Reach::Relayed,
        )
        .await,
    ];
    eprintln!("measured in {:?}", measuring.elapsed());
    println!("{}", table(&rows));

    let nodes = [op, o1, o2, bp, b1, b2];
    futures::future::join_all(nodes.iter().map(|n| n.node.shutdown())).await;
    drop(nodes);
    open.delete();
    blocked.delete();
    eprintln!("wan_figures: whole test {:?}", started.elapsed());
}
