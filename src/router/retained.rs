//! Retained messages, in a trie keyed by topic level.
//!
//! Setting or clearing walks the topic's levels (clearing prunes the nodes it empties);
//! [`RetainedStore::matching`] walks the filter's levels, following one child for a literal
//! level, every child for `+`, and the whole subtree for `#`, so a literal filter costs its depth
//! and a wildcard filter costs the part of the tree it can match. Every walk is a loop with an
//! explicit stack, and so is dropping a subtree: depth costs time, never the thread's stack.

use super::smallmap::SmallMap;

struct Node<M> {
    children: SmallMap<Box<str>, Node<M>>,
    message: Option<M>,
}

impl<M> Default for Node<M> {
    fn default() -> Self {
        Node {
            children: SmallMap::default(),
            message: None,
        }
    }
}

impl<M> Drop for Node<M> {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node<M>> = self.children.drain_values();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain_values());
        }
    }
}

impl<M: Clone> Node<M> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }

    /// Clears the message at `topic`, pruning the nodes left empty; returns whether one was
    /// there.
    fn clear(&mut self, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut node = &mut *self;
        for level in &levels {
            match node.children.get_mut(level) {
                Some(next) => node = next,
                None => return false,
            }
        }
        if node.message.take().is_none() {
            return false;
        }
        // The highest node of the chain that now holds nothing but the path.
        let mut cut = 0;
        let mut node = &*self;
        for (depth, level) in levels.iter().enumerate() {
            let Some(next) = node.children.get(level) else {
                return true;
            };
            node = next;
            let removable = if depth + 1 == levels.len() {
                node.is_empty()
            } else {
                node.message.is_none() && node.children.len() == 1
            };
            if !removable {
                cut = 0;
            } else if cut == 0 {
                cut = depth + 1;
            }
        }
        if cut > 0 {
            let mut parent = &mut *self;
            for level in &levels[..cut - 1] {
                match parent.children.get_mut(level) {
                    Some(next) => parent = next,
                    None => return true,
                }
            }
            parent.children.remove(levels[cut - 1]);
        }
        true
    }

    /// Calls `visit` with each message matching the plain `filter` until it returns false;
    /// returns whether it was stopped. At the root, wildcards skip `$` topics.
    fn each_matching(&self, filter: &str, visit: &mut impl FnMut(&M) -> bool) -> bool {
        let mut visit_node = |node: &Node<M>| node.message.as_ref().is_none_or(&mut *visit);
        let mut stack: Vec<(&Node<M>, Option<&str>, bool)> = vec![(self, Some(filter), true)];
        while let Some((node, rest, root)) = stack.pop() {
            let Some(rest) = rest else {
                if !visit_node(node) {
                    return true;
                }
                continue;
            };
            let (level, next) = match rest.split_once('/') {
                Some((level, next)) => (level, Some(next)),
                None => (rest, None),
            };
            match level {
                "#" => {
                    // `#` matches the parent level too (`a/#` matches `a`).
                    if !visit_node(node) {
                        return true;
                    }
                    let mut below: Vec<&Node<M>> = node
                        .children
                        .iter()
                        .filter(|(level, _)| !(root && level.starts_with('$')))
                        .map(|(_, child)| child)
                        .collect();
                    while let Some(n) = below.pop() {
                        if !visit_node(n) {
                            return true;
                        }
                        below.extend(n.children.values());
                    }
                }
                "+" => {
                    for (level, child) in node.children.iter() {
                        if !(root && level.starts_with('$')) {
                            stack.push((child, next, false));
                        }
                    }
                }
                _ => {
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, next, false));
                    }
                }
            }
        }
        false
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![self];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.children.values());
        }
        count
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
                    node = node
                        .children
                        .get_or_insert_with(level, || level.into(), Node::default);
                }
                if node.message.replace(message).is_none() {
                    self.len += 1;
                }
            }
            None => {
                if self.root.clear(topic) {
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
        self.root.each_matching(filter, &mut |m| {
            out.push(m.clone());
            true
        });
    }

    /// [`RetainedStore::matching`], stopping after `limit` messages; returns whether it
    /// stopped there (more may match).
    pub fn matching_up_to(&self, filter: &str, limit: usize, out: &mut Vec<M>) -> bool {
        let start = out.len();
        if limit == 0 {
            return self.count_matching(filter) > 0;
        }
        let mut stopped = false;
        self.root.each_matching(filter, &mut |m| {
            if out.len() - start == limit {
                stopped = true;
                return false;
            }
            out.push(m.clone());
            true
        });
        stopped
    }

    /// How many retained messages match the plain `filter` (nothing is cloned).
    pub fn count_matching(&self, filter: &str) -> usize {
        let mut n = 0;
        self.root.each_matching(filter, &mut |_| {
            n += 1;
            true
        });
        n
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

    #[test]
    fn deep_topics_do_not_use_the_stack() {
        let run = || {
            let deep = vec!["a"; 10_000].join("/");
            let mut s = RetainedStore::default();
            s.set(&deep, Some("deep"));
            s.set("a", Some("a"));
            assert_eq!(sorted(&s, "#"), ["a", "deep"]);
            assert_eq!(sorted(&s, &vec!["+"; 10_000].join("/")), ["deep"]);
            assert_eq!(sorted(&s, &deep), ["deep"]);
            s.set(&deep, None);
            assert_eq!(s.len(), 1);
            assert_eq!(s.node_count(), 2);
            s.set(&deep, Some("again"));
            drop(s);
        };
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(run)
            .expect("thread")
            .join()
            .expect("no stack overflow");
    }

    #[test]
    fn matching_stops_at_the_limit() {
        let mut s = RetainedStore::default();
        for i in 0..100 {
            s.set(&format!("t/{i}"), Some(i));
        }
        let mut out = Vec::new();
        assert!(s.matching_up_to("#", 10, &mut out));
        assert_eq!(out.len(), 10);
        out.clear();
        assert!(!s.matching_up_to("t/+", 1000, &mut out));
        assert_eq!(out.len(), 100);
        out.clear();
        assert!(
            !s.matching_up_to("t/+", 100, &mut out),
            "exactly the limit is not cut"
        );
        assert_eq!(s.count_matching("#"), 100);
        assert_eq!(s.count_matching("t/7"), 1);
    }
}
