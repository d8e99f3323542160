//! The command line, and the rules for names (nicks and rooms).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use procgroups::Multiaddr;

/// The longest nick, in characters.
pub const MAX_NICK: usize = 32;
/// The longest room name, in characters.
pub const MAX_ROOM: usize = 64;

/// A terminal chat over procgroups: type a line to say it in the current room.
#[derive(Parser, Debug)]
#[command(
    name = "chat",
    after_help = "Commands: /join ROOM, /leave [ROOM], /rooms, /who [ROOM], /msg NICK TEXT, \
                  /nick NAME, /help, /quit (or Ctrl-D, Ctrl-C)."
)]
pub struct Args {
    /// Your nickname, unique in the chat.
    #[arg(long, value_parser = parse_nick)]
    pub nick: String,
    /// Listen on this address (repeatable). Default: a TCP and a QUIC port on every interface.
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,
    /// Connect to this peer (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub dial: Vec<Multiaddr>,
    /// Kademlia bootstrap node, `…/p2p/<peer-id>` (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<Multiaddr>,
    /// Do not look for peers on the LAN by mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// A relay to reserve a slot at and to reach others through, `…/p2p/<peer-id>`
    /// (repeatable). Without one, the chat relays through the other users it reaches.
    #[arg(long, value_name = "MULTIADDR")]
    pub relay: Vec<Multiaddr>,
    /// Relay for anyone, not only for the users of this chat: for a node on a public address
    /// that others bootstrap and relay through.
    #[arg(long)]
    pub relay_for_anyone: bool,
    /// Read the scopes `chat:rooms` and `chat:users` from this registry file.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Serve `/metrics` (Prometheus) and `/health` on this address, e.g. `127.0.0.1:9100`.
    #[arg(long, value_name = "IP:PORT")]
    pub metrics: Option<SocketAddr>,
}

fn parse_nick(s: &str) -> Result<String, String> {
    check_name("nick", s, MAX_NICK).map(|()| s.to_owned())
}

/// Nicks and rooms: 1 to `max` letters, digits, `-`, `_` or `.`.
pub fn check_name(what: &str, s: &str, max: usize) -> Result<(), String> {
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
