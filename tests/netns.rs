//! mDNS discovery between three hosts: three Linux network namespaces on a bridge, one child
//! node in each (this test binary re-executed with `ip netns exec`, see `support`), with mDNS
//! on and no address to dial. They must find each other by mDNS alone and converge.
//!
//! mDNS ignores loopback, hence the veth interfaces. It must never run outside the namespaces
//! this test creates (it would multicast out of the machine's real interface): only the
//! children turn it on, they run inside the namespaces, and a child refuses to start mDNS in
//! the network namespace of the test process.
//!
//! Needs root and `ip netns`; without them the test fails (it does not skip).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Child, ChildSpec, GROUP, eventually, union};

/// Runs a child node when the parent test re-executes this binary; in an ordinary `cargo
/// test` run (no `PROCGROUPS_CHILD` in the environment) it returns at once and passes.
#[test]
fn child_node_entry_point() {
    support::child_main();
}

const HOSTS: usize = 3;
/// Namespaces are `pg<pid>-<i>` for the hosts and `pgbr-<pid>` for the bridge, `<pid>` being
/// the test process's: a crashed run's leftovers are recognised by a dead `<pid>`.
const BRIDGE_PREFIX: &str = "pgbr-";
const HOST_PREFIX: &str = "pg";

/// Runs `ip <args>`; panics with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Deleting a namespace must not panic inside a `Drop`; failures are reported on stderr.
fn delete_netns(name: &str) {
    match Command::new("ip").args(["netns", "delete", name]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "ip netns delete {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("ip netns delete {name}: {e}"),
    }
}

fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap_or_else(|e| panic!("this test needs iproute2's `ip netns`: cannot run `ip`: {e}"));
    assert!(
        out.status.success(),
        "this test needs `ip netns`: `ip netns list` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The pid in a namespace name of this test (`pgbr-<pid>` or `pg<pid>-<i>`).
fn owner_pid(name: &str) -> Option<u32> {
    let digits = match name.strip_prefix(BRIDGE_PREFIX) {
        Some(pid) => pid,
        None => {
            let (pid, host) = name.strip_prefix(HOST_PREFIX)?.split_once('-')?;
            host.parse::<usize>().ok()?;
            pid
        }
    };
    digits.parse().ok()
}

/// Deletes the namespaces of earlier runs whose test process is gone.
fn delete_stale_namespaces() {
    for name in netns_list() {
        if let Some(pid) = owner_pid(&name)
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            eprintln!("deleting stale namespace {name}");
            delete_netns(&name);
        }
    }
}

fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .expect("an effective uid in /proc/self/status")
}

/// The bridge namespace and the hosts' namespaces; dropping it deletes them all (their veth
/// pairs and the bridge go with them). Declared before the children so that they are
/// killed first.
struct Lan {
    bridge: String,
    hosts: Vec<String>,
}

impl Lan {
    /// A bridge `br0` in namespace `pgbr-<pid>`, and `count` namespaces `pg<pid>-<i>`, each with
    /// `eth0` (10.77.0.<i>/24) whose veth peer is a port of the bridge.
    fn create(count: usize) -> Lan {
        let pid = std::process::id();
        let mut lan = Lan {
            bridge: format!("{BRIDGE_PREFIX}{pid}"),
            hosts: Vec::new(),
        };
        let br = lan.bridge.clone();
        ip(&["netns", "add", &br]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 1..=count {
            let ns = format!("{HOST_PREFIX}{pid}-{i}");
            ip(&["netns", "add", &ns]);
            lan.hosts.push(ns.clone());
            let port = format!("vb{i}");
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &br, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &br, "link", "set", &port, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.0.{i}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            // No default route in the namespace: send multicast (mDNS, 224.0.0.251) out of eth0.
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        lan
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.bridge]) {
            delete_netns(ns);
        }
    }
}

#[test]
fn three_hosts_on_a_bridge_find_each_other_by_mdns_alone() {
    let started = Instant::now();
    assert_eq!(
        effective_uid(),
        0,
        "this test creates network namespaces and must run as root (CI does)"
    );
    delete_stale_namespaces();
    let lan = Lan::create(HOSTS);
    eprintln!("namespaces ready in {:?}", started.elapsed());

    let mut children: Vec<Child> = lan
        .hosts
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            Child::spawn(ChildSpec {
                listen: "/ip4/0.0.0.0/tcp/0".parse().expect("multiaddr"),
                mdns: true,
                netns: Some(ns.clone()),
                ..ChildSpec::new(format!("host{} ({ns})", i + 1))
            })
        })
        .collect();
    eprintln!("children started in {:?}", started.elapsed());

    let locals: Vec<_> = children
        .iter_mut()
        .map(|c| c.local_members(GROUP))
        .collect();
    for (child, local) in children.iter().zip(&locals) {
        assert_eq!(local.len(), 1, "{}: {local:?}", child.label);
    }
    let lists: Vec<&[procgroups::Pid]> = locals.iter().map(Vec::as_slice).collect();
    let everyone = union(&lists);
    let took = eventually(
        "the three hosts to see the three members",
        Duration::from_secs(15),
        || {
            let mut seen = Vec::new();
            for child in children.iter_mut() {
                let members = child.members(GROUP);
                if members != everyone {
                    let peers = child.peers();
                    seen.push(format!(
                        "{} sees {members:?} with peers {peers:?}",
                        child.label
                    ));
                }
            }
            if seen.is_empty() {
                Ok(())
            } else {
                Err(seen.join("; "))
            }
        },
    );
    eprintln!(
        "converged by mDNS in {took:?}; whole test {:?}",
        started.elapsed()
    );
    // The children go first (they are in the namespaces), then the namespaces.
    drop(children);
    drop(lan);
    let left: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| owner_pid(n) == Some(std::process::id()))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
