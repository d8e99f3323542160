//! The health check of a scope: it reports a wedged loop or a persistent
//! partition, and stays healthy on an idle cluster, a lone node included.

use std::fmt;
use std::time::Duration;

use libp2p::PeerId;

/// How a scope is doing on this node, from [`Node::health`](crate::Node::health).
///
/// The check looks at what would make the scope's view wrong or stale, not at traffic: a
/// scope nobody uses, on a node alone or in an idle cluster, is healthy. (A check that fails
/// when no broadcast was seen for a while would flag every quiet node.)
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> procgroups::Result<()> {
/// use procgroups::{HealthStatus, Node, ScopeConfig};
///
/// let node = Node::builder()
///     .mdns(false)
///     .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
///     .scope("app:pg", ScopeConfig::default())
///     .build()
///     .await?;
/// let health = node.scope_health("app:pg")?;
/// assert_eq!(health.status, HealthStatus::Healthy); // alone and idle is fine
/// assert!(health.problems.is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeHealth {
    /// The scope id.
    pub scope: String,
    /// The worst of the problems' statuses; `Healthy` when there is none.
    pub status: HealthStatus,
    /// Every problem found, worst first.
    pub problems: Vec<HealthProblem>,
    /// How the scope's peers are reached.
    pub peers: PeerPaths,
}

/// How the peers of a scope are reached, in a [`ScopeHealth`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerPaths {
    /// Connected directly.
    pub direct: usize,
    /// Connected only through a relay.
    pub relayed: usize,
    /// Lost without a goodbye and not reached again.
    pub unreachable: usize,
}

impl ScopeHealth {
    pub(crate) fn new(scope: String, mut problems: Vec<HealthProblem>, peers: PeerPaths) -> Self {
        problems.sort_by_key(|p| std::cmp::Reverse(p.status()));
        let status = problems
            .first()
            .map_or(HealthStatus::Healthy, HealthProblem::status);
        Self {
            scope,
            status,
            problems,
            peers,
        }
    }

    /// `true` when the status is [`HealthStatus::Healthy`]: what a liveness or readiness
    /// probe that wants a yes or no should use.
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Healthy
    }
}

impl fmt::Display for ScopeHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.scope, self.status)?;
        for (i, problem) in self.problems.iter().enumerate() {
            write!(f, "{}{problem}", if i == 0 { ": " } else { "; " })?;
        }
        Ok(())
    }
}

/// A scope's overall state. Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum HealthStatus {
    /// Nothing is wrong.
    Healthy,
    /// The scope works on this node but its view may be incomplete or late: peers are cut
    /// off, or local changes pile up faster than they are published.
    Degraded,
    /// The node's network side does not run: its view of other nodes is frozen and its own
    /// changes do not leave it.
    Unhealthy,
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        })
    }
}

/// One thing wrong with a scope, with what the check measured.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthProblem {
    /// The network behaviour has not run its housekeeping (every 20 ms while its swarm is
    /// polled) for longer than the scope's `protocol_timeout`: the thread that drives the
    /// swarm is blocked, or an application that embeds the behaviour stopped polling its
    /// swarm. [`HealthStatus::Unhealthy`].
    LoopStalled {
        /// Time since the behaviour last ran.
        silent_for: Duration,
    },
    /// The network behaviour stopped: the node was shut down, or its swarm dropped it.
    /// [`HealthStatus::Unhealthy`].
    Stopped,
    /// Peers that host the scope were lost without a goodbye longer ago than
    /// `node_down_grace` and are still unreachable: a partition, or crashed nodes. Their
    /// members are purged and they are redialed with backoff; a peer that said goodbye, that
    /// the application disconnected, or that has been gone for 10 minutes does not count.
    /// [`HealthStatus::Degraded`].
    Partitioned {
        /// The peers, longest lost first.
        peers: Vec<PeerId>,
        /// How long the first of them has been unreachable.
        for_at_least: Duration,
    },
    /// Local changes waiting for the network reached `action_queue_max_size`: local joins
    /// and leaves are refused until they drain. [`HealthStatus::Degraded`].
    Backlog {
        /// Deltas waiting.
        queued: usize,
        /// `action_queue_max_size`.
        max: usize,
    },
    /// Some peers' slots did not fit the budgets this node gives each peer
    /// (`max_groups`, `max_members_per_group`): their members are missing from this node's
    /// view. The state of such a peer is pulled again whenever it leaves slots, so the view
    /// becomes whole once they fit. [`HealthStatus::Degraded`].
    SlotsRefused {
        /// The peers, the most refused first.
        peers: Vec<RefusedSlots>,
    },
}

/// A peer's slots that this node does not hold, see [`HealthProblem::SlotsRefused`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedSlots {
    /// The peer whose processes the slots are of.
    pub peer: PeerId,
    /// How many slots are missing.
    pub slots: u64,
}

impl HealthProblem {
    /// How bad this problem is.
    pub fn status(&self) -> HealthStatus {
        match self {
            HealthProblem::LoopStalled { .. } | HealthProblem::Stopped => HealthStatus::Unhealthy,
            HealthProblem::Partitioned { .. }
            | HealthProblem::Backlog { .. }
            | HealthProblem::SlotsRefused { .. } => HealthStatus::Degraded,
        }
    }
}

impl fmt::Display for HealthProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthProblem::LoopStalled { silent_for } => {
                write!(f, "the network loop has not run for {silent_for:?}")
            }
            HealthProblem::Stopped => f.write_str("the network behaviour has stopped"),
            HealthProblem::Partitioned {
                peers,
                for_at_least,
            } => write!(
                f,
                "{} peer(s) unreachable for at least {for_at_least:?}",
                peers.len()
            ),
            HealthProblem::Backlog { queued, max } => write!(
                f,
                "{queued} local changes wait for the network (action_queue_max_size {max})"
            ),
            HealthProblem::SlotsRefused { peers } => {
                let slots: u64 = peers.iter().map(|p| p.slots).sum();
                write!(
                    f,
                    "{slots} slot(s) of {} peer(s) refused by max_groups or max_members_per_group",
                    peers.len()
                )?;
                if let Some(first) = peers.first() {
                    write!(f, " ({}: {})", first.peer, first.slots)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_the_worst_problem() {
        let partition = HealthProblem::Partitioned {
            peers: vec![PeerId::random()],
            for_at_least: Duration::from_secs(3),
        };
        let stalled = HealthProblem::LoopStalled {
            silent_for: Duration::from_secs(6),
        };
        let h = ScopeHealth::new(
            "a:b".into(),
            vec![partition.clone(), stalled.clone()],
            PeerPaths::default(),
        );
        assert_eq!(h.status, HealthStatus::Unhealthy);
        assert_eq!(h.problems, vec![stalled, partition]);
        assert!(!h.is_healthy());
        assert!(
            h.to_string()
                .starts_with("a:b: unhealthy: the network loop")
        );
        let fine = ScopeHealth::new("a:b".into(), Vec::new(), PeerPaths::default());
        assert!(fine.is_healthy());
        assert_eq!(fine.to_string(), "a:b: healthy");
    }
}
