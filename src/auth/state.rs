//! Everything loaded from `[auth]`'s files, in one immutable value: a reload builds a new one
//! beside the old and swaps it in whole, so a check never sees half of each, and a file that
//! fails to load leaves the old one in force.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::AuthError;
use super::acl::Acl;
use super::acl_file;
use super::jwt::JwtVerifier;
use super::passwords::PasswordFile;
use crate::config::AuthConfig;

#[derive(Debug)]
pub struct AuthState {
    /// Counts loads from 1: a connection's checks can tell that a reload happened.
    pub generation: u64,
    pub allow_anonymous: bool,
    pub passwords: Option<Arc<PasswordFile>>,
    /// `None`: no acl_file, every topic allowed.
    pub acl: Option<Arc<Acl>>,
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Identifies the JWT key file's content (to report a changed key).
    jwt_key: Option<u64>,
}

impl AuthState {
    /// Reads every configured file; the first one that fails names its key, file and line.
    pub fn load(config: &AuthConfig, generation: u64) -> Result<AuthState, AuthError> {
        let passwords = if config.password_file.as_os_str().is_empty() {
            None
        } else {
            Some(Arc::new(PasswordFile::load(&config.password_file)?))
        };
        let acl = if config.acl_file.as_os_str().is_empty() {
            None
        } else {
            Some(Arc::new(Acl::compile(&acl_file::load(&config.acl_file)?)))
        };
        let jwt = JwtVerifier::load(&config.jwt)?.map(Arc::new);
        let jwt_key = match jwt {
            Some(_) => std::fs::read(&config.jwt.key_file)
                .ok()
                .map(|bytes| digest64(&bytes)),
            None => None,
        };
        Ok(AuthState {
            generation,
            allow_anonymous: config.allow_anonymous,
            passwords,
            acl,
            jwt,
            jwt_key,
        })
    }
}

fn digest64(bytes: &[u8]) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(first)
}

/// What a reload changed. `removed_users` and `changed_users` are the users whose connections
/// stand on credentials that no longer hold: they are to be closed with `revoked`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub generation: u64,
    /// Users in the new password file.
    pub users: usize,
    /// Rules in the new acl_file; `None` without one.
    pub acl_rules: Option<usize>,
    /// In the old password file, not in the new one.
    pub removed_users: BTreeSet<String>,
    /// In both, with a different line (a new password).
    pub changed_users: BTreeSet<String>,
    /// The JWT key file's content changed: tokens are re-checked against the new key.
    pub jwt_key_changed: bool,
}

impl ReloadReport {
    pub fn between(old: &AuthState, new: &AuthState) -> ReloadReport {
        let mut report = ReloadReport {
            generation: new.generation,
            users: new.passwords.as_ref().map_or(0, |p| p.len()),
            acl_rules: new.acl.as_ref().map(|acl| acl.rule_count()),
            jwt_key_changed: old.jwt_key != new.jwt_key,
            ..ReloadReport::default()
        };
        if let Some(old) = &old.passwords {
            for user in old.users() {
                let before = old.fingerprint(user);
                match new.passwords.as_ref().and_then(|p| p.fingerprint(user)) {
                    None => {
                        report.removed_users.insert(user.to_string());
                    }
                    Some(after) if Some(after) != before => {
                        report.changed_users.insert(user.to_string());
                    }
                    Some(_) => {}
                }
            }
        }
        report
    }

    /// Whether connections of `user` logged in with a password must be closed.
    pub fn revokes(&self, user: &str) -> bool {
        self.removed_users.contains(user) || self.changed_users.contains(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::passwords::new_hash;

    fn state(dir: &std::path::Path, passwd: &str, acl: Option<&str>) -> AuthState {
        let mut config = AuthConfig {
            password_file: dir.join("passwd"),
            ..AuthConfig::default()
        };
        std::fs::write(&config.password_file, passwd).unwrap();
        if let Some(acl) = acl {
            config.acl_file = dir.join("acl");
            std::fs::write(&config.acl_file, acl).unwrap();
        }
        AuthState::load(&config, 1).unwrap()
    }

    #[test]
    fn report_names_removed_and_changed_users() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            new_hash(b"a").unwrap(),
            new_hash(b"b").unwrap(),
            new_hash(b"c").unwrap(),
        );
        let old = state(
            dir.path(),
            &format!("alice:{a}\nbob:{b}\ncarol:{c}\n"),
            None,
        );
        let b2 = new_hash(b"b").unwrap();
        let new = state(
            dir.path(),
            &format!("alice:{a}\nbob:{b2}\ndave:{c}\n"),
            Some("topic #\n"),
        );
        let report = ReloadReport::between(&old, &new);
        assert_eq!(report.removed_users, BTreeSet::from(["carol".to_string()]));
        assert_eq!(report.changed_users, BTreeSet::from(["bob".to_string()]));
        assert!(report.revokes("bob") && report.revokes("carol"));
        assert!(!report.revokes("alice") && !report.revokes("dave"));
        assert_eq!(report.users, 3);
        assert_eq!(report.acl_rules, Some(1));
        assert!(!report.jwt_key_changed);
    }

    #[test]
    fn load_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuthConfig {
            acl_file: dir.path().join("acl"),
            ..AuthConfig::default()
        };
        std::fs::write(&config.acl_file, "topic bogus a b\n").unwrap();
        let e = AuthState::load(&config, 1).unwrap_err().to_string();
        assert!(
            e.starts_with("auth.acl_file ") && e.contains("line 1"),
            "{e}"
        );
    }
}
