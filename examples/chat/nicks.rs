//! When two nicks are the same nick: a nick is shown as typed, but held under its key, so
//! that no one can take a nick that reads like one taken.
//!
//! The key is the nick in NFKC, lowercased, then its confusable skeleton (Unicode Technical
//! Standard #39, `unicode_security::confusable_detection::skeleton`): `Alice`, `ALICE`,
//! `ａｌｉｃｅ` (fullwidth) and `аlice` (with a Cyrillic `а`) all have the key of `alice`, and
//! so do `rnike` and `mike`, which read alike in many fonts.

use unicode_normalization::UnicodeNormalization;
use unicode_security::confusable_detection::skeleton;

/// The key of `nick`: equal for two nicks that a reader could take for one another.
pub fn key(nick: &str) -> String {
    // Lowercasing can leave a string that NFKC would change again: normalise after it too.
    let folded: String = nick.nfkc().collect::<String>().to_lowercase();
    let folded: String = folded.nfkc().collect();
    skeleton(&folded).collect()
}
