//! Hosts on a LAN for the tests that run mDNS (`netns.rs`, `chat.rs`): Linux network
//! namespaces whose `eth0` are ports of one bridge, itself in a namespace of its own.
//!
//! mDNS ignores loopback, hence the veth interfaces. It must never run outside the namespaces
//! a test creates (it would multicast out of the machine's real interface): the tests start
//! mDNS only in processes they run with `ip netns exec` in one of [`Lan::hosts`].
//!
//! Namespaces are `pgbr-<pid>-<n>` for the bridge and `pg<pid>-<n>-<i>` for the hosts, `<pid>`
//! being the test process's and `<n>` counting the LANs it made: a crashed run's leftovers are
//! recognised by a dead `<pid>` and deleted by the next [`Lan::create`]. Dropping the [`Lan`]
//! deletes its namespaces, also when the test panics.
//!
//! Needs root and iproute2's `ip netns`; without them [`Lan::create`] fails (it does not skip).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const BRIDGE_PREFIX: &str = "pgbr-";
const HOST_PREFIX: &str = "pg";

/// LANs made by this process so far (several tests of one binary may each make one).
static LANS: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip <args>`; panics with its stderr on failure.
pub fn ip(args: &[&str]) {
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

/// The network namespaces of the machine.
pub fn netns_list() -> Vec<String> {
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

/// The pid in the name of a namespace made by a [`Lan`]: `pgbr-<pid>[-<n>]` or
/// `pg<pid>[-<n>]-<i>` (the forms without `<n>` are those of earlier versions).
pub fn owner_pid(name: &str) -> Option<u32> {
    let (rest, min_parts) = match name.strip_prefix(BRIDGE_PREFIX) {
        Some(rest) => (rest, 1),
        None => (name.strip_prefix(HOST_PREFIX)?, 2),
    };
    let parts: Vec<&str> = rest.split('-').collect();
    if parts.len() < min_parts
        || parts.len() > min_parts + 1
        || parts
            .iter()
            .any(|p| p.is_empty() || p.parse::<u64>().is_err())
    {
        return None;
    }
    parts[0].parse().ok()
}

/// Deletes the namespaces of earlier runs whose test process is gone.
pub fn delete_stale_namespaces() {
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
/// pairs and the bridge go with them). Declare it before the processes that run in it, so
/// that they are dropped (killed) first.
pub struct Lan {
    pub bridge: String,
    pub hosts: Vec<String>,
}

impl Lan {
    /// Checks that the test runs as root, deletes stale namespaces of dead test processes,
    /// then makes a bridge `br0` in a namespace of its own and `count` host namespaces, each
    /// with `eth0` (10.77.0.<i>/24) whose veth peer is a port of the bridge.
    pub fn create(count: usize) -> Lan {
        assert_eq!(
            effective_uid(),
            0,
            "this test creates network namespaces and must run as root (CI does)"
        );
        delete_stale_namespaces();
        let pid = std::process::id();
        let n = LANS.fetch_add(1, Ordering::Relaxed);
        // Built inside the value: if a step panics, the drop deletes what exists so far.
        let mut lan = Lan {
            bridge: format!("{BRIDGE_PREFIX}{pid}-{n}"),
            hosts: Vec::new(),
        };
        let br = lan.bridge.clone();
        ip(&["netns", "add", &br]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 1..=count {
            let ns = format!("{HOST_PREFIX}{pid}-{n}-{i}");
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

    /// Deletes the LAN's namespaces and checks that none is left (other tests of the same
    /// binary may have LANs of their own at the same time).
    pub fn delete(self) {
        let names: Vec<String> = self.hosts.iter().chain([&self.bridge]).cloned().collect();
        drop(self);
        let left: Vec<String> = netns_list()
            .into_iter()
            .filter(|ns| names.contains(ns))
            .collect();
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
    }

    /// `true` if `ns` is one of this LAN's host namespaces.
    pub fn has_host(&self, ns: &str) -> bool {
        self.hosts.iter().any(|h| h == ns)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.bridge]) {
            delete_netns(ns);
        }
    }
}
