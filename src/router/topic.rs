//! Topic name and topic filter syntax (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7 and §4.8.2).

use super::TopicError;

const SHARE_PREFIX: &str = "$share/";

/// Validates a topic name for PUBLISH (non-empty, no `+`/`#`, no U+0000).
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains('\0') {
        return Err(TopicError::Nul);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// The number of levels of a topic name or plain filter (`a/b` has 2, `/` has 2).
pub fn levels(topic: &str) -> usize {
    1 + topic.bytes().filter(|&b| b == b'/').count()
}

/// A parsed filter: `$share/{group}/{filter}` splits into its group and the plain filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    pub share_group: Option<&'a str>,
    pub filter: &'a str,
}

/// Validates a (possibly shared) topic filter.
///
/// `$share/{ShareName}/{filter}`: the share name must be non-empty and contain none of `/`, `+`,
/// `#`; the filter part must be present and itself valid. Errors in the share syntax are
/// [`TopicError::Shared`]; errors in the inner filter are reported like a plain filter's.
pub fn parse_filter(filter: &str) -> Result<ParsedFilter<'_>, TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul);
    }
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        validate_plain_filter(filter)?;
        return Ok(ParsedFilter {
            share_group: None,
            filter,
        });
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError::Shared(
            "missing topic filter after the share name",
        ));
    };
    if group.is_empty() {
        return Err(TopicError::Shared("empty share name"));
    }
    if group.contains(['+', '#']) {
        return Err(TopicError::Shared("share name contains a wildcard"));
    }
    if inner.is_empty() {
        return Err(TopicError::Shared(
            "empty topic filter after the share name",
        ));
    }
    validate_plain_filter(inner)?;
    Ok(ParsedFilter {
        share_group: Some(group),
        filter: inner,
    })
}

/// Level rules of a plain (non-empty, NUL-free) filter.
fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelWildcard);
        }
    }
    Ok(())
}

/// Whether `topic` matches the plain `filter` (MQTT rules; `$` topics not matched by a leading
/// wildcard).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            // `#` matches its parent level too (`sport/#` matches `sport`).
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/+", "a/", true), // `+` matches an empty level
            ("+/+", "/a", true),
            ("+", "/a", false),
            ("+/b", "/b", true),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("a//b", "a/b", false),
            ("/a", "/a", true),
            ("/a", "a", false),
            ("sport/#", "sport", true),
            ("sport/#", "sport/", true),
            ("sport/#", "sport/tennis/player1", true),
            ("sport/#", "sports", false),
            ("sport/tennis/#", "sport", false),
            ("sport/+/player1", "sport/tennis/player1", true),
            ("sport/+/player1", "sport/tennis/player2", false),
            ("+/tennis/#", "sport/tennis", true),
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("#", "/a", true),
            ("#", "$SYS", false),
            ("#", "$SYS/broker", false),
            ("+/broker", "$SYS/broker", false),
            ("+", "$SYS", false),
            ("$SYS/#", "$SYS/broker", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/+", "$SYS/broker", true),
            ("$SYS/broker", "$SYS/broker", true),
            ("a/$x", "a/$x", true),
            ("a/+", "a/$x", true), // the `$` rule is only about the first level
            ("a/#", "a/$x/y", true),
            ("A", "a", false),
        ];
        for &(filter, topic, expected) in cases {
            assert_eq!(
                matches(filter, topic),
                expected,
                "filter {filter:?} topic {topic:?}"
            );
        }
    }

    #[test]
    fn filter_validation_good() {
        for f in [
            "a",
            "/",
            "//",
            "a/b",
            "a//b",
            "/a",
            "a/",
            "#",
            "+",
            "+/+",
            "a/#",
            "a/+/b",
            "+/#",
            "$SYS/#",
            "$share",
            "$sharex/a",
            "a/$share/g",
            "é/ü",
        ] {
            assert_eq!(
                parse_filter(f),
                Ok(ParsedFilter {
                    share_group: None,
                    filter: f
                }),
                "{f:?}"
            );
        }
        assert_eq!(
            parse_filter("$share/g/a/+"),
            Ok(ParsedFilter {
                share_group: Some("g"),
                filter: "a/+"
            })
        );
        assert_eq!(
            parse_filter("$share/g/#"),
            Ok(ParsedFilter {
                share_group: Some("g"),
                filter: "#"
            })
        );
        assert_eq!(
            parse_filter("$share/g//"),
            Ok(ParsedFilter {
                share_group: Some("g"),
                filter: "/"
            })
        );
        assert_eq!(
            parse_filter("$share/$g/$SYS/x"),
            Ok(ParsedFilter {
                share_group: Some("$g"),
                filter: "$SYS/x"
            })
        );
    }

    #[test]
    fn filter_validation_bad() {
        use TopicError::*;
        let cases: &[(&str, TopicError)] = &[
            ("", Empty),
            ("a/#/b", MultiLevelWildcard),
            ("#/a", MultiLevelWildcard),
            ("a#", MultiLevelWildcard),
            ("a/#b", MultiLevelWildcard),
            ("a/##", MultiLevelWildcard),
            ("a/b+", SingleLevelWildcard),
            ("+a", SingleLevelWildcard),
            ("a/++/b", SingleLevelWildcard),
            ("a/\0", Nul),
            ("\0", Nul),
            ("$share/g/a\0", Nul),
            ("$share/g/a/#/b", MultiLevelWildcard),
            ("$share/g/a+", SingleLevelWildcard),
        ];
        for (f, err) in cases {
            assert_eq!(parse_filter(f).as_ref(), Err(err), "{f:?}");
        }
        for f in [
            "$share/g",
            "$share/",
            "$share//a",
            "$share/g+/a",
            "$share/+/a",
            "$share/#/a",
            "$share/g/",
            "$share/a#/b",
        ] {
            assert!(
                matches!(parse_filter(f), Err(Shared(_))),
                "{f:?}: {:?}",
                parse_filter(f)
            );
        }
    }

    #[test]
    fn topic_name_validation() {
        for t in ["a", "/", "a//b", "/a", "a/", "$SYS/x", "$share/g/a", "é"] {
            assert_eq!(validate_topic_name(t), Ok(()), "{t:?}");
        }
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a+b"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0"), Err(TopicError::Nul));
    }
}
