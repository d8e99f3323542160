//! A terminal for the tests that drive a program as a person would (`chat.rs`): the program
//! runs in a tmux session on a private server (`tmux -L <socket>`, no config file), the test
//! types with `send-keys` and reads the screen with `capture-pane`.
//!
//! Every wait is on a condition of the screen, polled up to [`WAIT`]. The server is killed
//! when the [`Tmux`] drops, also when a test fails, and a failing test prints the screen and
//! its scrollback. The pane stays after the program exits (`remain-on-exit`), so its last
//! lines and its exit status can be read.

use std::ffi::OsStr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The longest wait for any one condition of the screen.
pub const WAIT: Duration = Duration::from_secs(20);
/// How often a wait looks at the screen again.
const POLL: Duration = Duration::from_millis(50);

/// The rows of a screen, as `capture-pane -p` prints them (trailing spaces trimmed).
#[derive(Debug, Clone)]
pub struct Screen {
    pub rows: Vec<String>,
}

impl Screen {
    /// The last row that is not blank, with its index: where the cursor's line is in a
    /// program that prints above its prompt.
    pub fn last(&self) -> Option<(usize, &str)> {
        self.rows
            .iter()
            .enumerate()
            .rev()
            .find(|(_, row)| !row.trim().is_empty())
            .map(|(at, row)| (at, row.as_str()))
    }

    /// The text of the last row that is not blank ("" on an empty screen).
    pub fn last_row(&self) -> &str {
        self.last().map_or("", |(_, row)| row)
    }

    /// The index of the first row that is exactly `row`.
    pub fn find(&self, row: &str) -> Option<usize> {
        self.rows.iter().position(|r| r == row)
    }

    /// How many rows contain `text`.
    pub fn count(&self, text: &str) -> usize {
        self.rows.iter().filter(|r| r.contains(text)).count()
    }
}

impl std::fmt::Display for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for row in &self.rows {
            writeln!(f, "|{row}")?;
        }
        Ok(())
    }
}

/// A tmux server of its own running one program in a pane of a fixed size.
pub struct Tmux {
    socket: String,
    name: String,
}

impl Tmux {
    /// Starts `program args` in a detached session of `columns` x `rows`, on a server with a
    /// socket no other test uses. Fails the test when tmux is missing (`.ci/run` installs it).
    pub fn start(
        name: &str,
        columns: u16,
        rows: u16,
        program: impl AsRef<OsStr>,
        args: &[&str],
    ) -> Tmux {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let socket = format!(
            "procgroups-test-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let tmux = Tmux {
            socket,
            name: name.to_owned(),
        };
        let mut command = tmux.command();
        command
            .args(["new-session", "-d", "-s", name, "-x"])
            .arg(columns.to_string())
            .arg("-y")
            .arg(rows.to_string())
            .arg(program)
            .args(args)
            // The next command of the same invocation: the pane stays once the program exits.
            .args([";", "set-option", "-t", name, "remain-on-exit", "on"]);
        tmux.run(command, "start the session");
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        // The server is started by the first command, and its programs inherit this
        // environment: no RUST_LOG lines on the screen.
        command
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .env_remove("RUST_LOG");
        command
    }

    fn run(&self, mut command: Command, what: &str) -> Output {
        let out = command.output().unwrap_or_else(|e| {
            panic!(
                "{}: cannot run tmux to {what} ({e}); is tmux installed?",
                self.name
            )
        });
        assert!(
            out.status.success(),
            "{}: tmux failed to {what} ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Presses keys, by tmux's names (`Enter`, `Up`, `C-d`, `C-u`).
    pub fn keys(&self, keys: &[&str]) {
        let mut command = self.command();
        command.args(["send-keys", "-t", &self.name]).args(keys);
        self.run(command, &format!("press {keys:?}"));
    }

    /// Types `text` as it is (`send-keys -l`), without pressing Enter.
    pub fn type_text(&self, text: &str) {
        let mut command = self.command();
        command.args(["send-keys", "-t", &self.name, "-l", text]);
        self.run(command, "type text");
    }

    fn capture(&self, from: Option<&str>) -> Screen {
        let mut command = self.command();
        command.args(["capture-pane", "-p", "-t", &self.name]);
        if let Some(from) = from {
            command.args(["-S", from]);
        }
        let out = self.run(command, "capture the pane");
        Screen {
            rows: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect(),
        }
    }

    /// The visible screen.
    pub fn screen(&self) -> Screen {
        self.capture(None)
    }

    /// The scrollback and the screen.
    pub fn history(&self) -> Screen {
        self.capture(Some("-"))
    }

    /// Polls the screen until `done` holds (up to [`WAIT`]) and returns that screen.
    pub fn wait(&self, what: &str, done: impl Fn(&Screen) -> bool) -> Screen {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} on the screen within {WAIT:?}; the screen:\n{screen}",
                self.name
            );
            std::thread::sleep(POLL); // the poll's pace, not a synchronisation
        }
    }

    /// The exit status of the program, once it has exited; 128 + the signal's number when a
    /// signal killed it, as a shell reports it.
    ///
    /// A pane can be dead (its terminal closed) before tmux has its status: tmux 3.3 built
    /// with libutempter puts utempter's own SIGCHLD handler in while it removes the pane's
    /// utmp record on the terminal's close, and a program that exits then is never reaped
    /// (a known tmux bug). Sending the server SIGCHLD again makes it reap the program.
    pub fn exit_status(&self) -> Option<i32> {
        let mut command = self.command();
        command.args([
            "display-message",
            "-p",
            "-t",
            &self.name,
            "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}:#{pid}",
        ]);
        let out = self.run(command, "read the pane's state");
        let state = String::from_utf8_lossy(&out.stdout);
        match state.trim().split(':').collect::<Vec<_>>()[..] {
            ["1", "", "", server] => {
                // Best effort: the next look at the pane tells whether it worked.
                Command::new("kill")
                    .args(["-s", "CHLD", server])
                    .status()
                    .ok();
                None
            }
            ["1", "", signal, _] => signal.parse::<i32>().ok().map(|signal| 128 + signal),
            ["1", status, _, _] => status.parse().ok(),
            _ => None,
        }
    }

    /// Waits (up to [`WAIT`]) for the program to exit; its exit status.
    pub fn wait_exit(&self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the program still runs after {WAIT:?}; the screen:\n{}",
                self.name,
                self.screen()
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Not `history`, which would panic again if tmux failed.
            let mut capture = self.command();
            capture.args(["capture-pane", "-p", "-S", "-", "-t", &self.name]);
            if let Ok(out) = capture.output() {
                eprintln!(
                    "---- the terminal of {} ----\n{}",
                    self.name,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        // The server and its program go; an already dead server is no failure.
        self.command().arg("kill-server").output().ok();
    }
}
