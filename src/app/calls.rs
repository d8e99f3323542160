//! Scatter-gather calls: what a [`multi_call`](crate::Instance::multi_call) returns
//! ([`CallResults`], each [`Reply`]), the node's table of pending calls that replies are
//! matched against, and the route a request's reply takes back to its caller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hashbrown::HashMap;
use libp2p::PeerId;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Pid;
use crate::vocab::delivery::Delivery;
use crate::vocab::error::{Error, Result};

/// How long a [`multi_call`](crate::Instance::multi_call) waits for its replies when the
/// caller gives no timeout (`None`): 5 seconds.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A call's timeout when `Instant + timeout` overflows: about thirty years.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// One member's answer to a call: who sent it and the value it sent, CBOR-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    from: Pid,
    payload: Bytes,
}

impl Reply {
    /// The member process that replied.
    pub fn from(&self) -> Pid {
        self.from
    }

    /// The reply's value, CBOR-encoded.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Decodes the reply's value.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        ciborium::from_reader(&self.payload[..]).map_err(|e| Error::Payload {
            reason: e.to_string(),
        })
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("from", &self.from)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// What a [`multi_call`](crate::Instance::multi_call) gathered: every member process asked
/// is in exactly one of the two lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallResults {
    /// The replies, in the order they arrived, one per member process that answered in time.
    pub replies: Vec<Reply>,
    /// The member processes that did not answer: not in time, or their node failed (its
    /// request was given up), or the request found no inbox of its topic on this node; in
    /// [`Pid`] order.
    pub bad: Vec<Pid>,
}

/// Which call a request belongs to and which process holds it: what its reply needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallRef {
    pub(crate) call: u64,
    /// The calling process.
    pub(crate) caller: Pid,
    /// The process the request was delivered to, which replies.
    pub(crate) replier: Pid,
}

/// Where replies go: to the pending call in place when the caller is local, else through
/// the caller's node's outbox. The node implements it; a request holds it weakly.
pub(crate) trait ReplyRoute: Send + Sync {
    /// Sends `payload` back to the caller of `to`, from its replier, under `topic`.
    fn reply(&self, to: &CallRef, topic: Arc<str>, payload: Bytes) -> Result<Delivery>;
}

/// What became of a reply that reached the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The reply of a process the call waits for: gathered.
    Accepted,
    /// The call has ended (or this node never made it), or the call gave the process up
    /// already: dropped and counted in `replies_late`.
    Late,
    /// From a process the call did not ask, a second reply of one, or addressed to another
    /// process than the caller: dropped and counted in `replies_rejected`.
    Rejected,
}

/// Where one asked process stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Waiting,
    Replied,
    GivenUp,
}

/// One pending call in the table.
struct Pending {
    /// The calling process's id.
    caller: u64,
    asked: HashMap<Pid, Answer>,
    /// The gathering side: unbounded, but each asked process gets at most one reply in.
    replies: mpsc::UnboundedSender<Reply>,
}

/// The node's pending calls by id, shared by its instances (which open calls) and its
/// mailroom (which hands them the replies of other nodes).
pub(crate) struct Calls {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Replies dropped because their call had ended, or was unknown.
    pub(crate) replies_late: AtomicU64,
    /// Replies dropped because the call did not wait for them from that process.
    pub(crate) replies_rejected: AtomicU64,
}

impl Calls {
    /// A table whose call ids start at `first_id`: the node gives the start time of its
    /// incarnation, as for its process ids, so that a late reply to an earlier incarnation's
    /// call does not match a new one.
    pub(crate) fn new(first_id: u64) -> Self {
        Self {
            next_id: AtomicU64::new(first_id),
            pending: Mutex::new(HashMap::new()),
            replies_late: AtomicU64::new(0),
            replies_rejected: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a call of process `caller` to the processes `asked` (each once); the call ends
    /// when the returned handle gathers its results or is dropped.
    pub(crate) fn open(
        self: &Arc<Self>,
        caller: u64,
        asked: impl IntoIterator<Item = Pid>,
    ) -> PendingCall {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let asked: HashMap<Pid, Answer> = asked.into_iter().map(|p| (p, Answer::Waiting)).collect();
        let count = asked.len();
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(
            id,
            Pending {
                caller,
                asked,
                replies: tx,
            },
        );
        PendingCall {
            calls: self.clone(),
            id,
            rx,
            asked: count,
            replies: Vec::new(),
            bad: Vec::new(),
        }
    }

    /// A reply from `from` to the call `call` of process `caller`: gathered once, or dropped
    /// and counted.
    pub(crate) fn on_reply(&self, call: u64, caller: u64, from: Pid, payload: Bytes) -> Verdict {
        let verdict = {
            let mut pending = self.lock();
            match pending.get_mut(&call) {
                None => Verdict::Late,
                Some(p) if p.caller != caller => Verdict::Rejected,
                Some(p) => match p.asked.get_mut(&from) {
                    None | Some(Answer::Replied) => Verdict::Rejected,
                    Some(Answer::GivenUp) => Verdict::Late,
                    Some(answer @ Answer::Waiting) => {
                        *answer = Answer::Replied;
                        // The receiver lives as long as the entry (see `PendingCall`).
                        let _ = p.replies.send(Reply { from, payload });
                        Verdict::Accepted
                    }
                },
            }
        };
        match verdict {
            Verdict::Accepted => {}
            Verdict::Late => {
                self.replies_late.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Rejected => {
                self.replies_rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
        verdict
    }

    /// A reply frame that names no single caller: rejected and counted.
    pub(crate) fn reject(&self) {
        self.replies_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// The processes among those still awaited that `which` selects, now given up.
    fn give_up(&self, call: u64, which: impl Fn(&Pid) -> bool) -> Vec<Pid> {
        let mut pending = self.lock();
        let Some(p) = pending.get_mut(&call) else {
            return Vec::new();
        };
        let mut given_up = Vec::new();
        for (pid, answer) in p.asked.iter_mut() {
            if *answer == Answer::Waiting && which(pid) {
                *answer = Answer::GivenUp;
                given_up.push(*pid);
            }
        }
        given_up
    }

    /// Ends the call: the processes still awaited, given up.
    fn close(&self, call: u64) -> Vec<Pid> {
        match self.lock().remove(&call) {
            None => Vec::new(),
            Some(p) => p
                .asked
                .into_iter()
                .filter(|(_, answer)| *answer == Answer::Waiting)
                .map(|(pid, _)| pid)
                .collect(),
        }
    }

    /// Calls pending now.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.lock().len()
    }
}

/// The gathering side of one call: the replies the table accepted for it, and the processes
/// given up. Dropping it ends the call (a reply after that is late).
pub(crate) struct PendingCall {
    calls: Arc<Calls>,
    pub(crate) id: u64,
    rx: mpsc::UnboundedReceiver<Reply>,
    asked: usize,
    replies: Vec<Reply>,
    bad: Vec<Pid>,
}

impl PendingCall {
    /// These asked processes will not answer (their request found no inbox): bad now,
    /// unless they answered already.
    pub(crate) fn give_up(&mut self, pids: &[Pid]) {
        let bad = self.calls.give_up(self.id, |p| pids.contains(p));
        self.bad.extend(bad);
    }

    /// The request to `node` was given up: its processes that have not answered are bad.
    fn give_up_node(&mut self, node: PeerId) {
        let bad = self.calls.give_up(self.id, |p| p.node() == node);
        self.bad.extend(bad);
    }

    fn settled(&self) -> bool {
        self.replies.len() + self.bad.len() >= self.asked
    }

    /// Gathers the replies until every process asked has answered or is known bad, or until
    /// `timeout` has passed, whichever comes first. `deliveries` are the requests to other
    /// nodes, one per node: a node whose delivery fails takes its processes to `bad` at once.
    pub(crate) async fn gather(
        mut self,
        deliveries: Vec<(PeerId, Delivery)>,
        timeout: Duration,
    ) -> CallResults {
        let now = Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or_else(|| now + FAR_FUTURE);
        let mut fates: FuturesUnordered<_> = deliveries
            .into_iter()
            .map(|(node, delivery)| async move { (node, delivery.outcome().await) })
            .collect();
        let expiry = tokio::time::sleep_until(deadline);
        tokio::pin!(expiry);
        while !self.settled() {
            tokio::select! {
                Some(reply) = self.rx.recv() => self.replies.push(reply),
                Some((node, fate)) = fates.next(), if !fates.is_empty() => {
                    if !fate.is_delivered() {
                        self.give_up_node(node);
                    }
                }
                () = &mut expiry => break,
            }
        }
        self.finish()
    }

    /// Ends the call: what the table accepted until now are the replies, the rest is bad.
    fn finish(mut self) -> CallResults {
        let unanswered = self.calls.close(self.id);
        self.bad.extend(unanswered);
        // Accepted before the close: they count (the table has settled them).
        while let Ok(reply) = self.rx.try_recv() {
            self.replies.push(reply);
        }
        let mut bad = std::mem::take(&mut self.bad);
        bad.sort_unstable();
        CallResults {
            replies: std::mem::take(&mut self.replies),
            bad,
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        // A no-op after `finish`; otherwise the caller gave up waiting.
        self.calls.close(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::delivery::{FailureReason, Tracking};

    fn pids(node: PeerId, ids: &[u64]) -> Vec<Pid> {
        ids.iter().map(|id| Pid::new(node, *id)).collect()
    }

    fn value(v: u32) -> Bytes {
        let mut buf = Vec::new();
        ciborium::into_writer(&v, &mut buf).expect("encode");
        buf.into()
    }

    #[tokio::test]
    async fn replies_are_matched_to_their_call_and_asked_process() {
        let calls = Arc::new(Calls::new(100));
        let node = PeerId::random();
        let [a, b] = pids(node, &[1, 2])[..] else {
            unreachable!()
        };
        let call = calls.open(7, [a, b]);
        let other = calls.open(7, [a]);
        assert_ne!(call.id, other.id);
        let id = call.id;
        assert_eq!(calls.on_reply(id, 7, a, value(1)), Verdict::Accepted);
        assert_eq!(
            calls.on_reply(id, 7, a, value(9)),
            Verdict::Rejected,
            "twice"
        );
        let stranger = Pid::new(node, 3);
        assert_eq!(calls.on_reply(id, 7, stranger, value(9)), Verdict::Rejected);
        assert_eq!(
            calls.on_reply(id, 8, b, value(9)),
            Verdict::Rejected,
            "caller"
        );
        assert_eq!(calls.on_reply(id + 99, 7, b, value(9)), Verdict::Late);
        assert_eq!(calls.on_reply(id, 7, b, value(2)), Verdict::Accepted);
        let results = call.gather(Vec::new(), Duration::from_secs(60)).await;
        let got: Vec<(Pid, u32)> = results
            .replies
            .iter()
            .map(|r| (r.from(), r.decode().expect("a u32")))
            .collect();
        assert_eq!(got, [(a, 1), (b, 2)]);
        assert!(results.bad.is_empty());
        assert_eq!(calls.replies_rejected.load(Ordering::Relaxed), 3);
        assert_eq!(calls.replies_late.load(Ordering::Relaxed), 1);
        assert_eq!(calls.pending(), 1, "the other call is still open");
        drop(other);
        assert_eq!(calls.pending(), 0, "a dropped call ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_process_is_bad_at_the_timeout_and_its_late_reply_counted() {
        let calls = Arc::new(Calls::new(1));
        let node = PeerId::random();
        let [quick, slow] = pids(node, &[1, 2])[..] else {
            unreachable!()
        };
        let call = calls.open(7, [quick, slow]);
        let id = call.id;
        calls.on_reply(id, 7, quick, value(1));
        let started = Instant::now();
        let results = call.gather(Vec::new(), Duration::from_secs(3)).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3),
            "returned early: {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(3100),
            "waited past the timeout: {waited:?}"
        );
        assert_eq!(results.replies.len(), 1);
        assert_eq!(results.bad, [slow]);
        assert_eq!(calls.on_reply(id, 7, slow, value(2)), Verdict::Late);
        assert_eq!(calls.replies_late.load(Ordering::Relaxed), 1);
        assert_eq!(calls.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_node_takes_its_processes_to_bad_at_once() {
        let calls = Arc::new(Calls::new(1));
        let (live, dead) = (PeerId::random(), PeerId::random());
        let [l] = pids(live, &[1])[..] else {
            unreachable!()
        };
        let d = pids(dead, &[1, 2]);
        let call = calls.open(7, d.iter().copied().chain([l]));
        let id = call.id;
        let deliveries: Vec<(PeerId, Delivery)> = [live, dead]
            .into_iter()
            .map(|node| {
                let tracking = Tracking::new();
                let ticket = tracking.ticket(node);
                if node == dead {
                    ticket.failed(FailureReason::BreakerOpen);
                } else {
                    ticket.delivered();
                }
                (node, tracking.finish(1))
            })
            .collect();
        calls.on_reply(id, 7, l, value(1));
        let started = Instant::now();
        let results = call.gather(deliveries, DEFAULT_CALL_TIMEOUT).await;
        assert!(started.elapsed() < DEFAULT_CALL_TIMEOUT, "did not wait");
        let mut bad = d.clone();
        bad.sort();
        assert_eq!(results.bad, bad);
        assert_eq!(results.replies.len(), 1);
        assert_eq!(calls.on_reply(id, 7, d[0], value(2)), Verdict::Late);
    }

    #[tokio::test(start_paused = true)]
    async fn a_process_given_up_locally_is_bad_and_a_call_of_nobody_ends_at_once() {
        let calls = Arc::new(Calls::new(1));
        let node = PeerId::random();
        let asked = pids(node, &[1, 2]);
        let mut call = calls.open(7, asked.clone());
        calls.on_reply(call.id, 7, asked[0], value(1));
        call.give_up(&asked); // the first answered already: only the second is bad
        let started = Instant::now();
        let results = call.gather(Vec::new(), Duration::from_secs(60)).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!((results.replies.len(), &results.bad[..]), (1, &asked[1..]));

        let nobody = calls.open(7, []);
        let results = nobody.gather(Vec::new(), Duration::MAX).await;
        assert_eq!(results, CallResults::default());
    }
}
