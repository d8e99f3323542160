//! The sans-IO protocol core: one deterministic state machine per scope.
//!
//! [`state::ScopeCore`] takes inputs (local joins, leaves and exits; deltas and syncs from
//! peers; peer-down; clock ticks) and returns outputs (membership changes for subscribers,
//! deltas to publish, sync requests to send). It has no I/O, no clock and no randomness of its
//! own, so the simulator in `sim` and the property tests drive it exactly like the network
//! layer does.

pub(crate) mod groups;
pub(crate) mod input;
pub(crate) mod messages;
pub(crate) mod registry;
pub(crate) mod state;

#[cfg(test)]
mod tests;

pub(crate) use input::{Input, Outcome, Output, Refusal};
pub(crate) use state::{CoreConfig, ScopeCore};
