//! Authentication and authorisation: who a client is, what it may do, and the reload on SIGHUP.
//!
//! - [`passwords`]: password files (brokk's argon2id lines, mosquitto_passwd's `$6$`/`$7$`).
//! - [`passwd`]: `brokk passwd`, which edits such a file.
//! - [`acl_file`], [`acl`], [`acl_trie`]: Mosquitto's acl_file syntax, compiled into tries.
//! - [`jwt`]: tokens in the CONNECT password (HS256, RS256, ES256).
//! - [`gate`]: the login gate bounding concurrent and waiting password checks.
//! - [`state`]: everything loaded from the files, immutable, swapped whole by a reload.
//! - [`authenticator`]: CONNECT-time login and the reload.
//! - [`login`]: what a login asks and what it yields (or why it is refused).
//! - [`context`]: one connection's checks (publish, subscribe, receive) and renewal.

pub mod acl;
pub mod acl_file;
pub mod acl_trie;
pub mod authenticator;
pub mod context;
pub mod gate;
pub mod jwt;
pub mod login;
pub mod passwd;
pub mod passwords;
pub mod state;

use std::path::Path;

pub use acl::{Access, Acl, SubscribeDecision};
pub use authenticator::Authenticator;
pub use context::{AuthContext, Refresh};
pub use login::{Credential, Login, LoginRequest, PeerIdentity, Refusal, TOKEN_METHOD};
pub use passwd::{passwd_delete, passwd_set};
pub use state::{AuthState, ReloadReport};

/// A file of `[auth]` that cannot be used; the message names the key, the file and why.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{key} {path}: {why}")]
    File {
        key: &'static str,
        path: String,
        why: String,
    },
    #[error("auth: cannot start the login gate's threads: {0}")]
    Threads(std::io::Error),
}

impl AuthError {
    pub(crate) fn file(key: &'static str, path: &Path, why: impl Into<String>) -> AuthError {
        AuthError::File {
            key,
            path: path.display().to_string(),
            why: why.into(),
        }
    }
}

/// A client-supplied name shortened for a log line: a 64 KiB user name must not make every
/// refusal a 64 KiB line.
pub(crate) fn for_log(name: &str) -> &str {
    const MAX: usize = 64;
    if name.len() <= MAX {
        return name;
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}
