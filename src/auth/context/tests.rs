use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::auth::jwt::tests::{TestKey, now};
use crate::auth::{LoginRequest, PeerIdentity, passwd_set};
use crate::config::{AuthConfig, JwtAlgorithm};

const ACL: &str = "\
topic read public/#
user alice
topic readwrite alice/#
topic deny alice/secret
topic readwrite $SYS/#
pattern read clients/%c/in
";

struct Setup {
    dir: tempfile::TempDir,
    auth: Authenticator,
    key: TestKey,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    passwd_set(&dir.path().join("passwd"), "alice", "pw").unwrap();
    std::fs::write(dir.path().join("acl"), ACL).unwrap();
    let key = TestKey::new(JwtAlgorithm::Hs256);
    let auth = Authenticator::from_config(&AuthConfig {
        allow_anonymous: true,
        password_file: dir.path().join("passwd"),
        acl_file: dir.path().join("acl"),
        jwt: key.config.clone(),
        ..AuthConfig::default()
    })
    .unwrap();
    Setup { dir, auth, key }
}

async fn context(setup: &Setup, user: Option<&str>, password: &str, client: &str) -> AuthContext {
    let password = Bytes::copy_from_slice(password.as_bytes());
    let login = setup
        .auth
        .login(LoginRequest {
            peer: "127.0.0.1:1".parse().unwrap(),
            username: user,
            password: user.map(|_| &password),
            identity: &PeerIdentity::None,
            token_method: false,
        })
        .await
        .unwrap();
    AuthContext::new(&setup.auth, login, Arc::from(client))
}

#[tokio::test]
async fn checks_follow_the_acl() {
    let setup = setup();
    let alice = context(&setup, Some("alice"), "pw", "a1").await;
    assert!(alice.may_publish("alice/notes"));
    assert!(!alice.may_publish("alice/secret"));
    assert!(!alice.may_publish("public/x"));
    assert!(alice.may_receive("alice/notes"));
    assert!(alice.may_receive("clients/a1/in"));
    assert!(!alice.may_receive("clients/a2/in"));
    assert_eq!(
        alice.may_subscribe("alice/#"),
        SubscribeDecision::Granted { check_each: true }
    );
    assert_eq!(
        alice.may_subscribe("alice/secret"),
        SubscribeDecision::Denied
    );
    // $SYS is the broker's, whatever the ACL grants.
    assert!(!alice.may_publish("$SYS/broker/x"));
    assert!(alice.may_receive("$SYS/broker/x"));

    let anonymous = context(&setup, None, "", "c1").await;
    assert!(anonymous.may_receive("public/news"));
    assert!(!anonymous.may_publish("public/news"));
    assert_eq!(
        anonymous.may_subscribe("$share/g/public/#"),
        SubscribeDecision::Granted { check_each: false }
    );
}

#[tokio::test]
async fn without_an_acl_everything_but_sys_is_allowed() {
    let auth = Authenticator::from_config(&AuthConfig::default()).unwrap();
    let login = Login::anonymous(Credential::Anonymous);
    let ctx = AuthContext::new(&auth, login, Arc::from("c"));
    assert!(ctx.may_publish("any/topic"));
    assert!(ctx.may_receive("any/topic"));
    assert_eq!(
        ctx.may_subscribe("#"),
        SubscribeDecision::Granted { check_each: false }
    );
    assert!(!ctx.may_publish("$SYS/x"));
}

#[tokio::test]
async fn token_grants_narrow_the_acl() {
    let setup = setup();
    let token = setup.key.sign(&json!({"sub": "alice", "exp": now() + 600,
        "acl": {"publish": ["alice/out/#"], "subscribe": ["alice/in/+"]}}));
    let ctx = context(&setup, Some("alice"), &token, "a1").await;
    assert!(ctx.may_publish("alice/out/1"));
    assert!(
        !ctx.may_publish("alice/notes"),
        "the file allows it, the token does not"
    );
    assert!(ctx.may_receive("alice/in/1"));
    assert_eq!(
        ctx.may_subscribe("alice/in/+"),
        SubscribeDecision::Granted { check_each: false }
    );
    assert_eq!(ctx.may_subscribe("alice/out/1"), SubscribeDecision::Denied);
}

#[tokio::test]
async fn refresh_sees_new_rules_and_revocations() {
    let setup = setup();
    let mut alice = context(&setup, Some("alice"), "pw", "a1").await;
    assert_eq!(alice.refresh(&setup.auth), Refresh::Unchanged);
    std::fs::write(
        setup.dir.path().join("acl"),
        "user alice\ntopic write other/#\n",
    )
    .unwrap();
    setup.auth.reload().unwrap();
    assert!(
        alice.may_publish("alice/notes"),
        "the old snapshot until refreshed"
    );
    assert_eq!(alice.refresh(&setup.auth), Refresh::Updated);
    assert!(!alice.may_publish("alice/notes"));
    assert!(alice.may_publish("other/x"));

    passwd_set(&setup.dir.path().join("passwd"), "alice", "new").unwrap();
    setup.auth.reload().unwrap();
    assert_eq!(alice.refresh(&setup.auth), Refresh::Revoked);
}

#[tokio::test]
async fn reauthentication_moves_the_deadline() {
    let setup = setup();
    let first = setup.key.sign(&json!({"sub": "tom", "exp": now() + 60}));
    let mut tom = context(&setup, Some("tom"), &first, "t1").await;
    let deadline = tom.expires_at().unwrap();
    let fresh = setup.key.sign(&json!({"sub": "tom", "exp": now() + 3600}));
    let moved = tom.reauthenticate(&setup.auth, fresh.as_bytes()).unwrap();
    assert!(moved > deadline);
    assert_eq!(tom.expires_at(), Some(moved));

    let someone_else = setup.key.sign(&json!({"sub": "eve", "exp": now() + 3600}));
    assert_eq!(
        tom.reauthenticate(&setup.auth, someone_else.as_bytes()),
        Err(Refusal::NotAuthorized)
    );
    let expired = setup.key.sign(&json!({"sub": "tom", "exp": now() - 1}));
    assert!(tom.reauthenticate(&setup.auth, expired.as_bytes()).is_err());
    assert_eq!(
        tom.expires_at(),
        Some(moved),
        "a failed renewal changes nothing"
    );
}
