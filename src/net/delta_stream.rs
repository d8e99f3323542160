//! [`DeltaStreams`]: one long-lived stream each way between two connected peers, carrying
//! length-prefixed frames in order (`/procgroups/deltas/2`, [`DELTA_STREAM_PROTOCOL`]). The
//! node's [`Behaviour`](crate::behaviour::Behaviour) sends its deltas on them to the peers of a
//! scope it is connected to; the frames are authenticated by the connection's noise session,
//! so they carry no signature of their own (docs/protocol.md, "The delta stream").
//!
//! A frame is an unsigned varint length, then that many bytes. The stream to a peer is opened
//! once the behaviour [wants](DeltaStreams::want) it, on one of its connections; frames are
//! written in the order [`send`](DeltaStreams::send) took them, every frame that is ready
//! before one flush, and at most [`DeltaStreamConfig::max_queued_frames`] wait to be written:
//! beyond that `send` refuses, which is the backpressure. A stream that closes is reported
//! with the frames lost with it ([`DeltaStreamEvent::Closed`]). What the frames say is the
//! behaviour's business; this module only carries bytes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};

use asynchronous_codec::Framed;
use bytes::Bytes;
use futures::{Sink, StreamExt};
use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, Stream, StreamProtocol, StreamUpgradeError, SubstreamProtocol,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use unsigned_varint::codec::UviBytes;

/// The protocol id of the delta stream.
pub const DELTA_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/procgroups/deltas/2");

/// The default of [`DeltaStreamConfig::max_frame_bytes`]: 256 KiB, the default
/// `max_transmit_size` of gossipsub, which a delta must fit too.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 256 * 1024;

/// The default of [`DeltaStreamConfig::max_queued_frames`].
pub const DEFAULT_MAX_QUEUED_FRAMES: usize = 256;

/// Inbound streams kept per connection; a newer one replaces the oldest. A peer opens one
/// (again after its previous one broke), so this bounds what a peer opening many can hold.
const MAX_INBOUND_STREAMS: usize = 2;

/// Frames read from one connection's streams before the handler lets the connection do
/// other work.
const READ_BUDGET: usize = 64;

/// The caps of the delta streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaStreamConfig {
    /// The largest frame read or written, in bytes. A larger inbound frame closes the stream
    /// it came on ([`DeltaStreamEvent::Malformed`]); a larger outbound one is refused
    /// ([`NotSent::TooLarge`]).
    pub max_frame_bytes: usize,
    /// Frames handed to one peer's stream and not yet written, at most; beyond that
    /// [`DeltaStreams::send`] refuses ([`NotSent::Full`]).
    pub max_queued_frames: usize,
}

impl Default for DeltaStreamConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_queued_frames: DEFAULT_MAX_QUEUED_FRAMES,
        }
    }
}

/// Why [`DeltaStreams::send`] did not take a frame. Nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotSent {
    /// No stream to the peer is open (not connected, or still being opened; a wanted peer's
    /// stream is being opened now).
    #[error("no delta stream to this peer is open")]
    NotOpen,
    /// The peer does not speak [`DELTA_STREAM_PROTOCOL`].
    #[error("the peer does not speak the delta stream protocol")]
    Unsupported,
    /// [`DeltaStreamConfig::max_queued_frames`] frames wait to be written already.
    #[error("the delta stream to this peer is full")]
    Full,
    /// The frame is over [`DeltaStreamConfig::max_frame_bytes`].
    #[error("the frame is larger than the delta stream's cap")]
    TooLarge,
}

/// What [`DeltaStreams`] tells its owner.
#[derive(Debug)]
pub enum DeltaStreamEvent {
    /// A frame from `peer`.
    Frame {
        /// The authenticated peer at the other end of the connection.
        peer: PeerId,
        /// The frame's bytes, without the length prefix.
        data: Bytes,
    },
    /// The stream to `peer` is open: [`send`](DeltaStreams::send) takes frames for it.
    Opened {
        /// The peer.
        peer: PeerId,
    },
    /// The stream to `peer` closed (it broke, or its connection did), or could not be
    /// opened; a wanted peer's next [`send`](DeltaStreams::send) or connection opens another.
    Closed {
        /// The peer.
        peer: PeerId,
        /// Frames taken for it and not known to be written (a connection that closes takes
        /// the frames it had not reported written with it).
        lost_frames: usize,
    },
    /// `peer` sent what is not a frame (one over the size cap, or a broken length): the
    /// stream it came on is dropped.
    Malformed {
        /// The peer.
        peer: PeerId,
        /// What was wrong.
        error: String,
    },
}

/// The state of the stream to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outbound {
    /// None open, none asked for.
    Closed,
    /// Being opened on this connection.
    Opening(ConnectionId),
    /// Open on this connection.
    Open(ConnectionId),
    /// The peer refused the protocol on every connection tried.
    Unsupported,
}

#[derive(Debug)]
struct PeerStreams {
    connections: Vec<ConnectionId>,
    outbound: Outbound,
    /// Frames handed to the open stream's handler and not yet written.
    queued: usize,
}

/// The behaviour: which peers get a stream, on which connection, and how full each is.
pub struct DeltaStreams {
    config: DeltaStreamConfig,
    peers: HashMap<PeerId, PeerStreams>,
    wanted: HashSet<PeerId>,
    pending: VecDeque<ToSwarm<DeltaStreamEvent, Command>>,
}

impl DeltaStreams {
    /// A behaviour with caps `config`.
    pub fn new(config: DeltaStreamConfig) -> Self {
        Self {
            config,
            peers: HashMap::new(),
            wanted: HashSet::new(),
            pending: VecDeque::new(),
        }
    }

    /// Opens a stream to `peer` now if it is connected, and whenever it connects again.
    pub fn want(&mut self, peer: PeerId) {
        if self.wanted.insert(peer) {
            self.open(peer);
        }
    }

    /// Whether a stream to `peer` is open.
    pub fn is_open(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| matches!(p.outbound, Outbound::Open(_)))
    }

    /// Queues `frame` on the stream to `peer`. Frames taken are written in order; a refused
    /// one is not queued (see [`NotSent`]). A wanted peer without a stream gets one opened.
    pub fn send(&mut self, peer: PeerId, frame: Bytes) -> Result<(), NotSent> {
        if frame.len() > self.config.max_frame_bytes {
            return Err(NotSent::TooLarge);
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return Err(NotSent::NotOpen);
        };
        match p.outbound {
            Outbound::Open(connection) if p.queued < self.config.max_queued_frames => {
                p.queued += 1;
                self.pending.push_back(ToSwarm::NotifyHandler {
                    peer_id: peer,
                    handler: NotifyHandler::One(connection),
                    event: Command::Send(frame),
                });
                Ok(())
            }
            Outbound::Open(_) => Err(NotSent::Full),
            Outbound::Opening(_) => Err(NotSent::NotOpen),
            Outbound::Unsupported => Err(NotSent::Unsupported),
            Outbound::Closed => {
                self.open(peer);
                Err(NotSent::NotOpen)
            }
        }
    }

    fn open(&mut self, peer: PeerId) {
        if !self.wanted.contains(&peer) {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.outbound != Outbound::Closed {
            return;
        }
        // The newest connection: an older one may be a relayed one about to be replaced.
        if let Some(&connection) = p.connections.last() {
            p.outbound = Outbound::Opening(connection);
            self.pending.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(connection),
                event: Command::Open,
            });
        }
    }

    fn handler(&mut self, peer: PeerId, connection: ConnectionId) -> Handler {
        let p = self.peers.entry(peer).or_insert(PeerStreams {
            connections: Vec::new(),
            outbound: Outbound::Closed,
            queued: 0,
        });
        p.connections.push(connection);
        Handler::new(self.config)
    }

    /// The stream on `connection` to `peer` is gone, with `lost` frames unwritten if its
    /// handler said (otherwise every frame not reported written counts).
    fn on_stream_lost(&mut self, peer: PeerId, connection: ConnectionId, lost: Option<usize>) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let on_it =
            matches!(p.outbound, Outbound::Open(c) | Outbound::Opening(c) if c == connection);
        if !on_it {
            return;
        }
        let lost_frames = lost.unwrap_or(p.queued);
        p.outbound = Outbound::Closed;
        p.queued = 0;
        self.pending
            .push_back(ToSwarm::GenerateEvent(DeltaStreamEvent::Closed {
                peer,
                lost_frames,
            }));
    }
}

impl Default for DeltaStreams {
    fn default() -> Self {
        Self::new(DeltaStreamConfig::default())
    }
}

impl NetworkBehaviour for DeltaStreams {
    type ConnectionHandler = Handler;
    type ToSwarm = DeltaStreamEvent;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, connection))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => self.open(e.peer_id),
            FromSwarm::ConnectionClosed(e) => {
                self.on_stream_lost(e.peer_id, e.connection_id, None);
                if let Some(p) = self.peers.get_mut(&e.peer_id) {
                    p.connections.retain(|c| *c != e.connection_id);
                    if p.connections.is_empty() {
                        self.peers.remove(&e.peer_id);
                    } else {
                        self.open(e.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            HandlerEvent::Frame(data) => {
                self.pending
                    .push_back(ToSwarm::GenerateEvent(DeltaStreamEvent::Frame {
                        peer,
                        data,
                    }))
            }
            HandlerEvent::Opened => {
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.outbound == Outbound::Opening(connection)
                {
                    p.outbound = Outbound::Open(connection);
                    self.pending
                        .push_back(ToSwarm::GenerateEvent(DeltaStreamEvent::Opened { peer }));
                }
            }
            HandlerEvent::Written { frames } => {
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.outbound == Outbound::Open(connection)
                {
                    p.queued = p.queued.saturating_sub(frames);
                }
            }
            HandlerEvent::Failed { frames } => {
                self.on_stream_lost(peer, connection, Some(frames));
            }
            HandlerEvent::Unsupported => {
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.outbound == Outbound::Opening(connection)
                {
                    p.outbound = Outbound::Unsupported;
                }
            }
            HandlerEvent::Malformed(error) => {
                self.pending
                    .push_back(ToSwarm::GenerateEvent(DeltaStreamEvent::Malformed {
                        peer,
                        error,
                    }))
            }
        }
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ToSwarm<DeltaStreamEvent, THandlerInEvent<Self>>> {
        match self.pending.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

/// What the behaviour tells a connection's handler.
#[derive(Debug)]
pub enum Command {
    /// Open the outbound stream.
    Open,
    /// Write this frame on it.
    Send(Bytes),
}

/// What a connection's handler tells the behaviour.
#[derive(Debug)]
pub enum HandlerEvent {
    /// A frame read from an inbound stream.
    Frame(Bytes),
    /// The outbound stream is open.
    Opened,
    /// This many frames were written and flushed.
    Written {
        /// How many.
        frames: usize,
    },
    /// The outbound stream broke (or could not be opened) with this many frames unwritten.
    Failed {
        /// How many.
        frames: usize,
    },
    /// The peer refused the protocol.
    Unsupported,
    /// An inbound stream carried what is not a frame, and was dropped.
    Malformed(String),
}

type Framing = Framed<Stream, UviBytes<Bytes>>;

enum Writer {
    Idle,
    /// An outbound stream is to be asked for at the next poll.
    Requesting,
    /// Asked for; not negotiated yet.
    Requested,
    Open(Box<Framing>),
}

/// One connection's delta streams: the outbound one this node writes, and the inbound ones
/// the peer writes.
pub struct Handler {
    config: DeltaStreamConfig,
    writer: Writer,
    /// Frames not yet handed to the stream.
    queue: VecDeque<Bytes>,
    /// Frames handed to the stream since its last flush.
    unflushed: usize,
    /// Frames written and flushed, not yet reported to the behaviour.
    unreported: usize,
    readers: Vec<Framing>,
    events: VecDeque<HandlerEvent>,
}

impl Handler {
    fn new(config: DeltaStreamConfig) -> Self {
        Self {
            config,
            writer: Writer::Idle,
            queue: VecDeque::new(),
            unflushed: 0,
            unreported: 0,
            readers: Vec::new(),
            events: VecDeque::new(),
        }
    }

    fn framing(&self, mut stream: Stream) -> Framing {
        // The swarm's idle timeout and the keep-alive behaviour decide how long a connection
        // lives, not these streams, which stay open for as long as it does.
        stream.ignore_for_keep_alive();
        let mut codec = UviBytes::default();
        codec.set_max_len(self.config.max_frame_bytes);
        Framed::new(stream, codec)
    }

    fn fail_writer(&mut self) {
        let frames = self.queue.len() + self.unflushed;
        self.queue.clear();
        self.unflushed = 0;
        self.unreported = 0;
        self.writer = Writer::Idle;
        self.events.push_back(HandlerEvent::Failed { frames });
    }

    /// Writes what is queued, then flushes once; `true` if it made progress.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> bool {
        let Writer::Open(framed) = &mut self.writer else {
            return false;
        };
        let mut progress = false;
        let mut broken = false;
        while !self.queue.is_empty() {
            match Sink::poll_ready(Pin::new(&mut **framed), cx) {
                Poll::Ready(Ok(())) => {
                    let frame = self.queue.pop_front().expect("checked non-empty");
                    if Sink::start_send(Pin::new(&mut **framed), frame).is_err() {
                        broken = true;
                        break;
                    }
                    self.unflushed += 1;
                    progress = true;
                }
                Poll::Ready(Err(_)) => {
                    broken = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !broken && self.unflushed > 0 {
            match Sink::poll_flush(Pin::new(&mut **framed), cx) {
                Poll::Ready(Ok(())) => {
                    self.unreported += std::mem::take(&mut self.unflushed);
                    // Reported in batches: each report wakes the swarm, and the behaviour
                    // needs the count only to bound the frames waiting, so its count may run
                    // up to a quarter of the cap ahead of the truth.
                    if self.unreported >= (self.config.max_queued_frames / 4).max(1) {
                        self.events.push_back(HandlerEvent::Written {
                            frames: std::mem::take(&mut self.unreported),
                        });
                    }
                    progress = true;
                }
                Poll::Ready(Err(_)) => broken = true,
                Poll::Pending => {}
            }
        }
        if broken {
            self.fail_writer();
            return true;
        }
        progress
    }

    /// Reads frames from the inbound streams, dropping the ones that end or break.
    fn poll_read(&mut self, cx: &mut Context<'_>) {
        let mut budget = READ_BUDGET;
        let mut i = 0;
        while i < self.readers.len() {
            match self.readers[i].poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.events.push_back(HandlerEvent::Frame(frame.freeze()));
                    budget -= 1;
                    if budget == 0 {
                        cx.waker().wake_by_ref();
                        return;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    // A frame over the cap or a broken length; a reset stream is no fault of
                    // its bytes, and only ends the stream.
                    if e.kind() == std::io::ErrorKind::InvalidData
                        || e.kind() == std::io::ErrorKind::PermissionDenied
                    {
                        self.events
                            .push_back(HandlerEvent::Malformed(e.to_string()));
                    }
                    self.readers.swap_remove(i);
                }
                Poll::Ready(None) => {
                    self.readers.swap_remove(i);
                }
                Poll::Pending => i += 1,
            }
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Command;
    type ToBehaviour = HandlerEvent;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(DELTA_STREAM_PROTOCOL), ())
    }

    fn connection_keep_alive(&self) -> bool {
        // Written frames matter; the connection's life otherwise is the keep-alive's call.
        !self.queue.is_empty()
    }

    fn on_behaviour_event(&mut self, command: Command) {
        match command {
            Command::Open => {
                if matches!(self.writer, Writer::Idle) {
                    self.writer = Writer::Requesting;
                }
            }
            Command::Send(frame) => self.queue.push_back(frame),
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), HandlerEvent>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        if matches!(self.writer, Writer::Requesting) {
            self.writer = Writer::Requested;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(DELTA_STREAM_PROTOCOL), ()),
            });
        }
        self.poll_write(cx);
        self.poll_read(cx);
        match self.events.pop_front() {
            Some(event) => Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event)),
            None => Poll::Pending,
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => {
                let framed = self.framing(stream);
                self.writer = Writer::Open(Box::new(framed));
                self.events.push_back(HandlerEvent::Opened);
            }
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                if self.readers.len() >= MAX_INBOUND_STREAMS {
                    self.readers.remove(0);
                }
                let framed = self.framing(stream);
                self.readers.push(framed);
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                if matches!(error, StreamUpgradeError::NegotiationFailed) {
                    self.queue.clear();
                    self.writer = Writer::Idle;
                    self.events.push_back(HandlerEvent::Unsupported);
                } else {
                    self.fail_writer();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll};

    use futures::task::noop_waker_ref;
    use libp2p::core::ConnectedPoint;
    use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};

    use super::*;

    fn endpoint() -> ConnectedPoint {
        ConnectedPoint::Listener {
            local_addr: "/ip4/127.0.0.1/tcp/1".parse().expect("multiaddr"),
            send_back_addr: "/ip4/127.0.0.1/tcp/2".parse().expect("multiaddr"),
        }
    }

    fn connect(streams: &mut DeltaStreams, peer: PeerId, n: usize) -> ConnectionId {
        let id = ConnectionId::new_unchecked(n);
        let e = endpoint();
        let addr = e.get_remote_address().clone();
        assert!(
            streams
                .handle_established_inbound_connection(id, peer, &addr, &addr)
                .is_ok()
        );
        streams.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: id,
            endpoint: &e,
            failed_addresses: &[],
            other_established: n - 1,
        }));
        id
    }

    fn disconnect(streams: &mut DeltaStreams, peer: PeerId, id: ConnectionId, left: usize) {
        let e = endpoint();
        streams.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: peer,
            connection_id: id,
            endpoint: &e,
            cause: None,
            remaining_established: left,
        }));
    }

    /// Everything the behaviour asked for, in order.
    fn drain(streams: &mut DeltaStreams) -> Vec<ToSwarm<DeltaStreamEvent, Command>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut out = Vec::new();
        while let Poll::Ready(action) = streams.poll(&mut cx) {
            out.push(action);
        }
        out
    }

    /// The connections asked to open a stream.
    fn opens_on(actions: &[ToSwarm<DeltaStreamEvent, Command>]) -> Vec<ConnectionId> {
        actions
            .iter()
            .filter_map(|a| match a {
                ToSwarm::NotifyHandler {
                    handler: NotifyHandler::One(c),
                    event: Command::Open,
                    ..
                } => Some(*c),
                _ => None,
            })
            .collect()
    }

    fn small() -> DeltaStreams {
        DeltaStreams::new(DeltaStreamConfig {
            max_frame_bytes: 16,
            max_queued_frames: 2,
        })
    }

    #[test]
    fn a_wanted_peer_gets_one_stream_and_its_frames_are_bounded() {
        let mut streams = small();
        let peer = PeerId::random();
        assert_eq!(
            streams.send(peer, Bytes::from_static(b"x")),
            Err(NotSent::NotOpen)
        );
        let c1 = connect(&mut streams, peer, 1);
        assert!(opens_on(&drain(&mut streams)).is_empty(), "not wanted yet");
        streams.want(peer);
        assert_eq!(opens_on(&drain(&mut streams)), vec![c1]);
        // A second connection opens nothing more, and frames wait for the stream.
        connect(&mut streams, peer, 2);
        assert!(opens_on(&drain(&mut streams)).is_empty());
        assert_eq!(
            streams.send(peer, Bytes::from_static(b"x")),
            Err(NotSent::NotOpen)
        );
        streams.on_connection_handler_event(peer, c1, HandlerEvent::Opened);
        assert!(streams.is_open(&peer));
        assert!(matches!(
            drain(&mut streams)[..],
            [ToSwarm::GenerateEvent(DeltaStreamEvent::Opened { .. })]
        ));

        // Two frames wait at most; a written one makes room; an oversized one never goes.
        assert_eq!(streams.send(peer, Bytes::from_static(b"1")), Ok(()));
        assert_eq!(streams.send(peer, Bytes::from_static(b"2")), Ok(()));
        assert_eq!(
            streams.send(peer, Bytes::from_static(b"3")),
            Err(NotSent::Full)
        );
        streams.on_connection_handler_event(peer, c1, HandlerEvent::Written { frames: 1 });
        assert_eq!(streams.send(peer, Bytes::from_static(b"3")), Ok(()));
        assert_eq!(
            streams.send(peer, Bytes::from(vec![0; 17])),
            Err(NotSent::TooLarge)
        );
        let sent: Vec<_> = drain(&mut streams)
            .into_iter()
            .filter_map(|a| match a {
                ToSwarm::NotifyHandler {
                    handler: NotifyHandler::One(c),
                    event: Command::Send(frame),
                    ..
                } => Some((c, frame)),
                _ => None,
            })
            .collect();
        assert_eq!(
            sent,
            vec![
                (c1, Bytes::from_static(b"1")),
                (c1, Bytes::from_static(b"2")),
                (c1, Bytes::from_static(b"3")),
            ],
            "in order, on the stream's connection"
        );
    }

    #[test]
    fn frames_lost_with_their_connection_are_reported_and_another_stream_opens() {
        let mut streams = small();
        let peer = PeerId::random();
        streams.want(peer);
        let c1 = connect(&mut streams, peer, 1);
        let c2 = connect(&mut streams, peer, 2);
        // The first connection of a wanted peer carries the stream at once.
        assert_eq!(opens_on(&drain(&mut streams)), vec![c1]);
        streams.on_connection_handler_event(peer, c1, HandlerEvent::Opened);
        drain(&mut streams);
        streams.send(peer, Bytes::from_static(b"1")).unwrap();
        streams.send(peer, Bytes::from_static(b"2")).unwrap();
        streams.on_connection_handler_event(peer, c1, HandlerEvent::Written { frames: 1 });
        disconnect(&mut streams, peer, c1, 1);
        let actions = drain(&mut streams);
        assert!(
            actions.iter().any(|a| matches!(
                a,
                ToSwarm::GenerateEvent(DeltaStreamEvent::Closed { lost_frames: 1, .. })
            )),
            "the unwritten frame is reported"
        );
        assert_eq!(opens_on(&actions), vec![c2], "on the connection left");
        assert!(!streams.is_open(&peer));

        // A stream that breaks reports what its handler had not written, and the next
        // send opens another.
        streams.on_connection_handler_event(peer, c2, HandlerEvent::Opened);
        drain(&mut streams);
        streams.send(peer, Bytes::from_static(b"3")).unwrap();
        drain(&mut streams);
        streams.on_connection_handler_event(peer, c2, HandlerEvent::Failed { frames: 1 });
        assert!(matches!(
            drain(&mut streams)[..],
            [ToSwarm::GenerateEvent(DeltaStreamEvent::Closed {
                lost_frames: 1,
                ..
            })]
        ));
        assert_eq!(
            streams.send(peer, Bytes::from_static(b"4")),
            Err(NotSent::NotOpen)
        );
        assert_eq!(opens_on(&drain(&mut streams)), vec![c2]);

        // A peer that refuses the protocol is not asked again on that connection.
        streams.on_connection_handler_event(peer, c2, HandlerEvent::Unsupported);
        assert_eq!(
            streams.send(peer, Bytes::from_static(b"5")),
            Err(NotSent::Unsupported)
        );
        assert!(opens_on(&drain(&mut streams)).is_empty());
        disconnect(&mut streams, peer, c2, 0);
        assert_eq!(
            streams.send(peer, Bytes::from_static(b"6")),
            Err(NotSent::NotOpen)
        );
    }
}
