//! Who is who, in the scope `chat:users`.
//!
//! - A nick is a registered name: the user's process registers the nick's key (`nicks.rs`)
//!   with its [`Presence`] (the nick as typed, and since when) as metadata. `register`
//!   refuses a key that someone holds (`AlreadyExists`), so a nick that reads like a taken one
//!   is refused too; `/msg NICK` sends to `whereis(key(NICK))`. Two chats that take one nick
//!   at once (neither knew of the other yet) both hold it until their claims meet; then the
//!   earlier registration keeps it on every node, and the other chat gets a
//!   [`NameLost`](procgroups::NameLost) message (`NAME_LOST_TOPIC`), says so and takes a
//!   fresh nick (`alice-4821`).
//! - Every user is a member of the group [`DIRECTORY`], with its Presence: the scope's events
//!   say who came, took another nick (`MemberUpdated`) and left, so that every line is shown
//!   with its sender's nick.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use procgroups::multiaddr::Protocol;
use procgroups::{
    ErrorKind, Event, EventKind, Instance, Message, Meta, Multiaddr, NameLost, Node, PeerId, Pid,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::cli::{MAX_NICK, check_name};
use super::nicks;
use super::render::{Out, clean};
use super::{Chat, DIRECT, Direct, USERS};

/// The group of `chat:users` every user is in, with its [`Presence`].
pub const DIRECTORY: &str = "users";
/// How long the chat waits at start for the peers it dials (and their users).
const DIAL_WAIT: Duration = Duration::from_secs(5);
/// Nicks of users who are gone, kept to name them in late events; forgotten past this many.
const MAX_REMEMBERED: usize = 10_000;
/// Fresh nicks tried after the nick was lost to another user, before giving up.
const FRESH_TRIES: usize = 20;

/// A user as the others see it: the metadata of its nick, of its membership of
/// [`DIRECTORY`] and of each room it is in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Presence {
    /// The nick as typed.
    pub nick: String,
    /// When the user took the nick (for a room: joined it), in milliseconds since the Unix
    /// epoch by the clock of its node.
    pub since_ms: u64,
}

impl Presence {
    /// `nick`, from now.
    pub fn now(nick: &str) -> Self {
        let since_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Presence {
            nick: nick.to_owned(),
            since_ms,
        }
    }

    /// `nick`, since the same time as `self`.
    pub fn renamed(&self, nick: &str) -> Self {
        Presence {
            nick: nick.to_owned(),
            since_ms: self.since_ms,
        }
    }

    /// The time of [`since_ms`](Self::since_ms) of day, `HH:MM:SS UTC`.
    pub fn since(&self) -> String {
        let secs = self.since_ms / 1000 % 86_400;
        format!(
            "{:02}:{:02}:{:02} UTC",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }

    /// The presence a member's metadata holds, if it is one.
    pub fn of(meta: Option<&Meta>) -> Option<Presence> {
        meta.and_then(|meta| meta.decode().ok())
    }
}

/// Pid -> nick, from the members of [`DIRECTORY`] and its events.
#[derive(Default)]
pub struct Names {
    current: HashMap<Pid, String>,
    /// The last nick of every process seen, to name it after it left.
    last: HashMap<Pid, String>,
}

impl Names {
    /// Everyone in [`DIRECTORY`] now.
    pub fn load(users: &Instance) -> Result<Self, String> {
        let members = users
            .get_members_with_meta(DIRECTORY)
            .map_err(|e| format!("cannot list {USERS}: {e}"))?;
        let mut names = Names::default();
        for member in members {
            if let Some(presence) = Presence::of(member.meta.as_ref()) {
                names.set(member.pid, &presence.nick);
            }
        }
        Ok(names)
    }

    fn get(&self, pid: &Pid) -> Option<&str> {
        self.current
            .get(pid)
            .or_else(|| self.last.get(pid))
            .map(String::as_str)
    }

    /// Names `pid` `nick`; the nick it had, if another.
    fn set(&mut self, pid: Pid, nick: &str) -> Option<String> {
        if self.last.len() >= MAX_REMEMBERED {
            let current = &self.current;
            self.last.retain(|pid, _| current.contains_key(pid));
        }
        self.last.insert(pid, nick.to_owned());
        self.current
            .insert(pid, nick.to_owned())
            .filter(|old| old != nick)
    }

    fn remove(&mut self, pid: Pid) {
        self.current.remove(&pid);
    }
}

/// Why a nick was not taken.
pub enum NotTaken {
    /// Someone holds it, or a nick that reads like it: that one's nick, if known.
    Taken { holder: Option<String> },
    /// The node refused the registration.
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

/// Registers the key of `presence.nick` for this process (again, for a nick written
/// otherwise with the key it holds: that replaces the metadata).
pub fn take(users: &Instance, presence: &Presence) -> Result<(), NotTaken> {
    let key = nicks::key(&presence.nick);
    users.register(&key, presence).map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            let holder = users.whereis_with_meta(&key).ok().flatten();
            NotTaken::Taken {
                holder: holder.and_then(|r| Presence::of(Some(&r.meta)).map(|p| p.nick)),
            }
        } else {
            NotTaken::Failed(e)
        }
    })
}

impl Chat {
    /// A direct message to the process holding `nick`.
    pub(super) fn message(&mut self, nick: &str, text: &str) {
        if text.is_empty() {
            self.out.error("/msg NICK TEXT: the text is missing");
            return;
        }
        let holder = match self.users.whereis_with_meta(&nicks::key(nick)) {
            Ok(holder) => holder,
            Err(e) => return self.out.error(&format!("cannot look {nick} up: {e}")),
        };
        let Some(holder) = holder else {
            self.out.error(&format!("no user named {}", clean(nick)));
            return;
        };
        // Shown by the nick its holder took, which may be written otherwise (`Alice`, `alice`).
        let to = Presence::of(Some(&holder.meta)).map_or_else(|| nick.to_owned(), |p| p.nick);
        let to = clean(&to);
        let direct = Direct {
            text: text.to_owned(),
        };
        match self.me.send(&holder.pid, DIRECT, &direct) {
            Ok(delivery) => {
                self.out.direct(Some(&to), &self.nick, text);
                // The outcome comes back through the chat's loop, which does not wait for it.
                let fates = self.fate_tx.clone();
                tokio::spawn(async move {
                    fates.send((to, delivery.outcome().await)).ok();
                });
            }
            Err(e) => self.out.error(&format!("not sent to {to}: {e}")),
        }
    }

    /// Takes the nick `new`, then gives up the old one.
    pub(super) fn rename(&mut self, new: &str) {
        if new == self.nick {
            self.out.info(&format!("you are {new} already"));
            return;
        }
        if let Err(why) = check_name("nick", new, MAX_NICK) {
            self.out.error(&why);
            return;
        }
        if let Err(why) = take(&self.users, &Presence::now(new)) {
            let still = &self.nick;
            self.out
                .error(&format!("{}; you are still {still}", why.explain(new)));
            return;
        }
        let old = std::mem::replace(&mut self.nick, new.to_owned());
        let old_key = nicks::key(&old);
        if old_key != nicks::key(new)
            && let Err(e) = self.users.unregister(&old_key)
        {
            self.out
                .error(&format!("cannot give up the nick {old}: {e}"));
        }
        self.publish_nick();
        self.out.info(&format!("you are now {new}"));
    }

    /// Shows the nick in [`DIRECTORY`] and in every room the user is in.
    fn publish_nick(&mut self) {
        let nick = self.nick.clone();
        if let Err(e) = self.users.update(DIRECTORY, &Presence::now(&nick)) {
            self.out
                .error(&format!("cannot show the nick {nick} in {USERS}: {e}"));
        }
        for (room, watch) in &self.joined {
            if let Err(e) = self.rooms.update(room, &watch.presence.renamed(&nick)) {
                self.out
                    .error(&format!("cannot show the nick {nick} in {room}: {e}"));
            }
        }
        for watch in self.joined.values_mut() {
            watch.presence = watch.presence.renamed(&nick);
        }
    }

    /// A message on `NAME_LOST_TOPIC`: another user's claim of our nick won. Takes a fresh
    /// nick (the old one, a dash and four digits).
    pub(super) fn on_name_lost(&mut self, msg: &Message) {
        let lost = match msg.decode::<NameLost>() {
            Ok(lost) => lost,
            Err(e) => {
                return self
                    .out
                    .error(&format!("an unreadable name-lost message: {e}"));
            }
        };
        if lost.name != nicks::key(&self.nick) {
            return; // a nick given up since
        }
        let old = self.nick.clone();
        let base: String = old.chars().take(MAX_NICK - 5).collect();
        for _ in 0..FRESH_TRIES {
            let fresh = format!("{base}-{}", 1000 + rand::random::<u16>() % 9000);
            if take(&self.users, &Presence::now(&fresh)).is_ok() {
                self.nick = fresh.clone();
                self.publish_nick();
                self.out.error(&format!(
                    "nick {old} was taken by another user; you are now {fresh}"
                ));
                return;
            }
        }
        self.out.error(&format!(
            "nick {old} was taken by another user; choose another with /nick"
        ));
    }

    /// A change of `chat:users`: who is who.
    pub(super) fn on_user(&mut self, ev: &Event) {
        if &*ev.group == DIRECTORY {
            let presence = Presence::of(ev.meta.as_ref());
            for &pid in ev.pids.iter() {
                match (ev.kind, &presence) {
                    (EventKind::MemberJoined | EventKind::MemberUpdated, Some(presence)) => {
                        if let Some(old) = self.names.set(pid, &presence.nick)
                            && pid != self.me.pid()
                        {
                            self.out.info(&format!(
                                "{} is now known as {}",
                                clean(&old),
                                clean(&presence.nick)
                            ));
                        }
                    }
                    (EventKind::MemberLeft, _) => self.names.remove(pid),
                    // A member without a presence: named by its pid.
                    (EventKind::MemberJoined | EventKind::MemberUpdated, None) => {}
                }
            }
        }
        if self.users_events.dropped() > 0 {
            // Events were lost (the buffer was full): start again from the members now.
            match self
                .users
                .events()
                .map_err(|e| e.to_string())
                .and_then(|(events, _)| Ok((events, Names::load(&self.users)?)))
            {
                Ok((events, names)) => {
                    let last = std::mem::take(&mut self.names.last);
                    self.names = names;
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
/// here, so that a nick taken there is refused at start. A user registers its nick before it
/// joins [`DIRECTORY`]: once its membership is known here, so is its nick.
pub async fn await_peers(node: &Node, users: &Instance, peers: &[PeerId], out: &Out) {
    if peers.is_empty() {
        return;
    }
    let deadline = Instant::now() + DIAL_WAIT;
    loop {
        let connected = node.connected_peers();
        let known: HashSet<PeerId> = users
            .get_members(DIRECTORY)
            .map(|members| members.iter().map(|pid| pid.node()).collect())
            .unwrap_or_default();
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
