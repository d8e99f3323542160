//! The chat example (`examples/chat/`) as its users run it: each user is an OS process of
//! the example's binary; the tests write commands to their stdin and read their stdout.
//!
//! - Over loopback, with mDNS off and explicit dials: a room line crosses, `/who` and
//!   `/rooms` list everyone, `/msg` reaches its target only, joins and leaves of rooms show at
//!   the others, nicks are unique (at start and on `/nick`), a scope file without the chat's
//!   scopes is refused, and quitting (end of input, Ctrl-C, `/quit`) shows as a leave at the
//!   others at once (the goodbye), well before `node_down_grace`.
//! - On a LAN of three network namespaces (see `support::netns`), with mDNS on and nothing to
//!   dial: the users find each other by mDNS alone, and the same checks pass. Run as root,
//!   these tests make the namespaces themselves; run by anyone else, they run inside a user
//!   namespace (`support::netns::as_root`).
//!
//! mDNS multicasts on every interface, so a chat without `--no-mdns` only ever runs inside a
//! namespace made by the test ([`Place::Host`]); elsewhere ([`Place::Loopback`]) `--no-mdns`
//! is always added.
//!
//! The binary is found beside this test's (`target/<profile>/examples/chat`); the test makes
//! sure it is up to date with `cargo build --example chat` (see [`chat_binary`]). Every child
//! is killed when its handle drops, also when a test fails, and a failing test prints every
//! child's output.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::netns::{Lan, as_root};

/// The longest wait for any one condition.
const WAIT: Duration = Duration::from_secs(20);
/// The chat's `node_down_grace` (built in, and in `examples/procgroups.toml`).
const NODE_DOWN_GRACE: Duration = Duration::from_secs(3);
/// A user who quits must be seen leaving within this: the goodbye, not the grace.
const PROMPT: Duration = Duration::from_millis(1500);
/// The longest a LAN test may take inside a user namespace (`support::netns::as_root`): its
/// conversation is a few dozen waits, each far shorter than [`WAIT`] when all is well.
const LIMIT: Duration = Duration::from_secs(180);

/// The chat example's binary, beside this test's binary (`target/<profile>/examples/chat`).
///
/// `cargo test` builds the examples before it runs the tests, but `cargo test --test chat`
/// does not: so the first call runs `cargo build --example chat` for this test's target
/// directory and profile (quick when the binary is fresh; cargo does not hold its build lock
/// while tests run).
fn chat_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_chat).clone()
}

fn build_chat() -> PathBuf {
    let me = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/chat-<hash> -> target/<profile>/examples/chat
    let (profile_dir, target_dir) = me
        .parent()
        .and_then(Path::parent)
        .and_then(|profile| Some((profile, profile.parent()?)))
        .unwrap_or_else(|| panic!("unexpected test binary location {}", me.display()));
    let bin = profile_dir
        .join("examples")
        .join(format!("chat{}", std::env::consts::EXE_SUFFIX));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut build = Command::new(cargo);
    // What cargo set for this test binary describes the test, not the build to run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || ["CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&&*name)
        {
            build.env_remove(&*name);
        }
    }
    build
        .args(["build", "--quiet", "--example", "chat", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            build.arg("--release");
        }
        Some(profile) => {
            build.args(["--profile", profile]);
        }
        None => {}
    }
    let started = Instant::now();
    let out = build
        .output()
        .unwrap_or_else(|e| panic!("cannot run {build:?}: {e}"));
    assert!(
        out.status.success(),
        "{build:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bin.is_file(),
        "the chat example is not at {} after {build:?}",
        bin.display()
    );
    eprintln!("chat example checked/built in {:?}", started.elapsed());
    bin
}

/// Where a chat runs.
enum Place<'a> {
    /// In the test's own network namespace: mDNS always off.
    Loopback,
    /// In a host namespace of `lan` (`ip netns exec`): mDNS as the arguments say.
    Host(&'a Lan, &'a str),
}

/// Everything a child printed, stdout and stderr (`[stderr] ` lines), in order.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Log {
    fn push(&self, line: String) {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
        self.grew.notify_all();
    }

    fn len(&self) -> usize {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first line from index `from` on that `pred` accepts, waiting up to `timeout` for it.
    fn find(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = from;
        loop {
            while next < lines.len() {
                if pred(&lines[next]) {
                    return Some((next, lines[next].clone()));
                }
                next += 1;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = self
                .grew
                .wait_timeout(lines, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// One chat user: the example's process. Dropping it kills the process (SIGKILL) and reaps
/// it; during a panic it prints what the process printed.
struct User {
    nick: String,
    process: std::process::Child,
    stdin: Option<ChildStdin>,
    log: Arc<Log>,
    /// The addresses it printed (`* listening on …`).
    addrs: Vec<String>,
}

impl User {
    /// Starts `chat --nick <nick> <args>` and waits for its ready line.
    fn join(nick: &str, args: &[&str], place: Place<'_>) -> User {
        let mut user = User::start(nick, args, place);
        let ready = format!("* {nick} is in lobby");
        user.wait_for(0, &format!("its ready line {ready:?}"), |l| l == ready);
        user.addrs = user
            .log
            .all()
            .iter()
            .filter_map(|l| l.strip_prefix("* listening on "))
            .map(str::to_owned)
            .collect();
        assert!(!user.addrs.is_empty(), "{nick}: no address printed");
        user
    }

    /// Starts `chat --nick <nick> <args>` without waiting.
    fn start(nick: &str, args: &[&str], place: Place<'_>) -> User {
        let bin = chat_binary();
        let mut command = match place {
            Place::Loopback => {
                let mut c = Command::new(&bin);
                c.arg("--no-mdns"); // never multicast from the machine's own namespace
                c
            }
            Place::Host(lan, ns) => {
                assert!(
                    lan.has_host(ns),
                    "{ns} is not a namespace of the test's LAN"
                );
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
        };
        command
            .args(["--nick", nick])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = command
            .spawn()
            .unwrap_or_else(|e| panic!("{nick}: cannot start {command:?}: {e}"));
        let log = Arc::new(Log::default());
        let stdout = process.stdout.take().expect("piped stdout");
        let stderr = process.stderr.take().expect("piped stderr");
        read_lines(stdout, log.clone(), "");
        read_lines(stderr, log.clone(), "[stderr] ");
        User {
            nick: nick.to_owned(),
            stdin: process.stdin.take(),
            process,
            log,
            addrs: Vec::new(),
        }
    }

    /// Types a line.
    fn send(&mut self, line: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{}: stdin is closed", self.nick));
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: cannot type {line:?}: {e}", self.nick));
    }

    /// Where the output is now: [`wait_for`](Self::wait_for) from here sees only what comes
    /// next.
    fn mark(&self) -> usize {
        self.log.len()
    }

    /// Waits (up to [`WAIT`]) for a line from index `from` on that `pred` accepts.
    fn wait_for(&self, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> (usize, String) {
        self.log.find(from, WAIT, pred).unwrap_or_else(|| {
            let ended = if self.printed(EOF_STDOUT) {
                "; its output has ended"
            } else {
                ""
            };
            panic!("{}: no {what} within {WAIT:?}{ended}", self.nick)
        })
    }

    /// Waits for exactly `line` from index `from` on.
    fn expect(&self, from: usize, line: &str) -> usize {
        self.wait_for(from, &format!("{line:?}"), |l| l == line).0
    }

    /// Whether any line so far contains `text`.
    fn printed(&self, text: &str) -> bool {
        self.log.all().iter().any(|l| l.contains(text))
    }

    /// Sends `command` until its answer satisfies `done`, polling every 50 ms for up to
    /// [`WAIT`]. The answer ends with the first line starting with `last` and is made of the
    /// lines since the command that `part` accepts (other lines may come in between).
    fn ask_until(
        &mut self,
        command: &str,
        last: &str,
        part: impl Fn(&str) -> bool,
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) {
        let deadline = Instant::now() + WAIT;
        loop {
            let mark = self.mark();
            self.send(command);
            let (end, _) = self.wait_for(mark, &format!("the answer to {command}"), |l| {
                l.starts_with(last)
            });
            let answer: Vec<String> = self.log.all()[mark..=end]
                .iter()
                .filter(|l| part(l))
                .cloned()
                .collect();
            if done(&answer) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {command} never showed {what} within {WAIT:?}; last answer: {answer:?}",
                self.nick
            );
            std::thread::sleep(Duration::from_millis(50)); // the poll's pace, not a synchronisation
        }
    }

    /// Polls `/who room` until it is `* room: <nicks>`.
    fn who_until(&mut self, room: &str, nicks: &[&str]) {
        let expected = format!("* {room}: {}", nicks.join(", "));
        let prefix = format!("* {room}: ");
        self.ask_until(
            &format!("/who {room}"),
            &prefix,
            |l| l.starts_with(&prefix),
            &format!("{expected:?}"),
            |answer| answer == [expected.as_str()],
        );
    }

    /// Polls `/rooms` until it is `rooms` (one `* room (n)` line each; the last is `lobby`).
    fn rooms_until(&mut self, rooms: &[&str]) {
        self.ask_until(
            "/rooms",
            "* lobby (",
            |l| l.starts_with("* ") && l.ends_with(')') && l.contains(" ("),
            &format!("{rooms:?}"),
            |answer| answer == rooms,
        );
    }

    /// Ends the input (Ctrl-D).
    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Ctrl-C.
    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.process.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("{}: cannot run kill: {e}", self.nick));
        assert!(
            status.success(),
            "{}: kill -INT failed: {status}",
            self.nick
        );
    }

    fn status(&mut self) -> Option<ExitStatus> {
        self.process.try_wait().ok().flatten()
    }

    /// Waits (up to [`WAIT`]) for the process to exit, polling every 20 ms.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.status() {
                // The readers may still hold the last lines: wait for the end of both streams.
                self.log.find(0, WAIT, |l| l == EOF_STDOUT);
                self.log.find(0, WAIT, |l| l == EOF_STDERR);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: still running {WAIT:?} after it was asked to quit",
                self.nick
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const EOF_STDOUT: &str = "<end of stdout>";
const EOF_STDERR: &str = "[stderr] <end of stderr>";

/// Copies the lines of `stream` to `log` (with `prefix`) on a thread, then an end marker.
fn read_lines(stream: impl std::io::Read + Send + 'static, log: Arc<Log>, prefix: &'static str) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    log.push(format!("{prefix}{}", line.trim_end_matches(['\n', '\r'])));
                }
            }
        }
        log.push(format!(
            "{prefix}<end of {}>",
            if prefix.is_empty() {
                "stdout"
            } else {
                "stderr"
            }
        ));
    });
}

impl Drop for User {
    fn drop(&mut self) {
        // It may have exited already; either way it is gone after the wait.
        self.process.kill().ok();
        self.process.wait().ok();
        if std::thread::panicking() {
            eprintln!("---- output of {} ----", self.nick);
            for line in self.log.all() {
                eprintln!("{line}");
            }
        }
    }
}

/// What every test checks once alice, bob and carol run and are connected somehow: they see
/// each other, talk in the lobby, send a direct message, join and leave a room; then carol
/// quits (end of input) and the others see it at once.
fn converse(alice: &mut User, bob: &mut User, carol: &mut User) {
    // /who lists the three everywhere: membership and nicks have converged.
    for user in [&mut *alice, &mut *bob, &mut *carol] {
        user.who_until("lobby", &["alice", "bob", "carol"]);
    }

    // A line said in the lobby reaches everyone, the sender included.
    let marks = [alice.mark(), bob.mark(), carol.mark()];
    alice.send("hello from alice");
    for (user, mark) in [&*alice, &*bob, &*carol].into_iter().zip(marks) {
        user.expect(mark, "[lobby] <alice> hello from alice");
    }

    // A direct message reaches bob only. Messages from one process to another arrive in
    // order, so once carol has alice's next lobby line, she would have had the message too.
    let marks = [alice.mark(), bob.mark(), carol.mark()];
    alice.send("/msg bob psst, bob");
    alice.expect(marks[0], "[dm -> bob] <alice> psst, bob");
    bob.expect(marks[1], "[dm] <alice> psst, bob");
    alice.send("after the secret");
    bob.expect(marks[1], "[lobby] <alice> after the secret");
    carol.expect(marks[2], "[lobby] <alice> after the secret");
    assert!(!carol.printed("psst"), "carol saw bob's direct message");

    // Joins and leaves of a room show at the others in it.
    let mark = carol.mark();
    carol.send("/join den");
    carol.expect(mark, "* carol is in den");
    let (bob_mark, carol_mark) = (bob.mark(), carol.mark());
    bob.send("/join den");
    bob.expect(bob_mark, "* bob is in den");
    carol.expect(carol_mark, "* bob joined den");
    alice.rooms_until(&["* den (2)", "* lobby (3)"]);
    bob.who_until("den", &["bob", "carol"]);
    let (bob_mark, carol_mark) = (bob.mark(), carol.mark());
    bob.send("/leave den");
    bob.expect(bob_mark, "* you left den; now in lobby");
    carol.expect(carol_mark, "* bob left den");
    // bob talks in the lobby again; carol's current room is den.
    let (alice_mark, carol_mark) = (alice.mark(), carol.mark());
    bob.send("back in the lobby");
    alice.expect(alice_mark, "[lobby] <bob> back in the lobby");
    carol.expect(carol_mark, "[lobby] <bob> back in the lobby");
    carol.send("alone in the den");
    carol.expect(carol_mark, "[den] <carol> alone in the den");
    assert!(
        !alice.printed("joined den") && !alice.printed("left den"),
        "alice is not in den and must not see its joins and leaves"
    );
    for user in [&*alice, &*bob, &*carol] {
        assert!(
            !user.printed(&format!("* {} joined", user.nick)),
            "{} was shown its own join",
            user.nick
        );
    }

    // carol quits (Ctrl-D): the others see her leave at once.
    let (alice_mark, bob_mark) = (alice.mark(), bob.mark());
    let quit = Instant::now();
    carol.close_stdin();
    alice.expect(alice_mark, "* carol left lobby");
    bob.expect(bob_mark, "* carol left lobby");
    let took = quit.elapsed();
    assert!(
        took < PROMPT,
        "carol's leave took {took:?} to show (node_down_grace is {NODE_DOWN_GRACE:?}): no goodbye?"
    );
    eprintln!("carol's leave seen by alice and bob in {took:?}");
    let status = carol.wait_exit();
    assert!(status.success(), "carol exited with {status}");
}

#[test]
fn three_users_over_loopback() {
    let started = Instant::now();
    let local = ["--listen", "/ip4/127.0.0.1/tcp/0"];
    let mut alice = User::join("alice", &local, Place::Loopback);
    let first = alice.addrs[0].clone();
    assert!(
        first.starts_with("/ip4/127.0.0.1/tcp/") && first.contains("/p2p/"),
        "alice's address {first:?}"
    );
    let dial = |more: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = local.iter().map(|s| s.to_string()).collect();
        args.extend(["--dial".to_owned(), first.clone()]);
        args.extend(more.iter().map(|s| s.to_string()));
        args
    };
    let bob_args = dial(&[]);
    let mut bob = User::join("bob", &strs(&bob_args), Place::Loopback);
    // carol reads her scopes from the example's file.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/procgroups.toml");
    let carol_args = dial(&["--config", config.to_str().expect("a UTF-8 path")]);
    let mut carol = User::join("carol", &strs(&carol_args), Place::Loopback);
    eprintln!("three users ready in {:?}", started.elapsed());

    // A nick that is taken: refused at start (the chat waits for the peer it dials)...
    let mut impostor = User::start("alice", &strs(&dial(&[])), Place::Loopback);
    let status = impostor.wait_exit();
    assert!(!status.success(), "a second alice started");
    assert!(
        impostor.printed("[stderr] ! the nick alice is taken"),
        "no clear error for a taken nick"
    );
    drop(impostor);

    // ... and on /nick, which keeps the old nick.
    let mark = bob.mark();
    bob.send("/nick alice");
    bob.expect(mark, "! the nick alice is taken; you are still bob");

    // A scope file without the chat's scopes is refused with a clear message.
    let dir = std::env::temp_dir().join(format!("procgroups-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let partial = dir.join("rooms-only.toml");
    std::fs::write(
        &partial,
        "namespace = \"chat\"\n[[entries]]\nname = \"rooms\"\nkind = \"pg.scope\"\n",
    )
    .expect("write a scope file");
    let mut misconfigured = User::start(
        "dave",
        &[
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--config",
            partial.to_str().expect("a UTF-8 path"),
        ],
        Place::Loopback,
    );
    let status = misconfigured.wait_exit();
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("cannot remove {}: {e}", dir.display());
    }
    assert!(!status.success(), "the chat ran without chat:users");
    assert!(
        misconfigured.printed("defines no scope chat:users"),
        "no clear error for a missing scope"
    );
    drop(misconfigured);

    converse(&mut alice, &mut bob, &mut carol);

    // bob renames himself: the others follow.
    let (alice_mark, bob_mark) = (alice.mark(), bob.mark());
    bob.send("/nick robert");
    bob.expect(bob_mark, "* you are now robert");
    alice.expect(alice_mark, "* bob is now known as robert");
    alice.who_until("lobby", &["alice", "robert"]);
    bob.who_until("lobby", &["alice", "robert"]);

    // bob quits by Ctrl-C, alice by /quit.
    let mark = alice.mark();
    let quit = Instant::now();
    bob.interrupt();
    alice.expect(mark, "* robert left lobby");
    let took = quit.elapsed();
    assert!(took < PROMPT, "robert's leave took {took:?} to show");
    let status = bob.wait_exit();
    assert!(status.success(), "bob exited with {status} after Ctrl-C");
    alice.send("/quit");
    let status = alice.wait_exit();
    assert!(status.success(), "alice exited with {status} after /quit");
    eprintln!("whole test {:?}", started.elapsed());
}

#[test]
fn three_users_on_a_lan_find_each_other_by_mdns_alone() {
    chat_binary(); // built by this process, not inside the user namespace (see as_root)
    as_root(
        "three_users_on_a_lan_find_each_other_by_mdns_alone",
        LIMIT,
        three_users_on_a_lan,
    );
}

fn three_users_on_a_lan() {
    let started = Instant::now();
    let lan = Lan::create(3); // deletes the namespaces of dead earlier runs
    eprintln!("namespaces ready in {:?}", started.elapsed());
    {
        // Declared after the LAN: the users are killed before their namespaces go.
        let mut users: Vec<User> = ["alice", "bob", "carol"]
            .iter()
            .zip(&lan.hosts)
            .map(|(nick, ns)| User::start(nick, &[], Place::Host(&lan, ns)))
            .collect();
        for user in &users {
            let ready = format!("* {} is in lobby", user.nick);
            user.wait_for(0, "its ready line", |l| l == ready);
            assert!(
                user.printed("* listening on /ip4/10.77.0."),
                "{}: not listening on the LAN",
                user.nick
            );
        }
        eprintln!("three users ready in {:?}", started.elapsed());
        let [alice, bob, carol] = &mut users[..] else {
            unreachable!("three users")
        };
        converse(alice, bob, carol);
        for user in [&mut *alice, &mut *bob] {
            user.send("/quit");
            let status = user.wait_exit();
            assert!(status.success(), "{} exited with {status}", user.nick);
        }
        eprintln!("whole conversation {:?}", started.elapsed());
    }
    lan.delete();
}

/// The README's first command in three terminals of one machine: three chats on one host
/// (one network namespace with one LAN interface; mDNS ignores loopback) find each other by
/// mDNS with no flags.
#[test]
fn three_users_on_one_host_find_each_other_by_mdns_alone() {
    chat_binary();
    as_root(
        "three_users_on_one_host_find_each_other_by_mdns_alone",
        LIMIT,
        three_users_on_one_host,
    );
}

fn three_users_on_one_host() {
    let lan = Lan::create(1);
    {
        let host = &lan.hosts[0];
        let mut users: Vec<User> = ["alice", "bob", "carol"]
            .iter()
            .map(|nick| User::start(nick, &[], Place::Host(&lan, host)))
            .collect();
        for user in &users {
            let ready = format!("* {} is in lobby", user.nick);
            user.wait_for(0, "its ready line", |l| l == ready);
        }
        let [alice, bob, carol] = &mut users[..] else {
            unreachable!("three users")
        };
        converse(alice, bob, carol);
    }
    lan.delete();
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
