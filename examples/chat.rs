//! A terminal chat over process groups: rooms, nicknames, direct messages.
//!
//! Each user is one node with one process. Rooms are the groups of the scope `chat:rooms`
//! (everyone starts in `lobby`); a line typed is broadcast to the current room. Nicknames are
//! the groups of the scope `chat:users`: one group per nick, whose only member
//! (`max_members_per_group = 1`) is the user's process, so a nick this node knows to be taken
//! is refused.
//!
//! Three terminals on one machine or one LAN (mDNS finds the others):
//!
//! ```text
//! cargo run --example chat -- --nick alice
//! cargo run --example chat -- --nick bob
//! cargo run --example chat -- --nick carol
//! ```
//!
//! Where mDNS does not work (loopback only, containers, across networks), or where it is not
//! wanted, turn it off and connect explicitly: the first node prints its addresses
//! (`* listening on /ip4/127.0.0.1/tcp/4001/p2p/12D3…`), the others dial one of them.
//!
//! ```text
//! cargo run --example chat -- --nick alice --no-mdns --listen /ip4/127.0.0.1/tcp/4001
//! cargo run --example chat -- --nick bob --no-mdns --dial /ip4/127.0.0.1/tcp/4001/p2p/12D3…
//! ```
//!
//! Flags:
//! - `--nick NAME` (required): letters, digits, `-`, `_`, `.`; at most 32 characters.
//! - `--listen MULTIADDR` (repeatable): where to listen; default one TCP and one QUIC port of
//!   every interface.
//! - `--dial MULTIADDR` (repeatable): a peer to connect to. The chat waits (up to 5 s) for the
//!   peers it dials, so that a nick taken there is refused at start.
//! - `--bootstrap MULTIADDR` (repeatable): Kademlia bootstrap nodes (`…/p2p/<peer-id>`), to
//!   find the other users beyond the LAN.
//! - `--no-mdns`: no multicast discovery (it is on by default).
//! - `--metrics IP:PORT`: serve `/metrics` (Prometheus) and `/health` there.
//! - `--config PATH`: read the scopes from a registry file (for example
//!   `examples/procgroups.toml`) instead of the built-in ones; it must define `chat:rooms` and
//!   `chat:users`.
//!
//! Commands: `/join ROOM` (it becomes the current room), `/leave [ROOM]`, `/rooms`,
//! `/who [ROOM]`, `/msg NICK TEXT`, `/nick NAME`, `/help`, `/quit`. Any other line is said in
//! the current room (start it with `//` to say a line that begins with `/`). Ctrl-D, `/quit`
//! and Ctrl-C leave gracefully: the others see you leave at once.
//!
//! The output is one line per thing, the same in a terminal (with colours) and in a pipe
//! (without):
//!
//! ```text
//! * listening on /ip4/127.0.0.1/tcp/4001/p2p/12D3…
//! * alice is in lobby
//! * bob joined lobby
//! [lobby] <bob> hello
//! [dm] <bob> psst
//! * lobby: alice, bob
//! * lobby (2)
//! * bob left lobby
//! ! no user named dave
//! ```
//!
//! A user whose nick this node does not know (yet) is shown by its pid.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use procgroups::multiaddr::Protocol;
use procgroups::{
    ErrorKind, Event, EventKind, Inbox, Instance, Message, Multiaddr, Node, NodeBuilder, PeerId,
    Pid, Process, ScopeConfig, Subscription,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

mod common;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The scope of the rooms: one group per room.
const ROOMS: &str = "chat:rooms";
/// The scope of the nicknames: one group per nick, one member.
const USERS: &str = "chat:users";
/// The room everyone starts in.
const LOBBY: &str = "lobby";
/// The topic of the lines said in a room.
const SAID: &str = "chat";
/// The topic of direct messages.
const DIRECT: &str = "dm";
const MAX_NICK: usize = 32;
const MAX_ROOM: usize = 64;
const MAX_TEXT: usize = 4096;
/// How long the chat waits at start for the peers it dials (and their users).
const DIAL_WAIT: Duration = Duration::from_secs(5);
/// How long a line about a user whose nick is not known yet waits for it (the nick and the
/// room travel in two scopes, which may arrive in either order); then the pid is shown.
const NICK_WAIT: Duration = Duration::from_millis(1500);
/// Nicks of users who are gone, kept to name them in late events; forgotten past this many.
const MAX_REMEMBERED: usize = 10_000;

/// A terminal chat over procgroups: type a line to say it in the current room.
#[derive(Parser, Debug)]
#[command(
    name = "chat",
    after_help = "Commands: /join ROOM, /leave [ROOM], /rooms, /who [ROOM], /msg NICK TEXT, \
                  /nick NAME, /help, /quit (or Ctrl-D, Ctrl-C)."
)]
struct Args {
    /// Your nickname, unique in the chat.
    #[arg(long, value_parser = parse_nick)]
    nick: String,
    /// Listen on this address (repeatable). Default: a TCP and a QUIC port on every interface.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Connect to this peer (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    dial: Vec<Multiaddr>,
    /// Kademlia bootstrap node, `…/p2p/<peer-id>` (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,
    /// Do not look for peers on the LAN by mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Read the scopes `chat:rooms` and `chat:users` from this registry file.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Serve `/metrics` (Prometheus) and `/health` on this address, e.g. `127.0.0.1:9100`.
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<SocketAddr>,
}

/// A line said in a room (topic [`SAID`]).
#[derive(Debug, Serialize, Deserialize)]
struct Said {
    room: String,
    text: String,
}

/// A direct message (topic [`DIRECT`]).
#[derive(Debug, Serialize, Deserialize)]
struct Direct {
    text: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let out = Out::new();
    let builder = match node_builder(&args) {
        Ok(builder) => builder,
        Err(why) => {
            out.fatal(&why);
            return ExitCode::FAILURE;
        }
    };
    let node = match builder.build().await {
        Ok(node) => node,
        Err(e) => {
            out.fatal(&format!("cannot start the node: {e}"));
            return ExitCode::FAILURE;
        }
    };
    if let Some(addr) = args.metrics {
        match common::serve_metrics(addr, &node) {
            Ok(bound) => out.info(&format!("metrics on http://{bound}/metrics and /health")),
            Err(e) => {
                out.fatal(&format!("--metrics {addr}: {e}"));
                node.shutdown().await;
                return ExitCode::FAILURE;
            }
        }
    }
    let code = match Chat::start(&node, &args, out).await {
        Ok(chat) => {
            chat.run().await;
            ExitCode::SUCCESS
        }
        Err(why) => {
            out.fatal(&why);
            ExitCode::FAILURE
        }
    };
    node.shutdown().await; // the peers see our leaves at once
    code
}

/// The node as the flags ask; `Err` when the `--config` file is wrong or lacks a scope.
fn node_builder(args: &Args) -> Result<NodeBuilder, String> {
    let mut builder = Node::builder()
        .mdns(!args.no_mdns)
        .bootstrap(args.bootstrap.iter().cloned());
    for addr in &args.listen {
        builder = builder.listen_on(addr.clone());
    }
    let (rooms, users) = match &args.config {
        Some(path) => (
            common::scope_from_file(path, ROOMS)?,
            common::scope_from_file(path, USERS)?,
        ),
        None => (rooms_config(), users_config()),
    };
    Ok(builder.scope(ROOMS, rooms).scope(USERS, users))
}

/// The built-in `chat:rooms`, as in `examples/procgroups.toml`.
fn rooms_config() -> ScopeConfig {
    ScopeConfig::builder()
        .node_down_grace(Duration::from_secs(3))
        .anti_entropy_interval(Duration::from_secs(10))
        .monitor_buffer(256)
        .max_groups(10_000)
        .build()
        .expect("a valid built-in scope config")
}

/// The built-in `chat:users`, as in `examples/procgroups.toml`: one member per nick.
fn users_config() -> ScopeConfig {
    ScopeConfig::builder()
        .node_down_grace(Duration::from_secs(3))
        .monitor_buffer(256)
        .max_members_per_group(1)
        .build()
        .expect("a valid built-in scope config")
}

fn parse_nick(s: &str) -> Result<String, String> {
    check_name("nick", s, MAX_NICK).map(|()| s.to_owned())
}

/// Nicks and rooms: 1 to `max` letters, digits, `-`, `_` or `.`.
fn check_name(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("a {what} cannot be empty"));
    }
    if s.chars().count() > max {
        return Err(format!("a {what} has at most {max} characters"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "a {what} is letters, digits, '-', '_' and '.', not {c:?}"
        ));
    }
    Ok(())
}

/// Text from the network, made safe to print: control characters (terminal escapes) become
/// `?`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Output.

/// Writes the chat's lines: to stdout, with colours when it is a terminal.
#[derive(Clone, Copy)]
struct Out {
    color: bool,
    err_color: bool,
}

const BOLD: &str = "1";
const CYAN: &str = "36";
const GREEN: &str = "32";
const MAGENTA: &str = "35";
const RED: &str = "31";

impl Out {
    fn new() -> Self {
        Out {
            color: std::io::stdout().is_terminal(),
            err_color: std::io::stderr().is_terminal(),
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
        // A closed stdout is no reason to panic; the chat goes on until its input ends.
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").and_then(|()| out.flush()).ok();
    }

    /// `* text`
    fn info(&self, text: &str) {
        self.line(&self.paint(GREEN, &format!("* {text}")));
    }

    /// `! text`: a command that failed.
    fn error(&self, text: &str) {
        self.line(&self.paint(RED, &format!("! {text}")));
    }

    /// `! text` on stderr: why the chat cannot run.
    fn fatal(&self, text: &str) {
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
    fn said(&self, room: &str, nick: &str, text: &str) {
        self.line(&format!(
            "{} {} {text}",
            self.paint(CYAN, &format!("[{room}]")),
            self.paint(BOLD, &format!("<{nick}>"))
        ));
    }

    /// `[dm] <nick> text`, or `[dm -> to] <nick> text` for the sender's copy.
    fn direct(&self, to: Option<&str>, nick: &str, text: &str) {
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

// ---------------------------------------------------------------------------------------------
// Who is who.

/// Pid -> nick, from the events of `chat:users`.
#[derive(Default)]
struct Names {
    /// The nick groups each process is in, oldest first (two during a `/nick`).
    current: HashMap<Pid, Vec<String>>,
    /// The last nick of every process seen, to name it after it left `chat:users`.
    last: HashMap<Pid, String>,
}

impl Names {
    fn from_snapshot(snapshot: &BTreeMap<std::sync::Arc<str>, procgroups::Members>) -> Self {
        let mut names = Names::default();
        for (nick, members) in snapshot {
            for pid in members.iter() {
                names.add(pid, nick);
            }
        }
        names
    }

    fn get(&self, pid: &Pid) -> Option<&str> {
        self.current
            .get(pid)
            .and_then(|nicks| nicks.last())
            .or_else(|| self.last.get(pid))
            .map(String::as_str)
    }

    fn add(&mut self, pid: Pid, nick: &str) {
        self.current.entry(pid).or_default().push(nick.to_owned());
        if self.last.len() >= MAX_REMEMBERED {
            let current = &self.current;
            self.last.retain(|pid, _| current.contains_key(pid));
        }
        self.last.insert(pid, nick.to_owned());
    }

    /// Removes one nick of `pid`; returns the nick it still has, if any.
    fn remove(&mut self, pid: Pid, nick: &str) -> Option<String> {
        let nicks = self.current.get_mut(&pid)?;
        if let Some(at) = nicks.iter().position(|n| n == nick) {
            nicks.remove(at);
        }
        match nicks.last() {
            Some(still) => {
                let still = still.clone();
                self.last.insert(pid, still.clone());
                Some(still)
            }
            None => {
                self.current.remove(&pid);
                None
            }
        }
    }
}

/// Something to print about another process, which needs its nick.
enum Shown {
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

// ---------------------------------------------------------------------------------------------
// The chat.

/// A room the user is in: its monitor, forwarded to the chat's loop.
struct Watch {
    /// Tells this monitor's events from those of an earlier monitor of the same room.
    id: u64,
    task: JoinHandle<()>,
}

enum Input {
    Line(Option<String>),
    Said(Message),
    Direct(Message),
    User(Event),
    Room(u64, Event),
    Due,
    Interrupt(std::io::Result<()>),
}

struct Chat {
    out: Out,
    me: Process,
    nick: String,
    users: Instance,
    rooms: Instance,
    said: Inbox,
    direct: Inbox,
    users_events: Subscription,
    names: Names,
    /// The rooms the user is in.
    joined: BTreeMap<String, Watch>,
    current: Option<String>,
    next_watch: u64,
    room_tx: mpsc::UnboundedSender<(u64, Event)>,
    room_rx: mpsc::UnboundedReceiver<(u64, Event)>,
    /// Lines waiting for a nick, in order, each with its deadline.
    pending: VecDeque<(Instant, Shown)>,
}

impl Chat {
    /// Takes the nick and joins the lobby; `Err` says why the chat cannot run.
    async fn start(node: &Node, args: &Args, out: Out) -> Result<Chat, String> {
        let me = node.spawn_process();
        // Listen before joining: a broadcast to a topic nobody listens to is dropped.
        let said = me.listen(SAID);
        let direct = me.listen(DIRECT);
        let open = |scope: &str| {
            me.open(scope)
                .map_err(|e| format!("cannot open the scope {scope}: {e}"))
        };
        let users = open(USERS)?;
        let rooms = open(ROOMS)?;
        let (users_events, snapshot) = users
            .events()
            .map_err(|e| format!("cannot follow {USERS}: {e}"))?;
        let names = Names::from_snapshot(&snapshot);

        for addr in &node.listen_addrs() {
            out.info(&format!("listening on {addr}"));
        }
        let mut dialed = Vec::new();
        for addr in &args.dial {
            match node.dial(addr.clone()) {
                Ok(()) => dialed.extend(peer_of(addr)),
                Err(e) => out.error(&format!("cannot dial {addr}: {e}")),
            }
        }
        await_peers(node, &users, &dialed, out).await;

        // The nick first, so that the others know it before they see us in the lobby.
        users.join(args.nick.as_str()).map_err(|e| {
            if e.kind() == ErrorKind::LimitReached {
                format!(
                    "the nick {} is taken: choose another with --nick",
                    args.nick
                )
            } else {
                format!("cannot take the nick {}: {e}", args.nick)
            }
        })?;

        let (room_tx, room_rx) = mpsc::unbounded_channel();
        let mut chat = Chat {
            out,
            me,
            nick: args.nick.clone(),
            users,
            rooms,
            said,
            direct,
            users_events,
            names,
            joined: BTreeMap::new(),
            current: None,
            next_watch: 0,
            room_tx,
            room_rx,
            pending: VecDeque::new(),
        };
        chat.enter(LOBBY)
            .map_err(|e| format!("cannot join {LOBBY}: {e}"))?;
        if std::io::stdin().is_terminal() {
            out.info("type /help for the commands");
        }
        Ok(chat)
    }

    /// Runs until the input ends, `/quit` or Ctrl-C.
    async fn run(mut self) {
        let mut lines = stdin_lines();
        let interrupt = tokio::signal::ctrl_c();
        tokio::pin!(interrupt);
        let mut interrupt_armed = true;
        loop {
            let due = self.pending.front().map(|(due, _)| *due);
            // In this order: what others said and did before what the user types next.
            let input = tokio::select! {
                biased;
                r = &mut interrupt, if interrupt_armed => Input::Interrupt(r),
                Some(msg) = self.said.recv() => Input::Said(msg),
                Some(msg) = self.direct.recv() => Input::Direct(msg),
                Some((id, ev)) = self.room_rx.recv() => Input::Room(id, ev),
                Some(ev) = self.users_events.recv() => Input::User(ev),
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    Input::Due
                }
                line = lines.recv() => Input::Line(line),
            };
            match input {
                Input::Line(None) => break,
                Input::Line(Some(line)) => {
                    if !self.command(line.trim_end_matches(['\r', '\n'])) {
                        break;
                    }
                }
                Input::Said(msg) => self.on_said(&msg),
                Input::Direct(msg) => self.on_direct(&msg),
                Input::User(ev) => self.on_user(&ev),
                Input::Room(id, ev) => self.on_room(id, &ev),
                Input::Due => self.flush(),
                Input::Interrupt(Ok(())) => break,
                Input::Interrupt(Err(e)) => {
                    self.out
                        .error(&format!("cannot catch Ctrl-C ({e}); use /quit or Ctrl-D"));
                    interrupt_armed = false;
                }
            }
        }
        self.out.info("bye");
    }

    /// Handles one line of input; `false` to quit.
    fn command(&mut self, line: &str) -> bool {
        let line = line.trim();
        if line.is_empty() {
            return true;
        }
        if let Some(text) = line.strip_prefix("//") {
            self.say(&format!("/{text}"));
            return true;
        }
        let Some(command) = line.strip_prefix('/') else {
            self.say(line);
            return true;
        };
        let (name, rest) = match command.split_once(char::is_whitespace) {
            Some((name, rest)) => (name, rest.trim()),
            None => (command, ""),
        };
        let arg = rest.split_whitespace().next();
        match (name, arg) {
            ("quit" | "exit", _) => return false,
            ("help", _) => self.help(),
            ("join", Some(room)) => self.join(room),
            ("leave" | "part", room) => self.leave(room),
            ("rooms", _) => self.list_rooms(),
            ("who", room) => self.who(room),
            ("msg", Some(nick)) => {
                let text = rest[nick.len()..].trim();
                self.message(nick, text);
            }
            ("nick", Some(nick)) => self.rename(nick),
            ("join" | "msg" | "nick", None) => {
                self.out
                    .error(&format!("/{name} needs an argument; see /help"));
            }
            _ => self.out.error(&format!(
                "unknown command /{name}; /help lists the commands"
            )),
        }
        true
    }

    fn help(&self) {
        for line in [
            "commands:",
            "  /join ROOM       join ROOM and make it the current room",
            "  /leave [ROOM]    leave ROOM (default: the current room)",
            "  /rooms           every room with its number of users",
            "  /who [ROOM]      who is in ROOM (default: the current room)",
            "  /msg NICK TEXT   a direct message",
            "  /nick NAME       change your nick",
            "  /quit            leave (Ctrl-D and Ctrl-C too)",
            "  anything else is said in the current room (// to start a line with /)",
        ] {
            self.out.info(line);
        }
    }

    /// A plain line: broadcast to the current room (ourselves included: our copy is the echo).
    fn say(&mut self, text: &str) {
        let Some(room) = self.current.clone() else {
            self.out
                .error("you are in no room: /join one to talk, /msg someone");
            return;
        };
        if text.len() > MAX_TEXT {
            self.out
                .error(&format!("a line has at most {MAX_TEXT} bytes"));
            return;
        }
        let said = Said {
            room: room.clone(),
            text: text.to_owned(),
        };
        if let Err(e) = self.rooms.broadcast(&room, SAID, &said) {
            self.out.error(&format!("not sent to {room}: {e}"));
        }
    }

    /// Joins `room` (or makes it current if the user is in it already).
    fn join(&mut self, room: &str) {
        if let Err(why) = check_name("room", room, MAX_ROOM) {
            self.out.error(&why);
            return;
        }
        if let Err(e) = self.enter(room) {
            self.out.error(&format!("cannot join {room}: {e}"));
        }
    }

    /// Monitors `room`, joins it, makes it current; prints `* nick is in room`.
    fn enter(&mut self, room: &str) -> procgroups::Result<()> {
        if !self.joined.contains_key(room) {
            // Monitor first: the joins after ours are all seen (ours is not printed).
            let (mut sub, _members) = self.rooms.monitor(room)?;
            if let Err(e) = self.rooms.join(room) {
                sub.close();
                return Err(e);
            }
            self.next_watch += 1;
            let id = self.next_watch;
            let tx = self.room_tx.clone();
            let task = tokio::spawn(async move {
                while let Some(ev) = sub.recv().await {
                    if tx.send((id, ev)).is_err() {
                        break;
                    }
                }
            });
            self.joined.insert(room.to_owned(), Watch { id, task });
        }
        self.current = Some(room.to_owned());
        self.out.info(&format!("{} is in {room}", self.nick));
        Ok(())
    }

    fn leave(&mut self, room: Option<&str>) {
        let Some(room) = room.map(str::to_owned).or_else(|| self.current.clone()) else {
            self.out.error("you are in no room");
            return;
        };
        let Some(watch) = self.joined.remove(&room) else {
            self.out.error(&format!("you are not in {room}"));
            return;
        };
        watch.task.abort();
        if let Err(e) = self.rooms.leave(room.as_str()) {
            self.out.error(&format!("cannot leave {room}: {e}"));
        }
        if self.current.as_deref() == Some(room.as_str()) {
            self.current = self.joined.keys().next().cloned();
        }
        match &self.current {
            Some(now) => self.out.info(&format!("you left {room}; now in {now}")),
            None => self
                .out
                .info(&format!("you left {room}; you are in no room now")),
        }
    }

    /// `* room (n)` for every room of the cluster.
    fn list_rooms(&self) {
        let rooms = match self.rooms.which_groups() {
            Ok(rooms) => rooms,
            Err(e) => return self.out.error(&format!("cannot list the rooms: {e}")),
        };
        if rooms.is_empty() {
            self.out.info("no rooms");
        }
        for room in rooms.iter() {
            match self.rooms.get_members(room) {
                Ok(members) => {
                    self.out
                        .info(&format!("{} ({})", clean(room), members.unique().count()))
                }
                Err(e) => self.out.error(&format!("{}: {e}", clean(room))),
            }
        }
    }

    /// `* room: nick, nick, …` (sorted).
    fn who(&self, room: Option<&str>) {
        let Some(room) = room.map(str::to_owned).or_else(|| self.current.clone()) else {
            self.out.error("you are in no room: /who ROOM");
            return;
        };
        let members = match self.rooms.get_members(&room) {
            Ok(members) => members,
            Err(e) => return self.out.error(&format!("cannot list {room}: {e}")),
        };
        let mut nicks: Vec<String> = members.unique().map(|pid| self.name(&pid)).collect();
        nicks.sort();
        if nicks.is_empty() {
            self.out.info(&format!("{room}: nobody"));
        } else {
            self.out.info(&format!("{room}: {}", nicks.join(", ")));
        }
    }

    /// A direct message to the process holding `nick`.
    fn message(&mut self, nick: &str, text: &str) {
        if text.is_empty() {
            self.out.error("/msg NICK TEXT: the text is missing");
            return;
        }
        if text.len() > MAX_TEXT {
            self.out
                .error(&format!("a message has at most {MAX_TEXT} bytes"));
            return;
        }
        let to = match self.users.get_members(nick) {
            Ok(members) => members.iter().next(),
            Err(e) => return self.out.error(&format!("cannot look {nick} up: {e}")),
        };
        let Some(to) = to else {
            self.out.error(&format!("no user named {}", clean(nick)));
            return;
        };
        let direct = Direct {
            text: text.to_owned(),
        };
        match self.me.send(&to, DIRECT, &direct) {
            Ok(()) => self.out.direct(Some(nick), &self.nick, text),
            Err(e) => self.out.error(&format!("not sent to {nick}: {e}")),
        }
    }

    /// Takes the nick `new` and then gives up the old one.
    fn rename(&mut self, new: &str) {
        if new == self.nick {
            self.out.info(&format!("you are {new} already"));
            return;
        }
        if let Err(why) = check_name("nick", new, MAX_NICK) {
            self.out.error(&why);
            return;
        }
        match self.users.join(new) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::LimitReached => {
                self.out.error(&format!(
                    "the nick {new} is taken; you are still {}",
                    self.nick
                ));
                return;
            }
            Err(e) => {
                self.out.error(&format!("cannot take the nick {new}: {e}"));
                return;
            }
        }
        let old = std::mem::replace(&mut self.nick, new.to_owned());
        if let Err(e) = self.users.leave(old.as_str()) {
            self.out
                .error(&format!("cannot give up the nick {old}: {e}"));
        }
        self.out.info(&format!("you are now {new}"));
    }

    fn on_said(&mut self, msg: &Message) {
        match msg.decode::<Said>() {
            Ok(said) => self.show(Shown::Said {
                from: msg.from(),
                room: said.room,
                text: said.text,
            }),
            Err(e) => self
                .out
                .error(&format!("an unreadable line from {}: {e}", msg.from())),
        }
    }

    fn on_direct(&mut self, msg: &Message) {
        match msg.decode::<Direct>() {
            Ok(direct) => self.show(Shown::Direct {
                from: msg.from(),
                text: direct.text,
            }),
            Err(e) => self
                .out
                .error(&format!("an unreadable message from {}: {e}", msg.from())),
        }
    }

    /// A change of `chat:users`: who is who.
    fn on_user(&mut self, ev: &Event) {
        for &pid in ev.pids.iter() {
            match ev.kind {
                EventKind::MemberJoined => self.names.add(pid, &ev.group),
                EventKind::MemberLeft => {
                    if let Some(still) = self.names.remove(pid, &ev.group)
                        && pid != self.me.pid()
                    {
                        self.out.info(&format!(
                            "{} is now known as {}",
                            clean(&ev.group),
                            clean(&still)
                        ));
                    }
                }
            }
        }
        if self.users_events.dropped() > 0 {
            // Events were lost (the buffer was full): start again from a fresh snapshot.
            match self.users.events() {
                Ok((events, snapshot)) => {
                    let last = std::mem::take(&mut self.names.last);
                    self.names = Names::from_snapshot(&snapshot);
                    for (pid, nick) in last {
                        self.names.last.entry(pid).or_insert(nick);
                    }
                    self.users_events = events;
                }
                Err(e) => self.out.error(&format!("cannot follow {USERS}: {e}")),
            }
        }
        self.flush();
    }

    /// A change of a room the user is in (from its monitor).
    fn on_room(&mut self, id: u64, ev: &Event) {
        let room = ev.group.to_string();
        if self.joined.get(&room).map(|w| w.id) != Some(id) {
            return; // the monitor of a room left since
        }
        let me = self.me.pid();
        for &pid in ev.pids.iter().filter(|&&pid| pid != me) {
            let room = room.clone();
            self.show(match ev.kind {
                EventKind::MemberJoined => Shown::Joined { pid, room },
                EventKind::MemberLeft => Shown::Left { pid, room },
            });
        }
    }

    /// The nick of `pid`, or the pid itself.
    fn name(&self, pid: &Pid) -> String {
        if *pid == self.me.pid() {
            return self.nick.clone();
        }
        match self.names.get(pid) {
            Some(nick) => clean(nick),
            None => pid.to_string(),
        }
    }

    fn known(&self, pid: &Pid) -> bool {
        *pid == self.me.pid() || self.names.get(pid).is_some()
    }

    /// Prints `item` now if its nick is known, else when it is (or after [`NICK_WAIT`]), in
    /// order with the lines before it.
    fn show(&mut self, item: Shown) {
        if self.pending.is_empty() && self.known(&item.pid()) {
            self.print(&item);
        } else {
            self.pending.push_back((Instant::now() + NICK_WAIT, item));
            self.flush();
        }
    }

    fn flush(&mut self) {
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

impl Drop for Chat {
    fn drop(&mut self) {
        for watch in self.joined.values() {
            watch.task.abort();
        }
    }
}

/// The peer id at the end of `addr` (`…/p2p/<peer-id>`), if any.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// Waits (up to [`DIAL_WAIT`]) until every dialed peer is connected and its users are known
/// here, so that a nick taken there is refused at start.
async fn await_peers(node: &Node, users: &Instance, peers: &[PeerId], out: Out) {
    if peers.is_empty() {
        return;
    }
    let deadline = Instant::now() + DIAL_WAIT;
    loop {
        let connected = node.connected_peers();
        let mut known = std::collections::HashSet::new();
        if let Ok(groups) = users.which_groups() {
            for nick in groups.iter() {
                if let Ok(members) = users.get_members(nick) {
                    known.extend(members.iter().map(|pid| pid.node()));
                }
            }
        }
        let missing: Vec<&PeerId> = peers
            .iter()
            .filter(|p| !(connected.contains(p) && known.contains(*p)))
            .collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for peer in missing {
                out.error(&format!(
                    "no users seen from {peer} after {DIAL_WAIT:?}; going on without them"
                ));
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lines of stdin, read on a thread of their own (a blocking read would hold the
/// runtime's shutdown); `None` at the end of input or on a read error.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    if tx.blocking_send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}
