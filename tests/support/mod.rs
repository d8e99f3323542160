//! What the test suites share; each suite uses part of it (`mod support;`).
//!
//! - [`wait`]: [`eventually`], the one way a test waits (a condition, a deadline), and
//!   [`holds_for`];
//! - [`nodes`]: nodes over loopback with mDNS off, connected, cut, with processes, or the
//!   behaviour embedded in a swarm of the test's own;
//! - [`view`]: a scope's membership as a value, and [`converge`];
//! - [`child`]: nodes in child OS processes (this test binary re-executed);
//! - [`netns`]: the network namespaces of the mDNS tests (`netns.rs`, `chat.rs`, `soak.rs`),
//!   and [`netns::as_root`];
//! - [`topology`]: networks of several LANs, routers, NATs and blocked paths (`wan.rs`,
//!   `wan_figures.rs`);
//! - [`chat`]: the chat example's users as OS processes (`chat.rs`, `wan.rs`);
//! - [`tmux`]: a program in a terminal of its own, typed at and read as a person would
//!   (`chat.rs`).
//!
//! `support/hostile.rs`, the hostile peer, is `tests/hostile.rs`'s alone.

// Each test binary uses part of this module.
#![allow(dead_code, unused_imports)]

pub mod chat;
pub mod child;
pub mod netns;
pub mod nodes;
pub mod tmux;
pub mod topology;
pub mod view;
pub mod wait;

pub use nodes::{
    RETRIES, app_swarm, builder, connect, cut, drive_pausable, embedded_pausable, grace, loopback,
    node, quick_give_up, spawn,
};
pub use view::{View, converge, converge_each, diff, replay, truth, view};
pub use wait::{WAIT, block_on, eventually, holds_for, next_event, next_message};
