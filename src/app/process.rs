//! Processes: local, addressable mailboxes owned by the application.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hashbrown::HashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::app::node::NodeShared;
use crate::net::host::InboxSink;
use crate::net::wire::Frame;
use crate::vocab::error::{Error, Result};
use crate::vocab::policy::Permission;
use crate::{Instance, Pid};
use libp2p::PeerId;

/// A message delivered to a process: a direct [`send`](Process::send) or one slot of a
/// [`broadcast`](Instance::broadcast).
///
/// A handle: every recipient of a broadcast shares one message, and cloning is a pointer copy.
#[derive(Clone, PartialEq, Eq)]
pub struct Message(Arc<Envelope>);

#[derive(PartialEq, Eq)]
struct Envelope {
    from: Pid,
    topic: Arc<str>,
    payload: Bytes,
}

impl Message {
    pub(crate) fn new(from: Pid, topic: &str, payload: Bytes) -> Self {
        Self::new_shared(from, topic.into(), payload)
    }

    pub(crate) fn new_shared(from: Pid, topic: Arc<str>, payload: Bytes) -> Self {
        Self(Arc::new(Envelope {
            from,
            topic,
            payload,
        }))
    }

    pub(crate) fn topic_shared(&self) -> Arc<str> {
        self.0.topic.clone()
    }

    /// The sending process.
    pub fn from(&self) -> Pid {
        self.0.from
    }

    /// The topic it was sent under.
    pub fn topic(&self) -> &str {
        &self.0.topic
    }

    /// The payload, CBOR-encoded.
    pub fn payload(&self) -> &Bytes {
        &self.0.payload
    }

    /// Decodes the payload.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        ciborium::from_reader(&self.0.payload[..]).map_err(|e| Error::Payload {
            reason: e.to_string(),
        })
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("from", &self.0.from)
            .field("topic", &self.0.topic)
            .field("payload_len", &self.0.payload.len())
            .finish()
    }
}

/// Encodes a payload once, for every recipient.
pub(crate) fn encode_payload<T: Serialize + ?Sized>(payload: &T) -> Result<Bytes> {
    let mut buf = Vec::new();
    ciborium::into_writer(payload, &mut buf).map_err(|e| Error::Payload {
        reason: e.to_string(),
    })?;
    Ok(buf.into())
}

/// The messages of one topic of one process, from [`Process::listen`].
///
/// It holds up to the node's mailbox capacity; a message that finds it full is dropped and
/// counted in [`Process::dropped`]. It ends (`recv` gives `None`) when the process exits or
/// listens to the same topic again.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Message>,
}

impl Inbox {
    /// The next message; `None` once the inbox is closed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    /// Messages queued and not read yet.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// `true` when no message is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl futures::Stream for Inbox {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

/// The processes of a node by id, shared by the node's handles and its network task.
pub(crate) type ProcessTable = std::sync::RwLock<HashMap<u64, Arc<ProcessShared>>>;

/// What the node and the scopes know of a process.
pub(crate) struct ProcessShared {
    pub(crate) pid: Pid,
    alive: AtomicBool,
    topics: Mutex<HashMap<Arc<str>, mpsc::Sender<Message>>>,
    dropped: AtomicU64,
}

impl ProcessShared {
    pub(crate) fn new(pid: Pid) -> Self {
        Self {
            pid,
            alive: AtomicBool::new(true),
            topics: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Marks the process dead; `true` for the call that did it.
    pub(crate) fn mark_dead(&self) -> bool {
        self.alive.swap(false, Ordering::AcqRel)
    }

    /// Puts `message` in the inbox of its topic, or counts it as dropped (nobody listens to
    /// the topic, or the inbox is full) and tells the node's `dropped`.
    pub(crate) fn deliver(&self, message: Message, node_dropped: &AtomicU64) {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let delivered = match topics.get(message.topic()) {
            Some(tx) => tx.try_send(message).is_ok(),
            None => false,
        };
        if !delivered {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            node_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An inbox for `topic`. Liveness is checked under the topics lock, which the exit takes
    /// after marking the process dead: a dead process's inbox ends at once.
    fn listen(&self, topic: &str, capacity: usize) -> Inbox {
        let (tx, rx) = mpsc::channel(capacity);
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_alive() {
            topics.insert(topic.into(), tx);
        }
        Inbox { rx }
    }

    /// Closes every inbox: their streams end once drained.
    pub(crate) fn close_inboxes(&self) {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// A process: a local, addressable mailbox owned by the application, and the member of groups.
///
/// Dropping it (or calling [`exit`](Self::exit)) is the process's exit: it leaves every group
/// of every scope, every occurrence, in one change per scope; its subscriptions close and its
/// instances are released. A dead process is never left behind as a member.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> procgroups::Result<()> {
/// use procgroups::{Node, ScopeConfig};
/// let node = Node::builder()
///     .mdns(false)
///     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
///     .scope("app:pg", ScopeConfig::default())
///     .build()
///     .await?;
/// let worker = node.spawn_process();
/// let mut tasks = worker.listen("task");          // listen before joining
/// let pg = worker.open("app:pg")?;
/// pg.join("workers")?;
///
/// let boss = node.spawn_process();
/// let n = boss.open("app:pg")?.broadcast("workers", "task", &42u32)?;
/// assert_eq!(n, 1);
/// let msg = tasks.recv().await.unwrap();
/// assert_eq!((msg.from(), msg.decode::<u32>()?), (boss.pid(), 42));
/// # Ok(()) }
/// ```
pub struct Process {
    shared: Arc<ProcessShared>,
    node: Arc<NodeShared>,
}

impl Process {
    pub(crate) fn new(shared: Arc<ProcessShared>, node: Arc<NodeShared>) -> Self {
        Self { shared, node }
    }

    /// The process's address.
    pub fn pid(&self) -> Pid {
        self.shared.pid
    }

    /// Opens an instance of the scope `scope` (`"namespace:name"`): every group operation goes
    /// through it. `NotFound` if the node has no such scope; needs `pg.open` on the scope id.
    pub fn open(&self, scope: &str) -> Result<Instance> {
        self.node.check_running()?;
        crate::vocab::config::validate_scope_id(scope).map_err(|e| match e {
            crate::ConfigError::InvalidScopeId { id, reason } => {
                Error::InvalidScopeId { scope: id, reason }
            }
            other => Error::Config(other),
        })?;
        let found = self.node.scope(scope).ok_or_else(|| Error::ScopeNotFound {
            scope: scope.to_owned(),
        })?;
        self.node
            .check(self.pid(), scope, Permission::Open, scope)?;
        Ok(Instance::new(found, self.shared.clone(), self.node.clone()))
    }

    /// The messages sent to this process under `topic`, from now on.
    ///
    /// Messages for a topic nobody listens to are dropped and counted in
    /// [`dropped`](Self::dropped): listen before joining the groups whose broadcasts you
    /// want. Listening again to the same topic replaces the previous inbox (which ends).
    pub fn listen(&self, topic: &str) -> Inbox {
        self.shared.listen(topic, self.node.mailbox_capacity)
    }

    /// Sends a message to one process. The payload is encoded with CBOR.
    ///
    /// A local target that does not exist is `NotFound`. Otherwise the message is either in
    /// the target's inbox or counted in its [`dropped`](Self::dropped) (nobody listening to the
    /// topic, inbox full), as for a broadcast.
    ///
    /// A message to another node's process goes through that node's outbox and the call does
    /// not wait for it: messages to one node arrive in the order sent, a batch that fails is
    /// retried (`max_retries`, `retry_base_delay`, `retry_max_delay`), and what cannot be
    /// delivered (no route, breaker open, retries exhausted) is lost and counted by the
    /// sending node. A remote process that does not exist drops it silently.
    pub fn send<T: Serialize + ?Sized>(&self, to: &Pid, topic: &str, payload: &T) -> Result<()> {
        self.node.check_running()?;
        if topic.is_empty() {
            return Err(Error::EmptyTopic);
        }
        let payload = encode_payload(payload)?;
        if to.node() != self.node.peer_id {
            let frame = crate::net::wire::Frame {
                from: self.pid().id(),
                topic: topic.into(),
                payload,
                targets: Arc::new([to.id()]),
            };
            return self.node.deliver_remote(to.node(), frame);
        }
        let message = Message::new(self.pid(), topic, payload);
        if self.node.deliver_local(to.id(), message) {
            Ok(())
        } else {
            Err(Error::ProcessNotFound {
                pid: to.to_string(),
            })
        }
    }

    /// Messages to this process that were dropped: nobody listened to their topic, or the
    /// inbox was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Exits now; the same as dropping the process.
    pub fn exit(self) {}
}

impl Drop for Process {
    fn drop(&mut self) {
        self.node.exit_process(&self.shared);
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("pid", &self.pid()).finish()
    }
}

impl InboxSink for ProcessTable {
    fn deliver_batch(&self, peer: PeerId, frames: Vec<Frame>, dropped: &AtomicU64) -> u64 {
        let processes = self.read().unwrap_or_else(|e| e.into_inner());
        let mut count = 0;
        for frame in frames {
            let message =
                Message::new_shared(Pid::new(peer, frame.from), frame.topic, frame.payload);
            for id in frame.targets.iter() {
                if let Some(p) = processes.get(id) {
                    p.deliver(message.clone(), dropped);
                }
                count += 1;
            }
        }
        count
    }
}
