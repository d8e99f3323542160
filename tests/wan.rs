//! Nodes on different networks: network namespaces joined by bridges and routers
//! (`support::topology`), one node per host, each a child OS process (`support::child`) or a
//! user of the chat example (`support::chat`).
//!
//! - **The line** ([`Topology::line`]): `a` on LAN 1, `c` on LAN 2, `b` on both with IP
//!   forwarding off, so no IP path joins `a` and `c`. `a` and `c` dial `b` (mDNS off). The three
//!   must see exactly the three members, and still after twice the node-down grace; broadcasts
//!   and sends between `a` and `c` arrive exactly once and in order; a leave of `c`'s process
//!   and a graceful shutdown of `c`'s node show at `a` before the grace could explain them, and
//!   a kill of `c` after the grace.
//! - **Two NATs** ([`Topology::two_nats`]): a public node `p` on the "internet" LAN, two home
//!   routers masquerading their home LANs, a home node behind each (`h1`, `h2`), which dial `p`
//!   only. The home nodes must converge and exchange broadcasts and sends exactly once and in
//!   order; the test reports whether they got a direct connection (hole punching) and how long
//!   it took. Then the same with the direct path between the two NATs blocked: it stays
//!   relayed, and everything is still exact.
//! - **The chat** in both topologies, driven through stdin as `chat.rs` does on one LAN: three
//!   users see each other, say lines in the lobby and `/msg` each other across the gap. On the
//!   line they find each other by mDNS alone; behind the NATs they dial the public user.
//!
//! Each test first checks the topology itself with `ping` (who reaches whom, and that the home
//! nodes' traffic is masqueraded). Every address used is inside namespaces the test made, and
//! mDNS only ever runs inside them.
//!
//! Run as root, the tests make the namespaces themselves; run by anyone else, they run inside a
//! user namespace (`support::netns::as_root`). They need iproute2, iptables and ping; without
//! them, or where the kernel refuses user namespaces, they fail (they do not skip).

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use procgroups::multiaddr::Protocol;
use procgroups::{Multiaddr, Pid, Reach};
use support::chat::{Place, User, chat_binary, converse};
use support::child::{Child, ChildSpec, GROUP, all_see, union};
use support::netns::as_root;
use support::topology::Topology;
use support::{block_on, eventually, holds_for};

/// Runs a child node when the parent test re-executes this binary; in an ordinary `cargo
/// test` run (no `PROCGROUPS_CHILD` in the environment) it returns at once and passes.
#[test]
fn child_node_entry_point() {
    support::child::child_main();
}

/// The children's `node_down_grace`.
const GRACE: Duration = Duration::from_secs(2);
/// The longest wait for the nodes to converge, for messages to arrive, for a change to show.
const WAIT: Duration = Duration::from_secs(20);
/// How long the test looks for a direct connection between the home nodes.
const PUNCH: Duration = Duration::from_secs(20);
/// The longest a test may take inside a user namespace (`support::netns::as_root`).
const LIMIT: Duration = Duration::from_secs(180);
/// How many broadcasts and how many sends each side of an exchange makes.
const MESSAGES: usize = 5;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A child node on the node `name` of `topology`: in its namespace, listening on TCP on every
/// interface, dialing `dial`, mDNS off.
fn spec(topology: &Topology, name: &str, dial: Vec<Multiaddr>) -> ChildSpec {
    ChildSpec {
        dial,
        node_down_grace: GRACE,
        mdns: false,
        ..ChildSpec::on_host(name, topology.ns(name))
    }
}

/// The addresses `child` listens on at the IP address `ip`, once it does (a node learns the
/// addresses of its interfaces one by one: its ready line may lack some).
async fn addrs_at(child: &mut Child, ip: Ipv4Addr) -> Vec<Multiaddr> {
    let at = |addrs: Vec<Multiaddr>| -> Vec<Multiaddr> {
        addrs
            .into_iter()
            .filter(|a| a.iter().next() == Some(Protocol::Ip4(ip)))
            .collect()
    };
    let label = child.label.clone();
    eventually(&format!("{label} to listen at {ip}"), WAIT, || {
        let addrs = child.listen_addrs();
        if at(addrs.clone()).is_empty() {
            Err(format!("it listens on {addrs:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    at(child.listen_addrs())
}

/// The only slot of `child`'s process in [`GROUP`].
fn local_pid(child: &mut Child) -> Pid {
    let local = child.local_members(GROUP);
    assert_eq!(local.len(), 1, "{}: {local:?}", child.label);
    local[0]
}

fn ping_ok(topology: &Topology, from: &str, to: Ipv4Addr, why: &str) {
    assert!(topology.ping(from, to), "{from} cannot ping {to}: {why}");
}

fn ping_fails(topology: &Topology, from: &str, to: Ipv4Addr, why: &str) {
    assert!(!topology.ping(from, to), "{from} can ping {to}: {why}");
}

/// The line: `a` and `c` each reach `b` on their LAN, and nothing of each other.
fn check_line(t: &Topology) {
    ping_ok(t, "a", t.addr("b", "lan1"), "a and b share lan1");
    ping_ok(t, "c", t.addr("b", "lan2"), "c and b share lan2");
    ping_ok(t, "b", t.addr("a", "lan1"), "b and a share lan1");
    ping_ok(t, "b", t.addr("c", "lan2"), "b and c share lan2");
    ping_fails(t, "a", t.addr("c", "lan2"), "no IP path joins a and c");
    ping_fails(t, "c", t.addr("a", "lan1"), "no IP path joins c and a");
    ping_fails(t, "a", t.addr("b", "lan2"), "b does not route lan1 to lan2");
    ping_fails(t, "c", t.addr("b", "lan1"), "b does not route lan2 to lan1");
}

/// The two NATs: each home host reaches `p` through its router's NAT; `p` cannot reach the
/// home LANs; the home hosts cannot reach each other's address; the two routers' WAN addresses
/// reach each other unless `blocked`.
fn check_nats(t: &Topology, blocked: bool) {
    for (host, router) in [("h1", "r1"), ("h2", "r2")] {
        let before = t.nat_packets(router);
        ping_ok(t, host, t.addr("p", "internet"), "through its home router");
        // `p` has no route to the home LANs: its answer came back to the router's address.
        assert!(
            t.nat_packets(router) > before,
            "{host}'s ping to p was not masqueraded by {router}"
        );
        ping_fails(
            t,
            "p",
            t.addr(host, if host == "h1" { "home1" } else { "home2" }),
            "p has no route into a home LAN",
        );
    }
    ping_fails(t, "h1", t.addr("h2", "home2"), "h2's address is private");
    ping_fails(t, "h2", t.addr("h1", "home1"), "h1's address is private");
    let (r1, r2) = (t.addr("r1", "internet"), t.addr("r2", "internet"));
    if blocked {
        ping_fails(t, "h1", r2, "the path between the NATs is blocked");
        ping_fails(t, "h2", r1, "the path between the NATs is blocked");
    } else {
        ping_ok(t, "h1", r2, "the NATs' public addresses reach each other");
        ping_ok(t, "h2", r1, "the NATs' public addresses reach each other");
    }
}

/// Broadcasts and sends between `x` and `y` (both ways) with `others` in the group too: each
/// receiver gets each message exactly once, in the order sent. The messages of one exchange
/// start with `round` (one per exchange of a test).
async fn exchange(
    round: &str,
    x: &mut Child,
    y: &mut Child,
    others: &mut [&mut Child],
    members: usize,
) {
    let started = Instant::now();
    let (px, py) = (local_pid(x), local_pid(y));
    let mut expect_y_from_x = Vec::new();
    let mut expect_x_from_y = Vec::new();
    let mut broadcasts_x = Vec::new();
    let mut broadcasts_y = Vec::new();
    for i in 1..=MESSAGES {
        // Interleaved: one outbox per destination keeps the order across both kinds.
        let (b, s) = (
            format!("{round}-{}-b{i}", x.label),
            format!("{round}-{}-s{i}", x.label),
        );
        assert_eq!(x.broadcast(&b), members, "{}: slots targeted", x.label);
        x.send(&py, &s);
        expect_y_from_x.extend([b.clone(), s]);
        broadcasts_x.push(b);
        let (b, s) = (
            format!("{round}-{}-b{i}", y.label),
            format!("{round}-{}-s{i}", y.label),
        );
        assert_eq!(y.broadcast(&b), members, "{}: slots targeted", y.label);
        y.send(&px, &s);
        expect_x_from_y.extend([b.clone(), s]);
        broadcasts_y.push(b);
    }
    let all_right = |x: &mut Child, y: &mut Child, others: &mut [&mut Child]| {
        let mut wrong = Vec::new();
        let mut check = |child: &mut Child, from: &Pid, want: &[String]| {
            let got: Vec<String> = child
                .received_from(from)
                .into_iter()
                .filter(|text| text.starts_with(&format!("{round}-")))
                .collect();
            if got != want {
                wrong.push(format!(
                    "{} got from {from}: {got:?}, wants {want:?}",
                    child.label
                ));
            }
        };
        check(y, &px, &expect_y_from_x);
        check(x, &py, &expect_x_from_y);
        // Its own broadcasts reach a sender's process too (it is a member).
        check(x, &px, &broadcasts_x);
        check(y, &py, &broadcasts_y);
        for other in others.iter_mut() {
            check(other, &px, &broadcasts_x);
            check(other, &py, &broadcasts_y);
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    };
    let took = eventually("every message to arrive once, in order", WAIT, || {
        all_right(x, y, others)
    })
    .await;
    // Exactly once: no copy comes later.
    holds_for(
        "every message arrived once, in order",
        Duration::from_secs(1),
        || all_right(x, y, others),
    )
    .await;
    eprintln!(
        "{} and {}: {} messages each way delivered once and in order in {took:?} (exchange {:?})",
        x.label,
        y.label,
        2 * MESSAGES,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// The line.

#[test]
fn the_line_a_and_c_only_through_b() {
    as_root("the_line_a_and_c_only_through_b", LIMIT, || {
        block_on(the_line())
    });
}

/// On a current-thread runtime: the children answer through blocking calls.
async fn the_line() {
    let started = Instant::now();
    let t = Topology::line();
    check_line(&t);
    eprintln!("the line made and checked in {:?}", started.elapsed());

    let mut b = Child::spawn(spec(&t, "b", Vec::new()));
    let mut a = Child::spawn(spec(&t, "a", addrs_at(&mut b, t.addr("b", "lan1")).await));
    let mut c = Child::spawn(spec(&t, "c", addrs_at(&mut b, t.addr("b", "lan2")).await));
    let (pa, pb, pc) = (local_pid(&mut a), local_pid(&mut b), local_pid(&mut c));
    let everyone = union(&[&[pa], &[pb], &[pc]]);
    let took = eventually("a, b and c to see the three members", WAIT, || {
        all_see([&mut a, &mut b, &mut c], &everyone)
    })
    .await;
    eprintln!("the line converged in {took:?}");
    // Past the node-down grace: a and c have no direct connection to each other (they reach
    // each other through b, which relays for its scopes' peers), and must not drop each
    // other's members for it.
    holds_for(
        "the three see the three members",
        2 * GRACE + GRACE / 2,
        || all_see([&mut a, &mut b, &mut c], &everyone),
    )
    .await;
    assert_eq!(
        (a.reach(c.peer_id), c.reach(a.peer_id)),
        (Reach::Relayed, Reach::Relayed),
        "a and c, with no IP path between them, reach each other through b"
    );

    exchange("r1", &mut a, &mut c, &mut [&mut b], 3).await;

    // c's process leaves: a and b see it at once (a leave, not the grace).
    let left = Instant::now();
    c.leave();
    let without_c = union(&[&[pa], &[pb]]);
    let took = eventually("a and b to see c's process leave", WAIT, || {
        all_see([&mut a, &mut b], &without_c)
    })
    .await;
    assert!(
        took < GRACE,
        "c's leave took {took:?} to show at a and b (node_down_grace {GRACE:?}): not the leave"
    );
    eprintln!("c's leave seen in {:?}", left.elapsed());
    c.join();
    eventually("a, b and c to see c's process back", WAIT, || {
        all_see([&mut a, &mut b, &mut c], &everyone)
    })
    .await;

    // c's node shuts down gracefully: its goodbye reaches a at once too.
    let shut = Instant::now();
    c.shutdown();
    let took = eventually("a and b to see c's node go", WAIT, || {
        all_see([&mut a, &mut b], &without_c)
    })
    .await;
    assert!(
        took < GRACE,
        "c's shutdown took {took:?} to show at a and b (node_down_grace {GRACE:?}): no goodbye?"
    );
    eprintln!("c's shutdown seen in {:?}", shut.elapsed());

    // c again (a new node), then killed: no goodbye, its member goes once the grace has passed.
    let mut c = Child::spawn(spec(&t, "c", addrs_at(&mut b, t.addr("b", "lan2")).await));
    let pc = local_pid(&mut c);
    let everyone = union(&[&[pa], &[pb], &[pc]]);
    eventually("a, b and c to see the new c's member", WAIT, || {
        all_see([&mut a, &mut b, &mut c], &everyone)
    })
    .await;

    // c is killed: no goodbye, its member goes once the grace has passed.
    let killed = Instant::now();
    c.kill();
    let took = eventually(
        "a and b to drop the killed c's member",
        GRACE + WAIT,
        || all_see([&mut a, &mut b], &without_c),
    )
    .await;
    assert!(
        took >= GRACE,
        "the killed c's member went after {took:?}, before node_down_grace ({GRACE:?})"
    );
    eprintln!("c's kill seen {:?} after it", killed.elapsed());
    drop((a, b, c));
    t.delete();
    eprintln!("the line: whole test {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Two NATs.

#[test]
fn two_nats_home_nodes_meet_through_the_public_node() {
    as_root(
        "two_nats_home_nodes_meet_through_the_public_node",
        LIMIT,
        || block_on(two_nats(false)),
    );
}

#[test]
fn two_nats_with_the_direct_path_blocked_stay_relayed() {
    as_root(
        "two_nats_with_the_direct_path_blocked_stay_relayed",
        LIMIT,
        || block_on(two_nats(true)),
    );
}

async fn two_nats(blocked: bool) {
    let started = Instant::now();
    let t = Topology::two_nats();
    if blocked {
        t.block_between("r1", "r2", "internet");
    }
    check_nats(&t, blocked);
    eprintln!("two NATs made and checked in {:?}", started.elapsed());

    let mut p = Child::spawn(spec(&t, "p", Vec::new()));
    let to_p = addrs_at(&mut p, t.addr("p", "internet")).await;
    let mut h1 = Child::spawn(spec(&t, "h1", to_p.clone()));
    let mut h2 = Child::spawn(spec(&t, "h2", to_p));
    let spawned = Instant::now();
    let (pp, p1, p2) = (local_pid(&mut p), local_pid(&mut h1), local_pid(&mut h2));
    let everyone = union(&[&[pp], &[p1], &[p2]]);
    let took = eventually("p, h1 and h2 to see the three members", WAIT, || {
        all_see([&mut p, &mut h1, &mut h2], &everyone)
    })
    .await;
    eprintln!("two NATs converged in {took:?}");
    holds_for(
        "the three see the three members",
        2 * GRACE + GRACE / 2,
        || all_see([&mut p, &mut h1, &mut h2], &everyone),
    )
    .await;

    exchange("r1", &mut h1, &mut h2, &mut [&mut p], 3).await;

    // Each home node holds a reservation at p: its relayed address is one of its external
    // addresses, what it tells others to reach it by.
    for h in [&mut h1, &mut h2] {
        let label = h.label.clone();
        eventually(&format!("{label} to list an address at p"), WAIT, || {
            let external = h.external_addrs();
            if external.iter().any(|a| {
                a.iter().any(|p| p == Protocol::P2pCircuit)
                    && a.iter().any(|q| q == Protocol::P2p(pp.node()))
            }) {
                Ok(())
            } else {
                Err(format!("{external:?}"))
            }
        })
        .await;
    }

    // Hole punching: behind these NATs (they keep a port for a socket, whoever it talks to,
    // and drop what comes unasked), DCUtR makes the relayed connection direct.
    let (id1, id2) = (h1.peer_id, h2.peer_id);
    let reached = |h1: &mut Child, h2: &mut Child| (h1.reach(id2), h2.reach(id1));
    if blocked {
        // Give hole punching its chance first: it must not get through the block.
        holds_for("h1 and h2 not directly connected", PUNCH / 4, || {
            let seen = reached(&mut h1, &mut h2);
            if seen.0 == Reach::Direct || seen.1 == Reach::Direct {
                Err(format!("reached through the block: {seen:?}"))
            } else {
                Ok(())
            }
        })
        .await;
        let seen = reached(&mut h1, &mut h2);
        println!(
            "hole punching (path blocked): h1 -> h2 {:?}, h2 -> h1 {:?} {:?} after they started; \
             packets dropped by the block: {}",
            seen.0,
            seen.1,
            spawned.elapsed(),
            t.blocked_packets("r1") + t.blocked_packets("r2")
        );
        assert_eq!(
            seen,
            (Reach::Relayed, Reach::Relayed),
            "still reached through p"
        );
    } else {
        eventually(
            "h1 and h2 to connect directly (hole punching)",
            PUNCH,
            || {
                let seen = reached(&mut h1, &mut h2);
                if seen == (Reach::Direct, Reach::Direct) {
                    Ok(())
                } else {
                    Err(format!("h1 -> h2 {:?}, h2 -> h1 {:?}", seen.0, seen.1))
                }
            },
        )
        .await;
        println!(
            "hole punching: h1 and h2 connected directly {:?} after they started",
            spawned.elapsed()
        );
    }
    // Still exact, directly or through p.
    all_see([&mut p, &mut h1, &mut h2], &everyone).expect("members after the punch window");
    exchange("r2", &mut h1, &mut h2, &mut [&mut p], 3).await;
    drop((p, h1, h2));
    t.delete();
    eprintln!(
        "two NATs (blocked {blocked}): whole test {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// The chat.

/// alice and carol, who have no direct path, message each other.
fn across(alice: &mut User, carol: &mut User) {
    let (alice_mark, carol_mark) = (alice.mark(), carol.mark());
    alice.send("/msg carol over the gap");
    alice.expect(alice_mark, "[dm -> carol] <alice> over the gap");
    carol.expect(carol_mark, "[dm] <alice> over the gap");
    carol.send("/msg alice and back");
    carol.expect(carol_mark, "[dm -> alice] <carol> and back");
    alice.expect(alice_mark, "[dm] <carol> and back");
}

#[test]
fn the_line_chat_by_mdns_alone() {
    chat_binary(); // built by this process, not inside the user namespace (see as_root)
    as_root("the_line_chat_by_mdns_alone", LIMIT, || {
        let started = Instant::now();
        let t = Topology::line();
        check_line(&t);
        {
            // Declared after the topology: the users are killed before their namespaces go.
            let mut alice = User::join("alice", &[], Place::Node(&t, "a"));
            let mut bob = User::join("bob", &[], Place::Node(&t, "b"));
            let mut carol = User::join("carol", &[], Place::Node(&t, "c"));
            eprintln!("three users ready in {:?}", started.elapsed());
            for user in [&mut alice, &mut bob, &mut carol] {
                user.who_until("lobby", &["alice", "bob", "carol"]);
            }
            across(&mut alice, &mut carol);
            converse(&mut alice, &mut bob, &mut carol);
        }
        t.delete();
        eprintln!("the line chat: whole test {:?}", started.elapsed());
    });
}

#[test]
fn two_nats_chat_through_the_public_user() {
    chat_binary();
    as_root("two_nats_chat_through_the_public_user", LIMIT, || {
        let started = Instant::now();
        let t = Topology::two_nats();
        check_nats(&t, false);
        {
            let bob = User::join("bob", &[], Place::Node(&t, "p"));
            let public = format!("/ip4/{}/tcp/", t.addr("p", "internet"));
            let dial = bob
                .addrs
                .iter()
                .find(|a| a.starts_with(&public))
                .unwrap_or_else(|| panic!("bob listens on no {public}…: {:?}", bob.addrs))
                .clone();
            let args = ["--dial", dial.as_str()];
            let mut alice = User::join("alice", &args, Place::Node(&t, "h1"));
            let mut carol = User::join("carol", &args, Place::Node(&t, "h2"));
            let mut bob = bob;
            eprintln!("three users ready in {:?}", started.elapsed());
            for user in [&mut alice, &mut bob, &mut carol] {
                user.who_until("lobby", &["alice", "bob", "carol"]);
            }
            across(&mut alice, &mut carol);
            converse(&mut alice, &mut bob, &mut carol);
        }
        t.delete();
        eprintln!("the two NATs chat: whole test {:?}", started.elapsed());
    });
}
