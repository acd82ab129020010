//! MQTT 5.0 with a real third-party client (rumqttc v5): QoS 0/1/2, retained, wills with
//! delay, persistent sessions, shared subscriptions, takeover with 0x8E, properties passed
//! through, subscription identifiers, No Local, topic aliases, message expiry.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Disconnect, DisconnectReasonCode, Filter, LastWill, LastWillProperties, Packet,
    PublishProperties, SubscribeProperties,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

fn will_properties(delay: u32) -> LastWillProperties {
    LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    }
}

struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Packet>,
    task: JoinHandle<()>,
}

fn options(broker: &TestBroker, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, broker.addr.ip().to_string(), broker.addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

async fn client_with(options: MqttOptions) -> (Client, rumqttc::v5::mqttbytes::v5::ConnAck) {
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let (tx, mut events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(packet)) => {
                    if tx.send(packet).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                // rumqttc reports a server DISCONNECT as an error; pass it on as the packet.
                Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                    reason_code,
                    ..
                })) => {
                    let _ = tx.send(Packet::Disconnect(Disconnect::new(reason_code)));
                    break;
                }
                Err(_) => break,
            }
        }
    });
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(Packet::ConnAck(connack))) => (
            Client {
                client,
                events,
                task,
            },
            connack,
        ),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn client(broker: &TestBroker, id: &str) -> Client {
    client_with(options(broker, id)).await.0
}

impl Client {
    async fn next(&mut self) -> Packet {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(p)) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    async fn next_publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        loop {
            if let Packet::Publish(p) = self.next().await {
                return p;
            }
        }
    }

    async fn suback(&mut self) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        loop {
            if let Packet::SubAck(ack) = self.next().await {
                return ack.return_codes;
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        self.suback().await;
    }
}

#[tokio::test]
async fn qos_0_1_2_and_connack_limits() {
    let broker = start().await;
    let (mut sub, connack) = client_with(options(&broker, "sub")).await;
    let props = connack
        .properties
        .expect("v5 CONNACK carries the server's limits");
    assert_eq!(props.receive_max, Some(64));
    assert_eq!(props.max_packet_size, Some(1_048_576));
    sub.subscribe("a/#", QoS::ExactlyOnce).await;
    let publisher = client(&broker, "pub").await;
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
        assert_eq!((p.qos, p.payload.as_ref()), (qos, &[i as u8][..]));
    }
    broker.stop().await;
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_identifier() {
    let broker = start().await;
    let (_c, connack) = client_with(options(&broker, "")).await;
    let assigned = connack
        .properties
        .and_then(|p| p.assigned_client_identifier);
    assert!(assigned.is_some_and(|id| !id.is_empty()));
    broker.stop().await;
}

#[tokio::test]
async fn takeover_sends_0x8e_to_the_old_client() {
    let broker = start().await;
    let mut old = client(&broker, "same").await;
    let _new = client(&broker, "same").await;
    loop {
        if let Packet::Disconnect(d) = old.next().await {
            assert_eq!(d.reason_code, DisconnectReasonCode::SessionTakenOver);
            break;
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn properties_pass_through_and_subscription_ids_are_all_attached() {
    let broker = start().await;
    let mut sub = client(&broker, "sub").await;
    let props = |id| SubscribeProperties {
        id: Some(id),
        user_properties: vec![],
    };
    sub.client
        .subscribe_with_properties("p/+", QoS::AtLeastOnce, props(7))
        .await
        .expect("sub");
    sub.suback().await;
    sub.client
        .subscribe_with_properties("p/#", QoS::AtMostOnce, props(9))
        .await
        .expect("sub");
    sub.suback().await;
    let publisher = client(&broker, "pub").await;
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"corr")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        message_expiry_interval: Some(60),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("p/1", QoS::AtLeastOnce, false, "body", properties)
        .await
        .expect("publish");
    let p = sub.next_publish().await;
    assert_eq!(
        p.qos,
        QoS::AtLeastOnce,
        "one copy at the highest granted QoS"
    );
    let got = p.properties.expect("properties");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(
        got.user_properties,
        vec![
            ("k".to_string(), "v".to_string()),
            ("k".to_string(), "w".to_string())
        ]
    );
    assert!(
        got.message_expiry_interval
            .is_some_and(|s| (58..=60).contains(&s))
    );
    let mut ids = got.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![7, 9]);
    broker.stop().await;
}

#[tokio::test]
async fn no_local_skips_own_messages() {
    let broker = start().await;
    let mut c = client(&broker, "self").await;
    let filter = Filter {
        nolocal: true,
        ..Filter::new("n", QoS::AtMostOnce)
    };
    c.client
        .subscribe_many([filter, Filter::new("marker", QoS::AtMostOnce)])
        .await
        .expect("sub");
    c.suback().await;
    c.client
        .publish("n", QoS::AtMostOnce, false, "mine")
        .await
        .expect("publish");
    c.client
        .publish("marker", QoS::AtMostOnce, false, "m")
        .await
        .expect("publish");
    let p = c.next_publish().await;
    assert_eq!(p.topic.as_ref(), b"marker");
    broker.stop().await;
}

#[tokio::test]
async fn delayed_will_is_cancelled_when_the_session_resumes_in_time() {
    let broker = start().await;
    let mut watcher = client(&broker, "watcher").await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;

    let will = |topic: &str, delay| {
        LastWill::new(
            topic,
            "gone",
            QoS::AtLeastOnce,
            false,
            Some(will_properties(delay)),
        )
    };
    // Resumes in time: no will.
    let mut opts = options(&broker, "delayed");
    opts.set_clean_start(false)
        .set_session_expiry_interval(Some(60))
        .set_last_will(will("will/delayed", 2));
    let (c, _) = client_with(opts.clone()).await;
    c.task.abort();
    drop(c);
    broker
        .wait_metric(
            "brokk_connections_closed_total{reason=\"connection_lost\"}",
            1.0,
        )
        .await;
    let (_back, connack) = client_with(opts).await;
    assert!(connack.session_present);

    // Never comes back: the will fires after its delay.
    let mut opts = options(&broker, "gone");
    opts.set_clean_start(false)
        .set_session_expiry_interval(Some(60))
        .set_last_will(will("will/gone", 1));
    let (c, _) = client_with(opts).await;
    let started = Instant::now();
    c.task.abort();
    drop(c);
    let p = watcher.next_publish().await;
    assert_eq!(
        p.topic.as_ref(),
        b"will/gone",
        "the cancelled will never arrives, the other does"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    broker.stop().await;
}

#[tokio::test]
async fn will_with_session_expiry_zero_goes_at_once() {
    let broker = start().await;
    let mut watcher = client(&broker, "watcher").await;
    watcher.subscribe("w", QoS::AtLeastOnce).await;
    let mut opts = options(&broker, "short");
    let props = will_properties(30);
    opts.set_last_will(LastWill::new(
        "w",
        "bye",
        QoS::AtLeastOnce,
        false,
        Some(props),
    ));
    let (c, _) = client_with(opts).await;
    let started = Instant::now();
    c.task.abort();
    drop(c);
    watcher.next_publish().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "session ends at once, so the will goes at once"
    );
    broker.stop().await;
}

#[tokio::test]
async fn shared_subscription_and_retained_with_v5() {
    let broker = start().await;
    let publisher = client(&broker, "pub").await;
    publisher
        .client
        .publish("s/r", QoS::AtLeastOnce, true, "kept")
        .await
        .expect("publish");
    let mut probe = client(&broker, "probe").await;
    probe.subscribe("s/r", QoS::AtLeastOnce).await;
    let p = probe.next_publish().await;
    assert!(p.retain);

    let mut a = client(&broker, "a").await;
    a.subscribe("$share/g/s/+", QoS::AtLeastOnce).await;
    publisher
        .client
        .publish("s/x", QoS::AtLeastOnce, false, "job")
        .await
        .expect("publish");
    let p = a.next_publish().await;
    assert_eq!(
        p.payload.as_ref(),
        b"job",
        "no retained message for a shared subscription, then the job"
    );
    broker.stop().await;
}

#[tokio::test]
async fn message_expiry_drops_stale_queued_messages() {
    let broker = start().await;
    let mut opts = options(&broker, "late");
    opts.set_clean_start(false)
        .set_session_expiry_interval(Some(60));
    let (mut sub, _) = client_with(opts.clone()).await;
    sub.subscribe("e", QoS::AtLeastOnce).await;
    sub.client.disconnect().await.expect("disconnect");
    sub.task.await.ok();
    broker
        .wait_metric(
            "brokk_connections_closed_total{reason=\"closed_by_client\"}",
            1.0,
        )
        .await;
    let publisher = client(&broker, "pub").await;
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("e", QoS::AtLeastOnce, false, "stale", short)
        .await
        .expect("p");
    publisher
        .client
        .publish("e", QoS::AtLeastOnce, false, "fresh")
        .await
        .expect("p");
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the first message's expiry pass
    let (mut sub, _) = client_with(opts).await;
    assert_eq!(sub.next_publish().await.payload.as_ref(), b"fresh");
    assert_eq!(
        broker
            .metric("brokk_messages_dropped_total{reason=\"expired\"}")
            .await,
        1.0
    );
    broker.stop().await;
}

#[tokio::test]
async fn topic_alias_from_client_is_resolved() {
    let broker = start().await;
    let mut sub = client(&broker, "sub").await;
    sub.subscribe("alias/topic", QoS::AtMostOnce).await;
    let mut raw = Raw::connect(
        broker.addr,
        connect_packet(brokk::protocol::Version::V5, "aliaser"),
    )
    .await
    .0;
    let mut publish = brokk::protocol::Publish {
        dup: false,
        qos: brokk::protocol::QoS::AtMostOnce,
        retain: false,
        topic: "alias/topic".into(),
        packet_id: 0,
        payload: Bytes::from_static(b"1"),
        topic_alias: Some(3),
        subscription_identifiers: vec![],
        properties: Default::default(),
    };
    raw.send_packet(&brokk::protocol::Packet::Publish(publish.clone()))
        .await;
    publish.topic.clear();
    publish.payload = Bytes::from_static(b"2");
    raw.send_packet(&brokk::protocol::Packet::Publish(publish))
        .await;
    assert_eq!(sub.next_publish().await.payload.as_ref(), b"1");
    let p = sub.next_publish().await;
    assert_eq!(
        (p.topic.as_ref(), p.payload.as_ref()),
        (&b"alias/topic"[..], &b"2"[..])
    );
    broker.stop().await;
}

fn raw_subscribe(filter: &str) -> brokk::protocol::Packet {
    brokk::protocol::Packet::Subscribe(brokk::protocol::Subscribe {
        packet_id: 1,
        filters: vec![brokk::protocol::SubscriptionRequest {
            filter: filter.into(),
            qos: brokk::protocol::QoS::AtMostOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: brokk::protocol::RetainHandling::SendAtSubscribe,
        }],
        subscription_identifier: None,
        user_properties: vec![],
    })
}

/// Outbound topic aliases: a client that accepts them gets the topic once, then the alias.
#[tokio::test]
async fn topic_alias_towards_the_client() {
    let broker = start().await;
    let mut connect = connect_packet(brokk::protocol::Version::V5, "alias-in");
    connect.topic_alias_maximum = Some(1);
    let (mut sub, _) = Raw::connect(broker.addr, connect).await;
    sub.send_packet(&raw_subscribe("al/#")).await;
    assert!(matches!(
        sub.recv().await,
        Some(brokk::protocol::Packet::SubAck(_))
    ));
    let publisher = client(&broker, "pub").await;
    for topic in ["al/a", "al/a", "al/b"] {
        publisher
            .client
            .publish(topic, QoS::AtMostOnce, false, "x")
            .await
            .expect("publish");
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        if let Some(brokk::protocol::Packet::Publish(p)) = sub.recv().await {
            seen.push((p.topic, p.topic_alias));
        }
    }
    assert_eq!(
        seen,
        vec![
            ("al/a".to_string(), Some(1)),
            (String::new(), Some(1)),
            ("al/b".to_string(), None), // the one alias the client allows is taken
        ]
    );
    broker.stop().await;
}

/// MQTT-3.1.2-24: a message larger than the client's Maximum Packet Size is not sent to it,
/// and the drop is counted.
#[tokio::test]
async fn client_maximum_packet_size_is_honoured_and_counted() {
    let broker = start().await;
    let mut connect = connect_packet(brokk::protocol::Version::V5, "small");
    connect.maximum_packet_size = Some(64);
    let (mut sub, _) = Raw::connect(broker.addr, connect).await;
    sub.send_packet(&raw_subscribe("m")).await;
    assert!(matches!(
        sub.recv().await,
        Some(brokk::protocol::Packet::SubAck(_))
    ));
    let publisher = client(&broker, "pub").await;
    publisher
        .client
        .publish("m", QoS::AtMostOnce, false, vec![0u8; 200])
        .await
        .expect("publish");
    publisher
        .client
        .publish("m", QoS::AtMostOnce, false, "small")
        .await
        .expect("publish");
    match sub.recv().await {
        Some(brokk::protocol::Packet::Publish(p)) => assert_eq!(&p.payload[..], b"small"),
        other => panic!("expected the small message only, got {other:?}"),
    }
    assert_eq!(
        broker
            .metric("brokk_messages_dropped_total{reason=\"too_large_for_client\"}")
            .await,
        1.0
    );
    broker.stop().await;
}
