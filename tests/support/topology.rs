//! Networks of several LANs for the tests across networks (`wan.rs`, `wan_figures.rs`): Linux
//! network namespaces joined by bridges, hosts on one or more LANs, routers between two LANs
//! (optionally a NAT), and paths blocked on purpose.
//!
//! A [`Topology`] is built from names:
//! - a **LAN** is a bridge `br0` in a namespace of its own, with the subnet `10.80.<k>.0/24`
//!   (`<k>` counting the LANs from 1, in the order declared);
//! - a **host** ([`TopologyBuilder::host`]) is a namespace with one veth per LAN it is on
//!   (`eth0`, `eth1`, … in the order given), its peer a port of that LAN's bridge, and an
//!   address of that LAN's subnet (`.1`, `.2`, … in the order the nodes are attached).
//!   IP forwarding is off (`net.ipv4.ip_forward = 0`, set explicitly): a host on two LANs does
//!   not route between them, so the hosts of one cannot reach those of the other;
//! - a **router** ([`TopologyBuilder::router`], [`TopologyBuilder::nat_router`]) is a node on
//!   two LANs, its `wan` (`eth0`) and its `lan` (`eth1`), with IP forwarding on; a NAT router
//!   also has `iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE`, so what leaves by its WAN
//!   side carries its WAN address, and, as a home router, drops what comes in from the WAN side
//!   for itself unasked (instead of answering a SYN with a reset). Every other node on a router's `lan` side gets a default
//!   route via the router's address there (a host on several LANs: via the first such
//!   router). A node with no default route gets `224.0.0.0/4` on its first interface, so that
//!   mDNS multicasts go out of it (as [`super::netns::Lan`] does);
//! - [`Topology::block`] drops, in a router's `FORWARD` chain, everything it would forward to
//!   or from an address: between two NAT routers' WAN addresses it leaves the home nodes
//!   only the paths through a third party.
//!
//! Two shapes the tests use, [`Topology::line`] and [`Topology::two_nats`], are documented
//! where they are made.
//!
//! Naming and cleanup follow [`super::netns::Lan`]: every namespace is
//! `pgt-<pid>-<n>-<name>`, `<pid>` the test process's, `<n>` counting the topologies it made,
//! `<name>` the LAN's or node's name; [`super::netns::delete_stale_namespaces`] (run by
//! [`TopologyBuilder::build`]) deletes those of dead pids. Dropping the [`Topology`] deletes
//! its namespaces (their veths, bridges and iptables rules go with them), also when the test
//! panics. The body of a test that builds one runs through [`super::netns::as_root`]: as root
//! directly, as anyone else inside a user namespace, where `iptables` and the `ip_forward`
//! sysctl work on the namespaces the test made (checked with iptables 1.8.9 on Linux 6.18:
//! iptables-nft as it is; iptables-legacy with a lock file of the topology's own, see
//! [`XTABLES_LOCK`]). Where they do not, building fails with the command and its error;
//! nothing is skipped.
//!
//! Every command is bounded in time ([`COMMAND_TIMEOUT`]; a ping waits 1 s). Needs iproute2
//! (`ip`, and `ss` for [`Topology::tcp_peers`]), iptables (for NAT routers and blocks) and
//! iputils' `ping` (for [`Topology::ping`]); without them the test fails, naming the command.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::netns::{delete_netns, delete_stale_namespaces, effective_uid};

/// The prefix of every namespace of a [`Topology`].
pub const PREFIX: &str = "pgt-";
/// The longest any one command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The first two octets of every LAN's subnet.
const SUBNET: [u8; 2] = [10, 80];

/// Topologies made by this process so far.
static TOPOLOGIES: AtomicUsize = AtomicUsize::new(0);

/// Runs `program args`, killing it after `timeout`; panics if it cannot start or runs over.
pub fn run_for(program: &str, args: &[&str], timeout: Duration) -> Output {
    run_with(program, args, &[], timeout)
}

/// [`run_for`] with more environment variables.
fn run_with(program: &str, args: &[&str], envs: &[(&str, &Path)], timeout: Duration) -> Output {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{shown}`: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                child.kill().ok();
                child.wait().ok();
                panic!("`{shown}` ran over {timeout:?}: killed");
            }
        }
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("`{shown}`: {e}"))
}

/// Runs `program args` within [`COMMAND_TIMEOUT`]; panics with its stderr unless it succeeds.
pub fn run(program: &str, args: &[&str]) -> String {
    run_env(program, args, &[])
}

fn run_env(program: &str, args: &[&str], envs: &[(&str, &Path)]) -> String {
    let out = run_with(program, args, envs, COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip <args>`, bounded.
fn ip(args: &[&str]) {
    run("ip", args);
}

/// Sets `net.ipv4.ip_forward` in the namespace `ns` to `value` and checks it took.
fn set_ip_forward(ns: &str, value: &str) {
    const FILE: &str = "/proc/sys/net/ipv4/ip_forward";
    exec_in(ns, "sh", &["-c", &format!("echo {value} > {FILE}")]);
    let now = exec_in(ns, "cat", &[FILE]);
    assert_eq!(
        now.trim(),
        value,
        "{ns}: ip_forward is {now:?} after setting it to {value}"
    );
}

/// `<program> <args>` inside the namespace `ns` (`ip netns exec`), bounded.
pub fn exec_in(ns: &str, program: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// The lock iptables-legacy takes, `/run/xtables.lock`, belongs to the machine's root: in a
/// user namespace it cannot be opened, and iptables-legacy fails (iptables-nft takes no lock).
/// Then the [`Topology`] points `XTABLES_LOCKFILE` at a file of its own (each network
/// namespace has its own tables: nothing is shared to lock), deleted with the topology.
const XTABLES_LOCK: &str = "/run/xtables.lock";

fn own_xtables_lock(pid: u32, n: usize) -> Option<PathBuf> {
    let machine_lock = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(XTABLES_LOCK);
    if machine_lock.is_ok() {
        return None;
    }
    let path = std::env::temp_dir().join(format!("procgroups-xtables-{pid}-{n}.lock"));
    std::fs::File::create(&path).unwrap_or_else(|e| {
        panic!(
            "cannot create an iptables lock file {}: {e}",
            path.display()
        )
    });
    Some(path)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Host,
    Router { nat: bool },
}

struct NodeSpec {
    name: String,
    /// Indexes into the LANs, in interface order (`eth0`, `eth1`, …); a router's WAN first.
    lans: Vec<usize>,
    role: Role,
}

/// Declares LANs and nodes; [`build`](Self::build) makes them.
#[derive(Default)]
pub struct TopologyBuilder {
    lans: Vec<String>,
    nodes: Vec<NodeSpec>,
}

impl TopologyBuilder {
    /// A LAN named `name` (a bridge; the next subnet `10.80.<k>.0/24`).
    pub fn lan(mut self, name: &str) -> Self {
        self.check_name(name);
        self.lans.push(name.to_owned());
        self
    }

    /// A host on each LAN of `lans` (one interface each, in that order), forwarding off.
    pub fn host(self, name: &str, lans: &[&str]) -> Self {
        assert!(!lans.is_empty(), "host {name}: on no LAN");
        self.node(name, lans, Role::Host)
    }

    /// A router between `wan` (its `eth0`) and `lan` (its `eth1`), forwarding on, no NAT.
    pub fn router(self, name: &str, wan: &str, lan: &str) -> Self {
        self.node(name, &[wan, lan], Role::Router { nat: false })
    }

    /// A router that masquerades what it forwards out of its WAN side (a home router).
    pub fn nat_router(self, name: &str, wan: &str, lan: &str) -> Self {
        self.node(name, &[wan, lan], Role::Router { nat: true })
    }

    fn node(mut self, name: &str, lans: &[&str], role: Role) -> Self {
        self.check_name(name);
        let lans = lans.iter().map(|l| self.lan_index(l)).collect::<Vec<_>>();
        let mut unique = lans.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), lans.len(), "{name}: on a LAN twice");
        self.nodes.push(NodeSpec {
            name: name.to_owned(),
            lans,
            role,
        });
        self
    }

    fn lan_index(&self, lan: &str) -> usize {
        self.lans
            .iter()
            .position(|l| l == lan)
            .unwrap_or_else(|| panic!("no LAN named {lan:?} (declare it first)"))
    }

    /// Names are short lowercase words (they end namespace names), each used once.
    fn check_name(&self, name: &str) {
        assert!(
            !name.is_empty()
                && name.len() <= 16
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{name:?}: a LAN or node name is 1 to 16 lowercase letters and digits"
        );
        assert!(
            !self.lans.iter().any(|l| l == name) && !self.nodes.iter().any(|n| n.name == name),
            "{name:?} is used twice"
        );
    }

    /// Checks that the test runs as root (the machine's, or its user namespace's: see
    /// [`super::netns::as_root`]), deletes stale namespaces of dead test processes, then makes
    /// the LANs and the nodes. A step that fails panics; what exists so far is deleted.
    pub fn build(self) -> Topology {
        assert_eq!(
            effective_uid(),
            0,
            "this test creates network namespaces: run its body through `netns::as_root`, \
             which runs it as root or inside a user namespace"
        );
        delete_stale_namespaces();
        let started = Instant::now();
        let pid = std::process::id();
        let n = TOPOLOGIES.fetch_add(1, Ordering::Relaxed);
        let ns_of = |name: &str| format!("{PREFIX}{pid}-{n}-{name}");
        // Built inside the value: if a step panics, the drop deletes what exists so far.
        let mut topo = Topology {
            xtables_lock: own_xtables_lock(pid, n),
            namespaces: Vec::new(),
            lans: self.lans.clone(),
            nodes: BTreeMap::new(),
        };
        for lan in &self.lans {
            let br = ns_of(lan);
            ip(&["netns", "add", &br]);
            topo.namespaces.push(br.clone());
            ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
            ip(&["-n", &br, "link", "set", "br0", "up"]);
        }
        let mut next_host = vec![1u8; self.lans.len()];
        for (index, spec) in self.nodes.iter().enumerate() {
            let ns = ns_of(&spec.name);
            ip(&["netns", "add", &ns]);
            topo.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let mut addrs = Vec::new();
            for (i, &lan) in spec.lans.iter().enumerate() {
                let br = ns_of(&self.lans[lan]);
                let port = format!("v{index}");
                let dev = format!("eth{i}");
                ip(&[
                    "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", &dev, "netns",
                    &ns,
                ]);
                ip(&["-n", &br, "link", "set", &port, "master", "br0"]);
                ip(&["-n", &br, "link", "set", &port, "up"]);
                let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], lan as u8 + 1, next_host[lan]);
                next_host[lan] += 1;
                ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &dev]);
                ip(&["-n", &ns, "link", "set", &dev, "up"]);
                addrs.push((lan, addr));
            }
            let forward = if matches!(spec.role, Role::Router { .. }) {
                "1"
            } else {
                "0"
            };
            set_ip_forward(&ns, forward);
            if spec.role == (Role::Router { nat: true }) {
                topo.iptables(
                    &ns,
                    &[
                        "-t",
                        "nat",
                        "-A",
                        "POSTROUTING",
                        "-o",
                        "eth0",
                        "-j",
                        "MASQUERADE",
                    ],
                );
                // As a home router does: what comes in from outside unasked is dropped, not
                // answered with a reset (hole punching relies on a SYN that arrives before the
                // router has seen ours being dropped, and retried).
                topo.iptables(
                    &ns,
                    &[
                        "-A",
                        "INPUT",
                        "-i",
                        "eth0",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "ESTABLISHED,RELATED",
                        "-j",
                        "ACCEPT",
                    ],
                );
                // Pings still answer, for the topology's own checks.
                topo.iptables(
                    &ns,
                    &["-A", "INPUT", "-i", "eth0", "-p", "icmp", "-j", "ACCEPT"],
                );
                topo.iptables(&ns, &["-A", "INPUT", "-i", "eth0", "-j", "DROP"]);
            }
            topo.nodes.insert(
                spec.name.clone(),
                NodeInfo {
                    ns,
                    addrs,
                    role: spec.role,
                    gateway: None,
                },
            );
        }
        self.routes(&mut topo);
        eprintln!(
            "topology {n} ({} LANs, {} nodes) made in {:?}",
            self.lans.len(),
            self.nodes.len(),
            started.elapsed()
        );
        topo
    }

    /// Default routes via the routers, and the multicast route of the nodes without one.
    fn routes(&self, topo: &mut Topology) {
        for spec in &self.nodes {
            // A router looks for a gateway on its WAN side only; a host on each of its LANs.
            let upstream: &[usize] = match spec.role {
                Role::Router { .. } => &spec.lans[..1],
                Role::Host => &spec.lans,
            };
            let gateway = upstream.iter().find_map(|&lan| {
                self.nodes
                    .iter()
                    .filter(|r| r.name != spec.name && matches!(r.role, Role::Router { .. }))
                    .find(|r| r.lans[1] == lan)
                    .map(|r| topo.addr(&r.name, &self.lans[lan]))
            });
            let node = topo.nodes.get_mut(&spec.name).expect("made above");
            match gateway {
                Some(via) => {
                    ip(&[
                        "-n",
                        &node.ns,
                        "route",
                        "add",
                        "default",
                        "via",
                        &via.to_string(),
                    ]);
                    node.gateway = Some(via);
                }
                None => ip(&["-n", &node.ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]),
            }
        }
    }
}

struct NodeInfo {
    ns: String,
    /// (LAN index, address on it), in interface order.
    addrs: Vec<(usize, Ipv4Addr)>,
    role: Role,
    gateway: Option<Ipv4Addr>,
}

/// The namespaces of a network of LANs; dropping it deletes them all. Declare it before the
/// processes that run in it, so that they are dropped (killed) first.
pub struct Topology {
    /// `XTABLES_LOCKFILE` for iptables, when the machine's cannot be used (see
    /// [`XTABLES_LOCK`]).
    xtables_lock: Option<PathBuf>,
    /// Every namespace made, bridges first.
    namespaces: Vec<String>,
    lans: Vec<String>,
    nodes: BTreeMap<String, NodeInfo>,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// **The line**: `a` on LAN `lan1`, `c` on LAN `lan2`, `b` on both with forwarding off.
    /// No IP path joins `a` and `c`; each reaches `b`.
    pub fn line() -> Topology {
        Topology::builder()
            .lan("lan1")
            .lan("lan2")
            .host("a", &["lan1"])
            .host("b", &["lan1", "lan2"])
            .host("c", &["lan2"])
            .build()
    }

    /// **Two NATs**: the LAN `internet` with the public host `p` and the WAN sides of two
    /// home routers `r1` and `r2`, each masquerading its home LAN (`home1`, `home2`) where one
    /// home host lives (`h1`, `h2`; default route via their router). The home hosts reach `p`
    /// (as their router's WAN address), `p` cannot open a connection to them, and they reach
    /// each other only through their routers' WAN addresses (what hole punching uses), which
    /// [`Topology::block_between`] closes.
    pub fn two_nats() -> Topology {
        Topology::builder()
            .lan("internet")
            .lan("home1")
            .lan("home2")
            .host("p", &["internet"])
            .nat_router("r1", "internet", "home1")
            .nat_router("r2", "internet", "home2")
            .host("h1", &["home1"])
            .host("h2", &["home2"])
            .build()
    }

    /// `iptables <args>` in the namespace `ns`.
    fn iptables(&self, ns: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", ns, "iptables"];
        all.extend_from_slice(args);
        let envs: Vec<(&str, &Path)> = self
            .xtables_lock
            .iter()
            .map(|lock| ("XTABLES_LOCKFILE", lock.as_path()))
            .collect();
        run_env("ip", &all, &envs)
    }

    fn node(&self, name: &str) -> &NodeInfo {
        self.nodes
            .get(name)
            .unwrap_or_else(|| panic!("no node named {name:?} in this topology"))
    }

    /// The namespace of the node `name` (for `ip netns exec`).
    pub fn ns(&self, name: &str) -> &str {
        &self.node(name).ns
    }

    /// `true` if `ns` is a node's namespace of this topology.
    pub fn has_ns(&self, ns: &str) -> bool {
        self.nodes.values().any(|n| n.ns == ns)
    }

    /// The address of the node `name` on the LAN `lan`.
    pub fn addr(&self, name: &str, lan: &str) -> Ipv4Addr {
        let lan_index = self
            .lans
            .iter()
            .position(|l| l == lan)
            .unwrap_or_else(|| panic!("no LAN named {lan:?}"));
        self.node(name)
            .addrs
            .iter()
            .find(|(l, _)| *l == lan_index)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("{name} is not on {lan}"))
    }

    /// Every address of the node `name`, in interface order.
    pub fn addrs(&self, name: &str) -> Vec<Ipv4Addr> {
        self.node(name).addrs.iter().map(|(_, a)| *a).collect()
    }

    /// The router the node `name` sends what is not on its LANs to, if any.
    pub fn gateway(&self, name: &str) -> Option<Ipv4Addr> {
        self.node(name).gateway
    }

    /// Whether one ping from the node `from` to `to` is answered within a second.
    pub fn ping(&self, from: &str, to: Ipv4Addr) -> bool {
        let ns = self.ns(from);
        run_for(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "ping",
                "-n",
                "-q",
                "-c1",
                "-W1",
                &to.to_string(),
            ],
            COMMAND_TIMEOUT,
        )
        .status
        .success()
    }

    /// Drops in the router `router`'s `FORWARD` chain every packet to or from `addr`.
    pub fn block(&self, router: &str, addr: Ipv4Addr) {
        let node = self.node(router);
        assert!(
            matches!(node.role, Role::Router { .. }),
            "{router} is not a router"
        );
        let addr = addr.to_string();
        for dir in ["-d", "-s"] {
            self.iptables(&node.ns, &["-I", "FORWARD", dir, &addr, "-j", "DROP"]);
        }
    }

    /// Blocks the direct path between two routers: each drops what it would forward to or
    /// from the other's address on `lan` (their common WAN side).
    pub fn block_between(&self, r1: &str, r2: &str, lan: &str) {
        self.block(r1, self.addr(r2, lan));
        self.block(r2, self.addr(r1, lan));
    }

    /// Packets the router `router` dropped by [`block`](Self::block)'s rules so far.
    pub fn blocked_packets(&self, router: &str) -> u64 {
        let out = self.iptables(self.ns(router), &["-L", "FORWARD", "-v", "-n", "-x"]);
        sum_counters(&out, "DROP")
    }

    /// Packets the NAT router `router` masqueraded so far (one per new connection or flow).
    pub fn nat_packets(&self, router: &str) -> u64 {
        let out = self.iptables(
            self.ns(router),
            &["-t", "nat", "-L", "POSTROUTING", "-v", "-n", "-x"],
        );
        sum_counters(&out, "MASQUERADE")
    }

    /// The remote ends of the established TCP connections in the node `name`'s namespace
    /// (`ss -tn`): where its processes are connected to, as seen from there.
    pub fn tcp_peers(&self, name: &str) -> Vec<SocketAddrV4> {
        let out = exec_in(
            self.ns(name),
            "ss",
            &["-H", "-t", "-n", "state", "established"],
        );
        out.lines()
            .filter_map(|l| l.split_whitespace().nth(3)?.parse().ok())
            .collect()
    }

    /// Deletes the namespaces and checks that none is left.
    pub fn delete(self) {
        let names = self.namespaces.clone();
        drop(self);
        let left: Vec<String> = super::netns::netns_list()
            .into_iter()
            .filter(|ns| names.contains(ns))
            .collect();
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
    }
}

/// The sum of the packet counters of the rules with `target` in `iptables -L -v -n -x` output.
fn sum_counters(listing: &str, target: &str) -> u64 {
    listing
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some(target))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

impl Drop for Topology {
    fn drop(&mut self) {
        // The nodes first: their veth peers are ports of the bridges.
        for ns in self.namespaces.iter().rev() {
            delete_netns(ns);
        }
        if let Some(lock) = &self.xtables_lock
            && let Err(e) = std::fs::remove_file(lock)
        {
            eprintln!("cannot remove {}: {e}", lock.display());
        }
    }
}

/// The pid in a topology's namespace name `pgt-<pid>-<n>-<name>`.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    let label = parts.next()?;
    (!label.is_empty()
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
    .then_some(pid)
}
