//! A hostile peer for the tests of `tests/hostile.rs`: a raw libp2p swarm (tokio, TCP, noise,
//! yamux) that speaks procgroups' protocols and can say anything in them.
//!
//! Its behaviour is gossipsub (signed with its own key, like a node's, or carrying another
//! peer's id as author without a signature) plus `/procgroups/sync/1` and
//! `/procgroups/deliver/1` over a raw codec: a request or response is the exact bytes the test
//! gives (length prefix included), so the test can send what our typed codec never would
//! (malformed CBOR, a length over the cap, a truncated frame). [`frame`] builds a well-formed
//! frame.
//!
//! The peer answers the honest nodes' requests by itself: a Discover with its own version, a
//! Sync with its own state ([`Own`], the origin state its deltas describe) unless the test
//! queued other answers ([`Hostile::script_sync`]), a Goodbye with an ack, a delivery batch
//! with an ack, or never ([`Hostile::stall_deliveries`]: it stops reading delivery streams).
//!
//! With [`Hostile::with_delta_stream`] it also speaks `/procgroups/deltas/2` (procgroups' own
//! `DeltaStreams`, with a frame cap of `RAW_READ_LIMIT` so that it can send frames the nodes
//! must refuse): [`Hostile::stream_frame`] sends any bytes as one frame; without it, the nodes
//! see a peer that does not speak the protocol and reach it by gossipsub alone.
//!
//! It runs as a task of the test's runtime; [`Hostile::stop`] (or dropping it) ends the task
//! and closes its connections.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, gossipsub, noise, tcp, yamux};
use procgroups::Keypair;
use procgroups::behaviour::delta_stream::{DeltaStreamConfig, DeltaStreamEvent, DeltaStreams};
use procgroups::behaviour::scope_topic;
use procgroups::wire::{
    DELIVER_PROTOCOL, DeliverAck, DeliverBatch, Delta, Op, SYNC_PROTOCOL, SyncGroup, SyncMember,
    SyncRequest, SyncResponse, Version,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

/// The most the raw codec reads of one request or response.
const RAW_READ_LIMIT: u64 = 16 * 1024 * 1024;

/// `value` as one frame of procgroups' request-response codec: CBOR behind its length as a
/// big-endian `u32`.
pub fn frame<T: Serialize>(value: &T) -> Vec<u8> {
    let body = cbor(value);
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// `value` in CBOR, as deltas travel over gossipsub.
pub fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR encoding");
    out
}

/// Decodes one frame (length prefix included).
pub fn unframe<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() < 4 {
        return Err(format!("a frame of {} bytes", bytes.len()));
    }
    let len = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    if bytes.len() != 4 + len {
        return Err(format!("prefix {len}, body {}", bytes.len() - 4));
    }
    ciborium::from_reader(&bytes[4..]).map_err(|e| e.to_string())
}

/// Request-response over raw bytes: what is written is exactly the bytes given; what is read
/// is everything up to the end of the stream (the peer closes its side after its frame).
#[derive(Clone, Default)]
pub struct RawCodec {
    /// Stop reading inbound requests: the stream stays open, unread, until it times out.
    stall_inbound: Arc<AtomicBool>,
    /// Never finish writing a request: after its bytes, one more byte every 20 ms (the rest of
    /// a body its prefix announced), until the peer resets the stream.
    trickle: Arc<AtomicBool>,
}

async fn read_all<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(RAW_READ_LIMIT).read_to_end(&mut buf).await?;
    Ok(buf)
}

async fn write_all<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: Vec<u8>) -> io::Result<()> {
    io.write_all(&bytes).await?;
    io.close().await
}

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        if self.stall_inbound.load(Ordering::Relaxed) {
            futures::future::pending::<()>().await;
        }
        read_all(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        // A response is never empty: the peer closed the stream without answering.
        let response = read_all(io).await?;
        if response.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no response"));
        }
        Ok(response)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        if self.trickle.load(Ordering::Relaxed) {
            io.write_all(&r).await?;
            loop {
                io.flush().await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                io.write_all(&[0]).await?;
            }
        }
        write_all(io, r).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_all(io, r).await
    }
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Protocols {
    streams: Toggle<DeltaStreams>,
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<RawCodec>,
    deliver: request_response::Behaviour<RawCodec>,
}

/// Which request-response protocol a raw request goes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Sync,
    Deliver,
}

/// How the hostile peer signs its gossipsub messages.
#[derive(Debug, Clone, Copy)]
pub enum Authorship {
    /// Signed with its own key, as every node does: the message's source is this peer.
    Signed,
    /// Unsigned, naming another peer as the author (a forgery: strict validation drops it).
    Forged(PeerId),
}

/// The hostile peer's own origin state in one scope, as its deltas describe it: what it
/// answers a Sync with unless told otherwise.
#[derive(Debug, Clone)]
pub struct Own {
    pub incarnation: u64,
    pub seq: u64,
    pub groups: BTreeMap<String, BTreeMap<u64, u32>>,
}

impl Own {
    pub fn version(&self) -> Version {
        Version {
            incarnation: self.incarnation,
            seq: self.seq,
        }
    }

    /// The groups as a sync page carries them.
    pub fn sync_groups(&self) -> Vec<SyncGroup> {
        self.groups
            .iter()
            .map(|(name, members)| SyncGroup {
                name: name.clone(),
                members: members
                    .iter()
                    .map(|(id, n)| SyncMember::plain(*id, *n))
                    .collect(),
            })
            .collect()
    }
}

/// What the hostile peer saw and what it is told to do, shared with its task.
#[derive(Default)]
pub struct Seen {
    /// Peers connected to it.
    pub connected: HashSet<PeerId>,
    /// Its established connections, per peer.
    pub connections: HashMap<PeerId, usize>,
    /// Peers it knows to be subscribed to its scope's topic.
    pub subscribed: HashSet<PeerId>,
    /// Requests of the sync protocol received, per peer, decoded (undecodable ones are not
    /// answered).
    pub sync_requests: Vec<(PeerId, SyncRequest)>,
    /// Delivery batches received and acknowledged.
    pub batches: Vec<(PeerId, DeliverBatch)>,
    /// Gossipsub messages received on the topic.
    pub gossip: usize,
    /// Frames received on delta streams (with [`Hostile::with_delta_stream`]).
    pub frames: usize,
    /// Peers its delta stream to is open to.
    pub streams_open: HashSet<PeerId>,
    /// The peers in its gossipsub mesh of the scope's topic, as of 20 ms ago at most: a node
    /// that prunes it is gone from there once its PRUNE arrives.
    pub mesh: HashSet<PeerId>,
    /// Answers to the next Sync requests, in order, instead of its own state.
    sync_script: VecDeque<SyncResponse>,
    /// The peers its Discover answers name (peer exchange); none by default.
    advertised: Vec<(PeerId, Vec<Multiaddr>)>,
}

impl Seen {
    /// Discover requests received from `peer`.
    pub fn discovers_from(&self, peer: &PeerId) -> usize {
        self.sync_requests
            .iter()
            .filter(|(p, r)| p == peer && matches!(r, SyncRequest::Discover { .. }))
            .count()
    }

    /// Sync requests received from `peer`.
    pub fn syncs_from(&self, peer: &PeerId) -> usize {
        self.sync_requests
            .iter()
            .filter(|(p, r)| p == peer && matches!(r, SyncRequest::Sync { .. }))
            .count()
    }
}

enum Command {
    Dial(Multiaddr),
    Frame(PeerId, Vec<u8>, oneshot::Sender<Result<(), String>>),
    Publish(Vec<u8>, oneshot::Sender<Result<(), String>>),
    Request {
        proto: Proto,
        peer: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, String>>,
    },
}

/// A hostile peer hosting (pretending to host) one scope.
pub struct Hostile {
    pub peer_id: PeerId,
    own: Arc<Mutex<Own>>,
    seen: Arc<Mutex<Seen>>,
    stall: Arc<AtomicBool>,
    trickle: Arc<AtomicBool>,
    commands: mpsc::UnboundedSender<Command>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Hostile {
    /// A hostile peer that signs its messages with its own key.
    pub fn new(scope: &str) -> Hostile {
        Self::with_authorship(scope, Authorship::Signed)
    }

    /// A hostile peer whose gossipsub messages are signed, or forged.
    pub fn with_authorship(scope: &str, authorship: Authorship) -> Hostile {
        Self::build(scope, authorship, false)
    }

    /// A hostile peer that signs its messages and also speaks the delta stream.
    pub fn with_delta_stream(scope: &str) -> Hostile {
        Self::build(scope, Authorship::Signed, true)
    }

    fn build(scope: &str, authorship: Authorship, delta_stream: bool) -> Hostile {
        let keypair = Keypair::generate_ed25519();
        let peer_id = keypair.public().to_peer_id();
        let stall = Arc::new(AtomicBool::new(false));
        let trickle = Arc::new(AtomicBool::new(false));
        let (authenticity, mode) = match authorship {
            Authorship::Signed => (
                gossipsub::MessageAuthenticity::Signed(keypair.clone()),
                gossipsub::ValidationMode::Strict,
            ),
            Authorship::Forged(author) => (
                gossipsub::MessageAuthenticity::Author(author),
                gossipsub::ValidationMode::Permissive,
            ),
        };
        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(mode)
            // Large enough to send what the honest nodes must refuse (their cap is 256 KiB).
            .max_transmit_size(4 * 1024 * 1024)
            .heartbeat_interval(Duration::from_millis(500))
            .build()
            .expect("gossipsub config");
        let mut gossipsub =
            gossipsub::Behaviour::new(authenticity, gossip_config).expect("gossipsub");
        gossipsub
            .subscribe(&scope_topic(scope))
            .expect("subscribe to the scope's topic");
        // Many requests in flight at once (the flood), each waiting long enough.
        let rr = || {
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(15))
                .with_max_concurrent_streams(20_000)
        };
        let streams = delta_stream.then(|| {
            DeltaStreams::new(DeltaStreamConfig {
                max_frame_bytes: RAW_READ_LIMIT as usize,
                ..DeltaStreamConfig::default()
            })
        });
        let protocols = Protocols {
            streams: streams.into(),
            gossipsub,
            sync: request_response::Behaviour::with_codec(
                RawCodec {
                    stall_inbound: Arc::default(),
                    trickle: trickle.clone(),
                },
                [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                rr(),
            ),
            deliver: request_response::Behaviour::with_codec(
                RawCodec {
                    stall_inbound: stall.clone(),
                    trickle: trickle.clone(),
                },
                [(DELIVER_PROTOCOL, ProtocolSupport::Full)],
                rr(),
            ),
        };
        let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .expect("tcp transport")
            .with_behaviour(|_| protocols)
            .expect("behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let own = Arc::new(Mutex::new(Own {
            incarnation: rand::random(),
            seq: 0,
            groups: BTreeMap::new(),
        }));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            Driver {
                swarm,
                scope: scope.to_owned(),
                own: own.clone(),
                seen: seen.clone(),
                pending: HashMap::new(),
            }
            .run(rx),
        );
        Hostile {
            peer_id,
            own,
            seen,
            stall,
            trickle,
            commands,
            task: Some(task),
        }
    }

    fn send(&self, command: Command) {
        self.commands
            .send(command)
            .unwrap_or_else(|_| panic!("the hostile peer's task ended"));
    }

    /// Dials an honest node.
    pub fn dial(&self, addr: Multiaddr) {
        self.send(Command::Dial(addr));
    }

    /// What it saw so far.
    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its own origin state.
    pub fn own(&self) -> MutexGuard<'_, Own> {
        self.own.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers the next Sync requests with these, in order, instead of its own state.
    pub fn script_sync(&self, answers: impl IntoIterator<Item = SyncResponse>) {
        self.seen().sync_script.extend(answers);
    }

    /// Its Discover answers name these peers from now on.
    pub fn advertise_peers(&self, peers: Vec<(PeerId, Vec<Multiaddr>)>) {
        self.seen().advertised = peers;
    }

    /// Stops (or resumes) reading delivery requests: a batch sent to it is never read nor
    /// acknowledged, and the sender's request times out.
    pub fn stall_deliveries(&self, on: bool) {
        self.stall.store(on, Ordering::Relaxed);
    }

    /// While on, a request never ends: after its bytes, the hostile peer sends one more byte
    /// every 20 ms and never closes its side, until the receiver resets the stream (which
    /// then fails the request) or the request times out (15 s).
    pub fn trickle_requests(&self, on: bool) {
        self.trickle.store(on, Ordering::Relaxed);
    }

    /// Publishes raw bytes on the scope's topic.
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Publish(data, tx));
        rx.await.expect("the hostile peer's task answers")
    }

    /// Sends raw bytes as one request and waits for the raw answer (or the failure).
    pub async fn request(
        &self,
        proto: Proto,
        peer: PeerId,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        self.request_later(proto, peer, bytes)
            .await
            .expect("the hostile peer's task answers")
    }

    /// Sends raw bytes as one request; the answer arrives on the receiver. Many can be in
    /// flight at once.
    pub fn request_later(
        &self,
        proto: Proto,
        peer: PeerId,
        bytes: Vec<u8>,
    ) -> oneshot::Receiver<Result<Vec<u8>, String>> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request {
            proto,
            peer,
            bytes,
            reply,
        });
        rx
    }

    /// A delta of its own origin: the next sequence number, with these `(group, id, change)`
    /// ops. With `commit`, its own state takes it (a Sync then answers with it); without, the
    /// state stays as it was (a delta the honest nodes are expected to refuse).
    pub fn delta(&self, ops: &[(&str, u64, i64)], commit: bool) -> Delta {
        let mut own = self.own();
        let mut groups: Vec<String> = Vec::new();
        let mut list = Vec::new();
        for (name, id, change) in ops {
            let group = match groups.iter().position(|g| g == name) {
                Some(i) => i,
                None => {
                    groups.push((*name).to_owned());
                    groups.len() - 1
                }
            } as u32;
            list.push(Op {
                group,
                id: *id,
                change: *change,
                meta: None,
            });
        }
        let delta = Delta {
            origin: self.peer_id,
            incarnation: own.incarnation,
            seq: own.seq + 1,
            groups: groups.into_iter().map(Into::into).collect(),
            ops: list,
        };
        if commit {
            own.seq += 1;
            for (name, id, change) in ops {
                let members = own.groups.entry((*name).to_owned()).or_default();
                let slots = members.entry(*id).or_default();
                let next = i64::from(*slots) + change;
                assert!(next >= 0, "the hostile peer's own state went negative");
                *slots = next as u32;
                if *slots == 0 {
                    members.remove(id);
                }
                if members.is_empty() {
                    own.groups.remove(*name);
                }
            }
        }
        delta
    }

    /// Sends `bytes` as one frame on its delta stream to `peer` (with
    /// [`with_delta_stream`](Self::with_delta_stream)); an error if no stream to it is open.
    pub async fn stream_frame(&self, peer: PeerId, bytes: Vec<u8>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Frame(peer, bytes, tx));
        rx.await.expect("the hostile peer's task answers")
    }

    /// Publishes a delta (encoded as nodes encode theirs).
    pub async fn publish_delta(&self, delta: &Delta) -> Result<(), String> {
        self.publish(cbor(delta)).await
    }

    /// Ends its task: its connections close.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            task.await.ok();
        }
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Driver {
    swarm: Swarm<Protocols>,
    scope: String,
    own: Arc<Mutex<Own>>,
    seen: Arc<Mutex<Seen>>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, String>>>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        // Gossipsub changes its mesh at its heartbeat, which no event reports.
        let mut look_at_mesh = tokio::time::interval(Duration::from_millis(20));
        let topic = scope_topic(&self.scope).hash();
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return,
                },
                event = self.swarm.select_next_some() => self.on_event(event),
                _ = look_at_mesh.tick() => {
                    let mesh = self.swarm.behaviour().gossipsub.mesh_peers(&topic).copied().collect();
                    self.seen().mesh = mesh;
                }
            }
        }
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial(addr) => {
                self.swarm.dial(addr).expect("dial");
            }
            Command::Frame(peer, bytes, reply) => {
                let result = match self.swarm.behaviour_mut().streams.as_mut() {
                    Some(streams) => streams.send(peer, bytes.into()).map_err(|e| e.to_string()),
                    None => Err("this hostile peer does not speak the delta stream".into()),
                };
                reply.send(result).ok();
            }
            Command::Publish(data, reply) => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(scope_topic(&self.scope), data)
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                reply.send(result).ok();
            }
            Command::Request {
                proto,
                peer,
                bytes,
                reply,
            } => {
                let b = self.swarm.behaviour_mut();
                let id = match proto {
                    Proto::Sync => b.sync.send_request(&peer, bytes),
                    Proto::Deliver => b.deliver.send_request(&peer, bytes),
                };
                self.pending.insert(id, reply);
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<ProtocolsEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                let mut seen = self.seen();
                seen.connected.insert(peer_id);
                seen.connections
                    .insert(peer_id, num_established.get() as usize);
                drop(seen);
                if let Some(streams) = self.swarm.behaviour_mut().streams.as_mut() {
                    streams.want(peer_id);
                }
            }
            SwarmEvent::Behaviour(ProtocolsEvent::Streams(event)) => match event {
                DeltaStreamEvent::Frame { .. } => self.seen().frames += 1,
                DeltaStreamEvent::Opened { peer } => {
                    self.seen().streams_open.insert(peer);
                }
                DeltaStreamEvent::Closed { peer, .. } => {
                    self.seen().streams_open.remove(&peer);
                }
                _ => {}
            },
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                let mut seen = self.seen();
                seen.connections.insert(peer_id, num_established as usize);
                if num_established == 0 {
                    seen.connected.remove(&peer_id);
                    seen.streams_open.remove(&peer_id);
                }
            }
            SwarmEvent::Behaviour(ProtocolsEvent::Gossipsub(event)) => match event {
                gossipsub::Event::Subscribed { peer_id, topic }
                    if topic == scope_topic(&self.scope).hash() =>
                {
                    self.seen().subscribed.insert(peer_id);
                }
                gossipsub::Event::Unsubscribed { peer_id, .. } => {
                    self.seen().subscribed.remove(&peer_id);
                }
                gossipsub::Event::Message { .. } => self.seen().gossip += 1,
                _ => {}
            },
            SwarmEvent::Behaviour(ProtocolsEvent::Sync(event)) => self.on_rr(Proto::Sync, event),
            SwarmEvent::Behaviour(ProtocolsEvent::Deliver(event)) => {
                self.on_rr(Proto::Deliver, event)
            }
            _ => {}
        }
    }

    fn on_rr(&mut self, proto: Proto, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let Some(answer) = self.answer(proto, peer, &request) else {
                        return; // undecodable: dropping the channel closes the stream
                    };
                    let b = self.swarm.behaviour_mut();
                    let rr = match proto {
                        Proto::Sync => &mut b.sync,
                        Proto::Deliver => &mut b.deliver,
                    };
                    rr.send_response(channel, answer).ok();
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending.remove(&request_id) {
                        reply.send(Ok(response)).ok();
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    reply.send(Err(error.to_string())).ok();
                }
            }
            _ => {}
        }
    }

    /// The answer to a request of an honest node.
    fn answer(&mut self, proto: Proto, peer: PeerId, request: &[u8]) -> Option<Vec<u8>> {
        match proto {
            Proto::Sync => {
                let request: SyncRequest = unframe(request).ok()?;
                let mut seen = self.seen();
                seen.sync_requests.push((peer, request.clone()));
                let own = self.own.lock().unwrap_or_else(|e| e.into_inner());
                let response = match request {
                    SyncRequest::Discover { .. } => SyncResponse::Discover {
                        scopes: vec![(self.scope.clone(), own.version())],
                        peers: seen.advertised.clone(),
                    },
                    SyncRequest::Sync { scope, .. } => match seen.sync_script.pop_front() {
                        Some(scripted) => scripted,
                        None => SyncResponse::Page {
                            scope,
                            version: own.version(),
                            page: 0,
                            pages: 1,
                            groups: own.sync_groups(),
                        },
                    },
                    SyncRequest::Goodbye { .. } => SyncResponse::Ack,
                };
                Some(frame(&response))
            }
            Proto::Deliver => {
                let batch: DeliverBatch = unframe(request).ok()?;
                let ack = DeliverAck { seq: batch.seq };
                self.seen().batches.push((peer, batch));
                Some(frame(&ack))
            }
        }
    }
}
