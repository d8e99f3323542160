//! Nodes in child OS processes, for the tests that need them (`multiprocess.rs`, `netns.rs`,
//! `soak.rs`): the process plumbing is `examples/common/child.rs`, shared with the examples
//! that run themselves as children; the line protocol is this module's.
//!
//! No extra binary: a test binary re-executes itself (`std::env::current_exe()`) with
//! `--exact child_node_entry_point --nocapture --test-threads=1` and the child's configuration
//! in `PROCGROUPS_CHILD*` environment variables. In the child, [`child_main`] builds a node,
//! dials the addresses it is given, joins processes to a group and answers a line protocol on
//! stdin/stdout. Without `PROCGROUPS_CHILD` (an ordinary `cargo test` run) [`child_main`]
//! returns at once, so `child_node_entry_point` passes trivially there.
//!
//! Protocol: the child prints `PGCHILD ready <peer-id> <listen-addr>...` once its processes
//! have joined, then reads requests `<seq> <command> [<arg>]` and answers each with one line
//! `PGCHILD = <seq> <item>...`:
//! - `members <group>`: every member slot of the group, as pids, sorted;
//! - `local <group>`: the slots held by this node's processes, sorted;
//! - `peers`: the peers it is connected to;
//! - `addrs`: `Node::listen_addrs()`;
//! - `reach <peer>`: `Node::reach(peer)` (`Direct`, `Relayed` or `Unreached`);
//! - `external`: `Node::external_addrs()`;
//! - `broadcast <text>`: its first process broadcasts `<text>` (one word) under [`TOPIC`] to
//!   [`GROUP`]; the answer is the number of slots targeted;
//! - `send <pid> <text>`: its first process sends `<text>` under [`TOPIC`] to `<pid>`;
//! - `received`: every message its first process received under [`TOPIC`] so far, in the
//!   order received, as `<from-pid>=<text>`;
//! - `leave` / `join`: every one of its processes leaves / joins [`GROUP`] again;
//! - `shutdown`: `Node::shutdown()` (the graceful goodbye); it answers once that is done, then
//!   the child exits with status 0.
//!
//! Everything else on the child's stdout (the test harness's own output) is ignored. The child
//! exits when its stdin closes, so children never outlive a parent that died.
//!
//! The calls of [`Child`] block until the child answers (a few milliseconds; at most
//! `REPLY_TIMEOUT`).

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use procgroups::{Keypair, Node, PeerId, Pid, ScopeConfig};

#[path = "../../examples/common/child.rs"]
mod process;
use process::{ChildProcess, Lines, NoLine};

/// Name of the test function that runs a child node; each test binary defines it as
/// `#[test] fn child_node_entry_point() { support::child::child_main() }`.
pub const CHILD_TEST: &str = "child_node_entry_point";
pub const SCOPE: &str = "test:multi";
pub const GROUP: &str = "g";
/// The topic of the messages of `broadcast`, `send` and `received`.
pub const TOPIC: &str = "t";

const ENV_LABEL: &str = "PROCGROUPS_CHILD";
const ENV_LISTEN: &str = "PROCGROUPS_CHILD_LISTEN";
const ENV_DIAL: &str = "PROCGROUPS_CHILD_DIAL";
const ENV_KEY: &str = "PROCGROUPS_CHILD_KEY";
const ENV_PROCS: &str = "PROCGROUPS_CHILD_PROCS";
const ENV_GRACE_MS: &str = "PROCGROUPS_CHILD_GRACE_MS";
const ENV_MDNS: &str = "PROCGROUPS_CHILD_MDNS";
const ENV_PARENT_NETNS: &str = "PROCGROUPS_CHILD_PARENT_NETNS";
const TAG: &str = "PGCHILD";

/// How long a child may take to start its node and join its processes.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child may take to answer one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Child side.

/// The body of `child_node_entry_point`: runs a child node when `PROCGROUPS_CHILD` is set, and
/// returns at once otherwise.
pub fn child_main() {
    let Ok(label) = std::env::var(ENV_LABEL) else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run_child(label));
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

async fn run_child(label: String) {
    let listen: Multiaddr = env(ENV_LISTEN)
        .unwrap_or_else(|| "/ip4/127.0.0.1/tcp/0".into())
        .parse()
        .expect("listen address");
    let dial: Vec<Multiaddr> = env(ENV_DIAL)
        .unwrap_or_default()
        .split_whitespace()
        .map(|a| a.parse().expect("dial address"))
        .collect();
    let procs: usize = env(ENV_PROCS).map_or(1, |n| n.parse().expect("process count"));
    let grace = Duration::from_millis(
        env(ENV_GRACE_MS).map_or(2000, |ms| ms.parse().expect("grace in ms")),
    );
    let mdns = env(ENV_MDNS).as_deref() == Some("1");
    if mdns {
        assert_in_private_netns(&label);
    }
    // Exits this process when the parent closes its stdin (or dies).
    let mut requests = process::stdin_lines().expect("read stdin");

    let mut builder = Node::builder().mdns(mdns).listen_on(listen).scope(
        SCOPE,
        ScopeConfig::builder()
            .node_down_grace(grace)
            .build()
            .expect("scope config"),
    );
    if let Some(hex) = env(ENV_KEY) {
        let key = Keypair::from_protobuf_encoding(&from_hex(&hex)).expect("keypair");
        builder = builder.keypair(key);
    }
    let node = builder.build().await.expect("child node");
    for addr in dial {
        node.dial(addr).expect("dial");
    }
    let processes: Vec<_> = (0..procs).map(|_| node.spawn_process()).collect();
    // Listening before joining: no message to the group is missed.
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut inbox = processes[0].listen(TOPIC);
    let log = received.clone();
    tokio::spawn(async move {
        while let Some(message) = inbox.recv().await {
            let text = message
                .decode::<String>()
                .unwrap_or_else(|e| format!("<undecodable:{e}>"));
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{}={text}", message.from()));
        }
    });
    let instances: Vec<_> = processes
        .iter()
        .map(|p| {
            let pg = p.open(SCOPE).expect("open");
            pg.join(GROUP).expect("join");
            pg
        })
        .collect();
    let query = processes[0].open(SCOPE).expect("open");

    let addrs: Vec<String> = node.listen_addrs().iter().map(|a| a.to_string()).collect();
    say(&format!("ready {} {}", node.peer_id(), addrs.join(" ")));

    while let Some(line) = requests.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let items: Vec<String> = match words[..] {
            [_, "members", group] => sorted(query.get_members(group).expect("get_members").iter()),
            [_, "local", group] => sorted(
                query
                    .get_local_members(group)
                    .expect("get_local_members")
                    .iter(),
            ),
            [_, "peers"] => node
                .connected_peers()
                .iter()
                .map(|p| p.to_string())
                .collect(),
            [_, "addrs"] => node.listen_addrs().iter().map(|a| a.to_string()).collect(),
            [_, "external"] => node
                .external_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            [_, "reach", peer] => {
                let peer: PeerId = peer.parse().expect("peer id");
                vec![format!("{:?}", node.reach(&peer))]
            }
            [_, "broadcast", text] => {
                let delivery = query.broadcast(GROUP, TOPIC, text).expect("broadcast");
                vec![delivery.slots().to_string()]
            }
            [_, "send", to, text] => {
                let to: Pid = to.parse().expect("pid");
                processes[0].send(&to, TOPIC, text).expect("send");
                Vec::new()
            }
            [_, "received"] => received.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            [_, "leave"] => {
                for pg in &instances {
                    pg.leave(GROUP).expect("leave");
                }
                Vec::new()
            }
            [_, "join"] => {
                for pg in &instances {
                    pg.join(GROUP).expect("join");
                }
                Vec::new()
            }
            [_, "shutdown"] => {
                node.shutdown().await;
                say(&format!("= {}", words[0]));
                std::process::exit(0);
            }
            _ => panic!("{label}: bad request {line:?}"),
        };
        say(&format!("= {} {}", words[0], items.join(" ")));
    }
}

fn sorted(pids: impl Iterator<Item = Pid>) -> Vec<String> {
    let mut pids: Vec<Pid> = pids.collect();
    pids.sort();
    pids.iter().map(|p| p.to_string()).collect()
}

fn say(line: &str) {
    process::say(&format!("{TAG} {line}"));
}

/// mDNS multicasts on every interface it sees: it may only run in a network namespace a test
/// created, never in the parent's (the machine's own). The parent names its namespace in
/// `PROCGROUPS_CHILD_PARENT_NETNS`.
fn assert_in_private_netns(label: &str) {
    let parent = env(ENV_PARENT_NETNS)
        .unwrap_or_else(|| panic!("{label}: mDNS asked for but {ENV_PARENT_NETNS} is not set"));
    let mine = netns_id();
    assert_ne!(
        mine, parent,
        "{label}: refusing to run mDNS in the parent's network namespace"
    );
}

/// The identity of the caller's network namespace, e.g. `net:[4026531840]`.
fn netns_id() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .expect("read /proc/self/ns/net")
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------------------------
// Parent side.

/// How to start a child node.
pub struct ChildSpec {
    /// A name for messages.
    pub label: String,
    pub listen: Multiaddr,
    pub dial: Vec<Multiaddr>,
    /// A fixed identity; default a fresh one.
    pub keypair: Option<Keypair>,
    /// How many processes join [`GROUP`].
    pub processes: usize,
    pub node_down_grace: Duration,
    pub mdns: bool,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

impl ChildSpec {
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            listen: "/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"),
            dial: Vec::new(),
            keypair: None,
            processes: 1,
            node_down_grace: Duration::from_secs(2),
            mdns: false,
            netns: None,
        }
    }

    /// A child on the host `ns` of a [`super::netns::Lan`]: inside that network namespace,
    /// listening on every interface, mDNS on (the only place a test turns it on).
    pub fn on_host(label: impl Into<String>, ns: &str) -> Self {
        Self {
            listen: "/ip4/0.0.0.0/tcp/0".parse().expect("multiaddr"),
            mdns: true,
            netns: Some(ns.to_owned()),
            ..Self::new(label)
        }
    }
}

/// A running child node. Dropping it kills the OS process (SIGKILL) and reaps it, also when
/// the test panics.
pub struct Child {
    pub label: String,
    pub peer_id: PeerId,
    pub addrs: Vec<Multiaddr>,
    process: ChildProcess,
    lines: Lines,
    seq: u64,
}

impl Child {
    /// Starts a child and waits until its processes have joined.
    pub fn spawn(spec: ChildSpec) -> Child {
        let exe = std::env::current_exe().expect("current_exe");
        let mut command = match &spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        command
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(ENV_LABEL, &spec.label)
            .env(ENV_LISTEN, spec.listen.to_string())
            .env(ENV_DIAL, join(&spec.dial))
            .env(
                ENV_KEY,
                spec.keypair.as_ref().map_or(String::new(), |k| {
                    to_hex(&k.to_protobuf_encoding().expect("encode keypair"))
                }),
            )
            .env(ENV_PROCS, spec.processes.to_string())
            .env(ENV_GRACE_MS, spec.node_down_grace.as_millis().to_string())
            .env(ENV_MDNS, if spec.mdns { "1" } else { "0" })
            .env(ENV_PARENT_NETNS, netns_id());
        let (process, lines) = ChildProcess::with_lines(spec.label.clone(), command)
            .unwrap_or_else(|e| panic!("spawn: {e}"));
        let mut child = Child {
            label: spec.label,
            peer_id: PeerId::random(),
            addrs: Vec::new(),
            // A test's child gets no chance to say goodbye: killed at once.
            process: process.exit_grace(Duration::ZERO),
            lines,
            seq: 0,
        };
        // The harness prints `test child_node_entry_point ... ` with no newline before the
        // child's first line: the tag may be anywhere in a line.
        let ready = child.next_line(READY_TIMEOUT, "its ready line");
        let mut words = ready.split_whitespace();
        assert_eq!(words.next(), Some("ready"), "{}: {ready:?}", child.label);
        child.peer_id = words
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{}: no peer id in {ready:?}", child.label));
        child.addrs = words.map(|a| a.parse().expect("listen address")).collect();
        child
    }

    /// The next line of the protocol (after its tag).
    fn next_line(&mut self, timeout: Duration, what: &str) -> String {
        match self.lines.tagged(TAG, timeout) {
            Ok(line) => line,
            Err(NoLine::TimedOut) => panic!("{}: no {what} within {timeout:?}", self.label),
            Err(NoLine::Closed) => {
                // Its stdout closed: it is exiting, or has exited.
                let deadline = Instant::now() + Duration::from_secs(1);
                let mut status = self.process.try_wait();
                while status.is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                    status = self.process.try_wait();
                }
                panic!("{}: exited before {what}: {status:?}", self.label)
            }
        }
    }

    /// Sends a request and returns the items of its answer.
    fn request(&mut self, command: &str) -> Vec<String> {
        self.seq += 1;
        let seq = self.seq.to_string();
        self.process
            .send(&format!("{seq} {command}"))
            .unwrap_or_else(|e| panic!("{}: write {command:?}: {e}", self.label));
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left, &format!("answer to {command:?}"));
            let mut words = line.split_whitespace();
            if words.next() == Some("=") && words.next() == Some(seq.as_str()) {
                return words.map(str::to_owned).collect();
            }
        }
    }

    /// Every member slot of `group` as this child's node sees it, sorted.
    pub fn members(&mut self, group: &str) -> Vec<Pid> {
        self.pids(&format!("members {group}"))
    }

    /// The slots of `group` held by this child's own processes, sorted.
    pub fn local_members(&mut self, group: &str) -> Vec<Pid> {
        self.pids(&format!("local {group}"))
    }

    /// The peers this child's node is connected to.
    /// Where others can reach the child ([`Node::external_addrs`]).
    pub fn external_addrs(&mut self) -> Vec<Multiaddr> {
        self.request("external")
            .iter()
            .map(|a| a.parse().expect("multiaddr"))
            .collect()
    }

    /// How the child reaches `peer` ([`Node::reach`]).
    pub fn reach(&mut self, peer: PeerId) -> procgroups::Reach {
        match self.request(&format!("reach {peer}")).as_slice() {
            [r] if r == "Direct" => procgroups::Reach::Direct,
            [r] if r == "Relayed" => procgroups::Reach::Relayed,
            [r] if r == "Unreached" => procgroups::Reach::Unreached,
            other => panic!("{}: unexpected answer to reach: {other:?}", self.label),
        }
    }

    pub fn peers(&mut self) -> Vec<PeerId> {
        self.request("peers")
            .iter()
            .map(|p| p.parse().expect("peer id"))
            .collect()
    }

    fn pids(&mut self, command: &str) -> Vec<Pid> {
        self.request(command)
            .iter()
            .map(|p| p.parse().expect("pid"))
            .collect()
    }

    /// `Node::listen_addrs()` now.
    pub fn listen_addrs(&mut self) -> Vec<Multiaddr> {
        self.request("addrs")
            .iter()
            .map(|a| a.parse().expect("multiaddr"))
            .collect()
    }

    /// Its first process broadcasts `text` (one word) to [`GROUP`]; returns the slots
    /// targeted.
    pub fn broadcast(&mut self, text: &str) -> usize {
        assert_one_word(text);
        let answer = self.request(&format!("broadcast {text}"));
        answer
            .first()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: broadcast answered {answer:?}", self.label))
    }

    /// Its first process sends `text` (one word) to `to`.
    pub fn send(&mut self, to: &Pid, text: &str) {
        assert_one_word(text);
        self.request(&format!("send {to} {text}"));
    }

    /// What its first process received under [`TOPIC`] so far, in order: (sender, text).
    pub fn received(&mut self) -> Vec<(Pid, String)> {
        self.request("received")
            .iter()
            .map(|item| {
                let (from, text) = item
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{}: bad received item {item:?}", self.label));
                (from.parse().expect("pid"), text.to_owned())
            })
            .collect()
    }

    /// The texts its first process received from `from`, in order.
    pub fn received_from(&mut self, from: &Pid) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|(f, _)| f == from)
            .map(|(_, text)| text)
            .collect()
    }

    /// Every one of its processes leaves [`GROUP`].
    pub fn leave(&mut self) {
        self.request("leave");
    }

    /// Every one of its processes joins [`GROUP`] again.
    pub fn join(&mut self) {
        self.request("join");
    }

    /// `Node::shutdown()`, then the child exits by itself (status 0, checked).
    pub fn shutdown(&mut self) {
        self.request("shutdown");
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let status = loop {
            if let Some(status) = self.process.try_wait() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: still running {REPLY_TIMEOUT:?} after its shutdown",
                self.label
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            status.success(),
            "{}: exited with {status} after shutdown",
            self.label
        );
    }

    /// SIGKILL, then reap: the node gets no chance to say goodbye.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// `Ok` when each child sees exactly its expected members of [`GROUP`]; `Err` says which do
/// not, what they see and whom they are connected to.
pub fn each_sees<'a, P: AsRef<[Pid]>>(
    children: impl IntoIterator<Item = (&'a mut Child, P)>,
) -> Result<(), String> {
    let mut wrong = Vec::new();
    for (child, want) in children {
        let want = want.as_ref();
        let members = child.members(GROUP);
        if members != want {
            let peers = child.peers();
            wrong.push(format!(
                "{} sees {} members, wants {}: {members:?} (peers {peers:?})",
                child.label,
                members.len(),
                want.len()
            ));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// `Ok` when every child sees exactly `expected` as the members of [`GROUP`].
pub fn all_see<'a>(
    children: impl IntoIterator<Item = &'a mut Child>,
    expected: &'a [Pid],
) -> Result<(), String> {
    each_sees(children.into_iter().map(|c| (c, expected)))
}

/// Sorted union of pid lists.
pub fn union(lists: &[&[Pid]]) -> Vec<Pid> {
    let mut all: Vec<Pid> = lists.iter().flat_map(|l| l.iter().copied()).collect();
    all.sort();
    all
}

fn assert_one_word(text: &str) {
    assert!(
        !text.is_empty() && !text.contains(char::is_whitespace) && !text.contains('='),
        "a message of the line protocol is one word without '=': {text:?}"
    );
}

fn join(addrs: &[Multiaddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd-length hex");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}
