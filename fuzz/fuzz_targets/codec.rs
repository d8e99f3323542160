//! Fuzz target `codec`: one request-response frame read from arbitrary bytes by the codec of
//! either protocol, either side, under the default caps or tiny ones. No panic; a length over
//! the cap is refused after reading the prefix alone; no read past the frame; what decodes
//! re-encodes to itself. See `procgroups::fuzzing::codec`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| procgroups::fuzzing::codec(data));
