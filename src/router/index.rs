//! The subscription index: a trie keyed by topic level.
//!
//! Each node holds its literal children (`HashMap<Box<str>, Node>`), an optional `+` child, and
//! two subscriber sets: subscriptions whose filter ends at this node (`exact`) and those whose
//! filter is this node followed by `#` (`multi`). Routing walks the topic's levels, following at
//! each node the literal child and the `+` child and collecting the `#` set, so its cost grows
//! with topic depth (times the wildcard fan-out), not with the number of subscriptions. Empty
//! nodes are pruned on removal.
//!
//! A subscriber set maps client id to its plain subscription, and share name to a shared group
//! (members in a `Vec`, picked round-robin by an atomic cursor so that `route` takes `&self`).
//! A per-client index of full filter strings serves [`SubscriptionTable::remove_all`] and
//! [`SubscriptionTable::subscriptions_of`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    members: Vec<Member<H>>,
    cursor: AtomicUsize,
}

struct Subscribers<H> {
    plain: HashMap<Arc<str>, PlainSub<H>>,
    shared: HashMap<Box<str>, SharedGroup<H>>,
}

impl<H> Default for Subscribers<H> {
    fn default() -> Self {
        Subscribers {
            plain: HashMap::new(),
            shared: HashMap::new(),
        }
    }
}

impl<H> Subscribers<H> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }

    /// Adds or replaces; returns whether it existed.
    fn insert(
        &mut self,
        client_id: &Arc<str>,
        group: Option<&str>,
        handle: H,
        options: SubscriptionOptions,
    ) -> bool {
        match group {
            None => self
                .plain
                .insert(client_id.clone(), PlainSub { handle, options })
                .is_some(),
            Some(group) => {
                if !self.shared.contains_key(group) {
                    let g = SharedGroup {
                        members: Vec::new(),
                        cursor: AtomicUsize::new(0),
                    };
                    self.shared.insert(group.into(), g);
                }
                let g = self.shared.get_mut(group).expect("inserted above");
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
        }
    }

    fn remove(&mut self, client_id: &str, group: Option<&str>) -> bool {
        match group {
            None => self.plain.remove(client_id).is_some(),
            Some(group) => {
                let Some(g) = self.shared.get_mut(group) else {
                    return false;
                };
                let Some(i) = g.members.iter().position(|m| &*m.client_id == client_id) else {
                    return false;
                };
                g.members.remove(i);
                if g.members.is_empty() {
                    self.shared.remove(group);
                }
                true
            }
        }
    }

    fn get(&self, client_id: &str, group: Option<&str>) -> Option<&SubscriptionOptions> {
        match group {
            None => self.plain.get(client_id).map(|s| &s.options),
            Some(group) => self
                .shared
                .get(group)?
                .members
                .iter()
                .find(|m| &*m.client_id == client_id)
                .map(|m| &m.options),
        }
    }

    fn get_mut_handle(&mut self, client_id: &str, group: Option<&str>) -> Option<&mut H> {
        match group {
            None => self.plain.get_mut(client_id).map(|s| &mut s.handle),
            Some(group) => self
                .shared
                .get_mut(group)?
                .members
                .iter_mut()
                .find(|m| &*m.client_id == client_id)
                .map(|m| &mut m.handle),
        }
    }
}

struct Node<H> {
    children: HashMap<Box<str>, Node<H>>,
    plus: Option<Box<Node<H>>>,
    /// Subscriptions whose filter ends at this node.
    exact: Subscribers<H>,
    /// Subscriptions whose filter is this node's path followed by `/#` (or `#` at the root).
    multi: Subscribers<H>,
}

impl<H> Default for Node<H> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            exact: Subscribers::default(),
            multi: Subscribers::default(),
        }
    }
}

impl<H> Node<H> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.multi.is_empty()
    }

    /// The subscriber set `filter` designates, creating nodes on the way.
    fn subscribers_mut_or_create(&mut self, filter: &str) -> &mut Subscribers<H> {
        let mut node = self;
        for level in filter.split('/') {
            node = match level {
                "#" => return &mut node.multi,
                "+" => node.plus.get_or_insert_with(Box::default),
                _ => {
                    if !node.children.contains_key(level) {
                        node.children.insert(level.into(), Node::default());
                    }
                    node.children.get_mut(level).expect("inserted above")
                }
            };
        }
        &mut node.exact
    }

    /// The subscriber set `filter` designates, if its nodes exist.
    fn subscribers(&self, filter: &str) -> Option<&Subscribers<H>> {
        let mut node = self;
        for level in filter.split('/') {
            node = match level {
                "#" => return Some(&node.multi),
                "+" => node.plus.as_deref()?,
                _ => node.children.get(level)?,
            };
        }
        Some(&node.exact)
    }

    fn subscribers_mut(&mut self, filter: &str) -> Option<&mut Subscribers<H>> {
        let mut node = self;
        for level in filter.split('/') {
            node = match level {
                "#" => return Some(&mut node.multi),
                "+" => node.plus.as_deref_mut()?,
                _ => node.children.get_mut(level)?,
            };
        }
        Some(&mut node.exact)
    }

    /// Removes one subscription below this node and prunes the nodes it leaves empty.
    fn remove(
        &mut self,
        mut levels: std::str::Split<'_, char>,
        client_id: &str,
        group: Option<&str>,
    ) -> bool {
        match levels.next() {
            None => self.exact.remove(client_id, group),
            Some("#") => self.multi.remove(client_id, group),
            Some("+") => {
                let Some(child) = self.plus.as_deref_mut() else {
                    return false;
                };
                let removed = child.remove(levels, client_id, group);
                if child.is_empty() {
                    self.plus = None;
                }
                removed
            }
            Some(level) => {
                let Some(child) = self.children.get_mut(level) else {
                    return false;
                };
                let removed = child.remove(levels, client_id, group);
                if child.is_empty() {
                    self.children.remove(level);
                }
                removed
            }
        }
    }

    /// Visits every subscriber set matching the remaining topic levels `rest` (`None` once every
    /// level is consumed). `dollar_root` is true at the root for a topic starting with `$`, whose
    /// first level wildcards must not match.
    fn visit<'n>(
        &'n self,
        rest: Option<&str>,
        dollar_root: bool,
        f: &mut impl FnMut(&'n Subscribers<H>),
    ) {
        // `#` matches this level's parent too: `a/#` matches `a` and everything below.
        if !dollar_root && !self.multi.is_empty() {
            f(&self.multi);
        }
        let Some(rest) = rest else {
            if !self.exact.is_empty() {
                f(&self.exact);
            }
            return;
        };
        let (level, next) = match rest.split_once('/') {
            Some((level, next)) => (level, Some(next)),
            None => (rest, None),
        };
        if let Some(child) = self.children.get(level) {
            child.visit(next, false, f);
        }
        if !dollar_root && let Some(plus) = &self.plus {
            plus.visit(next, false, f);
        }
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        1 + self.children.values().map(Node::count).sum::<usize>()
            + self.plus.as_ref().map_or(0, |p| p.count())
    }
}

/// The subscription index: every session's filters, plain and shared.
pub struct SubscriptionTable<H> {
    root: Node<H>,
    /// Full filter strings (with any `$share/` prefix) of each client's subscriptions.
    by_client: HashMap<Arc<str>, HashSet<Box<str>>>,
    len: usize,
}

impl<H: Clone> Default for SubscriptionTable<H> {
    fn default() -> Self {
        SubscriptionTable {
            root: Node::default(),
            by_client: HashMap::new(),
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
            match self.by_client.get_mut(&**client_id) {
                Some(filters) => {
                    filters.insert(filter.into());
                }
                None => {
                    self.by_client
                        .insert(client_id.clone(), HashSet::from([filter.into()]));
                }
            }
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
            .remove(parsed.filter.split('/'), client_id, parsed.share_group);
        if removed {
            self.len -= 1;
            if let Some(filters) = self.by_client.get_mut(client_id) {
                filters.remove(filter);
                if filters.is_empty() {
                    self.by_client.remove(client_id);
                }
            }
        }
        removed
    }

    /// Removes every subscription of `client_id` among `filters` (a session ending).
    pub fn remove_client<'a>(
        &mut self,
        client_id: &str,
        filters: impl IntoIterator<Item = &'a str>,
    ) {
        for filter in filters {
            self.unsubscribe(client_id, filter);
        }
    }

    /// Removes every subscription of `client_id`; returns how many there were.
    pub fn remove_all(&mut self, client_id: &str) -> usize {
        let Some(filters) = self.by_client.remove(client_id) else {
            return 0;
        };
        for filter in &filters {
            let Ok(parsed) = parse_filter(filter) else {
                continue;
            };
            if self
                .root
                .remove(parsed.filter.split('/'), client_id, parsed.share_group)
            {
                self.len -= 1;
            }
        }
        filters.len()
    }

    /// The filters (full strings, with any `$share/` prefix) `client_id` is subscribed to, with
    /// their options, in no particular order.
    pub fn subscriptions_of(&self, client_id: &str) -> Vec<(&str, &SubscriptionOptions)> {
        let Some(filters) = self.by_client.get(client_id) else {
            return Vec::new();
        };
        filters
            .iter()
            .filter_map(|filter| Some((&**filter, self.subscription(client_id, filter)?)))
            .collect()
    }

    /// The options of one subscription, if it exists.
    pub fn subscription(&self, client_id: &str, filter: &str) -> Option<&SubscriptionOptions> {
        let parsed = parse_filter(filter).ok()?;
        self.root
            .subscribers(parsed.filter)?
            .get(client_id, parsed.share_group)
    }

    /// Replaces the handle of every subscription of `client_id` (a session moving to a new
    /// outbox); returns how many were updated.
    pub fn update_handle(&mut self, client_id: &str, handle: &H) -> usize {
        let Some(filters) = self.by_client.get(client_id) else {
            return 0;
        };
        let mut updated = 0;
        for filter in filters {
            let Ok(parsed) = parse_filter(filter) else {
                continue;
            };
            if let Some(h) = self
                .root
                .subscribers_mut(parsed.filter)
                .and_then(|s| s.get_mut_handle(client_id, parsed.share_group))
            {
                *h = handle.clone();
                updated += 1;
            }
        }
        updated
    }

    /// Appends to `out` one [`Route`] per subscriber whose filters match `topic`. A subscriber
    /// with No Local is skipped when it is `publisher`. Each matching shared group contributes
    /// exactly one member, chosen round-robin.
    ///
    /// Non-shared matches of one client merge into one route (highest QoS, every subscription
    /// identifier, Retain As Published if any asked). A shared delivery is a route of its own,
    /// appended after the plain ones.
    pub fn route(&self, topic: &str, publisher: &str, out: &mut Vec<Route<H>>) {
        let mut ctx = RouteCtx {
            publisher,
            out,
            start: 0,
            plain_sets: 0,
            index: None,
            shared: Vec::new(),
        };
        ctx.start = ctx.out.len();
        self.root
            .visit(Some(topic), topic.starts_with('$'), &mut |set| {
                ctx.add_set(set)
            });
        let RouteCtx { out, shared, .. } = ctx;
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
}

impl<'n, H: Clone> RouteCtx<'_, 'n, H> {
    fn add_set(&mut self, set: &'n Subscribers<H>) {
        for group in set.shared.values() {
            self.shared.push(group);
        }
        if set.plain.is_empty() {
            return;
        }
        self.plain_sets += 1;
        if self.plain_sets == 1 {
            // Client ids are unique within one set: nothing to merge with yet.
            for (client_id, sub) in &set.plain {
                if !(sub.options.no_local && **client_id == *self.publisher) {
                    self.out
                        .push(new_route(client_id, &sub.handle, &sub.options));
                }
            }
            return;
        }
        self.index_if_large();
        for (client_id, sub) in &set.plain {
            if sub.options.no_local && **client_id == *self.publisher {
                continue;
            }
            let existing = match &self.index {
                Some(index) => index.get(&**client_id).copied(),
                None => self.out[self.start..]
                    .iter()
                    .position(|r| r.client_id == *client_id)
                    .map(|i| self.start + i),
            };
            match existing {
                Some(i) => merge(&mut self.out[i], &sub.options),
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
    if let Some(id) = options.subscription_identifier
        && !route.subscription_identifiers.contains(&id)
    {
        route.subscription_identifiers.push(id);
    }
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
    fn remove_client_and_remove_all() {
        let mut t = SubscriptionTable::default();
        let a = cid("a");
        let b = cid("b");
        for f in ["x", "y/+", "$share/g/z"] {
            t.subscribe(&a, 1, f, opts(QoS::AtMostOnce, None));
            t.subscribe(&b, 2, f, opts(QoS::AtLeastOnce, None));
        }
        assert_eq!(t.len(), 6);
        let mut filters: Vec<_> = t
            .subscriptions_of("a")
            .into_iter()
            .map(|(f, _)| f.to_owned())
            .collect();
        filters.sort();
        assert_eq!(filters, ["$share/g/z", "x", "y/+"]);
        assert_eq!(
            t.subscription("b", "y/+").map(|o| o.qos),
            Some(QoS::AtLeastOnce)
        );
        assert_eq!(t.subscription("b", "y/#"), None);

        t.remove_client("a", filters.iter().map(String::as_str));
        assert_eq!(t.len(), 3);
        assert!(t.subscriptions_of("a").is_empty());
        assert_eq!(clients(&route(&t, "x", "p")), ["b"]);
        assert_eq!(clients(&route(&t, "z", "p")), ["b"]);

        assert_eq!(t.update_handle("b", &5), 3);
        assert_eq!(route(&t, "y/q", "p")[0].handle, 5);
        assert_eq!(route(&t, "z", "p")[0].handle, 5);

        assert_eq!(t.remove_all("b"), 3);
        assert_eq!(t.remove_all("b"), 0);
        assert!(t.is_empty());
        assert_eq!(t.node_count(), 1);
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
        assert!(!t.by_client.contains_key("a"));
    }
}
