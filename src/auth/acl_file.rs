//! Mosquitto's acl_file syntax (`man mosquitto.conf`, `acl_file`), so existing files load as
//! they are:
//!
//! ```text
//! # comment
//! topic read $SYS/#                 # before any `user` line: clients without a user name
//! user alice
//! topic readwrite sensors/alice/#   # alice's rules until the next `user` line
//! topic deny sensors/alice/secret
//! topic sensors/shared              # no keyword: readwrite
//! pattern write devices/%c/state    # every client; %c = client id, %u = user name
//! ```
//!
//! Unlike Mosquitto, which reports only that the file is bad, every error names the line.
//! Leading blanks and tabs are tolerated; anything else Mosquitto refuses is refused here too.

use std::path::Path;

use super::AuthError;
use super::acl::{AclRules, Grant, Rule};

/// Deeper rules are refused: no real topic tree is this deep, and a bound keeps every walk of
/// the compiled trie (and dropping it) cheap.
pub const MAX_RULE_LEVELS: usize = 1_000;

pub fn load(path: &Path) -> Result<AclRules, AuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuthError::file("auth.acl_file", path, e.to_string()))?;
    parse(&text).map_err(|why| AuthError::file("auth.acl_file", path, why))
}

/// Parses a file's text; the error names the line.
pub fn parse(text: &str) -> Result<AclRules, String> {
    let mut rules = AclRules::default();
    let mut user: Option<String> = None;
    for (number, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}", number + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, rest) = split_word(line);
        match keyword {
            "topic" | "pattern" => {
                let rule = parse_rule(rest).map_err(at)?;
                match (keyword, &user) {
                    ("pattern", _) => rules.patterns.push(rule),
                    (_, None) => rules.anonymous.push(rule),
                    (_, Some(user)) => rules.users.entry(user.clone()).or_default().push(rule),
                }
            }
            "user" => {
                if rest.is_empty() {
                    return Err(at("missing user name".to_string()));
                }
                // Registered even without rules: a user with an empty section gets nothing
                // from its own rules, exactly as with rules that match nothing.
                rules.users.entry(rest.to_string()).or_default();
                user = Some(rest.to_string());
            }
            other => {
                return Err(at(format!(
                    "unknown keyword {other:?} (expected topic, pattern or user)"
                )));
            }
        }
    }
    Ok(rules)
}

/// The first word and the rest, trimmed.
fn split_word(text: &str) -> (&str, &str) {
    match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (text, ""),
    }
}

/// `[read|write|readwrite|deny] FILTER`; the filter may hold blanks when the keyword is given.
fn parse_rule(rest: &str) -> Result<Rule, String> {
    if rest.is_empty() {
        return Err("missing topic".to_string());
    }
    let (first, filter) = split_word(rest);
    let (grant, filter) = if filter.is_empty() {
        (Grant::ReadWrite, first)
    } else {
        let grant = match first {
            "read" => Grant::Read,
            "write" => Grant::Write,
            "readwrite" => Grant::ReadWrite,
            "deny" => Grant::Deny,
            other => {
                return Err(format!(
                    "invalid access {other:?} (expected read, write, readwrite or deny)"
                ));
            }
        };
        (grant, filter)
    };
    check_filter(filter)?;
    Ok(Rule {
        grant,
        filter: filter.to_string(),
    })
}

/// A rule's topic must be a valid subscription filter (Mosquitto checks the same).
pub fn check_filter(filter: &str) -> Result<(), String> {
    match crate::router::parse_filter(filter) {
        Ok(parsed) if parsed.share_group.is_some() => Err(format!(
            "{filter:?}: a rule names topics, not a shared subscription"
        )),
        Ok(_) if filter.split('/').count() > MAX_RULE_LEVELS => {
            Err(format!("the topic has more than {MAX_RULE_LEVELS} levels"))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("invalid topic {filter:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(grant: Grant, filter: &str) -> Rule {
        Rule {
            grant,
            filter: filter.to_string(),
        }
    }

    #[test]
    fn sections_keywords_and_comments() {
        let rules = parse(
            "# anonymous\n\
             topic read $SYS/#\n\
             topic public/#\n\
             \n\
             user alice\n\
             topic readwrite alice/#\n\
             \ttopic deny alice/secret\n\
             pattern write devices/%c/state\n\
             user bob smith\n\
             topic write a topic with spaces\n\
             user alice\n\
             topic read more/alice\n\
             user empty\n",
        )
        .unwrap();
        assert_eq!(
            rules.anonymous,
            vec![
                rule(Grant::Read, "$SYS/#"),
                rule(Grant::ReadWrite, "public/#")
            ]
        );
        assert_eq!(
            rules.users["alice"],
            vec![
                rule(Grant::ReadWrite, "alice/#"),
                rule(Grant::Deny, "alice/secret"),
                rule(Grant::Read, "more/alice"),
            ]
        );
        assert_eq!(
            rules.users["bob smith"],
            vec![rule(Grant::Write, "a topic with spaces")]
        );
        assert!(rules.users["empty"].is_empty());
        assert_eq!(rules.patterns, vec![rule(Grant::Write, "devices/%c/state")]);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, expect) in [
            ("topic\n", "missing topic"),
            ("topic sideways a/b\n", "invalid access \"sideways\""),
            ("topic read a/#/b\n", "invalid topic"),
            ("topic read a+/b\n", "invalid topic"),
            ("topic read $share/g/a\n", "shared subscription"),
            ("user\n", "missing user name"),
            ("users alice\n", "unknown keyword \"users\""),
        ] {
            let e = parse(&format!("# c\n{text}")).unwrap_err();
            assert!(e.starts_with("line 2: "), "{text}: {e}");
            assert!(e.contains(expect), "{text}: {e}");
        }
        let deep = vec!["a"; MAX_RULE_LEVELS + 1].join("/");
        let e = parse(&format!("topic {deep}\n")).unwrap_err();
        assert!(e.contains("levels"), "{e}");
    }

    #[test]
    fn empty_file_has_no_rules() {
        assert_eq!(parse("").unwrap(), AclRules::default());
        assert_eq!(parse("# only comments\n\n").unwrap(), AclRules::default());
    }

    #[test]
    fn load_names_the_key_and_file() {
        let e = load(Path::new("/nonexistent/acl")).unwrap_err().to_string();
        assert!(e.starts_with("auth.acl_file /nonexistent/acl:"), "{e}");
    }
}
