//! MQTT topics and filters as NATS subjects, reversibly.
//!
//! MQTT separates levels with `/` and allows almost anything in a level (`.` and spaces
//! included, and empty levels); NATS separates tokens with `.`, forbids empty tokens and
//! whitespace, and gives `*` and `>` a meaning. Each level becomes one token: letters, digits,
//! `-` and `_` stay, every other byte is written `%XX` (upper-case hex), and an empty level is
//! the lone token `%` (which no escape produces). A filter's `+` and `#` become `*` and `>`.
//! Messages travel under [`MESSAGES`]`.<levels>`.

/// The prefix of every routed message's subject.
pub const MESSAGES: &str = "brokk.m";

fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('%');
        return;
    }
    for byte in level.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

/// The subject a message on `topic` is published under.
pub fn topic_subject(topic: &str) -> String {
    let mut out = String::with_capacity(MESSAGES.len() + topic.len() + 8);
    out.push_str(MESSAGES);
    for level in topic.split('/') {
        out.push('.');
        push_level(&mut out, level);
    }
    out
}

/// The subjects to subscribe to for an MQTT filter (the share group of `$share/g/f` removed:
/// every node receives the message, the local router picks the group member). A filter
/// ending in `/#` also matches its parent level (`a/#` matches `a`), which NATS's `a.>` does
/// not: its parent's subject is subscribed as well.
pub fn filter_subjects(filter: &str) -> Vec<String> {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
        None => filter,
    };
    let mut out = String::from(MESSAGES);
    let mut subjects = Vec::with_capacity(2);
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "#" => {
                if i > 0 {
                    subjects.push(out.clone());
                }
                out.push_str(".>");
            }
            "+" => out.push_str(".*"),
            level => {
                out.push('.');
                push_level(&mut out, level);
            }
        }
    }
    subjects.push(out);
    subjects
}

/// The MQTT topic of a message's subject; `None` for a subject brokk did not make.
pub fn subject_topic(subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(MESSAGES)?.strip_prefix('.')?;
    let mut bytes = Vec::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        if token == "%" {
            continue;
        }
        let mut chars = token.bytes();
        while let Some(b) = chars.next() {
            if b == b'%' {
                let hi = chars.next()?;
                let lo = chars.next()?;
                let hex = [hi, lo];
                let hex = std::str::from_utf8(&hex).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
            } else {
                bytes.push(b);
            }
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        for topic in [
            "a/b/c",
            "a.b/c d",
            "/leading",
            "trailing/",
            "a//b",
            "/",
            "",
            "*/>/%/+#",
            "snø/ünï/日本",
            "$SYS/x",
        ] {
            let subject = topic_subject(topic);
            assert!(
                !subject.contains("..") && !subject.ends_with('.') && !subject.contains(' '),
                "{topic:?} -> {subject:?}"
            );
            assert_eq!(subject_topic(&subject).as_deref(), Some(topic), "{subject}");
        }
        assert_eq!(topic_subject("a.b/c"), "brokk.m.a%2Eb.c");
        assert_eq!(topic_subject("a//b"), "brokk.m.a.%.b");
    }

    #[test]
    fn filters_map_wildcards() {
        assert_eq!(filter_subjects("a/+/c"), ["brokk.m.a.*.c"]);
        assert_eq!(filter_subjects("#"), ["brokk.m.>"]);
        assert_eq!(filter_subjects("a/#"), ["brokk.m.a", "brokk.m.a.>"]);
        assert_eq!(filter_subjects("$share/g/x/+"), ["brokk.m.x.*"]);
        assert_eq!(filter_subjects("a.b"), ["brokk.m.a%2Eb"]);
    }

    #[test]
    fn foreign_subjects_are_refused() {
        assert_eq!(subject_topic("other.a"), None);
        assert_eq!(subject_topic("brokk.m.%4"), None);
        assert_eq!(subject_topic("brokk.m.%FF"), None);
    }
}
