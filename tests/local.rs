//! The local behaviour a user relies on: one node, local processes only (no network).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use procgroups::{
    AllowAll, ErrorKind, Event, EventKind, Instance, Members, Node, Permission, Pid, Policy,
    Process, Request, Result, ScopeConfig, Subscription,
};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

mod support;
use support::{WAIT, next_event, next_message};

const SCOPE: &str = "app:pg";
const OTHER: &str = "app:other";

// ------------------------------------------------------------------------------------ helpers

/// A node hosting `SCOPE` and `OTHER`, both with `config`, deciding with `policy`.
async fn node_with(config: ScopeConfig, policy: impl Policy) -> Node {
    Node::builder()
        .mdns(false)
        .listen_on(support::loopback())
        .scope(SCOPE, config.clone())
        .scope(OTHER, config)
        .policy(policy)
        .build()
        .await
        .expect("the node starts")
}

async fn node() -> Node {
    node_with(ScopeConfig::default(), AllowAll).await
}

/// A new process and its instance of `SCOPE`.
fn spawn(node: &Node) -> (Process, Instance) {
    support::spawn(node, SCOPE)
}

/// The kind of the error that `result` must be.
#[track_caller]
fn err_kind<T: std::fmt::Debug>(result: Result<T>) -> ErrorKind {
    result.expect_err("expected an error").kind()
}

fn names(groups: &[Arc<str>]) -> Vec<&str> {
    groups.iter().map(|g| &**g).collect()
}

/// Reads `sub` to its end, which must come within `WAIT`; returns what was still queued.
async fn until_end(sub: &mut Subscription) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(ev) = timeout(WAIT, sub.recv())
        .await
        .expect("the subscription ends within the timeout")
    {
        events.push(ev);
    }
    events
}

#[track_caller]
fn assert_event(ev: &Event, kind: EventKind, group: &str, pids: &[Pid]) {
    assert_eq!(
        (ev.kind, &*ev.group, &*ev.pids),
        (kind, group, pids),
        "{ev:?}"
    );
}

/// Slots per process.
type Counts = BTreeMap<Pid, usize>;

fn counts(members: &Members) -> Counts {
    let mut counts = Counts::new();
    for pid in members {
        *counts.entry(pid).or_default() += 1;
    }
    counts
}

/// Applies `ev` to `counts`; a leave of a slot that `counts` does not hold is a change counted
/// twice (or a join missed).
fn apply(counts: &mut Counts, ev: &Event) {
    for pid in ev.pids.iter() {
        match ev.kind {
            EventKind::MemberJoined => *counts.entry(*pid).or_default() += 1,
            EventKind::MemberUpdated => {}
            EventKind::MemberLeft => {
                let n = counts
                    .get_mut(pid)
                    .unwrap_or_else(|| panic!("{ev:?} removes a slot {pid} does not hold"));
                *n -= 1;
                if *n == 0 {
                    counts.remove(pid);
                }
            }
        }
    }
}

/// Every group of the scope with its slots, as seen through `pg`.
fn scope_counts(pg: &Instance) -> BTreeMap<String, Counts> {
    let groups = pg.which_groups().expect("which_groups");
    groups
        .iter()
        .map(|g| {
            (
                g.to_string(),
                counts(&pg.get_members(g).expect("get_members")),
            )
        })
        .collect()
}

/// Calls every method of `pg` (on group "g", topic "t"), each labelled with its permission, in
/// the order of `Permission::ALL` (after `Open`).
fn call_every_method(pg: &Instance) -> Vec<(Permission, Result<()>)> {
    vec![
        (Permission::Join, pg.join("g")),
        (Permission::Leave, pg.leave("g")),
        (Permission::GetMembers, pg.get_members("g").map(drop)),
        (
            Permission::GetLocalMembers,
            pg.get_local_members("g").map(drop),
        ),
        (Permission::WhichGroups, pg.which_groups().map(drop)),
        (
            Permission::WhichLocalGroups,
            pg.which_local_groups().map(drop),
        ),
        (
            Permission::Broadcast,
            pg.broadcast("g", "t", &0u8).map(drop),
        ),
        (
            Permission::BroadcastLocal,
            pg.broadcast_local("g", "t", &0u8).map(drop),
        ),
        (Permission::Monitor, pg.monitor("g").map(drop)),
        (Permission::Events, pg.events().map(drop)),
        (Permission::Register, pg.register("name", &())),
        (Permission::Whereis, pg.whereis("name").map(drop)),
    ]
}

#[track_caller]
fn assert_every_method_fails(pg: &Instance, kind: ErrorKind) {
    for (method, result) in call_every_method(pg) {
        assert_eq!(result.map_err(|e| e.kind()), Err(kind), "{method}");
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Task {
    id: u32,
    name: String,
    tags: Vec<String>,
}

fn task() -> Task {
    Task {
        id: 42,
        name: "build".into(),
        tags: vec!["a".into(), "b".into()],
    }
}

// ---------------------------------------------------------------------------- membership

#[tokio::test]
async fn unknown_group_is_empty() -> Result<()> {
    let node = node().await;
    let (_p, pg) = spawn(&node);
    assert!(pg.get_members("nobody")?.is_empty());
    assert!(pg.get_local_members("nobody")?.is_empty());
    assert!(pg.which_groups()?.is_empty());
    assert!(pg.which_local_groups()?.is_empty());
    assert_eq!(pg.broadcast("nobody", "t", &1u8)?.slots(), 0);
    assert_eq!(pg.broadcast_local("nobody", "t", &1u8)?.slots(), 0);
    assert!(pg.monitor("nobody")?.1.is_empty());
    assert!(pg.events()?.1.is_empty());
    Ok(())
}

#[tokio::test]
async fn join_is_visible_at_once() -> Result<()> {
    let node = node().await;
    let (p, pg) = spawn(&node);
    let (_q, qpg) = spawn(&node);
    pg.join(["b", "a"])?;
    for reader in [&pg, &qpg] {
        for group in ["a", "b"] {
            assert_eq!(reader.get_members(group)?.to_vec(), vec![p.pid()]);
            assert_eq!(reader.get_local_members(group)?.to_vec(), vec![p.pid()]);
        }
        assert_eq!(names(&reader.which_groups()?), ["a", "b"]);
        assert_eq!(names(&reader.which_local_groups()?), ["a", "b"]);
    }
    Ok(())
}

#[tokio::test]
async fn joins_and_leaves_are_counted() -> Result<()> {
    let node = node().await;
    let (p, pg) = spawn(&node);
    let pid = p.pid();
    pg.join("g")?;
    pg.join(["g", "g"])?;
    assert_eq!(pg.get_members("g")?.count(&pid), 3);
    assert_eq!(pg.get_members("g")?.len(), 3);
    assert_eq!(pg.get_local_members("g")?.count(&pid), 3);

    pg.leave(["g", "g"])?;
    assert_eq!(pg.get_members("g")?.count(&pid), 1);
    assert_eq!(names(&pg.which_groups()?), ["g"]);

    pg.leave("g")?;
    assert_eq!(pg.get_members("g")?.count(&pid), 0);
    assert!(pg.which_groups()?.is_empty());
    assert!(pg.which_local_groups()?.is_empty());
    Ok(())
}

#[tokio::test]
async fn single_leave_of_a_non_member_is_invalid() -> Result<()> {
    let node = node().await;
    let (p, pg) = spawn(&node);
    let (q, qpg) = spawn(&node);
    pg.join("a")?;
    qpg.join("q")?;

    assert_eq!(err_kind(pg.leave("b")), ErrorKind::Invalid);
    // A group with other members: theirs are not taken.
    assert_eq!(err_kind(pg.leave("q")), ErrorKind::Invalid);

    assert_eq!(pg.get_members("a")?.to_vec(), vec![p.pid()]);
    assert_eq!(pg.get_members("q")?.to_vec(), vec![q.pid()]);
    assert_eq!(names(&pg.which_groups()?), ["a", "q"]);
    Ok(())
}

#[tokio::test]
async fn batch_leave_is_best_effort() -> Result<()> {
    let node = node().await;
    let (p, pg) = spawn(&node);
    pg.join(["a", "b", "c"])?;

    pg.leave(["a", "x"])?;
    assert!(pg.get_members("a")?.is_empty());
    assert_eq!(names(&pg.which_groups()?), ["b", "c"]);

    // One slot in "b", two asked: the one is left.
    pg.leave(["b", "b"])?;
    assert_eq!(names(&pg.which_groups()?), ["c"]);

    assert_eq!(err_kind(pg.leave(["x", "y"])), ErrorKind::Invalid);
    assert_eq!(pg.get_members("c")?.to_vec(), vec![p.pid()]);
    assert_eq!(names(&pg.which_groups()?), ["c"]);
    Ok(())
}

#[tokio::test]
async fn batch_join_with_an_invalid_name_joins_none() -> Result<()> {
    let node = node().await;
    let (_p, pg) = spawn(&node);
    let long = "x".repeat(256);
    assert_eq!(err_kind(pg.join(["a", ""])), ErrorKind::Invalid);
    assert_eq!(
        err_kind(pg.join(["a", long.as_str(), "b"])),
        ErrorKind::Invalid
    );
    assert!(pg.which_groups()?.is_empty());
    assert!(pg.get_members("a")?.is_empty());
    Ok(())
}

#[tokio::test]
async fn batch_join_with_a_denied_name_joins_none() -> Result<()> {
    let policy = |r: &Request<'_>| !(r.permission == Permission::Join && r.resource == "forbidden");
    let node = node_with(ScopeConfig::default(), policy).await;
    let (_p, pg) = spawn(&node);
    let err = pg.join(["a", "forbidden", "b"]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("forbidden"), "{err}");
    assert!(pg.which_groups()?.is_empty());
    pg.join(["a", "b"])?;
    assert_eq!(names(&pg.which_groups()?), ["a", "b"]);
    Ok(())
}

#[tokio::test]
async fn batch_join_over_a_limit_joins_none() -> Result<()> {
    let config = ScopeConfig::builder()
        .max_groups(2)
        .max_members_per_group(3)
        .build()?;
    let node = node_with(config, AllowAll).await;
    let (p, pg) = spawn(&node);
    pg.join(["g", "g"])?;

    // Two new groups where one more fits.
    assert_eq!(err_kind(pg.join(["h", "i"])), ErrorKind::LimitReached);
    // Two more slots in "g" where one fits.
    assert_eq!(err_kind(pg.join(["h", "g", "g"])), ErrorKind::LimitReached);

    assert_eq!(names(&pg.which_groups()?), ["g"]);
    assert_eq!(pg.get_members("g")?.count(&p.pid()), 2);
    pg.join(["h", "g"])?;
    assert_eq!(names(&pg.which_groups()?), ["g", "h"]);
    Ok(())
}

#[tokio::test]
async fn limit_on_groups() -> Result<()> {
    let node = node_with(ScopeConfig::builder().max_groups(2).build()?, AllowAll).await;
    let (_p, pg) = spawn(&node);
    let (_q, qpg) = spawn(&node);
    pg.join(["a", "b"])?;
    pg.join("a")?; // more slots in existing groups are not new groups

    let err = pg.join("c").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitReached);
    let msg = err.to_string();
    assert!(
        msg.contains("\"c\"") && msg.contains("max_groups") && msg.contains('2'),
        "{msg}"
    );
    // The limit is the scope's, not the process's.
    assert_eq!(err_kind(qpg.join("d")), ErrorKind::LimitReached);
    qpg.join("b")?;
    assert_eq!(names(&pg.which_groups()?), ["a", "b"]);

    // An emptied group makes room.
    pg.leave(["a", "a"])?;
    qpg.join("c")?;
    assert_eq!(names(&pg.which_groups()?), ["b", "c"]);
    Ok(())
}

#[tokio::test]
async fn limit_on_members_counts_every_slot() -> Result<()> {
    let config = ScopeConfig::builder().max_members_per_group(3).build()?;
    let node = node_with(config, AllowAll).await;
    let (p, pg) = spawn(&node);
    let (q, qpg) = spawn(&node);
    let (r, rpg) = spawn(&node);
    pg.join(["g", "g"])?;
    qpg.join("g")?;

    let err = qpg.join("g").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LimitReached);
    let msg = err.to_string();
    assert!(
        msg.contains("\"g\"") && msg.contains("max_members_per_group") && msg.contains('3'),
        "{msg}"
    );
    assert_eq!(err_kind(rpg.join("g")), ErrorKind::LimitReached);
    rpg.join("h")?; // other groups are not affected

    let g = pg.get_members("g")?;
    assert_eq!((g.len(), g.count(&p.pid()), g.count(&q.pid())), (3, 2, 1));
    pg.leave("g")?;
    rpg.join("g")?;
    assert_eq!(pg.get_members("g")?.count(&r.pid()), 1);
    Ok(())
}

#[tokio::test]
async fn invalid_group_names() -> Result<()> {
    let node = node().await;
    let (p, pg) = spawn(&node);
    let long = "x".repeat(256);
    let wide = "é".repeat(128); // 128 characters, 256 bytes
    for bad in ["", long.as_str(), wide.as_str()] {
        let what = format!("{} bytes", bad.len());
        assert_eq!(err_kind(pg.join(bad)), ErrorKind::Invalid, "join {what}");
        assert_eq!(err_kind(pg.leave(bad)), ErrorKind::Invalid, "leave {what}");
        assert_eq!(err_kind(pg.get_members(bad)), ErrorKind::Invalid, "{what}");
        assert_eq!(
            err_kind(pg.get_local_members(bad)),
            ErrorKind::Invalid,
            "{what}"
        );
        assert_eq!(
            err_kind(pg.broadcast(bad, "t", &1u8)),
            ErrorKind::Invalid,
            "{what}"
        );
        let local = pg.broadcast_local(bad, "t", &1u8);
        assert_eq!(err_kind(local), ErrorKind::Invalid, "{what}");
        assert_eq!(
            err_kind(pg.monitor(bad)),
            ErrorKind::Invalid,
            "monitor {what}"
        );
    }
    assert_eq!(err_kind(pg.join(Vec::<String>::new())), ErrorKind::Invalid);
    assert_eq!(err_kind(pg.leave(Vec::<String>::new())), ErrorKind::Invalid);
    assert!(pg.which_groups()?.is_empty());

    let max = "y".repeat(255);
    let max_wide = format!("{}z", "é".repeat(127)); // 255 bytes
    pg.join([max.as_str(), max_wide.as_str()])?;
    assert_eq!(pg.get_members(&max)?.to_vec(), vec![p.pid()]);
    assert_eq!(pg.get_members(&max_wide)?.to_vec(), vec![p.pid()]);
    assert_eq!(pg.which_groups()?.len(), 2);
    pg.leave([max, max_wide])?;
    assert!(pg.which_groups()?.is_empty());
    Ok(())
}

#[tokio::test]
async fn scopes_are_isolated() -> Result<()> {
    let node = node().await;
    let (p, pg) = spawn(&node);
    let other = p.open(OTHER)?;
    pg.join("g")?;
    assert!(other.get_members("g")?.is_empty());
    assert!(other.which_groups()?.is_empty());
    assert!(other.which_local_groups()?.is_empty());
    assert_eq!(err_kind(other.leave("g")), ErrorKind::Invalid);
    other.join("h")?;
    assert_eq!(names(&pg.which_groups()?), ["g"]);
    assert_eq!(names(&other.which_groups()?), ["h"]);

    assert_eq!(err_kind(p.open("app:missing")), ErrorKind::NotFound);
    assert_eq!(err_kind(p.open("bad")), ErrorKind::Invalid);
    Ok(())
}

// ------------------------------------------------------------------------------------- exit

/// Exits a process (with `exit`) that is in several groups of two scopes, and checks that
/// nothing of it is left.
async fn check_exit(exit: impl FnOnce(Process)) -> Result<()> {
    let node = node().await;
    let (p, pg) = spawn(&node);
    let pg_other = p.open(OTHER)?;
    let pid = p.pid();
    let (watcher, wpg) = spawn(&node);
    let wpg_other = watcher.open(OTHER)?;
    wpg.join("a")?;
    pg.join(["a", "a", "b"])?;
    pg.join("a")?;
    pg_other.join(["c", "c"])?;
    let mut inbox = p.listen("t");
    let (mut watch_a, _) = wpg.monitor("a")?;
    let (mut watch_other, _) = wpg_other.events()?;
    let (mut own_monitor, _) = pg.monitor("a")?;
    let (mut own_events, _) = pg_other.events()?;

    exit(p);

    assert_eq!(wpg.get_members("a")?.to_vec(), vec![watcher.pid()]);
    assert!(wpg.get_members("b")?.is_empty());
    assert_eq!(names(&wpg.which_groups()?), ["a"]);
    assert!(wpg_other.which_groups()?.is_empty());

    // One event per group, listing the pid once per slot.
    assert_event(
        &next_event(&mut watch_a).await,
        EventKind::MemberLeft,
        "a",
        &[pid; 3],
    );
    assert_event(
        &next_event(&mut watch_other).await,
        EventKind::MemberLeft,
        "c",
        &[pid; 2],
    );
    assert!(watch_a.try_recv().is_none() && watch_other.try_recv().is_none());

    // Its subscriptions end, its inboxes end, its instances are released.
    until_end(&mut own_monitor).await;
    until_end(&mut own_events).await;
    assert!(
        timeout(WAIT, inbox.recv())
            .await
            .expect("inbox ends")
            .is_none()
    );
    assert_every_method_fails(&pg, ErrorKind::Invalid);
    assert_every_method_fails(&pg_other, ErrorKind::Invalid);
    assert_eq!(err_kind(watcher.send(&pid, "t", &1u8)), ErrorKind::NotFound);
    Ok(())
}

#[tokio::test]
async fn dropping_a_process_removes_it_everywhere() -> Result<()> {
    check_exit(drop).await
}

#[tokio::test]
async fn exit_removes_the_process_everywhere() -> Result<()> {
    check_exit(Process::exit).await
}

#[tokio::test]
async fn join_and_leave_racing_exit_leave_no_member() -> Result<()> {
    const JOINERS_PER_SCOPE: usize = 2;
    let node = node().await;
    let (observer, obs) = spawn(&node);
    let obs_other = observer.open(OTHER)?;
    for round in 0..200 {
        let p = node.spawn_process();
        let pid = p.pid();
        let instances = [Arc::new(p.open(SCOPE)?), Arc::new(p.open(OTHER)?)];
        let start = Barrier::new(2 * JOINERS_PER_SCOPE + 1);
        let joined = AtomicBool::new(false);
        std::thread::scope(|s| {
            for pg in instances.iter().flat_map(|pg| [pg; JOINERS_PER_SCOPE]) {
                let (pg, start, joined) = (Arc::clone(pg), &start, &joined);
                s.spawn(move || {
                    start.wait();
                    for i in 0..1_000_000u32 {
                        if pg.join(["g", "h"]).is_err() {
                            return;
                        }
                        joined.store(true, Ordering::Release);
                        // A leave racing the exit may fail; the next join tells.
                        if i % 2 == 0 {
                            pg.leave("g").ok();
                        } else {
                            pg.leave(["g", "h", "h"]).ok();
                        }
                    }
                    panic!("joins still succeed long after the process exited");
                });
            }
            let (start, joined) = (&start, &joined);
            s.spawn(move || {
                start.wait();
                while !joined.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                drop(p);
            });
        });
        for (scope, pg) in [(SCOPE, &obs), (OTHER, &obs_other)] {
            let left = scope_counts(pg);
            assert!(
                left.is_empty(),
                "round {round}: {pid} left behind in {scope}: {left:?}"
            );
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------- release

#[tokio::test]
async fn release_frees_the_instance_only() -> Result<()> {
    let node = node().await;
    let (p, pg) = spawn(&node);
    let (q, qpg) = spawn(&node);
    pg.join(["g", "h"])?;
    let (mut sub, _) = pg.monitor("g")?;
    let (mut all, _) = pg.events()?;
    let second = p.open(SCOPE)?;
    let (mut kept, _) = second.monitor("g")?;

    pg.release();
    pg.release();
    assert_every_method_fails(&pg, ErrorKind::Invalid);

    // The memberships belong to the process.
    assert_eq!(qpg.get_members("g")?.to_vec(), vec![p.pid()]);
    assert_eq!(names(&qpg.which_groups()?), ["g", "h"]);

    // So do the subscriptions: those made through the released instance stay open, like the
    // one made through another instance of the same process.
    qpg.join("g")?;
    for sub in [&mut sub, &mut all, &mut kept] {
        assert_event(
            &next_event(sub).await,
            EventKind::MemberJoined,
            "g",
            &[q.pid()],
        );
    }
    second.leave("g")?;
    assert_event(
        &next_event(&mut kept).await,
        EventKind::MemberLeft,
        "g",
        &[p.pid()],
    );
    Ok(())
}

/// A `monitor` or `events` call that passed its checks when the instance is released
/// concurrently either fails or gives a subscription that lasts, like any other. The policy
/// holds the call between its checks and the subscription, while another thread releases.
#[tokio::test]
async fn subscribing_during_a_release_fails_or_lasts() -> Result<()> {
    for gated in [Permission::Monitor, Permission::Events] {
        let gate = Arc::new((Barrier::new(2), Barrier::new(2))); // (checked, released)
        let policy = {
            let gate = gate.clone();
            move |r: &Request<'_>| {
                if r.permission == gated {
                    gate.0.wait();
                    gate.1.wait();
                }
                true
            }
        };
        let node = node_with(ScopeConfig::default(), policy).await;
        let (_p, pg) = spawn(&node);
        let (q, qpg) = spawn(&node);
        let subscribed = std::thread::scope(|s| {
            let call = s.spawn(|| match gated {
                Permission::Monitor => pg.monitor("g").map(|(sub, _)| sub),
                _ => pg.events().map(|(sub, _)| sub),
            });
            gate.0.wait();
            pg.release();
            gate.1.wait();
            call.join().expect("the subscribing thread")
        });
        match subscribed {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Invalid, "{gated}"),
            Ok(mut sub) => {
                qpg.join("g")?;
                let ev = next_event(&mut sub).await;
                assert_event(&ev, EventKind::MemberJoined, "g", &[q.pid()]);
            }
        }
    }
    Ok(())
}

/// A subscription made through a temporary instance lasts: it sees the changes that follow,
/// and ends when its process exits.
#[tokio::test]
async fn a_subscription_outlives_the_instance_that_made_it() -> Result<()> {
    let node = node().await;
    let p = node.spawn_process();
    let (mut sub, members) = p.open(SCOPE)?.monitor("g")?;
    let (mut all, snapshot) = p.open(SCOPE)?.events()?;
    assert!(members.is_empty() && snapshot.is_empty());

    let (q, qpg) = spawn(&node);
    qpg.join("g")?;
    for sub in [&mut sub, &mut all] {
        assert_event(
            &next_event(sub).await,
            EventKind::MemberJoined,
            "g",
            &[q.pid()],
        );
    }
    // Dropping a subscription unsubscribes; the other one still hears.
    drop(sub);
    qpg.leave("g")?;
    assert_event(
        &next_event(&mut all).await,
        EventKind::MemberLeft,
        "g",
        &[q.pid()],
    );
    // The process's exit ends it.
    drop(p);
    qpg.join("g")?;
    assert!(until_end(&mut all).await.is_empty());
    Ok(())
}

// ----------------------------------------------------------------------------- monitors

#[tokio::test]
async fn monitor_sees_the_joins_of_its_own_process() -> Result<()> {
    let node = node().await;
    let (q, qpg) = spawn(&node);
    let (p, pg) = spawn(&node);
    qpg.join(["g", "h"])?;

    let (mut sub, members) = pg.monitor("g")?;
    assert_eq!(members.to_vec(), vec![q.pid()]);
    pg.join("g")?;
    let ev = next_event(&mut sub).await;
    assert_event(&ev, EventKind::MemberJoined, "g", &[p.pid()]);
    assert_eq!(ev.system(), "pg");
    assert_eq!(ev.kind.to_string(), "member.joined");

    pg.join("h")?; // another group: not for this monitor
    pg.leave("g")?;
    let ev = next_event(&mut sub).await;
    assert_event(&ev, EventKind::MemberLeft, "g", &[p.pid()]);
    assert_eq!(ev.kind.to_string(), "member.left");

    let (mut all, snapshot) = pg.events()?;
    let snapshot: BTreeMap<String, Counts> = snapshot
        .iter()
        .map(|(g, m)| (g.to_string(), counts(m)))
        .collect();
    assert_eq!(snapshot, scope_counts(&pg));
    assert_eq!(snapshot.keys().collect::<Vec<_>>(), ["g", "h"]);
    qpg.leave("h")?;
    let ev = next_event(&mut all).await;
    assert_event(&ev, EventKind::MemberLeft, "h", &[q.pid()]);
    assert_eq!(ev.system(), "pg");
    Ok(())
}

#[tokio::test]
async fn monitor_snapshots_are_atomic_under_concurrent_changes() -> Result<()> {
    const OPS: usize = 2000;
    const READERS: usize = 4;
    const STEP: usize = 40; // each reader subscribes once per STEP writes, while they go on
    let config = ScopeConfig::builder().monitor_buffer(4 * OPS).build()?;
    let node = node_with(config, AllowAll).await;
    let writers: Vec<(Process, Instance)> = (0..3).map(|_| spawn(&node)).collect();
    let (_reader, rpg) = spawn(&node);
    let (round, acks, done) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicBool::new(false),
    );

    type GroupSubs = Vec<(Subscription, Members)>;
    type ScopeSubs = Vec<(Subscription, BTreeMap<Arc<str>, Members>)>;
    let (group_subs, scope_subs): (GroupSubs, ScopeSubs) = std::thread::scope(|s| {
        let readers: Vec<_> = (0..READERS)
            .map(|i| {
                let (rpg, round, acks, done) = (&rpg, &round, &acks, &done);
                s.spawn(move || {
                    let (mut groups, mut scopes) = (GroupSubs::new(), ScopeSubs::new());
                    let mut mine = 0;
                    loop {
                        let r = round.load(Ordering::Acquire);
                        if r > mine {
                            mine = r;
                            if i % 2 == 0 {
                                groups.push(rpg.monitor("g").expect("monitor"));
                            } else {
                                scopes.push(rpg.events().expect("events"));
                            }
                            acks.fetch_add(1, Ordering::AcqRel);
                        } else if done.load(Ordering::Acquire) {
                            return (groups, scopes);
                        } else {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        // The writer: a fixed pseudo-random sequence of valid joins and leaves.
        let mut held = [[0usize; 2]; 3]; // slots of writer w in "g" and "h"
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for op in 0..OPS {
            if op % STEP == 0 {
                // Start a round of subscriptions once the previous one is taken.
                while acks.load(Ordering::Acquire) < round.load(Ordering::Acquire) * READERS {
                    std::thread::yield_now();
                }
                round.fetch_add(1, Ordering::AcqRel);
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let w = (x % 3) as usize;
            let pg = &writers[w].1;
            let [g, h] = &mut held[w];
            match (x >> 8) % 4 {
                0 => {
                    pg.join("g").unwrap();
                    *g += 1;
                }
                1 => {
                    pg.join(["g", "h", "g"]).unwrap();
                    (*g, *h) = (*g + 2, *h + 1);
                }
                2 if *g > 0 => {
                    pg.leave("g").unwrap();
                    *g -= 1;
                }
                _ if *g + *h > 0 => {
                    pg.leave(["g", "h"]).unwrap();
                    (*g, *h) = (g.saturating_sub(1), h.saturating_sub(1));
                }
                _ => {
                    pg.join("h").unwrap();
                    *h += 1;
                }
            }
        }
        done.store(true, Ordering::Release);
        readers.into_iter().map(|r| r.join().expect("reader")).fold(
            (GroupSubs::new(), ScopeSubs::new()),
            |(mut gs, mut ss), (g, s)| {
                gs.extend(g);
                ss.extend(s);
                (gs, ss)
            },
        )
    });
    let per_kind = READERS / 2 * OPS / STEP;
    assert_eq!((group_subs.len(), scope_subs.len()), (per_kind, per_kind));

    let final_g = counts(&rpg.get_members("g")?);
    for (mut sub, members) in group_subs {
        let mut seen = counts(&members);
        while let Some(ev) = sub.try_recv() {
            assert_eq!(&*ev.group, "g");
            apply(&mut seen, &ev);
        }
        assert_eq!(sub.dropped(), 0);
        assert_eq!(seen, final_g, "snapshot + events of a monitor");
    }
    let final_all = scope_counts(&rpg);
    for (mut sub, snapshot) in scope_subs {
        let mut seen: BTreeMap<String, Counts> = snapshot
            .iter()
            .map(|(g, m)| (g.to_string(), counts(m)))
            .collect();
        while let Some(ev) = sub.try_recv() {
            apply(seen.entry(ev.group.to_string()).or_default(), &ev);
        }
        seen.retain(|_, c| !c.is_empty());
        assert_eq!(sub.dropped(), 0);
        assert_eq!(
            seen, final_all,
            "snapshot + events of an events subscription"
        );
    }
    Ok(())
}

#[tokio::test]
async fn full_subscription_drops_and_counts() -> Result<()> {
    let node = node_with(ScopeConfig::builder().monitor_buffer(4).build()?, AllowAll).await;
    let (p, pg) = spawn(&node);
    let pid = p.pid();
    let (mut sub, _) = pg.monitor("g")?;
    let (mut flushed, _) = pg.events()?;
    for _ in 0..10 {
        pg.join("g")?; // never blocked by the full subscriptions
    }
    assert_eq!(pg.get_members("g")?.count(&pid), 10);
    for s in [&sub, &flushed] {
        assert_eq!((s.len(), s.dropped()), (4, 6));
    }

    assert_event(
        &next_event(&mut sub).await,
        EventKind::MemberJoined,
        "g",
        &[pid],
    );
    sub.close();
    assert!(timeout(WAIT, sub.recv()).await.expect("closed").is_none());

    flushed.close_flush();
    pg.leave("g")?; // after the close: not queued
    let kept = until_end(&mut flushed).await;
    assert_eq!(kept.len(), 4);
    for ev in &kept {
        assert_event(ev, EventKind::MemberJoined, "g", &[pid]);
    }
    pg.join("g")?;
    assert_eq!(pg.get_members("g")?.count(&pid), 10);
    Ok(())
}

// -------------------------------------------------------------------------- permissions

#[tokio::test]
async fn each_permission_guards_exactly_its_method() -> Result<()> {
    type Asked = Vec<(Permission, Pid, String, String)>;
    for denied in Permission::ALL {
        let armed = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(Mutex::new(Asked::new()));
        let policy = {
            let (armed, asked) = (armed.clone(), asked.clone());
            move |r: &Request<'_>| {
                if armed.load(Ordering::SeqCst) {
                    let ask = (r.permission, r.process, r.scope.into(), r.resource.into());
                    asked.lock().unwrap().push(ask);
                }
                !armed.load(Ordering::SeqCst) || r.permission != denied
            }
        };
        let node = node_with(ScopeConfig::default(), policy).await;
        let (p, pg) = spawn(&node);
        pg.join("g")?; // so that a leave has something to leave
        armed.store(true, Ordering::SeqCst);

        let mut results = vec![(Permission::Open, p.open(SCOPE).map(drop))];
        results.extend(call_every_method(&pg));
        let methods: Vec<Permission> = results.iter().map(|(m, _)| *m).collect();
        assert_eq!(methods, Permission::ALL);
        for (method, result) in results {
            if method == denied {
                let kind = result.map_err(|e| e.kind());
                assert_eq!(
                    kind,
                    Err(ErrorKind::PermissionDenied),
                    "{method} not denied"
                );
            } else {
                assert!(
                    result.is_ok(),
                    "denying {denied} broke {method}: {result:?}"
                );
            }
        }

        for (permission, process, scope, resource) in asked.lock().unwrap().iter() {
            use Permission::*;
            let expected = match permission {
                Open | WhichGroups | WhichLocalGroups | Events => SCOPE,
                Register | Whereis => "name",
                _ => "g",
            };
            assert_eq!((*process, &**scope), (p.pid(), SCOPE), "{permission}");
            assert_eq!(resource, expected, "resource of {permission}");
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------------- messages

#[tokio::test]
async fn broadcast_delivers_once_per_slot() -> Result<()> {
    let node = node().await;
    let (sender, spg) = spawn(&node);
    let mut listeners = Vec::new();
    for slots in [2, 1, 1] {
        let (p, pg) = spawn(&node);
        let inbox = p.listen("t");
        pg.join(vec!["g"; slots])?;
        listeners.push((p, inbox, slots));
    }
    let (deaf, dpg) = spawn(&node);
    let _elsewhere = deaf.listen("other");
    dpg.join("g")?;

    for (round, broadcast) in [
        Instance::broadcast::<Task>,
        Instance::broadcast_local::<Task>,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(broadcast(&spg, "g", "t", &task())?.slots(), 5);
        for (p, inbox, slots) in &mut listeners {
            for _ in 0..*slots {
                let msg = next_message(inbox).await;
                assert_eq!((msg.from(), msg.topic()), (sender.pid(), "t"));
                assert_eq!(msg.decode::<Task>()?, task());
            }
            assert!(inbox.try_recv().is_none(), "{p:?} got more than {slots}");
            assert_eq!(p.dropped(), 0);
        }
        assert_eq!(deaf.dropped(), round as u64 + 1);
    }
    Ok(())
}

#[tokio::test]
async fn messages_from_one_sender_arrive_in_order() -> Result<()> {
    let node = node().await;
    let (sender, spg) = spawn(&node);
    let (receiver, rpg) = spawn(&node);
    let mut inbox = receiver.listen("n");
    rpg.join("g")?;
    for i in 0..100u32 {
        if i % 2 == 0 {
            assert_eq!(spg.broadcast("g", "n", &i)?.slots(), 1);
        } else {
            sender.send(&receiver.pid(), "n", &i)?;
        }
    }
    for i in 0..100u32 {
        assert_eq!(next_message(&mut inbox).await.decode::<u32>()?, i);
    }
    Ok(())
}

#[tokio::test]
async fn direct_send() -> Result<()> {
    let node = node().await;
    let p = node.spawn_process();
    let q = node.spawn_process();
    let mut inbox = q.listen("t");
    p.send(&q.pid(), "t", &task())?;
    let msg = next_message(&mut inbox).await;
    assert_eq!((msg.from(), msg.topic()), (p.pid(), "t"));
    assert_eq!(msg.decode::<Task>()?, task());

    let gone = q.pid();
    drop(q);
    assert_eq!(err_kind(p.send(&gone, "t", &1u8)), ErrorKind::NotFound);
    Ok(())
}

// ---------------------------------------------------------------------------------- node

#[tokio::test]
async fn shutdown_removes_members_and_refuses_calls() -> Result<()> {
    let node = node().await;
    let (p, pg) = spawn(&node);
    let pid = p.pid();
    let mut inbox = p.listen("t");
    pg.join(["g", "g"])?;
    let (mut sub, _) = pg.monitor("g")?;

    node.shutdown().await;

    // The process's own monitor saw its slots leave, then ended.
    let events = until_end(&mut sub).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_event(&events[0], EventKind::MemberLeft, "g", &[pid; 2]);
    assert!(
        timeout(WAIT, inbox.recv())
            .await
            .expect("inbox ends")
            .is_none()
    );

    assert_eq!(err_kind(p.open(SCOPE)), ErrorKind::Unavailable);
    assert_every_method_fails(&pg, ErrorKind::Unavailable);
    assert_eq!(
        err_kind(node.spawn_process().open(SCOPE)),
        ErrorKind::Unavailable
    );
    node.shutdown().await; // idempotent
    assert_eq!(err_kind(pg.join("g")), ErrorKind::Unavailable);
    Ok(())
}

#[tokio::test]
async fn pid_display_and_parse_round_trip() -> Result<()> {
    let node = node().await;
    let p = node.spawn_process();
    let pid = p.pid();
    assert_eq!(pid.node(), node.peer_id());
    let text = pid.to_string();
    assert_eq!(text, format!("{{{}|{}}}", node.peer_id(), pid.id()));
    assert_eq!(text.parse::<Pid>().expect("parses"), pid);
    assert_ne!(node.spawn_process().pid(), pid);
    assert!(format!("{{{}}}", node.peer_id()).parse::<Pid>().is_err());
    Ok(())
}

/// An inbox of a process that has exited (here by the node's shutdown, or spawned after it)
/// ends at once: it can never receive anything.
#[tokio::test]
async fn listening_after_shutdown_ends_at_once() -> Result<()> {
    let node = node().await;
    let p = node.spawn_process();
    node.shutdown().await;
    let late = node.spawn_process();
    for q in [&p, &late] {
        let mut inbox = q.listen("t");
        let next = timeout(WAIT, inbox.recv()).await;
        assert!(next.expect("the inbox ends").is_none(), "{q:?}");
    }
    Ok(())
}
