//! The node: identity, scopes, processes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use hashbrown::{HashMap, HashSet};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};
use prometheus_client::registry::Registry;

use crate::app::health::ScopeHealth;
use crate::app::mailbox::{ProcessShared, ProcessTable};
use crate::app::metrics::{MetricsSource, NodeCollector};
use crate::app::process::Process;
use crate::app::scope::Scope;
use crate::app::shared::NodeShared;
use crate::app::stats::{NodeStats, ScopeStats};
use crate::net::host::ScopeHost;
use crate::net::outbox::DeliveryPolicy;
use crate::net::protocols::BehaviourConfig;
#[cfg(doc)]
use crate::net::relay::RelayConfig;
use crate::net::relay::{Reach, RelayServer};
use crate::net::{NetConfig, NetShared};
use crate::vocab::config::{ConfigError, load_scopes_file, validate_scope_id};
use crate::vocab::error::Result;
use crate::vocab::policy::{AllowAll, Policy};
use crate::{Pid, ScopeConfig};

/// The default capacity of each inbox of a process.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 1024;

/// Configures and starts a [`Node`]. See [`Node::builder`].
pub struct NodeBuilder {
    keypair: Option<Keypair>,
    scopes: Vec<(String, ScopeConfig)>,
    files: Vec<PathBuf>,
    policy: Arc<dyn Policy>,
    mailbox_capacity: usize,
    listen: Vec<Multiaddr>,
    bootstrap: Vec<Multiaddr>,
    network: BehaviourConfig,
    allowed: Option<HashSet<PeerId>>,
    psk: Option<PreSharedKey>,
}

impl NodeBuilder {
    /// Admits only these peers: a connection to or from any other peer is refused once its
    /// identity is known (after the noise handshake), and a delta whose signed source is not
    /// among them is rejected even when an admitted peer relays it. Call it as often as
    /// needed; the lists add up. Default: every peer is admitted. Refusals are counted in
    /// [`NodeStats::peers_refused`].
    ///
    /// Every node of the cluster needs the list (with its own id in it, for the others):
    /// a peer that admits an outsider still cannot pass it our members or its deltas, but it
    /// talks to it.
    pub fn allow_peers(mut self, peers: impl IntoIterator<Item = PeerId>) -> Self {
        self.allowed.get_or_insert_with(HashSet::new).extend(peers);
        self
    }

    /// A private network: every connection starts with libp2p's pnet handshake under this
    /// pre-shared key (XSalsa20 over TCP, below noise), so a node without the key cannot
    /// connect, not even to learn our identity. QUIC has no pnet: with a key the node
    /// listens on TCP only (default `/ip4/0.0.0.0/tcp/0`), and a QUIC `listen_on` address is
    /// refused by [`build`](Self::build). With
    /// [`build_behaviour`](Self::build_behaviour) the application's transport must do the
    /// handshake itself ([`PnetConfig`](libp2p::pnet::PnetConfig)).
    ///
    /// ```
    /// use procgroups::PreSharedKey;
    /// // 32 bytes shared by the cluster's operators, e.g. from a `swarm.key` file.
    /// let key: PreSharedKey = "/key/swarm/psk/1.0.0/\n/base16/\n\
    ///     6189c5cf0b87fb800c1a9feeda73c6ab5e998db48fb9e6a978575c770ceef683"
    ///     .parse()
    ///     .expect("a key file");
    /// let builder = procgroups::Node::builder().pre_shared_key(key);
    /// # drop(builder);
    /// ```
    pub fn pre_shared_key(mut self, key: PreSharedKey) -> Self {
        self.psk = Some(key);
        self
    }

    /// Listens on `addr` (TCP or QUIC); call it once per address. Without any, the node
    /// listens on one TCP and one QUIC port of every interface
    /// (`/ip4/0.0.0.0/tcp/0`, `/ip4/0.0.0.0/udp/0/quic-v1`). QUIC needs the crate's `quic`
    /// feature (on by default); without it a QUIC address fails to bind (`Unavailable`).
    pub fn listen_on(mut self, addr: Multiaddr) -> Self {
        self.listen.push(addr);
        self
    }

    /// Finds peers on the LAN by mDNS (default `true`). mDNS multicasts on every interface:
    /// turn it off wherever that is not wanted (tests, shared hosts).
    pub fn mdns(mut self, on: bool) -> Self {
        self.network.mdns = on;
        self
    }

    /// The size caps and timers of the node's protocols (see [`BehaviourConfig`]); replaces
    /// every field, `mdns` included. The timeouts of requests follow the scopes:
    /// `sync_timeout` becomes the longest `protocol_timeout` and `deliver_timeout` the longest
    /// `broadcast_timeout` of the node's scopes.
    pub fn network_config(mut self, config: BehaviourConfig) -> Self {
        self.network = config;
        self
    }

    /// Whether and for whom the node relays connections between other peers (default
    /// [`RelayServer::ScopePeers`]: for the peers of its scopes). [`RelayServer::Auto`] waits
    /// until AutoNAT finds it reachable; a public node that relays and bootstraps for others
    /// uses [`RelayServer::Anyone`].
    pub fn relay_server(mut self, server: RelayServer) -> Self {
        self.network.relay.server = server;
        self
    }

    /// Relays to use, as multiaddresses ending in `/p2p/<peer-id>`: the node dials them,
    /// reserves a slot at each (so that peers that cannot dial it reach it through them) and
    /// dials through them the peers it cannot dial directly. Default none: the node reserves
    /// at relays among the peers of its scopes ([`RelayConfig::reservations`]).
    pub fn relays(mut self, addrs: impl IntoIterator<Item = Multiaddr>) -> Self {
        self.network.relay.relays.extend(addrs);
        self
    }

    /// Makes relayed connections direct by hole punching (DCUtR; default `true`).
    pub fn hole_punching(mut self, on: bool) -> Self {
        self.network.relay.hole_punching = on;
        self
    }

    /// Learns which external addresses others can dial (AutoNAT v2, client and server; default
    /// `true`). Without it, [`RelayServer::Auto`] never relays and [`Node::external_addrs`]
    /// lists relayed addresses only.
    pub fn autonat(mut self, on: bool) -> Self {
        self.network.relay.autonat = on;
        self
    }

    /// Kademlia bootstrap nodes, as multiaddresses ending in `/p2p/<peer-id>`: the node dials
    /// them, joins the DHT through them, provides a key per scope and dials the other
    /// providers, so the members of a scope find each other beyond the LAN. Default none.
    pub fn bootstrap(mut self, addrs: impl IntoIterator<Item = Multiaddr>) -> Self {
        self.bootstrap.extend(addrs);
        self
    }

    /// The node's identity; default a fresh ed25519 key. A node restarted with the same key is
    /// a new incarnation of the same peer.
    pub fn keypair(mut self, keypair: Keypair) -> Self {
        self.keypair = Some(keypair);
        self
    }

    /// Hosts the scope `id` (`"namespace:name"`) with `config`.
    pub fn scope(mut self, id: impl Into<String>, config: ScopeConfig) -> Self {
        self.scopes.push((id.into(), config));
        self
    }

    /// Hosts the scopes of a registry file, TOML (`.toml`) or YAML (`.yaml`, `.yml`), in the
    /// registry-entry shape (see [`parse_scopes_toml`](crate::vocab::config::parse_scopes_toml) and
    /// `examples/procgroups.toml`); entries with `lifecycle.auto_start = false` are skipped.
    /// Read by [`build`](Self::build), which fails with `Invalid` naming the file and the
    /// field if the file is wrong.
    pub fn scopes_from_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }

    /// Decides every permission; default [`AllowAll`].
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// Capacity of each inbox of each process (default [`DEFAULT_MAILBOX_CAPACITY`]); a
    /// message that finds its inbox full is dropped and counted.
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = capacity;
        self
    }

    /// Validates the configuration and starts the node in a swarm of its own (TCP and QUIC,
    /// noise, yamux, on a dedicated thread); returns once every listener is bound (see
    /// [`Node::listen_addrs`]).
    pub async fn build(mut self) -> Result<Node> {
        let tcp: Multiaddr = "/ip4/0.0.0.0/tcp/0".parse().expect("a valid multiaddr");
        let listen = match (self.listen.is_empty(), self.psk.is_some()) {
            #[cfg(feature = "quic")]
            (true, false) => vec![
                tcp,
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("a valid multiaddr"),
            ],
            (true, _) => vec![tcp],
            (false, _) => std::mem::take(&mut self.listen),
        };
        if self.psk.is_some()
            && let Some(addr) = listen
                .iter()
                .find(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)))
        {
            return Err(ConfigError::InvalidField {
                field: "listen_on",
                reason: format!("{addr}: QUIC cannot carry a pre-shared key; listen on TCP"),
            }
            .into());
        }
        let psk = self.psk;
        let (node, behaviour, keypair) = self.prepare()?;
        crate::net::spawn_swarm(keypair, behaviour, &node.shared.net, listen, psk).await?;
        Ok(node)
    }

    /// Validates the configuration and returns the node with its network
    /// [`Behaviour`](crate::net::behaviour::Behaviour), for the application to run in a swarm of
    /// its own (built with the same keypair: pass one with [`keypair`](Self::keypair)). The
    /// node does nothing on the network until that swarm is polled; `listen_on` is ignored
    /// (the application's swarm listens), and [`Node::listen_addrs`] reports what it binds.
    ///
    /// To reach peers through relays, the application's swarm needs the relay client's
    /// transport (`SwarmBuilder::with_relay_client`), and hands the client to the behaviour
    /// with [`Behaviour::use_relay_client`](crate::net::behaviour::Behaviour::use_relay_client)
    /// before it builds the swarm; without it the node still relays for others and punches
    /// holes, but neither reserves at relays nor dials through them.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use futures::StreamExt;
    /// use libp2p::swarm::NetworkBehaviour;
    /// use procgroups::{Keypair, Node, ScopeConfig};
    ///
    /// #[derive(NetworkBehaviour)]
    /// struct App {
    ///     groups: procgroups::behaviour::Behaviour,
    ///     ping: libp2p::ping::Behaviour, // and whatever else the application speaks
    /// }
    ///
    /// let keypair = Keypair::generate_ed25519();
    /// let (node, groups) = Node::builder()
    ///     .keypair(keypair.clone())
    ///     .mdns(false)
    ///     .scope("app:pg", ScopeConfig::default())
    ///     .build_behaviour()?;
    /// let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
    ///     .with_tokio()
    ///     .with_tcp(Default::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)?
    ///     .with_behaviour(|_| App { groups, ping: Default::default() })?
    ///     .build();
    /// swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    /// tokio::spawn(async move { loop { swarm.select_next_some().await; } });
    /// let p = node.spawn_process();
    /// p.open("app:pg")?.join("workers")?;
    /// # Ok(()) }
    /// ```
    pub fn build_behaviour(self) -> Result<(Node, crate::net::behaviour::Behaviour)> {
        let (node, behaviour, _) = self.prepare()?;
        Ok((node, behaviour))
    }

    fn prepare(self) -> Result<(Node, crate::net::behaviour::Behaviour, Keypair)> {
        if self.mailbox_capacity == 0 {
            return Err(ConfigError::InvalidField {
                field: "mailbox_capacity",
                reason: "must be at least 1".into(),
            }
            .into());
        }
        let mut scopes = self.scopes;
        for file in &self.files {
            for entry in load_scopes_file(file)? {
                if entry.auto_start {
                    scopes.push((entry.id, entry.config));
                } else {
                    tracing::info!(scope = %entry.id, "scope not started: auto_start = false");
                }
            }
        }
        self.network.validate()?;
        let keypair = self.keypair.unwrap_or_else(Keypair::generate_ed25519);
        let peer_id = keypair.public().to_peer_id();
        let incarnation: u64 = rand::random();
        let net_shared = Arc::new(NetShared::default());
        // The scope cores' clock.
        let epoch = std::time::Instant::now();
        let processes: Arc<ProcessTable> = Arc::default();
        let mut table: HashMap<Arc<str>, Arc<Scope>> = HashMap::new();
        let mut ordered = Vec::new();
        for (id, config) in scopes {
            validate_scope_id(&id)?;
            let id: Arc<str> = id.into();
            if table.contains_key(&id) {
                return Err(ConfigError::DuplicateScope(id.to_string()).into());
            }
            let scope = Arc::new(Scope::new(
                id.clone(),
                config,
                peer_id,
                incarnation,
                epoch,
                net_shared.clone(),
                processes.clone(),
            ));
            ordered.push(scope.clone());
            table.insert(id, scope);
        }
        let mut network = self.network;
        let policy = DeliveryPolicy::from_scopes(
            ordered.iter().map(|s| &s.config),
            network.max_request_bytes / 2,
        );
        network.deliver_timeout = policy.timeout;
        if let Some(t) = ordered.iter().map(|s| s.config.protocol_timeout()).max() {
            network.sync_timeout = t;
        }
        let (behaviour, net) = crate::net::behaviour::build(
            NetConfig {
                keypair: keypair.clone(),
                bootstrap: self.bootstrap,
                behaviour: network,
                policy,
                incarnation,
                allowed: self.allowed,
            },
            ordered
                .iter()
                .map(|s| s.clone() as Arc<dyn ScopeHost>)
                .collect(),
            processes.clone(),
            net_shared,
        )?;
        // Ids of a new incarnation start at its start time in nanoseconds: above every id an
        // earlier incarnation handed out (see `Pid`).
        let first_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let node = Node {
            shared: Arc::new(NodeShared {
                peer_id,
                incarnation,
                scopes: table,
                processes,
                net,
                next_pid: AtomicU64::new(first_id),
                policy: self.policy,
                mailbox_capacity: self.mailbox_capacity,
                running: AtomicBool::new(true),
            }),
        };
        Ok((node, behaviour, keypair))
    }
}

/// A procgroups node: an identity hosting processes and scopes.
///
/// Cheap to clone: clones share the node. Several nodes may live in one OS process; nothing is
/// global.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> procgroups::Result<()> {
/// use procgroups::{Node, ScopeConfig};
/// let node = Node::builder()
///     .mdns(false) // no multicast from doc tests
///     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
///     .scope("app:pg", ScopeConfig::default())
///     .build()
///     .await?;
/// let p = node.spawn_process();
/// let pg = p.open("app:pg")?;
/// pg.join(["workers", "all"])?;
/// assert_eq!(pg.get_members("workers")?.len(), 1);
/// assert_eq!(&*pg.which_groups()?, &["all".into(), "workers".into()]);
/// drop(p); // exit: leaves every group
/// node.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Node {
    shared: Arc<NodeShared>,
}

impl Node {
    /// A builder with the defaults: a fresh identity, no scope, [`AllowAll`].
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            keypair: None,
            scopes: Vec::new(),
            files: Vec::new(),
            policy: Arc::new(AllowAll),
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            network: BehaviourConfig::default(),
            allowed: None,
            psk: None,
        }
    }

    /// The addresses the node listens on, with `/p2p/<peer-id>` appended: what another node
    /// passes to [`dial`](Self::dial) or [`NodeBuilder::bootstrap`].
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        let peer = self.shared.peer_id;
        self.shared
            .net
            .shared
            .listen_addrs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|a| a.clone().with_p2p(peer).unwrap_or_else(|a| a))
            .collect()
    }

    /// Dials `addr` (ideally ending in `/p2p/<peer-id>`). Returns at once; the connection, if
    /// it succeeds, shows in [`connected_peers`](Self::connected_peers), and the peers then
    /// exchange their scopes' state.
    pub fn dial(&self, addr: Multiaddr) -> Result<()> {
        self.shared.check_running()?;
        self.shared.net.dial(addr)
    }

    /// Closes every connection to `peer` and refuses every dial to it, whoever asks (the
    /// node's redial, Kademlia, a request), until the application [`dial`](Self::dial)s it
    /// again with an address ending in `/p2p/<peer>`, or the peer connects to us. Its members
    /// stay until `node_down_grace` passes without a connection, as for any lost peer.
    pub fn disconnect(&self, peer: PeerId) -> Result<()> {
        self.shared.check_running()?;
        self.shared.net.disconnect(peer)
    }

    /// The peers this node has at least one connection to, sorted.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = self
            .shared
            .net
            .shared
            .connected
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        peers.sort();
        peers
    }

    /// How this node reaches `peer` now: directly, only through a relay, or not at all. A
    /// relayed connection is made direct by hole punching where the NATs allow
    /// ([`RelayConfig::hole_punching`]); it is closed once a direct one is up.
    pub fn reach(&self, peer: &PeerId) -> Reach {
        self.shared
            .net
            .shared
            .connected
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .copied()
            .unwrap_or(Reach::Unreached)
    }

    /// The addresses others can reach this node at, with `/p2p/<peer-id>` appended: its
    /// external addresses that AutoNAT confirmed (peers dialed them back), and its relayed
    /// addresses (`.../p2p/<relay>/p2p-circuit/p2p/<peer-id>`) while a relay holds a
    /// reservation for it. Empty until a peer has confirmed one; for the addresses it binds,
    /// see [`listen_addrs`](Self::listen_addrs).
    pub fn external_addrs(&self) -> Vec<Multiaddr> {
        let peer = self.shared.peer_id;
        self.shared
            .net
            .shared
            .external_addrs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|a| a.clone().with_p2p(peer).unwrap_or_else(|a| a))
            .collect()
    }

    /// The node's identity.
    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    /// The figures of the scope `id` on this node (sizes, peers, deltas, syncs, deliveries,
    /// drops, breakers); `NotFound` for a scope the node does not host. The same figures
    /// are exported by [`register_metrics`](Self::register_metrics).
    pub fn stats(&self, scope: &str) -> Result<ScopeStats> {
        Ok(self.shared.hosted(scope)?.stats())
    }

    /// The node-wide figures: connections and the delivery of messages to other nodes.
    pub fn node_stats(&self) -> NodeStats {
        self.shared.node_stats()
    }

    /// The health of the scope `id` on this node (see [`ScopeHealth`] for what it checks);
    /// `NotFound` for a scope the node does not host.
    pub fn scope_health(&self, scope: &str) -> Result<ScopeHealth> {
        let scope = self.shared.hosted(scope)?;
        Ok(self.shared.health(&scope))
    }

    /// The health of every scope of the node, sorted by scope id.
    pub fn health(&self) -> Vec<ScopeHealth> {
        self.shared.all_health()
    }

    /// Registers the node's metrics in `registry`, under the prefix `procgroups`: per scope
    /// (label `scope`) `groups`, `members`, `local_members`, `peers`, `peers_unreachable`,
    /// `breakers` (by `state`), `deltas_queued`, `deltas_total` (by `outcome`: sent, applied,
    /// duplicate, rejected), `syncs_total` (applied, rejected, served), `purges_total`,
    /// `broadcasts_total`, `deliveries_total` (by `target`: local, remote), `drops_total`
    /// (by `what`: event, remote_slot, remote_leave) and `health` (0 healthy, 1 degraded,
    /// 2 unhealthy); per node `node_peers`, `known_peers`, `frames_waiting`, `frames_total` (sent, received,
    /// lost), `duplicate_batches_total`, `errors_total` (request_failed, malformed,
    /// peer_refused, peer_ignored) and
    /// `messages_dropped_total`.
    ///
    /// The values are read at each scrape from the counters the node keeps anyway, so
    /// registering costs nothing between scrapes. The registry holds the node weakly: once
    /// the node is dropped it reports nothing. To put several nodes in one registry, give
    /// each a sub-registry with a label of its own
    /// ([`Registry::sub_registry_with_label`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use prometheus_client::registry::Registry;
    /// use procgroups::{Node, ScopeConfig};
    ///
    /// let node = Node::builder()
    ///     .mdns(false)
    ///     .listen_on("/ip4/127.0.0.1/tcp/0".parse()?)
    ///     .scope("app:pg", ScopeConfig::default())
    ///     .build()
    ///     .await?;
    /// let mut registry = Registry::default();
    /// node.register_metrics(&mut registry);
    /// let p = node.spawn_process();
    /// p.open("app:pg")?.join("workers")?;
    ///
    /// let mut text = String::new();
    /// prometheus_client::encoding::text::encode(&mut text, &registry)?;
    /// assert!(text.contains(r#"procgroups_members{scope="app:pg"} 1"#), "{text}");
    /// # Ok(()) }
    /// ```
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry
            .sub_registry_with_prefix("procgroups")
            .register_collector(Box::new(NodeCollector {
                node: Arc::downgrade(&self.shared) as Weak<dyn MetricsSource>,
            }));
    }

    /// The ids of the scopes the node hosts, sorted.
    pub fn scopes(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.shared.scopes.keys().map(|k| k.to_string()).collect();
        ids.sort();
        ids
    }

    /// Starts a process on this node. After [`shutdown`](Self::shutdown), the process can do
    /// nothing (`open` is `Unavailable`).
    pub fn spawn_process(&self) -> Process {
        let id = self.shared.next_pid.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(ProcessShared::new(Pid::new(self.shared.peer_id, id)));
        if self.shared.running.load(Ordering::Acquire) {
            self.shared
                .processes
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, shared.clone());
        } else {
            shared.mark_dead();
        }
        Process::new(shared, self.shared.clone())
    }

    /// Stops the node gracefully: every process exits (leaving its groups), the peers are
    /// told, so they drop this node's members at once rather than after `node_down_grace`,
    /// the network task stops (waiting up to a second for the peers' acknowledgements), and
    /// every later call is `Unavailable`. Idempotent.
    pub async fn shutdown(&self) {
        if !self.shared.running.swap(false, Ordering::AcqRel) {
            self.shared.net.shutdown().await;
            return;
        }
        let processes: Vec<Arc<ProcessShared>> = self
            .shared
            .processes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for process in processes {
            self.shared.exit_process(&process);
        }
        self.shared.net.shutdown().await;
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.shared.peer_id)
            .field("incarnation", &self.shared.incarnation)
            .finish()
    }
}
