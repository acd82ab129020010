//! Authorisation in Mosquitto's acl_file model, compiled into tries (see [`super::acl_trie`]).
//!
//! Semantics, as Mosquitto 2.0's `acl_file` (`src/security_default.c`):
//! - A client's own rules are its user's section (`user NAME` lines), or the anonymous section
//!   (the `topic` lines before the first `user` line) for a client without a user name.
//! - They are checked first: a matching `deny` rule refuses (deny rules come before grants),
//!   else a matching rule granting the access allows.
//! - Then the `pattern` rules, with `%c`/`%u` replaced by the client id and user name, the same
//!   way. A client whose user name or client id holds `+` or `#` gets nothing from patterns
//!   (it could otherwise widen a pattern into a wildcard).
//! - Nothing matched: refused. With no acl_file at all, everything is allowed (no [`Acl`]).
//!
//! SUBSCRIBE (Mosquitto's acl_file lets every SUBSCRIBE through and filters each message):
//! brokk refuses a filter that a `deny` rule covers entirely or that no `read` rule reaches,
//! and grants the rest. Where the granted filter may also match topics the client may not read
//! (a deny rule or the end of the read rules falls inside it), the grant says so
//! ([`SubscribeDecision::Granted`] with `check_each`) and each message is checked on delivery.

use std::collections::HashMap;

use super::acl_trie::{Node, Perm, Subject};

/// What a client asks to do with a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Receive a message published on the topic name (a rule's `read`).
    Read,
    /// Publish on the topic name (a rule's `write`).
    Write,
    /// Subscribe with a topic filter (against `read` rules, see the module doc).
    Subscribe,
}

/// A rule's access keyword.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn perm(self) -> Perm {
        match self {
            Grant::Read => Perm::READ,
            Grant::Write => Perm::WRITE,
            Grant::ReadWrite => Perm::READ_WRITE,
            Grant::Deny => Perm::DENY,
        }
    }
}

/// One `topic` or `pattern` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub grant: Grant,
    pub filter: String,
}

/// An acl_file's rules, grouped as Mosquitto groups them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclRules {
    /// `topic` lines before the first `user` line: clients without a user name.
    pub anonymous: Vec<Rule>,
    /// `topic` lines under `user NAME` (several sections of one user add up).
    pub users: HashMap<String, Vec<Rule>>,
    /// `pattern` lines, wherever they stand: every client.
    pub patterns: Vec<Rule>,
}

/// The answer to a SUBSCRIBE filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeDecision {
    /// v5 SUBACK 0x87, 3.1.1 0x80.
    Denied,
    /// Granted; `check_each`: the filter also reaches topics the client may not read, so
    /// every message delivered through it must pass [`Access::Read`] first.
    Granted { check_each: bool },
}

impl SubscribeDecision {
    /// Both must grant; a message is checked when either asks for it.
    pub fn and(self, other: SubscribeDecision) -> SubscribeDecision {
        match (self, other) {
            (
                SubscribeDecision::Granted { check_each: a },
                SubscribeDecision::Granted { check_each: b },
            ) => SubscribeDecision::Granted { check_each: a || b },
            _ => SubscribeDecision::Denied,
        }
    }

    pub fn is_granted(self) -> bool {
        matches!(self, SubscribeDecision::Granted { .. })
    }
}

/// A compiled acl_file.
#[derive(Debug, Default)]
pub struct Acl {
    anonymous: Node,
    users: HashMap<String, Node>,
    patterns: Node,
    rules: usize,
}

impl Acl {
    pub fn compile(rules: &AclRules) -> Acl {
        let mut acl = Acl::default();
        let section = |node: &mut Node, rules: &[Rule], templated: bool| {
            for rule in rules {
                node.insert(&rule.filter, rule.grant.perm(), templated);
            }
        };
        section(&mut acl.anonymous, &rules.anonymous, false);
        for (user, list) in &rules.users {
            section(acl.users.entry(user.clone()).or_default(), list, false);
        }
        section(&mut acl.patterns, &rules.patterns, true);
        acl.rules = rules.anonymous.len()
            + rules.users.values().map(Vec::len).sum::<usize>()
            + rules.patterns.len();
        acl
    }

    /// How many rules were compiled (for the reload log line).
    pub fn rule_count(&self) -> usize {
        self.rules
    }

    /// The rules as they apply to one client. Cheap: one lookup of the user's section.
    pub fn view<'a>(&'a self, user: Option<&'a str>, client_id: &'a str) -> AclView<'a> {
        let own = match user {
            Some(user) => self.users.get(user),
            None => Some(&self.anonymous),
        };
        let dangerous =
            user.is_some_and(|u| u.contains(['+', '#'])) || client_id.contains(['+', '#']);
        AclView {
            own,
            patterns: (!self.patterns.is_empty()).then_some(&self.patterns),
            subject: Subject { user, client_id },
            dangerous,
        }
    }

    /// One check: `topic` is a topic name for Read and Write, a filter for Subscribe.
    pub fn allowed(
        &self,
        user: Option<&str>,
        client_id: &str,
        topic: &str,
        access: Access,
    ) -> bool {
        self.view(user, client_id).allowed(topic, access)
    }
}

/// One client's view of an [`Acl`].
#[derive(Clone, Copy, Debug)]
pub struct AclView<'a> {
    own: Option<&'a Node>,
    patterns: Option<&'a Node>,
    subject: Subject<'a>,
    /// User name or client id holds `+` or `#`: patterns give it nothing.
    dangerous: bool,
}

impl AclView<'_> {
    pub fn allowed(&self, topic: &str, access: Access) -> bool {
        match access {
            Access::Read => self.topic_allowed(topic, Perm::READ),
            Access::Write => self.topic_allowed(topic, Perm::WRITE),
            Access::Subscribe => self.subscribe(topic).is_granted(),
        }
    }

    /// The tiers in order: own rules, then patterns (when there are any for this client).
    fn tiers(&self) -> impl Iterator<Item = (&Node, Option<&Subject<'_>>)> {
        let own = self.own.map(|node| (node, None));
        let patterns = self
            .patterns
            .filter(|_| !self.dangerous)
            .map(|node| (node, Some(&self.subject)));
        own.into_iter().chain(patterns)
    }

    fn topic_allowed(&self, topic: &str, access: Perm) -> bool {
        for (node, subject) in self.tiers() {
            let perm = node.matching(topic, subject);
            if perm.denies() {
                return false;
            }
            if perm.grants(access) {
                return true;
            }
        }
        false
    }

    /// The answer to a SUBSCRIBE filter (a `$share/GROUP/` prefix is looked through).
    pub fn subscribe(&self, filter: &str) -> SubscribeDecision {
        let Ok(parsed) = crate::router::parse_filter(filter) else {
            return SubscribeDecision::Denied;
        };
        let filter = parsed.filter;
        // A deny rule of an earlier tier reaching into the filter: its messages need checking.
        let mut denied_inside = false;
        for (node, subject) in self.tiers() {
            let cover = node.covering(filter, subject);
            if cover.denies() {
                return SubscribeDecision::Denied;
            }
            let reach = node.intersecting(filter, subject);
            if reach.grants(Perm::READ) {
                return SubscribeDecision::Granted {
                    check_each: denied_inside || reach.denies() || !cover.grants(Perm::READ),
                };
            }
            denied_inside |= reach.denies();
        }
        SubscribeDecision::Denied
    }
}

/// Topic filters granted by a token claim: a second, narrower layer on top of the acl_file.
#[derive(Debug, Default)]
pub struct TopicGrants {
    trie: Node,
}

impl TopicGrants {
    /// `publish` filters grant write, `subscribe` filters grant read and subscribe. Filters are
    /// valid (checked by the caller).
    pub fn new(publish: &[String], subscribe: &[String]) -> TopicGrants {
        let mut trie = Node::default();
        for filter in publish {
            trie.insert(filter, Perm::WRITE, false);
        }
        for filter in subscribe {
            trie.insert(filter, Perm::READ, false);
        }
        TopicGrants { trie }
    }

    pub fn allowed(&self, topic: &str, access: Access) -> bool {
        match access {
            Access::Read => self.trie.matching(topic, None).grants(Perm::READ),
            Access::Write => self.trie.matching(topic, None).grants(Perm::WRITE),
            Access::Subscribe => self.subscribe(topic).is_granted(),
        }
    }

    pub fn subscribe(&self, filter: &str) -> SubscribeDecision {
        let Ok(parsed) = crate::router::parse_filter(filter) else {
            return SubscribeDecision::Denied;
        };
        if !self
            .trie
            .intersecting(parsed.filter, None)
            .grants(Perm::READ)
        {
            return SubscribeDecision::Denied;
        }
        SubscribeDecision::Granted {
            check_each: !self.trie.covering(parsed.filter, None).grants(Perm::READ),
        }
    }
}

#[cfg(test)]
mod tests;
