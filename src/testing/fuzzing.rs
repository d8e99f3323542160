//! Entry points of the fuzz targets in `fuzz/` (feature `fuzzing`). Not part of the API: no
//! stability, no semver. Each one takes the fuzzer's bytes and panics when a property of the
//! crate breaks; the properties and byte formats are described with the checks, in the
//! crate's `codec::hostile` and `proto::harness` modules.

use crate::testing::harness::{Limits, Mode, Session};

/// One frame read from a stream by the request-response codec: the first byte picks the
/// protocol, the side and the caps, the rest is the stream.
pub fn codec(data: &[u8]) {
    if let Some((selector, stream)) = data.split_first() {
        crate::testing::codec_hostile::read_checked(*selector, stream);
    }
}

/// The bytes decoded as every message a peer sends.
pub fn decode(data: &[u8]) {
    crate::testing::codec_hostile::decode_checked(data);
}

/// Deltas (gossipsub) applied to a scope core that holds state: the first byte picks the
/// limits, the rest is a run of steps.
pub fn delta(data: &[u8]) {
    session(Mode::Deltas, data);
}

/// Sync pages and states mixed with deltas, applied to a scope core that holds state.
pub fn sync(data: &[u8]) {
    session(Mode::Syncs, data);
}

fn session(mode: Mode, data: &[u8]) {
    if let Some((limits, steps)) = data.split_first() {
        let mut session = Session::new(Limits::from_byte(*limits));
        session.run(mode, steps);
    }
}

/// Valid inputs for `target` to start from (`codec`, `decode`, `delta` or `sync`), named:
/// what `fuzz/seeds/<target>/` holds (written by the crate's test `write_fuzz_seeds`).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    crate::testing::seeds::fuzz_seeds(target)
}
