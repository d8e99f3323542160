//! Metadata per membership and registered names over real swarms (nodes of one test process
//! over loopback TCP, mDNS off): what a user observes on every node while processes join with
//! a value, update it, leave, and claim names, across late connections, partitions longer
//! than the grace, restarts and node-down.
//!
//! Every wait is on a condition with a deadline (`eventually`, `holds_for`, `next_event`); no
//! test sleeps to synchronise.

use std::time::{Duration, Instant};

use procgroups::{
    ErrorKind, Event, EventKind, Instance, Keypair, NAME_LOST_TOPIC, NameLost, Node, Pid, Process,
    ScopeConfig, Subscription,
};
use serde::{Deserialize, Serialize};

mod support;
use support::{WAIT, connect, cut, eventually, grace, holds_for, next_event, next_message};

const SCOPE: &str = "test:names";
/// The short `node_down_grace` of the tests where a peer cut off must be purged.
const SHORT_GRACE: Duration = Duration::from_millis(300);
/// How long a test watches that something does not happen (a second `NameLost`, a ghost).
const QUIET: Duration = Duration::from_millis(500);

// ------------------------------------------------------------------------------------ helpers

/// The metadata of the membership tests: what a chat's member would show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Profile {
    nick: String,
    status: String,
}

fn profile(nick: &str, status: &str) -> Profile {
    Profile {
        nick: nick.into(),
        status: status.into(),
    }
}

async fn node_with(config: ScopeConfig) -> Node {
    support::node(SCOPE, config).await
}

async fn node() -> Node {
    node_with(ScopeConfig::default()).await
}

fn short_grace() -> ScopeConfig {
    grace(SHORT_GRACE)
}

fn spawn(node: &Node) -> (Process, Instance) {
    support::spawn(node, SCOPE)
}

/// Every pair of `nodes` connected.
async fn mesh(nodes: &[&Node]) {
    for (i, x) in nodes.iter().enumerate() {
        for y in &nodes[i + 1..] {
            connect(y, x).await;
        }
    }
}

/// What `pg`'s node holds of `pid` in `group`: `None` when it is not a member, else its
/// slots and its decoded metadata (`None` for a member without a value).
fn seen(pg: &Instance, group: &str, pid: Pid) -> Option<(u32, Option<Profile>)> {
    pg.get_members_with_meta(group)
        .expect("get_members_with_meta")
        .into_iter()
        .find(|m| m.pid == pid)
        .map(|m| {
            let meta = m
                .meta
                .map(|v| v.decode::<Profile>().expect("a profile decodes"));
            (m.slots, meta)
        })
}

/// `Ok` when `pg`'s node holds exactly `want` in `group` (each pid with its slots and value).
fn holds_exactly(
    pg: &Instance,
    group: &str,
    want: &[(Pid, u32, Option<Profile>)],
) -> Result<(), String> {
    let got: Vec<(Pid, u32, Option<Profile>)> = pg
        .get_members_with_meta(group)
        .expect("get_members_with_meta")
        .into_iter()
        .map(|m| {
            let meta = m
                .meta
                .map(|v| v.decode::<Profile>().expect("a profile decodes"));
            (m.pid, m.slots, meta)
        })
        .collect();
    let mut want = want.to_vec();
    want.sort_by_key(|(p, _, _)| *p);
    if got == want {
        Ok(())
    } else {
        Err(format!("{got:?}, want {want:?}"))
    }
}

/// `Ok` when the O(1) counts of `pg`'s node agree with its lists: `member_count` and
/// `local_member_count` of each group (and of `also`, which may be empty) with
/// `get_members` / `get_local_members`, `group_count` with `which_groups`; and
/// `get_members_with_meta` lists the same slots as `get_members`.
fn counts_agree(pg: &Instance, also: &[&str]) -> Result<(), String> {
    let groups = pg.which_groups().expect("which_groups");
    let group_count = pg.group_count().expect("group_count");
    if group_count != groups.len() {
        return Err(format!(
            "group_count {group_count}, which_groups {groups:?}"
        ));
    }
    let mut names: Vec<&str> = groups.iter().map(|g| &**g).collect();
    names.extend_from_slice(also);
    for g in names {
        let members = pg.get_members(g).expect("get_members");
        let local = pg.get_local_members(g).expect("get_local_members");
        let count = pg.member_count(g).expect("member_count");
        let local_count = pg.local_member_count(g).expect("local_member_count");
        let with_meta: usize = pg
            .get_members_with_meta(g)
            .expect("get_members_with_meta")
            .iter()
            .map(|m| m.slots as usize)
            .sum();
        if (count, local_count, with_meta) != (members.len(), local.len(), members.len()) {
            return Err(format!(
                "{g}: member_count {count}, local_member_count {local_count}, slots with meta \
                 {with_meta}; get_members {members:?}, get_local_members {local:?}"
            ));
        }
    }
    Ok(())
}

/// The next event of `sub`, which must be of `kind` for `group`.
async fn expect_event(sub: &mut Subscription, kind: EventKind, group: &str) -> Event {
    let ev = next_event(sub).await;
    assert_eq!((ev.kind, &*ev.group), (kind, group), "{ev:?}");
    ev
}

fn decoded(ev: &Event) -> Option<Profile> {
    ev.meta
        .as_ref()
        .map(|m| m.decode::<Profile>().expect("a profile decodes"))
}

/// Whether `what` (the instance of each node, by name) all answer `want` for `whereis(name)`.
fn all_see(name: &str, want: Option<Pid>, what: &[(&str, &Instance)]) -> Result<(), String> {
    let seen: Vec<(&str, Option<Pid>)> = what
        .iter()
        .map(|(n, pg)| (*n, pg.whereis(name).expect("whereis")))
        .collect();
    if seen.iter().all(|(_, p)| *p == want) {
        Ok(())
    } else {
        Err(format!("{seen:?}, want {want:?}"))
    }
}

/// `Ok` while `x` and `y` have no connection to each other: a cut made with `cut` holds until
/// one of them dials the other.
fn apart(x: &Node, y: &Node) -> Result<(), String> {
    if x.connected_peers().contains(&y.peer_id()) || y.connected_peers().contains(&x.peer_id()) {
        Err("the cut did not hold: the nodes reconnected".into())
    } else {
        Ok(())
    }
}

// -------------------------------------------------------------------------- metadata: tests

/// 1. A value given to `join_with` reaches every node; a monitor on another node sees the
/// join with it, the update with the new value, and the leave of the last slot with the old
/// one; the counts agree with the lists on every node (registered names are no groups).
#[tokio::test]
async fn metadata_reaches_every_node_with_its_events() {
    let (a, b, c) = (node().await, node().await, node().await);
    mesh(&[&a, &b, &c]).await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    let (pc, gc) = spawn(&c);
    let (_w, wb) = spawn(&b);
    let (mut sub, snap) = wb.monitor("room").unwrap();
    assert!(snap.is_empty());

    // A member with a value, one without, one with two slots in another group, and a name.
    let online = profile("alice", "online");
    ga.join_with("room", &online).unwrap();
    gb.join("room").unwrap();
    gc.join(["lobby", "lobby"]).unwrap();
    gc.register("carol", &"a name, not a group").unwrap();
    let all = [("a", &ga), ("b", &gb), ("c", &gc)];
    eventually("the value of pa on every node", WAIT, || {
        for (n, pg) in all {
            holds_exactly(
                pg,
                "room",
                &[(pa.pid(), 1, Some(online.clone())), (pb.pid(), 1, None)],
            )
            .map_err(|e| format!("{n}: {e}"))?;
            holds_exactly(pg, "lobby", &[(pc.pid(), 2, None)]).map_err(|e| format!("{n}: {e}"))?;
            if pg.whereis("carol").unwrap() != Some(pc.pid()) {
                return Err(format!("{n}: carol not seen"));
            }
        }
        Ok(())
    })
    .await;
    for (n, pg) in all {
        assert_eq!(pg.group_count().unwrap(), 2, "{n}: room and lobby only");
        assert_eq!(pg.member_count("room").unwrap(), 2, "{n}");
        assert_eq!(pg.member_count("lobby").unwrap(), 2, "{n}");
        eventually("the counts agree with the lists", WAIT, || {
            counts_agree(pg, &["carol", "nowhere"]).map_err(|e| format!("{n}: {e}"))
        })
        .await;
    }
    assert_eq!(ga.local_member_count("room").unwrap(), 1);
    assert_eq!(gb.local_member_count("room").unwrap(), 1);
    assert_eq!(gc.local_member_count("room").unwrap(), 0);
    assert_eq!(gc.local_member_count("lobby").unwrap(), 2);

    // The monitor on b: pa's join carries its value; pb's own join carries none.
    let mut joined = Vec::new();
    while joined.len() < 2 {
        let ev = expect_event(&mut sub, EventKind::MemberJoined, "room").await;
        joined.push((ev.pids.to_vec(), decoded(&ev)));
    }
    joined.sort_by_key(|(p, _)| p.clone());
    let mut want = vec![
        (vec![pa.pid()], Some(online.clone())),
        (vec![pb.pid()], None),
    ];
    want.sort_by_key(|(p, _)| p.clone());
    assert_eq!(joined, want);

    // An update: its slots stay, every node gets the new value, the monitor an update.
    let away = profile("alice", "away");
    ga.update("room", &away).unwrap();
    let ev = expect_event(&mut sub, EventKind::MemberUpdated, "room").await;
    assert_eq!(
        (&*ev.pids, decoded(&ev)),
        (&[pa.pid()][..], Some(away.clone()))
    );
    eventually("the new value on every node", WAIT, || {
        for (n, pg) in all {
            let got = seen(pg, "room", pa.pid());
            if got != Some((1, Some(away.clone()))) {
                return Err(format!("{n}: {got:?}"));
            }
        }
        Ok(())
    })
    .await;
    assert_eq!(
        gb.update("lobby", &away).unwrap_err().kind(),
        ErrorKind::Invalid,
        "an update of a group the process is not in"
    );

    // The leave of the last slot: the monitor sees it with the old value; pa is gone.
    ga.leave("room").unwrap();
    let ev = expect_event(&mut sub, EventKind::MemberLeft, "room").await;
    assert_eq!(
        (&*ev.pids, decoded(&ev)),
        (&[pa.pid()][..], Some(away.clone()))
    );
    eventually("pa gone from every node", WAIT, || {
        for (n, pg) in all {
            holds_exactly(pg, "room", &[(pb.pid(), 1, None)]).map_err(|e| format!("{n}: {e}"))?;
        }
        Ok(())
    })
    .await;
    gb.leave("room").unwrap();
    let ev = expect_event(&mut sub, EventKind::MemberLeft, "room").await;
    assert_eq!((&*ev.pids, ev.meta.as_ref()), (&[pb.pid()][..], None));
    eventually("room empty everywhere", WAIT, || {
        all.iter()
            .all(|(_, pg)| pg.group_count().unwrap() == 1 && pg.member_count("room").unwrap() == 0)
    })
    .await;
    for (n, pg) in all {
        eventually("the counts agree with the lists", WAIT, || {
            counts_agree(pg, &["room", "carol"]).map_err(|e| format!("{n}: {e}"))
        })
        .await;
    }
    assert!(sub.try_recv().is_none(), "no other event");
}

/// 2. A node that connects late gets the current values (and names) through the sync.
#[tokio::test]
async fn a_late_node_gets_the_values_through_the_sync() {
    let (a, b) = (node().await, node().await);
    connect(&b, &a).await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    ga.join_with("room", &profile("alice", "online")).unwrap();
    ga.join("room").unwrap(); // a second slot shares the value
    ga.update("room", &profile("alice", "busy")).unwrap();
    gb.join_with("room", &profile("bob", "online")).unwrap();
    ga.register("alice", &profile("alice", "the name")).unwrap();
    let want = [
        (pa.pid(), 2, Some(profile("alice", "busy"))),
        (pb.pid(), 1, Some(profile("bob", "online"))),
    ];
    eventually("a and b agree", WAIT, || {
        holds_exactly(&ga, "room", &want)?;
        holds_exactly(&gb, "room", &want)
    })
    .await;

    let c = node().await;
    let (_pc, gc) = spawn(&c);
    connect(&c, &a).await;
    connect(&c, &b).await;
    eventually("c gets the values", WAIT, || {
        holds_exactly(&gc, "room", &want)
    })
    .await;
    let holder = gc.whereis_with_meta("alice").unwrap().expect("alice on c");
    assert_eq!(holder.pid, pa.pid());
    assert_eq!(
        holder.meta.decode::<Profile>().unwrap(),
        profile("alice", "the name")
    );
    let on_a = ga.whereis_with_meta("alice").unwrap().unwrap();
    assert_eq!(
        holder.registered_at, on_a.registered_at,
        "the origin's clock"
    );
    eventually("c's counts agree", WAIT, || counts_agree(&gc, &["alice"])).await;
    assert_eq!(gc.member_count("room").unwrap(), 3);
    assert_eq!(gc.local_member_count("room").unwrap(), 0);
    assert_eq!(gc.group_count().unwrap(), 1);
}

/// 3. A partition longer than the grace: the origin updates its value during the cut, the
/// other side purges the member, and after the reconnection holds it with the NEW value.
#[tokio::test]
async fn metadata_across_a_partition_longer_than_the_grace() {
    let (a, b) = (
        node_with(short_grace()).await,
        node_with(short_grace()).await,
    );
    connect(&b, &a).await;
    let (pa, ga) = spawn(&a);
    let (_w, wb) = spawn(&b);
    ga.join_with("room", &profile("alice", "v1")).unwrap();
    eventually("v1 on b", WAIT, || {
        holds_exactly(&wb, "room", &[(pa.pid(), 1, Some(profile("alice", "v1")))])
    })
    .await;
    let (mut sub, _) = wb.monitor("room").unwrap();

    let cut_at = Instant::now();
    cut(&a, &b).await;
    ga.update("room", &profile("alice", "v2")).unwrap();
    eventually("b purges pa", WAIT, || {
        apart(&a, &b)?;
        match seen(&wb, "room", pa.pid()) {
            None => Ok(()),
            Some(s) => Err(format!("b still holds pa: {s:?}")),
        }
    })
    .await;
    assert!(cut_at.elapsed() >= SHORT_GRACE, "purged before the grace");
    let ev = expect_event(&mut sub, EventKind::MemberLeft, "room").await;
    assert_eq!(
        (&*ev.pids, decoded(&ev)),
        (&[pa.pid()][..], Some(profile("alice", "v1"))),
        "the purge carries the value b had"
    );
    // And once more after the purge.
    ga.update("room", &profile("alice", "v3")).unwrap();
    apart(&a, &b).unwrap();
    assert_eq!(seen(&wb, "room", pa.pid()), None);

    connect(&b, &a).await;
    let want = [(pa.pid(), 1, Some(profile("alice", "v3")))];
    eventually("pa back on b with the new value", WAIT, || {
        holds_exactly(&wb, "room", &want)
    })
    .await;
    holds_exactly(&ga, "room", &want).unwrap();
    let ev = expect_event(&mut sub, EventKind::MemberJoined, "room").await;
    assert_eq!(
        (&*ev.pids, decoded(&ev)),
        (&[pa.pid()][..], Some(profile("alice", "v3")))
    );
    assert!(
        sub.try_recv().is_none(),
        "no other event: {:?}",
        sub.try_recv()
    );
    eventually("b's counts agree", WAIT, || counts_agree(&wb, &[])).await;
}

/// 4a. A node that shuts down and starts again with the same keypair, joining with another
/// value and registering its name again: the peer ends with the new values only.
#[tokio::test]
async fn a_restart_after_shutdown_leaves_no_ghost_value() {
    restart(true).await;
}

/// 4b. The same after a crash (the connection goes first; the restart comes within the
/// grace, while the peer still holds the old incarnation).
#[tokio::test]
async fn a_restart_after_a_crash_leaves_no_ghost_value() {
    restart(false).await;
}

async fn restart(graceful: bool) {
    let kp = Keypair::generate_ed25519();
    let start = || async {
        support::builder(SCOPE, ScopeConfig::default())
            .keypair(kp.clone())
            .build()
            .await
            .expect("the node starts")
    };
    let a1 = start().await;
    let b = node().await;
    connect(&b, &a1).await;
    let (p_old, g_old) = spawn(&a1);
    let (_w, wb) = spawn(&b);
    g_old.join_with("room", &profile("alice", "old")).unwrap();
    g_old.register("svc", &profile("alice", "old")).unwrap();
    let old = p_old.pid();
    eventually("the old incarnation on b", WAIT, || {
        holds_exactly(&wb, "room", &[(old, 1, Some(profile("alice", "old")))])?;
        all_see("svc", Some(old), &[("b", &wb)])
    })
    .await;

    if graceful {
        a1.shutdown().await;
        drop((g_old, p_old, a1));
    } else {
        cut(&b, &a1).await;
        drop((g_old, p_old, a1));
        assert_eq!(wb.whereis("svc").unwrap(), Some(old), "within the grace");
    }

    let a2 = start().await;
    let (p_new, g_new) = spawn(&a2);
    assert_ne!(p_new.pid(), old);
    let mut lost = p_new.listen(NAME_LOST_TOPIC);
    g_new.join_with("room", &profile("alice", "new")).unwrap();
    g_new.register("svc", &profile("alice", "new")).unwrap();
    connect(&a2, &b).await;
    let want = [(p_new.pid(), 1, Some(profile("alice", "new")))];
    eventually("only the new incarnation on b", WAIT, || {
        holds_exactly(&wb, "room", &want)?;
        all_see("svc", Some(p_new.pid()), &[("b", &wb), ("a2", &g_new)])
    })
    .await;
    holds_for("no ghost of the old incarnation", QUIET, || {
        holds_exactly(&wb, "room", &want)?;
        holds_exactly(&g_new, "room", &want)?;
        all_see("svc", Some(p_new.pid()), &[("b", &wb), ("a2", &g_new)])
    })
    .await;
    let holder = wb.whereis_with_meta("svc").unwrap().unwrap();
    assert_eq!(
        holder.meta.decode::<Profile>().unwrap(),
        profile("alice", "new")
    );
    assert!(lost.try_recv().is_none(), "the new process keeps its name");
    assert_eq!(wb.member_count("room").unwrap(), 1);
    assert_eq!(wb.group_count().unwrap(), 1);
}

/// A scope configuration with `max_meta_bytes` set to `bytes`.
fn cap(bytes: usize) -> ScopeConfig {
    ScopeConfig::builder()
        .max_meta_bytes(bytes)
        .build()
        .expect("a valid config")
}

/// 5. A local value over `max_meta_bytes` is `LimitReached` (for a join, an update and a
/// name); a remote one, from a node with a larger cap, is held without its value and counted.
#[tokio::test]
async fn values_over_the_cap_are_refused() {
    let (big, small) = (node_with(cap(4096)).await, node_with(cap(256)).await);
    connect(&small, &big).await;
    let (p_small, g_small) = spawn(&small);
    let (p_big, g_big) = spawn(&big);
    let value = "x".repeat(1000); // some 1003 bytes of CBOR: over 256, under 4096

    assert_eq!(
        g_small.join_with("room", &value).unwrap_err().kind(),
        ErrorKind::LimitReached
    );
    assert_eq!(g_small.member_count("room").unwrap(), 0, "no effect");
    g_small.join_with("room", &"small").unwrap();
    assert_eq!(
        g_small.update("room", &value).unwrap_err().kind(),
        ErrorKind::LimitReached
    );
    assert_eq!(
        g_small.register("name", &value).unwrap_err().kind(),
        ErrorKind::LimitReached
    );
    assert_eq!(g_small.whereis("name").unwrap(), None);
    let mine = g_small.get_members_with_meta("room").unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        mine[0].meta.as_ref().unwrap().decode::<String>().unwrap(),
        "small"
    );

    let refused_before = small.stats(SCOPE).unwrap().meta_refused;
    g_big.join_with("room", &value).unwrap();
    eventually("big's member held without its value", WAIT, || {
        let members = g_small.get_members_with_meta("room").unwrap();
        match members.iter().find(|m| m.pid == p_big.pid()) {
            Some(m) if m.slots == 1 && m.meta.is_none() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eventually("the refusal counted", WAIT, || {
        small.stats(SCOPE).unwrap().meta_refused > refused_before
    })
    .await;
    assert_eq!(g_small.member_count("room").unwrap(), 2);
    // The member of small keeps its value, and big holds both values.
    let on_small = g_small.get_members_with_meta("room").unwrap();
    let own = on_small.iter().find(|m| m.pid == p_small.pid()).unwrap();
    assert_eq!(
        own.meta.as_ref().unwrap().decode::<String>().unwrap(),
        "small"
    );
    eventually("big holds both values", WAIT, || {
        let members = g_big.get_members_with_meta("room").unwrap();
        members.len() == 2 && members.iter().all(|m| m.meta.is_some())
    })
    .await;
    assert_eq!(big.stats(SCOPE).unwrap().meta_refused, 0);
}

// ----------------------------------------------------------------------------- names: tests

/// Takes the next message of `inbox` (a `NAME_LOST_TOPIC` inbox): a `NameLost` of `name` in
/// this scope, from and naming `winner`.
async fn name_lost(inbox: &mut procgroups::Inbox, name: &str, winner: Pid) {
    let m = next_message(inbox).await;
    assert_eq!(m.from(), winner, "the message comes from the winner");
    let lost: NameLost = m.decode().expect("a NameLost");
    assert_eq!(
        lost,
        NameLost {
            scope: SCOPE.into(),
            name: name.into(),
            winner,
        }
    );
}

/// 6. Two connected nodes register one name at the same instant (back to back, on this one
/// thread: neither node can hear of the other's claim in between, so both are accepted):
/// both nodes end on the one the rule picks (earlier by its node's clock, then the smaller
/// Pid), the loser is told once and holds the name no more.
#[tokio::test]
async fn a_race_for_a_name_leaves_one_holder_and_tells_the_loser() {
    let (a, b) = (node().await, node().await);
    connect(&b, &a).await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    let lost_a = pa.listen(NAME_LOST_TOPIC);
    let lost_b = pb.listen(NAME_LOST_TOPIC);

    ga.register("alice", &"from a").unwrap();
    gb.register("alice", &"from b").unwrap();
    // Before hearing of each other, each node answers its own claim.
    let claim_a = ga.whereis_with_meta("alice").unwrap().unwrap();
    let claim_b = gb.whereis_with_meta("alice").unwrap().unwrap();
    assert_eq!((claim_a.pid, claim_b.pid), (pa.pid(), pb.pid()));
    let by_rule = |c: &procgroups::Registration| (c.registered_at, c.pid);
    let (won, mut lost_inbox, mut won_inbox, win_meta, g_loser) =
        if by_rule(&claim_a) < by_rule(&claim_b) {
            (claim_a, lost_b, lost_a, "from a", &gb)
        } else {
            (claim_b, lost_a, lost_b, "from b", &ga)
        };
    let winner = won.pid;

    let nodes = [("a", &ga), ("b", &gb)];
    eventually("both nodes agree on the winner", WAIT, || {
        all_see("alice", Some(winner), &nodes)
    })
    .await;
    name_lost(&mut lost_inbox, "alice", winner).await;
    holds_for(
        "the winner keeps the name, nobody else is told",
        QUIET,
        || {
            all_see("alice", Some(winner), &nodes)?;
            if won_inbox.try_recv().is_some() || lost_inbox.try_recv().is_some() {
                return Err("a second NameLost".into());
            }
            Ok(())
        },
    )
    .await;
    for (n, pg) in nodes {
        let holder = pg.whereis_with_meta("alice").unwrap().unwrap();
        assert_eq!(holder.meta.decode::<String>().unwrap(), win_meta, "{n}");
        assert_eq!(
            holder.registered_at, won.registered_at,
            "{n}: the winner's clock"
        );
        assert_eq!(pg.group_count().unwrap(), 0, "{n}: a name is no group");
    }
    assert_eq!(
        g_loser.unregister("alice").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        g_loser.register("alice", &"again").unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        a.stats(SCOPE).unwrap().names_lost + b.stats(SCOPE).unwrap().names_lost,
        1
    );
}

/// 7. A partition longer than the grace: A registers "alice"; cut A|B (C stays connected to
/// both); once B has purged A, B's "alice" is free and B registers it, later by the clock;
/// after the reconnection every node holds A's (earlier) claim and B's process is told.
#[tokio::test]
async fn a_name_claimed_on_both_sides_of_a_partition_goes_to_the_earlier() {
    let a = node_with(short_grace()).await;
    let b = node_with(short_grace()).await;
    let c = node_with(short_grace()).await;
    mesh(&[&a, &b, &c]).await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    let (_pc, gc) = spawn(&c);
    let mut lost_a = pa.listen(NAME_LOST_TOPIC);
    let mut lost_b = pb.listen(NAME_LOST_TOPIC);
    ga.register("alice", &"a's").unwrap();
    let nodes = [("a", &ga), ("b", &gb), ("c", &gc)];
    eventually("alice is pa everywhere", WAIT, || {
        all_see("alice", Some(pa.pid()), &nodes)
    })
    .await;

    let cut_at = Instant::now();
    cut(&a, &b).await;
    eventually("b purges a's claim", WAIT, || {
        apart(&a, &b)?;
        all_see("alice", None, &[("b", &gb)])
    })
    .await;
    assert!(cut_at.elapsed() >= SHORT_GRACE, "purged before the grace");
    gb.register("alice", &"b's").unwrap();
    let a_at = ga
        .whereis_with_meta("alice")
        .unwrap()
        .unwrap()
        .registered_at;
    let b_at = gb
        .whereis_with_meta("alice")
        .unwrap()
        .unwrap()
        .registered_at;
    assert!(a_at < b_at, "b's claim is later by the clock");
    // C, connected to both sides, already holds both claims: it picks A's.
    holds_for("c answers a's claim during the cut", QUIET, || {
        apart(&a, &b)?;
        all_see("alice", Some(pa.pid()), &[("c", &gc)])
    })
    .await;

    connect(&b, &a).await;
    eventually("every node agrees on pa", WAIT, || {
        all_see("alice", Some(pa.pid()), &nodes)
    })
    .await;
    name_lost(&mut lost_b, "alice", pa.pid()).await;
    holds_for("pa keeps alice, only pb was told", QUIET, || {
        all_see("alice", Some(pa.pid()), &nodes)?;
        if lost_a.try_recv().is_some() || lost_b.try_recv().is_some() {
            return Err("another NameLost".into());
        }
        Ok(())
    })
    .await;
    for (n, pg) in nodes {
        let holder = pg.whereis_with_meta("alice").unwrap().unwrap();
        assert_eq!(holder.meta.decode::<String>().unwrap(), "a's", "{n}");
        assert_eq!(holder.registered_at, a_at, "{n}");
    }
    assert_eq!(
        gb.unregister("alice").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        gb.register("alice", &"again").unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
}

/// 8a. A name goes with its process: when the holder exits, the other node's `whereis` is
/// None and a process there may register it.
#[tokio::test]
async fn a_name_goes_with_its_process() {
    let (a, b) = (node().await, node().await);
    connect(&b, &a).await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    ga.register("alice", &1u32).unwrap();
    let nodes = [("a", &ga), ("b", &gb)];
    eventually("alice on b", WAIT, || {
        all_see("alice", Some(pa.pid()), &nodes)
    })
    .await;
    assert_eq!(
        gb.register("alice", &2u32).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );

    drop(pa); // the process exits; its instance is left, released
    assert_eq!(ga.whereis("alice").unwrap_err().kind(), ErrorKind::Invalid);
    let (_wa, wa) = spawn(&a);
    let nodes = [("a", &wa), ("b", &gb)];
    eventually("alice free on both nodes", WAIT, || {
        all_see("alice", None, &nodes)
    })
    .await;
    gb.register("alice", &2u32).unwrap();
    eventually("alice is pb's", WAIT, || {
        all_see("alice", Some(pb.pid()), &nodes)
    })
    .await;
    assert_eq!(
        wa.whereis_with_meta("alice")
            .unwrap()
            .unwrap()
            .meta
            .decode::<u32>()
            .unwrap(),
        2
    );
}

/// 8b. A name goes with its node: at once when the node shuts down (its goodbye), and after
/// `node_down_grace` when it is cut off; then it can be registered on the other node.
#[tokio::test]
async fn a_name_goes_with_its_node() {
    // Shutdown.
    let (a, b) = (node().await, node_with(short_grace()).await);
    connect(&b, &a).await;
    let (pa, ga) = spawn(&a);
    let (pb, gb) = spawn(&b);
    ga.register("alice", &()).unwrap();
    eventually("alice on b", WAIT, || {
        all_see("alice", Some(pa.pid()), &[("b", &gb)])
    })
    .await;
    a.shutdown().await;
    eventually("alice free on b", WAIT, || {
        all_see("alice", None, &[("b", &gb)])
    })
    .await;
    gb.register("alice", &()).unwrap();
    assert_eq!(gb.whereis("alice").unwrap(), Some(pb.pid()));

    // Cut off (a crash as the peer sees it): the name stays within the grace, then goes.
    let c = node_with(short_grace()).await;
    connect(&b, &c).await;
    let (pc, gc) = spawn(&c);
    gc.register("carol", &()).unwrap();
    eventually("carol on b", WAIT, || {
        all_see("carol", Some(pc.pid()), &[("b", &gb)])
    })
    .await;
    let cut_at = Instant::now();
    cut(&b, &c).await;
    eventually("carol free on b", WAIT, || {
        apart(&b, &c)?;
        all_see("carol", None, &[("b", &gb)])
    })
    .await;
    assert!(cut_at.elapsed() >= SHORT_GRACE, "freed before the grace");
    gb.register("carol", &()).unwrap();
    assert_eq!(gb.whereis("carol").unwrap(), Some(pb.pid()));
}

/// 5b. A name registered with a value over a peer's (smaller) cap: the peer holds the claim
/// without its value, but the two nodes must still agree on one holder when a process of
/// the peer claims the name at the same instant.
///
/// The peer keeps the claim's time (its value replaced by null), so both nodes rank it the
/// same (`proto::registry::rank`); before, the claim ranked last there and each node answered
/// its own process for good.
#[tokio::test]
async fn a_name_over_a_peers_cap_still_has_one_holder() {
    let (big, small) = (node_with(cap(4096)).await, node_with(cap(256)).await);
    connect(&small, &big).await;
    let (p_big, g_big) = spawn(&big);
    let (p_small, g_small) = spawn(&small);
    let mut lost_big = p_big.listen(NAME_LOST_TOPIC);
    let mut lost_small = p_small.listen(NAME_LOST_TOPIC);
    // Back to back, as in the race above: big's claim is the earlier.
    g_big.register("x", &"x".repeat(1000)).unwrap();
    g_small.register("x", &"small").unwrap();
    eventually("small holds big's claim, without its value", WAIT, || {
        small.stats(SCOPE).unwrap().meta_refused > 0
    })
    .await;
    let nodes = [("big", &g_big), ("small", &g_small)];
    eventually("both nodes agree on the holder of x", WAIT, || {
        let big_says = g_big.whereis("x").unwrap();
        all_see("x", big_says, &nodes)
    })
    .await;
    let winner = g_big.whereis("x").unwrap().unwrap();
    let (inbox, other) = if winner == p_big.pid() {
        (&mut lost_small, &mut lost_big)
    } else {
        (&mut lost_big, &mut lost_small)
    };
    name_lost(inbox, "x", winner).await;
    assert!(other.try_recv().is_none());
}
