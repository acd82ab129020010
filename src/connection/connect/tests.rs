use super::*;
use std::time::Duration;

use bytes::Bytes;

use crate::protocol::QoS;

fn limits() -> Limits {
    Limits::default()
}

fn v5(id: &str) -> Connect {
    Connect::new(Version::V5, id)
}

fn will(topic: &str) -> Will {
    Will {
        topic: topic.to_string(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        delay_interval: 0,
        properties: Default::default(),
    }
}

#[test]
fn a_plain_connect_negotiates_the_clients_values() {
    let connect = Connect {
        keep_alive: 30,
        session_expiry_interval: Some(600),
        receive_maximum: Some(10),
        maximum_packet_size: Some(4096),
        topic_alias_maximum: Some(5),
        ..v5("c")
    };
    let n = negotiate(&connect, &limits(), 7200).expect("accepted");
    assert_eq!(n.client_id.as_deref(), Some("c"));
    assert_eq!((n.keep_alive, n.server_keep_alive), (30, None));
    assert_eq!((n.expiry, n.expiry_capped), (600, false));
    assert_eq!(n.client_receive_maximum, 10);
    assert_eq!(n.client_maximum_packet_size, Some(4096));
    assert_eq!(n.client_topic_alias_maximum, 5);
    assert_eq!(
        keep_alive_deadline(n.keep_alive),
        Some(Duration::from_secs(45))
    );
    assert_eq!(keep_alive_deadline(0), None);
}

#[test]
fn defaults_when_the_client_says_nothing() {
    let n = negotiate(&v5("c"), &limits(), 7200).expect("accepted");
    assert_eq!(n.client_receive_maximum, u16::MAX);
    assert_eq!(n.client_topic_alias_maximum, 0);
    assert_eq!(n.expiry, 0);
    let zero = Connect {
        receive_maximum: Some(0),
        ..v5("c")
    };
    // 0 is a protocol error caught by the decoder; here it is at least never a zero window.
    assert_eq!(
        negotiate(&zero, &limits(), 7200)
            .expect("ok")
            .client_receive_maximum,
        1
    );
}

#[test]
fn session_expiry_is_capped_and_3_1_1_persistent_sessions_get_the_cap() {
    let long = Connect {
        session_expiry_interval: Some(u32::MAX),
        ..v5("c")
    };
    let n = negotiate(&long, &limits(), 7200).expect("accepted");
    assert_eq!((n.expiry, n.expiry_capped), (7200, true));
    let persistent = Connect {
        clean_start: false,
        ..Connect::new(Version::V311, "c")
    };
    assert_eq!(
        negotiate(&persistent, &limits(), 7200).expect("ok").expiry,
        7200
    );
    let clean = Connect::new(Version::V311, "c");
    assert_eq!(negotiate(&clean, &limits(), 7200).expect("ok").expiry, 0);
}

#[test]
fn keep_alive_above_the_cap_is_lowered_for_v5_and_refused_for_3_1_1() {
    let capped = Limits {
        max_keep_alive: Duration::from_secs(60),
        ..limits()
    };
    let asks = |version, keep_alive| Connect {
        keep_alive,
        ..Connect::new(version, "c")
    };
    let n = negotiate(&asks(Version::V5, 120), &capped, 7200).expect("accepted");
    assert_eq!((n.keep_alive, n.server_keep_alive), (60, Some(60)));
    let n = negotiate(&asks(Version::V5, 0), &capped, 7200).expect("accepted");
    assert_eq!((n.keep_alive, n.server_keep_alive), (60, Some(60)));
    let n = negotiate(&asks(Version::V5, 30), &capped, 7200).expect("accepted");
    assert_eq!((n.keep_alive, n.server_keep_alive), (30, None));
    let refused = negotiate(&asks(Version::V311, 120), &capped, 7200).expect_err("refused");
    assert_eq!((refused.code, refused.connack), (0x85, true));
}

#[test]
fn empty_client_ids() {
    let n = negotiate(&v5(""), &limits(), 7200).expect("assigned");
    assert_eq!(n.client_id, None);
    let persistent = Connect {
        clean_start: false,
        ..Connect::new(Version::V311, "")
    };
    // MQTT-3.1.3-8.
    assert_eq!(
        negotiate(&persistent, &limits(), 7200)
            .expect_err("refused")
            .code,
        0x85
    );
    let clean = Connect::new(Version::V311, "");
    assert!(negotiate(&clean, &limits(), 7200).is_ok());
}

#[test]
fn bad_wills_are_refused() {
    let with = |version, topic: &str| Connect {
        will: Some(will(topic)),
        ..Connect::new(version, "c")
    };
    assert!(negotiate(&with(Version::V5, "a/b"), &limits(), 7200).is_ok());
    for topic in ["a/+", "#", "a/#"] {
        let r = negotiate(&with(Version::V5, topic), &limits(), 7200).expect_err(topic);
        assert_eq!((r.code, r.connack), (0x90, true), "{topic}");
    }
    let deep = vec!["d"; 129].join("/");
    assert_eq!(
        negotiate(&with(Version::V5, &deep), &limits(), 7200)
            .expect_err("deep")
            .code,
        0x90
    );
    // MQTT-3.1.4-1: a zero-length will topic makes a 3.1.1 CONNECT malformed: no CONNACK.
    let r = negotiate(&with(Version::V311, ""), &limits(), 7200).expect_err("empty");
    assert!(!r.connack);
}

#[test]
fn only_the_jwt_authentication_method_is_taken() {
    let method = |name: &str| Connect {
        authentication_method: Some(name.to_string()),
        ..v5("c")
    };
    assert_eq!(
        negotiate(&method("SCRAM-SHA-1"), &limits(), 7200)
            .expect_err("refused")
            .code,
        0x8C
    );
    // The name is case-sensitive, like every UTF-8 string of the protocol.
    assert!(negotiate(&method("jwt"), &limits(), 7200).is_err());
    // "JWT" passes here; the token is checked at login.
    assert!(negotiate(&method("JWT"), &limits(), 7200).is_ok());
}
