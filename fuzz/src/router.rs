//! Target `router`: the subscription index and the retained store driven by a sequence of
//! operations on long and deep topics, checked against a plain model (a list of filters and a
//! map of retained topics, matched with `brokk::router::matches`).
//!
//! Input: a list of operations. Each is an opcode byte, a client byte, and a topic spec: a
//! 16-bit level count (up to 20,000 levels, so walks must not recurse) and a few bytes from
//! which the levels are drawn (cycled) out of a small alphabet that includes `+`, `#`, the
//! empty level and `$` levels.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use brokk::protocol::QoS;
use brokk::router::{
    RetainedStore, SubscriptionOptions, SubscriptionTable, matches, parse_filter,
    validate_topic_name,
};

const ALPHABET: [&str; 8] = ["a", "b", "+", "#", "", "$x", "long-level-name", "c"];
const MAX_LEVELS: usize = 20_000;

struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    /// A topic or filter: a level count, then up to 4 bytes picking levels (cycled).
    fn topic(&mut self) -> Option<String> {
        let count = (usize::from(self.byte()?) << 8 | usize::from(self.byte()?)) % MAX_LEVELS + 1;
        let picks: Vec<u8> = (0..4).filter_map(|_| self.byte()).collect();
        if picks.is_empty() {
            return None;
        }
        let levels: Vec<&str> = (0..count)
            .map(|i| ALPHABET[usize::from(picks[i % picks.len()]) % ALPHABET.len()])
            .collect();
        Some(levels.join("/"))
    }
}

#[derive(Default)]
struct Model {
    /// (client, plain filter) -> handle.
    subscriptions: BTreeMap<(u8, String), u32>,
    retained: BTreeMap<String, u32>,
}

fn options() -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::AtMostOnce,
        no_local: false,
        retain_as_published: false,
        subscription_identifier: None,
    }
}

pub fn router_target(data: &[u8]) {
    let mut input = Input { data };
    let mut table: SubscriptionTable<u32> = SubscriptionTable::default();
    let mut retained: RetainedStore<u32> = RetainedStore::default();
    let mut model = Model::default();
    let clients: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("c{i}"))).collect();
    let mut value = 0u32;
    while let (Some(op), Some(client)) = (input.byte(), input.byte()) {
        let Some(topic) = input.topic() else {
            break;
        };
        let client = client % 4;
        value += 1;
        match op % 6 {
            0 => {
                let valid = parse_filter(&topic).is_ok_and(|p| p.share_group.is_none());
                if valid {
                    let id = &clients[usize::from(client)];
                    let existed = table.subscribe(id, value, &topic, options());
                    let had = model.subscriptions.insert((client, topic), value).is_some();
                    assert_eq!(existed, had, "subscribe: existed");
                }
            }
            1 => {
                let removed = table.unsubscribe(&clients[usize::from(client)], &topic);
                let had = model.subscriptions.remove(&(client, topic)).is_some();
                assert_eq!(removed, had, "unsubscribe: existed");
            }
            2 => check_route(&table, &model, &clients, &topic),
            3 if validate_topic_name(&topic).is_ok() => {
                retained.set(&topic, Some(value));
                model.retained.insert(topic, value);
            }
            4 if validate_topic_name(&topic).is_ok() => {
                retained.set(&topic, None);
                model.retained.remove(&topic);
            }
            5 if parse_filter(&topic).is_ok_and(|p| p.share_group.is_none()) => {
                let mut got = Vec::new();
                retained.matching(&topic, &mut got);
                got.sort_unstable();
                let mut expected: Vec<u32> = model
                    .retained
                    .iter()
                    .filter(|(t, _)| matches(&topic, t))
                    .map(|(_, v)| *v)
                    .collect();
                expected.sort_unstable();
                assert_eq!(got, expected, "retained matching {topic:?}");
                assert_eq!(retained.count_matching(&topic), expected.len());
            }
            _ => {}
        }
        assert_eq!(table.len(), model.subscriptions.len(), "subscription count");
        assert_eq!(retained.len(), model.retained.len(), "retained count");
    }
    // Everything removed leaves nothing behind; dropping deep tries must not recurse either.
    for (client, filter) in std::mem::take(&mut model.subscriptions).into_keys() {
        assert!(table.unsubscribe(&clients[usize::from(client)], &filter));
    }
    assert!(table.is_empty());
}

fn check_route(table: &SubscriptionTable<u32>, model: &Model, clients: &[Arc<str>], topic: &str) {
    if validate_topic_name(topic).is_err() {
        return;
    }
    let mut routes = Vec::new();
    table.route(topic, "publisher", &mut routes);
    let got: BTreeSet<&str> = routes.iter().map(|r| &*r.client_id).collect();
    assert_eq!(got.len(), routes.len(), "one route per client");
    let expected: BTreeSet<&str> = model
        .subscriptions
        .keys()
        .filter(|(_, filter)| matches(filter, topic))
        .map(|(client, _)| &*clients[usize::from(*client)])
        .collect();
    assert_eq!(got, expected, "route {topic:?}");
}
