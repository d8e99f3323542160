//! The subscriptions that carry membership events to the application.

//!
//! A subscription is a queue behind a mutex that the scope fills and the subscriber's task
//! drains a batch at a time. The scope wakes the task once after each input's events rather
//! than at each event: with a channel that wakes at every send, a subscriber on another core
//! drains each event as it comes and is woken again for the next, a futex wake per event on
//! the thread that applies the changes (the network thread, for peers' changes).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

use crate::vocab::event::Event;

/// A bounded stream of [`Event`]s, from [`Instance::monitor`](crate::Instance::monitor) or
/// [`Instance::events`](crate::Instance::events).
///
/// It holds up to `monitor_buffer` events. When it is full, newer events for this subscriber
/// are dropped and counted ([`dropped`](Self::dropped)); the scope never waits for a slow
/// subscriber. It ends (`recv` gives `None`) after [`close`](Self::close), or when its process
/// exits, once the queued events are read. It does not depend on the instance that made it:
/// releasing or dropping the instance leaves it open, so
/// `let (sub, members) = process.open("app:pg")?.monitor("g")?;` is a subscription that lasts.
/// Dropping it unsubscribes.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> procgroups::Result<()> {
/// # let node = procgroups::Node::builder().mdns(false)
/// #     .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
/// #     .scope("app:pg", procgroups::ScopeConfig::default()).build().await?;
/// use procgroups::EventKind;
///
/// let watcher = node.spawn_process();
/// let (mut sub, snapshot) = watcher.open("app:pg")?.events()?; // every group, then every change
/// assert!(snapshot.is_empty());
/// let worker = node.spawn_process();
/// worker.open("app:pg")?.join("g")?;
/// drop(worker); // exit
/// sub.close_flush(); // what is queued stays readable
/// let kinds: Vec<EventKind> = std::iter::from_fn(|| sub.try_recv()).map(|e| e.kind).collect();
/// assert_eq!(kinds, [EventKind::MemberJoined, EventKind::MemberLeft]);
/// assert_eq!(sub.dropped(), 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Subscription {
    channel: Arc<Channel>,
    /// Events taken from the channel in one batch, read before the next batch is taken.
    batch: VecDeque<Event>,
}

/// What the scope's end and the subscription share.
#[derive(Debug)]
struct Channel {
    queue: Mutex<VecDeque<Event>>,
    /// Events queued and not read yet, in `queue` or in the subscription's batch.
    queued: AtomicUsize,
    capacity: usize,
    waker: AtomicWaker,
    /// Events dropped because the subscription was full.
    dropped: AtomicU64,
    /// The subscription was closed or dropped: the scope stops offering it events.
    closed: AtomicBool,
    /// The scope's end is gone (its process exited, or the scope was dropped): once the queue
    /// is read, `recv` gives `None`.
    abandoned: AtomicBool,
    /// Events were queued since the scope last woke the subscription (touched by the scope's
    /// end only).
    wake_owed: AtomicBool,
}

impl Channel {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Event>> {
        // A panic elsewhere while the lock was held leaves a queue of whole events.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Subscription {
    pub(crate) fn new(capacity: usize, process: u64) -> (Self, Subscriber) {
        let channel = Arc::new(Channel {
            queue: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            capacity,
            waker: AtomicWaker::new(),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            wake_owed: AtomicBool::new(false),
        });
        (
            Self {
                channel: channel.clone(),
                batch: VecDeque::new(),
            },
            Subscriber { channel, process },
        )
    }

    /// The next event; `None` once the subscription is closed and drained.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.take()
    }

    fn take(&mut self) -> Option<Event> {
        if self.batch.is_empty() {
            std::mem::swap(&mut self.batch, &mut *self.channel.queue());
        }
        let event = self.batch.pop_front()?;
        self.channel.queued.fetch_sub(1, Ordering::Relaxed);
        Some(event)
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        for registered in [false, true] {
            // Read before the queue: the scope's end queues its last events before it marks
            // itself gone, so an end seen here has nothing left to queue.
            let ended = self.ended();
            if let Some(event) = self.take() {
                return Poll::Ready(Some(event));
            }
            if ended {
                return Poll::Ready(None);
            }
            if !registered {
                // Registered before the second look, so an event queued after the first one
                // wakes this task.
                self.channel.waker.register(cx.waker());
            }
        }
        Poll::Pending
    }

    fn ended(&self) -> bool {
        self.channel.abandoned.load(Ordering::Acquire)
            || self.channel.closed.load(Ordering::Acquire)
    }

    /// Events queued and not read yet.
    pub fn len(&self) -> usize {
        self.channel.queued.load(Ordering::Relaxed)
    }

    /// `true` when no event is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.channel.dropped.load(Ordering::Relaxed)
    }

    /// Unsubscribes and discards the queued events: `recv` gives `None` from now on.
    pub fn close(&mut self) {
        self.close_flush();
        self.discard();
    }

    /// Unsubscribes but keeps the queued events readable: `recv` gives them, then `None`.
    pub fn close_flush(&mut self) {
        self.channel.closed.store(true, Ordering::Release);
    }

    fn discard(&mut self) {
        // Taken under one lock, so that an event queued meanwhile stays queued and counted.
        let queue = std::mem::take(&mut *self.channel.queue());
        self.channel
            .queued
            .fetch_sub(queue.len() + self.batch.len(), Ordering::Relaxed);
        self.batch.clear();
        drop(queue);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The scope's end may stay until its next offer or sweep: it holds no events meanwhile.
        self.close();
    }
}

impl futures::Stream for Subscription {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_recv(cx)
    }
}

/// The scope's end of a subscription.
#[derive(Debug)]
pub(crate) struct Subscriber {
    channel: Arc<Channel>,
    /// The owner process: its exit closes the subscription.
    pub(crate) process: u64,
}

/// The subscriptions given events since they were last woken: [`Subscriber::offer`] queues
/// without waking, and [`wake`](Self::wake) wakes each once.
#[derive(Debug, Default)]
pub(crate) struct Wakes(Vec<Arc<Channel>>);

impl Wakes {
    pub(crate) fn wake(&mut self) {
        for channel in self.0.drain(..) {
            channel.wake_owed.store(false, Ordering::Relaxed);
            channel.waker.wake();
        }
    }
}

impl Subscriber {
    /// The subscription was closed or dropped.
    pub(crate) fn is_closed(&self) -> bool {
        self.channel.closed.load(Ordering::Acquire)
    }

    /// Queues `event`, or counts it dropped here and in the scope's `dropped`; `false` when
    /// the subscription is gone and this end should be removed. The subscription is woken by
    /// `wakes`, which the caller wakes once it has offered all it had.
    pub(crate) fn offer(
        &self,
        event: &Event,
        scope_dropped: &AtomicU64,
        wakes: &mut Wakes,
    ) -> bool {
        let channel = &self.channel;
        if self.is_closed() {
            return false;
        }
        // Only this end adds to `queued`, so a count under the capacity stays under it.
        if channel.queued.load(Ordering::Relaxed) >= channel.capacity {
            channel.dropped.fetch_add(1, Ordering::Relaxed);
            scope_dropped.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        channel.queued.fetch_add(1, Ordering::Relaxed);
        channel.queue().push_back(event.clone());
        if !channel.wake_owed.swap(true, Ordering::Relaxed) {
            wakes.0.push(channel.clone());
        }
        true
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.channel.abandoned.store(true, Ordering::Release);
        self.channel.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventKind;
    use futures::task::{ArcWake, waker};

    #[derive(Default)]
    struct CountWakes(AtomicUsize);

    impl ArcWake for CountWakes {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn event(group: &str) -> Event {
        Event {
            kind: EventKind::MemberJoined,
            group: group.into(),
            pids: Arc::new([]),
            meta: None,
        }
    }

    #[test]
    fn a_batch_of_events_wakes_a_waiting_subscription_once_and_keeps_their_order() {
        let (mut sub, subscriber) = Subscription::new(10, 1);
        let wakes_seen = Arc::new(CountWakes::default());
        let w = waker(wakes_seen.clone());
        let mut cx = Context::from_waker(&w);
        assert!(sub.poll_recv(&mut cx).is_pending());

        let (scope_dropped, mut wakes) = (AtomicU64::new(0), Wakes::default());
        for g in ["a", "b", "c"] {
            assert!(subscriber.offer(&event(g), &scope_dropped, &mut wakes));
        }
        assert_eq!(
            wakes_seen.0.load(Ordering::Relaxed),
            0,
            "not woken before the batch ends"
        );
        wakes.wake();
        assert_eq!(wakes_seen.0.load(Ordering::Relaxed), 1);
        assert_eq!(sub.len(), 3);
        let groups: Vec<String> = std::iter::from_fn(|| sub.try_recv())
            .map(|e| e.group.to_string())
            .collect();
        assert_eq!(groups, ["a", "b", "c"]);
        assert!(sub.is_empty());

        // The next batch owes a wake again.
        assert!(sub.poll_recv(&mut cx).is_pending());
        assert!(subscriber.offer(&event("d"), &scope_dropped, &mut wakes));
        wakes.wake();
        assert_eq!(wakes_seen.0.load(Ordering::Relaxed), 2);
        assert!(matches!(sub.poll_recv(&mut cx), Poll::Ready(Some(e)) if &*e.group == "d"));
    }

    #[test]
    fn a_full_subscription_counts_what_it_drops_and_a_gone_end_ends_it_after_the_queue() {
        let (mut sub, subscriber) = Subscription::new(2, 1);
        let (scope_dropped, mut wakes) = (AtomicU64::new(0), Wakes::default());
        for g in ["a", "b", "c"] {
            assert!(subscriber.offer(&event(g), &scope_dropped, &mut wakes));
        }
        wakes.wake();
        assert_eq!(
            (sub.dropped(), scope_dropped.load(Ordering::Relaxed)),
            (1, 1)
        );
        // Room again once one is read.
        assert_eq!(sub.try_recv().map(|e| e.group), Some("a".into()));
        assert!(subscriber.offer(&event("d"), &scope_dropped, &mut wakes));
        drop(subscriber);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let mut read = Vec::new();
        while let Poll::Ready(Some(e)) = sub.poll_recv(&mut cx) {
            read.push(e.group.to_string());
        }
        assert_eq!(read, ["b", "d"]);
        assert!(matches!(sub.poll_recv(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn a_closed_subscription_is_refused_further_events_and_close_discards_the_queue() {
        let (mut sub, subscriber) = Subscription::new(4, 1);
        let (scope_dropped, mut wakes) = (AtomicU64::new(0), Wakes::default());
        assert!(subscriber.offer(&event("a"), &scope_dropped, &mut wakes));
        sub.close_flush();
        assert!(subscriber.is_closed());
        assert!(!subscriber.offer(&event("b"), &scope_dropped, &mut wakes));
        assert_eq!(sub.try_recv().map(|e| e.group), Some("a".into()));

        let (mut sub, subscriber) = Subscription::new(4, 1);
        assert!(subscriber.offer(&event("a"), &scope_dropped, &mut wakes));
        sub.close();
        assert_eq!((sub.len(), sub.try_recv().is_none()), (0, true));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(matches!(sub.poll_recv(&mut cx), Poll::Ready(None)));
    }
}
