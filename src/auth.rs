//! Authentication: anonymous access and the password file (salted argon2 hashes).
//!
//! File format: one `user:PHC-hash` per line, `#` comments and blank lines ignored. The hash is
//! an argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) with a random salt, as
//! written by `brokk passwd`.
//!
//! Verification costs an argon2 computation (tens of milliseconds in a release build): callers
//! on an async runtime should run [`Authenticator::check`] with `spawn_blocking`.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
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

fn file_error(path: &Path, why: impl Into<String>) -> AuthError {
    AuthError::PasswordFile {
        path: path.display().to_string(),
        why: why.into(),
    }
}

/// Checks credentials. Built once at start from `[auth]`.
pub struct Authenticator {
    allow_anonymous: bool,
    /// `None` when no password file is configured.
    passwords: Option<Passwords>,
}

struct Passwords {
    users: HashMap<String, PasswordHash>,
    /// Verified against when the user is unknown, so an unknown user costs the same time as a
    /// wrong password and the response time does not reveal which users exist.
    dummy: PasswordHash,
}

impl std::fmt::Debug for Authenticator {
    // Hand-written so hashes never end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("allow_anonymous", &self.allow_anonymous)
            .field("users", &self.passwords.as_ref().map(|p| p.users.len()))
            .finish()
    }
}

impl Authenticator {
    pub fn from_config(config: &AuthConfig) -> Result<Authenticator, AuthError> {
        let passwords = if config.password_file.as_os_str().is_empty() {
            None
        } else {
            let path = &config.password_file;
            let text =
                std::fs::read_to_string(path).map_err(|e| file_error(path, e.to_string()))?;
            let mut users = HashMap::new();
            for (number, line) in text.lines().enumerate() {
                if let Some((user, hash)) = parse_line(line)
                    .map_err(|why| file_error(path, format!("line {}: {why}", number + 1)))?
                {
                    users.insert(user.to_string(), hash);
                }
            }
            let dummy = Argon2::default()
                .hash_password(b"brokk: no such user")
                .map_err(|e| file_error(path, format!("cannot compute a hash: {e}")))?;
            Some(Passwords { users, dummy })
        };
        Ok(Authenticator {
            allow_anonymous: config.allow_anonymous,
            passwords,
        })
    }

    /// Comparison is constant-time in the secret (argon2 verification).
    pub fn check(&self, username: Option<&str>, password: Option<&Bytes>) -> AuthResult {
        let anonymous = if self.allow_anonymous {
            AuthResult::Allowed
        } else {
            AuthResult::NotAuthorized
        };
        let (Some(username), Some(passwords)) = (username, &self.passwords) else {
            // No user name, or nothing to check one against.
            return anonymous;
        };
        // A user name without a password (allowed by MQTT) is checked as an empty password:
        // it fails, but only after the same work as any other attempt.
        let password: &[u8] = password.map(|p| p.as_ref()).unwrap_or_default();
        let (hash, known) = match passwords.users.get(username) {
            Some(hash) => (hash, true),
            None => (&passwords.dummy, false),
        };
        let verified = Argon2::default().verify_password(password, hash).is_ok();
        if verified && known {
            AuthResult::Allowed
        } else {
            AuthResult::BadCredentials
        }
    }
}

/// One line of the file: `Ok(None)` for blanks and comments.
fn parse_line(line: &str) -> Result<Option<(&str, PasswordHash)>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let Some((user, hash)) = line.split_once(':') else {
        return Err("expected user:hash".to_string());
    };
    if user.is_empty() {
        return Err("empty user name".to_string());
    }
    let hash = PasswordHash::new(hash.trim())
        .map_err(|e| format!("user {user:?}: not a PHC password hash ({e})"))?;
    // Only argon2 hashes can be verified; refusing others here beats failing every login.
    if !hash.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "user {user:?}: unsupported algorithm {:?} (use brokk passwd)",
            hash.algorithm.as_str()
        ));
    }
    Ok(Some((user, hash)))
}

/// The user name of a line, if it is a user line (malformed lines count as not).
fn line_user(line: &str) -> Option<&str> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    line.split_once(':').map(|(user, _)| user)
}

fn check_user_name(file: &Path, user: &str) -> Result<(), AuthError> {
    // Each refusal keeps the line format unambiguous: `:` ends the name, a newline ends the
    // line, and a name that trims to nothing or starts with `#` would read as blank/comment.
    if user.contains(':') {
        return Err(file_error(
            file,
            format!("user name {user:?} must not contain ':'"),
        ));
    }
    if user.contains(['\n', '\r']) {
        return Err(file_error(
            file,
            format!("user name {user:?} must not contain a line break"),
        ));
    }
    let trimmed = user.trim();
    if trimmed.is_empty() {
        return Err(file_error(file, "user name must not be empty"));
    }
    if trimmed.starts_with('#') {
        return Err(file_error(
            file,
            format!("user name {user:?} must not start with '#'"),
        ));
    }
    Ok(())
}

/// The file's lines, or none if it does not exist yet.
fn read_lines(file: &Path) -> Result<Option<Vec<String>>, AuthError> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(Some(text.lines().map(str::to_string).collect())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_error(file, e.to_string())),
    }
}

/// Replaces `file` with `lines` atomically: a reader (or a crash) sees the old file or the new
/// one, never half of one. The temporary file sits next to the target so rename stays within
/// one filesystem.
fn write_atomically(file: &Path, lines: &[String], existing: bool) -> Result<(), AuthError> {
    let io = |e: std::io::Error| file_error(file, e.to_string());
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = file
        .file_name()
        .ok_or_else(|| file_error(file, "not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));

    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        // Created private: the hashes are slow to crack, not impossible.
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut out = options.open(&tmp)?;
        if existing {
            // Keep whatever permissions the operator gave the existing file.
            let permissions = std::fs::metadata(file)?.permissions();
            out.set_permissions(permissions)?;
        }
        let mut text = lines.join("\n");
        text.push('\n');
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

/// `brokk passwd FILE USER`: adds or updates USER with `password`.
pub fn passwd_set(file: &Path, user: &str, password: &str) -> Result<(), AuthError> {
    check_user_name(file, user)?;
    if password.is_empty() {
        return Err(file_error(file, "password must not be empty"));
    }
    let hash = Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|e| file_error(file, format!("cannot hash the password: {e}")))?;
    let entry = format!("{user}:{hash}");

    let existing = read_lines(file)?;
    let is_existing = existing.is_some();
    let mut lines = existing.unwrap_or_default();
    let mut replaced = false;
    // Replace in place (keeping the file's order and comments); drop any duplicate entries of
    // the same user so the new password is the only one.
    lines.retain_mut(|line| {
        if line_user(line) != Some(user) {
            return true;
        }
        if replaced {
            return false;
        }
        replaced = true;
        *line = entry.clone();
        true
    });
    if !replaced {
        lines.push(entry);
    }
    write_atomically(file, &lines, is_existing)
}

/// `brokk passwd --delete FILE USER`: removes USER; returns whether it was there.
pub fn passwd_delete(file: &Path, user: &str) -> Result<bool, AuthError> {
    let Some(mut lines) = read_lines(file)? else {
        return Ok(false);
    };
    let before = lines.len();
    lines.retain(|line| line_user(line) != Some(user));
    if lines.len() == before {
        return Ok(false);
    }
    write_atomically(file, &lines, true)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config(allow_anonymous: bool, file: &Path) -> AuthConfig {
        AuthConfig {
            allow_anonymous,
            password_file: file.to_path_buf(),
        }
    }

    fn pw(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn anonymous_without_password_file() {
        let open = Authenticator::from_config(&config(true, Path::new(""))).unwrap();
        assert_eq!(open.check(None, None), AuthResult::Allowed);
        assert_eq!(open.check(Some("bob"), Some(&pw("x"))), AuthResult::Allowed);
        let closed = Authenticator::from_config(&config(false, Path::new(""))).unwrap();
        assert_eq!(closed.check(None, None), AuthResult::NotAuthorized);
        assert_eq!(
            closed.check(Some("bob"), Some(&pw("x"))),
            AuthResult::NotAuthorized
        );
    }

    #[test]
    fn password_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        passwd_set(&file, "alice", "s3cret").unwrap();
        passwd_set(&file, "bob", "hunter2").unwrap();

        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("alice:$argon2id$"), "{text}");
        assert!(!text.contains("s3cret"));

        let auth = Authenticator::from_config(&config(false, &file)).unwrap();
        assert_eq!(
            auth.check(Some("alice"), Some(&pw("s3cret"))),
            AuthResult::Allowed
        );
        assert_eq!(
            auth.check(Some("alice"), Some(&pw("hunter2"))),
            AuthResult::BadCredentials
        );
        assert_eq!(
            auth.check(Some("bob"), Some(&pw("hunter2"))),
            AuthResult::Allowed
        );
        assert_eq!(
            auth.check(Some("carol"), Some(&pw("s3cret"))),
            AuthResult::BadCredentials
        );
        assert_eq!(auth.check(Some("alice"), None), AuthResult::BadCredentials);
        assert_eq!(auth.check(None, None), AuthResult::NotAuthorized);

        // With anonymous access on, a wrong password is still wrong.
        let auth = Authenticator::from_config(&config(true, &file)).unwrap();
        assert_eq!(auth.check(None, None), AuthResult::Allowed);
        assert_eq!(
            auth.check(Some("alice"), Some(&pw("nope"))),
            AuthResult::BadCredentials
        );
    }

    #[test]
    fn salts_are_random() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        passwd_set(&a, "u", "same").unwrap();
        passwd_set(&b, "u", "same").unwrap();
        assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    }

    #[test]
    fn update_and_delete_preserve_other_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        passwd_set(&file, "alice", "one").unwrap();
        let alice_line = std::fs::read_to_string(&file).unwrap();
        let original = format!("# operators\n\n{}", alice_line);
        std::fs::write(&file, &original).unwrap();
        passwd_set(&file, "bob", "two").unwrap();
        passwd_set(&file, "bob", "three").unwrap();

        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(&lines[..3], &["# operators", "", alice_line.trim_end()]);
        assert!(lines[3].starts_with("bob:$argon2id$"));
        let auth = Authenticator::from_config(&config(false, &file)).unwrap();
        assert_eq!(
            auth.check(Some("bob"), Some(&pw("three"))),
            AuthResult::Allowed
        );
        assert_eq!(
            auth.check(Some("bob"), Some(&pw("two"))),
            AuthResult::BadCredentials
        );

        assert!(passwd_delete(&file, "bob").unwrap());
        assert!(!passwd_delete(&file, "bob").unwrap());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
        assert!(!passwd_delete(&dir.path().join("missing"), "bob").unwrap());
        assert!(!dir.path().join("missing").exists());
    }

    #[cfg(unix)]
    #[test]
    fn new_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        passwd_set(&file, "alice", "one").unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn bad_user_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        for user in ["a:b", "a\nb", "a\rb", "", "  ", "#admin", " #x"] {
            let e = passwd_set(&file, user, "pw").unwrap_err();
            assert!(e.to_string().starts_with("auth.password_file "), "{e}");
        }
        assert!(passwd_set(&file, "alice", "").is_err());
        assert!(!file.exists());
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        std::fs::write(&file, "# comment\n\nalice-without-hash\n").unwrap();
        let e = Authenticator::from_config(&config(false, &file))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains("line 3"), "{e}");

        std::fs::write(&file, "alice:plaintext\n").unwrap();
        let e = Authenticator::from_config(&config(false, &file))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("alice"), "{e}");
        assert!(!e.contains("plaintext"), "{e}");

        std::fs::write(
            &file,
            "alice:$pbkdf2-sha256$i=1000$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNo\n",
        )
        .unwrap();
        let e = Authenticator::from_config(&config(false, &file))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unsupported algorithm"), "{e}");

        let missing = PathBuf::from("/nonexistent/passwd");
        let e = Authenticator::from_config(&config(false, &missing))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("auth.password_file /nonexistent/passwd:"),
            "{e}"
        );
    }
}
