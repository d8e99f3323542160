//! Hosts on a LAN for the tests that run mDNS (`netns.rs`, `chat.rs`, `soak.rs`): Linux network
//! namespaces whose `eth0` are ports of one bridge, itself in a namespace of its own.
//!
//! mDNS ignores loopback, hence the veth interfaces. It must never run outside the namespaces
//! a test creates (it would multicast out of the machine's real interface): the tests start
//! mDNS only in processes they run with `ip netns exec` in one of [`Lan::hosts`].
//!
//! Making namespaces takes root. A test that makes a [`Lan`] runs its body through
//! [`as_root`]:
//! - as root, the body runs in the test process, and the namespaces are the machine's (`ip
//!   netns add`, under `/var/run/netns`);
//! - as anyone else, the test binary re-executes itself for that one test under `unshare
//!   --user --map-root-user --net --mount --pid --fork` ([`USERNS_FLAGS`]): there it is root of
//!   a user namespace of its own, with a network namespace (only `lo`), a pid namespace, and a
//!   private mount namespace in which a tmpfs is mounted on `/var/run/netns` (on `/var/run`
//!   when the machine has no `/var/run/netns`, hiding the rest of it from that test only), and
//!   the same body makes the same namespaces with the same `ip netns` commands, nested in the
//!   user namespace. The parent test forwards the output and fails if the re-executed test
//!   fails, or runs over the limit it is given (then it kills it).
//!
//! Where the kernel refuses unprivileged user namespaces (`kernel.unprivileged_userns_clone =
//! 0`, `user.max_user_namespaces = 0`, `kernel.apparmor_restrict_unprivileged_userns = 1`), a
//! test run by a user other than root fails, naming the refusal and the fix (run as root, or
//! allow the user namespaces); it never skips.
//!
//! Cleanup. As root, namespaces are `pgbr-<pid>-<n>` for the bridge and `pg<pid>-<n>-<i>` for
//! the hosts, `<pid>` being the test process's and `<n>` counting the LANs it made: a crashed
//! run's leftovers are recognised by a dead `<pid>` and deleted by the next [`Lan::create`].
//! Dropping the [`Lan`] deletes its namespaces, also when the test panics. In a user namespace
//! the same drop runs, and besides, nothing can be left behind: the namespaces, their veth
//! pairs, the bridge and the tmpfs that names them exist only as long as a process of the user
//! namespace does. The re-executed test exits when its parent test process goes (its stdin
//! closes; `unshare --kill-child` kills it if `unshare` itself is killed); it is the first
//! process of its pid namespace, so when it exits the kernel kills every process it left
//! there, then deletes the namespaces.
//!
//! Needs iproute2's `ip netns`, and for users other than root util-linux's `unshare` and
//! `mount`; without them the test fails (it does not skip).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
pub fn delete_netns(name: &str) {
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

/// Deletes the namespaces of earlier runs whose test process is gone: those of [`Lan`]s and
/// those of [`super::topology::Topology`]s.
pub fn delete_stale_namespaces() {
    for name in netns_list() {
        if let Some(pid) = owner_pid(&name).or_else(|| super::topology::owner_pid(&name))
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            eprintln!("deleting stale namespace {name}");
            delete_netns(&name);
        }
    }
}

pub fn effective_uid() -> u32 {
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
    /// Checks that the test runs as root (the machine's, or its user namespace's: see
    /// [`as_root`]), deletes stale namespaces of dead test processes,
    /// then makes a bridge `br0` in a namespace of its own and `count` host namespaces, each
    /// with `eth0` (10.77.0.<i>/24) whose veth peer is a port of the bridge.
    pub fn create(count: usize) -> Lan {
        assert_eq!(
            effective_uid(),
            0,
            "this test creates network namespaces: run its body through `netns::as_root`, \
             which runs it as root or inside a user namespace"
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

// ---------------------------------------------------------------------------------------------
// Root, or root of a user namespace.

/// What the unprivileged re-execution unshares: a user namespace in which the caller is root,
/// a network namespace (only `lo`), a mount namespace (for `/var/run/netns`), and a pid
/// namespace whose first process (`--fork`) is the re-executed test: when it exits, the kernel
/// kills every process left in the namespace.
pub const USERNS_FLAGS: [&str; 6] = [
    "--user",
    "--map-root-user",
    "--net",
    "--mount",
    "--pid",
    "--fork",
];

/// Set in the re-executed test process: the name of the test it runs in its user namespace.
const ENV_USERNS_TEST: &str = "PROCGROUPS_USERNS_TEST";
/// Printed by the re-executed test as its body starts, followed by the test's name: the
/// parent checks that the body ran (a wrong name would run no test and pass).
const USERNS_TAG: &str = "PGUSERNS running";
/// Where iproute2 names its network namespaces (its `NETNS_RUN_DIR`).
const NETNS_RUN_DIR: &str = "/var/run/netns";
/// After the re-executed test has exited, how long its output may take to arrive.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Runs `body`, the body of the test named `test` (its function's name), as root: directly
/// when the test process runs as root; otherwise in this test binary re-executed for `test`
/// alone inside a user namespace (see the module's documentation), where `body` runs again,
/// as root of that namespace. The parent fails if the re-executed test fails, does not run
/// `body`, or runs longer than `limit` (it is killed then); it fails at once, naming the cause
/// and the fix, if the kernel refuses the user namespace.
pub fn as_root(test: &str, limit: Duration, body: impl FnOnce()) {
    if let Some(name) = std::thread::current().name()
        && name != "main"
    {
        assert_eq!(name, test, "as_root is given the name of another test");
    }
    if std::env::var(ENV_USERNS_TEST).as_deref() == Ok(test) {
        assert_eq!(
            effective_uid(),
            0,
            "{test}: re-executed under `unshare {}` but not root of its user namespace",
            USERNS_FLAGS.join(" ")
        );
        mount_private_netns_dir();
        exit_when_parent_goes(test);
        println!("{USERNS_TAG} {test}");
        body();
    } else if effective_uid() == 0 {
        body();
    } else {
        run_in_user_namespace(test, limit);
    }
}

/// In the re-executed test: a tmpfs of this mount namespace only, for `ip netns` to name its
/// namespaces in (the machine's `/var/run` belongs to the real root).
fn mount_private_netns_dir() {
    let target = if Path::new(NETNS_RUN_DIR).is_dir() {
        NETNS_RUN_DIR
    } else {
        // `ip netns add` makes the directory, but may not in the machine's `/var/run`.
        Path::new(NETNS_RUN_DIR)
            .parent()
            .and_then(Path::to_str)
            .expect("the parent of NETNS_RUN_DIR")
    };
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0755", "procgroups-netns", target])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `mount` (util-linux): {e}"));
    assert!(
        out.status.success(),
        "mounting a tmpfs on {target} in the test's mount namespace failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// In the re-executed test: exits when stdin closes, which happens when the parent test
/// process is gone; the children exit in turn (their stdin closes), and the kernel deletes the
/// user namespace and everything in it.
fn exit_when_parent_goes(test: &str) {
    let test = test.to_owned();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        std::io::stdin().lock().read_to_end(&mut sink).ok();
        // Not `eprintln!`: it panics when stderr, read by the parent, is closed too.
        writeln!(
            std::io::stderr(),
            "{test}: the parent test process is gone (stdin closed): exiting"
        )
        .ok();
        std::process::exit(101);
    });
}

/// The values of the settings by which kernels refuse unprivileged user namespaces, for those
/// this kernel has.
fn userns_settings() -> Vec<String> {
    [
        "kernel/unprivileged_userns_clone",
        "user/max_user_namespaces",
        "kernel/apparmor_restrict_unprivileged_userns",
    ]
    .iter()
    .filter_map(|name| {
        let value = std::fs::read_to_string(format!("/proc/sys/{name}")).ok()?;
        Some(format!("{} = {}", name.replace('/', "."), value.trim()))
    })
    .collect()
}

/// Fails, naming the cause and the fix, unless this user may make the namespaces.
fn check_user_namespaces(test: &str) {
    let probe = format!("unshare {} true", USERNS_FLAGS.join(" "));
    let refused = match Command::new("unshare")
        .args(USERNS_FLAGS)
        .arg("true")
        .output()
    {
        Err(e) => format!("cannot run `unshare` (util-linux; install it): {e}"),
        Ok(out) if !out.status.success() => format!(
            "the kernel refuses unprivileged user namespaces: `{probe}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(_) => return,
    };
    let settings = userns_settings();
    panic!(
        "{test} makes network namespaces: run as root it makes them itself; run as uid {} (not \
         root) it runs inside a user namespace, but {refused}. Settings: {}. Fix: run the tests \
         as root, or allow unprivileged user namespaces (as root: `sysctl -w \
         kernel.unprivileged_userns_clone=1` where that setting exists, `sysctl -w \
         user.max_user_namespaces=10000` if it is 0, `sysctl -w \
         kernel.apparmor_restrict_unprivileged_userns=0` where AppArmor restricts them).",
        effective_uid(),
        if settings.is_empty() {
            "none of kernel.unprivileged_userns_clone, user.max_user_namespaces, \
             kernel.apparmor_restrict_unprivileged_userns"
                .to_owned()
        } else {
            settings.join(", ")
        }
    );
}

/// The parent side for a user other than root: runs `test` alone in this binary under
/// `unshare`, forwards its output (stdout and stderr, as lines) to this test's stderr, and
/// fails unless it ran `body` and passed within `limit`.
fn run_in_user_namespace(test: &str, limit: Duration) {
    check_user_namespaces(test);
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = Command::new("unshare");
    command
        .args(USERNS_FLAGS)
        // If `unshare` is killed, so is the test it runs (and with it its pid namespace).
        .args(["--kill-child", "--"])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ENV_USERNS_TEST, test)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut process = command
        .spawn()
        .unwrap_or_else(|e| panic!("{test}: cannot start {command:?}: {e}"));
    // Held until the end: its closing tells the re-executed test that this process is gone.
    let stdin = process.stdin.take();
    let (tx, lines) = mpsc::channel();
    forward_lines(process.stdout.take().expect("piped stdout"), tx.clone());
    forward_lines(process.stderr.take().expect("piped stderr"), tx);
    let marker = format!("{USERNS_TAG} {test}");
    let mut ran = false;
    let mut show = |line: String| {
        ran |= line.contains(&marker);
        eprintln!("{line}");
    };
    let status = loop {
        if let Some(status) = process.try_wait().expect("wait for unshare") {
            break status;
        }
        if started.elapsed() > limit {
            process.kill().ok();
            process.wait().ok();
            panic!(
                "{test} ran over its limit of {limit:?} inside its user namespace: killed \
                 (its output is above)"
            );
        }
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => show(line),
            // Its output is closed: only its exit is left to wait for.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    };
    // The last lines; children it left may hold the output open: not for long.
    let until = Instant::now() + OUTPUT_GRACE;
    while let Ok(line) = lines.recv_timeout(until.saturating_duration_since(Instant::now())) {
        show(line);
    }
    drop(stdin);
    assert!(
        status.success(),
        "{test} failed inside its user namespace (`unshare {}`): {status}; its output is above",
        USERNS_FLAGS.join(" ")
    );
    assert!(
        ran,
        "{test}: the re-executed test binary passed without running the test (no \
         {marker:?} line): is {test:?} the test's name?"
    );
    eprintln!(
        "{test} passed inside a user namespace in {:.1?}",
        started.elapsed()
    );
}

/// Sends the lines of `stream` to `tx` from a thread of their own.
fn forward_lines(stream: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
}
