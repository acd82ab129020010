//! Revoking a user against the binary: its v5 and 3.1.1 clients are closed (v5 DISCONNECT
//! 0x87) and their sessions ended, its CONNECTs are refused (v5 0x87, 3.1.1 rc 5, counted as
//! `banned`) until `restore`, and every close is in the history and the metrics.

mod common;

use brokk::protocol::{Connect, Packet, Version};
use bytes::Bytes;
use common::admin::*;
use common::*;
use serde_json::Value;
use tokio::io::AsyncReadExt;

fn login(version: Version, client_id: &str, user: &str) -> Connect {
    Connect {
        clean_start: false,
        session_expiry_interval: (version == Version::V5).then_some(600),
        username: Some(user.to_string()),
        password: Some(Bytes::from(format!("pw-{user}"))),
        ..connect_packet(version, client_id)
    }
}

fn client_ids(page: &Value) -> Vec<String> {
    page["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["client_id"].as_str().expect("id").to_string())
        .collect()
}

/// A 3.1.1 CONNECT's answer as it is on the wire: the CONNACK's return code.
async fn v311_return_code(addr: std::net::SocketAddr, connect: Connect) -> u8 {
    let mut raw = Raw::open(addr).await;
    raw.version = Version::V311;
    raw.send_packet(&Packet::Connect(Box::new(connect))).await;
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, raw.stream.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(connack[..2], [0x20, 0x02], "a 3.1.1 CONNACK");
    connack[3]
}

#[tokio::test]
async fn a_revoked_user_is_closed_refused_and_restored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    for user in ["alice", "bob"] {
        brokk::auth::passwd_set(&passwd, user, &format!("pw-{user}")).expect("passwd");
    }
    let b = Binary::start_in(
        dir,
        &format!(
            "{ADMIN}[auth]\nallow_anonymous = false\npassword_file = {:?}\n",
            passwd.display().to_string()
        ),
    );
    let (mut v5, ack) = Raw::connect(b.mqtt, login(Version::V5, "alice-5", "alice")).await;
    assert_eq!(ack.reason_code, 0);
    let (mut v311, ack) = Raw::connect(b.mqtt, login(Version::V311, "alice-3", "alice")).await;
    assert_eq!(ack.reason_code, 0);
    let (away, _) = Raw::connect(b.mqtt, login(Version::V5, "alice-away", "alice")).await;
    drop(away);
    let (mut bob, _) = Raw::connect(b.mqtt, login(Version::V5, "bob-5", "bob")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while get_json(b.admin, "/v1/sessions?state=disconnected", None).await["sessions"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice-away never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let alices = get_json(b.admin, "/v1/sessions?user=alice", None).await;
    assert_eq!(client_ids(&alices), ["alice-3", "alice-5", "alice-away"]);

    let out = b.ctl(&["revoke", "alice"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), "revoked alice");
    match v5.until_closed().await.last() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, 0x87);
            assert_eq!(d.reason_string.as_deref(), Some("revoked"));
        }
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
    assert!(
        v311.until_closed().await.is_empty(),
        "3.1.1 has no server DISCONNECT: the socket closes"
    );
    // Every session of alice is gone when the revoke answers; bob's is untouched.
    let left = get_json(b.admin, "/v1/sessions", None).await;
    assert_eq!(client_ids(&left), ["bob-5"]);
    bob.send_packet(&Packet::PingReq).await;
    assert_eq!(bob.recv().await, Some(Packet::PingResp));
    assert_eq!(
        b.ctl_json(&["revoked"]).await["users"],
        serde_json::json!(["alice"])
    );

    // Refused while revoked: v5 0x87, 3.1.1 rc 5 (not authorized), counted as banned.
    let (_, ack) = Raw::connect(b.mqtt, login(Version::V5, "alice-5", "alice")).await;
    assert_eq!(ack.reason_code, 0x87);
    assert_eq!(
        v311_return_code(b.mqtt, login(Version::V311, "alice-3", "alice")).await,
        5
    );
    for protocol in ["5.0", "3.1.1"] {
        let series = format!(
            "brokk_connects_total{{protocol=\"{protocol}\",result=\"refused\",code=\"banned\"}}"
        );
        assert_eq!(b.wait_metric(&series, 1.0).await, 1.0, "{series}");
    }
    assert_eq!(b.wait_metric(&series("revoked"), 2.0).await, 2.0);
    assert_eq!(
        b.metric("brokk_sessions_ended_total{reason=\"revoked\"}")
            .await,
        3.0
    );
    let history = get_json(b.admin, "/v1/closes?reason=revoked", None).await;
    let mut revoked: Vec<(String, String)> = history["closes"]
        .as_array()
        .expect("closes")
        .iter()
        .map(|c| {
            let field = |k: &str| c[k].as_str().expect(k).to_string();
            (field("client_id"), field("user"))
        })
        .collect();
    revoked.sort();
    assert_eq!(
        revoked,
        [
            ("alice-3".to_string(), "alice".to_string()),
            ("alice-5".to_string(), "alice".to_string())
        ]
    );
    let refusals = get_json(b.admin, "/v1/closes?client_id=alice-5&reason=aborted", None).await;
    assert_eq!(refusals["closes"][0]["user"], "alice");
    assert_eq!(refusals["closes"][0]["detail"], "user revoked");

    // Restored: both protocols connect again, with new sessions.
    let out = b.ctl(&["restore", "alice"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        b.ctl_json(&["revoked"]).await["users"],
        serde_json::json!([])
    );
    let (_v5, ack) = Raw::connect(b.mqtt, login(Version::V5, "alice-5", "alice")).await;
    assert_eq!((ack.reason_code, ack.session_present), (0, false));
    assert_eq!(
        v311_return_code(b.mqtt, login(Version::V311, "alice-3", "alice")).await,
        0
    );
}

/// The revoked set is stored with the sessions: after a `kill -9` and a restart on the same
/// disk store, the user is still refused until restored.
#[tokio::test]
async fn a_revoke_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    brokk::auth::passwd_set(&passwd, "alice", "pw-alice").expect("passwd");
    let sections = format!(
        "{ADMIN}[storage]\nbackend = \"disk\"\npath = \"store\"\nsync = \"always\"\n\
         [auth]\nallow_anonymous = false\npassword_file = {:?}\n",
        passwd.display().to_string()
    );
    let b = Binary::start_in(dir, &sections);
    let out = b.ctl(&["revoke", "alice"]).await;
    assert!(out.status.success(), "{out:?}");
    // Listening means the store was read back.
    let b = Binary::start_in(b.kill(), &sections);
    assert_eq!(
        b.ctl_json(&["revoked"]).await["users"],
        serde_json::json!(["alice"])
    );
    let (_, ack) = Raw::connect(b.mqtt, login(Version::V5, "alice-5", "alice")).await;
    assert_eq!(ack.reason_code, 0x87, "still refused after the restart");
    let out = b.ctl(&["restore", "alice"]).await;
    assert!(out.status.success(), "{out:?}");
    let b = Binary::start_in(b.kill(), &sections);
    let (_, ack) = Raw::connect(b.mqtt, login(Version::V5, "alice-5", "alice")).await;
    assert_eq!(ack.reason_code, 0, "the restore is stored too");
}
