//! `$SYS`: the broker's figures arrive retained to a `$SYS/#` subscriber, under Mosquitto's
//! names and brokk's own close counts, and never to `#` or `+/...` (MQTT-4.7.2-1).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use brokk::protocol::{
    Packet, Publish, QoS, RetainHandling, Subscribe, SubscriptionRequest, Version,
};
use common::admin::http;
use common::*;

async fn subscribe(client: &mut Raw, filters: &[&str]) {
    client
        .send_packet(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: filters
                .iter()
                .map(|f| SubscriptionRequest {
                    filter: f.to_string(),
                    qos: QoS::AtMostOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendAtSubscribe,
                })
                .collect(),
            subscription_identifier: None,
            user_properties: vec![],
        }))
        .await;
    assert!(matches!(client.recv().await, Some(Packet::SubAck(_))));
}

async fn next_publish(client: &mut Raw) -> Publish {
    loop {
        match client.recv().await {
            Some(Packet::Publish(p)) => return p,
            Some(_) => {}
            None => panic!("closed"),
        }
    }
}

#[tokio::test]
async fn sys_topics_reach_sys_subscribers_retained_and_not_wildcards() {
    let broker = start_with(|c| c.admin.sys_interval = Duration::from_secs(1)).await;
    let (mut sys, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "sys")).await;
    subscribe(&mut sys, &["$SYS/#"]).await;
    // The first round is published at start (this subscriber may see it live or retained).
    while next_publish(&mut sys).await.topic != "$SYS/broker/version" {}
    // A later subscriber gets every topic retained (a round may also send it some live).
    let (mut late, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "late")).await;
    subscribe(&mut late, &["$SYS/#"]).await;
    let mut seen: HashMap<String, String> = HashMap::new();
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/clients/total",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/bytes/received",
        "$SYS/brokk/closes/closed_by_controller",
        "$SYS/brokk/closes/revoked",
    ];
    while !wanted.iter().all(|t| seen.contains_key(*t)) {
        let p = next_publish(&mut late).await;
        assert!(p.topic.starts_with("$SYS/"), "{}", p.topic);
        if p.retain {
            seen.insert(p.topic, String::from_utf8_lossy(&p.payload).to_string());
        }
    }
    assert!(seen["$SYS/broker/version"].starts_with("brokk version "));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));

    // `#` and `+/...` do not match $SYS topics, retained or live: the first message such a
    // subscriber gets is an ordinary one published after it subscribed.
    let (mut all, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "all")).await;
    subscribe(&mut all, &["#", "+/broker/#", "+/brokk/+/+"]).await;
    let (mut publisher, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "pub")).await;
    publisher
        .send_packet(&publish("plain/topic", QoS::AtMostOnce, 0, b"marker"))
        .await;
    let first = next_publish(&mut all).await;
    assert_eq!(first.topic, "plain/topic");

    // A kick shows in $SYS/brokk/closes/closed_by_controller at a later round.
    let (_victim, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "victim")).await;
    let admin = broker.admin.expect("admin API");
    let (status, _) = http(admin, "DELETE", "/v1/sessions/victim", None).await;
    assert_eq!(status, 204);
    loop {
        let p = next_publish(&mut sys).await;
        if p.topic == "$SYS/brokk/closes/closed_by_controller" {
            let n: u64 = String::from_utf8_lossy(&p.payload).parse().expect("count");
            if n >= 1 {
                break;
            }
        }
    }
    // Still nothing from $SYS for the wildcard subscriber, after several rounds.
    publisher
        .send_packet(&publish("plain/topic", QoS::AtMostOnce, 0, b"again"))
        .await;
    assert_eq!(next_publish(&mut all).await.payload.as_ref(), b"again");
    broker.stop().await;
}
