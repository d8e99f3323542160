//! A process's receiving side: [`Message`], its [`Inbox`]es by topic, what the node and the
//! scopes know of a process ([`ProcessShared`]), and the node's table of processes, which is
//! the network layer's [`InboxSink`].

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hashbrown::HashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::Pid;
use crate::net::host::InboxSink;
use crate::net::wire::Frame;
use crate::vocab::error::{Error, Result};
use libp2p::PeerId;

/// A message delivered to a process: a direct [`send`](crate::Process::send) or one slot of a
/// [`broadcast`](crate::Instance::broadcast).
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

/// The messages of one topic of one process, from [`Process::listen`](crate::Process::listen).
///
/// It holds up to the node's mailbox capacity; a message that finds it full is dropped and
/// counted in [`Process::dropped`](crate::Process::dropped). It ends (`recv` gives `None`) when the process exits or
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
    /// Messages for it that found no inbox of their topic, or a full one.
    pub(crate) dropped: AtomicU64,
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
    pub(crate) fn listen(&self, topic: &str, capacity: usize) -> Inbox {
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
