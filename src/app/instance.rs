//! A process's handle on a scope, from [`Process::open`](crate::Process::open).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::app::calls::{CallResults, DEFAULT_CALL_TIMEOUT};
use crate::app::mailbox::{Ask, Message, ProcessShared, encode_payload};
use crate::app::scope::Scope;
use crate::app::shared::NodeShared;
use crate::net::wire::{CallTag, Frame};
use crate::proto::groups::group_name_problem;
use crate::proto::registry::name_problem;
use crate::vocab::delivery::{Delivery, Tracking};
use crate::vocab::error::{Error, Result};
use crate::vocab::meta::{MemberMeta, Meta};
use crate::vocab::names::Registration;
use crate::vocab::policy::Permission;
use crate::{Members, Pid, Subscription};

/// One group name or a batch of them: `"workers"`, `["workers", "all"]`, a `Vec<String>`, a
/// slice. A name may appear several times in a batch (each occurrence is one slot).
pub trait GroupNames {
    /// Calls `f` with the names.
    fn with_names<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R;
}

impl GroupNames for str {
    fn with_names<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[self])
    }
}

impl GroupNames for String {
    fn with_names<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        f(&[self.as_str()])
    }
}

impl<S: AsRef<str>> GroupNames for [S] {
    fn with_names<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        let names: Vec<&str> = self.iter().map(AsRef::as_ref).collect();
        f(&names)
    }
}

impl<S: AsRef<str>, const N: usize> GroupNames for [S; N] {
    fn with_names<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        self.as_slice().with_names(f)
    }
}

impl<S: AsRef<str>> GroupNames for Vec<S> {
    fn with_names<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        self.as_slice().with_names(f)
    }
}

impl<T: GroupNames + ?Sized> GroupNames for &T {
    fn with_names<R>(&self, f: impl FnOnce(&[&str]) -> R) -> R {
        (**self).with_names(f)
    }
}

/// A process's handle on a scope: every group operation goes through it.
///
/// Obtained from [`Process::open`](crate::Process::open). Memberships belong to the process,
/// not to the instance, and so do subscriptions: [`release`](Self::release) (or dropping the
/// instance) frees the instance only; the process stays in its groups and its subscriptions
/// stay open. After a release, or after the process exits, every method returns
/// [`Invalid`](crate::ErrorKind::Invalid); after the node shuts down,
/// [`Unavailable`](crate::ErrorKind::Unavailable).
///
/// Every method checks its permission with the node's [`Policy`](crate::Policy) first:
/// `pg.join` for `join` on each group of the batch, and so on (see
/// [`Permission`](crate::Permission)).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> procgroups::Result<()> {
/// use procgroups::{ErrorKind, Node, ScopeConfig};
///
/// let node = Node::builder()
///     .mdns(false)
///     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
///     .scope("app:pg", ScopeConfig::default())
///     .build()
///     .await?;
/// let p = node.spawn_process();
/// assert_eq!(p.open("app:nope").unwrap_err().kind(), ErrorKind::NotFound);
/// let pg = p.open("app:pg")?;
/// pg.join(["workers", "all"])?;                        // all or nothing
/// assert_eq!(&*pg.which_groups()?, ["all".into(), "workers".into()]);
/// pg.leave(["workers", "nowhere"])?;                   // best effort
/// assert_eq!(pg.leave("nowhere").unwrap_err().kind(), ErrorKind::Invalid);
/// assert_eq!(pg.broadcast("all", "hello", "world")?.slots(), 1); // one slot targeted
/// pg.release();
/// assert_eq!(pg.join("x").unwrap_err().kind(), ErrorKind::Invalid);
/// # Ok(()) }
/// ```
pub struct Instance {
    scope: Arc<Scope>,
    process: Arc<ProcessShared>,
    node: Arc<NodeShared>,
    released: AtomicBool,
}

impl Instance {
    pub(crate) fn new(
        scope: Arc<Scope>,
        process: Arc<ProcessShared>,
        node: Arc<NodeShared>,
    ) -> Self {
        Self {
            scope,
            process,
            node,
            released: AtomicBool::new(false),
        }
    }

    /// The scope id.
    pub fn scope(&self) -> &str {
        &self.scope.id
    }

    fn usable(&self) -> Result<()> {
        self.node.check_running()?;
        if self.released.load(Ordering::Acquire) || !self.process.is_alive() {
            return Err(Error::Released {
                scope: self.scope.id.to_string(),
            });
        }
        Ok(())
    }

    fn check(&self, permission: Permission, resource: &str) -> Result<()> {
        self.node
            .check(self.process.pid, &self.scope.id, permission, resource)
    }

    fn checked_names(&self, names: &[&str], permission: Permission) -> Result<()> {
        if names.is_empty() {
            return Err(Error::EmptyBatch);
        }
        for name in names {
            valid_group(name)?;
        }
        for name in names {
            self.check(permission, name)?;
        }
        Ok(())
    }

    fn group(&self, group: &str, permission: Permission) -> Result<()> {
        self.usable()?;
        valid_group(group)?;
        self.check(permission, group)
    }

    /// Joins one group or a batch. All or nothing: an invalid name, a denied permission or a
    /// limit anywhere in the batch means no effect. A process may join a group many times and
    /// must leave it as many times. When `join` returns, reads on this node show the change.
    pub fn join(&self, groups: impl GroupNames) -> Result<()> {
        self.usable()?;
        groups.with_names(|names| {
            self.checked_names(names, Permission::Join)?;
            self.scope.join(&self.process, names)
        })
    }

    /// Leaves one slot of one group, or of each group of a batch (best effort). Fails
    /// (`Invalid`) only when the process was a member of none of the groups; then nothing
    /// changed.
    pub fn leave(&self, groups: impl GroupNames) -> Result<()> {
        self.usable()?;
        groups.with_names(|names| {
            self.checked_names(names, Permission::Leave)?;
            self.scope.leave(&self.process, names)
        })
    }

    /// Joins one slot of `group`, like [`join`](Self::join), and sets the process's metadata
    /// there to `meta`: one value per process and group, shared by its slots; a later
    /// `join_with` or [`update`](Self::update) replaces it, and it goes with the process's
    /// last slot. The value travels to the peers with the join (in the same delta) and is in
    /// the [`MemberJoined`](crate::EventKind::MemberJoined) event. A value whose encoding is
    /// over the scope's [`max_meta_bytes`](crate::ScopeConfig::max_meta_bytes) is
    /// `LimitReached`, and nothing changes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// use procgroups::{ErrorKind, Node, ScopeConfig};
    ///
    /// let node = Node::builder()
    ///     .mdns(false)
    ///     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    ///     .scope("app:pg", ScopeConfig::default())
    ///     .build()
    ///     .await?;
    /// let p = node.spawn_process();
    /// let pg = p.open("app:pg")?;
    /// pg.join_with("lobby", &("alice", "online"))?;
    /// pg.update("lobby", &("alice", "away"))?;
    /// let members = pg.get_members_with_meta("lobby")?;
    /// assert_eq!(members[0].pid, p.pid());
    /// assert_eq!(members[0].meta.as_ref().unwrap().decode::<(String, String)>()?.1, "away");
    /// assert_eq!(pg.update("elsewhere", &1).unwrap_err().kind(), ErrorKind::Invalid);
    /// let too_big = vec![0u8; 4096];
    /// assert_eq!(pg.join_with("lobby", &too_big).unwrap_err().kind(), ErrorKind::LimitReached);
    /// # Ok(()) }
    /// ```
    pub fn join_with<T: Serialize + ?Sized>(&self, group: &str, meta: &T) -> Result<()> {
        self.group(group, Permission::Join)?;
        let meta = Meta::encode(meta)?;
        self.scope.join_with(&self.process, group, meta)
    }

    /// Replaces the process's metadata in `group` (checked as `pg.join`): its slots stay;
    /// subscribers get a [`MemberUpdated`](crate::EventKind::MemberUpdated) event, the peers
    /// the new value. `Invalid` ([`NotMember`](Error::NotMember)) when the process is not a
    /// member of `group`; `LimitReached` for a value over
    /// [`max_meta_bytes`](crate::ScopeConfig::max_meta_bytes).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// # let node = procgroups::Node::builder()
    /// #     .mdns(false)
    /// #     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    /// #     .scope("app:pg", procgroups::ScopeConfig::default())
    /// #     .build()
    /// #     .await?;
    /// let p = node.spawn_process();
    /// let pg = p.open("app:pg")?;
    /// pg.join_with("lobby", &"online")?;
    /// pg.update("lobby", &"away")?;
    /// let me = &pg.get_members_with_meta("lobby")?[0];
    /// assert_eq!(me.meta.as_ref().unwrap().decode::<String>()?, "away");
    /// assert_eq!(pg.update("elsewhere", &"x").unwrap_err().kind(), procgroups::ErrorKind::Invalid);
    /// # Ok(()) }
    /// ```
    pub fn update<T: Serialize + ?Sized>(&self, group: &str, meta: &T) -> Result<()> {
        self.group(group, Permission::Join)?;
        let meta = Meta::encode(meta)?;
        self.scope.update(&self.process, group, meta)
    }

    /// Each member of `group` once, with its slots and metadata, sorted by pid (checked as
    /// `pg.get_members`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// # let node = procgroups::Node::builder()
    /// #     .mdns(false)
    /// #     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    /// #     .scope("app:pg", procgroups::ScopeConfig::default())
    /// #     .build()
    /// #     .await?;
    /// let p = node.spawn_process();
    /// let pg = p.open("app:pg")?;
    /// let other = node.spawn_process();
    /// other.open("app:pg")?.join("lobby")?;             // no metadata
    /// pg.join_with("lobby", &"alice")?;
    /// pg.join("lobby")?;                                 // a second slot, the same value
    /// let members = pg.get_members_with_meta("lobby")?;
    /// assert_eq!(members.len(), 2);                      // each process once
    /// let alice = members.iter().find(|m| m.pid == p.pid()).unwrap();
    /// assert_eq!((alice.slots, alice.meta.as_ref().unwrap().decode::<String>()?), (2, "alice".into()));
    /// assert!(members.iter().any(|m| m.pid == other.pid() && m.meta.is_none()));
    /// # Ok(()) }
    /// ```
    pub fn get_members_with_meta(&self, group: &str) -> Result<Vec<MemberMeta>> {
        self.group(group, Permission::GetMembers)?;
        Ok(self.scope.members_with_meta(group))
    }

    /// The slots of `group` on every node, in O(1): `get_members(group)?.len()` without the
    /// list (checked as `pg.get_members`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// use procgroups::{Node, ScopeConfig};
    ///
    /// let node = Node::builder()
    ///     .mdns(false)
    ///     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    ///     .scope("app:pg", ScopeConfig::default())
    ///     .build()
    ///     .await?;
    /// let p = node.spawn_process();
    /// let pg = p.open("app:pg")?;
    /// pg.join(["a", "a", "b"])?;
    /// assert_eq!(pg.member_count("a")?, 2);
    /// assert_eq!(pg.local_member_count("b")?, 1);
    /// assert_eq!(pg.group_count()?, 2);
    /// pg.register("worker-1", &())?; // a registered name is not a group
    /// assert_eq!(pg.group_count()?, 2);
    /// # Ok(()) }
    /// ```
    pub fn member_count(&self, group: &str) -> Result<usize> {
        self.group(group, Permission::GetMembers)?;
        Ok(self.scope.member_count(group))
    }

    /// The slots of `group` held by processes of this node, in O(1) (checked as
    /// `pg.get_local_members`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// # let node = procgroups::Node::builder()
    /// #     .mdns(false)
    /// #     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    /// #     .scope("app:pg", procgroups::ScopeConfig::default())
    /// #     .build()
    /// #     .await?;
    /// let p = node.spawn_process();
    /// let pg = p.open("app:pg")?;
    /// pg.join(["g", "g"])?;
    /// assert_eq!(pg.local_member_count("g")?, 2);
    /// assert_eq!(pg.local_member_count("nowhere")?, 0);
    /// # Ok(()) }
    /// ```
    pub fn local_member_count(&self, group: &str) -> Result<usize> {
        self.group(group, Permission::GetLocalMembers)?;
        Ok(self.scope.local_member_count(group))
    }

    /// The groups that have at least one member anywhere, in O(1) (checked as
    /// `pg.which_groups`). Registered names are not groups.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// # let node = procgroups::Node::builder()
    /// #     .mdns(false)
    /// #     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    /// #     .scope("app:pg", procgroups::ScopeConfig::default())
    /// #     .build()
    /// #     .await?;
    /// let p = node.spawn_process();
    /// let pg = p.open("app:pg")?;
    /// assert_eq!(pg.group_count()?, 0);
    /// pg.join(["a", "b", "b"])?;
    /// assert_eq!(pg.group_count()?, 2);
    /// # Ok(()) }
    /// ```
    pub fn group_count(&self) -> Result<usize> {
        self.usable()?;
        self.check(Permission::WhichGroups, &self.scope.id)?;
        Ok(self.scope.group_count())
    }

    /// Registers `name` for this process in the scope, with `meta`: one process per name,
    /// cluster-wide. A name another process holds (as far as this node knows) is
    /// `AlreadyExists` ([`NameTaken`](Error::NameTaken), naming the holder); registering a
    /// name the process holds replaces its metadata. The name goes away when the process
    /// [`unregister`](Self::unregister)s it or exits, or when its node is taken for down.
    ///
    /// Two registrations that race (each node accepted its own before hearing of the other)
    /// or meet when a partition heals are resolved on every node by one rule: **the earlier
    /// registration wins, by the clock of the node that made it, ties broken by the smaller
    /// Pid**. The loser's node drops its claim and puts a [`NameLost`](crate::NameLost)
    /// message in the loser's inbox for [`NAME_LOST_TOPIC`](crate::NAME_LOST_TOPIC); until it
    /// hears of the other claim, each side's [`whereis`](Self::whereis) answers its own.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// use procgroups::{ErrorKind, Node, ScopeConfig};
    ///
    /// let node = Node::builder()
    ///     .mdns(false)
    ///     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    ///     .scope("app:pg", ScopeConfig::default())
    ///     .build()
    ///     .await?;
    /// let (alice, mallory) = (node.spawn_process(), node.spawn_process());
    /// alice.open("app:pg")?.register("alice", &"the real one")?;
    /// let pg = mallory.open("app:pg")?;
    /// assert_eq!(pg.register("alice", &"me!").unwrap_err().kind(), ErrorKind::AlreadyExists);
    /// assert_eq!(pg.whereis("alice")?, Some(alice.pid()));
    /// let holder = pg.whereis_with_meta("alice")?.unwrap();
    /// assert_eq!(holder.meta.decode::<String>()?, "the real one");
    /// drop(alice); // the process exits: the name is free
    /// assert_eq!(pg.whereis("alice")?, None);
    /// pg.register("alice", &"mine now")?;
    /// pg.unregister("alice")?;
    /// assert_eq!(pg.unregister("alice").unwrap_err().kind(), ErrorKind::NotFound);
    /// # Ok(()) }
    /// ```
    pub fn register<T: Serialize + ?Sized>(&self, name: &str, meta: &T) -> Result<()> {
        self.usable()?;
        valid_name(name)?;
        self.check(Permission::Register, name)?;
        let meta = Meta::encode(meta)?;
        self.scope.register(&self.process, name, meta)
    }

    /// Gives up `name`, which this process registered; `NotFound`
    /// ([`NotRegistered`](Error::NotRegistered)) when it does not hold it. Checked as
    /// `pg.register`. See [`register`](Self::register).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// # let node = procgroups::Node::builder()
    /// #     .mdns(false)
    /// #     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    /// #     .scope("app:pg", procgroups::ScopeConfig::default())
    /// #     .build()
    /// #     .await?;
    /// let p = node.spawn_process();
    /// let pg = p.open("app:pg")?;
    /// pg.register("db-primary", &())?;
    /// pg.unregister("db-primary")?;
    /// assert_eq!(pg.whereis("db-primary")?, None);
    /// assert_eq!(pg.unregister("db-primary").unwrap_err().kind(), procgroups::ErrorKind::NotFound);
    /// # Ok(()) }
    /// ```
    pub fn unregister(&self, name: &str) -> Result<()> {
        self.usable()?;
        valid_name(name)?;
        self.check(Permission::Register, name)?;
        self.scope.unregister(&self.process, name)
    }

    /// The process that holds `name`, if any (checked as `pg.whereis`). See
    /// [`register`](Self::register).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// # let node = procgroups::Node::builder()
    /// #     .mdns(false)
    /// #     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    /// #     .scope("app:pg", procgroups::ScopeConfig::default())
    /// #     .build()
    /// #     .await?;
    /// let p = node.spawn_process();
    /// let pg = p.open("app:pg")?;
    /// assert_eq!(pg.whereis("db-primary")?, None);
    /// pg.register("db-primary", &())?;
    /// assert_eq!(pg.whereis("db-primary")?, Some(p.pid()));
    /// # Ok(()) }
    /// ```
    pub fn whereis(&self, name: &str) -> Result<Option<Pid>> {
        Ok(self.whereis_with_meta(name)?.map(|r| r.pid))
    }

    /// The process that holds `name`, with the metadata it registered and when. See
    /// [`register`](Self::register).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// # let node = procgroups::Node::builder()
    /// #     .mdns(false)
    /// #     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    /// #     .scope("app:pg", procgroups::ScopeConfig::default())
    /// #     .build()
    /// #     .await?;
    /// let p = node.spawn_process();
    /// let pg = p.open("app:pg")?;
    /// pg.register("db-primary", &"10.0.0.7:5432")?;
    /// let holder = pg.whereis_with_meta("db-primary")?.unwrap();
    /// assert_eq!(holder.pid, p.pid());
    /// assert_eq!(holder.meta.decode::<String>()?, "10.0.0.7:5432");
    /// assert!(holder.registered_at <= std::time::SystemTime::now());
    /// # Ok(()) }
    /// ```
    pub fn whereis_with_meta(&self, name: &str) -> Result<Option<Registration>> {
        self.usable()?;
        valid_name(name)?;
        self.check(Permission::Whereis, name)?;
        Ok(self.scope.whereis(name))
    }

    /// Every slot of `group` on every node: a snapshot, empty for an unknown group.
    pub fn get_members(&self, group: &str) -> Result<Members> {
        self.group(group, Permission::GetMembers)?;
        Ok(self.scope.members(group))
    }

    /// The slots of `group` held by processes of this node.
    pub fn get_local_members(&self, group: &str) -> Result<Members> {
        self.group(group, Permission::GetLocalMembers)?;
        Ok(self.scope.local_members(group))
    }

    /// The groups that have at least one member anywhere, sorted.
    pub fn which_groups(&self) -> Result<Arc<[Arc<str>]>> {
        self.usable()?;
        self.check(Permission::WhichGroups, &self.scope.id)?;
        Ok(self.scope.which_groups())
    }

    /// The groups that have at least one member on this node, sorted.
    pub fn which_local_groups(&self) -> Result<Arc<[Arc<str>]>> {
        self.usable()?;
        self.check(Permission::WhichLocalGroups, &self.scope.id)?;
        Ok(self.scope.which_local_groups())
    }

    /// Sends `payload` under `topic` to every slot of `group`, wherever it runs: a process
    /// that joined twice gets it twice. The payload is encoded with CBOR once. Returns at
    /// once a [`Delivery`]: [`slots`](Delivery::slots) is the number of slots targeted (0 for
    /// an empty group), and [`outcome`](Delivery::outcome) says whether every node targeted
    /// got it. The handle may be dropped: the message goes on its way the same.
    ///
    /// Each recipient gets it in its inbox for `topic`, or counts it as dropped (see
    /// [`Process::listen`](crate::Process::listen)). Messages from one process to another
    /// arrive in the order sent.
    ///
    /// Local slots are served in place and count as delivered at once. Each other node with
    /// members gets one frame (the payload and its slots) through its outbox: batched,
    /// retried and guarded by a circuit breaker per the scope's delivery settings. The
    /// delivery is [`Delivered`](crate::DeliveryOutcome::Delivered) once every such node has
    /// acknowledged its frame (accepted it: a slot whose process exited meanwhile drops it
    /// there); a node given up (every attempt failed, breaker open, queue full, shutdown) is
    /// listed in [`Failed`](crate::DeliveryOutcome::Failed) with its reason, next to the
    /// nodes that did acknowledge, and counted lost by this node. When `MAX_QUEUED_FRAMES`
    /// (src/net/outbox.rs) frames already wait for the network, the broadcast is
    /// `Unavailable` and delivers nothing.
    pub fn broadcast<T: Serialize + ?Sized>(
        &self,
        group: &str,
        topic: &str,
        payload: &T,
    ) -> Result<Delivery> {
        self.group(group, Permission::Broadcast)?;
        let (all, local) = self.scope.targets(group);
        self.deliver(&all, &local, topic, payload)
    }

    /// Like [`broadcast`](Self::broadcast), to the slots of `group` on this node only: the
    /// delivery is [`Delivered`](crate::DeliveryOutcome::Delivered) at once.
    pub fn broadcast_local<T: Serialize + ?Sized>(
        &self,
        group: &str,
        topic: &str,
        payload: &T,
    ) -> Result<Delivery> {
        self.group(group, Permission::BroadcastLocal)?;
        let local = self.scope.local_members(group);
        self.deliver(&local, &local, topic, payload)
    }

    /// Encodes once, serves the local slots in place and queues one frame per other node
    /// (with that node's slots as targets, and the ticket of the delivery) for its outbox.
    /// Past the check of the node-wide bound (and the local slots served), the call succeeds:
    /// a node refused after it (the queue filled up meanwhile, the node stopped) is a failure
    /// of the delivery.
    fn deliver<T: Serialize + ?Sized>(
        &self,
        all: &Members,
        local: &Members,
        topic: &str,
        payload: &T,
    ) -> Result<Delivery> {
        if topic.is_empty() {
            return Err(Error::EmptyTopic);
        }
        if all.is_empty() {
            return Ok(Delivery::local(0));
        }
        if all.len() > local.len() {
            self.node.check_network_room()?;
        }
        let message = Message::new(self.process.pid, topic, encode_payload(payload)?);
        self.node.deliver_local_slots(local, &message);
        let counters = &self.scope.counters;
        counters.broadcasts.fetch_add(1, Ordering::Relaxed);
        counters
            .slots_local
            .fetch_add(local.len() as u64, Ordering::Relaxed);
        if all.len() == local.len() {
            return Ok(Delivery::local(all.len()));
        }
        counters
            .slots_remote
            .fetch_add((all.len() - local.len()) as u64, Ordering::Relaxed);
        let tracking = Tracking::new();
        let me = self.node.peer_id;
        for (node, targets) in all.node_runs().filter(|(n, _)| *n != me) {
            let frame = Frame {
                from: self.process.pid.id(),
                topic: message.topic_shared(),
                payload: message.payload().clone(),
                targets,
                call: None,
            };
            // A refusal has failed the node's ticket with its reason.
            match self.node.deliver_remote(node, frame, tracking.ticket(node)) {
                Ok(()) => {
                    counters.frames_queued.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(%node, %e, "broadcast frame refused"),
            }
        }
        Ok(tracking.finish(all.len()))
    }

    /// Asks every member of `group` under `topic` and gathers their answers: each member
    /// process gets `request` (encoded with CBOR once) as a [`Message`] in its inbox for
    /// `topic`, and answers with [`Message::reply`]. Each member process is asked once,
    /// however many slots it holds (a process that joined twice answers once), the caller
    /// too if it is a member (it must then reply from another task). As a
    /// [`broadcast`](Self::broadcast), local members are served in place and each other node
    /// with members gets one frame, for all of its members, through its outbox.
    ///
    /// Returns [`CallResults`]: the replies, each with the [`Pid`] that sent it, and in `bad`
    /// the members that did not answer within `timeout` (`None`: [`DEFAULT_CALL_TIMEOUT`]),
    /// whose node failed (its frame given up: retries used up, breaker open, queue full; known
    /// as soon as the outbox gives up, without waiting for the timeout), or whose inbox for
    /// `topic` is missing or full on this node. The call returns once every member answered or
    /// is known bad, and never waits past `timeout` (a tokio timer: it runs on a tokio runtime
    /// with time enabled, and is `Unavailable` outside any). A reply after the call returned,
    /// or one the call did not ask for, is dropped and counted
    /// ([`NodeStats`](crate::NodeStats)'s `call_replies_late` and `call_replies_rejected`).
    /// Dropping the future ends the call.
    ///
    /// An empty group gives empty results at once. `Unavailable` when `MAX_QUEUED_FRAMES`
    /// (src/net/outbox.rs) frames already wait for the network, as for a broadcast.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// use std::time::Duration;
    /// use procgroups::{Node, ScopeConfig};
    /// # let node = Node::builder().mdns(false)
    /// #     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    /// #     .scope("app:pg", ScopeConfig::default()).build().await?;
    /// let (answering, silent) = (node.spawn_process(), node.spawn_process());
    /// let mut asks = answering.listen("load");
    /// let _deaf = silent.listen("load");
    /// answering.open("app:pg")?.join("servers")?;
    /// silent.open("app:pg")?.join("servers")?;
    /// tokio::spawn(async move {
    ///     while let Some(ask) = asks.recv().await {
    ///         ask.reply(&0.25f64).expect("replied");
    ///     }
    /// });
    ///
    /// let caller = node.spawn_process();
    /// let pg = caller.open("app:pg")?;
    /// let results = pg.multi_call("servers", "load", &(), Duration::from_millis(200)).await?;
    /// assert_eq!(results.replies.len(), 1);
    /// assert_eq!(results.replies[0].from(), answering.pid());
    /// assert_eq!(results.replies[0].decode::<f64>()?, 0.25);
    /// assert_eq!(results.bad, [silent.pid()]); // no answer within 200 ms
    /// assert!(pg.multi_call("nobody", "load", &(), None).await?.replies.is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn multi_call<T: Serialize + ?Sized>(
        &self,
        group: &str,
        topic: &str,
        request: &T,
        timeout: impl Into<Option<Duration>>,
    ) -> Result<CallResults> {
        self.group(group, Permission::MultiCall)?;
        if topic.is_empty() {
            return Err(Error::EmptyTopic);
        }
        let timeout = timeout.into().unwrap_or(DEFAULT_CALL_TIMEOUT);
        if tokio::runtime::Handle::try_current().is_err() {
            // Checked before anything is sent: the timer would panic outside a runtime.
            return Err(Error::unavailable(
                "multi_call runs on a tokio runtime (its timer)",
            ));
        }
        let (all, local) = self.scope.targets(group);
        if all.is_empty() {
            return Ok(CallResults::default());
        }
        if all.len() > local.len() {
            self.node.check_network_room()?;
        }
        let payload = encode_payload(request)?;
        let topic: Arc<str> = topic.into();
        let me = self.node.peer_id;
        let mut call = self.node.calls.open(self.process.pid.id(), all.unique());
        let ask = Ask {
            caller: self.process.pid,
            topic: &topic,
            payload: &payload,
            call: call.id,
        };
        if let Some((_, ids)) = local.node_processes().next() {
            let dropped = &self.node.net.shared.stats.messages_dropped;
            let missed = self.node.mailroom.deliver_requests(&ask, &ids, dropped);
            let missed: Vec<Pid> = missed.into_iter().map(|id| Pid::new(me, id)).collect();
            call.give_up(&missed);
        }
        let mut deliveries = Vec::new();
        for (node, targets) in all.node_processes().filter(|(n, _)| *n != me) {
            let slots = targets.len();
            let frame = Frame {
                from: self.process.pid.id(),
                topic: topic.clone(),
                payload: payload.clone(),
                targets,
                call: Some(CallTag::Request { id: call.id }),
            };
            let tracking = Tracking::new();
            // A refusal has failed the node's ticket: its members are bad at once.
            match self.node.deliver_remote(node, frame, tracking.ticket(node)) {
                Ok(()) => {
                    self.scope
                        .counters
                        .frames_queued
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(%node, %e, "call frame refused"),
            }
            deliveries.push((node, tracking.finish(slots)));
        }
        Ok(call.gather(deliveries, timeout).await)
    }

    /// Sends `payload` under `topic` to one member process of `group`: a local one if the
    /// group has any (at random among them), else one at random by node (a node with
    /// members, uniformly, then one of its member processes, uniformly), so that the
    /// messages spread evenly over the nodes whatever their number of members. The message
    /// goes as a [`Process::send`](crate::Process::send) would, and the [`Delivery`] tells
    /// its fate. [`NoMembers`](Error::NoMembers) (`NotFound`) for an empty group.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// use procgroups::{ErrorKind, Node, ScopeConfig};
    /// # let node = Node::builder().mdns(false)
    /// #     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    /// #     .scope("app:pg", ScopeConfig::default()).build().await?;
    /// let worker = node.spawn_process();
    /// let mut jobs = worker.listen("job");
    /// worker.open("app:pg")?.join("workers")?;
    ///
    /// let sender = node.spawn_process();
    /// let pg = sender.open("app:pg")?;
    /// pg.send_to_one("workers", "job", "resize")?;
    /// assert_eq!(jobs.recv().await.unwrap().decode::<String>()?, "resize");
    /// let err = pg.send_to_one("idle", "job", "resize").unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::NotFound);
    /// # Ok(()) }
    /// ```
    pub fn send_to_one<T: Serialize + ?Sized>(
        &self,
        group: &str,
        topic: &str,
        payload: &T,
    ) -> Result<Delivery> {
        self.group(group, Permission::SendToOne)?;
        if topic.is_empty() {
            return Err(Error::EmptyTopic);
        }
        let (all, local) = self.scope.targets(group);
        let mut rng = rand::thread_rng();
        let target = local
            .pick_by_node(&mut rng)
            .or_else(|| all.pick_by_node(&mut rng))
            .ok_or_else(|| Error::NoMembers {
                scope: self.scope.id.to_string(),
                group: group.to_owned(),
            })?;
        let payload = encode_payload(payload)?;
        self.node.send_to(self.process.pid, &target, topic, payload)
    }

    /// Subscribes to the joins and leaves of `group` and returns its current members, in one
    /// step: no change is missed or counted twice between the snapshot and the first event.
    pub fn monitor(&self, group: &str) -> Result<(Subscription, Members)> {
        self.group(group, Permission::Monitor)?;
        self.scope.monitor(&self.process, &self.released, group)
    }

    /// Subscribes to the joins and leaves of every group of the scope and returns every
    /// non-empty group with its members, in one step.
    pub fn events(&self) -> Result<(Subscription, BTreeMap<Arc<str>, Members>)> {
        self.usable()?;
        self.check(Permission::Events, &self.scope.id)?;
        self.scope.events(&self.process, &self.released)
    }

    /// Frees the instance. Idempotent; the process keeps its memberships, and the
    /// subscriptions made through the instance stay open (they end when closed or dropped, or
    /// when the process exits).
    pub fn release(&self) {
        self.released.store(true, Ordering::Release);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.release();
    }
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("scope", &self.scope.id)
            .field("process", &self.process.pid)
            .field("released", &self.released.load(Ordering::Relaxed))
            .finish()
    }
}

fn valid_name(name: &str) -> Result<()> {
    match name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidName {
            name: name.chars().take(64).collect(),
            reason,
        }),
    }
}

fn valid_group(name: &str) -> Result<()> {
    match group_name_problem(name) {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidGroupName {
            name: name.chars().take(64).collect(),
            reason,
        }),
    }
}
