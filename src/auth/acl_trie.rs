//! A trie of ACL rules keyed by topic-filter level, and the three walks over it: which rules
//! match a topic name, which intersect a subscription filter (some topic matches both), and
//! which cover it (every topic the filter matches, the rule matches too).
//!
//! Walks are iterative with an explicit stack: a topic of thousands of levels must not
//! overflow a worker's stack. A walk visits each trie node at most once per level position, so
//! its cost grows with the topic's depth and the branching that wildcards allow, never with the
//! number of rules.
//!
//! Pattern rules keep levels holding `%c` or `%u` as templates, expanded per client at check
//! time (an expansion may span several levels, as Mosquitto's textual substitution does).
//!
//! `$` topics: a wildcard in the first level never matches a first level starting with `$`
//! (MQTT-4.7.2-1), for rules as for subscriptions, as Mosquitto's ACL check does.

use std::collections::HashMap;

/// Access bits carried by rules. `DENY` marks a `deny` rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perm(u8);

impl Perm {
    pub const NONE: Perm = Perm(0);
    pub const READ: Perm = Perm(1);
    pub const WRITE: Perm = Perm(2);
    pub const READ_WRITE: Perm = Perm(3);
    pub const DENY: Perm = Perm(4);

    pub fn union(self, other: Perm) -> Perm {
        Perm(self.0 | other.0)
    }

    /// Some rule in the set grants every bit of `access`.
    pub fn grants(self, access: Perm) -> bool {
        access.0 != 0 && self.0 & access.0 == access.0
    }

    pub fn denies(self) -> bool {
        self.0 & Perm::DENY.0 != 0
    }
}

impl std::ops::BitOrAssign for Perm {
    fn bitor_assign(&mut self, other: Perm) {
        *self = self.union(other);
    }
}

/// Who a pattern is expanded for.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub user: Option<&'a str>,
    pub client_id: &'a str,
}

/// A pattern level holding `%c` and/or `%u`.
#[derive(Debug)]
struct Template(Box<str>);

impl Template {
    fn is_template(level: &str) -> bool {
        level.contains("%c") || level.contains("%u")
    }

    /// The level with `%c` and `%u` replaced; `None` when it needs a user name the client does
    /// not have (Mosquitto skips such a pattern).
    fn expand(&self, subject: &Subject<'_>) -> Option<String> {
        let mut out = String::with_capacity(self.0.len() + subject.client_id.len());
        let mut rest = &*self.0;
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("%c") {
                out.push_str(subject.client_id);
                rest = after;
            } else if let Some(after) = tail.strip_prefix("%u") {
                out.push_str(subject.user?);
                rest = after;
            } else {
                out.push('%');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        Some(out)
    }
}

#[derive(Debug, Default)]
pub struct Node {
    /// Rules whose filter ends exactly here.
    here: Perm,
    /// Rules whose filter is this node's path followed by `#`.
    multi: Perm,
    /// Every rule at or below this node (`here`, `multi` and all descendants): what a `#`
    /// filter reaching this node intersects.
    below: Perm,
    literal: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    templates: Vec<(Template, Node)>,
}

/// A walk's position: a node and how many filter/topic levels are consumed.
type Step<'t> = (&'t Node, usize);

impl Node {
    /// Adds one rule. `templated`: levels holding `%c`/`%u` are templates (pattern rules).
    /// The filter is valid (checked by the parser): `#` only as the last level.
    pub fn insert(&mut self, filter: &str, perm: Perm, templated: bool) {
        let mut node = self;
        for level in filter.split('/') {
            node.below |= perm;
            if level == "#" {
                node.multi |= perm;
                return;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else if templated && Template::is_template(level) {
                let at = match node.templates.iter().position(|(t, _)| &*t.0 == level) {
                    Some(at) => at,
                    None => {
                        node.templates
                            .push((Template(level.into()), Node::default()));
                        node.templates.len() - 1
                    }
                };
                &mut node.templates[at].1
            } else {
                node.literal.entry(level.into()).or_default()
            };
        }
        node.below |= perm;
        node.here |= perm;
    }

    pub fn is_empty(&self) -> bool {
        self.below == Perm::NONE
    }

    /// Every rule matching the topic name `topic`.
    pub fn matching(&self, topic: &str, subject: Option<&Subject<'_>>) -> Perm {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        let mut acc = Perm::NONE;
        let mut stack: Vec<Step<'_>> = vec![(self, 0)];
        while let Some((node, i)) = stack.pop() {
            let wild = !(i == 0 && dollar);
            if wild {
                // `#` matches the remaining levels, and also none (`a/#` matches `a`).
                acc |= node.multi;
            }
            let Some(level) = levels.get(i) else {
                acc |= node.here;
                continue;
            };
            if let Some(child) = node.literal.get(*level) {
                stack.push((child, i + 1));
            }
            if wild && let Some(plus) = &node.plus {
                stack.push((plus, i + 1));
            }
            for (template, child) in &node.templates {
                if let Some(next) = expand_literally(template, subject, &levels, i) {
                    stack.push((child, next));
                }
            }
        }
        acc
    }

    /// Every rule that some topic matched by `filter` also matches.
    pub fn intersecting(&self, filter: &str, subject: Option<&Subject<'_>>) -> Perm {
        let levels: Vec<&str> = filter.split('/').collect();
        let dollar = filter.starts_with('$');
        let mut acc = Perm::NONE;
        let mut stack: Vec<Step<'_>> = vec![(self, 0)];
        while let Some((node, i)) = stack.pop() {
            let wild = !(i == 0 && dollar);
            let Some(&level) = levels.get(i) else {
                acc |= node.here;
                if wild {
                    acc |= node.multi;
                }
                continue;
            };
            if level == "#" {
                acc |= if i == 0 {
                    node.below_without_dollar()
                } else {
                    node.below
                };
                continue;
            }
            if wild {
                acc |= node.multi;
            }
            if level == "+" {
                for (name, child) in &node.literal {
                    if !(i == 0 && name.starts_with('$')) {
                        stack.push((child, i + 1));
                    }
                }
            } else if let Some(child) = node.literal.get(level) {
                stack.push((child, i + 1));
            }
            if wild && let Some(plus) = &node.plus {
                stack.push((plus, i + 1));
            }
            for (template, child) in &node.templates {
                match expand_against_filter(template, subject, &levels, i) {
                    Expansion::Continue(next) => stack.push((child, next)),
                    Expansion::AllBelow => acc |= child.below,
                    Expansion::Fails => {}
                }
            }
        }
        acc
    }

    /// Every rule that matches each topic `filter` matches.
    pub fn covering(&self, filter: &str, subject: Option<&Subject<'_>>) -> Perm {
        let levels: Vec<&str> = filter.split('/').collect();
        let dollar = filter.starts_with('$');
        let mut acc = Perm::NONE;
        let mut stack: Vec<Step<'_>> = vec![(self, 0)];
        while let Some((node, i)) = stack.pop() {
            let wild = !(i == 0 && dollar);
            if wild {
                // A rule ending in `#` here covers whatever the filter has left, `#` included.
                acc |= node.multi;
            }
            let Some(&level) = levels.get(i) else {
                acc |= node.here;
                continue;
            };
            match level {
                // Only a rule `#` at this level covers a filter `#` (handled above).
                "#" => {}
                "+" => {
                    if let Some(plus) = &node.plus {
                        stack.push((plus, i + 1));
                    }
                }
                literal => {
                    if let Some(child) = node.literal.get(literal) {
                        stack.push((child, i + 1));
                    }
                    if wild && let Some(plus) = &node.plus {
                        stack.push((plus, i + 1));
                    }
                    for (template, child) in &node.templates {
                        if let Some(next) = expand_literally(template, subject, &levels, i) {
                            stack.push((child, next));
                        }
                    }
                }
            }
        }
        acc
    }

    /// `below` for a `#` filter at the first level: rules whose first level is a `$` literal
    /// are out of its reach.
    fn below_without_dollar(&self) -> Perm {
        let mut acc = self.here;
        acc |= self.multi;
        if let Some(plus) = &self.plus {
            acc |= plus.below;
        }
        for (name, child) in &self.literal {
            if !name.starts_with('$') {
                acc |= child.below;
            }
        }
        for (template, child) in &self.templates {
            if !template.0.starts_with('$') {
                acc |= child.below;
            }
        }
        acc
    }
}

/// Expands `template` and checks it equals `levels[i..]` level by level; the index after it.
fn expand_literally(
    template: &Template,
    subject: Option<&Subject<'_>>,
    levels: &[&str],
    i: usize,
) -> Option<usize> {
    let expanded = template.expand(subject?)?;
    let mut next = i;
    for part in expanded.split('/') {
        if levels.get(next) != Some(&part) {
            return None;
        }
        next += 1;
    }
    Some(next)
}

enum Expansion {
    /// The expansion fits the filter's levels up to this index.
    Continue(usize),
    /// The filter reaches a `#` inside the expansion: everything under the template intersects.
    AllBelow,
    Fails,
}

/// Like [`expand_literally`], but against a filter whose levels may be wildcards.
fn expand_against_filter(
    template: &Template,
    subject: Option<&Subject<'_>>,
    levels: &[&str],
    i: usize,
) -> Expansion {
    let Some(expanded) = subject.and_then(|s| template.expand(s)) else {
        return Expansion::Fails;
    };
    let mut next = i;
    for part in expanded.split('/') {
        match levels.get(next) {
            Some(&"#") => {
                if next == 0 && part.starts_with('$') {
                    return Expansion::Fails;
                }
                return Expansion::AllBelow;
            }
            Some(&"+") if !(next == 0 && part.starts_with('$')) => {}
            Some(&level) if level == part => {}
            _ => return Expansion::Fails,
        }
        next += 1;
    }
    Expansion::Continue(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trie(rules: &[(&str, Perm)]) -> Node {
        let mut node = Node::default();
        for (filter, perm) in rules {
            node.insert(filter, *perm, true);
        }
        node
    }

    const R: Perm = Perm::READ;

    #[test]
    fn matching_follows_mqtt_rules() {
        let t = trie(&[("a/b", R), ("a/+/c", R), ("x/#", R), ("#", Perm::WRITE)]);
        assert!(t.matching("a/b", None).grants(R));
        assert!(t.matching("a/b/c", None).grants(R), "a/+/c");
        assert!(t.matching("a/z/c", None).grants(R));
        assert!(!t.matching("a/z", None).grants(R));
        assert!(t.matching("x", None).grants(R), "x/# matches x");
        assert!(t.matching("x/y/z", None).grants(R));
        assert!(t.matching("anything", None).grants(Perm::WRITE));
        assert!(
            !t.matching("$SYS/x", None).grants(Perm::WRITE),
            "# does not reach $SYS"
        );
        assert!(
            t.matching("a//c", None).grants(R),
            "+ matches an empty level"
        );
    }

    #[test]
    fn dollar_rules_match_dollar_topics() {
        let t = trie(&[("$SYS/#", R), ("+/broker", Perm::WRITE)]);
        assert!(t.matching("$SYS/broker", None).grants(R));
        assert!(!t.matching("$SYS/broker", None).grants(Perm::WRITE));
        assert!(t.matching("x/broker", None).grants(Perm::WRITE));
    }

    #[test]
    fn intersecting_table() {
        let t = trie(&[("sensors/+/temp", R)]);
        for (filter, hit) in [
            ("sensors/+/temp", true),
            ("sensors/#", true),
            ("#", true),
            ("+/+/+", true),
            ("sensors/a/temp", true),
            ("sensors/a/humidity", false),
            ("sensors/+", false),
            ("sensors", false),
            ("+/+/+/+", false),
            ("$SYS/#", false),
        ] {
            assert_eq!(t.intersecting(filter, None).grants(R), hit, "{filter}");
        }
        let dollar = trie(&[("$SYS/#", R)]);
        assert!(!dollar.intersecting("#", None).grants(R));
        assert!(!dollar.intersecting("+/x", None).grants(R));
        assert!(dollar.intersecting("$SYS/+", None).grants(R));
        let parent = trie(&[("a", R)]);
        assert!(parent.intersecting("a/#", None).grants(R), "a/# matches a");
    }

    #[test]
    fn covering_table() {
        let t = trie(&[("a/#", R), ("b/+", R), ("c/d", R), ("#", Perm::WRITE)]);
        for (filter, hit) in [
            ("a/#", true),
            ("a", true),
            ("a/+/+", true),
            ("b/+", true),
            ("b/x", true),
            ("b/#", false),
            ("b/x/y", false),
            ("c/d", true),
            ("c/+", false),
            ("c/#", false),
            ("+/d", false),
            ("#", false),
        ] {
            assert_eq!(t.covering(filter, None).grants(R), hit, "{filter}");
        }
        assert!(t.covering("#", None).grants(Perm::WRITE));
        assert!(!t.covering("$SYS/x", None).grants(Perm::WRITE));
    }

    #[test]
    fn templates_expand_per_subject() {
        let t = trie(&[
            ("devices/%c/#", R),
            ("users/%u/in", R),
            ("pre-%c-post/x", R),
        ]);
        let alice = Subject {
            user: Some("alice"),
            client_id: "dev1",
        };
        let anonymous = Subject {
            user: None,
            client_id: "dev1",
        };
        assert!(t.matching("devices/dev1/t", Some(&alice)).grants(R));
        assert!(!t.matching("devices/dev2/t", Some(&alice)).grants(R));
        assert!(t.matching("users/alice/in", Some(&alice)).grants(R));
        assert!(!t.matching("users/alice/in", Some(&anonymous)).grants(R));
        assert!(t.matching("pre-dev1-post/x", Some(&alice)).grants(R));
        assert!(!t.matching("devices/dev1/t", None).grants(R), "no subject");
        // An id holding `/` spans levels, as Mosquitto's textual substitution does.
        let slashed = Subject {
            user: None,
            client_id: "a/b",
        };
        assert!(t.matching("devices/a/b/t", Some(&slashed)).grants(R));
        assert!(t.intersecting("devices/+/b/#", Some(&slashed)).grants(R));
        assert!(t.intersecting("devices/#", Some(&alice)).grants(R));
        assert!(t.intersecting("devices/+", Some(&alice)).grants(R));
        assert!(!t.intersecting("devices/dev2/#", Some(&alice)).grants(R));
        assert!(t.covering("devices/dev1/+", Some(&alice)).grants(R));
        assert!(!t.covering("devices/+/x", Some(&alice)).grants(R));
    }

    #[test]
    fn deep_topics_do_not_overflow() {
        let rule = vec!["a"; 1_000].join("/");
        let t = trie(&[(&rule, R), ("+/#", Perm::WRITE)]);
        assert!(t.matching(&rule, None).grants(R));
        let deep = vec!["a"; 100_000].join("/");
        assert!(!t.matching(&deep, None).grants(R));
        assert!(t.matching(&deep, None).grants(Perm::WRITE));
        assert!(t.intersecting(&deep, None).grants(Perm::WRITE));
        assert!(t.covering(&deep, None).grants(Perm::WRITE));
        let plus = vec!["+"; 100_000].join("/");
        assert!(!t.intersecting(&plus, None).grants(R));
    }
}
