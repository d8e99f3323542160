//! [`forward_connection_hooks!`], the four connection hooks of a `NetworkBehaviour` that
//! wraps another, written once for the wrappers of this layer
//! ([`CappedRequestResponse`](crate::net::capped_streams::CappedRequestResponse),
//! [`ScoredGossipsub`](crate::net::scoring::ScoredGossipsub),
//! [`WakeGated`](crate::net::wake_gate::WakeGated)).

/// Inside an `impl NetworkBehaviour`, the four `handle_*_connection` methods, each handing its
/// arguments to the behaviour in the field `$inner`:
/// - `before $method`: `self.$method()` is called first (a wrapper that must know);
/// - `wrap $method`: an established connection's inner handler is returned as
///   `self.$method(handler)` (a wrapper with a handler of its own); without it, as it is.
macro_rules! forward_connection_hooks {
    (to $inner:ident $(, before $before:ident)? $(, wrap $wrap:ident)?) => {
        fn handle_pending_inbound_connection(
            &mut self,
            connection_id: ::libp2p::swarm::ConnectionId,
            local_addr: &::libp2p::Multiaddr,
            remote_addr: &::libp2p::Multiaddr,
        ) -> ::std::result::Result<(), ::libp2p::swarm::ConnectionDenied> {
            $(self.$before();)?
            self.$inner
                .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
        }

        fn handle_established_inbound_connection(
            &mut self,
            connection_id: ::libp2p::swarm::ConnectionId,
            peer: ::libp2p::PeerId,
            local_addr: &::libp2p::Multiaddr,
            remote_addr: &::libp2p::Multiaddr,
        ) -> ::std::result::Result<::libp2p::swarm::THandler<Self>, ::libp2p::swarm::ConnectionDenied>
        {
            $(self.$before();)?
            let handler = self.$inner.handle_established_inbound_connection(
                connection_id,
                peer,
                local_addr,
                remote_addr,
            )?;
            Ok($(self.$wrap)?(handler))
        }

        fn handle_pending_outbound_connection(
            &mut self,
            connection_id: ::libp2p::swarm::ConnectionId,
            maybe_peer: ::std::option::Option<::libp2p::PeerId>,
            addresses: &[::libp2p::Multiaddr],
            effective_role: ::libp2p::core::Endpoint,
        ) -> ::std::result::Result<::std::vec::Vec<::libp2p::Multiaddr>, ::libp2p::swarm::ConnectionDenied>
        {
            $(self.$before();)?
            self.$inner.handle_pending_outbound_connection(
                connection_id,
                maybe_peer,
                addresses,
                effective_role,
            )
        }

        fn handle_established_outbound_connection(
            &mut self,
            connection_id: ::libp2p::swarm::ConnectionId,
            peer: ::libp2p::PeerId,
            addr: &::libp2p::Multiaddr,
            role_override: ::libp2p::core::Endpoint,
            port_use: ::libp2p::core::transport::PortUse,
        ) -> ::std::result::Result<::libp2p::swarm::THandler<Self>, ::libp2p::swarm::ConnectionDenied>
        {
            $(self.$before();)?
            let handler = self.$inner.handle_established_outbound_connection(
                connection_id,
                peer,
                addr,
                role_override,
                port_use,
            )?;
            Ok($(self.$wrap)?(handler))
        }
    };
}

pub(crate) use forward_connection_hooks;
