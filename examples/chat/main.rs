//! A terminal chat over process groups: rooms, nicknames, direct messages.
//!
//! Each user is one node with one process. Rooms are the groups of the scope `chat:rooms`
//! (everyone starts in `lobby`), with the user's nick and the time it joined as its metadata
//! (`join_with`), which `/who` shows; a line typed is broadcast to the current room.
//!
//! Nicknames are registered names of the scope `chat:users` (`users.rs`): a nick that
//! someone holds is refused (`register` says `AlreadyExists`), and `/msg NICK` goes to
//! `whereis`. Two chats that take one nick at the same time (neither knew of the other yet)
//! both hold it until their claims meet; then the earlier registration keeps it on every
//! node, and the other chat is told (`! nick alice was taken by another user; you are now
//! alice-4821`) and keeps the fresh nick it registered. Every user is also a member of the
//! group `users` of that scope, whose metadata says every user's nick.
//!
//! A nick is shown as typed, but two nicks that a reader could take for one another are one
//! nick (`nicks.rs`): each is registered under its key, the nick in NFKC, lowercased, then its
//! confusable skeleton (Unicode TS #39), so that when `alice` is taken, so are `Alice`, `ALICE`
//! and `аlice` with a Cyrillic `а`; `/msg ALICE` reaches alice.
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
//! - `--relay MULTIADDR` (repeatable): a relay (`…/p2p/<peer-id>`) to reserve a slot at and
//!   to reach the users that cannot be dialed directly through. Without one, every chat relays
//!   for the other users it reaches, and they reach each other through it; a relayed
//!   connection is made direct by hole punching where the NATs allow.
//! - `--relay-for-anyone`: relay for any peer, not only for the users of this chat (a node
//!   on a public address that others dial and relay through).
//! - `--metrics IP:PORT`: serve `/metrics` (Prometheus) and `/health` there.
//! - `--config PATH`: read the scopes from a registry file (for example
//!   `examples/procgroups.toml`) instead of the built-in ones; it must define `chat:rooms` and
//!   `chat:users`.
//!
//! In a terminal (stdin and stdout both), the chat is a line editor (`term.rs`): the prompt
//! names the current room (`[lobby]> `), the up and down keys go through the lines typed
//! before, and what arrives while a line is typed is printed above it, never into it. A line
//! sent is replaced on the screen by what it did: a line said shows once, as the others see
//! it (`[lobby] <alice> hello`). In a pipe (not a terminal) the chat reads plain lines and
//! prints plain lines, one per thing, so that scripts and `tests/chat.rs` can drive it.
//!
//! A line (or a paste, several lines at once) over [`MAX_LINE_BYTES`] (4096) bytes is refused
//! whole, with a message, in a terminal as in a pipe: it is never cut, and nothing of it is
//! said or sent.
//!
//! Commands: `/join ROOM` (it becomes the current room), `/leave [ROOM]`, `/rooms`,
//! `/who [ROOM]`, `/msg NICK TEXT`, `/nick NAME`, `/addrs` (where others can reach you:
//! listen addresses, the external ones peers confirmed, relayed ones; and how each peer is
//! reached), `/help`, `/quit`. Any other line is said in
//! the current room (start it with `//` to say a line that begins with `/`). Ctrl-D, `/quit`
//! and Ctrl-C leave gracefully: the others see you leave at once.
//!
//! The output is one line per thing, the same in a terminal (with colours) and in a pipe
//! (without):
//!
//! ```text
//! * listening on /ip4/127.0.0.1/tcp/4001/p2p/12D3…
//! * reachable at /ip4/192.0.2.7/tcp/4001/p2p/12D3…/p2p-circuit/p2p/12D3…
//! * alice is in lobby
//! * bob joined lobby
//! [lobby] <bob> hello
//! [dm] <bob> psst
//! * lobby: alice (joined 09:12:03 UTC), bob (joined 09:12:41 UTC)
//! * lobby (2)
//! * bob left lobby
//! * delivered to bob
//! ! not delivered to dave: gave up after 4 attempt(s), last: node unreachable
//! ! no user named dave
//! ! nick alice was taken by another user; you are now alice-4821
//! ```
//!
//! A direct message is shown at once (`[dm -> bob] <alice> psst`); the line saying whether
//! bob's node accepted it follows when that is known, without holding up the chat.
//!
//! A user whose nick this node does not know (yet) is shown by its pid.
//!
//! The example, file by file: `main.rs` starts the node (its two scopes) and runs the chat's
//! loop; `rooms.rs` is the rooms as groups, `users.rs` the nicks as groups, `commands.rs`
//! parses what the user types, `input.rs` reads it (from the line editor of `term.rs` or
//! from a pipe), `render.rs` prints, `cli.rs` is the command line.

mod cli;
mod commands;
mod input;
mod nicks;
mod render;
mod rooms;
mod term;
mod users;

#[path = "../common/mod.rs"]
mod common;

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use procgroups::{
    DeliveryOutcome, Event, Inbox, Instance, Message, Multiaddr, NAME_LOST_TOPIC, Node,
    NodeBuilder, Process, Reach, RelayServer, ScopeConfig, Subscription,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use cli::Args;
use commands::Command;
use input::{Keyboard, Typed};
use render::{Out, Shown};
use rooms::Watch;
use term::Terminal;
use users::{DIRECTORY, Names, Presence, await_peers, peer_of};

/// The scope of the rooms: one group per room.
const ROOMS: &str = "chat:rooms";
/// The scope of the nicknames: each a registered name; and the group `users` of everyone.
const USERS: &str = "chat:users";
/// The room everyone starts in.
const LOBBY: &str = "lobby";
/// The topic of the lines said in a room.
const SAID: &str = "chat";
/// The topic of direct messages.
const DIRECT: &str = "dm";
/// The longest line typed, in bytes: a longer line or paste is refused whole, with a
/// message, never cut or sent in part. Whatever fits is far below the cap of the frame that
/// carries it (`BehaviourConfig::max_request_bytes`, 1 MiB by default, `src/net/protocols.rs`).
const MAX_LINE_BYTES: usize = 4096;
/// How often the chat looks for new external addresses to show.
const ADDRESS_CHECK: Duration = Duration::from_secs(1);

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
    // `RUST_LOG=procgroups=debug` shows what the node does, on stderr.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    // The line editor when stdin and stdout are a terminal; plain lines otherwise.
    let terminal = Terminal::open();
    let out = Out::new(terminal.as_ref().map(Terminal::screen));
    let code = chat(&args, &out, terminal).await;
    out.finish(); // what the screen holds is printed before the process ends
    code
}

/// Starts the node and runs the chat on it until the user leaves.
async fn chat(args: &Args, out: &Out, terminal: Option<Terminal>) -> ExitCode {
    let builder = match node_builder(args) {
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
    let code = match Chat::start(&node, args, out.clone()).await {
        Ok(chat) => {
            chat.run(terminal).await;
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
        .bootstrap(args.bootstrap.iter().cloned())
        .relays(args.relay.iter().cloned());
    if args.relay_for_anyone {
        builder = builder.relay_server(RelayServer::Anyone);
    }
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

/// The built-in `chat:users`, as in `examples/procgroups.toml`.
fn users_config() -> ScopeConfig {
    ScopeConfig::builder()
        .node_down_grace(Duration::from_secs(3))
        .monitor_buffer(256)
        .build()
        .expect("a valid built-in scope config")
}

// ---------------------------------------------------------------------------------------------
// The chat.

enum Input {
    Line(Typed),
    Said(Message),
    Direct(Message),
    /// Our nick went to another user whose claim was earlier.
    NameLost(Message),
    User(Event),
    Room(u64, Event),
    /// The fate of a direct message to a nick.
    Fate(String, DeliveryOutcome),
    Due,
    /// Time to look whether the node has new external addresses.
    Addresses,
    Interrupt(std::io::Result<()>),
}

struct Chat {
    out: Out,
    node: Node,
    /// External addresses already shown.
    shown_addrs: Vec<Multiaddr>,
    me: Process,
    nick: String,
    users: Instance,
    rooms: Instance,
    said: Inbox,
    direct: Inbox,
    name_lost: Inbox,
    users_events: Subscription,
    names: Names,
    /// The rooms the user is in.
    joined: BTreeMap<String, Watch>,
    current: Option<String>,
    next_watch: u64,
    room_tx: mpsc::UnboundedSender<(u64, Event)>,
    room_rx: mpsc::UnboundedReceiver<(u64, Event)>,
    /// The outcomes of direct messages, each awaited by a task of its own so that the loop
    /// never waits for the network.
    fate_tx: mpsc::UnboundedSender<(String, DeliveryOutcome)>,
    fate_rx: mpsc::UnboundedReceiver<(String, DeliveryOutcome)>,
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
        let name_lost = me.listen(NAME_LOST_TOPIC);
        let open = |scope: &str| {
            me.open(scope)
                .map_err(|e| format!("cannot open the scope {scope}: {e}"))
        };
        let users = open(USERS)?;
        let rooms = open(ROOMS)?;
        let (users_events, _) = users
            .events()
            .map_err(|e| format!("cannot follow {USERS}: {e}"))?;
        // After subscribing: a change since is in both, and applies again harmlessly.
        let names = Names::load(&users)?;

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
        await_peers(node, &users, &dialed, &out).await;

        // The nick first, so that the others know it before they see us in the lobby.
        let presence = Presence::now(&args.nick);
        users::take(&users, &presence)
            .map_err(|why| format!("{}: choose another with --nick", why.explain(&args.nick)))?;
        users
            .join_with(DIRECTORY, &presence)
            .map_err(|e| format!("cannot join {USERS}: {e}"))?;

        let (room_tx, room_rx) = mpsc::unbounded_channel();
        let (fate_tx, fate_rx) = mpsc::unbounded_channel();
        let mut chat = Chat {
            out,
            node: node.clone(),
            shown_addrs: Vec::new(),
            me,
            nick: args.nick.clone(),
            users,
            rooms,
            said,
            direct,
            name_lost,
            users_events,
            names,
            joined: BTreeMap::new(),
            current: None,
            next_watch: 0,
            room_tx,
            room_rx,
            fate_tx,
            fate_rx,
            pending: VecDeque::new(),
        };
        chat.enter(LOBBY)
            .map_err(|e| format!("cannot join {LOBBY}: {e}"))?;
        if std::io::stdin().is_terminal() {
            chat.out.info("type /help for the commands");
        }
        Ok(chat)
    }

    /// Runs until the input ends, `/quit` or Ctrl-C: reads from the line editor of
    /// `terminal` if there is one, else plain lines of stdin.
    async fn run(mut self, terminal: Option<Terminal>) {
        let mut keyboard = match terminal {
            Some(terminal) => Keyboard::Terminal(terminal.start(&self.prompt())),
            None => Keyboard::pipe(),
        };
        let interrupt = tokio::signal::ctrl_c();
        tokio::pin!(interrupt);
        let mut interrupt_armed = true;
        let mut addresses = tokio::time::interval(ADDRESS_CHECK);
        loop {
            let due = self.pending.front().map(|(due, _)| *due);
            // In this order: what others said and did before what the user types next.
            let input = tokio::select! {
                biased;
                r = &mut interrupt, if interrupt_armed => Input::Interrupt(r),
                Some(msg) = self.said.recv() => Input::Said(msg),
                Some(msg) = self.direct.recv() => Input::Direct(msg),
                Some(msg) = self.name_lost.recv() => Input::NameLost(msg),
                Some((id, ev)) = self.room_rx.recv() => Input::Room(id, ev),
                Some((nick, outcome)) = self.fate_rx.recv() => Input::Fate(nick, outcome),
                Some(ev) = self.users_events.recv() => Input::User(ev),
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    Input::Due
                }
                typed = keyboard.recv() => Input::Line(typed),
                _ = addresses.tick() => Input::Addresses,
            };
            match input {
                Input::Line(Typed::End) => break,
                Input::Line(Typed::TooLong { bytes }) => {
                    self.out.error(&format!(
                        "a line has at most {MAX_LINE_BYTES} bytes; this one has {bytes}: not sent"
                    ));
                    keyboard.ready(&self.prompt());
                }
                Input::Line(Typed::Line(line)) => {
                    // A paste into the line editor may hold several lines: each in turn.
                    if !line
                        .split('\n')
                        .all(|line| self.command(line.trim_end_matches('\r')))
                    {
                        break;
                    }
                    keyboard.ready(&self.prompt());
                }
                Input::Said(msg) => self.on_said(&msg),
                Input::Direct(msg) => self.on_direct(&msg),
                Input::NameLost(msg) => self.on_name_lost(&msg),
                Input::User(ev) => self.on_user(&ev),
                Input::Room(id, ev) => self.on_room(id, &ev),
                Input::Fate(nick, outcome) => self.out.fate(&nick, &outcome),
                Input::Due => self.flush(),
                Input::Addresses => self.new_addresses(),
                Input::Interrupt(Ok(())) => break,
                Input::Interrupt(Err(e)) => {
                    self.out
                        .error(&format!("cannot catch Ctrl-C ({e}); use /quit or Ctrl-D"));
                    interrupt_armed = false;
                }
            }
        }
        drop(keyboard); // the terminal as it was, before the last line
        self.out.info("bye");
    }

    /// The line editor's prompt: the current room.
    fn prompt(&self) -> String {
        match &self.current {
            Some(room) => format!("[{room}]> "),
            None => "[no room]> ".to_owned(),
        }
    }

    /// Handles one line of input; `false` to quit.
    fn command(&mut self, line: &str) -> bool {
        match commands::parse(line) {
            Command::Nothing => {}
            Command::Say(text) => self.say(&text),
            Command::Quit => return false,
            Command::Help => {
                for line in commands::HELP {
                    self.out.info(line);
                }
            }
            Command::Join(room) => self.join(room),
            Command::Leave(room) => self.leave(room),
            Command::Rooms => self.list_rooms(),
            Command::Who(room) => self.who(room),
            Command::Msg { nick, text } => self.message(nick, text),
            Command::Nick(nick) => self.rename(nick),
            Command::Addrs => self.addresses(),
            Command::NeedsArgument(name) => {
                self.out
                    .error(&format!("/{name} needs an argument; see /help"));
            }
            Command::Unknown(name) => self.out.error(&format!(
                "unknown command /{name}; /help lists the commands"
            )),
        }
        true
    }

    /// Shows the external addresses (AutoNAT confirmed, or at a relay) not shown before.
    fn new_addresses(&mut self) {
        for addr in self.node.external_addrs() {
            if !self.shown_addrs.contains(&addr) {
                self.out.info(&format!("reachable at {addr}"));
                self.shown_addrs.push(addr);
            }
        }
    }

    /// `/addrs`: where others can reach this node, and how it reaches each peer.
    fn addresses(&mut self) {
        for addr in self.node.listen_addrs() {
            self.out.info(&format!("listening on {addr}"));
        }
        for addr in self.node.external_addrs() {
            self.out.info(&format!("reachable at {addr}"));
        }
        for peer in self.node.connected_peers() {
            let how = match self.node.reach(&peer) {
                Reach::Direct => "directly",
                Reach::Relayed => "through a relay",
                Reach::Unreached => "not any more",
            };
            self.out.info(&format!("peer {peer}: reached {how}"));
        }
    }

    /// A plain line: broadcast to the current room (ourselves included: our copy is the echo).
    fn say(&mut self, text: &str) {
        let Some(room) = self.current.clone() else {
            self.out
                .error("you are in no room: /join one to talk, /msg someone");
            return;
        };
        let said = Said {
            room: room.clone(),
            text: text.to_owned(),
        };
        if let Err(e) = self.rooms.broadcast(&room, SAID, &said) {
            self.out.error(&format!("not sent to {room}: {e}"));
        }
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
}

impl Drop for Chat {
    fn drop(&mut self) {
        for watch in self.joined.values() {
            watch.task.abort();
        }
    }
}
