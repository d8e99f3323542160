//! [`CappedRequestResponse`]: libp2p's request-response behaviour with a cap on the inbound
//! streams that one connection holds at once, whose excess is reset and counted.
//!
//! Why a wrapper: request-response bounds the streams of a connection (inbound and outbound
//! together) and drops an inbound stream past its bound with only a log line, so that a flood
//! of requests would be refused unseen. Here each connection's handler counts its inbound
//! streams in flight and resets one past
//! [`BehaviourConfig::max_inbound_streams`](crate::net::protocols::BehaviourConfig::max_inbound_streams)
//! itself, counting it in
//! [`NodeStats::inbound_streams_reset`](crate::NodeStats::inbound_streams_reset). The inner
//! bound is set [`OUTBOUND_STREAMS_HEADROOM`] above ours, so that the inner handler drops
//! none unless this node has more requests than that in flight on the connection itself
//! (this node sends one delivery batch at a time to a peer, and few sync requests).
//!
//! How a stream is known to have ended: every inbound stream the inner handler takes ends in
//! exactly one event of the behaviour that names its connection, `ResponseSent` or
//! `InboundFailure` (the request read or not); the behaviour then tells that connection's
//! handler, which counts the stream out. The handler's count lags the truth by that one
//! message, so it errs towards refusing, never towards letting the inner bound drop a stream
//! unseen.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use crate::net::forward::forward_connection_hooks;
use libp2p::PeerId;
use libp2p::request_response::{self, Codec};
use libp2p::swarm::handler::{ConnectionEvent, ConnectionHandler, ConnectionHandlerEvent};
use libp2p::swarm::{
    ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// Streams above the inbound cap that request-response's own bound of concurrent streams
/// leaves for this node's outbound requests on one connection.
pub const OUTBOUND_STREAMS_HEADROOM: usize = 256;

/// A request-response behaviour whose connections reset, and count, the inbound streams past
/// a cap. It derefs to the inner [`request_response::Behaviour`] for sending requests and
/// responses; its events are the inner behaviour's.
pub struct CappedRequestResponse<C>
where
    C: Codec + Clone + Send + 'static,
{
    inner: request_response::Behaviour<C>,
    max_inbound_streams: usize,
    streams_reset: Arc<AtomicU64>,
    /// Connections whose handler is to count one inbound stream out.
    ended: VecDeque<(PeerId, ConnectionId)>,
}

impl<C> CappedRequestResponse<C>
where
    C: Codec + Clone + Send + 'static,
{
    /// `protocols` spoken with `codec` under `config`, each connection holding at most
    /// `max_inbound_streams` (at least 1) inbound streams at once; the streams reset for it
    /// are added to `streams_reset`. `config`'s bound of concurrent streams is replaced by
    /// `max_inbound_streams` + [`OUTBOUND_STREAMS_HEADROOM`].
    pub fn new(
        codec: C,
        protocols: impl IntoIterator<Item = (C::Protocol, request_response::ProtocolSupport)>,
        config: request_response::Config,
        max_inbound_streams: usize,
        streams_reset: Arc<AtomicU64>,
    ) -> Self {
        let max_inbound_streams = max_inbound_streams.max(1);
        let config =
            config.with_max_concurrent_streams(max_inbound_streams + OUTBOUND_STREAMS_HEADROOM);
        Self {
            inner: request_response::Behaviour::with_codec(codec, protocols, config),
            max_inbound_streams,
            streams_reset,
            ended: VecDeque::new(),
        }
    }

    /// Inbound streams reset at the cap so far, on every connection (shared with whoever
    /// gave the counter).
    pub fn streams_reset(&self) -> u64 {
        self.streams_reset.load(Ordering::Relaxed)
    }

    fn handler(&self, inner: THandler<request_response::Behaviour<C>>) -> THandler<Self> {
        CappedHandler {
            inner,
            max_inbound_streams: self.max_inbound_streams,
            inbound_in_flight: 0,
            reset_unreported: 0,
        }
    }
}

impl<C> Deref for CappedRequestResponse<C>
where
    C: Codec + Clone + Send + 'static,
{
    type Target = request_response::Behaviour<C>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl<C> DerefMut for CappedRequestResponse<C>
where
    C: Codec + Clone + Send + 'static,
{
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// The connection of an event that ends an inbound stream of a live connection.
fn inbound_ended<Req, Resp>(
    event: &request_response::Event<Req, Resp>,
) -> Option<(PeerId, ConnectionId)> {
    match event {
        request_response::Event::ResponseSent {
            peer,
            connection_id,
            ..
        } => Some((*peer, *connection_id)),
        // Its handler is gone with it.
        request_response::Event::InboundFailure {
            error: request_response::InboundFailure::ConnectionClosed,
            ..
        } => None,
        request_response::Event::InboundFailure {
            peer,
            connection_id,
            ..
        } => Some((*peer, *connection_id)),
        request_response::Event::Message { .. }
        | request_response::Event::OutboundFailure { .. } => None,
    }
}

impl<C> NetworkBehaviour for CappedRequestResponse<C>
where
    C: Codec + Clone + Send + 'static,
{
    type ConnectionHandler = CappedHandler<THandler<request_response::Behaviour<C>>>;
    type ToSwarm = request_response::Event<C::Request, C::Response>;

    forward_connection_hooks!(to inner, wrap handler);

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = &event {
            self.ended.retain(|(_, c)| *c != closed.connection_id);
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            CappedOut::Inner(event) => {
                self.inner
                    .on_connection_handler_event(peer, connection_id, event);
            }
            CappedOut::StreamsReset { count } => {
                self.streams_reset
                    .fetch_add(count as u64, Ordering::Relaxed);
                tracing::debug!(%peer, count, "inbound streams past the cap reset");
            }
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some((peer_id, connection)) = self.ended.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(connection),
                event: CappedIn::InboundEnded,
            });
        }
        match self.inner.poll(cx) {
            Poll::Ready(ToSwarm::GenerateEvent(event)) => {
                if let Some(ended) = inbound_ended(&event) {
                    self.ended.push_back(ended);
                }
                Poll::Ready(ToSwarm::GenerateEvent(event))
            }
            Poll::Ready(other) => Poll::Ready(other.map_in(CappedIn::Inner)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What [`CappedRequestResponse`] tells a connection's [`CappedHandler`].
#[derive(Debug)]
pub enum CappedIn<I> {
    /// For the inner handler.
    Inner(I),
    /// One of the connection's inbound streams ended.
    InboundEnded,
}

/// What a [`CappedHandler`] tells its [`CappedRequestResponse`].
#[derive(Debug)]
pub enum CappedOut<O> {
    /// From the inner handler.
    Inner(O),
    /// Inbound streams reset at the cap since the last report.
    StreamsReset {
        /// How many.
        count: usize,
    },
}

/// A connection's handler of a [`CappedRequestResponse`]: the inner request-response handler,
/// and the count of its inbound streams in flight.
pub struct CappedHandler<H> {
    inner: H,
    max_inbound_streams: usize,
    inbound_in_flight: usize,
    reset_unreported: usize,
}

impl<H: ConnectionHandler> ConnectionHandler for CappedHandler<H> {
    type FromBehaviour = CappedIn<H::FromBehaviour>;
    type ToBehaviour = CappedOut<H::ToBehaviour>;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
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
        if self.reset_unreported > 0 {
            let count = std::mem::take(&mut self.reset_unreported);
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                CappedOut::StreamsReset { count },
            ));
        }
        self.inner
            .poll(cx)
            .map(|event| event.map_custom(CappedOut::Inner))
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        if self.reset_unreported > 0 {
            let count = std::mem::take(&mut self.reset_unreported);
            return Poll::Ready(Some(CappedOut::StreamsReset { count }));
        }
        self.inner
            .poll_close(cx)
            .map(|event| event.map(CappedOut::Inner))
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {
            CappedIn::Inner(event) => self.inner.on_behaviour_event(event),
            CappedIn::InboundEnded => {
                self.inbound_in_flight = self.inbound_in_flight.saturating_sub(1);
            }
        }
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
        if let ConnectionEvent::FullyNegotiatedInbound(_) = &event {
            if self.inbound_in_flight >= self.max_inbound_streams {
                // Dropping the stream resets it.
                self.reset_unreported += 1;
                return;
            }
            self.inbound_in_flight += 1;
        }
        self.inner.on_connection_event(event);
    }
}
