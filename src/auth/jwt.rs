//! Tokens: a JWT in the CONNECT password, checked against `[auth.jwt]` (HS256 with a shared
//! secret, RS256 or ES256 with a public key), with the `jsonwebtoken` crate.
//!
//! A token must be signed with the configured algorithm and carry `exp` (its deadline, which
//! bounds the connection) and the user name claim (`username_claim`, `sub` by default). `nbf`
//! is honoured when present; `iss` and `aud` are required and checked when `issuer` /
//! `audience` are set. No leeway: brokk's clock decides.
//!
//! An optional `acl` claim narrows what the connection may do below the acl_file:
//! `"acl": {"publish": ["FILTER", ...], "subscribe": ["FILTER", ...]}`. A missing list grants
//! nothing of its kind; a token without the claim is limited by the acl_file alone.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::AuthError;
use super::acl::TopicGrants;
use crate::config::{JwtAlgorithm, JwtConfig};

const KEY: &str = "auth.jwt.key_file";

/// A verified token.
#[derive(Clone, Debug)]
pub struct Token {
    pub user: String,
    /// The token's `exp`: the connection ends with `expired` then unless renewed.
    pub expires_at: SystemTime,
    /// From the `acl` claim.
    pub grants: Option<Arc<TopicGrants>>,
}

/// Why a token was refused (logged; the client sees "bad user name or password").
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("bad token signature")]
    BadSignature,
    #[error("token signed with another algorithm")]
    WrongAlgorithm,
    #[error("token without the {0:?} claim")]
    MissingClaim(String),
    #[error("token claim {0:?} is not valid")]
    BadClaim(String),
    #[error("malformed token")]
    Malformed,
}

/// Verifies tokens with the configured key.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    username_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    // Hand-written so the key never ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("username_claim", &self.username_claim)
            .finish()
    }
}

impl JwtVerifier {
    /// `None` when `key_file` is empty (tokens off).
    pub fn load(config: &JwtConfig) -> Result<Option<JwtVerifier>, AuthError> {
        if config.key_file.as_os_str().is_empty() {
            return Ok(None);
        }
        // One backend is compiled in, so the crate would pick it; installing it explicitly
        // keeps that true should another dependency ever enable the other one.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let path = &config.key_file;
        let bytes = std::fs::read(path).map_err(|e| AuthError::file(KEY, path, e.to_string()))?;
        let (key, algorithm) = decoding_key(config.algorithm, &bytes)
            .map_err(|why| AuthError::file(KEY, path, why))?;
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if !config.issuer.is_empty() {
            validation.set_issuer(&[&config.issuer]);
            required.push("iss");
        }
        if config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&config.audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(JwtVerifier {
            key,
            validation,
            username_claim: config.username_claim.clone(),
        }))
    }

    pub fn verify(&self, token: &[u8]) -> Result<Token, TokenError> {
        self.verify_with(token, &self.validation)
    }

    /// Signature and claims, but not `exp`: whether a token still stands after a reload
    /// (its expiry is the connection's own deadline, closed with `expired`, not `revoked`).
    pub fn verify_ignoring_expiry(&self, token: &[u8]) -> Result<Token, TokenError> {
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        self.verify_with(token, &validation)
    }

    fn verify_with(&self, token: &[u8], validation: &Validation) -> Result<Token, TokenError> {
        let data = jsonwebtoken::decode::<Value>(token, &self.key, validation)
            .map_err(|e| token_error(e.into_kind()))?;
        let claims = data.claims;
        let user = match claims.get(&self.username_claim) {
            Some(Value::String(user)) if !user.is_empty() => user.clone(),
            Some(_) => return Err(TokenError::BadClaim(self.username_claim.clone())),
            None => return Err(TokenError::MissingClaim(self.username_claim.clone())),
        };
        // An `exp` beyond what the clock can hold (a signed 10^19, say) is refused rather than
        // overflowing the deadline.
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_u64)
            .and_then(|exp| UNIX_EPOCH.checked_add(Duration::from_secs(exp)))
            .ok_or_else(|| TokenError::BadClaim("exp".to_string()))?;
        let grants = match claims.get("acl") {
            None => None,
            Some(acl) => Some(Arc::new(
                parse_grants(acl).ok_or_else(|| TokenError::BadClaim("acl".to_string()))?,
            )),
        };
        Ok(Token {
            user,
            expires_at,
            grants,
        })
    }
}

fn decoding_key(algorithm: JwtAlgorithm, bytes: &[u8]) -> Result<(DecodingKey, Algorithm), String> {
    match algorithm {
        JwtAlgorithm::Hs256 => {
            // A secret written with `echo` ends in a newline that is not part of it.
            let secret = bytes.trim_ascii_end();
            if secret.is_empty() {
                return Err("the HS256 secret is empty".to_string());
            }
            let key = DecodingKey::from_secret(secret).map_err(|e| e.to_string())?;
            Ok((key, Algorithm::HS256))
        }
        JwtAlgorithm::Rs256 => DecodingKey::from_rsa_pem(bytes)
            .map(|key| (key, Algorithm::RS256))
            .map_err(|e| format!("not an RSA public key in PEM ({e})")),
        JwtAlgorithm::Es256 => DecodingKey::from_ec_pem(bytes)
            .map(|key| (key, Algorithm::ES256))
            .map_err(|e| format!("not an EC (P-256) public key in PEM ({e})")),
    }
}

fn token_error(kind: ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim),
        ErrorKind::InvalidClaimFormat(claim) => TokenError::BadClaim(claim),
        ErrorKind::InvalidIssuer => TokenError::BadClaim("iss".to_string()),
        ErrorKind::InvalidAudience => TokenError::BadClaim("aud".to_string()),
        _ => TokenError::Malformed,
    }
}

/// `{"publish": [...], "subscribe": [...]}` with valid filters; `None` for anything else.
fn parse_grants(acl: &Value) -> Option<TopicGrants> {
    let object = acl.as_object()?;
    if object.keys().any(|k| k != "publish" && k != "subscribe") {
        return None;
    }
    let list = |name: &str| -> Option<Vec<String>> {
        let Some(value) = object.get(name) else {
            return Some(Vec::new());
        };
        value
            .as_array()?
            .iter()
            .map(|f| {
                let f = f.as_str()?;
                super::acl_file::check_filter(f).ok()?;
                Some(f.to_string())
            })
            .collect()
    };
    Some(TopicGrants::new(&list("publish")?, &list("subscribe")?))
}

/// Whether a password is shaped like a JWT (three base64url parts, a JSON header), so that a
/// broker with both a password file and tokens knows which to check it against.
pub fn looks_like_jwt(password: &[u8]) -> bool {
    let mut parts = password.split(|&b| b == b'.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let base64url = |part: &[u8]| {
        part.iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    };
    // "eyJ" is `{"` in base64url: every JWT header starts with it.
    header.starts_with(b"eyJ")
        && !payload.is_empty()
        && base64url(header)
        && base64url(payload)
        && base64url(signature)
}

#[cfg(test)]
pub(crate) mod tests;
