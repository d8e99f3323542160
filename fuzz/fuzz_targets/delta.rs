//! Fuzz target `delta`: gossipsub deltas decoded and applied to a scope core that already
//! holds state (local members, a peer followed by deltas with one of them held, a synced
//! peer), with time passing, peers going down and local joins in between. Every property of
//! the crate's `proto::harness` is checked after every input. See
//! `procgroups::fuzzing::delta`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| procgroups::fuzzing::delta(data));
