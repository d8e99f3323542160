//! What the user types, a line at a time: from the line editor of `term.rs` when stdin and
//! stdout are a terminal, else plain lines from stdin (a pipe, a file), read exactly as they
//! come. Either way a line over [`MAX_LINE_BYTES`] is refused whole: it is never cut, and
//! nothing of it is said or sent.

use std::io::BufRead;

use tokio::sync::mpsc;

use super::MAX_LINE_BYTES;
use super::term::Editing;

/// One line of input.
pub enum Typed {
    /// A line, without its end of line. From the line editor it may hold several lines (a
    /// paste), each handled in turn.
    Line(String),
    /// A line over [`MAX_LINE_BYTES`], dropped as it was read: its length in bytes.
    TooLong { bytes: usize },
    /// The end of input: Ctrl-D, Ctrl-C in the line editor, the pipe closed or unreadable.
    End,
}

/// Where the lines come from.
pub enum Keyboard {
    /// Plain lines of stdin, read ahead on a thread of their own.
    Pipe(mpsc::Receiver<Typed>),
    /// The line editor, which reads the next line once told the prompt to show.
    Terminal(Editing),
}

impl Keyboard {
    /// The lines of stdin, read on a thread of their own (a blocking read would hold the
    /// runtime's shutdown).
    pub fn pipe() -> Self {
        let (tx, rx) = mpsc::channel(64);
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            loop {
                let typed = read_line(&mut stdin, MAX_LINE_BYTES);
                let end = matches!(typed, Typed::End);
                if tx.blocking_send(typed).is_err() || end {
                    break;
                }
            }
        });
        Keyboard::Pipe(rx)
    }

    /// The next line; [`Typed::End`] once there are no more.
    pub async fn recv(&mut self) -> Typed {
        let next = match self {
            Keyboard::Pipe(rx) => rx.recv().await,
            Keyboard::Terminal(editing) => editing.lines.recv().await,
        };
        next.unwrap_or(Typed::End)
    }

    /// The last line is handled: the line editor reads the next one behind `prompt` (a pipe
    /// reads on regardless).
    pub fn ready(&mut self, prompt: &str) {
        if let Keyboard::Terminal(editing) = self {
            editing.ready(prompt);
        }
    }
}

/// Reads one line of at most `max` bytes (a `\r` before the `\n` is dropped). A longer line
/// is read to its end but not kept, so memory stays bounded whatever comes.
pub fn read_line(input: &mut impl BufRead, max: usize) -> Typed {
    let mut line = Vec::new();
    let mut bytes = 0usize;
    let mut read_any = false;
    let mut last = None;
    loop {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Typed::End,
        };
        if buf.is_empty() {
            if !read_any {
                return Typed::End;
            }
            break; // a last line without its end of line
        }
        read_any = true;
        let (chunk, used, ended) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (&buf[..at], at + 1, true),
            None => (buf, buf.len(), false),
        };
        bytes += chunk.len();
        last = chunk.last().copied().or(last);
        if bytes <= max + 1 {
            // One byte over: room for the `\r` of a line of exactly `max` bytes.
            line.extend_from_slice(chunk);
        } else {
            line = Vec::new();
        }
        input.consume(used);
        if ended {
            break;
        }
    }
    if last == Some(b'\r') {
        line.pop();
        bytes -= 1;
    }
    if bytes > max {
        return Typed::TooLong { bytes };
    }
    Typed::Line(String::from_utf8_lossy(&line).into_owned())
}
