//! A process's receiving side: [`Message`], its [`Inbox`]es by topic, what the node and the
//! scopes know of a process ([`ProcessShared`]), and the node's [`Mailroom`], the network
//! layer's [`InboxSink`]: other nodes' messages to the process table, the requests of their
//! calls to their recipients, and replies to this node's pending calls.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use hashbrown::HashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::Pid;
use crate::app::calls::{CallRef, Calls, ReplyRoute};
use crate::net::host::InboxSink;
use crate::net::wire::{CallTag, Frame};
use crate::vocab::delivery::Delivery;
use crate::vocab::error::{Error, Result};
use libp2p::PeerId;

/// A message delivered to a process: a direct [`send`](crate::Process::send), one slot of a
/// [`broadcast`](crate::Instance::broadcast), or the request of a
/// [`multi_call`](crate::Instance::multi_call), which the recipient answers with
/// [`reply`](Self::reply).
///
/// A handle: every recipient of a broadcast shares one message, and cloning is a pointer copy.
/// A request is the exception: each recipient gets its own, so that its reply names it.
#[derive(Clone, PartialEq, Eq)]
pub struct Message(Arc<Envelope>);

struct Envelope {
    from: Pid,
    topic: Arc<str>,
    payload: Bytes,
    /// For the request of a call: whom it was delivered to, and how the reply gets back.
    request: Option<Request>,
}

/// What a request's envelope holds besides the message.
struct Request {
    call: u64,
    /// The recipient, which replies.
    replier: Pid,
    /// Weak: a request waiting in an inbox must not keep its node alive.
    route: Weak<dyn ReplyRoute>,
    /// Set by the first reply (of any clone of the message).
    replied: AtomicBool,
}

impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        let call = |e: &Envelope| e.request.as_ref().map(|r| (r.call, r.replier));
        self.from == other.from
            && self.topic == other.topic
            && self.payload == other.payload
            && call(self) == call(other)
    }
}

impl Eq for Envelope {}

impl Message {
    pub(crate) fn new(from: Pid, topic: &str, payload: Bytes) -> Self {
        Self::new_shared(from, topic.into(), payload)
    }

    pub(crate) fn new_shared(from: Pid, topic: Arc<str>, payload: Bytes) -> Self {
        Self(Arc::new(Envelope {
            from,
            topic,
            payload,
            request: None,
        }))
    }

    /// The request of call `call` from `caller`, for `replier` alone.
    fn request(
        caller: Pid,
        topic: Arc<str>,
        payload: Bytes,
        call: u64,
        replier: Pid,
        route: Weak<dyn ReplyRoute>,
    ) -> Self {
        Self(Arc::new(Envelope {
            from: caller,
            topic,
            payload,
            request: Some(Request {
                call,
                replier,
                route,
                replied: AtomicBool::new(false),
            }),
        }))
    }

    pub(crate) fn topic_shared(&self) -> Arc<str> {
        self.0.topic.clone()
    }

    /// The sending process (the caller, for a request).
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

    /// `true` for the request of a [`multi_call`](crate::Instance::multi_call): the caller
    /// waits for its [`reply`](Self::reply).
    pub fn is_request(&self) -> bool {
        self.0.request.is_some()
    }

    /// Answers the request with `value` (encoded with CBOR): the reply goes to the caller,
    /// from the process the request was delivered to, in place when the caller runs on this
    /// node and through its node's outbox otherwise (as a [`send`](crate::Process::send),
    /// whose [`Delivery`] it returns). The caller takes it if its call still waits for this
    /// process; a reply after the call ended is dropped and counted there
    /// ([`NodeStats::call_replies_late`](crate::NodeStats::call_replies_late)).
    ///
    /// One reply per request: a second one (through this handle or a clone) is refused here
    /// with [`AlreadyReplied`](Error::AlreadyReplied), and a message that is not a request
    /// with [`NotARequest`](Error::NotARequest), both [`Invalid`](crate::ErrorKind::Invalid).
    /// A reply refused for another reason (`Unavailable`: the node shut down, too many
    /// messages wait for the network) may be tried again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> procgroups::Result<()> {
    /// use procgroups::{ErrorKind, Node, ScopeConfig};
    /// # let node = Node::builder().mdns(false)
    /// #     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
    /// #     .scope("app:pg", ScopeConfig::default()).build().await?;
    /// let worker = node.spawn_process();
    /// let mut asks = worker.listen("double");
    /// worker.open("app:pg")?.join("doublers")?;
    /// tokio::spawn(async move {
    ///     while let Some(ask) = asks.recv().await {
    ///         let n: u32 = ask.decode().expect("a number");
    ///         ask.reply(&(2 * n)).expect("the first reply");
    ///         assert_eq!(ask.reply(&0).unwrap_err().kind(), ErrorKind::Invalid); // once
    ///     }
    /// });
    /// let boss = node.spawn_process();
    /// let results = boss.open("app:pg")?.multi_call("doublers", "double", &21u32, None).await?;
    /// assert_eq!(results.replies[0].decode::<u32>()?, 42);
    /// # Ok(()) }
    /// ```
    pub fn reply<T: Serialize + ?Sized>(&self, value: &T) -> Result<Delivery> {
        let Some(request) = &self.0.request else {
            return Err(Error::NotARequest {
                topic: self.0.topic.to_string(),
            });
        };
        let payload = encode_payload(value)?;
        if request.replied.swap(true, Ordering::AcqRel) {
            return Err(Error::AlreadyReplied {
                topic: self.0.topic.to_string(),
            });
        }
        let to = CallRef {
            call: request.call,
            caller: self.0.from,
            replier: request.replier,
        };
        let sent = match request.route.upgrade() {
            Some(route) => route.reply(&to, self.0.topic.clone(), payload),
            None => Err(Error::unavailable("the node is gone")),
        };
        if sent.is_err() {
            // Not sent: the recipient may try again.
            request.replied.store(false, Ordering::Release);
        }
        sent
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("from", &self.0.from)
            .field("topic", &self.0.topic)
            .field("payload_len", &self.0.payload.len())
            .field("request", &self.is_request())
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
    /// the topic, or the inbox is full) and tells the node's `dropped`; `false` for a drop.
    pub(crate) fn deliver(&self, message: Message, node_dropped: &AtomicU64) -> bool {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let delivered = match topics.get(message.topic()) {
            Some(tx) => tx.try_send(message).is_ok(),
            None => false,
        };
        if !delivered {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            node_dropped.fetch_add(1, Ordering::Relaxed);
        }
        delivered
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

/// The node's receiving side, for its own instances and for other nodes' batches (the
/// network layer's [`InboxSink`]): messages go to the process table, each request of a call
/// to its recipient in an envelope of its own, and replies to this node's pending calls.
pub(crate) struct Mailroom {
    pub(crate) processes: Arc<ProcessTable>,
    calls: Arc<Calls>,
    /// This node, whose processes receive the requests.
    node: PeerId,
    /// Set once the node exists, before its behaviour runs: until then no request arrives.
    route: OnceLock<Weak<dyn ReplyRoute>>,
}

impl Mailroom {
    pub(crate) fn new(processes: Arc<ProcessTable>, calls: Arc<Calls>, node: PeerId) -> Self {
        Self {
            processes,
            calls,
            node,
            route: OnceLock::new(),
        }
    }

    /// Where the replies of requests delivered from now on go.
    pub(crate) fn set_route(&self, route: Weak<dyn ReplyRoute>) {
        if self.route.set(route).is_err() {
            tracing::warn!("the reply route of a mailroom was set twice; the first one stays");
        }
    }

    /// Delivers `ask` to each of `targets`, one envelope each; returns the targets it did
    /// not reach (no such process, no inbox of the topic or a full one: counted in `dropped`
    /// where the process exists).
    pub(crate) fn deliver_requests(
        &self,
        ask: &Ask<'_>,
        targets: &[u64],
        dropped: &AtomicU64,
    ) -> Vec<u64> {
        let processes = self.processes.read().unwrap_or_else(|e| e.into_inner());
        self.requests(&processes, ask, targets, dropped)
    }

    fn requests(
        &self,
        processes: &HashMap<u64, Arc<ProcessShared>>,
        ask: &Ask<'_>,
        targets: &[u64],
        dropped: &AtomicU64,
    ) -> Vec<u64> {
        let mut missed = Vec::new();
        for id in targets {
            let reached = match (processes.get(id), self.route.get()) {
                (Some(p), Some(route)) => {
                    let request = Message::request(
                        ask.caller,
                        ask.topic.clone(),
                        ask.payload.clone(),
                        ask.call,
                        Pid::new(self.node, *id),
                        route.clone(),
                    );
                    p.deliver(request, dropped)
                }
                // No route yet (the node is being built): a request nobody could answer.
                (Some(p), None) => {
                    p.dropped.fetch_add(1, Ordering::Relaxed);
                    dropped.fetch_add(1, Ordering::Relaxed);
                    false
                }
                (None, _) => false,
            };
            if !reached {
                missed.push(*id);
            }
        }
        missed
    }
}

/// The request of one call, as its recipients get it.
pub(crate) struct Ask<'a> {
    /// The calling process.
    pub(crate) caller: Pid,
    pub(crate) topic: &'a Arc<str>,
    pub(crate) payload: &'a Bytes,
    pub(crate) call: u64,
}

impl InboxSink for Mailroom {
    fn deliver_batch(&self, peer: PeerId, frames: Vec<Frame>, dropped: &AtomicU64) -> u64 {
        let processes = self.processes.read().unwrap_or_else(|e| e.into_inner());
        let mut count = 0;
        for frame in frames {
            count += frame.targets.len() as u64;
            let from = Pid::new(peer, frame.from);
            match frame.call {
                None => {
                    let message = Message::new_shared(from, frame.topic, frame.payload);
                    for id in frame.targets.iter() {
                        if let Some(p) = processes.get(id) {
                            p.deliver(message.clone(), dropped);
                        }
                    }
                }
                Some(CallTag::Request { id }) => {
                    let ask = Ask {
                        caller: from,
                        topic: &frame.topic,
                        payload: &frame.payload,
                        call: id,
                    };
                    self.requests(&processes, &ask, &frame.targets, dropped);
                }
                // A reply names one target, the caller; the table checks the rest.
                Some(CallTag::Reply { id }) => match frame.targets[..] {
                    [caller] => {
                        self.calls.on_reply(id, caller, from, frame.payload);
                    }
                    _ => self.calls.reject(),
                },
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::vocab::error::ErrorKind;

    /// A reply route that records what it is asked to send.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<(CallRef, Bytes)>>);

    impl ReplyRoute for Recorded {
        fn reply(&self, to: &CallRef, _topic: Arc<str>, payload: Bytes) -> Result<Delivery> {
            self.0.lock().unwrap().push((*to, payload));
            Ok(Delivery::local(1))
        }
    }

    struct Rig {
        room: Mailroom,
        calls: Arc<Calls>,
        route: Arc<Recorded>,
        me: PeerId,
        dropped: AtomicU64,
        processes: Vec<Arc<ProcessShared>>,
    }

    fn rig(ids: &[u64]) -> Rig {
        let me = PeerId::random();
        let table: Arc<ProcessTable> = Arc::default();
        let processes: Vec<Arc<ProcessShared>> = ids
            .iter()
            .map(|id| Arc::new(ProcessShared::new(Pid::new(me, *id))))
            .collect();
        for p in &processes {
            table.write().unwrap().insert(p.pid.id(), p.clone());
        }
        let calls = Arc::new(Calls::new(1));
        let room = Mailroom::new(table, calls.clone(), me);
        let route = Arc::new(Recorded::default());
        room.set_route(Arc::downgrade(&route) as Weak<dyn ReplyRoute>);
        Rig {
            room,
            calls,
            route,
            me,
            dropped: AtomicU64::new(0),
            processes,
        }
    }

    fn frame(from: u64, targets: &[u64], call: Option<CallTag>) -> Frame {
        Frame {
            from,
            topic: "t".into(),
            payload: Bytes::from_static(b"\x05"),
            targets: targets.into(),
            call,
        }
    }

    #[test]
    fn each_recipient_of_a_request_holds_its_own_and_replies_once() {
        let rig = rig(&[1, 2, 3]);
        let mut inboxes: Vec<Inbox> = rig.processes[..2]
            .iter()
            .map(|p| p.listen("t", 8))
            .collect();
        let caller = PeerId::random();
        let request = frame(9, &[1, 2, 3, 4], Some(CallTag::Request { id: 70 }));
        let count = rig.room.deliver_batch(caller, vec![request], &rig.dropped);
        assert_eq!(count, 4);
        // 3 does not listen to the topic; 4 does not exist.
        assert_eq!(rig.dropped.load(Ordering::Relaxed), 1);
        let got: Vec<Message> = inboxes.iter_mut().map(|i| i.try_recv().unwrap()).collect();
        assert_ne!(got[0], got[1], "one envelope per recipient");
        for (message, id) in got.iter().zip([1, 2]) {
            assert!(message.is_request());
            assert_eq!(message.from(), Pid::new(caller, 9));
            let copy = message.clone();
            message.reply(&6u8).expect("the first reply");
            let again = copy.reply(&7u8).unwrap_err();
            assert_eq!(again.kind(), ErrorKind::Invalid);
            assert!(matches!(again, Error::AlreadyReplied { .. }), "{again}");
            let sent = rig.route.0.lock().unwrap().last().unwrap().0;
            let expected = CallRef {
                call: 70,
                caller: Pid::new(caller, 9),
                replier: Pid::new(rig.me, id),
            };
            assert_eq!(sent, expected);
        }
        assert_eq!(rig.route.0.lock().unwrap().len(), 2);

        let plain = frame(9, &[1], None);
        rig.room.deliver_batch(caller, vec![plain], &rig.dropped);
        let message = inboxes[0].try_recv().unwrap();
        assert!(!message.is_request());
        let err = message.reply(&1u8).unwrap_err();
        assert!(matches!(err, Error::NotARequest { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Invalid);
    }

    #[tokio::test]
    async fn replies_from_other_nodes_go_to_the_pending_call_and_strays_are_counted() {
        let rig = rig(&[1]);
        let peer = PeerId::random();
        let call = rig.calls.open(1, [Pid::new(peer, 5)]);
        let reply =
            |from, targets: &[u64]| frame(from, targets, Some(CallTag::Reply { id: call.id }));
        let stray = frame(5, &[1], Some(CallTag::Reply { id: call.id + 1 }));
        let frames = vec![
            reply(6, &[1]),    // not asked
            reply(5, &[1, 1]), // names no single caller
            reply(5, &[2]),    // to another process than the caller
            stray,             // to no call this node knows
            reply(5, &[1]),
        ];
        rig.room.deliver_batch(peer, frames, &rig.dropped);
        let results = call.gather(Vec::new(), Duration::from_secs(60)).await;
        assert_eq!(results.bad, []);
        let from: Vec<Pid> = results.replies.iter().map(|r| r.from()).collect();
        assert_eq!(from, [Pid::new(peer, 5)]);
        assert_eq!(results.replies[0].payload(), &Bytes::from_static(b"\x05"));
        assert_eq!(rig.calls.replies_rejected.load(Ordering::Relaxed), 3);
        assert_eq!(rig.calls.replies_late.load(Ordering::Relaxed), 1);
        assert_eq!(
            rig.dropped.load(Ordering::Relaxed),
            0,
            "no reply reaches an inbox"
        );
    }
}
