//! Output: one line per thing, coloured on a terminal (above the line being typed, see
//! `term.rs`), plain in a pipe; and the lines about other users, held until their nick is
//! known.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use procgroups::{DeliveryOutcome, Pid};
use tokio::time::Instant;

use super::Chat;
use super::term::Screen;

/// How long a line about a user whose nick is not known yet waits for it (the nick and the
/// room travel in two scopes, which may arrive in either order); then the pid is shown.
const NICK_WAIT: Duration = Duration::from_millis(1500);

const BOLD: &str = "1";
const CYAN: &str = "36";
const GREEN: &str = "32";
const MAGENTA: &str = "35";
const RED: &str = "31";

/// Writes the chat's lines: to stdout, with colours when it is a terminal, through the line
/// editor's screen when there is one.
#[derive(Clone)]
pub struct Out {
    color: bool,
    err_color: bool,
    screen: Option<Screen>,
}

impl Out {
    pub fn new(screen: Option<Screen>) -> Self {
        Out {
            color: std::io::stdout().is_terminal(),
            err_color: std::io::stderr().is_terminal(),
            screen,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn line(&self, line: &str) {
        if let Some(screen) = &self.screen {
            return screen.print(line);
        }
        // A closed stdout is no reason to panic; the chat goes on until its input ends.
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").and_then(|()| out.flush()).ok();
    }

    /// `* text`
    pub fn info(&self, text: &str) {
        self.line(&self.paint(GREEN, &format!("* {text}")));
    }

    /// `! text`: a command that failed.
    pub fn error(&self, text: &str) {
        self.line(&self.paint(RED, &format!("! {text}")));
    }

    /// Waits for the lines queued for the screen to be printed; later lines are written at
    /// once.
    pub fn finish(&self) {
        if let Some(screen) = &self.screen {
            screen.finish();
        }
    }

    /// `! text` on stderr: why the chat cannot run.
    pub fn fatal(&self, text: &str) {
        self.finish(); // the lines before it first
        let line = format!("! {text}");
        let mut err = std::io::stderr().lock();
        // Nowhere left to report a failed write to stderr.
        if self.err_color {
            writeln!(err, "\x1b[{RED}m{line}\x1b[0m").ok();
        } else {
            writeln!(err, "{line}").ok();
        }
    }

    /// `[room] <nick> text`
    pub fn said(&self, room: &str, nick: &str, text: &str) {
        self.line(&format!(
            "{} {} {text}",
            self.paint(CYAN, &format!("[{room}]")),
            self.paint(BOLD, &format!("<{nick}>"))
        ));
    }

    /// `* delivered to nick` once nick's node accepted a direct message, else
    /// `! not delivered to nick: reason`.
    pub fn fate(&self, nick: &str, outcome: &DeliveryOutcome) {
        match outcome {
            DeliveryOutcome::Delivered => self.info(&format!("delivered to {nick}")),
            DeliveryOutcome::Failed { failed, .. } => {
                let reasons: Vec<String> = failed.iter().map(|f| f.reason.to_string()).collect();
                self.error(&format!("not delivered to {nick}: {}", reasons.join("; ")));
            }
        }
    }

    /// `[dm] <nick> text`, or `[dm -> to] <nick> text` for the sender's copy.
    pub fn direct(&self, to: Option<&str>, nick: &str, text: &str) {
        let tag = match to {
            Some(to) => format!("[dm -> {to}]"),
            None => "[dm]".to_owned(),
        };
        self.line(&format!(
            "{} {} {text}",
            self.paint(MAGENTA, &tag),
            self.paint(BOLD, &format!("<{nick}>"))
        ));
    }
}

/// Text from the network, made safe to print: control characters (terminal escapes) become
/// `?`.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Something to print about another process, which needs its nick.
pub enum Shown {
    Said {
        from: Pid,
        room: String,
        text: String,
    },
    Direct {
        from: Pid,
        text: String,
    },
    Joined {
        pid: Pid,
        room: String,
    },
    Left {
        pid: Pid,
        room: String,
    },
}

impl Shown {
    fn pid(&self) -> Pid {
        match self {
            Shown::Said { from, .. } | Shown::Direct { from, .. } => *from,
            Shown::Joined { pid, .. } | Shown::Left { pid, .. } => *pid,
        }
    }
}

impl Chat {
    /// Prints `item` now if its nick is known, else when it is (or after [`NICK_WAIT`]), in
    /// order with the lines before it.
    pub(super) fn show(&mut self, item: Shown) {
        if self.pending.is_empty() && self.known(&item.pid()) {
            self.print(&item);
        } else {
            self.pending.push_back((Instant::now() + NICK_WAIT, item));
            self.flush();
        }
    }

    /// Prints the held lines whose nick is now known or whose wait is over, in order.
    pub(super) fn flush(&mut self) {
        let now = Instant::now();
        while let Some((due, item)) = self.pending.front() {
            if *due > now && !self.known(&item.pid()) {
                break;
            }
            if let Some((_, item)) = self.pending.pop_front() {
                self.print(&item);
            }
        }
    }

    fn print(&self, item: &Shown) {
        let name = self.name(&item.pid());
        match item {
            Shown::Said { room, text, .. } => self.out.said(&clean(room), &name, &clean(text)),
            Shown::Direct { text, .. } => self.out.direct(None, &name, &clean(text)),
            Shown::Joined { room, .. } => self.out.info(&format!("{name} joined {}", clean(room))),
            Shown::Left { room, .. } => self.out.info(&format!("{name} left {}", clean(room))),
        }
    }
}
