//! The sync protocol, both sides: Discover (versions and peer exchange), paged Sync of one
//! origin's state pulled from the origin itself, and Goodbye.

use std::sync::atomic::Ordering;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};

use crate::net::wire::{MAX_PEERS_EXCHANGED, SyncRequest, SyncResponse};
use crate::proto::messages::{SyncGroup, SyncState, Version};
use crate::proto::{Input, Outcome};

use super::{
    Behaviour, MAX_DISCOVERS_IN_FLIGHT, MAX_SYNC_PAGES, PartialSync, ServedPages, SyncOut,
};
use crate::net::paging::{append_page, paginate};

impl Behaviour {
    pub(super) fn request_sync(
        &mut self,
        peer: PeerId,
        scope: usize,
        page: u32,
        version: Option<Version>,
    ) {
        if !self.is_connected(&peer) {
            // Its deltas reached us through others: reach it directly (the addresses come
            // from what the protocols know of it), and pull again once connected.
            self.dial_known(peer);
            self.feed(scope, Input::SyncFailed { origin: peer }).ok();
            return;
        }
        let request = SyncRequest::Sync {
            scope: self.scopes[scope].scope.id().to_string(),
            page,
            version,
        };
        let id = self.protocols.others.sync.send_request(&peer, request);
        self.sync_out.insert(id, SyncOut::Sync { peer, scope });
    }

    pub(super) fn my_versions(&self, only: Option<usize>) -> Vec<(String, Version)> {
        self.scopes
            .iter()
            .enumerate()
            .filter(|(i, _)| only.is_none_or(|o| o == *i))
            .map(|(_, s)| (s.scope.id().to_string(), s.scope.version()))
            .collect()
    }

    pub(super) fn send_discover(&mut self, peer: PeerId, only: Option<usize>) {
        let scopes = self.my_versions(only);
        if scopes.is_empty() {
            return;
        }
        let id = self
            .protocols
            .others
            .sync
            .send_request(&peer, SyncRequest::Discover { scopes });
        self.sync_out.insert(id, SyncOut::Discover);
        self.discovers_in_flight += 1;
    }

    pub(super) fn pump_discovers(&mut self) {
        while self.discovers_in_flight < MAX_DISCOVERS_IN_FLIGHT {
            let Some(peer) = self.discover_queue.pop_front() else {
                break;
            };
            if self.is_connected(&peer) {
                self.send_discover(peer, None);
            }
        }
    }

    /// The peer told us its versions: remember that it hosts those scopes, pull what differs.
    pub(super) fn on_peer_versions(&mut self, peer: PeerId, versions: Vec<(String, Version)>) {
        for (id, version) in versions {
            let Some(&scope) = self.by_id.get(&id) else {
                continue;
            };
            self.note_sharing(peer, scope);
            self.feed(scope, Input::PeerVersion { peer, version }).ok();
        }
    }

    pub(super) fn on_sync_event(
        &mut self,
        event: request_response::Event<SyncRequest, SyncResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_sync_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_sync_response(peer, request_id, response),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.shared
                    .stats
                    .requests_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, %error, "sync request failed");
                match self.sync_out.remove(&request_id) {
                    Some(SyncOut::Discover) => {
                        self.discovers_in_flight = self.discovers_in_flight.saturating_sub(1);
                        self.pump_discovers();
                    }
                    Some(SyncOut::Sync { peer, scope }) => {
                        self.partial_syncs.remove(&(peer, scope));
                        self.feed(scope, Input::SyncFailed { origin: peer }).ok();
                    }
                    Some(SyncOut::Goodbye) => self.goodbye_answered(),
                    None => {}
                }
            }
            // A malformed request is counted by the codec (request-response reports no
            // failure for it); what is left here is a stream that failed otherwise.
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.shared
                    .stats
                    .inbound_requests_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, %error, "inbound sync request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    pub(super) fn respond(
        &mut self,
        channel: ResponseChannel<SyncResponse>,
        response: SyncResponse,
    ) {
        if self
            .protocols
            .others
            .sync
            .send_response(channel, response)
            .is_err()
        {
            tracing::debug!("sync response not sent: the connection closed");
        }
    }

    pub(super) fn on_sync_request(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        // Answered cheaply rather than served: a flood from one peer costs little and leaves
        // the others' budgets alone. A Goodbye, one per departure, always counts.
        if !matches!(request, SyncRequest::Goodbye { .. })
            && !self.request_budget.admit(peer, Instant::now())
        {
            self.shared
                .stats
                .requests_over_budget
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "a sync request over the peer's budget refused");
            self.respond(
                channel,
                SyncResponse::Refused {
                    reason: "over the request budget".into(),
                },
            );
            return;
        }
        match request {
            SyncRequest::Discover { scopes } => {
                let shared: Vec<usize> = scopes
                    .iter()
                    .filter_map(|(id, _)| self.by_id.get(id).copied())
                    .collect();
                self.on_peer_versions(peer, scopes);
                let mut mine = Vec::new();
                for &i in &shared {
                    mine.extend(self.my_versions(Some(i)));
                }
                let peers = self
                    .peers
                    .iter()
                    .filter(|(id, p)| {
                        **id != peer
                            && p.connections > 0
                            && !p.addrs.is_empty()
                            && shared.iter().any(|s| p.scopes.contains(s))
                    })
                    .take(MAX_PEERS_EXCHANGED)
                    .map(|(id, p)| (*id, p.addrs.clone()))
                    .collect();
                self.respond(
                    channel,
                    SyncResponse::Discover {
                        scopes: mine,
                        peers,
                    },
                );
            }
            SyncRequest::Sync {
                scope,
                page,
                version,
            } => {
                let response = self.serve_sync(peer, &scope, page, version);
                self.respond(channel, response);
            }
            SyncRequest::Goodbye { incarnation } => {
                for i in 0..self.scopes.len() {
                    let leaving = self.feed(i, Input::Goodbye { peer, incarnation });
                    if let Ok(Outcome::Goodbye { purged: true }) = leaving
                        && let Some(p) = self.peers.get_mut(&peer)
                    {
                        p.purged.insert(i);
                    }
                }
                if let Some(p) = self.peers.get_mut(&peer) {
                    // It left on purpose: do not dial it again (it may come back and dial).
                    p.depart();
                }
                self.respond(channel, SyncResponse::Ack);
            }
        }
    }

    pub(super) fn serve_sync(
        &mut self,
        peer: PeerId,
        scope_id: &str,
        page: u32,
        version: Option<Version>,
    ) -> SyncResponse {
        let Some(&scope) = self.by_id.get(scope_id) else {
            return SyncResponse::Refused {
                reason: format!("scope {scope_id:?} is not hosted here"),
            };
        };
        self.note_sharing(peer, scope);
        self.scopes[scope]
            .scope
            .counters()
            .syncs_served
            .fetch_add(1, Ordering::Relaxed);
        if page == 0 {
            let state = self.scopes[scope].scope.sync_state();
            let pages = paginate(state.groups, self.page_bytes);
            let count = pages.len() as u32;
            let mut pages = pages.into_iter();
            let first = pages.next().unwrap_or_default();
            let rest: Vec<Vec<SyncGroup>> = pages.collect();
            if !rest.is_empty() {
                // Keep the later pages: they must come from the same state as the first.
                let mut all = vec![Vec::new()];
                all.extend(rest);
                self.served_pages.insert(
                    (peer, scope),
                    ServedPages {
                        version: state.version,
                        pages: all,
                        at: Instant::now(),
                    },
                );
            }
            return SyncResponse::Page {
                scope: scope_id.to_owned(),
                version: state.version,
                page: 0,
                pages: count,
                groups: first,
            };
        }
        let Some(served) = self.served_pages.get_mut(&(peer, scope)) else {
            return SyncResponse::Refused {
                reason: "pages expired".into(),
            };
        };
        if Some(served.version) != version || page as usize >= served.pages.len() {
            return SyncResponse::Refused {
                reason: "no such page of that version".into(),
            };
        }
        let version = served.version;
        let pages = served.pages.len() as u32;
        let groups = std::mem::take(&mut served.pages[page as usize]);
        if page + 1 == pages {
            self.served_pages.remove(&(peer, scope));
        }
        SyncResponse::Page {
            scope: scope_id.to_owned(),
            version,
            page,
            pages,
            groups,
        }
    }

    /// Counts an answer that does not fit its request (another kind, or a page of another
    /// scope) as malformed input; a refusal is an answer the protocol allows.
    pub(super) fn unfitting_answer(&self, peer: PeerId, answer: &SyncResponse) {
        if !matches!(answer, SyncResponse::Refused { .. }) {
            tracing::debug!(%peer, "an answer that does not fit its request");
            self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn on_sync_response(
        &mut self,
        peer: PeerId,
        id: OutboundRequestId,
        response: SyncResponse,
    ) {
        let Some(out) = self.sync_out.remove(&id) else {
            return;
        };
        match (out, response) {
            (SyncOut::Discover, SyncResponse::Discover { scopes, peers }) => {
                self.discovers_in_flight = self.discovers_in_flight.saturating_sub(1);
                self.on_peer_versions(peer, scopes);
                self.meet(peers);
                self.pump_discovers();
            }
            (
                SyncOut::Sync { scope, .. },
                SyncResponse::Page {
                    scope: scope_id,
                    version,
                    page,
                    pages,
                    groups,
                },
            ) if self.scopes[scope].scope.id().as_ref() == scope_id => {
                self.on_sync_page(peer, scope, version, page, pages, groups);
            }
            (SyncOut::Goodbye, _) => self.goodbye_answered(),
            (SyncOut::Discover, other) => {
                self.discovers_in_flight = self.discovers_in_flight.saturating_sub(1);
                self.unfitting_answer(peer, &other);
                tracing::debug!(%peer, ?other, "Discover refused or answered amiss");
            }
            (SyncOut::Sync { scope, .. }, other) => {
                self.unfitting_answer(peer, &other);
                tracing::debug!(%peer, ?other, "sync refused or answered amiss");
                self.partial_syncs.remove(&(peer, scope));
                self.feed(scope, Input::SyncFailed { origin: peer }).ok();
            }
        }
    }

    pub(super) fn on_sync_page(
        &mut self,
        peer: PeerId,
        scope: usize,
        version: Version,
        page: u32,
        pages: u32,
        groups: Vec<SyncGroup>,
    ) {
        let key = (peer, scope);
        if pages > MAX_SYNC_PAGES {
            // More than any state we would hold: refuse it before buffering any of it.
            tracing::warn!(%peer, pages, "sync of too many pages refused");
            self.shared.stats.malformed.fetch_add(1, Ordering::Relaxed);
            self.partial_syncs.remove(&key);
            self.feed(scope, Input::SyncFailed { origin: peer }).ok();
            return;
        }
        let complete = if page == 0 {
            if pages <= 1 {
                Some(groups)
            } else {
                self.partial_syncs.insert(
                    key,
                    PartialSync {
                        version,
                        pages,
                        groups,
                    },
                );
                None
            }
        } else {
            match self.partial_syncs.get_mut(&key) {
                Some(p) if p.version == version && p.pages == pages => {
                    append_page(&mut p.groups, groups);
                    if page + 1 == pages {
                        self.partial_syncs.remove(&key).map(|p| p.groups)
                    } else {
                        None
                    }
                }
                _ => {
                    self.partial_syncs.remove(&key);
                    self.feed(scope, Input::SyncFailed { origin: peer }).ok();
                    return;
                }
            }
        };
        match complete {
            None => self.request_sync(peer, scope, page + 1, Some(version)),
            Some(groups) => {
                let state = SyncState {
                    origin: peer,
                    version,
                    groups,
                };
                let sync = Input::Sync {
                    sender: peer,
                    state,
                };
                if let Err(rejection) = self.feed(scope, sync) {
                    tracing::warn!(%peer, %rejection, "sync rejected");
                }
            }
        }
    }
}
