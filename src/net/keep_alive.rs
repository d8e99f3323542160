//! Keeps connections open to the peers that share a scope with us.
//!
//! libp2p closes a connection that no handler keeps alive once it has been idle for the
//! swarm's idle timeout (10 s by default), and gossipsub keeps only its mesh peers: in a scope
//! of more than a dozen nodes, a peer outside our mesh would be dropped and then, after the
//! grace period, purged. This behaviour's handler keeps every connection to a peer alive while
//! [`KeepAlive::set`] says that the peer shares a scope.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
    NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// The behaviour: which peers to keep, and their connections.
#[derive(Default)]
pub struct KeepAlive {
    kept: HashSet<PeerId>,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    pending: VecDeque<ToSwarm<Infallible, bool>>,
}

impl KeepAlive {
    /// Keeps (or stops keeping) every connection to `peer` alive, present and future.
    pub fn set(&mut self, peer: PeerId, keep: bool) {
        let changed = if keep {
            self.kept.insert(peer)
        } else {
            self.kept.remove(&peer)
        };
        if !changed {
            return;
        }
        for id in self.connections.get(&peer).into_iter().flatten() {
            self.pending.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(*id),
                event: keep,
            });
        }
    }

    /// Whether connections to `peer` are kept.
    pub fn is_kept(&self, peer: &PeerId) -> bool {
        self.kept.contains(peer)
    }

    fn handler(&mut self, peer: PeerId, id: ConnectionId) -> Handler {
        self.connections.entry(peer).or_default().push(id);
        Handler {
            keep: self.kept.contains(&peer),
        }
    }
}

impl NetworkBehaviour for KeepAlive {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, id))
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer, id))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event
            && let Some(ids) = self.connections.get_mut(&closed.peer_id)
        {
            ids.retain(|id| *id != closed.connection_id);
            if ids.is_empty() {
                self.connections.remove(&closed.peer_id);
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        match self.pending.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

/// The handler: no protocol, only the keep-alive flag.
pub struct Handler {
    keep: bool,
}

impl libp2p::swarm::ConnectionHandler for Handler {
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<DeniedUpgrade> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep
    }

    fn on_behaviour_event(&mut self, keep: bool) {
        self.keep = keep;
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        Poll::Pending
    }

    fn on_connection_event(&mut self, _: ConnectionEvent<DeniedUpgrade, DeniedUpgrade>) {
        // A denied upgrade negotiates nothing: there is no event to act on.
    }
}
