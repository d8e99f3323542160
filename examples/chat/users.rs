//! Nicknames are groups of the scope `chat:users`, two per user, each with one member at most
//! (`max_members_per_group = 1`): the group of the nick's key (`~` and the key of `nicks.rs`),
//! which makes the nick and every nick that reads like it taken, and the group of the nick as
//! typed, which names the user to the others. Taking a nick is `join`ing both (refused with
//! `LimitReached` when someone holds the key), `/msg` looks the key up with `get_members` and
//! sends to that pid, and the scope's `events` say who is who.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use procgroups::multiaddr::Protocol;
use procgroups::{ErrorKind, Event, EventKind, Instance, Members, Multiaddr, Node, PeerId, Pid};
use tokio::time::Instant;

use super::cli::{MAX_NICK, check_name};
use super::nicks;
use super::render::{Out, clean};
use super::{Chat, DIRECT, Direct, USERS};

/// How long the chat waits at start for the peers it dials (and their users).
const DIAL_WAIT: Duration = Duration::from_secs(5);
/// Nicks of users who are gone, kept to name them in late events; forgotten past this many.
const MAX_REMEMBERED: usize = 10_000;
/// What starts the group of a nick's key; no nick starts with it (`cli::check_name`).
const KEY_PREFIX: char = '~';

/// The group of `chat:users` held by whoever holds `nick` or a nick that reads like it.
pub fn key_group(nick: &str) -> String {
    format!("{KEY_PREFIX}{}", nicks::key(nick))
}

/// Whether `group` of `chat:users` is a key (else it is a nick as typed).
fn is_key(group: &str) -> bool {
    group.starts_with(KEY_PREFIX)
}

/// Why a nick was not taken.
pub enum NotTaken {
    /// Someone holds it, or a nick that reads like it: that one's nick, if known.
    Taken { holder: Option<String> },
    /// The node refused the join.
    Failed(procgroups::Error),
}

impl NotTaken {
    /// `the nick аlice is taken (it reads like alice)`, `cannot take the nick x: why`.
    pub fn explain(&self, nick: &str) -> String {
        match self {
            NotTaken::Taken {
                holder: Some(holder),
            } if holder != nick => {
                format!("the nick {nick} is taken (it reads like {})", clean(holder))
            }
            NotTaken::Taken { .. } => format!("the nick {nick} is taken"),
            NotTaken::Failed(e) => format!("cannot take the nick {nick}: {e}"),
        }
    }
}

/// Takes `nick`: its key's group (unless `held_key` says this process holds that key
/// already, as in a rename to `Alice` from `alice`), then the group of the nick as typed.
/// On failure nothing new is held.
pub fn take(users: &Instance, nick: &str, held_key: Option<&str>) -> Result<(), NotTaken> {
    let key = key_group(nick);
    let fresh_key = held_key != Some(key.as_str());
    let refused = |e: procgroups::Error, group: &str| {
        if e.kind() == ErrorKind::LimitReached {
            NotTaken::Taken {
                holder: holder_of(users, group),
            }
        } else {
            NotTaken::Failed(e)
        }
    };
    if fresh_key {
        users.join(key.as_str()).map_err(|e| refused(e, &key))?;
    }
    if let Err(e) = users.join(nick) {
        if fresh_key {
            // Giving back what was just taken; a failure leaves a key the user cannot use.
            users.leave(key.as_str()).ok();
        }
        return Err(refused(e, nick));
    }
    Ok(())
}

/// The nick as typed of whoever holds `group` (a key or a nick), looked up in the scope.
fn holder_of(users: &Instance, group: &str) -> Option<String> {
    let holder = users.get_members(group).ok()?.iter().next()?;
    let groups = users.which_groups().ok()?;
    groups
        .iter()
        .filter(|g| !is_key(g))
        .find(|g| {
            users
                .get_members(g)
                .is_ok_and(|members| members.iter().any(|pid| pid == holder))
        })
        .map(|g| g.to_string())
}

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
        for (nick, members) in snapshot.iter().filter(|(group, _)| !is_key(group)) {
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
        let to = match self.users.get_members(&key_group(nick)) {
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
        // Shown by the nick its holder took, which may be written otherwise (`Alice`, `alice`).
        let nick = self.name(&to);
        let nick = nick.as_str();
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
        let old_key = key_group(&self.nick);
        if let Err(why) = take(&self.users, new, Some(&old_key)) {
            let still = &self.nick;
            self.out
                .error(&format!("{}; you are still {still}", why.explain(new)));
            return;
        }
        let old = std::mem::replace(&mut self.nick, new.to_owned());
        let mut give_up = vec![old.clone()];
        if key_group(new) != old_key {
            give_up.push(old_key);
        }
        for group in give_up {
            if let Err(e) = self.users.leave(group.as_str()) {
                self.out
                    .error(&format!("cannot give up the nick {old}: {e}"));
            }
        }
        self.out.info(&format!("you are now {new}"));
    }

    /// A change of `chat:users`: who is who.
    pub(super) fn on_user(&mut self, ev: &Event) {
        for &pid in ev.pids.iter().filter(|_| !is_key(&ev.group)) {
            match ev.kind {
                EventKind::MemberJoined => self.names.add(pid, &ev.group),
                EventKind::MemberUpdated => {}
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
