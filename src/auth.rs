//! Authentication: anonymous access and the password file (salted argon2 hashes).
//!
//! File format: one `user:PHC-hash` per line, `#` comments and blank lines ignored.

use std::path::Path;

use bytes::Bytes;

use crate::config::AuthConfig;

/// The outcome of checking a CONNECT's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthResult {
    Allowed,
    /// Wrong user name or password (3.1.1 return code 4, v5 0x86).
    BadCredentials,
    /// No credentials and anonymous access is off (3.1.1 return code 5, v5 0x87).
    NotAuthorized,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth.password_file {path}: {why}")]
    PasswordFile { path: String, why: String },
}

/// Checks credentials. Built once at start from `[auth]`.
pub struct Authenticator {
    _private: (),
}

impl Authenticator {
    pub fn from_config(config: &AuthConfig) -> Result<Authenticator, AuthError> {
        let _ = config;
        todo!("ops helper")
    }

    /// Comparison is constant-time in the secret (argon2 verification).
    pub fn check(&self, username: Option<&str>, password: Option<&Bytes>) -> AuthResult {
        let _ = (username, password);
        todo!("ops helper")
    }
}

/// `brokk passwd FILE USER`: adds or updates USER with `password`.
pub fn passwd_set(file: &Path, user: &str, password: &str) -> Result<(), AuthError> {
    let _ = (file, user, password);
    todo!("ops helper")
}

/// `brokk passwd --delete FILE USER`: removes USER; returns whether it was there.
pub fn passwd_delete(file: &Path, user: &str) -> Result<bool, AuthError> {
    let _ = (file, user);
    todo!("ops helper")
}
