//! A budget of inbound requests per peer: a token bucket that refills at a steady rate up to a
//! burst. A request over the budget is answered at once with a refusal instead of being
//! served, and counted, so that a flood from one peer costs the node little and takes nothing
//! from the other peers' budgets. The defaults are
//! [`DEFAULT_REQUESTS_PER_SECOND`](crate::net::protocols::DEFAULT_REQUESTS_PER_SECOND) and
//! [`DEFAULT_REQUEST_BURST`](crate::net::protocols::DEFAULT_REQUEST_BURST).

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

/// The buckets of the peers that sent requests, while they are connected.
pub(crate) struct RequestBudget {
    per_second: f64,
    burst: f64,
    buckets: HashMap<PeerId, Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RequestBudget {
    /// Refills `per_second` requests a second, up to `burst`. Both at least 1 (the
    /// configuration checks it).
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Whether `peer` may make one more request at `now`; takes it from the budget if so.
    pub(crate) fn admit(&mut self, peer: PeerId, now: Instant) -> bool {
        let burst = self.burst;
        let bucket = self.buckets.entry(peer).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// `peer` has no connection left: its bucket goes (a new connection starts full, which a
    /// reconnecting peer pays for with its handshake).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_each_peer_on_its_own() {
        let mut budget = RequestBudget::new(10, 5);
        let (flooder, other) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| budget.admit(flooder, t0)).count(), 5);
        assert!(budget.admit(other, t0), "another peer has its own budget");
        // A tenth of a second refills one request.
        let t1 = t0 + Duration::from_millis(100);
        assert!(budget.admit(flooder, t1));
        assert!(!budget.admit(flooder, t1));
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| budget.admit(flooder, t2)).count(), 5);
        budget.forget(&flooder);
        assert_eq!((0..8).filter(|_| budget.admit(flooder, t2)).count(), 5);
    }
}
