//! Fuzz target `sync`: sync pages and sync states, mixed with deltas, decoded and applied to a
//! scope core that already holds state. Every property of the crate's `proto::harness` is
//! checked after every input. See `procgroups::fuzzing::sync`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| procgroups::fuzzing::sync(data));
