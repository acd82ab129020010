//! MQTT 3.1.1 with a real third-party client (rumqttc): QoS 0/1/2 both ways, retained
//! messages, wills, persistent sessions, shared subscriptions.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Packet>,
    task: JoinHandle<()>,
}

async fn client(broker: &TestBroker, id: &str, clean: bool, will: Option<LastWill>) -> Client {
    let mut options = MqttOptions::new(id, broker.addr.ip().to_string(), broker.addr.port());
    options
        .set_clean_session(clean)
        .set_keep_alive(Duration::from_secs(30));
    if let Some(will) = will {
        options.set_last_will(will);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (tx, mut events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(packet) = event
                && tx.send(packet).is_err()
            {
                break;
            }
        }
    });
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(Packet::ConnAck(_))) => {}
        other => panic!("{id}: expected CONNACK, got {other:?}"),
    }
    Client {
        client,
        events,
        task,
    }
}

impl Client {
    async fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            match tokio::time::timeout(WAIT, self.events.recv()).await {
                Ok(Some(Packet::Publish(p))) => return p,
                Ok(Some(_)) => {}
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    async fn wait_for(&mut self, want: impl Fn(&Packet) -> bool) {
        loop {
            match tokio::time::timeout(WAIT, self.events.recv()).await {
                Ok(Some(p)) if want(&p) => return,
                Ok(Some(_)) => {}
                other => panic!("expected packet, got {other:?}"),
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        self.wait_for(|p| matches!(p, Packet::SubAck(_))).await;
    }
}

#[tokio::test]
async fn qos_0_1_2_in_both_directions() {
    let broker = start().await;
    let mut sub = client(&broker, "sub", true, None).await;
    sub.subscribe("a/+", QoS::ExactlyOnce).await;
    let publisher = client(&broker, "pub", true, None).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publisher
            .client
            .publish(format!("a/{i}"), qos, false, vec![i as u8])
            .await
            .expect("publish");
        let p = sub.next_publish().await;
        assert_eq!(p.topic, format!("a/{i}"));
        assert_eq!(p.qos, qos);
        assert_eq!(p.payload.as_ref(), &[i as u8]);
        assert!(!p.retain);
    }
    broker.stop().await;
}

#[tokio::test]
async fn granted_qos_caps_delivery() {
    let broker = start().await;
    let mut sub = client(&broker, "sub", true, None).await;
    sub.subscribe("x", QoS::AtLeastOnce).await;
    let publisher = client(&broker, "pub", true, None).await;
    publisher
        .client
        .publish("x", QoS::ExactlyOnce, false, "m")
        .await
        .expect("publish");
    assert_eq!(sub.next_publish().await.qos, QoS::AtLeastOnce);
    broker.stop().await;
}

#[tokio::test]
async fn retained_set_replace_clear() {
    let broker = start().await;
    let publisher = client(&broker, "pub", true, None).await;
    publisher
        .client
        .publish("r/1", QoS::AtLeastOnce, true, "first")
        .await
        .expect("publish");
    publisher
        .client
        .publish("r/1", QoS::AtLeastOnce, true, "second")
        .await
        .expect("publish");
    publisher
        .client
        .publish("r/2", QoS::AtLeastOnce, true, "two")
        .await
        .expect("publish");
    publisher
        .client
        .publish("r/2", QoS::AtLeastOnce, true, "")
        .await
        .expect("clear");
    publisher
        .client
        .publish("marker", QoS::AtLeastOnce, true, "m")
        .await
        .expect("publish");
    // A later subscriber sees the retained state once the marker is retained too.
    let mut probe = client(&broker, "probe", true, None).await;
    probe.subscribe("marker", QoS::AtLeastOnce).await;
    probe.next_publish().await;
    let mut sub = client(&broker, "sub", true, None).await;
    sub.subscribe("r/#", QoS::AtLeastOnce).await;
    let p = sub.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_ref(), p.retain),
        ("r/1", &b"second"[..], true)
    );
    sub.subscribe("marker", QoS::AtLeastOnce).await;
    let p = sub.next_publish().await;
    assert_eq!(
        p.topic, "marker",
        "r/2 was cleared, so nothing else came first"
    );
    broker.stop().await;
}

#[tokio::test]
async fn will_fires_on_abrupt_close_not_on_disconnect() {
    let broker = start().await;
    let mut watcher = client(&broker, "watcher", true, None).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    let polite = client(
        &broker,
        "polite",
        true,
        Some(LastWill::new(
            "wills/polite",
            "gone",
            QoS::AtLeastOnce,
            false,
        )),
    )
    .await;
    polite.client.disconnect().await.expect("disconnect");
    broker
        .wait_metric(
            "brokk_connections_closed_total{reason=\"closed_by_client\"}",
            1.0,
        )
        .await;

    let rude = client(
        &broker,
        "rude",
        true,
        Some(LastWill::new("wills/rude", "gone", QoS::AtLeastOnce, false)),
    )
    .await;
    rude.task.abort();
    drop(rude);
    let p = watcher.next_publish().await;
    assert_eq!(
        p.topic, "wills/rude",
        "only the abrupt close publishes its will"
    );
    broker.stop().await;
}

#[tokio::test]
async fn persistent_session_queues_while_offline() {
    let broker = start().await;
    let mut sub = client(&broker, "persist", false, None).await;
    sub.subscribe("p", QoS::AtLeastOnce).await;
    sub.client.disconnect().await.expect("disconnect");
    sub.task.await.ok();
    broker
        .wait_metric(
            "brokk_connections_closed_total{reason=\"closed_by_client\"}",
            1.0,
        )
        .await;

    let publisher = client(&broker, "pub", true, None).await;
    for i in 0..3u8 {
        publisher
            .client
            .publish("p", QoS::AtLeastOnce, false, vec![i])
            .await
            .expect("publish");
    }
    publisher
        .client
        .publish("p", QoS::AtMostOnce, false, vec![9])
        .await
        .expect("publish");
    let mut probe = client(&broker, "probe", true, None).await;
    probe.subscribe("p", QoS::AtLeastOnce).await;
    publisher
        .client
        .publish("p", QoS::AtLeastOnce, false, vec![3])
        .await
        .expect("publish");
    assert_eq!(probe.next_publish().await.payload.as_ref(), &[3]);

    let mut sub = client(&broker, "persist", false, None).await;
    let got: Vec<u8> = [
        sub.next_publish().await,
        sub.next_publish().await,
        sub.next_publish().await,
        sub.next_publish().await,
    ]
    .iter()
    .map(|p| p.payload[0])
    .collect();
    assert_eq!(
        got,
        vec![0, 1, 2, 3],
        "QoS 1 queued in order; QoS 0 not queued offline"
    );
    broker.stop().await;
}

#[tokio::test]
async fn shared_subscription_delivers_each_message_once() {
    let broker = start().await;
    let mut a = client(&broker, "a", true, None).await;
    let mut b = client(&broker, "b", true, None).await;
    a.subscribe("$share/g/jobs/+", QoS::AtLeastOnce).await;
    b.subscribe("$share/g/jobs/+", QoS::AtLeastOnce).await;
    let publisher = client(&broker, "pub", true, None).await;
    for i in 0..10u8 {
        publisher
            .client
            .publish("jobs/x", QoS::AtLeastOnce, false, vec![i])
            .await
            .expect("publish");
    }
    let mut seen = Vec::new();
    let mut from_a = 0;
    while seen.len() < 10 {
        tokio::select! {
            p = a.next_publish() => { seen.push(p.payload[0]); from_a += 1; }
            p = b.next_publish() => seen.push(p.payload[0]),
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..10).collect::<Vec<u8>>(),
        "each message exactly once across the group"
    );
    assert!(
        from_a > 0 && from_a < 10,
        "both members get work ({from_a} of 10 to a)"
    );
    broker.stop().await;
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let broker = start().await;
    let mut sub = client(&broker, "sub", true, None).await;
    sub.subscribe("o/#", QoS::AtMostOnce).await;
    sub.subscribe("o/+", QoS::ExactlyOnce).await;
    // Subscribed before anything is published: `subscribe` skips packets until its SUBACK.
    sub.subscribe("marker", QoS::AtMostOnce).await;
    let publisher = client(&broker, "pub", true, None).await;
    publisher
        .client
        .publish("o/1", QoS::ExactlyOnce, false, "one")
        .await
        .expect("publish");
    let p = sub.next_publish().await;
    assert_eq!((p.topic.as_str(), p.qos), ("o/1", QoS::ExactlyOnce));
    publisher
        .client
        .publish("marker", QoS::AtMostOnce, false, "m")
        .await
        .expect("publish");
    assert_eq!(
        sub.next_publish().await.topic,
        "marker",
        "MQTT-3.3.5-1: one copy only"
    );
    broker.stop().await;
}

#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let broker = start().await;
    let mut sub = client(&broker, "sub", true, None).await;
    sub.subscribe("#", QoS::AtMostOnce).await;
    sub.subscribe("+/info", QoS::AtMostOnce).await;
    let publisher = client(&broker, "pub", true, None).await;
    publisher
        .client
        .publish("$SYS/info", QoS::AtMostOnce, false, "sys")
        .await
        .expect("publish");
    publisher
        .client
        .publish("plain", QoS::AtMostOnce, false, "p")
        .await
        .expect("publish");
    assert_eq!(sub.next_publish().await.topic, "plain");
    broker.stop().await;
}
