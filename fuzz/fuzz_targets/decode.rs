//! Fuzz target `decode`: arbitrary bytes decoded as every message a peer sends (`Delta`,
//! `SyncState`, `SyncRequest`, `SyncResponse`, `DeliverBatch`, `DeliverAck`). No panic; what
//! decodes re-encodes to itself. See `procgroups::fuzzing::decode`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| procgroups::fuzzing::decode(data));
