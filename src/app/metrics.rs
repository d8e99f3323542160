//! Prometheus metrics of a node, read at each scrape from the same counters as
//! [`Node::stats`](crate::Node::stats) (nothing is counted twice, nothing costs anything
//! between scrapes).

use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::ScopeHealth;
use crate::app::health::HealthStatus;
use crate::app::stats::{NodeStats, ScopeStats};

/// What the metrics read of a node at each scrape (the node implements it).
pub(crate) trait MetricsSource: Send + Sync {
    /// Every hosted scope's figures.
    fn scope_stats(&self) -> Vec<ScopeStats>;
    /// Every hosted scope's health.
    fn scope_health(&self) -> Vec<ScopeHealth>;
    fn node_stats(&self) -> NodeStats;
}

/// Reads a node's figures at each scrape; holds the node weakly, so that a registry that
/// outlives the node reports nothing for it rather than keeping it alive.
pub(crate) struct NodeCollector {
    pub(crate) node: Weak<dyn MetricsSource>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector")
            .field("node_alive", &(self.node.strong_count() > 0))
            .finish()
    }
}

type Labels<'a> = Vec<(&'static str, &'a str)>;
/// A label value and how to read its sample from a scope's stats.
type Outcome = (&'static str, fn(&ScopeStats) -> u64);

/// Writes one metric family: its descriptor, then one sample per label set.
fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(());
    };
    let kind: MetricType = first.metric_type();
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One metric without labels.
fn single<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: M,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, value.metric_type())?;
    value.encode(metric)
}

fn gauges<'a>(
    scopes: &'a [ScopeStats],
    value: impl Fn(&ScopeStats) -> usize,
) -> impl Iterator<Item = (Labels<'a>, ConstGauge<i64>)> {
    scopes.iter().map(move |s| {
        (
            vec![("scope", s.scope.as_str())],
            ConstGauge::new(i64::try_from(value(s)).unwrap_or(i64::MAX)),
        )
    })
}

/// One counter per scope and outcome.
fn counters<'a>(
    scopes: &'a [ScopeStats],
    label: &'static str,
    outcomes: &'a [Outcome],
) -> impl Iterator<Item = (Labels<'a>, ConstCounter<u64>)> {
    scopes.iter().flat_map(move |s| {
        outcomes.iter().map(move |(outcome, value)| {
            (
                vec![("scope", s.scope.as_str()), (label, *outcome)],
                ConstCounter::new(value(s)),
            )
        })
    })
}

/// One counter per scope.
fn counter<'a>(
    scopes: &'a [ScopeStats],
    value: fn(&ScopeStats) -> u64,
) -> impl Iterator<Item = (Labels<'a>, ConstCounter<u64>)> {
    scopes.iter().map(move |s| {
        (
            vec![("scope", s.scope.as_str())],
            ConstCounter::new(value(s)),
        )
    })
}

/// Node-wide counters, one per outcome.
fn node_counters(
    label: &'static str,
    outcomes: &[(&'static str, u64)],
) -> Vec<(Labels<'static>, ConstCounter<u64>)> {
    outcomes
        .iter()
        .map(|(outcome, value)| (vec![(label, *outcome)], ConstCounter::new(*value)))
        .collect()
}

fn node_gauges(
    label: &'static str,
    values: &[(&'static str, usize)],
) -> Vec<(Labels<'static>, ConstGauge<i64>)> {
    values
        .iter()
        .map(|(value_label, value)| (vec![(label, *value_label)], ConstGauge::new(*value as i64)))
        .collect()
}

fn health_value(status: HealthStatus) -> i64 {
    match status {
        HealthStatus::Healthy => 0,
        HealthStatus::Degraded => 1,
        HealthStatus::Unhealthy => 2,
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(node) = self.node.upgrade() else {
            return Ok(());
        };
        let scopes: Vec<ScopeStats> = node.scope_stats();
        let health: Vec<ScopeHealth> = node.scope_health();
        let node_stats = node.node_stats();
        let e = &mut encoder;

        family(
            e,
            "groups",
            "Non-empty groups in this node's view of the scope.",
            gauges(&scopes, |s| s.groups),
        )?;
        family(
            e,
            "members",
            "Member slots in this node's view of the scope, of every node.",
            gauges(&scopes, |s| s.members),
        )?;
        family(
            e,
            "local_members",
            "Member slots of this node's processes in the scope.",
            gauges(&scopes, |s| s.local_members),
        )?;
        family(
            e,
            "peers",
            "Connected peers that host the scope.",
            gauges(&scopes, |s| s.peers),
        )?;
        family(
            e,
            "peers_relayed",
            "Connected peers that host the scope and are reached only through a relay.",
            gauges(&scopes, |s| s.peers_relayed),
        )?;
        family(
            e,
            "peers_unreachable",
            "Peers of the scope lost without a goodbye and not reconnected.",
            gauges(&scopes, |s| s.peers_unreachable),
        )?;
        family(
            e,
            "breakers",
            "Circuit breakers towards the scope's peers, by state.",
            scopes.iter().flat_map(|s| {
                [
                    ("closed", s.breakers.closed),
                    ("half_open", s.breakers.half_open),
                    ("open", s.breakers.open),
                ]
                .map(|(state, n)| {
                    (
                        vec![("scope", s.scope.as_str()), ("state", state)],
                        ConstGauge::new(n as i64),
                    )
                })
            }),
        )?;
        family(
            e,
            "deltas_queued",
            "Local changes waiting for the network (the action queue).",
            gauges(&scopes, |s| s.deltas_queued),
        )?;
        family(
            e,
            "deltas",
            "Membership deltas: sent (local changes published on gossipsub), streamed (written \
             to a peer's delta stream, one per peer), applied, duplicate, rejected.",
            counters(
                &scopes,
                "outcome",
                &[
                    ("sent", |s| s.deltas_sent),
                    ("streamed", |s| s.deltas_streamed),
                    ("applied", |s| s.deltas_applied),
                    ("duplicate", |s| s.deltas_duplicate),
                    ("rejected", |s| s.deltas_rejected),
                ],
            ),
        )?;
        family(
            e,
            "syncs",
            "Whole-state syncs: applied, rejected, and pages served to peers.",
            counters(
                &scopes,
                "outcome",
                &[
                    ("applied", |s| s.syncs_applied),
                    ("rejected", |s| s.syncs_rejected),
                    ("served", |s| s.syncs_served),
                ],
            ),
        )?;
        family(
            e,
            "purges",
            "Peers whose members were purged (down past node_down_grace, or goodbye).",
            counter(&scopes, |s| s.purges),
        )?;
        family(
            e,
            "broadcasts",
            "Broadcasts that targeted at least one member slot.",
            counter(&scopes, |s| s.broadcasts),
        )?;
        family(
            e,
            "deliveries",
            "Member slots targeted by broadcasts: served in place (local) or sent to other \
             nodes (remote); remote ones ride in frames, see procgroups_frames.",
            counters(
                &scopes,
                "target",
                &[
                    ("local", |s| s.delivered_local),
                    ("remote", |s| s.delivered_remote),
                ],
            ),
        )?;
        family(
            e,
            "drops",
            "What the scope dropped: events to a full subscription, remote member slots \
             over max_groups / max_members_per_group, remote leaves of slots not held, \
             remote metadata updates of members not held, remote metadata over \
             max_meta_bytes, local claims of names lost to an earlier one.",
            counters(
                &scopes,
                "what",
                &[
                    ("event", |s| s.events_dropped),
                    ("remote_slot", |s| s.slots_refused),
                    ("remote_leave", |s| s.leaves_unmatched),
                    ("remote_update", |s| s.updates_unmatched),
                    ("remote_meta", |s| s.meta_refused),
                    ("name_lost", |s| s.names_lost),
                ],
            ),
        )?;
        family(
            e,
            "health",
            "The scope's health check: 0 healthy, 1 degraded, 2 unhealthy.",
            health.iter().map(|h| {
                (
                    vec![("scope", h.scope.as_str())],
                    ConstGauge::new(health_value(h.status)),
                )
            }),
        )?;

        single(
            e,
            "node_peers",
            "Connected peers of the node.",
            ConstGauge::new(node_stats.peers as i64),
        )?;
        family(
            e,
            "node_peers_by_path",
            "Connected peers of the node by path: direct, or only through a relay.",
            node_gauges(
                "path",
                &[
                    ("direct", node_stats.peers - node_stats.peers_relayed),
                    ("relayed", node_stats.peers_relayed),
                ],
            ),
        )?;
        single(
            e,
            "relay_reservations",
            "Reservations this node holds at relays.",
            ConstGauge::new(node_stats.relay_reservations as i64),
        )?;
        family(
            e,
            "hole_punches",
            "Hole punches (DCUtR) of relayed connections: succeeded (now direct) or failed.",
            node_counters(
                "outcome",
                &[
                    ("succeeded", node_stats.holes_punched),
                    ("failed", node_stats.hole_punches_failed),
                ],
            ),
        )?;
        single(
            e,
            "circuits_relayed",
            "Circuits this node relayed between other peers.",
            ConstCounter::new(node_stats.circuits_relayed),
        )?;
        single(
            e,
            "known_peers",
            "Peers the node keeps state of: connected, lost and remembered, or being dialed.",
            ConstGauge::new(node_stats.known_peers as i64),
        )?;
        single(
            e,
            "peers_graylisted",
            "Connected peers whose gossipsub score is below the graylist threshold: what they send is dropped.",
            ConstGauge::new(node_stats.peers_graylisted as i64),
        )?;
        single(
            e,
            "frames_waiting",
            "Frames of messages waiting in the node's outboxes.",
            ConstGauge::new(node_stats.frames_waiting as i64),
        )?;
        family(
            e,
            "frames",
            "Frames of messages between nodes (one per broadcast or send and receiving node): \
             sent (acknowledged), received, lost (given up).",
            node_counters(
                "outcome",
                &[
                    ("sent", node_stats.frames_sent),
                    ("received", node_stats.frames_received),
                    ("lost", node_stats.frames_lost),
                ],
            ),
        )?;
        single(
            e,
            "delta_frames_lost",
            "Delta frames taken by a peer's delta stream and lost when it broke (the peer \
             catches up by a sync).",
            ConstCounter::new(node_stats.delta_frames_lost),
        )?;
        single(
            e,
            "duplicate_batches",
            "Batches of frames received twice (a retry whose first try had arrived), delivered once.",
            ConstCounter::new(node_stats.batches_duplicate),
        )?;
        family(
            e,
            "errors",
            "Failed requests of the sync and deliver protocols, peers' requests over their budget or \
             failed before an answer, inbound streams past the cap of a connection, connections over the limits, RPCs and delta frames of graylisted peers, RPCs of peers below the gossip threshold, malformed input \
             from peers, peers not admitted, and peers \
             named by peer exchange beyond max_known_peers.",
            node_counters(
                "kind",
                &[
                    ("request_failed", node_stats.requests_failed),
                    ("request_over_budget", node_stats.requests_over_budget),
                    ("connection_refused", node_stats.connections_refused),
                    ("inbound_request_failed", node_stats.inbound_requests_failed),
                    ("inbound_stream_reset", node_stats.inbound_streams_reset),
                    ("graylisted", node_stats.graylisted_dropped),
                    ("gossip_ignored", node_stats.gossip_ignored),
                    ("malformed", node_stats.malformed),
                    ("peer_refused", node_stats.peers_refused),
                    ("peer_ignored", node_stats.peers_ignored),
                ],
            ),
        )?;
        family(
            e,
            "call_replies_dropped",
            "Replies to this node's multi_calls dropped: late (the call had ended or given the \
             process up, or was unknown) or rejected (not awaited from that process).",
            node_counters(
                "reason",
                &[
                    ("late", node_stats.call_replies_late),
                    ("rejected", node_stats.call_replies_rejected),
                ],
            ),
        )?;
        single(
            e,
            "messages_dropped",
            "Messages to this node's processes dropped: no listener for the topic, or a full inbox.",
            ConstCounter::new(node_stats.messages_dropped),
        )?;
        Ok(())
    }
}
