//! The subscription index: a trie keyed by topic level.
//!
//! Each node holds its literal children (`HashMap<Box<str>, Node>`), an optional `+` child, and
//! two subscriber sets, allocated only when used: subscriptions whose filter ends at this node
//! (`exact`) and those whose filter is this node followed by `#` (`multi`). Routing walks the
//! topic's levels, following at each node the literal child and the `+` child and collecting
//! the `#` set, so its cost grows with topic depth (times the wildcard fan-out), not with the
//! number of subscriptions. Empty nodes are pruned on removal.
//!
//! Every walk is a loop (never recursion), and dropping a node frees its subtree with an
//! explicit stack: a topic of ten thousand levels costs time, never the stack (brokk also
//! refuses topics deeper than `limits.max_topic_levels` before they reach the router).
//!
//! A subscriber set maps client id to its plain subscription (a short vector while few, a hash
//! map above that: most filters have one subscriber), and share name to a shared group (members
//! picked round-robin by an atomic cursor so that `route` takes `&self`). The table keeps no
//! per-client index: each session knows its own filters and removes them itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::smallmap::SmallMap;
use super::{Route, SubscriptionOptions, parse_filter};

/// Above this many routes added by one `route` call, client dedup switches from a linear scan
/// to a hash map.
const LINEAR_DEDUP_MAX: usize = 8;

struct PlainSub<H> {
    handle: H,
    options: SubscriptionOptions,
}

struct Member<H> {
    client_id: Arc<str>,
    handle: H,
    options: SubscriptionOptions,
}

struct SharedGroup<H> {
    name: Box<str>,
    members: Vec<Member<H>>,
    cursor: AtomicUsize,
}

struct Subscribers<H> {
    plain: SmallMap<Arc<str>, PlainSub<H>>,
    shared: Vec<SharedGroup<H>>,
}

impl<H> Default for Subscribers<H> {
    fn default() -> Self {
        Subscribers {
            plain: SmallMap::default(),
            shared: Vec::new(),
        }
    }
}

impl<H> Subscribers<H> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }

    fn group_mut(&mut self, name: &str) -> Option<&mut SharedGroup<H>> {
        self.shared.iter_mut().find(|g| &*g.name == name)
    }

    /// Adds or replaces; returns whether it existed.
    fn insert(
        &mut self,
        client_id: &Arc<str>,
        group: Option<&str>,
        handle: H,
        options: SubscriptionOptions,
    ) -> bool {
        let Some(group) = group else {
            if let Some(sub) = self.plain.get_mut(client_id) {
                *sub = PlainSub { handle, options };
                return true;
            }
            self.plain.get_or_insert_with(
                client_id,
                || client_id.clone(),
                || PlainSub { handle, options },
            );
            return false;
        };
        if self.group_mut(group).is_none() {
            self.shared.push(SharedGroup {
                name: group.into(),
                members: Vec::new(),
                cursor: AtomicUsize::new(0),
            });
        }
        let Some(g) = self.group_mut(group) else {
            return false;
        };
        match g.members.iter_mut().find(|m| *m.client_id == **client_id) {
            Some(m) => {
                m.handle = handle;
                m.options = options;
                true
            }
            None => {
                g.members.push(Member {
                    client_id: client_id.clone(),
                    handle,
                    options,
                });
                false
            }
        }
    }

    fn remove(&mut self, client_id: &str, group: Option<&str>) -> bool {
        let Some(group) = group else {
            return self.plain.remove(client_id).is_some();
        };
        let Some(gi) = self.shared.iter().position(|g| &*g.name == group) else {
            return false;
        };
        let members = &mut self.shared[gi].members;
        let Some(i) = members.iter().position(|m| &*m.client_id == client_id) else {
            return false;
        };
        members.remove(i);
        if members.is_empty() {
            self.shared.swap_remove(gi);
        }
        true
    }

    fn handle(&self, client_id: &str, group: Option<&str>) -> Option<&H> {
        match group {
            None => self.plain.get(client_id).map(|s| &s.handle),
            Some(group) => self
                .shared
                .iter()
                .find(|g| &*g.name == group)?
                .members
                .iter()
                .find(|m| &*m.client_id == client_id)
                .map(|m| &m.handle),
        }
    }

    fn get(&self, client_id: &str, group: Option<&str>) -> Option<&SubscriptionOptions> {
        match group {
            None => self.plain.get(client_id).map(|s| &s.options),
            Some(group) => self
                .shared
                .iter()
                .find(|g| &*g.name == group)?
                .members
                .iter()
                .find(|m| &*m.client_id == client_id)
                .map(|m| &m.options),
        }
    }
}

struct Node<H> {
    children: SmallMap<Box<str>, Node<H>>,
    plus: Option<Box<Node<H>>>,
    /// Subscriptions whose filter ends at this node.
    exact: Option<Box<Subscribers<H>>>,
    /// Subscriptions whose filter is this node's path followed by `/#` (or `#` at the root).
    multi: Option<Box<Subscribers<H>>>,
}

impl<H> Default for Node<H> {
    fn default() -> Self {
        Node {
            children: SmallMap::default(),
            plus: None,
            exact: None,
            multi: None,
        }
    }
}

impl<H> Drop for Node<H> {
    /// Frees the subtree with an explicit stack: the derived drop would recurse once per level.
    fn drop(&mut self) {
        if self.children.is_empty() && self.plus.is_none() {
            return;
        }
        let mut stack: Vec<Node<H>> = self.children.drain_values();
        stack.extend(self.plus.take().map(|p| *p));
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain_values());
            stack.extend(node.plus.take().map(|p| *p));
        }
    }
}

/// Where a filter's subscriber set hangs: the levels before any `#` lead to its node, and
/// `multi` says whether it is that node's `#` set.
fn split_filter(filter: &str) -> (impl Iterator<Item = &str>, bool) {
    let (path, multi) = if filter == "#" {
        (None, true)
    } else if let Some(path) = filter.strip_suffix("/#") {
        (Some(path), true)
    } else {
        (Some(filter), false)
    };
    (path.into_iter().flat_map(|p| p.split('/')), multi)
}

impl<H> Node<H> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_none()
            && self.multi.is_none()
    }

    /// True when this node holds nothing but the one link its path continues through.
    fn only_link(&self) -> bool {
        self.exact.is_none()
            && self.multi.is_none()
            && self.children.len() + usize::from(self.plus.is_some()) == 1
    }

    fn step(&self, level: &str) -> Option<&Node<H>> {
        match level {
            "+" => self.plus.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn step_mut(&mut self, level: &str) -> Option<&mut Node<H>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn set_slot(&mut self, multi: bool) -> &mut Option<Box<Subscribers<H>>> {
        if multi {
            &mut self.multi
        } else {
            &mut self.exact
        }
    }

    /// The subscriber set `filter` designates, creating nodes on the way.
    fn subscribers_mut_or_create(&mut self, filter: &str) -> &mut Subscribers<H> {
        let (levels, multi) = split_filter(filter);
        let mut node = self;
        for level in levels {
            node = match level {
                "+" => node.plus.get_or_insert_with(Box::default),
                _ => node
                    .children
                    .get_or_insert_with(level, || level.into(), Node::default),
            };
        }
        node.set_slot(multi).get_or_insert_with(Box::default)
    }

    /// The node holding `filter`'s subscriber set, if it exists.
    fn find(&self, filter: &str) -> Option<(&Node<H>, bool)> {
        let (levels, multi) = split_filter(filter);
        let mut node = self;
        for level in levels {
            node = node.step(level)?;
        }
        Some((node, multi))
    }

    fn subscribers(&self, filter: &str) -> Option<&Subscribers<H>> {
        let (node, multi) = self.find(filter)?;
        if multi {
            node.multi.as_deref()
        } else {
            node.exact.as_deref()
        }
    }

    /// Removes one subscription and prunes the nodes it leaves empty, without recursion:
    /// one walk down to remove it, one to find the highest node left empty, one to cut there.
    fn remove(&mut self, filter: &str, client_id: &str, group: Option<&str>) -> bool {
        let (levels, multi) = split_filter(filter);
        let levels: Vec<&str> = levels.collect();
        let mut node = &mut *self;
        for level in &levels {
            let Some(next) = node.step_mut(level) else {
                return false;
            };
            node = next;
        }
        let slot = node.set_slot(multi);
        let Some(set) = slot.as_deref_mut() else {
            return false;
        };
        if !set.remove(client_id, group) {
            return false;
        }
        if set.is_empty() {
            *slot = None;
        }
        self.prune(&levels);
        true
    }

    /// Cuts the longest chain of nodes at the end of `levels` that holds nothing else.
    fn prune(&mut self, levels: &[&str]) {
        // `cut` = depth of the first node of the removable chain (0 = nothing to cut).
        let mut cut = 0;
        let mut node = &*self;
        for (depth, level) in levels.iter().enumerate() {
            let Some(next) = node.step(level) else {
                return;
            };
            node = next;
            let depth = depth + 1;
            let removable = if depth == levels.len() {
                node.is_empty()
            } else {
                node.only_link()
            };
            if !removable {
                cut = 0;
            } else if cut == 0 {
                cut = depth;
            }
        }
        if cut == 0 {
            return;
        }
        let mut parent = &mut *self;
        for level in &levels[..cut - 1] {
            match parent.step_mut(level) {
                Some(next) => parent = next,
                None => return,
            }
        }
        match levels[cut - 1] {
            "+" => parent.plus = None,
            level => {
                parent.children.remove(level);
            }
        }
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![self];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
        }
        count
    }
}

/// Visits every subscriber set matching `topic`, with an explicit stack. At the root, a topic
/// starting with `$` is not matched by a leading wildcard (MQTT-4.7.2-1).
fn visit<'n, H>(root: &'n Node<H>, topic: &str, mut f: impl FnMut(&'n Subscribers<H>)) {
    let mut stack: Vec<(&'n Node<H>, Option<&str>, bool)> = Vec::with_capacity(8);
    stack.push((root, Some(topic), topic.starts_with('$')));
    while let Some((node, rest, dollar_root)) = stack.pop() {
        // `#` matches this level's parent too: `a/#` matches `a` and everything below.
        if !dollar_root && let Some(multi) = node.multi.as_deref() {
            f(multi);
        }
        let Some(rest) = rest else {
            if let Some(exact) = node.exact.as_deref() {
                f(exact);
            }
            continue;
        };
        let (level, next) = match rest.split_once('/') {
            Some((level, next)) => (level, Some(next)),
            None => (rest, None),
        };
        if let Some(child) = node.children.get(level) {
            stack.push((child, next, false));
        }
        if !dollar_root && let Some(plus) = node.plus.as_deref() {
            stack.push((plus, next, false));
        }
    }
}

/// The subscription index: every session's filters, plain and shared.
pub struct SubscriptionTable<H> {
    root: Node<H>,
    len: usize,
}

impl<H: Clone> Default for SubscriptionTable<H> {
    fn default() -> Self {
        SubscriptionTable {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<H: Clone> SubscriptionTable<H> {
    /// Adds or replaces `client_id`'s subscription to `filter` (plain or `$share/...`).
    /// Returns whether it already existed (for Retain Handling 1). The filter must have been
    /// validated with [`parse_filter`]; an invalid one is refused (debug builds panic) and
    /// `false` returned.
    pub fn subscribe(
        &mut self,
        client_id: &Arc<str>,
        handle: H,
        filter: &str,
        options: SubscriptionOptions,
    ) -> bool {
        let Ok(parsed) = parse_filter(filter) else {
            // A caller bug: refuse rather than index a filter the trie would misread (`a/#/b`).
            debug_assert!(false, "unvalidated filter {filter:?}");
            return false;
        };
        let set = self.root.subscribers_mut_or_create(parsed.filter);
        let existed = set.insert(client_id, parsed.share_group, handle, options);
        if !existed {
            self.len += 1;
        }
        existed
    }

    /// Removes one subscription; returns whether it existed (never for an invalid filter).
    pub fn unsubscribe(&mut self, client_id: &str, filter: &str) -> bool {
        let Ok(parsed) = parse_filter(filter) else {
            return false;
        };
        let removed = self
            .root
            .remove(parsed.filter, client_id, parsed.share_group);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// [`SubscriptionTable::unsubscribe`], only if the subscription's handle passes `keep`.
    pub fn unsubscribe_if(
        &mut self,
        client_id: &str,
        filter: &str,
        keep: impl Fn(&H) -> bool,
    ) -> bool {
        let matches = self.handle(client_id, filter).is_some_and(keep);
        matches && self.unsubscribe(client_id, filter)
    }

    fn handle(&self, client_id: &str, filter: &str) -> Option<&H> {
        let parsed = parse_filter(filter).ok()?;
        self.root
            .subscribers(parsed.filter)?
            .handle(client_id, parsed.share_group)
    }

    /// The options of one subscription, if it exists.
    pub fn subscription(&self, client_id: &str, filter: &str) -> Option<&SubscriptionOptions> {
        let parsed = parse_filter(filter).ok()?;
        self.root
            .subscribers(parsed.filter)?
            .get(client_id, parsed.share_group)
    }

    /// Appends to `out` one [`Route`] per subscriber whose filters match `topic`. A subscriber
    /// with No Local is skipped when it is `publisher`. Each matching shared group contributes
    /// exactly one member, chosen round-robin.
    ///
    /// Non-shared matches of one client merge into one route (highest QoS, every subscription
    /// identifier once, Retain As Published if any asked). A shared delivery is a route of its
    /// own, appended after the plain ones.
    pub fn route(&self, topic: &str, publisher: &str, out: &mut Vec<Route<H>>) {
        let mut ctx = RouteCtx {
            publisher,
            start: out.len(),
            out,
            plain_sets: 0,
            index: None,
            shared: Vec::new(),
            merged: false,
        };
        visit(&self.root, topic, |set| ctx.add_set(set));
        let RouteCtx {
            out,
            shared,
            start,
            merged,
            ..
        } = ctx;
        if merged {
            // Identifiers are collected without a membership test per merge (which made a
            // client with thousands of overlapping subscriptions cost their square), and
            // deduplicated once here.
            for route in &mut out[start..] {
                if route.subscription_identifiers.len() > 1 {
                    route.subscription_identifiers.sort_unstable();
                    route.subscription_identifiers.dedup();
                }
            }
        }
        for group in shared {
            route_shared(group, publisher, out);
        }
    }

    /// Number of subscriptions (plain and shared), for the `brokk_subscriptions` gauge.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of trie nodes (the root included).
    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        self.root.count()
    }
}

struct RouteCtx<'a, 'n, H> {
    publisher: &'a str,
    out: &'a mut Vec<Route<H>>,
    /// `out.len()` when the call started: routes before it are not ours.
    start: usize,
    /// Subscriber sets whose plain subscriptions were added so far.
    plain_sets: usize,
    /// Client id → index in `out`, once this call added more than [`LINEAR_DEDUP_MAX`] routes.
    index: Option<HashMap<Arc<str>, usize>>,
    shared: Vec<&'n SharedGroup<H>>,
    /// Whether any route merged a second subscription (its identifiers may repeat).
    merged: bool,
}

impl<'n, H: Clone> RouteCtx<'_, 'n, H> {
    fn add_set(&mut self, set: &'n Subscribers<H>) {
        self.shared.extend(set.shared.iter());
        if set.plain.is_empty() {
            return;
        }
        self.plain_sets += 1;
        if self.plain_sets == 1 {
            // Client ids are unique within one set: nothing to merge with yet.
            let (out, publisher) = (&mut *self.out, self.publisher);
            set.plain.for_each(|client_id, sub| {
                if !(sub.options.no_local && **client_id == *publisher) {
                    out.push(new_route(client_id, &sub.handle, &sub.options));
                }
            });
            return;
        }
        self.index_if_large();
        set.plain.for_each(|client_id, sub| {
            if !(sub.options.no_local && **client_id == *self.publisher) {
                self.add_plain(client_id, sub);
            }
        });
    }

    fn add_plain(&mut self, client_id: &Arc<str>, sub: &PlainSub<H>) {
        let existing = match &self.index {
            Some(index) => index.get(&**client_id).copied(),
            None => self.out[self.start..]
                .iter()
                .position(|r| r.client_id == *client_id)
                .map(|i| self.start + i),
        };
        match existing {
            Some(i) => {
                merge(&mut self.out[i], &sub.options);
                self.merged = true;
            }
            None => {
                self.out
                    .push(new_route(client_id, &sub.handle, &sub.options));
                match &mut self.index {
                    Some(index) => {
                        index.insert(client_id.clone(), self.out.len() - 1);
                    }
                    None => self.index_if_large(),
                }
            }
        }
    }

    /// Switches dedup to a hash map once this call has added many routes.
    fn index_if_large(&mut self) {
        if self.index.is_none() && self.out.len() - self.start > LINEAR_DEDUP_MAX {
            let start = self.start;
            let index = self.out[start..]
                .iter()
                .enumerate()
                .map(|(i, r)| (r.client_id.clone(), start + i))
                .collect();
            self.index = Some(index);
        }
    }
}

fn new_route<H: Clone>(
    client_id: &Arc<str>,
    handle: &H,
    options: &SubscriptionOptions,
) -> Route<H> {
    Route {
        client_id: client_id.clone(),
        handle: handle.clone(),
        qos: options.qos,
        retain_as_published: options.retain_as_published,
        subscription_identifiers: options.subscription_identifier.into_iter().collect(),
    }
}

fn merge<H>(route: &mut Route<H>, options: &SubscriptionOptions) {
    route.qos = route.qos.max(options.qos);
    route.retain_as_published |= options.retain_as_published;
    route
        .subscription_identifiers
        .extend(options.subscription_identifier);
}

/// Picks the next member of `group` round-robin. No Local is a protocol error on a shared
/// subscription (MQTT-3.8.3-4), but should one slip through, that member is passed over.
fn route_shared<H: Clone>(group: &SharedGroup<H>, publisher: &str, out: &mut Vec<Route<H>>) {
    let n = group.members.len();
    if n == 0 {
        return;
    }
    let first = group.cursor.fetch_add(1, Ordering::Relaxed);
    for k in 0..n {
        let member = &group.members[first.wrapping_add(k) % n];
        if !(member.options.no_local && *member.client_id == *publisher) {
            out.push(new_route(
                &member.client_id,
                &member.handle,
                &member.options,
            ));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    fn opts(qos: QoS, id: Option<u32>) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            subscription_identifier: id,
        }
    }

    fn cid(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    /// Routes sorted by client id, shared ones included.
    fn route(t: &SubscriptionTable<u32>, topic: &str, publisher: &str) -> Vec<Route<u32>> {
        let mut out = Vec::new();
        t.route(topic, publisher, &mut out);
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }

    fn clients(routes: &[Route<u32>]) -> Vec<&str> {
        routes.iter().map(|r| &*r.client_id).collect()
    }

    #[test]
    fn subscribe_route_unsubscribe() {
        let mut t = SubscriptionTable::default();
        assert!(t.is_empty());
        let a = cid("a");
        let b = cid("b");
        assert!(!t.subscribe(&a, 1, "sport/tennis/+", opts(QoS::AtLeastOnce, None)));
        assert!(!t.subscribe(&b, 2, "sport/#", opts(QoS::AtMostOnce, None)));
        assert!(!t.subscribe(&b, 2, "#", opts(QoS::AtMostOnce, None)));
        assert_eq!(t.len(), 3);

        let r = route(&t, "sport/tennis/player1", "x");
        assert_eq!(clients(&r), ["a", "b"]);
        assert_eq!((r[0].handle, r[0].qos), (1, QoS::AtLeastOnce));
        assert_eq!(r[1].handle, 2);
        assert_eq!(clients(&route(&t, "sport", "x")), ["b"]);
        assert_eq!(clients(&route(&t, "weather", "x")), ["b"]);
        assert!(
            route(&t, "$SYS/uptime", "x").is_empty(),
            "`#` does not match `$` topics"
        );

        // Replacing returns true and keeps the count; the new options apply.
        assert!(t.subscribe(&a, 7, "sport/tennis/+", opts(QoS::ExactlyOnce, Some(9))));
        assert_eq!(t.len(), 3);
        let r = route(&t, "sport/tennis/x", "x");
        assert_eq!(
            (r[0].handle, r[0].qos, r[0].subscription_identifiers.clone()),
            (7, QoS::ExactlyOnce, vec![9])
        );

        assert!(t.unsubscribe("a", "sport/tennis/+"));
        assert!(!t.unsubscribe("a", "sport/tennis/+"));
        assert!(!t.unsubscribe("nobody", "sport/#"));
        assert!(!t.unsubscribe("b", "sport/+"));
        assert!(
            !t.unsubscribe("b", "sport/#/x"),
            "an invalid filter is not read as `sport/#`"
        );
        assert!(!t.unsubscribe("b", "$share/g"));
        assert_eq!(t.len(), 2);
        assert_eq!(clients(&route(&t, "sport/tennis/x", "x")), ["b"]);
        assert!(t.unsubscribe("b", "#"));
        assert!(t.unsubscribe("b", "sport/#"));
        assert!(t.is_empty());
        assert!(route(&t, "sport", "x").is_empty());
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn routing_follows_matching_rules() {
        let filters = [
            "#",
            "+",
            "+/+",
            "/+",
            "a/+",
            "a/#",
            "a//b",
            "a/+/b",
            "+/b/#",
            "$SYS/#",
            "$SYS/+",
            "$SYS",
            "a",
            "a/",
            "sport/#",
            "sport/+/player1",
        ];
        let mut t = SubscriptionTable::default();
        let ids: Vec<Arc<str>> = filters.iter().map(|f| cid(f)).collect();
        for (i, f) in filters.iter().enumerate() {
            t.subscribe(&ids[i], i as u32, f, opts(QoS::AtMostOnce, None));
        }
        for topic in [
            "a",
            "a/",
            "/a",
            "a//b",
            "a/x/b",
            "x/b",
            "x/b/c",
            "$SYS",
            "$SYS/x",
            "$SYS/x/y",
            "sport",
            "sport/tennis/player1",
            "/",
            "b",
        ] {
            let mut expected: Vec<&str> = filters
                .iter()
                .copied()
                .filter(|f| crate::router::matches(f, topic))
                .collect();
            expected.sort_unstable();
            assert_eq!(
                clients(&route(&t, topic, "pub")),
                expected,
                "topic {topic:?}"
            );
        }
    }

    #[test]
    fn overlapping_subscriptions_make_one_route() {
        let mut t = SubscriptionTable::default();
        let a = cid("a");
        t.subscribe(&a, 1, "a/+", opts(QoS::AtMostOnce, Some(1)));
        t.subscribe(&a, 1, "a/#", opts(QoS::ExactlyOnce, Some(2)));
        t.subscribe(&a, 1, "a/b", opts(QoS::AtLeastOnce, None));
        t.subscribe(
            &a,
            1,
            "+/b",
            SubscriptionOptions {
                retain_as_published: true,
                ..opts(QoS::AtMostOnce, Some(2))
            },
        );
        t.subscribe(&a, 1, "x/y", opts(QoS::ExactlyOnce, Some(5)));
        let r = route(&t, "a/b", "p");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].qos, QoS::ExactlyOnce);
        assert!(r[0].retain_as_published);
        let mut ids = r[0].subscription_identifiers.clone();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2], "identifiers deduplicated");

        let r = route(&t, "a/c", "p");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].qos, QoS::ExactlyOnce);
        assert!(!r[0].retain_as_published);
    }

    #[test]
    fn overlap_dedup_with_many_clients() {
        // Enough clients that dedup switches to the hash map.
        let mut t = SubscriptionTable::default();
        let ids: Vec<Arc<str>> = (0..50).map(|i| cid(&format!("c{i:02}"))).collect();
        for (i, c) in ids.iter().enumerate() {
            t.subscribe(c, i as u32, "t/#", opts(QoS::AtMostOnce, Some(1)));
            t.subscribe(c, i as u32, "t/+", opts(QoS::AtLeastOnce, Some(2)));
            if i % 2 == 0 {
                t.subscribe(c, i as u32, "t/x", opts(QoS::ExactlyOnce, Some(3)));
            }
        }
        let r = route(&t, "t/x", "p");
        assert_eq!(r.len(), 50);
        for (i, route) in r.iter().enumerate() {
            assert_eq!(route.handle, i as u32);
            let mut ids = route.subscription_identifiers.clone();
            ids.sort_unstable();
            if i % 2 == 0 {
                assert_eq!((route.qos, ids), (QoS::ExactlyOnce, vec![1, 2, 3]));
            } else {
                assert_eq!((route.qos, ids), (QoS::AtLeastOnce, vec![1, 2]));
            }
        }
    }

    #[test]
    fn routes_are_appended() {
        let mut t = SubscriptionTable::default();
        let a = cid("a");
        t.subscribe(&a, 1, "x", opts(QoS::AtMostOnce, Some(1)));
        t.subscribe(&a, 1, "+", opts(QoS::AtMostOnce, Some(2)));
        let mut out = Vec::new();
        t.route("x", "p", &mut out);
        t.route("x", "p", &mut out);
        assert_eq!(
            out.len(),
            2,
            "a second call does not merge into the first call's routes"
        );
        assert_eq!(out[1].subscription_identifiers.len(), 2);
    }

    #[test]
    fn no_local() {
        let mut t = SubscriptionTable::default();
        let a = cid("a");
        let b = cid("b");
        let nl = SubscriptionOptions {
            no_local: true,
            ..opts(QoS::ExactlyOnce, Some(1))
        };
        t.subscribe(&a, 1, "t/#", nl.clone());
        t.subscribe(&a, 1, "t/+", opts(QoS::AtMostOnce, Some(2)));
        t.subscribe(&b, 2, "t/#", nl);
        // a publishes: its No Local subscription is skipped, its other one still matches.
        let r = route(&t, "t/x", "a");
        assert_eq!(clients(&r), ["a", "b"]);
        assert_eq!(
            (r[0].qos, r[0].subscription_identifiers.clone()),
            (QoS::AtMostOnce, vec![2])
        );
        // b publishes: b has only a No Local subscription.
        let r = route(&t, "t/x", "b");
        assert_eq!(clients(&r), ["a"]);
        assert_eq!(r[0].qos, QoS::ExactlyOnce);
        // Only `t/#` matches `t`: a publishing to it gets nothing back.
        assert_eq!(clients(&route(&t, "t", "a")), ["b"]);
    }

    #[test]
    fn shared_round_robin() {
        let mut t = SubscriptionTable::default();
        let members: Vec<Arc<str>> = ["m0", "m1", "m2"].into_iter().map(cid).collect();
        for (i, m) in members.iter().enumerate() {
            assert!(!t.subscribe(
                m,
                i as u32,
                "$share/g/s/+",
                opts(QoS::AtLeastOnce, Some(10 + i as u32))
            ));
        }
        assert_eq!(t.len(), 3);
        let mut counts = [0usize; 3];
        for _ in 0..300 {
            let r = route(&t, "s/x", "p");
            assert_eq!(r.len(), 1, "exactly one member per message");
            let i = r[0].handle as usize;
            assert_eq!(r[0].subscription_identifiers, [10 + i as u32]);
            counts[i] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);

        // Another group on the same filter gets its own copy; a different filter is another group.
        let o = cid("o");
        t.subscribe(&o, 9, "$share/h/s/+", opts(QoS::AtMostOnce, None));
        t.subscribe(&o, 9, "$share/g/s/#", opts(QoS::AtMostOnce, None));
        let r = route(&t, "s/x", "p");
        assert_eq!(r.len(), 3);
        assert_eq!(r.iter().filter(|r| &*r.client_id == "o").count(), 2);

        // Leaving the group rebalances over the remaining members.
        assert!(t.unsubscribe("m1", "$share/g/s/+"));
        assert!(!t.unsubscribe("m1", "$share/g/s/+"));
        let mut counts = [0usize; 3];
        for _ in 0..100 {
            for r in route(&t, "s/x", "p").iter().filter(|r| r.handle < 3) {
                counts[r.handle as usize] += 1;
            }
        }
        assert_eq!(counts, [50, 0, 50]);
    }

    #[test]
    fn shared_and_plain_are_separate() {
        let mut t = SubscriptionTable::default();
        let a = cid("a");
        t.subscribe(&a, 1, "s/x", opts(QoS::AtMostOnce, Some(1)));
        t.subscribe(&a, 1, "$share/g/s/x", opts(QoS::ExactlyOnce, Some(2)));
        assert_eq!(t.len(), 2);
        let r = route(&t, "s/x", "p");
        assert_eq!(r.len(), 2);
        let mut got: Vec<_> = r
            .iter()
            .map(|r| (r.qos, r.subscription_identifiers.clone()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [(QoS::AtMostOnce, vec![1]), (QoS::ExactlyOnce, vec![2])]
        );
        assert!(t.unsubscribe("a", "s/x"));
        assert_eq!(route(&t, "s/x", "p").len(), 1);
        // A shared filter starting with a wildcard still obeys the `$` rule.
        t.subscribe(&a, 1, "$share/g/#", opts(QoS::AtMostOnce, None));
        assert!(route(&t, "$SYS/x", "p").is_empty());
    }

    #[test]
    fn conditional_removal() {
        let mut t = SubscriptionTable::default();
        let a = cid("a");
        let b = cid("b");
        let filters = ["x", "y/+", "$share/g/z"];
        for f in filters {
            t.subscribe(&a, 1, f, opts(QoS::AtMostOnce, None));
            t.subscribe(&b, 2, f, opts(QoS::AtLeastOnce, None));
        }
        assert_eq!(t.len(), 6);
        assert_eq!(
            t.subscription("b", "y/+").map(|o| o.qos),
            Some(QoS::AtLeastOnce)
        );
        assert_eq!(t.subscription("b", "y/#"), None);
        for f in filters {
            assert!(t.unsubscribe_if("a", f, |h| *h == 1));
            assert!(!t.unsubscribe_if("b", f, |h| *h == 1), "b's handle is 2");
        }
        assert_eq!(t.len(), 3);
        assert_eq!(clients(&route(&t, "x", "p")), ["b"]);
        assert_eq!(clients(&route(&t, "z", "p")), ["b"]);
        for f in filters {
            assert!(t.unsubscribe("b", f));
        }
        assert!(t.is_empty());
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn many_subscribers_of_one_filter_switch_to_a_map() {
        let mut t = SubscriptionTable::default();
        let ids: Vec<Arc<str>> = (0..100).map(|i| cid(&format!("c{i:03}"))).collect();
        for (i, c) in ids.iter().enumerate() {
            assert!(!t.subscribe(c, i as u32, "t", opts(QoS::AtMostOnce, None)));
        }
        assert!(t.subscribe(&ids[7], 70, "t", opts(QoS::AtLeastOnce, None)));
        let r = route(&t, "t", "p");
        assert_eq!(r.len(), 100);
        assert_eq!((r[7].handle, r[7].qos), (70, QoS::AtLeastOnce));
        for c in &ids {
            assert!(t.unsubscribe(c, "t"));
        }
        assert!(t.is_empty());
        assert_eq!(t.node_count(), 1);
    }

    /// Walks are loops: ten thousand levels on a 256 KiB stack, where the recursive walks of
    /// old overflowed 2 MiB.
    #[test]
    fn deep_filters_do_not_use_the_stack() {
        let run = || {
            let deep = vec!["a"; 10_000].join("/");
            let mut t = SubscriptionTable::default();
            let a = cid("a");
            t.subscribe(&a, 1, &deep, opts(QoS::AtMostOnce, None));
            t.subscribe(&a, 1, &format!("{deep}/#"), opts(QoS::AtMostOnce, Some(1)));
            let plus = vec!["+"; 10_000].join("/");
            t.subscribe(&a, 1, &plus, opts(QoS::AtMostOnce, Some(2)));
            let r = route(&t, &deep, "p");
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].subscription_identifiers, [1, 2]);
            assert!(t.unsubscribe("a", &deep));
            assert!(t.unsubscribe("a", &plus));
            assert_eq!(route(&t, &deep, "p").len(), 1);
            // Dropped with a subscription still ten thousand levels down.
            drop(t);
        };
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(run)
            .expect("thread")
            .join()
            .expect("no stack overflow");
    }

    #[test]
    fn overlapping_identifiers_cost_is_not_quadratic() {
        // 2^14 distinct filters matching one topic, one client, each with its identifier.
        let levels = 14;
        let topic = (0..levels)
            .map(|i| format!("l{i}"))
            .collect::<Vec<_>>()
            .join("/");
        let mut t = SubscriptionTable::default();
        let a = cid("a");
        for mask in 0u32..(1 << levels) {
            let filter = (0..levels)
                .map(|i| {
                    if mask & (1 << i) != 0 {
                        "+".to_string()
                    } else {
                        format!("l{i}")
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            t.subscribe(&a, 1, &filter, opts(QoS::AtMostOnce, Some(mask + 1)));
        }
        let r = route(&t, &topic, "p");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].subscription_identifiers.len(), 1 << levels);
    }

    #[test]
    fn unsubscribe_prunes_the_trie() {
        let mut t = SubscriptionTable::default();
        let a = cid("a");
        let keep = cid("keep");
        t.subscribe(&keep, 0, "base/+/x", opts(QoS::AtMostOnce, None));
        let baseline = t.node_count();
        let filters: Vec<String> = (0..1000)
            .map(|i| match i % 4 {
                0 => format!("base/{i}/leaf"),
                1 => format!("base/+/{i}/#"),
                2 => format!("$share/g{i}/base/{i}"),
                _ => format!("deep/{i}/+/{}/#", i % 3),
            })
            .collect();
        for f in &filters {
            t.subscribe(&a, 1, f, opts(QoS::AtMostOnce, None));
        }
        assert_eq!(t.len(), 1001);
        assert!(t.node_count() > baseline + 1000);
        for f in &filters {
            assert!(t.unsubscribe("a", f), "{f}");
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.node_count(), baseline);
        assert_eq!(clients(&route(&t, "base/q/x", "p")), ["keep"]);
    }
}
