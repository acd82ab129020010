//! Keys are made at test time (never committed): an HS256 secret, an RSA key (rsa crate), a
//! P-256 key (rcgen).

use std::path::PathBuf;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::auth::acl::Access;

/// A signing key and the matching `[auth.jwt]` config (the verifying key written to a file).
pub(crate) struct TestKey {
    _dir: tempfile::TempDir,
    pub encoding: EncodingKey,
    pub algorithm: Algorithm,
    pub config: JwtConfig,
}

impl TestKey {
    pub fn new(algorithm: JwtAlgorithm) -> TestKey {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        let (encoding, verifying, alg) = match algorithm {
            JwtAlgorithm::Hs256 => {
                use ring::rand::SecureRandom;
                let mut random = [0u8; 32];
                ring::rand::SystemRandom::new().fill(&mut random).unwrap();
                let secret: Vec<u8> = random
                    .iter()
                    .flat_map(|b| format!("{b:02x}").into_bytes())
                    .collect();
                let mut on_disk = secret.clone();
                on_disk.push(b'\n'); // as `echo` writes it
                (
                    EncodingKey::from_secret(&secret).unwrap(),
                    on_disk,
                    Algorithm::HS256,
                )
            }
            JwtAlgorithm::Rs256 => {
                use rsa::pkcs1::EncodeRsaPrivateKey;
                use rsa::pkcs8::EncodePublicKey;
                use rsa::{Generate, PrivateKey};
                let private = PrivateKey::generate();
                let pem = private.to_pkcs1_pem(Default::default()).unwrap();
                let public = private
                    .to_public_key()
                    .to_public_key_pem(Default::default())
                    .unwrap();
                (
                    EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
                    public.into_bytes(),
                    Algorithm::RS256,
                )
            }
            JwtAlgorithm::Es256 => {
                let pair = rcgen::KeyPair::generate().unwrap();
                (
                    EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
                    pair.public_key_pem().into_bytes(),
                    Algorithm::ES256,
                )
            }
        };
        std::fs::write(&file, verifying).unwrap();
        TestKey {
            _dir: dir,
            encoding,
            algorithm: alg,
            config: JwtConfig {
                key_file: file,
                algorithm,
                ..JwtConfig::default()
            },
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, &self.encoding).unwrap()
    }

    pub fn verifier(&self) -> JwtVerifier {
        JwtVerifier::load(&self.config).unwrap().unwrap()
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn every_algorithm_accepts_its_own_tokens_and_refuses_others() {
    for algorithm in [
        JwtAlgorithm::Hs256,
        JwtAlgorithm::Rs256,
        JwtAlgorithm::Es256,
    ] {
        let key = TestKey::new(algorithm);
        let other = TestKey::new(algorithm);
        let verifier = key.verifier();
        let exp = now() + 3600;
        let claims = json!({"sub": "alice", "exp": exp});

        let token = verifier.verify(key.sign(&claims).as_bytes()).unwrap();
        assert_eq!(token.user, "alice", "{algorithm:?}");
        assert_eq!(token.expires_at, UNIX_EPOCH + Duration::from_secs(exp));
        assert!(token.grants.is_none());

        let forged = other.sign(&claims);
        assert_eq!(
            verifier.verify(forged.as_bytes()).unwrap_err(),
            TokenError::BadSignature,
            "{algorithm:?}"
        );
        let expired = key.sign(&json!({"sub": "alice", "exp": now() - 10}));
        assert_eq!(
            verifier.verify(expired.as_bytes()).unwrap_err(),
            TokenError::Expired
        );
        // A reload re-checks a token's signature without its expiry.
        assert!(verifier.verify_ignoring_expiry(expired.as_bytes()).is_ok());
        assert!(verifier.verify_ignoring_expiry(forged.as_bytes()).is_err());
    }
}

#[test]
fn an_algorithm_other_than_the_configured_one_is_refused() {
    let hs = TestKey::new(JwtAlgorithm::Hs256);
    let es = TestKey::new(JwtAlgorithm::Es256);
    let token = hs.sign(&json!({"sub": "alice", "exp": now() + 60}));
    assert_eq!(
        es.verifier().verify(token.as_bytes()).unwrap_err(),
        TokenError::WrongAlgorithm
    );
}

#[test]
fn claims_are_checked() {
    let key = TestKey::new(JwtAlgorithm::Hs256);
    let verifier = key.verifier();
    let exp = now() + 60;
    let refused = |claims: Value| verifier.verify(key.sign(&claims).as_bytes()).unwrap_err();
    assert_eq!(
        refused(json!({"exp": exp})),
        TokenError::MissingClaim("sub".into())
    );
    assert_eq!(
        refused(json!({"sub": 7, "exp": exp})),
        TokenError::BadClaim("sub".into())
    );
    assert_eq!(
        refused(json!({"sub": "", "exp": exp})),
        TokenError::BadClaim("sub".into())
    );
    assert_eq!(
        refused(json!({"sub": "a"})),
        TokenError::MissingClaim("exp".into())
    );
    assert_eq!(
        refused(json!({"sub": "a", "exp": exp, "nbf": now() + 600})),
        TokenError::NotYetValid
    );
    assert_eq!(
        refused(json!({"sub": "a", "exp": exp, "acl": {"publish": ["a/#/b"]}})),
        TokenError::BadClaim("acl".into())
    );
    assert_eq!(
        refused(json!({"sub": "a", "exp": exp, "acl": {"pub": ["a"]}})),
        TokenError::BadClaim("acl".into())
    );
    assert_eq!(
        verifier.verify(b"not.a.token").unwrap_err(),
        TokenError::Malformed
    );
    // An `exp` past what the clock holds is refused, not a panic when the deadline is made.
    assert_eq!(
        refused(json!({"sub": "a", "exp": u64::MAX})),
        TokenError::BadClaim("exp".into())
    );
}

#[test]
fn username_claim_issuer_and_audience() {
    let mut key = TestKey::new(JwtAlgorithm::Hs256);
    key.config.username_claim = "preferred_username".into();
    key.config.issuer = "https://issuer.example".into();
    key.config.audience = "brokk".into();
    let verifier = key.verifier();
    let exp = now() + 60;
    let good = json!({"preferred_username": "bob", "sub": "x", "exp": exp,
                      "iss": "https://issuer.example", "aud": "brokk"});
    assert_eq!(
        verifier.verify(key.sign(&good).as_bytes()).unwrap().user,
        "bob"
    );
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://other.example");
    assert!(verifier.verify(key.sign(&wrong_iss).as_bytes()).is_err());
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        verifier.verify(key.sign(&no_aud).as_bytes()).unwrap_err(),
        TokenError::MissingClaim("aud".into())
    );
    // Without an audience configured, a token's aud is not held against it.
    let plain = TestKey::new(JwtAlgorithm::Hs256);
    let token = plain.sign(&json!({"sub": "a", "exp": exp, "aud": "elsewhere"}));
    assert!(plain.verifier().verify(token.as_bytes()).is_ok());
}

#[test]
fn acl_claim_grants_topics() {
    let key = TestKey::new(JwtAlgorithm::Hs256);
    let token = key.sign(&json!({"sub": "a", "exp": now() + 60,
        "acl": {"publish": ["out/a/#"], "subscribe": ["in/a/+"]}}));
    let grants = key
        .verifier()
        .verify(token.as_bytes())
        .unwrap()
        .grants
        .unwrap();
    assert!(grants.allowed("out/a/x/y", Access::Write));
    assert!(!grants.allowed("out/b", Access::Write));
    assert!(grants.allowed("in/a/x", Access::Read));
    assert!(grants.allowed("in/a/+", Access::Subscribe));
    assert!(!grants.allowed("out/a/x", Access::Subscribe));
}

#[test]
fn key_files_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let load = |algorithm, text: &str| {
        let file = dir.path().join("k");
        std::fs::write(&file, text).unwrap();
        JwtVerifier::load(&JwtConfig {
            key_file: file,
            algorithm,
            ..JwtConfig::default()
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let e = load(JwtAlgorithm::Hs256, "\n").unwrap_err();
    assert!(
        e.starts_with("auth.jwt.key_file ") && e.contains("empty"),
        "{e}"
    );
    let e = load(JwtAlgorithm::Rs256, "not pem").unwrap_err();
    assert!(e.contains("RSA public key"), "{e}");
    let e = load(JwtAlgorithm::Es256, "not pem").unwrap_err();
    assert!(e.contains("EC (P-256) public key"), "{e}");
    let missing = JwtVerifier::load(&JwtConfig {
        key_file: PathBuf::from("/nonexistent/key"),
        ..JwtConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        missing.starts_with("auth.jwt.key_file /nonexistent/key:"),
        "{missing}"
    );
    assert!(JwtVerifier::load(&JwtConfig::default()).unwrap().is_none());
}

#[test]
fn jwt_shape() {
    let key = TestKey::new(JwtAlgorithm::Hs256);
    let token = key.sign(&json!({"sub": "a", "exp": 1}));
    assert!(looks_like_jwt(token.as_bytes()));
    for password in [
        &b"hunter2"[..],
        b"a.b.c",
        b"eyJ.x.y.z",
        b"eyJhbGciOi.",
        b"eyJh bGciOi.e30.sig",
        b"",
    ] {
        assert!(!looks_like_jwt(password), "{password:?}");
    }
}
