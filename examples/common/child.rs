//! A program that runs its own executable as a child process and talks to it over the child's
//! stdin and stdout, one line a message: the cluster demo (`examples/cluster.rs`), the bench
//! (`examples/bench.rs`) and the multiprocess tests (`tests/support/child.rs`) share it. Each
//! keeps its own line protocol; this is only the process plumbing:
//!
//! - parent side: [`ChildProcess`] starts a command (usually [`own_command`]) with piped stdin
//!   and stdout and the parent's stderr, writes lines with [`ChildProcess::send`], and hands
//!   every line of the child's stdout to a reader thread of its own ([`Lines`] for blocking
//!   code, [`AsyncLines`] for async code, or any callback); dropping it closes the child's
//!   stdin, gives the child [`ChildProcess::exit_grace`] to exit, then kills and reaps it, so
//!   a child never outlives its parent's handle, also when the parent panics;
//! - child side: [`stdin_lines`] reads stdin on a thread of its own and exits the process
//!   when stdin closes, so a child never outlives its parent either.

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a dropped [`ChildProcess`] waits, by default, for its child to exit once its stdin
/// is closed, before it kills it.
pub const EXIT_GRACE: Duration = Duration::from_secs(3);

/// A command that runs this program's own executable with `args`.
pub fn own_command<I, S>(args: I) -> std::io::Result<Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(std::env::current_exe()?);
    command.args(args);
    Ok(command)
}

/// Why no line came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLine {
    /// None within the timeout.
    TimedOut,
    /// The child's stdout closed (it exited, or closed it) with nothing more to read.
    Closed,
}

impl std::fmt::Display for NoLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoLine::TimedOut => "no line within the timeout",
            NoLine::Closed => "its stdout closed",
        })
    }
}

impl std::error::Error for NoLine {}

/// A running child process. Dropping it closes the child's stdin, waits up to
/// [`ChildProcess::exit_grace`] for the child to exit, then kills (SIGKILL) and reaps it.
pub struct ChildProcess {
    name: String,
    process: std::process::Child,
    stdin: Option<ChildStdin>,
    exit_grace: Duration,
}

impl ChildProcess {
    /// Starts `command` (stdin and stdout piped, stderr the parent's) and passes each line of
    /// its stdout to `forward`, on a thread named `name`, then `None` once stdout closes.
    /// Reading stops early when `forward` returns `false`.
    pub fn spawn(
        name: impl Into<String>,
        mut command: Command,
        mut forward: impl FnMut(Option<String>) -> bool + Send + 'static,
    ) -> std::io::Result<ChildProcess> {
        let name = name.into();
        let mut process = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("{name}: {command:?}: {e}")))?;
        let stdin = process.stdin.take();
        let stdout = process.stdout.take().expect("stdout is piped");
        let child = ChildProcess {
            name: name.clone(),
            process,
            stdin,
            exit_grace: EXIT_GRACE,
        };
        std::thread::Builder::new().name(name).spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !forward(Some(line)) {
                    return;
                }
            }
            forward(None);
        })?;
        Ok(child)
    }

    /// [`ChildProcess::spawn`] with the lines read from blocking code.
    pub fn with_lines(
        name: impl Into<String>,
        command: Command,
    ) -> std::io::Result<(ChildProcess, Lines)> {
        let (tx, rx) = mpsc::channel();
        let child = Self::spawn(name, command, move |line| match line {
            Some(line) => tx.send(line).is_ok(),
            None => false,
        })?;
        Ok((child, Lines(rx)))
    }

    /// [`ChildProcess::spawn`] with the lines read from async code.
    pub fn with_async_lines(
        name: impl Into<String>,
        command: Command,
    ) -> std::io::Result<(ChildProcess, AsyncLines)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let child = Self::spawn(name, command, move |line| match line {
            Some(line) => tx.send(line).is_ok(),
            None => false,
        })?;
        Ok((child, AsyncLines(rx)))
    }

    /// How long dropping this waits for the child to exit by itself once its stdin is closed
    /// ([`EXIT_GRACE`] unless set); `Duration::ZERO` kills it at once.
    pub fn exit_grace(mut self, grace: Duration) -> Self {
        self.exit_grace = grace;
        self
    }

    /// The name given to [`ChildProcess::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `line` and a newline to the child's stdin, and flushes.
    pub fn send(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                format!("{}: stdin closed", self.name),
            )
        })?;
        writeln!(stdin, "{line}").and_then(|()| stdin.flush())
    }

    /// Closes the child's stdin: a child reading it with [`stdin_lines`] exits.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Whether the child has exited, and how (it is reaped then).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.process.try_wait().ok().flatten()
    }

    /// SIGKILL, then reap: the child gets no chance to do anything more. Nothing happens if
    /// it has already exited.
    pub fn kill(&mut self) {
        // Killed before its stdin closes: on end of input the child would exit on its own.
        self.process.kill().ok();
        self.process.wait().ok();
        self.stdin = None;
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.exit_grace.is_zero() {
            return self.kill();
        }
        self.stdin = None;
        let deadline = Instant::now() + self.exit_grace;
        while Instant::now() < deadline && self.try_wait().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

/// The lines of a child's stdout, read from blocking code.
pub struct Lines(mpsc::Receiver<String>);

impl Lines {
    /// The next line, within `timeout`.
    pub fn next(&self, timeout: Duration) -> Result<String, NoLine> {
        self.0.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => NoLine::TimedOut,
            mpsc::RecvTimeoutError::Disconnected => NoLine::Closed,
        })
    }

    /// What follows `tag` and a space in the next line that has them, within `timeout`; lines
    /// without the tag are skipped. The tag may stand anywhere in a line (a line the child
    /// began with other output before its own is still found).
    pub fn tagged(&self, tag: &str, timeout: Duration) -> Result<String, NoLine> {
        let marker = format!("{tag} ");
        let deadline = Instant::now() + timeout;
        loop {
            let line = self.next(deadline.saturating_duration_since(Instant::now()))?;
            if let Some(at) = line.find(&marker) {
                return Ok(line[at + marker.len()..].to_owned());
            }
        }
    }
}

/// The lines of a child's stdout, read from async code.
pub struct AsyncLines(tokio::sync::mpsc::UnboundedReceiver<String>);

impl AsyncLines {
    /// The next line, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<String, NoLine> {
        match tokio::time::timeout(timeout, self.0.recv()).await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => Err(NoLine::Closed),
            Err(_) => Err(NoLine::TimedOut),
        }
    }
}

/// Child side: the lines of this process's stdin, read on a thread of its own. When stdin
/// closes (the parent closed it, or died) the process exits at once with status 0, whatever
/// it was doing.
pub fn stdin_lines() -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<String>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
            std::process::exit(0);
        })?;
    Ok(rx)
}

/// Child side: writes `line` and a newline to stdout and flushes, so that the parent reads it
/// at once. A parent that is gone is not an error here (the child exits when its stdin
/// closes).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).ok();
}
