//! Client-supplied strings in logs. A client id may be 65,535 bytes, and one written whole on
//! every close line made 32 MB of log for 500 closes: [`LogId`] shows at most
//! [`MAX_SHOWN`] bytes, then the length and a hash of the whole, so lines stay short and two
//! long ids that share a prefix can still be told apart.

use std::fmt;
use std::hash::{Hash, Hasher};

/// Bytes of a client-supplied string shown in a log line.
pub const MAX_SHOWN: usize = 64;

/// Displays a client-supplied string, truncated past [`MAX_SHOWN`] bytes.
pub struct LogId<'a>(pub &'a str);

impl fmt::Display for LogId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s.len() <= MAX_SHOWN {
            return f.write_str(s);
        }
        let mut end = MAX_SHOWN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        // A fixed-key hash: the same id gives the same tag in every line and every run.
        let mut hasher = std::hash::DefaultHasher::new();
        s.hash(&mut hasher);
        write!(
            f,
            "{}…({} bytes, #{:08x})",
            &s[..end],
            s.len(),
            hasher.finish() as u32
        )
    }
}

impl fmt::Debug for LogId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_shown_whole_and_long_ones_cut() {
        assert_eq!(LogId("sensor-1").to_string(), "sensor-1");
        let long = "é".repeat(40_000);
        let shown = LogId(&long).to_string();
        assert!(shown.len() < 120, "{shown}");
        assert!(shown.contains("80000 bytes"), "{shown}");
        let other = format!("{}x", "é".repeat(39_999));
        assert_ne!(shown, LogId(&other).to_string(), "same prefix, other hash");
    }
}
