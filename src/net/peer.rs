//! What the behaviour keeps of one peer: its connections and addresses, the scopes it shares,
//! its standing (how the node came to know it, and whether it may be dialed), its outage and
//! redial schedule, and its outbox.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p::swarm::ConnectionId;

use crate::net::outbox::Outbox;
use crate::net::relay::Reach;

/// First wait before dialing a lost peer again; it doubles after each failed dial.
pub(crate) const REDIAL_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between two dials of a lost peer.
pub(crate) const REDIAL_MAX: Duration = Duration::from_secs(30);
/// Dial attempts to a lost peer before it is left to discovery.
pub(crate) const MAX_REDIALS: u32 = 10;
/// Addresses remembered per peer for dialing it again.
pub(crate) const MAX_ADDRS: usize = 8;

/// How the node came to know a peer, and what that allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Connected once, dialed by the application, or found by bootstrap, mDNS or Kademlia.
    #[default]
    Known,
    /// Known only from a peer-exchange answer: never connected, not dialed by the application
    /// nor found by any other means. Forgotten when a dial to it fails.
    Told,
    /// The application disconnected it: no dial to it, by us or by any protocol, until the
    /// application dials it again or the peer connects to us.
    Disconnected,
    /// It said goodbye: not redialed when its connection closes.
    Departed,
}

/// When a lost peer is dialed next, and how patiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Redial {
    /// The next dial is due then.
    pub at: Instant,
    /// The wait that led to `at`; the next failure doubles it, up to [`REDIAL_MAX`].
    pub backoff: Duration,
    /// Dials that failed in a row.
    pub attempts: u32,
}

/// One peer, connected or not.
#[derive(Default)]
pub(crate) struct Peer {
    /// Open connections.
    pub connections: usize,
    /// Of those, the direct ones.
    pub direct: usize,
    /// Of those, the ones through a relay (closed once a direct one is up).
    pub relayed: Vec<ConnectionId>,
    /// Indices of the scopes the peer hosts.
    pub scopes: HashSet<usize>,
    /// Unreachable since; `None` while connected or before anything was known.
    pub down_since: Option<Instant>,
    /// Scopes in which the peer's members were purged during this outage.
    pub purged: HashSet<usize>,
    /// Where it was reached or said it listens, newest last, at most [`MAX_ADDRS`].
    pub addrs: Vec<Multiaddr>,
    /// The next dial while it is lost; `None` when it is not to be redialed.
    pub redial: Option<Redial>,
    pub standing: Standing,
    /// Frames for its processes, in order.
    pub outbox: Outbox,
}

impl Peer {
    /// A peer known only from a peer-exchange answer.
    pub(crate) fn told() -> Self {
        Peer {
            standing: Standing::Told,
            ..Peer::default()
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connections > 0
    }

    /// How it is reached now.
    pub(crate) fn reach(&self) -> Reach {
        if self.direct > 0 {
            Reach::Direct
        } else if self.connections > 0 {
            Reach::Relayed
        } else {
            Reach::Unreached
        }
    }

    /// Whether anyone (this node or a protocol) may dial it.
    pub(crate) fn may_dial(&self) -> bool {
        self.standing != Standing::Disconnected
    }

    /// Whether losing it is an outage to redial and report (not a goodbye or a disconnect).
    pub(crate) fn is_lost_unexpectedly(&self) -> bool {
        matches!(self.standing, Standing::Known | Standing::Told)
    }

    /// Remembers an address to dial it at, forgetting the oldest past [`MAX_ADDRS`].
    pub(crate) fn remember(&mut self, addr: Multiaddr) {
        if !self.addrs.contains(&addr) {
            if self.addrs.len() >= MAX_ADDRS {
                self.addrs.remove(0);
            }
            self.addrs.push(addr);
        }
    }

    /// Found by bootstrap, mDNS or an established connection: no longer known only by word
    /// of another peer.
    pub(crate) fn found(&mut self) {
        if self.standing == Standing::Told {
            self.standing = Standing::Known;
        }
    }

    /// The application dials it: whatever it said before, it may be dialed again.
    pub(crate) fn dialed_by_application(&mut self) {
        self.standing = Standing::Known;
    }

    /// The application disconnected it.
    pub(crate) fn disconnect(&mut self) {
        self.standing = Standing::Disconnected;
        self.redial = None;
    }

    /// It said goodbye.
    pub(crate) fn depart(&mut self) {
        self.standing = Standing::Departed;
        self.redial = None;
    }

    /// Its first connection is up: the outage (if any) is over.
    pub(crate) fn reconnected(&mut self) {
        self.down_since = None;
        self.purged.clear();
        self.redial = None;
        self.standing = Standing::Known;
    }

    /// Its last connection closed at `now`: redial it soon if it shares a scope and was lost
    /// unexpectedly.
    pub(crate) fn lost(&mut self, now: Instant) {
        self.connections = 0;
        self.direct = 0;
        self.relayed.clear();
        self.down_since = Some(now);
        if !self.scopes.is_empty() && self.is_lost_unexpectedly() {
            self.redial = Some(Redial {
                at: now + REDIAL_FIRST,
                backoff: REDIAL_FIRST,
                attempts: 0,
            });
        }
    }

    /// A dial failed at `now`: wait twice as long before the next, up to [`MAX_REDIALS`]
    /// attempts.
    pub(crate) fn dial_failed(&mut self, now: Instant) {
        let previous = self.redial.unwrap_or(Redial {
            at: now,
            backoff: REDIAL_FIRST / 2,
            attempts: 0,
        });
        self.redial = (previous.attempts < MAX_REDIALS).then(|| {
            let backoff = (previous.backoff * 2).min(REDIAL_MAX);
            Redial {
                at: now + backoff,
                backoff,
                attempts: previous.attempts + 1,
            }
        });
    }

    /// Whether a redial is due at `now`; if so, it is pushed back as if the dial failed, until
    /// the dial reports back.
    pub(crate) fn take_due_redial(&mut self, now: Instant) -> bool {
        let may = !self.is_connected() && self.may_dial();
        match &mut self.redial {
            Some(redial) if may && redial.at <= now => {
                redial.at = now + redial.backoff.max(REDIAL_FIRST) * 4;
                true
            }
            _ => false,
        }
    }

    /// A peer whose members this node holds and that it never reached: its outage starts now,
    /// and so do its redials.
    pub(crate) fn unreached_origin(&mut self, now: Instant) {
        if !self.is_connected() && self.down_since.is_none() {
            self.down_since = Some(now);
            if self.may_dial() && self.redial.is_none() {
                self.redial = Some(Redial {
                    at: now,
                    backoff: REDIAL_FIRST,
                    attempts: 0,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redials_back_off_and_give_up() {
        let now = Instant::now();
        let mut p = Peer::default();
        p.scopes.insert(0);
        p.lost(now);
        assert_eq!(p.redial.map(|r| r.at), Some(now + REDIAL_FIRST));
        let mut waits = Vec::new();
        while p.redial.is_some() {
            p.dial_failed(now);
            if let Some(r) = p.redial {
                waits.push(r.backoff);
            }
        }
        assert_eq!(waits.len(), MAX_REDIALS as usize);
        assert_eq!(waits[0], REDIAL_FIRST * 2);
        assert_eq!(*waits.last().unwrap(), REDIAL_MAX);
    }

    #[test]
    fn a_goodbye_or_a_disconnect_is_not_an_outage() {
        let now = Instant::now();
        for end in [Peer::depart as fn(&mut Peer), Peer::disconnect] {
            let mut p = Peer::default();
            p.scopes.insert(0);
            p.connections = 1;
            end(&mut p);
            p.lost(now);
            assert_eq!(p.redial, None);
            assert!(!p.is_lost_unexpectedly());
        }
        let mut p = Peer::default();
        p.disconnect();
        assert!(!p.may_dial());
        p.dialed_by_application();
        assert!(p.may_dial());
    }

    #[test]
    fn a_told_peer_becomes_known_when_found() {
        let mut p = Peer::told();
        assert_eq!(p.standing, Standing::Told);
        p.found();
        assert_eq!(p.standing, Standing::Known);
        let mut gone = Peer::default();
        gone.disconnect();
        gone.found();
        assert_eq!(
            gone.standing,
            Standing::Disconnected,
            "mDNS does not undo a disconnect"
        );
    }
}
