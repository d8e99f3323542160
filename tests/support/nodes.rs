//! Nodes of one test process over loopback TCP, mDNS off: building, connecting and cutting
//! them, spawning processes, and the behaviour embedded in a swarm of the test's own.

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Swarm};
use procgroups::{Instance, Keypair, Node, NodeBuilder, Process, ScopeConfig};

use super::wait::{WAIT, eventually};

/// An address on loopback with a port of the system's choosing.
pub fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")
}

/// A node that listens on [`loopback`], mDNS off, hosting `scope` with `config`.
pub fn builder(scope: &str, config: ScopeConfig) -> NodeBuilder {
    Node::builder()
        .mdns(false)
        .listen_on(loopback())
        .scope(scope, config)
}

/// [`builder`], built.
pub async fn node(scope: &str, config: ScopeConfig) -> Node {
    builder(scope, config)
        .build()
        .await
        .expect("the node starts")
}

/// A scope configuration with `node_down_grace` set to `grace`.
pub fn grace(grace: std::time::Duration) -> ScopeConfig {
    ScopeConfig::builder()
        .node_down_grace(grace)
        .build()
        .expect("a valid config")
}

/// Attempts of a delivery batch before it is given up under [`quick_give_up`]: the first and
/// `RETRIES` retries.
pub const RETRIES: u32 = 2;
/// The retry delays of [`quick_give_up`]: short, so that a dead node is given up quickly.
pub const RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// Short retries, a breaker that does not open first, and a `node_down_grace` that outlasts
/// the test: a dead node's members stay, so that a broadcast or a call still targets them and
/// its delivery is given up after `RETRIES` retries.
pub fn quick_give_up() -> ScopeConfig {
    ScopeConfig::builder()
        .broadcast_timeout(std::time::Duration::from_secs(2))
        .max_retries(RETRIES)
        .retry_base_delay(RETRY_DELAY)
        .retry_max_delay(RETRY_DELAY)
        .circuit_breaker_failures(10)
        .node_down_grace(std::time::Duration::from_secs(120))
        .build()
        .expect("a valid config")
}

/// A new process of `node` and its instance of `scope`.
pub fn spawn(node: &Node, scope: &str) -> (Process, Instance) {
    let p = node.spawn_process();
    let pg = p.open(scope).expect("open the scope");
    (p, pg)
}

/// `from` dials `to`; returns once both see the connection.
pub async fn connect(from: &Node, to: &Node) {
    from.dial(to.listen_addrs()[0].clone()).expect("dial");
    eventually("a connection", WAIT, || {
        from.connected_peers().contains(&to.peer_id())
            && to.connected_peers().contains(&from.peer_id())
    })
    .await;
}

/// Both sides forget each other; returns once neither has a connection to the other.
pub async fn cut(x: &Node, y: &Node) {
    x.disconnect(y.peer_id()).expect("disconnect");
    y.disconnect(x.peer_id()).expect("disconnect");
    eventually("the cut", WAIT, || {
        !x.connected_peers().contains(&y.peer_id()) && !y.connected_peers().contains(&x.peer_id())
    })
    .await;
}

/// The behaviour alone in an application's swarm.
#[derive(NetworkBehaviour)]
pub struct Embedded {
    groups: procgroups::behaviour::Behaviour,
}

/// A node hosting `scope` with `config`, embedded in a swarm of the test's own
/// ([`app_swarm`], [`drive_pausable`]) with a fresh identity: the sender holds (`false`) and
/// resumes (`true`) the polling of that swarm; the task ends when the behaviour reports that
/// it stopped.
pub fn embedded_pausable(
    scope: &str,
    config: ScopeConfig,
) -> (
    Node,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let keypair = Keypair::generate_ed25519();
    let (node, groups) = Node::builder()
        .keypair(keypair.clone())
        .mdns(false)
        .scope(scope, config)
        .build_behaviour()
        .expect("the behaviour");
    let swarm = app_swarm(keypair, Embedded { groups });
    let (polling, driver) = drive_pausable(swarm, |event| {
        matches!(event, SwarmEvent::Behaviour(EmbeddedEvent::Groups(_)))
    });
    (node, polling, driver)
}

/// An application's own swarm around `behaviour` (TCP, noise, yamux), listening on
/// [`loopback`].
pub fn app_swarm<B: NetworkBehaviour>(keypair: Keypair, behaviour: B) -> Swarm<B> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            Default::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("the TCP transport")
        .with_behaviour(|_| behaviour)
        .expect("the behaviour")
        .build();
    swarm.listen_on(loopback()).expect("listen on loopback");
    swarm
}

/// Polls `swarm` on a task of its own until `last` holds for one of its events. The sender
/// holds the polling (`false`) and resumes it (`true`): a swarm that is not polled is an
/// application that stopped running its event loop. The task also ends when the sender is
/// dropped while the polling is held.
pub fn drive_pausable<B>(
    mut swarm: Swarm<B>,
    last: impl Fn(&SwarmEvent<B::ToSwarm>) -> bool + Send + 'static,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
)
where
    B: NetworkBehaviour + Send + 'static,
    B::ToSwarm: Send,
{
    let (polling, mut poll_rx) = tokio::sync::watch::channel(true);
    let driver = tokio::spawn(async move {
        loop {
            if *poll_rx.borrow_and_update() {
                tokio::select! {
                    event = swarm.select_next_some() => {
                        if last(&event) {
                            return;
                        }
                    }
                    _ = poll_rx.changed() => {}
                }
            } else if poll_rx.changed().await.is_err() {
                return;
            }
        }
    });
    (polling, driver)
}
