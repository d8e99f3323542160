//! The swarm a node runs its behaviour in when the application does not embed it: TCP and
//! QUIC and the relay client's transport (or TCP with a pre-shared key, no relay), noise,
//! yamux, on a thread of its own.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::Transport as _;
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, noise, tcp, yamux};
use tokio::sync::oneshot;

use crate::vocab::error::{Error, Result};

use crate::net::behaviour::{Behaviour, Event};
use crate::net::handle::NetHandle;

/// After the listeners are bound, `bind` takes the listen addresses that follow until none has
/// come for `ADDRESSES_SETTLE_GAP`, for at most `ADDRESSES_SETTLE_MAX`.
const ADDRESSES_SETTLE_GAP: Duration = Duration::from_millis(30);
const ADDRESSES_SETTLE_MAX: Duration = Duration::from_millis(300);

/// Runs `behaviour` in a swarm of its own (TCP, QUIC and circuits through relays, noise, yamux;
/// with a pre-shared key, TCP with pnet below noise, no QUIC and no relay: a relayed circuit
/// would carry no pnet layer) on a dedicated thread with a `current_thread`
/// runtime, listening on `listen`; returns once every listener is bound.
pub(crate) async fn spawn_swarm(
    keypair: Keypair,
    behaviour: Behaviour,
    handle: &NetHandle,
    listen: Vec<Multiaddr>,
    psk: Option<PreSharedKey>,
) -> Result<()> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("procgroups-net".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    ready_tx
                        .send(Err(Error::unavailable(format!("runtime: {e}"))))
                        .ok();
                    return;
                }
            };
            runtime.block_on(async move {
                let mut swarm = match bind(keypair, behaviour, listen, psk).await {
                    Ok(swarm) => {
                        ready_tx.send(Ok(())).ok();
                        swarm
                    }
                    Err(e) => {
                        ready_tx.send(Err(e)).ok();
                        return;
                    }
                };
                loop {
                    match swarm.select_next_some().await {
                        SwarmEvent::Behaviour(Event::Stopped) => return,
                        other => tracing::trace!(?other, "swarm event"),
                    }
                }
            });
        })
        .map_err(|e| Error::unavailable(format!("cannot start the network thread: {e}")))?;
    *handle.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
    match ready_rx.await {
        Ok(result) => result,
        Err(_) => Err(Error::unavailable(
            "the network thread ended while starting",
        )),
    }
}

/// Builds the node's swarm and waits until every listener has an address.
async fn bind(
    keypair: Keypair,
    behaviour: Behaviour,
    listen: Vec<Multiaddr>,
    psk: Option<PreSharedKey>,
) -> Result<Swarm<Behaviour>> {
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(10));
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let mut swarm = match psk {
        None => {
            let tcp = builder
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .map_err(|e| Error::unavailable(format!("tcp transport: {e}")))?;
            #[cfg(feature = "quic")]
            let transports = tcp.with_quic();
            #[cfg(not(feature = "quic"))]
            let transports = tcp;
            transports
                .with_relay_client(noise::Config::new, yamux::Config::default)
                .map_err(|e| Error::unavailable(format!("relay transport: {e}")))?
                .with_behaviour(|_, relay_client| {
                    let mut behaviour = behaviour;
                    behaviour.use_relay_client(relay_client);
                    behaviour
                })
                .map_err(|e| Error::unavailable(format!("behaviour: {e}")))?
                .with_swarm_config(idle)
                .build()
        }
        Some(psk) => builder
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
                let transport = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(Duration::from_secs(20));
                Ok(transport)
            })
            .map_err(|e| Error::unavailable(format!("pnet transport: {e}")))?
            .with_behaviour(|_| behaviour)
            .map_err(|e| Error::unavailable(format!("behaviour: {e}")))?
            .with_swarm_config(idle)
            .build(),
    };
    let mut listeners = Vec::new();
    for addr in &listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| Error::unavailable(format!("cannot listen on {addr}: {e}")))?;
        listeners.push(id);
    }
    let mut bound: HashSet<_> = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bound.len() < listeners.len() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| Error::unavailable("listeners not bound within 10 s"))?;
        match event {
            // The behaviour records the address too (for `listen_addrs`).
            SwarmEvent::NewListenAddr { listener_id, .. } => {
                bound.insert(listener_id);
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                return Err(Error::unavailable(format!(
                    "listener on {addresses:?} closed: {reason:?}"
                )));
            }
            SwarmEvent::ListenerError { error, .. } => {
                return Err(Error::unavailable(format!("listener error: {error}")));
            }
            other => tracing::trace!(?other, "event while binding"),
        }
    }
    // A listener on `0.0.0.0` or `::` reports one address per interface, one event each: take
    // the ones that follow at once, so that `listen_addrs` lists every interface when `build`
    // returns.
    let settle = tokio::time::Instant::now() + ADDRESSES_SETTLE_MAX;
    while let Ok(Some(event)) = tokio::time::timeout(
        ADDRESSES_SETTLE_GAP.min(settle.saturating_duration_since(tokio::time::Instant::now())),
        swarm.next(),
    )
    .await
    {
        tracing::trace!(?event, "event while binding");
    }
    Ok(swarm)
}
