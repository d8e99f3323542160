//! The subscriptions that carry membership events to the application.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::sync::mpsc;

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
    rx: mpsc::Receiver<Event>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    pub(crate) fn new(capacity: usize, process: u64) -> (Self, Subscriber) {
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        (
            Self {
                rx,
                dropped: dropped.clone(),
            },
            Subscriber {
                tx,
                dropped,
                process,
            },
        )
    }

    /// The next event; `None` once the subscription is closed and drained.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Events queued and not read yet.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// `true` when no event is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Events dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Unsubscribes and discards the queued events: `recv` gives `None` from now on.
    pub fn close(&mut self) {
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
    }

    /// Unsubscribes but keeps the queued events readable: `recv` gives them, then `None`.
    pub fn close_flush(&mut self) {
        self.rx.close();
    }
}

impl futures::Stream for Subscription {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// The scope's end of a subscription.
#[derive(Debug)]
pub(crate) struct Subscriber {
    tx: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
    /// The owner process: its exit closes the subscription.
    pub(crate) process: u64,
}

impl Subscriber {
    /// Queues `event`, or counts it dropped here and in the scope's `dropped`; `false` when
    /// the subscription is gone and this end should be removed.
    /// The subscription was dropped.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub(crate) fn offer(&self, event: &Event, scope_dropped: &AtomicU64) -> bool {
        match self.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                scope_dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
