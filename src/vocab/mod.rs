//! The shared vocabulary: the types every layer speaks (pids, errors, configuration, policy,
//! member lists, membership events, the fate of a delivery). It imports no other module of
//! the crate.

pub mod config;
pub(crate) mod delivery;
pub(crate) mod error;
pub(crate) mod event;
pub(crate) mod members;
pub(crate) mod meta;
pub(crate) mod names;
pub(crate) mod pid;
pub(crate) mod policy;
