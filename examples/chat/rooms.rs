//! Rooms are the groups of the scope `chat:rooms`: joining a room is `join_with` (the user's
//! [`Presence`] in the room: its nick, and when it joined), leaving it is `leave`, `/rooms`
//! is `which_groups`, `/who` is `get_members_with_meta`, and the joins and leaves of the
//! others come from a `monitor` of each room the user is in.

use procgroups::{Event, EventKind};
use tokio::task::JoinHandle;

use super::Chat;
use super::cli::{MAX_ROOM, check_name};
use super::render::{Shown, clean};
use super::users::Presence;

/// A room the user is in: its monitor, forwarded to the chat's loop.
pub struct Watch {
    /// Tells this monitor's events from those of an earlier monitor of the same room.
    pub id: u64,
    pub task: JoinHandle<()>,
    /// The user's metadata in the room.
    pub presence: Presence,
}

impl Chat {
    /// Joins `room` (or makes it current if the user is in it already).
    pub(super) fn join(&mut self, room: &str) {
        if let Err(why) = check_name("room", room, MAX_ROOM) {
            self.out.error(&why);
            return;
        }
        if let Err(e) = self.enter(room) {
            self.out.error(&format!("cannot join {room}: {e}"));
        }
    }

    /// Monitors `room`, joins it, makes it current; prints `* nick is in room`.
    pub(super) fn enter(&mut self, room: &str) -> procgroups::Result<()> {
        if !self.joined.contains_key(room) {
            // Monitor first: the joins after ours are all seen (ours is not printed).
            let (mut sub, _members) = self.rooms.monitor(room)?;
            let presence = Presence::now(&self.nick);
            if let Err(e) = self.rooms.join_with(room, &presence) {
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
            self.joined
                .insert(room.to_owned(), Watch { id, task, presence });
        }
        self.current = Some(room.to_owned());
        self.out.info(&format!("{} is in {room}", self.nick));
        Ok(())
    }

    pub(super) fn leave(&mut self, room: Option<&str>) {
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
    pub(super) fn list_rooms(&self) {
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

    /// `* room: nick (joined HH:MM:SS UTC), …` (sorted), from each member's metadata.
    pub(super) fn who(&self, room: Option<&str>) {
        let Some(room) = room.map(str::to_owned).or_else(|| self.current.clone()) else {
            self.out.error("you are in no room: /who ROOM");
            return;
        };
        let members = match self.rooms.get_members_with_meta(&room) {
            Ok(members) => members,
            Err(e) => return self.out.error(&format!("cannot list {room}: {e}")),
        };
        let mut nicks: Vec<String> = members
            .iter()
            .map(|member| match Presence::of(member.meta.as_ref()) {
                Some(presence) => {
                    format!("{} (joined {})", clean(&presence.nick), presence.since())
                }
                // A member that joined without metadata: its nick from chat:users.
                None => self.name(&member.pid),
            })
            .collect();
        nicks.sort();
        if nicks.is_empty() {
            self.out.info(&format!("{room}: nobody"));
        } else {
            self.out.info(&format!("{room}: {}", nicks.join(", ")));
        }
    }

    /// A change of a room the user is in (from its monitor).
    pub(super) fn on_room(&mut self, id: u64, ev: &Event) {
        let room = ev.group.to_string();
        if self.joined.get(&room).map(|w| w.id) != Some(id) {
            return; // the monitor of a room left since
        }
        let joined = match ev.kind {
            EventKind::MemberJoined => true,
            EventKind::MemberLeft => false,
            // A new nick, which chat:users shows (`* bob is now known as robert`).
            EventKind::MemberUpdated => return,
        };
        let me = self.me.pid();
        for &pid in ev.pids.iter().filter(|&&pid| pid != me) {
            let room = room.clone();
            self.show(if joined {
                Shown::Joined { pid, room }
            } else {
                Shown::Left { pid, room }
            });
        }
    }
}
