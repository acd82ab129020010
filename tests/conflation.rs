//! `session.conflate`: messages on conflated topics replace an older queued one for the same
//! topic, so a returning client gets the latest value per topic; counted as `conflated`.

mod common;

use brokk::protocol::{
    Ack, Connect, Packet, QoS, RetainHandling, Subscribe, SubscriptionRequest, Version,
};
use common::*;

async fn run(disk: bool) {
    let dir = tempfile::tempdir().expect("dir");
    let broker = start_with(|c| {
        c.session.conflate = vec!["sensors/#".to_string()];
        if disk {
            c.storage.backend = brokk::config::StorageBackend::Disk;
            c.storage.path = dir.path().join("store");
        }
    })
    .await;
    let persistent = Connect {
        clean_start: false,
        session_expiry_interval: Some(600),
        ..connect_packet(Version::V5, "dash")
    };
    let (mut sub, _) = Raw::connect(broker.addr, persistent.clone()).await;
    sub.send_packet(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscriptionRequest {
            filter: "#".to_string(),
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }],
        subscription_identifier: None,
        user_properties: Vec::new(),
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    sub.send(&[0xE0, 0x00]).await;
    sub.until_closed().await;

    let (mut publisher, _) = Raw::connect(broker.addr, connect_packet(Version::V5, "p")).await;
    let mut id = 1;
    for (topic, n) in [("sensors/t1", 10), ("sensors/t2", 5), ("other/x", 3)] {
        for i in 0..n {
            publisher
                .send_packet(&publish(
                    topic,
                    QoS::AtLeastOnce,
                    id,
                    format!("{topic}={i}").as_bytes(),
                ))
                .await;
            assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
            id += 1;
        }
    }
    let (mut sub, ack) = Raw::connect(broker.addr, persistent).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while got.len() < 5 {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                got.push(String::from_utf8(p.payload.to_vec()).expect("utf-8"));
                sub.send_packet(&Packet::PubAck(Ack::success(p.packet_id)))
                    .await;
            }
            other => panic!("expected PUBLISH, got {other:?} after {got:?}"),
        }
    }
    got.sort();
    assert_eq!(
        got,
        [
            "other/x=0",
            "other/x=1",
            "other/x=2",
            "sensors/t1=9",
            "sensors/t2=4"
        ]
    );
    sub.send(&[0xC0, 0x00]).await;
    assert_eq!(sub.recv().await, Some(Packet::PingResp), "nothing more");
    let dropped = "brokk_messages_dropped_total{reason=\"conflated\"}";
    assert_eq!(broker.metric(dropped).await, 13.0);
    broker.stop().await;
}

#[tokio::test]
async fn a_returning_client_gets_the_latest_value_per_conflated_topic() {
    run(false).await;
}

#[tokio::test]
async fn conflation_holds_for_a_session_kept_on_disk() {
    run(true).await;
}
