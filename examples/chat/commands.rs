//! What the user types: a line is a command (`/join lobby`) or something to say.

/// One line of input, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// A blank line.
    Nothing,
    /// Say this in the current room.
    Say(String),
    /// `/quit`, `/exit`.
    Quit,
    /// `/help`.
    Help,
    /// `/join ROOM`.
    Join(&'a str),
    /// `/leave [ROOM]`, `/part [ROOM]`: the current room without one.
    Leave(Option<&'a str>),
    /// `/rooms`.
    Rooms,
    /// `/who [ROOM]`: the current room without one.
    Who(Option<&'a str>),
    /// `/msg NICK TEXT` (the text may be empty: that is for the chat to refuse).
    Msg { nick: &'a str, text: &'a str },
    /// `/nick NAME`.
    Nick(&'a str),
    /// `/addrs`.
    Addrs,
    /// `/join`, `/msg` or `/nick` without its argument.
    NeedsArgument(&'a str),
    /// `/` followed by a name no command has.
    Unknown(&'a str),
}

/// Parses one line. A line not starting with `/` is said; `//` says a line that starts with
/// `/`; a command is its name and its first word (and, for `/msg`, the rest of the line).
pub fn parse(line: &str) -> Command<'_> {
    let line = line.trim();
    if line.is_empty() {
        return Command::Nothing;
    }
    if let Some(text) = line.strip_prefix("//") {
        return Command::Say(format!("/{text}"));
    }
    let Some(command) = line.strip_prefix('/') else {
        return Command::Say(line.to_owned());
    };
    let (name, rest) = match command.split_once(char::is_whitespace) {
        Some((name, rest)) => (name, rest.trim()),
        None => (command, ""),
    };
    let arg = rest.split_whitespace().next();
    match (name, arg) {
        ("quit" | "exit", _) => Command::Quit,
        ("help", _) => Command::Help,
        ("join", Some(room)) => Command::Join(room),
        ("leave" | "part", room) => Command::Leave(room),
        ("rooms", _) => Command::Rooms,
        ("addrs", _) => Command::Addrs,
        ("who", room) => Command::Who(room),
        ("msg", Some(nick)) => Command::Msg {
            nick,
            text: rest[nick.len()..].trim(),
        },
        ("nick", Some(nick)) => Command::Nick(nick),
        ("join" | "msg" | "nick", None) => Command::NeedsArgument(name),
        _ => Command::Unknown(name),
    }
}

/// The answer to `/help`, a line each.
pub const HELP: &[&str] = &[
    "commands:",
    "  /join ROOM       join ROOM and make it the current room",
    "  /leave [ROOM]    leave ROOM (default: the current room)",
    "  /rooms           every room with its number of users",
    "  /who [ROOM]      who is in ROOM, since when (default: the current room)",
    "  /msg NICK TEXT   a direct message",
    "  /nick NAME       change your nick",
    "  /addrs           where others can reach you, and how you reach each peer",
    "  /quit            leave (Ctrl-D and Ctrl-C too)",
    "  anything else is said in the current room (// to start a line with /)",
];
