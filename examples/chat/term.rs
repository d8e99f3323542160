//! The chat in a terminal: a line editor (rustyline) with a prompt naming the current room
//! and a history (up, down), and a screen on which the chat's lines appear above the line
//! being typed, never inside it.
//!
//! Three threads share the terminal:
//! - the editor's, which reads a line behind the prompt the chat's loop gave it
//!   ([`Editing::ready`]), sends it to the loop, and waits for the next prompt;
//! - the printer's, which takes the chat's lines from [`Screen::print`] (the loop never waits
//!   for the terminal) and hands them to rustyline's external printer: while a line is being
//!   edited, rustyline clears the input rows, prints the line and draws the input again;
//!   otherwise the line is written as it is;
//! - the chat's loop, which only sends.
//!
//! A line submitted is erased from the screen (prompt and all): what it did shows instead,
//! for a line said the message as the others see it (`[lobby] <alice> hello`), so the line
//! does not show twice. Between the Enter key and that erasing, nothing else may be printed
//! (the rows to erase would be the wrong ones): the Enter key's handler closes the [`Gate`],
//! which the printer waits at, and the editor's thread opens it again once the rows are gone.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use rustyline::config::{Behavior, BellStyle, Config};
use rustyline::history::MemHistory;
use rustyline::{
    Cmd, ConditionalEventHandler, Editor, Event, EventContext, EventHandler, ExternalPrinter,
    GraphemeClusterMode, KeyCode, KeyEvent, Modifiers, RepeatCount,
};
use tokio::sync::mpsc;
use unicode_width::UnicodeWidthChar;

use super::MAX_LINE_BYTES;
use super::input::Typed;

/// Lines kept for the up and down keys.
const HISTORY: usize = 500;
/// How long the Enter key waits for a print in progress before it submits the line. A print
/// only takes that long when rustyline's queue of prints is full, and such a print is shown
/// by the editor later, never written over the line.
const PRINT_WAIT: Duration = Duration::from_millis(100);
/// Columns of a tab, as rustyline draws it.
const TAB_STOP: usize = 8;
/// How long leaving waits for the printer to print what is queued.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// The line editor, before it reads its first line.
pub struct Terminal {
    editor: Editor<(), MemHistory>,
    screen: Screen,
    gate: Arc<Gate>,
    /// The terminal's settings at start, put back when the chat leaves.
    saved: Option<libc::termios>,
}

impl Terminal {
    /// The line editor, if stdin and stdout are a terminal it can drive; `None` otherwise
    /// (the chat then reads plain lines).
    pub fn open() -> Option<Terminal> {
        use std::io::IsTerminal;
        if !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
            return None;
        }
        let config = Config::builder()
            .max_history_size(HISTORY)
            .ok()?
            .history_ignore_dups(true)
            .ok()?
            .auto_add_history(false)
            .bell_style(BellStyle::None)
            .behavior(Behavior::Stdio)
            .bracketed_paste(true)
            .grapheme_cluster_mode(GraphemeClusterMode::WcWidth)
            .build();
        let history = MemHistory::with_config(&config);
        let mut editor = Editor::<(), MemHistory>::with_history(config, history).ok()?;
        let printer = editor.create_external_printer().ok()?;
        let gate = Arc::new(Gate::default());
        for key in [
            KeyEvent(KeyCode::Enter, Modifiers::NONE),
            KeyEvent::ctrl('J'),
            KeyEvent::ctrl('M'),
        ] {
            editor.bind_sequence(
                key,
                EventHandler::Conditional(Box::new(Submit { gate: gate.clone() })),
            );
        }
        let screen = Screen::start(printer, gate.clone());
        Some(Terminal {
            editor,
            screen,
            gate,
            saved: saved_settings(),
        })
    }

    /// Where the chat prints its lines.
    pub fn screen(&self) -> Screen {
        self.screen.clone()
    }

    /// Starts reading: the first line behind `prompt`.
    pub fn start(self, prompt: &str) -> Editing {
        let Terminal {
            mut editor,
            screen,
            gate,
            saved,
        } = self;
        let (lines_tx, lines) = mpsc::unbounded_channel();
        let (prompts, prompts_rx) = std_mpsc::channel::<String>();
        let reading = Arc::new(AtomicBool::new(false));
        let reading_flag = reading.clone();
        prompts.send(prompt.to_owned()).ok();
        std::thread::spawn(move || {
            while let Ok(prompt) = prompts_rx.recv() {
                reading_flag.store(true, Ordering::SeqCst);
                let read = editor.readline(&prompt);
                reading_flag.store(false, Ordering::SeqCst);
                let typed = match read {
                    Ok(line) => {
                        let columns = editor.dimensions().map_or(80, |(cols, _)| cols.into());
                        erase(&prompt, &line, columns);
                        gate.open();
                        if line.len() > MAX_LINE_BYTES {
                            Typed::TooLong { bytes: line.len() }
                        } else {
                            if !line.trim().is_empty() {
                                // A failure to keep history costs the up key, not the line.
                                editor.add_history_entry(line.as_str()).ok();
                            }
                            Typed::Line(line)
                        }
                    }
                    // Ctrl-C (Interrupted) and Ctrl-D (Eof) leave; so does a terminal that
                    // cannot be read any more.
                    Err(_) => {
                        gate.open();
                        Typed::End
                    }
                };
                let end = matches!(typed, Typed::End);
                if lines_tx.send(typed).is_err() || end {
                    break;
                }
            }
        });
        Editing {
            lines,
            prompts,
            reading,
            screen,
            saved,
        }
    }
}

/// The line editor at work: its lines, and where to send the next prompt. Dropping it
/// prints what is queued and gives the terminal back as it was.
pub struct Editing {
    pub lines: mpsc::UnboundedReceiver<Typed>,
    prompts: std_mpsc::Sender<String>,
    /// Whether the editor is reading a line (its prompt is on the screen).
    reading: Arc<AtomicBool>,
    screen: Screen,
    saved: Option<libc::termios>,
}

impl Editing {
    /// Reads the next line behind `prompt`.
    pub fn ready(&self, prompt: &str) {
        // The editor's thread is gone only once the input ended, which the loop has seen.
        self.prompts.send(prompt.to_owned()).ok();
    }
}

impl Drop for Editing {
    fn drop(&mut self) {
        self.screen.finish();
        let mut out = std::io::stdout().lock();
        if self.reading.load(Ordering::SeqCst) {
            // Leaving while a line is edited (a signal): the shell starts below the prompt.
            out.write_all(b"\r\n").ok();
        }
        // Bracketed paste off, as rustyline leaves it when it returns a line.
        out.write_all(b"\x1b[?2004l")
            .and_then(|()| out.flush())
            .ok();
        if let Some(saved) = &self.saved {
            // SAFETY: tcsetattr reads the termios it is given; stdin is open for the process.
            unsafe {
                libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, saved);
            }
        }
    }
}

/// The terminal's settings now (cooked mode: the chat has not read yet).
fn saved_settings() -> Option<libc::termios> {
    // SAFETY: termios is plain data, filled in by tcgetattr before it is read.
    unsafe {
        let mut settings: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(std::io::stdin().as_raw_fd(), &mut settings) == 0).then_some(settings)
    }
}

/// Erases the rows of the line just submitted, prompt included: the cursor is on the row
/// below them (rustyline moved it there), and goes back to the prompt's row, now empty.
fn erase(prompt: &str, line: &str, columns: usize) {
    let rows = rows_of(&format!("{prompt}{line}"), columns.max(1));
    let mut out = std::io::stdout().lock();
    // Nothing to do about a terminal that cannot be written to: the chat goes on.
    write!(out, "\x1b[{rows}A\r\x1b[J")
        .and_then(|()| out.flush())
        .ok();
}

/// The rows `text` takes from the start of a row up to the cursor after it is submitted,
/// counted as rustyline lays it out (`calculate_position`, character widths as `wcwidth`).
fn rows_of(text: &str, columns: usize) -> usize {
    let (mut row, mut col) = (0usize, 0usize);
    for c in text.chars() {
        if c == '\n' {
            row += 1;
            col = 0;
            continue;
        }
        let width = if c == '\t' {
            TAB_STOP - col % TAB_STOP
        } else {
            c.width().unwrap_or(0)
        };
        col += width;
        if col > columns {
            row += 1;
            col = width;
        }
    }
    if col == columns {
        row += 1; // the cursor wrapped to the next row
    }
    row + 1 // and rustyline's newline after the line
}

/// Keeps prints off the screen between the Enter key and the erasing of the submitted line.
#[derive(Default)]
struct Gate {
    /// Set by the Enter key's handler, cleared once the line's rows are erased.
    closed: AtomicBool,
    /// Set by the printer from before it looks at `closed` until its print returned.
    printing: AtomicBool,
    lock: Mutex<()>,
    opened: Condvar,
}

impl Gate {
    /// The printer's side: runs `print` unless the gate is closed, else waits until it opens.
    fn pass(&self, print: impl FnOnce()) {
        loop {
            self.printing.store(true, Ordering::SeqCst);
            if !self.closed.load(Ordering::SeqCst) {
                print();
                self.printing.store(false, Ordering::SeqCst);
                return;
            }
            self.printing.store(false, Ordering::SeqCst);
            let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            while self.closed.load(Ordering::SeqCst) {
                guard = self.opened.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// The Enter key's side: no print starts from now on; a print under way is waited for
    /// (up to [`PRINT_WAIT`]).
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let since = Instant::now();
        while self.printing.load(Ordering::SeqCst) && since.elapsed() < PRINT_WAIT {
            std::thread::yield_now();
        }
    }

    fn open(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(false, Ordering::SeqCst);
        self.opened.notify_all();
    }
}

/// The Enter key: closes the gate, then submits the line as usual.
struct Submit {
    gate: Arc<Gate>,
}

impl ConditionalEventHandler for Submit {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, _: &EventContext) -> Option<Cmd> {
        self.gate.close();
        Some(Cmd::AcceptLine)
    }
}

enum Print {
    Line(String),
    /// Everything before is printed: say so, and write the lines after straight to stdout.
    Finish(std_mpsc::Sender<()>),
}

/// Where the chat's lines go in a terminal: to the printer's thread, in order.
#[derive(Clone)]
pub struct Screen {
    tx: std_mpsc::Sender<Print>,
    /// Set once the editor is gone: lines are written as they come.
    finished: Arc<AtomicBool>,
}

impl Screen {
    fn start(mut printer: impl ExternalPrinter + Send + 'static, gate: Arc<Gate>) -> Screen {
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(print) = rx.recv() {
                match print {
                    Print::Line(line) => gate.pass(|| {
                        if printer.print(format!("{line}\n")).is_err() {
                            // rustyline could not take it: write it as it is rather than lose it.
                            write_line(&line);
                        }
                    }),
                    Print::Finish(done) => {
                        done.send(()).ok();
                        break;
                    }
                }
            }
        });
        Screen {
            tx,
            finished: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Prints `line` above the line being edited.
    pub fn print(&self, line: &str) {
        if self.finished.load(Ordering::SeqCst)
            || self.tx.send(Print::Line(line.to_owned())).is_err()
        {
            write_line(line);
        }
    }

    /// Waits (up to [`FLUSH_WAIT`]) for the lines queued to be printed; lines printed after
    /// go straight to stdout.
    pub fn finish(&self) {
        let (done_tx, done) = std_mpsc::channel();
        if self.tx.send(Print::Finish(done_tx)).is_ok() {
            // Past the wait the lines left are lost: leaving is not held up for a terminal.
            done.recv_timeout(FLUSH_WAIT).ok();
        }
        self.finished.store(true, Ordering::SeqCst);
    }
}

fn write_line(line: &str) {
    // A closed stdout is no reason to panic; the chat goes on until its input ends.
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).ok();
}
