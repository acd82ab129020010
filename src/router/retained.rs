//! Retained messages, in a trie keyed by topic level.
//!
//! Setting or clearing walks the topic's levels (clearing prunes the nodes it empties);
//! [`RetainedStore::matching`] walks the filter's levels, following one child for a literal
//! level, every child for `+`, and the whole subtree for `#`, so a literal filter costs its depth
//! and a wildcard filter costs the part of the tree it can match.

use std::collections::HashMap;

struct Node<M> {
    children: HashMap<Box<str>, Node<M>>,
    message: Option<M>,
}

impl<M> Default for Node<M> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            message: None,
        }
    }
}

impl<M: Clone> Node<M> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }

    /// Clears the message at the remaining `levels`, pruning emptied nodes; returns whether one
    /// was there.
    fn clear(&mut self, mut levels: std::str::Split<'_, char>) -> bool {
        let Some(level) = levels.next() else {
            return self.message.take().is_some();
        };
        let Some(child) = self.children.get_mut(level) else {
            return false;
        };
        let cleared = child.clear(levels);
        if child.is_empty() {
            self.children.remove(level);
        }
        cleared
    }

    /// Appends the messages below this node matching the remaining filter `levels`. `root` is
    /// true at the root, where wildcards skip `$` topics.
    fn collect(&self, mut levels: std::str::Split<'_, char>, root: bool, out: &mut Vec<M>) {
        match levels.next() {
            None => out.extend(self.message.iter().cloned()),
            Some("#") => {
                // `#` matches the parent level too (`a/#` matches `a`). The root holds no message.
                out.extend(self.message.iter().cloned());
                for (level, child) in &self.children {
                    if !(root && level.starts_with('$')) {
                        child.collect_all(out);
                    }
                }
            }
            Some("+") => {
                for (level, child) in &self.children {
                    if !(root && level.starts_with('$')) {
                        child.collect(levels.clone(), false, out);
                    }
                }
            }
            Some(level) => {
                if let Some(child) = self.children.get(level) {
                    child.collect(levels, false, out);
                }
            }
        }
    }

    fn collect_all(&self, out: &mut Vec<M>) {
        out.extend(self.message.iter().cloned());
        for child in self.children.values() {
            child.collect_all(out);
        }
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        1 + self.children.values().map(Node::count).sum::<usize>()
    }
}

/// Retained messages by topic. `M` is the broker's message type.
pub struct RetainedStore<M> {
    root: Node<M>,
    len: usize,
}

impl<M: Clone> Default for RetainedStore<M> {
    fn default() -> Self {
        RetainedStore {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<M: Clone> RetainedStore<M> {
    /// Sets the retained message of `topic`, or clears it when `message` is `None`.
    pub fn set(&mut self, topic: &str, message: Option<M>) {
        match message {
            Some(message) => {
                let mut node = &mut self.root;
                for level in topic.split('/') {
                    if !node.children.contains_key(level) {
                        node.children.insert(level.into(), Node::default());
                    }
                    node = node.children.get_mut(level).expect("inserted above");
                }
                if node.message.replace(message).is_none() {
                    self.len += 1;
                }
            }
            None => {
                if self.root.clear(topic.split('/')) {
                    self.len -= 1;
                }
            }
        }
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&M> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    /// Appends to `out` every retained message whose topic matches the plain `filter` (not a
    /// `$share/...` one: strip it with [`super::parse_filter`] first). Order is unspecified.
    pub fn matching(&self, filter: &str, out: &mut Vec<M>) {
        self.root.collect(filter.split('/'), true, out);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        self.root.count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::matches;

    fn sorted(store: &RetainedStore<&'static str>, filter: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        store.matching(filter, &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn set_replace_clear() {
        let mut s = RetainedStore::default();
        assert!(s.is_empty());
        s.set("a/b", Some("1"));
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("a/b"), Some(&"1"));
        assert_eq!(s.get("a"), None);
        s.set("a/b", Some("2"));
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("a/b"), Some(&"2"));
        s.set("a", Some("3"));
        assert_eq!(s.len(), 2);
        s.set("a/b", None);
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("a/b"), None);
        assert_eq!(s.get("a"), Some(&"3"));
        s.set("never/set", None);
        assert_eq!(s.len(), 1);
        s.set("a", None);
        assert!(s.is_empty());
        assert_eq!(s.node_count(), 1, "cleared topics leave no nodes behind");
    }

    #[test]
    fn clear_prunes() {
        let mut s = RetainedStore::default();
        for i in 0..1000 {
            s.set(&format!("x/{i}/y/{}", i % 7), Some(i));
        }
        assert_eq!(s.len(), 1000);
        for i in 0..1000 {
            s.set(&format!("x/{i}/y/{}", i % 7), None);
        }
        assert!(s.is_empty());
        assert_eq!(s.node_count(), 1);
    }

    #[test]
    fn matching_with_wildcards_and_dollar() {
        let topics = [
            "sport",
            "sport/tennis",
            "sport/tennis/player1",
            "sport/golf",
            "sport/",
            "/sport",
            "a//b",
            "$SYS/broker",
            "$SYS",
            "a/$x",
        ];
        let mut s = RetainedStore::default();
        for t in topics {
            s.set(t, Some(t));
        }
        let filters = [
            "#",
            "+",
            "+/+",
            "+/#",
            "sport",
            "sport/#",
            "sport/+",
            "sport/tennis/+",
            "+/tennis/#",
            "a/+/b",
            "/+",
            "$SYS/#",
            "$SYS/+",
            "$SYS",
            "a/+",
            "nothing/#",
            "sport/tennis/player1/#",
        ];
        for filter in filters {
            let mut expected: Vec<_> = topics
                .iter()
                .copied()
                .filter(|t| matches(filter, t))
                .collect();
            expected.sort_unstable();
            assert_eq!(sorted(&s, filter), expected, "filter {filter:?}");
        }
        assert_eq!(
            sorted(&s, "sport/#"),
            [
                "sport",
                "sport/",
                "sport/golf",
                "sport/tennis",
                "sport/tennis/player1"
            ]
        );
        assert!(!sorted(&s, "#").contains(&"$SYS"));
        assert_eq!(sorted(&s, "$SYS/#"), ["$SYS", "$SYS/broker"]);
        assert_eq!(
            sorted(&s, "sport/+"),
            ["sport/", "sport/golf", "sport/tennis"]
        );
    }
}
