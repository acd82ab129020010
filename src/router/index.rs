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

use super::{ParsedFilter, Route, SubscriptionOptions, parse_filter};

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

fn split_filter(filter: &str) -> ParsedFilter<'_> {
    // Callers validate first; an invalid filter is indexed as a plain one (it matches nothing
    // harmful: its levels are compared literally).
    debug_assert!(
        parse_filter(filter).is_ok(),
        "unvalidated filter {filter:?}"
    );
    parse_filter(filter).unwrap_or(ParsedFilter {
        share_group: None,
        filter,
    })
}

impl<H: Clone> SubscriptionTable<H> {
    /// Adds or replaces `client_id`'s subscription to `filter` (plain or `$share/...`).
    /// Returns whether it already existed (for Retain Handling 1). The filter must have been
    /// validated with [`parse_filter`].
    pub fn subscribe(
        &mut self,
        client_id: &Arc<str>,
        handle: H,
        filter: &str,
        options: SubscriptionOptions,
    ) -> bool {
        let parsed = split_filter(filter);
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

    /// Removes one subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, client_id: &str, filter: &str) -> bool {
        let parsed = split_filter(filter);
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
            let parsed = split_filter(filter);
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
        let parsed = split_filter(filter);
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
            let parsed = split_filter(filter);
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
