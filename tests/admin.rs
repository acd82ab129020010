//! The admin API and `brokk ctl` against the binary: the token, listings and details (client
//! ids with `/`, spaces and non-ASCII characters), kicks, the close history, health, and the
//! configuration rule for public binds; the web console's public pages and its endpoints.

mod common;

use std::process::Command;

use brokk::protocol::{
    Connect, Packet, QoS, RetainHandling, Subscribe, SubscriptionRequest, Version,
};
use common::admin::*;
use common::*;
use serde_json::Value;

const TOKEN: &str = "s3cret-token-for-tests-0123456789";

/// A v5 CONNECT whose session waits 600 s for its client.
fn persistent(client_id: &str) -> Connect {
    Connect {
        clean_start: false,
        session_expiry_interval: Some(600),
        ..connect_packet(Version::V5, client_id)
    }
}

async fn subscribe(client: &mut Raw, filter: &str) {
    client
        .send_packet(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscriptionRequest {
                filter: filter.to_string(),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            }],
            subscription_identifier: None,
            user_properties: vec![],
        }))
        .await;
    assert!(matches!(client.recv().await, Some(Packet::SubAck(_))));
}

/// Polls the API until `client_id`'s session is in `state` (a close is counted and the
/// session let go after the socket closes: there is no event to await from outside).
async fn wait_state(b: &Binary, client_id: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let path = format!("/v1/sessions/{}", enc(client_id));
        let (status, body) = http(b.admin, "GET", &path, None).await;
        if status == 200 {
            let session: Value = serde_json::from_str(&body).expect("JSON");
            if session["state"] == state {
                return session;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{client_id} never became {state}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_path_but_health_needs_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write");
    let b = Binary::start_in(
        dir,
        &format!(
            "{ADMIN}token_file = {:?}\n",
            token_file.display().to_string()
        ),
    );
    let (status, body) = http(b.admin, "GET", "/v1/health", None).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    for (method, path) in [
        ("GET", "/v1/sessions"),
        ("GET", "/v1/sessions/x"),
        ("DELETE", "/v1/sessions/x"),
        ("POST", "/v1/users/alice/revoke"),
        ("POST", "/v1/users/alice/restore"),
        ("GET", "/v1/users/revoked"),
        ("GET", "/v1/closes"),
        ("GET", "/v1/stats"),
        ("GET", "/v1/listeners"),
        ("GET", "/v1/nothing-here"),
        ("GET", "/console/nothing-here"),
    ] {
        let (status, head, body) = http_full(b.admin, method, path, None).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(
            head.to_lowercase().contains("www-authenticate: bearer"),
            "{head}"
        );
        let error: Value = serde_json::from_str(&body).expect("JSON error");
        assert!(error["error"].is_string(), "{body}");
        let (status, _) = http(b.admin, method, path, Some("wrong-token")).await;
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }

    // With the token: the API answers; unknown paths are 404, wrong methods 405, bad
    // parameters 400, each with a JSON error.
    let t = Some(TOKEN);
    let page = get_json(b.admin, "/v1/sessions", t).await;
    assert_eq!(page["sessions"], Value::Array(vec![]));
    assert!(page["next"].is_null());
    for (method, path, want) in [
        ("GET", "/v1/nothing-here", 404),
        ("GET", "/v1/sessions/nobody", 404),
        ("DELETE", "/v1/sessions/nobody", 404),
        ("DELETE", "/v1/closes", 405),
        ("GET", "/v1/sessions?limit=0", 400),
        ("GET", "/v1/sessions?limit=lots", 400),
        ("GET", "/v1/sessions?state=asleep", 400),
        ("GET", "/v1/sessions?colour=red", 400),
        ("GET", "/v1/closes?reason=bored", 400),
        ("GET", "/v1/closes?before=yesterday", 400),
    ] {
        let (status, body) = http(b.admin, method, path, t).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        let error: Value = serde_json::from_str(&body).expect("JSON error");
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }

    // brokk ctl: no token is exit 1 with the API's message; --token-file and
    // BROKK_ADMIN_TOKEN both work; health needs none.
    let out = b.ctl(&["sessions"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr(&out).contains("401") && stderr(&out).contains("bearer token"),
        "{out:?}"
    );
    let token_path = b.dir.path().join("token").display().to_string();
    let out = b.ctl(&["--token-file", &token_path, "sessions"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("0 sessions"), "{out:?}");
    let out = b
        .ctl_with(&["--json", "closes"], &[("BROKK_ADMIN_TOKEN", TOKEN)])
        .await;
    assert!(out.status.success(), "{out:?}");
    let out = b.ctl(&["health"]).await;
    assert!(
        out.status.success() && stdout(&out).trim() == "ok",
        "{out:?}"
    );
}

#[tokio::test]
async fn sessions_are_listed_paged_and_detailed_whatever_their_client_ids() {
    let b = Binary::start(ADMIN);
    let ids = ["a/b", "with space", "ø-日本", "q?x#y%z&w=1", "..", "plain"];
    let mut clients = Vec::new();
    for id in ids {
        let (mut client, ack) = Raw::connect(b.mqtt, persistent(id)).await;
        assert_eq!(ack.reason_code, 0, "{id}");
        subscribe(&mut client, &format!("t/{}/#", id.len())).await;
        clients.push(client);
    }
    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.sort_unstable();

    // Every id once, in client-id order, across pages of two.
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/sessions?limit=2&after={}", enc(a)),
            None => "/v1/sessions?limit=2".to_string(),
        };
        let page = get_json(b.admin, &path, None).await;
        let sessions = page["sessions"].as_array().expect("sessions");
        assert!(sessions.len() <= 2);
        listed.extend(
            sessions
                .iter()
                .map(|s| s["client_id"].as_str().expect("id").to_string()),
        );
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(listed, sorted);

    let all = b.ctl_json(&["sessions"]).await;
    let first = &all["sessions"][0];
    for field in [
        "client_id",
        "state",
        "user",
        "peer",
        "protocol",
        "listener",
        "connected_since",
        "disconnected_since",
        "expires_at",
        "expiry_s",
        "subscriptions",
        "queued",
        "inflight",
    ] {
        assert!(first.get(field).is_some(), "{field} missing: {first}");
    }
    assert_eq!(first["state"], "connected");
    assert_eq!(first["protocol"], "5.0");
    assert_eq!(first["listener"], "tcp");
    assert_eq!(first["expiry_s"], 600);
    assert_eq!(first["subscriptions"], 1);
    let table = stdout(&b.ctl(&["sessions"]).await);
    for id in ids {
        assert!(
            table.lines().any(|l| l.starts_with(id)),
            "{id} not in\n{table}"
        );
    }

    for id in ids {
        let detail = get_json(b.admin, &format!("/v1/sessions/{}", enc(id)), None).await;
        assert_eq!(detail["client_id"], id);
        assert_eq!(
            detail["subscription_list"][0]["filter"],
            format!("t/{}/#", id.len())
        );
        assert_eq!(detail["subscription_list"][0]["qos"], 1);
        let from_ctl = b.ctl_json(&["session", id]).await;
        assert_eq!(from_ctl, detail);
    }
    let out = b.ctl(&["session", "x"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("404") && stderr(&out).contains("no session"),
        "{out:?}"
    );

    // Filters: a prefix (itself encoded), the state.
    let page = get_json(b.admin, &format!("/v1/sessions?prefix={}", enc("ø")), None).await;
    assert_eq!(page["sessions"].as_array().map(Vec::len), Some(1));
    drop(clients.pop());
    wait_state(&b, "plain", "disconnected").await;
    let waiting = b.ctl_json(&["sessions", "--state", "disconnected"]).await;
    assert_eq!(waiting["sessions"].as_array().map(Vec::len), Some(1));
    assert_eq!(waiting["sessions"][0]["client_id"], "plain");
    assert!(waiting["sessions"][0]["expires_at"].is_string());
    let limited = b.ctl_json(&["sessions", "--limit", "3"]).await;
    assert_eq!(limited["sessions"].as_array().map(Vec::len), Some(3));
    assert!(limited["next"].is_string());
}

/// A kick closes a v5 client with DISCONNECT 0x98 and discards its session (Session Present 0
/// next time); `keep_session` keeps it; a waiting session can be kicked too. Each kick is in
/// the close history and in `brokk_connections_closed_total`.
#[tokio::test]
async fn kicks_close_with_0x98_and_discard_or_keep_the_session() {
    let b = Binary::start(ADMIN);
    let (mut client, ack) = Raw::connect(b.mqtt, persistent("kick me")).await;
    assert!(!ack.session_present);
    subscribe(&mut client, "k/#").await;
    let out = b.ctl(&["kick", "kick me"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("kicked kick me (session discarded)"),
        "{out:?}"
    );
    let sent = client.until_closed().await;
    match sent.last() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, 0x98);
            assert_eq!(d.reason_string.as_deref(), Some("closed_by_controller"));
        }
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    let (status, _) = http(
        b.admin,
        "GET",
        &format!("/v1/sessions/{}", enc("kick me")),
        None,
    )
    .await;
    assert_eq!(status, 404, "the session is gone when the kick answers");
    let (mut client, ack) = Raw::connect(b.mqtt, persistent("kick me")).await;
    assert!(!ack.session_present, "Session Present 0 after a kick");

    // keep_session: the connection goes, the session waits with its subscription.
    subscribe(&mut client, "k/#").await;
    let (status, _) = http(
        b.admin,
        "DELETE",
        &format!("/v1/sessions/{}?keep_session=true", enc("kick me")),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(matches!(
        client.until_closed().await.last(),
        Some(Packet::Disconnect(d)) if d.reason_code == 0x98
    ));
    let session = wait_state(&b, "kick me", "disconnected").await;
    assert_eq!(session["subscriptions"], 1);
    let (client, ack) = Raw::connect(b.mqtt, persistent("kick me")).await;
    assert!(ack.session_present, "the kept session resumes");

    // A waiting session is kicked (discarded) too.
    drop(client);
    wait_state(&b, "kick me", "disconnected").await;
    let out = b.ctl(&["kick", "kick me"]).await;
    assert!(out.status.success(), "{out:?}");
    let (status, _) = http(
        b.admin,
        "GET",
        &format!("/v1/sessions/{}", enc("kick me")),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let out = b.ctl(&["kick", "nobody"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("404"), "{out:?}");

    // The history: newest first, the two kicks of connections and the dropped socket.
    let closes = b.ctl_json(&["closes", "kick me"]).await;
    let reasons: Vec<&str> = closes["closes"]
        .as_array()
        .expect("closes")
        .iter()
        .map(|c| c["reason"].as_str().expect("reason"))
        .collect();
    assert_eq!(
        reasons,
        [
            "connection_lost",
            "closed_by_controller",
            "closed_by_controller"
        ]
    );
    let latest = &closes["closes"][1];
    for field in [
        "seq",
        "client_id",
        "user",
        "peer",
        "reason",
        "at",
        "detail",
        "duration_ms",
    ] {
        assert!(latest.get(field).is_some(), "{field} missing: {latest}");
    }
    let one = get_json(
        b.admin,
        &format!("/v1/closes?client_id={}&limit=1", enc("kick me")),
        None,
    )
    .await;
    assert_eq!(one["closes"].as_array().map(Vec::len), Some(1));
    let older = get_json(
        b.admin,
        &format!(
            "/v1/closes?client_id={}&before={}",
            enc("kick me"),
            one["next"].as_u64().expect("next")
        ),
        None,
    )
    .await;
    assert_eq!(older["closes"].as_array().map(Vec::len), Some(2));
    let table = stdout(&b.ctl(&["closes"]).await);
    assert!(
        table.contains("closed_by_controller") && table.contains("kick me"),
        "{table}"
    );
    assert_eq!(
        b.wait_metric(&series("closed_by_controller"), 2.0).await,
        2.0
    );
    assert_eq!(
        b.metric("brokk_sessions_ended_total{reason=\"closed_by_controller\"}")
            .await,
        2.0
    );
}

#[test]
fn a_public_bind_without_a_token_is_refused_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_brokk"))
        .arg("--check-config")
        .env("BROKK_ADMIN__BIND", "0.0.0.0:9884")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("admin.token_file"),
        "{out:?}"
    );
}

#[tokio::test]
async fn ctl_says_what_went_wrong_when_nothing_listens() {
    // A port that was free a moment ago: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_brokk"))
        .args(["ctl", "health"])
        .env("BROKK_ADMIN_URL", format!("http://127.0.0.1:{port}"))
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the admin API"),
        "{out:?}"
    );
}

/// The console's pages are public (they hold no data); what they show comes from `/v1`, which
/// needs the token: `/v1/stats` counts a connection and its kick, `/v1/listeners` names the
/// bound port.
#[tokio::test]
async fn the_console_pages_are_public_and_its_data_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write");
    let b = Binary::start_in(
        dir,
        &format!(
            "{ADMIN}token_file = {:?}\n[listeners.ws]\nbind = \"127.0.0.1:0\"\n\
             websocket = {{ path = \"/mqtt\" }}\n",
            token_file.display().to_string()
        ),
    );
    for (path, content_type) in [
        ("/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/mqtt.js", "text/javascript"),
        ("/console/style.css", "text/css"),
        ("/console/icon.svg", "image/svg+xml"),
        ("/console/close-reasons.json", "application/json"),
    ] {
        let (status, head, body) = http_full(b.admin, "GET", path, None).await;
        assert_eq!(status, 200, "GET {path} without a token: {body}");
        let head = head.to_lowercase();
        assert!(
            head.contains(&format!("content-type: {content_type}")),
            "{path}: {head}"
        );
        assert!(!body.is_empty(), "{path}");
        if path == "/" {
            assert!(body.contains("/console/app.js"), "{body}");
            assert!(
                head.contains("content-security-policy: default-src 'self'"),
                "{head}"
            );
        }
    }
    let reasons: Value = serde_json::from_str(
        &http(b.admin, "GET", "/console/close-reasons.json", None)
            .await
            .1,
    )
    .expect("JSON");
    let kick = reasons
        .as_array()
        .and_then(|all| all.iter().find(|r| r["label"] == "closed_by_controller"))
        .expect("closed_by_controller explained");
    assert!(
        kick["summary"]
            .as_str()
            .is_some_and(|s| s.contains("administrator")),
        "{kick}"
    );

    let t = Some(TOKEN);
    // The live viewer finds the WebSocket listener here: its real port and path.
    let listeners = get_json(b.admin, "/v1/listeners", t).await;
    let named = |name: &str| {
        listeners["listeners"]
            .as_array()
            .and_then(|all| all.iter().find(|l| l["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no listener {name}: {listeners}"))
    };
    let (tcp, ws) = (named("tcp"), named("ws"));
    assert_eq!(tcp["port"], b.mqtt.port());
    assert_eq!(tcp["tls"], false);
    assert!(tcp["websocket_path"].is_null(), "{tcp}");
    assert_eq!(ws["websocket_path"], "/mqtt", "{ws}");
    let ws_port = ws["port"].as_u64().expect("port");
    assert!(ws_port != 0 && ws_port != u64::from(b.mqtt.port()), "{ws}");
    assert_eq!(ws["addr"], format!("127.0.0.1:{ws_port}"));

    let (_client, connack) = Raw::connect(b.mqtt, persistent("console-1")).await;
    assert_eq!(connack.reason_code, 0);
    let deadline = std::time::Instant::now() + WAIT;
    while get_json(b.admin, "/v1/stats", t).await["sessions_connected"] != 1 {
        assert!(std::time::Instant::now() < deadline, "never counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, _) = http(b.admin, "DELETE", "/v1/sessions/console-1", t).await;
    assert_eq!(status, 204);
    let stats = get_json(b.admin, "/v1/stats", t).await;
    assert_eq!(stats["closes"]["closed_by_controller"], 1, "{stats}");
    assert_eq!(stats["sessions_connected"], 0, "{stats}");
    let windows = stats["windows"].as_array().expect("windows");
    assert_eq!(
        windows
            .iter()
            .map(|w| w["minutes"].clone())
            .collect::<Vec<_>>(),
        [1, 5, 15]
    );
    // The sampler's first sample was taken at start, before the kick.
    assert_eq!(windows[0]["closes"]["closed_by_controller"], 1, "{stats}");
    let closes = get_json(b.admin, "/v1/closes?user=nobody", t).await;
    assert_eq!(closes["closes"], Value::Array(vec![]));
}
