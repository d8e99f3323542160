//! The chat example (`examples/chat/`) as its users run it, for the tests that drive it
//! (`chat.rs`, `wan.rs`): each [`User`] is an OS process of the example's binary; the tests
//! write commands to its stdin and read its stdout.
//!
//! mDNS multicasts on every interface, so a chat without `--no-mdns` only ever runs inside a
//! namespace made by the test ([`Place::Host`], [`Place::Node`]); elsewhere
//! ([`Place::Loopback`]) `--no-mdns` is always added.
//!
//! The binary is found beside the test's (`target/<profile>/examples/chat`); [`chat_binary`]
//! makes sure it is up to date with `cargo build --example chat`. Every child is killed when
//! its handle drops, also when a test fails, and a failing test prints every child's output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::netns::Lan;
use super::topology::Topology;

/// The longest wait for any one condition.
pub const WAIT: Duration = Duration::from_secs(20);
/// The chat's `node_down_grace` (built in, and in `examples/procgroups.toml`).
pub const NODE_DOWN_GRACE: Duration = Duration::from_secs(3);
/// A user who quits must be seen leaving within this: the goodbye, not the grace.
pub const PROMPT: Duration = Duration::from_millis(1500);
/// The longest a LAN test may take inside a user namespace (`support::netns::as_root`): its
/// conversation is a few dozen waits, each far shorter than [`WAIT`] when all is well.
pub const LIMIT: Duration = Duration::from_secs(180);

/// The longest line the chat takes, in bytes (`MAX_LINE_BYTES` in `examples/chat/main.rs`).
pub const MAX_LINE_BYTES: usize = 4096;

/// The chat example's binary, beside this test's binary (`target/<profile>/examples/chat`).
///
/// `cargo test` builds the examples before it runs the tests, but `cargo test --test chat`
/// does not: so the first call runs `cargo build --example chat` for this test's target
/// directory and profile (quick when the binary is fresh; cargo does not hold its build lock
/// while tests run).
pub fn chat_binary() -> PathBuf {
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
pub enum Place<'a> {
    /// In the test's own network namespace: mDNS always off.
    Loopback,
    /// In a host namespace of `lan` (`ip netns exec`): mDNS as the arguments say.
    Host(&'a Lan, &'a str),
    /// In the namespace of a node of `topology` (its name, see [`Topology::ns`]): mDNS as the
    /// arguments say.
    Node(&'a Topology, &'a str),
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
pub struct User {
    pub nick: String,
    process: std::process::Child,
    stdin: Option<ChildStdin>,
    log: Arc<Log>,
    /// The addresses it printed (`* listening on …`).
    pub addrs: Vec<String>,
}

impl User {
    /// Starts `chat --nick <nick> <args>` and waits for its ready line.
    pub fn join(nick: &str, args: &[&str], place: Place<'_>) -> User {
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
    pub fn start(nick: &str, args: &[&str], place: Place<'_>) -> User {
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
            Place::Node(topology, name) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", topology.ns(name)]).arg(&bin);
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
    pub fn send(&mut self, line: &str) {
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
    pub fn mark(&self) -> usize {
        self.log.len()
    }

    /// Waits (up to [`WAIT`]) for a line from index `from` on that `pred` accepts.
    pub fn wait_for(
        &self,
        from: usize,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> (usize, String) {
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
    pub fn expect(&self, from: usize, line: &str) -> usize {
        self.wait_for(from, &format!("{line:?}"), |l| l == line).0
    }

    /// The first line so far that contains `text`, if any.
    pub fn line_with(&self, text: &str) -> Option<String> {
        self.log.all().into_iter().find(|l| l.contains(text))
    }

    /// Whether any line so far contains `text`.
    pub fn printed(&self, text: &str) -> bool {
        self.log.all().iter().any(|l| l.contains(text))
    }

    /// Sends `command` until its answer satisfies `done`, polling every 50 ms for up to
    /// [`WAIT`]. The answer ends with the first line starting with `last` and is made of the
    /// lines since the command that `part` accepts (other lines may come in between).
    pub fn ask_until(
        &mut self,
        command: &str,
        last: &str,
        part: impl Fn(&str) -> bool,
        what: &str,
        mut done: impl FnMut(&[String]) -> bool,
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

    /// Polls `/who room` until it lists `nicks`, in order (`* room: nick (joined
    /// HH:MM:SS UTC), …`); returns the answer.
    pub fn who_until(&mut self, room: &str, nicks: &[&str]) -> String {
        let prefix = format!("* {room}: ");
        let mut last = String::new();
        self.ask_until(
            &format!("/who {room}"),
            &prefix,
            |l| l.starts_with(&prefix),
            &format!("{nicks:?}"),
            |answer| match answer {
                [line] if who_nicks(line, room) == nicks => {
                    last = line.clone();
                    true
                }
                _ => false,
            },
        );
        last
    }

    /// Polls `/rooms` until it is `rooms` (one `* room (n)` line each; the last is `lobby`).
    pub fn rooms_until(&mut self, rooms: &[&str]) {
        self.ask_until(
            "/rooms",
            "* lobby (",
            |l| l.starts_with("* ") && l.ends_with(')') && l.contains(" ("),
            &format!("{rooms:?}"),
            |answer| answer == rooms,
        );
    }

    /// Ends the input (Ctrl-D).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Ctrl-C.
    pub fn interrupt(&self) {
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

    pub fn status(&mut self) -> Option<ExitStatus> {
        self.process.try_wait().ok().flatten()
    }

    /// Waits (up to [`WAIT`]) for the process to exit, polling every 20 ms.
    pub fn wait_exit(&mut self) -> ExitStatus {
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
pub fn converse(alice: &mut User, bob: &mut User, carol: &mut User) {
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
    // ... and alice is told once bob's node has acknowledged it.
    alice.expect(marks[0], "* delivered to bob");
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

/// The nicks of an answer to `/who room`, without their metadata (`alice (joined
/// 12:00:00 UTC)` is `alice`).
pub fn who_nicks(answer: &str, room: &str) -> Vec<String> {
    let Some(list) = answer.strip_prefix(&format!("* {room}: ")) else {
        return Vec::new();
    };
    list.split(", ")
        .map(|member| {
            member
                .split(" (joined ")
                .next()
                .unwrap_or(member)
                .to_owned()
        })
        .collect()
}

/// The arguments as `&str`s.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
