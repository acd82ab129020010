use std::path::Path;

use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::auth::jwt::tests::{TestKey, now};
use crate::auth::passwd_set;
use crate::config::JwtAlgorithm;

fn config(dir: &Path, allow_anonymous: bool) -> AuthConfig {
    AuthConfig {
        allow_anonymous,
        password_file: dir.join("passwd"),
        acl_file: dir.join("acl"),
        ..AuthConfig::default()
    }
}

fn peer() -> std::net::SocketAddr {
    "127.0.0.1:5000".parse().unwrap()
}

async fn login(
    auth: &Authenticator,
    user: Option<&str>,
    password: Option<&str>,
) -> Result<Login, Refusal> {
    let password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    auth.login(LoginRequest {
        peer: peer(),
        username: user,
        password: password.as_ref(),
        identity: &PeerIdentity::None,
        token_method: false,
    })
    .await
}

fn setup(allow_anonymous: bool) -> (tempfile::TempDir, Authenticator) {
    let dir = tempfile::tempdir().unwrap();
    passwd_set(&dir.path().join("passwd"), "alice", "right").unwrap();
    std::fs::write(dir.path().join("acl"), "topic #\n").unwrap();
    let auth = Authenticator::from_config(&config(dir.path(), allow_anonymous)).unwrap();
    (dir, auth)
}

#[tokio::test]
async fn passwords_and_anonymous_access() {
    let (_dir, auth) = setup(false);
    let ok = login(&auth, Some("alice"), Some("right")).await.unwrap();
    assert_eq!(ok.user.as_deref(), Some("alice"));
    assert!(matches!(ok.credential, Credential::Password { .. }));
    assert_eq!(ok.expires_at, None);
    for (user, password) in [
        (Some("alice"), Some("wrong")),
        (Some("alice"), None),
        (Some("nobody"), Some("right")),
    ] {
        let refusal = login(&auth, user, password).await.unwrap_err();
        assert_eq!(refusal.reason_code(), 0x86, "{user:?} {password:?}");
    }
    assert_eq!(
        login(&auth, None, None).await.unwrap_err(),
        Refusal::NotAuthorized
    );

    let (_dir, open) = setup(true);
    let anonymous = login(&open, None, None).await.unwrap();
    assert_eq!(anonymous.user, None);
    assert_eq!(anonymous.credential, Credential::Anonymous);
    // Anonymous access does not make a wrong password right.
    assert!(login(&open, Some("alice"), Some("wrong")).await.is_err());
}

#[tokio::test]
async fn a_name_with_nothing_to_check_it_is_not_trusted() {
    let auth = Authenticator::from_config(&AuthConfig::default()).unwrap();
    let login = login(&auth, Some("admin"), Some("x")).await.unwrap();
    assert_eq!(
        login.user, None,
        "an unchecked name gets the anonymous rules"
    );
    assert_eq!(login.credential, Credential::Unchecked);
    let closed = Authenticator::from_config(&AuthConfig {
        allow_anonymous: false,
        ..AuthConfig::default()
    })
    .unwrap();
    assert_eq!(
        super::tests::login(&closed, Some("admin"), Some("x"))
            .await
            .unwrap_err(),
        Refusal::NotAuthorized
    );
}

#[tokio::test]
async fn tokens_log_in_until_they_expire() {
    let (dir, _) = setup(false);
    let key = TestKey::new(JwtAlgorithm::Es256);
    let mut config = config(dir.path(), false);
    config.jwt = key.config.clone();
    let auth = Authenticator::from_config(&config).unwrap();

    let exp = now() + 600;
    let token = key.sign(&json!({"sub": "tom", "exp": exp}));
    // The CONNECT's user name is not what counts: the token's claim is.
    let ok = login(&auth, Some("whoever"), Some(&token)).await.unwrap();
    assert_eq!(ok.user.as_deref(), Some("tom"));
    assert_eq!(
        ok.expires_at,
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp))
    );
    assert!(matches!(ok.credential, Credential::Token(_)));
    // v5 allows a password without a user name.
    assert!(login(&auth, None, Some(&token)).await.is_ok());

    let expired = key.sign(&json!({"sub": "tom", "exp": now() - 1}));
    let refusal = login(&auth, Some("tom"), Some(&expired)).await.unwrap_err();
    assert_eq!(
        refusal,
        Refusal::BadCredentials("token expired".to_string())
    );
    // Passwords still work beside tokens.
    assert!(login(&auth, Some("alice"), Some("right")).await.is_ok());

    // Tokens only: a password that is not a token is bad credentials.
    let only_tokens = Authenticator::from_config(&AuthConfig {
        allow_anonymous: false,
        jwt: key.config.clone(),
        ..AuthConfig::default()
    })
    .unwrap();
    assert_eq!(
        login(&only_tokens, Some("alice"), Some("right"))
            .await
            .unwrap_err()
            .reason_code(),
        0x86
    );
}

async fn token_method_login(auth: &Authenticator, data: Option<&str>) -> Result<Login, Refusal> {
    let data = data.map(|d| Bytes::copy_from_slice(d.as_bytes()));
    auth.login(LoginRequest {
        peer: peer(),
        username: Some("alice"),
        password: data.as_ref(),
        identity: &PeerIdentity::None,
        token_method: true,
    })
    .await
}

#[tokio::test]
async fn the_jwt_method_takes_only_a_token() {
    let (dir, _) = setup(false);
    let key = TestKey::new(JwtAlgorithm::Hs256);
    let mut config = config(dir.path(), false);
    config.jwt = key.config.clone();
    let auth = Authenticator::from_config(&config).unwrap();
    let token = key.sign(&json!({"sub": "tom", "exp": now() + 60}));
    let ok = token_method_login(&auth, Some(&token)).await.unwrap();
    assert_eq!(ok.user.as_deref(), Some("tom"));
    assert!(ok.expires_at.is_some());
    // Under the method, Authentication Data is never taken for a password (alice's is
    // "right"), and a missing one is bad credentials.
    for data in [Some("right"), Some("eyJ.not.a-token"), None] {
        let refusal = token_method_login(&auth, data).await.unwrap_err();
        assert_eq!(refusal.reason_code(), 0x86, "{data:?}");
    }
    // Without [auth.jwt] the method cannot log anyone in.
    let (_dir, no_tokens) = setup(true);
    let refusal = token_method_login(&no_tokens, Some(&token))
        .await
        .unwrap_err();
    assert_eq!(refusal.reason_code(), 0x86);
}

#[tokio::test]
async fn certificate_identity_is_the_user() {
    let (_dir, auth) = setup(false);
    let identity = PeerIdentity::Certificate(Arc::from("device-7"));
    let ok = auth
        .login(LoginRequest {
            peer: peer(),
            username: Some("ignored"),
            password: None,
            identity: &identity,
            token_method: false,
        })
        .await
        .unwrap();
    assert_eq!(ok.user.as_deref(), Some("device-7"));
    assert_eq!(ok.credential, Credential::Certificate);
    let refusal = auth
        .login(LoginRequest {
            peer: peer(),
            username: None,
            password: None,
            identity: &PeerIdentity::MissingCommonName,
            token_method: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refusal.reason_code(), 0x86);
}

#[tokio::test]
async fn reload_swaps_rules_and_reports_who_is_gone() {
    let (dir, auth) = setup(false);
    let mut reloads = auth.reloads();
    let alice = login(&auth, Some("alice"), Some("right")).await.unwrap();
    assert!(login(&auth, Some("bob"), Some("two")).await.is_err());
    assert_eq!(auth.state().acl.as_ref().unwrap().rule_count(), 1);

    let passwd = dir.path().join("passwd");
    passwd_set(&passwd, "bob", "two").unwrap();
    std::fs::write(dir.path().join("acl"), "topic #\ntopic deny x\n").unwrap();
    let report = auth.reload().unwrap();
    assert_eq!(report.generation, 2);
    assert!(report.removed_users.is_empty() && report.changed_users.is_empty());
    assert_eq!(report.acl_rules, Some(2));
    assert!(reloads.has_changed().unwrap());
    assert_eq!(*reloads.borrow_and_update(), 2);
    assert!(login(&auth, Some("bob"), Some("two")).await.is_ok());
    assert!(auth.still_accepted(&alice));

    // A broken file: the rules in force stay, bob still logs in.
    std::fs::write(&passwd, "garbage line\n").unwrap();
    let e = auth.reload().unwrap_err().to_string();
    assert!(
        e.starts_with("auth.password_file ") && e.contains("line 1"),
        "{e}"
    );
    assert_eq!(auth.state().generation, 2);
    assert!(login(&auth, Some("bob"), Some("two")).await.is_ok());

    // Alice removed: the report names her, and her login no longer holds.
    std::fs::remove_file(&passwd).unwrap();
    passwd_set(&passwd, "bob", "two").unwrap();
    let report = auth.reload().unwrap();
    assert!(report.revokes("alice"));
    assert!(
        report.revokes("bob"),
        "bob's line was rewritten with a new salt"
    );
    assert!(!auth.still_accepted(&alice));
    assert!(login(&auth, Some("alice"), Some("right")).await.is_err());
}

#[tokio::test]
async fn a_rotated_jwt_key_revokes_tokens_it_did_not_sign() {
    let key = TestKey::new(JwtAlgorithm::Hs256);
    let auth = Authenticator::from_config(&AuthConfig {
        jwt: key.config.clone(),
        ..AuthConfig::default()
    })
    .unwrap();
    let token = key.sign(&json!({"sub": "tom", "exp": now() + 600}));
    let tom = login(&auth, None, Some(&token)).await.unwrap();
    assert!(auth.still_accepted(&tom));
    let report = auth.reload().unwrap();
    assert!(!report.jwt_key_changed);
    assert!(auth.still_accepted(&tom));
    std::fs::write(&key.config.key_file, "another secret entirely\n").unwrap();
    let report = auth.reload().unwrap();
    assert!(report.jwt_key_changed);
    assert!(!auth.still_accepted(&tom));
}
