//! The fuzz targets' seed corpora: valid inputs of every target, from the codec's and the
//! harness's own encodings.

use crate::testing::codec_hostile;
use crate::testing::harness::{Mode, Seeds, Session};

/// The seeds of fuzz target `target` (`codec`, `decode`, `delta` or `sync`): valid inputs to
/// start from, named. A session's seeds come under both limits (its first byte).
pub(crate) fn fuzz_seeds(target: &str) -> Seeds {
    let (codec, decode) = codec_hostile::seeds();
    let session = |mode| {
        let mut out = Vec::new();
        for (name, steps) in Session::seeds(mode) {
            for (limits, suffix) in [(0u8, "unlimited"), (1, "limited")] {
                let mut input = vec![limits];
                input.extend(&steps);
                out.push((format!("{name}-{suffix}"), input));
            }
        }
        out
    };
    match target {
        "codec" => codec,
        "decode" => decode,
        "delta" => session(Mode::Deltas),
        "sync" => session(Mode::Syncs),
        _ => Vec::new(),
    }
}
