//! procgroups inside an application's own libp2p swarm: `NodeBuilder::build_behaviour` gives
//! the node and its network behaviour, which the application puts beside its own protocols
//! (here ping) in one `#[derive(NetworkBehaviour)]`, and polls. Two such applications in one
//! process, over loopback with mDNS off, join a group and see each other; one broadcasts to
//! the group, both shut down, and the example exits 0 (1 if anything did not happen in time).
//!
//! `cargo run --example embed`

use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, ping};
use procgroups::{Keypair, Node, ScopeConfig};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const SCOPE: &str = "embed:demo";
const GROUP: &str = "greeters";
/// How long each step may take.
const WAIT: Duration = Duration::from_secs(10);

/// The application's behaviour: procgroups and its own protocols, one set of connections.
#[derive(NetworkBehaviour)]
struct App {
    groups: procgroups::behaviour::Behaviour,
    ping: ping::Behaviour,
}

/// Starts a node embedded in a swarm of its own making, listening on loopback; the task polls
/// the swarm, reports ping round trips to `pings`, and ends once the node has stopped.
fn start(pings: mpsc::UnboundedSender<Duration>) -> Res<(Node, JoinHandle<()>)> {
    let keypair = Keypair::generate_ed25519();
    let (node, groups) = Node::builder()
        .keypair(keypair.clone()) // the swarm's identity is the node's
        .mdns(false)
        .scope(SCOPE, ScopeConfig::default())
        .build_behaviour()?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            Default::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )?
        .with_behaviour(|_| App {
            groups,
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(1))),
        })?
        .build();
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let task = tokio::spawn(async move {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(AppEvent::Groups(procgroups::behaviour::Event::Stopped)) => {
                    return;
                }
                SwarmEvent::Behaviour(AppEvent::Ping(ping::Event {
                    result: Ok(rtt), ..
                })) => {
                    pings.send(rtt).ok();
                }
                _ => {}
            }
        }
    });
    Ok((node, task))
}

/// Looks at `cond` every 10 ms until it holds; `Err` naming `what` after [`WAIT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) -> Res<()> {
    let poll = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(WAIT, poll)
        .await
        .map_err(|_| format!("timed out waiting for {what}").into())
}

#[tokio::main]
async fn main() -> Res<()> {
    let (ping_tx, mut pings) = mpsc::unbounded_channel();
    let (a, a_swarm) = start(ping_tx.clone())?;
    let (b, b_swarm) = start(ping_tx)?;
    until("a's swarm to listen", || !a.listen_addrs().is_empty()).await?;
    let addr: Multiaddr = a.listen_addrs()[0].clone();
    println!("a {} listens on {addr}", a.peer_id());
    b.dial(addr)?;

    // One process on each node joins the group; each node sees both members.
    let (pa, pb) = (a.spawn_process(), b.spawn_process());
    let mut inbox = pa.listen("hello");
    let (ga, gb) = (pa.open(SCOPE)?, pb.open(SCOPE)?);
    ga.join(GROUP)?;
    gb.join(GROUP)?;
    until("both members on both nodes", || {
        [&ga, &gb]
            .iter()
            .all(|pg| pg.get_members(GROUP).is_ok_and(|m| m.len() == 2))
    })
    .await?;
    println!("{GROUP} on a: {:?}", ga.get_members(GROUP)?.to_vec());
    println!("{GROUP} on b: {:?}", gb.get_members(GROUP)?.to_vec());

    // A broadcast from b reaches a's member (and b's own, which does not listen).
    gb.broadcast(GROUP, "hello", &"hello from b".to_string())?;
    let message = timeout(WAIT, inbox.recv())
        .await?
        .ok_or("a's inbox closed")?;
    println!(
        "a's member got {:?} from {}",
        message.decode::<String>()?,
        message.from()
    );
    // The application's own protocol runs on the same connection.
    let rtt = timeout(WAIT, pings.recv()).await?.ok_or("no ping")?;
    println!("ping beside procgroups: {rtt:?}");

    drop((ga, gb, pa, pb));
    b.shutdown().await;
    a.shutdown().await;
    // Each behaviour reports that it stopped, which ends its swarm's task.
    timeout(WAIT, a_swarm).await??;
    timeout(WAIT, b_swarm).await??;
    println!("both nodes stopped");
    Ok(())
}
