//! [`WakeGated`]: a behaviour polled only when something woke it or handed it something, whose
//! connection handlers are polled likewise and whose listen protocols are remembered between
//! those calls.
//!
//! Why: libp2p polls every behaviour at each turn of the swarm, and a connection's whole
//! handler tree each time anything on the connection wakes it; at the end of every such poll
//! of a connection it rebuilds the list of protocols the tree listens on and hashes each name,
//! to learn whether it changed. A node composes fifteen protocols; a delta's frame wakes its
//! connection three to five times on the two nodes and the swarm a few times more, and each
//! time every handler and behaviour was polled and every protocol name rebuilt (through a
//! nested iterator as deep as the composition), though only the delta stream had work. Under
//! `perf` of the bench's join row (`cargo run --release --example bench -- --only latency`)
//! that was about 70% of what each network thread spent in `Connection::poll`, and a
//! tenth of B's network thread in the other behaviours' `poll`.
//!
//! A gate (a [`WakeGated`] for the behaviour, a [`GatedHandler`] for each connection's handler)
//! hands what it gates a waker of its own. It polls it only when that waker fired, when it was
//! handed something (an event from the swarm, a connection or the behaviour; for the behaviour
//! also a mutable borrow through [`DerefMut`], by which the node queues work for it), or when
//! its last poll returned something (it may have more); otherwise its poll returns `Pending`
//! at once. A [`GatedHandler`] keeps the inner handler's listen protocols as a flat list of
//! names, built again (and kept when it comes out the same, so that it is not allocated again)
//! only after a call that may have changed them: a poll of the inner handler or an event.
//!
//! What it assumes of what it gates, as libp2p's protocols are written: a poll that returns
//! `Pending` has registered the waker it was given with whatever will make progress, and the
//! listen protocols change only in the handler's own calls (not through state shared with
//! another thread). A protocol that checked a deadline only when polled (Kademlia's query
//! timeouts) is polled late, not never: gossipsub's heartbeat timer (every
//! [`GOSSIPSUB_HEARTBEAT`](crate::net::protocols::GOSSIPSUB_HEARTBEAT)) polls the whole gated behaviour, and each
//! connection's ping timer
//! ([`BehaviourConfig::ping_interval`](crate::net::protocols::BehaviourConfig::ping_interval))
//! its gated handlers.
//!
//! An inbound stream is still upgraded with the inner handler's own upgrade of that moment
//! ([`Remembered`] carries it): the protocol the remote chose is looked up by name in it. A name
//! it no longer lists fails the stream with [`NotListened`], which the inner handler never sees
//! (it listens on no such protocol).

use std::cell::OnceCell;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use crate::net::forward::forward_connection_hooks;
use futures::TryFutureExt;
use futures::future::{self, Either, MapErr, Ready};
use futures::task::AtomicWaker;
use libp2p::PeerId;
use libp2p::core::upgrade::{InboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{
    AddressChange, ConnectionEvent, ConnectionHandler, ConnectionHandlerEvent, DialUpgradeError,
    FullyNegotiatedInbound, FullyNegotiatedOutbound, InboundUpgradeSend, ListenUpgradeError,
    UpgradeInfoSend,
};
use libp2p::swarm::{
    ConnectionId, FromSwarm, NetworkBehaviour, Stream, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// A behaviour polled only when woken or handed something, whose connections' handlers are
/// [`GatedHandler`]s. It derefs to the inner behaviour (a mutable borrow counts as handing it
/// something: its next poll is due); its events and commands are the inner behaviour's.
pub struct WakeGated<B> {
    inner: B,
    gate: Gate,
}

impl<B> WakeGated<B> {
    /// `inner`, gated.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            gate: Gate::new(),
        }
    }

    /// The inner behaviour, ungated.
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// The inner behaviour was handed something: its next poll is due.
    fn touch(&mut self) {
        self.gate.touch();
    }

    /// An inner connection handler, gated.
    fn gated<H: ConnectionHandler>(&self, handler: H) -> GatedHandler<H> {
        GatedHandler::new(handler)
    }
}

impl<B> Deref for WakeGated<B> {
    type Target = B;

    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> DerefMut for WakeGated<B> {
    fn deref_mut(&mut self) -> &mut B {
        // The caller may queue work for the inner behaviour's next poll.
        self.gate.touch();
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for WakeGated<B> {
    type ConnectionHandler = GatedHandler<THandler<B>>;
    type ToSwarm = B::ToSwarm;

    forward_connection_hooks!(to inner, before touch, wrap gated);

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.gate.touch();
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.gate.touch();
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if !self.gate.open(cx) {
            return Poll::Pending;
        }
        let polled = self.inner.poll(&mut self.gate.context());
        self.gate.polled(polled.is_ready());
        polled
    }
}

/// Set by the waker a [`Gate`] gives what it gates; wakes the task that polled the gate last.
#[derive(Default)]
struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Whether a [`Gate`]'s next poll polls what it gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Only if its waker fired since.
    IfWoken,
    /// Yes: it was handed something, or its last poll returned something (it may have more).
    Yes,
}

/// What a [`WakeGated`] and a [`GatedHandler`] keep to poll their inner part only when due.
struct Gate {
    due: Due,
    flag: Arc<WakeFlag>,
    /// `flag` as a waker, made once.
    waker: Waker,
}

impl Gate {
    /// Due at once: the first poll polls.
    fn new() -> Self {
        let flag = Arc::new(WakeFlag::default());
        Self {
            due: Due::Yes,
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// The inner part was handed something: its next poll is due.
    fn touch(&mut self) {
        self.due = Due::Yes;
    }

    /// Whether this poll (of the task of `cx`) is to poll the inner part.
    fn open(&mut self, cx: &Context<'_>) -> bool {
        // Registered before the flag is read: a wake after the read finds this task's waker.
        self.flag.task.register(cx.waker());
        let woken = self.flag.woken.swap(false, Ordering::AcqRel);
        woken || self.due == Due::Yes
    }

    /// The context to poll the inner part with: its wakes go through the flag.
    fn context(&self) -> Context<'_> {
        Context::from_waker(&self.waker)
    }

    /// The inner part was polled, and returned something or not.
    fn polled(&mut self, ready: bool) {
        self.due = if ready { Due::Yes } else { Due::IfWoken };
    }

    /// Registers the task of `cx` without reading the flag (a poll that polls anyway).
    fn register(&self, cx: &Context<'_>) {
        self.flag.task.register(cx.waker());
    }
}

/// A connection handler polled only when woken or handed an event, with its listen protocols
/// remembered between those calls (see the [module docs](self)).
pub struct GatedHandler<H: ConnectionHandler> {
    inner: H,
    gate: Gate,
    /// The names `inner` listens on, unless a call since may have changed them.
    listened: OnceCell<Arc<[String]>>,
    /// The names of the last list built, to be kept when it comes out the same again.
    last_listened: Option<Arc<[String]>>,
}

impl<H: ConnectionHandler> GatedHandler<H> {
    /// `inner`, polled at once the first time.
    pub fn new(inner: H) -> Self {
        Self {
            inner,
            gate: Gate::new(),
            listened: OnceCell::new(),
            last_listened: None,
        }
    }

    /// The inner handler may have changed: its next poll is due and its listen protocols are
    /// to be read again.
    fn touched(&mut self) {
        self.gate.touch();
        self.forget_listened();
    }

    fn forget_listened(&mut self) {
        if let Some(names) = self.listened.take() {
            self.last_listened = Some(names);
        }
    }

    /// `upgrade`'s protocol names, as the last list when they are the same.
    fn names_of(&self, upgrade: &H::InboundProtocol) -> Arc<[String]> {
        if let Some(last) = &self.last_listened {
            let mut fresh = upgrade.protocol_info();
            let same = last
                .iter()
                .all(|name| fresh.next().is_some_and(|p| p.as_ref() == name))
                && fresh.next().is_none();
            if same {
                return last.clone();
            }
        }
        upgrade
            .protocol_info()
            .map(|p| p.as_ref().to_owned())
            .collect()
    }
}

impl<H: ConnectionHandler> ConnectionHandler for GatedHandler<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = Remembered<H::InboundProtocol>;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        let fresh = self.inner.listen_protocol();
        let names = self
            .listened
            .get_or_init(|| self.names_of(fresh.upgrade()))
            .clone();
        fresh.map_upgrade(|inner| Remembered { inner, names })
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        if !self.gate.open(cx) {
            return Poll::Pending;
        }
        self.forget_listened();
        let polled = self.inner.poll(&mut self.gate.context());
        self.gate.polled(polled.is_ready());
        polled
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.gate.register(cx);
        self.forget_listened();
        self.inner.poll_close(&mut self.gate.context())
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.touched();
        self.inner.on_behaviour_event(event);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        self.touched();
        let event = match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info }) => {
                ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info })
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol,
                info,
            }) => {
                ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound { protocol, info })
            }
            ConnectionEvent::AddressChange(AddressChange { new_address }) => {
                ConnectionEvent::AddressChange(AddressChange { new_address })
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error }) => {
                ConnectionEvent::DialUpgradeError(DialUpgradeError { info, error })
            }
            ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error }) => {
                match error {
                    Listened::Inner(error) => {
                        ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error })
                    }
                    Listened::NotListened(NotListened { protocol }) => {
                        tracing::debug!(
                            protocol,
                            "inbound stream on a protocol no longer listened on"
                        );
                        return;
                    }
                }
            }
            ConnectionEvent::LocalProtocolsChange(change) => {
                ConnectionEvent::LocalProtocolsChange(change)
            }
            ConnectionEvent::RemoteProtocolsChange(change) => {
                ConnectionEvent::RemoteProtocolsChange(change)
            }
            // `ConnectionEvent` is non-exhaustive; libp2p 0.57 has no other variant.
            _ => return,
        };
        self.inner.on_connection_event(event);
    }
}

/// A [`GatedHandler`]'s listen upgrade: the inner handler's upgrade of the moment, whose
/// protocols it lists by the names remembered.
pub struct Remembered<U> {
    inner: U,
    names: Arc<[String]>,
}

/// One of the names a [`Remembered`] lists.
#[derive(Debug, Clone)]
pub struct ListenedName {
    names: Arc<[String]>,
    index: usize,
}

impl AsRef<str> for ListenedName {
    fn as_ref(&self) -> &str {
        &self.names[self.index]
    }
}

/// The names a [`Remembered`] lists, in the inner upgrade's order.
pub struct ListenedNames {
    names: Arc<[String]>,
    next: usize,
}

impl Iterator for ListenedNames {
    type Item = ListenedName;

    fn next(&mut self) -> Option<ListenedName> {
        let index = self.next;
        (index < self.names.len()).then(|| {
            self.next += 1;
            ListenedName {
                names: self.names.clone(),
                index,
            }
        })
    }
}

impl<U: UpgradeInfoSend> UpgradeInfo for Remembered<U> {
    type Info = ListenedName;
    type InfoIter = ListenedNames;

    fn protocol_info(&self) -> ListenedNames {
        ListenedNames {
            names: self.names.clone(),
            next: 0,
        }
    }
}

/// A stream was negotiated on a protocol the inner handler had listed and listens on no more.
#[derive(Debug, thiserror::Error)]
#[error("no longer listening on {protocol}")]
pub struct NotListened {
    /// The protocol the remote chose.
    pub protocol: String,
}

/// Why a [`Remembered`] upgrade failed.
#[derive(Debug)]
pub enum Listened<E> {
    /// The inner upgrade failed.
    Inner(E),
    /// The protocol is no longer listened on.
    NotListened(NotListened),
}

type InnerFuture<U> = MapErr<
    <U as InboundUpgradeSend>::Future,
    fn(<U as InboundUpgradeSend>::Error) -> Listened<<U as InboundUpgradeSend>::Error>,
>;

impl<U: InboundUpgradeSend> InboundUpgrade<Stream> for Remembered<U> {
    type Output = U::Output;
    type Error = Listened<U::Error>;
    type Future = Either<InnerFuture<U>, Ready<Result<U::Output, Listened<U::Error>>>>;

    fn upgrade_inbound(self, stream: Stream, info: ListenedName) -> Self::Future {
        match self.inner_info(&info) {
            Some(protocol) => Either::Left(
                self.inner
                    .upgrade_inbound(stream, protocol)
                    .map_err(Listened::Inner as fn(_) -> _),
            ),
            None => Either::Right(future::ready(Err(Listened::NotListened(NotListened {
                protocol: info.as_ref().to_owned(),
            })))),
        }
    }
}

impl<U: UpgradeInfoSend> Remembered<U> {
    /// The inner upgrade's protocol named `chosen`, if it still lists it.
    fn inner_info(&self, chosen: &ListenedName) -> Option<U::Info> {
        self.inner
            .protocol_info()
            .find(|p| p.as_ref() == chosen.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures::task::noop_waker_ref;
    use libp2p::StreamProtocol;
    use libp2p::core::transport::PortUse;
    use libp2p::core::upgrade::{DeniedUpgrade, ReadyUpgrade};
    use libp2p::core::{Endpoint, Multiaddr};
    use libp2p::swarm::ConnectionDenied;

    use super::*;

    /// What a [`Probe`] is told by its behaviour.
    #[derive(Debug)]
    enum ProbeIn {
        /// Have this many events ready for the next polls.
        Ready(usize),
        /// Listen on this protocol from now on.
        Listen(StreamProtocol),
    }

    /// A handler that counts its polls and keeps the waker of the last one.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: usize,
        protocol: StreamProtocol,
        waker: Option<Waker>,
    }

    impl ConnectionHandler for Probe {
        type FromBehaviour = ProbeIn;
        type ToBehaviour = ();
        type InboundProtocol = ReadyUpgrade<StreamProtocol>;
        type OutboundProtocol = DeniedUpgrade;
        type InboundOpenInfo = ();
        type OutboundOpenInfo = ();

        fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
            SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ())
        }

        fn poll(
            &mut self,
            cx: &mut Context<'_>,
        ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), ()>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.waker = Some(cx.waker().clone());
            if self.ready > 0 {
                self.ready -= 1;
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(()));
            }
            Poll::Pending
        }

        fn on_behaviour_event(&mut self, event: ProbeIn) {
            match event {
                ProbeIn::Ready(n) => self.ready = n,
                ProbeIn::Listen(protocol) => self.protocol = protocol,
            }
        }

        fn on_connection_event(
            &mut self,
            _: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
        ) {
        }
    }

    fn gated() -> (GatedHandler<Probe>, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let probe = Probe {
            polls: polls.clone(),
            ready: 0,
            protocol: StreamProtocol::new("/probe/1"),
            waker: None,
        };
        (GatedHandler::new(probe), polls)
    }

    fn poll(handler: &mut GatedHandler<Probe>) -> bool {
        handler
            .poll(&mut Context::from_waker(noop_waker_ref()))
            .is_ready()
    }

    fn names(handler: &GatedHandler<Probe>) -> Vec<String> {
        UpgradeInfo::protocol_info(handler.listen_protocol().upgrade())
            .map(|name| name.as_ref().to_owned())
            .collect()
    }

    /// A behaviour that counts its polls, keeps the waker of the last one, and has events
    /// ready when told.
    #[derive(Default)]
    struct ProbeBehaviour {
        polls: usize,
        ready: usize,
        waker: Option<Waker>,
    }

    impl NetworkBehaviour for ProbeBehaviour {
        type ConnectionHandler = libp2p::swarm::dummy::ConnectionHandler;
        type ToSwarm = ();

        fn handle_established_inbound_connection(
            &mut self,
            _: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: &Multiaddr,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(libp2p::swarm::dummy::ConnectionHandler)
        }

        fn handle_established_outbound_connection(
            &mut self,
            _: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: Endpoint,
            _: PortUse,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(libp2p::swarm::dummy::ConnectionHandler)
        }

        fn on_swarm_event(&mut self, _: FromSwarm) {}

        fn on_connection_handler_event(
            &mut self,
            _: PeerId,
            _: ConnectionId,
            event: THandlerOutEvent<Self>,
        ) {
            match event {}
        }

        fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<(), THandlerInEvent<Self>>> {
            self.polls += 1;
            self.waker = Some(cx.waker().clone());
            if self.ready > 0 {
                self.ready -= 1;
                return Poll::Ready(ToSwarm::GenerateEvent(()));
            }
            Poll::Pending
        }
    }

    fn poll_behaviour(gated: &mut WakeGated<ProbeBehaviour>) -> bool {
        gated
            .poll(&mut Context::from_waker(noop_waker_ref()))
            .is_ready()
    }

    #[test]
    fn the_inner_behaviour_is_polled_when_woken_borrowed_mutably_or_handed_an_event() {
        let mut gated = WakeGated::new(ProbeBehaviour::default());
        assert!(!poll_behaviour(&mut gated));
        assert!(!poll_behaviour(&mut gated));
        assert_eq!(gated.polls, 1, "the first poll is due, the second is not");

        gated.waker.clone().expect("a waker").wake();
        assert!(!poll_behaviour(&mut gated));
        assert_eq!(gated.polls, 2, "its waker fired");

        gated.ready = 2;
        assert!(
            poll_behaviour(&mut gated),
            "a mutable borrow makes the poll due"
        );
        assert!(poll_behaviour(&mut gated), "a ready poll may have more");
        assert!(!poll_behaviour(&mut gated));
        assert!(!poll_behaviour(&mut gated));
        assert_eq!(gated.polls, 5);

        gated.on_swarm_event(FromSwarm::NewExternalAddrCandidate(
            libp2p::swarm::NewExternalAddrCandidate {
                addr: &"/ip4/127.0.0.1/tcp/1".parse().expect("addr"),
            },
        ));
        assert!(!poll_behaviour(&mut gated));
        assert_eq!(gated.polls, 6, "an event from the swarm makes the poll due");
    }

    #[test]
    fn the_inner_handler_is_polled_only_when_its_waker_fired() {
        let (mut handler, polls) = gated();
        assert!(!poll(&mut handler));
        assert_eq!(polls.load(Ordering::Relaxed), 1, "the first poll is due");
        for _ in 0..3 {
            assert!(!poll(&mut handler));
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "nothing woke it");

        handler.inner.waker.take().expect("a waker").wake();
        assert!(!poll(&mut handler));
        assert!(!poll(&mut handler));
        assert_eq!(polls.load(Ordering::Relaxed), 2, "polled once per wake");
    }

    #[test]
    fn a_wake_reaches_the_task_that_polled_last() {
        let (mut handler, _) = gated();
        let task = Arc::new(WakeFlag::default());
        let task_waker = Waker::from(task.clone());
        assert!(
            handler
                .poll(&mut Context::from_waker(&task_waker))
                .is_pending()
        );
        handler.inner.waker.take().expect("a waker").wake();
        assert!(
            task.woken.load(Ordering::Acquire),
            "the connection's task was woken"
        );
    }

    #[test]
    fn an_event_or_a_ready_poll_makes_the_next_poll_due() {
        let (mut handler, polls) = gated();
        poll(&mut handler);
        handler.on_behaviour_event(ProbeIn::Ready(2));
        assert!(poll(&mut handler), "the event's poll");
        assert!(poll(&mut handler), "a ready poll may have more");
        assert!(!poll(&mut handler), "drained");
        assert!(!poll(&mut handler), "and not polled again");
        assert_eq!(polls.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn listen_protocols_are_remembered_until_a_call_may_have_changed_them() {
        let (mut handler, _) = gated();
        assert_eq!(names(&handler), ["/probe/1"]);
        let first = handler.listened.get().expect("remembered").clone();
        poll(&mut handler);
        assert!(
            handler.listened.get().is_none(),
            "the inner handler was polled"
        );
        assert_eq!(names(&handler), ["/probe/1"]);
        let again = handler.listened.get().expect("remembered").clone();
        assert!(
            Arc::ptr_eq(&first, &again),
            "a list that came out the same is kept"
        );
        poll(&mut handler);
        poll(&mut handler);
        assert!(
            handler
                .listened
                .get()
                .is_some_and(|l| Arc::ptr_eq(l, &first)),
            "quiet polls keep the list"
        );

        handler.on_behaviour_event(ProbeIn::Listen(StreamProtocol::new("/probe/2")));
        assert_eq!(names(&handler), ["/probe/2"], "read again after the event");
    }

    #[test]
    fn an_inbound_stream_is_upgraded_with_the_protocol_of_that_name_or_fails_typed() {
        let upgrade = Remembered {
            inner: ReadyUpgrade::new(StreamProtocol::new("/probe/2")),
            names: Arc::from(["/probe/1".to_owned(), "/probe/2".to_owned()]),
        };
        let listed: Vec<String> = UpgradeInfo::protocol_info(&upgrade)
            .map(|n| n.as_ref().to_owned())
            .collect();
        assert_eq!(listed, ["/probe/1", "/probe/2"]);
        let mut names = UpgradeInfo::protocol_info(&upgrade);
        let stale = names.next().expect("first");
        let current = names.next().expect("second");
        assert!(
            upgrade.inner_info(&stale).is_none(),
            "no longer listened on"
        );
        assert_eq!(
            upgrade.inner_info(&current).map(|p| p.as_ref().to_owned()),
            Some("/probe/2".to_owned())
        );
    }
}
