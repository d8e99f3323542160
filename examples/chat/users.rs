//! Nicknames are the groups of the scope `chat:users`: one group per nick, whose only member
//! (`max_members_per_group = 1`) is the user's process. Taking a nick is `join` (refused with
//! `LimitReached` when someone holds it), `/msg` looks the nick up with `get_members` and
//! sends to that pid, and the scope's `events` say who is who.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use procgroups::multiaddr::Protocol;
use procgroups::{ErrorKind, Event, EventKind, Instance, Members, Multiaddr, Node, PeerId, Pid};
use tokio::time::Instant;

use super::cli::{MAX_NICK, check_name};
use super::render::{Out, clean};
use super::{Chat, DIRECT, Direct, USERS};

/// How long the chat waits at start for the peers it dials (and their users).
const DIAL_WAIT: Duration = Duration::from_secs(5);
/// Nicks of users who are gone, kept to name them in late events; forgotten past this many.
const MAX_REMEMBERED: usize = 10_000;

/// Pid -> nick, from the events of `chat:users`.
#[derive(Default)]
pub struct Names {
    /// The nick groups each process is in, oldest first (two during a `/nick`).
    current: HashMap<Pid, Vec<String>>,
    /// The last nick of every process seen, to name it after it left `chat:users`.
    last: HashMap<Pid, String>,
}

impl Names {
    pub fn from_snapshot(snapshot: &BTreeMap<Arc<str>, Members>) -> Self {
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

impl Chat {
    /// A direct message to the process holding `nick`.
    pub(super) fn message(&mut self, nick: &str, text: &str) {
        if text.is_empty() {
            self.out.error("/msg NICK TEXT: the text is missing");
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
            Ok(delivery) => {
                self.out.direct(Some(nick), &self.nick, text);
                // The outcome comes back through the chat's loop, which does not wait for it.
                let (fates, nick) = (self.fate_tx.clone(), nick.to_owned());
                tokio::spawn(async move {
                    fates.send((nick, delivery.outcome().await)).ok();
                });
            }
            Err(e) => self.out.error(&format!("not sent to {nick}: {e}")),
        }
    }

    /// Takes the nick `new` and then gives up the old one.
    pub(super) fn rename(&mut self, new: &str) {
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

    /// A change of `chat:users`: who is who.
    pub(super) fn on_user(&mut self, ev: &Event) {
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

    /// The nick of `pid`, or the pid itself.
    pub(super) fn name(&self, pid: &Pid) -> String {
        if *pid == self.me.pid() {
            return self.nick.clone();
        }
        match self.names.get(pid) {
            Some(nick) => clean(nick),
            None => pid.to_string(),
        }
    }

    pub(super) fn known(&self, pid: &Pid) -> bool {
        *pid == self.me.pid() || self.names.get(pid).is_some()
    }
}

/// The peer id at the end of `addr` (`…/p2p/<peer-id>`), if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// Waits (up to [`DIAL_WAIT`]) until every dialed peer is connected and its users are known
/// here, so that a nick taken there is refused at start.
pub async fn await_peers(node: &Node, users: &Instance, peers: &[PeerId], out: &Out) {
    if peers.is_empty() {
        return;
    }
    let deadline = Instant::now() + DIAL_WAIT;
    loop {
        let connected = node.connected_peers();
        let mut known = HashSet::new();
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
