//! What a CONNECT's login asks and what it yields, or why it is refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::acl::TopicGrants;
use super::gate::GateError;

/// The identity a TLS listener with `identity_as_username` vouches for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PeerIdentity {
    /// No such listener: the CONNECT's own credentials count.
    #[default]
    None,
    /// The client certificate's Common Name: the user name, no password asked.
    Certificate(Arc<str>),
    /// The certificate has no Common Name: refused as bad credentials (as Mosquitto does).
    MissingCommonName,
}

/// A CONNECT's credentials.
#[derive(Clone, Copy, Debug)]
pub struct LoginRequest<'a> {
    pub peer: SocketAddr,
    pub username: Option<&'a str>,
    pub password: Option<&'a Bytes>,
    pub identity: &'a PeerIdentity,
    /// The v5 CONNECT named Authentication Method [`TOKEN_METHOD`]: `password` carries its
    /// Authentication Data, which must be a token (never checked as a password).
    pub token_method: bool,
}

/// The v5 Authentication Method under which a CONNECT or AUTH carries a JWT.
pub const TOKEN_METHOD: &str = "JWT";

/// What proved the user, so that a reload can tell whether it still does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// No user name, anonymous access on.
    Anonymous,
    /// A user name with nothing configured to check it (no password file, no token): taken as
    /// anonymous, the name is not trusted for authorisation.
    Unchecked,
    /// A password-file entry; `fingerprint` identifies the line it matched.
    Password { fingerprint: u64 },
    /// A JWT (kept to re-check its signature after a key reload).
    Token(Arc<str>),
    /// A TLS client certificate (`identity_as_username`).
    Certificate,
}

/// An accepted login.
#[derive(Clone, Debug)]
pub struct Login {
    /// The authenticated user name; `None` for anonymous clients (and unchecked names).
    pub user: Option<Arc<str>>,
    pub credential: Credential,
    /// A token's `exp`: past it the connection is closed with `expired`, unless renewed.
    pub expires_at: Option<SystemTime>,
    /// Topics a token's `acl` claim grants (narrowing the acl_file).
    pub grants: Option<Arc<TopicGrants>>,
}

impl Login {
    pub(crate) fn anonymous(credential: Credential) -> Login {
        Login {
            user: None,
            credential,
            expires_at: None,
            grants: None,
        }
    }

    pub(crate) fn user(user: &str, credential: Credential) -> Login {
        Login {
            user: Some(Arc::from(user)),
            credential,
            expires_at: None,
            grants: None,
        }
    }
}

/// Why a login was refused; each maps to one CONNACK code and one metrics label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong or unknown user, wrong password, bad or expired token: v5 0x86, 3.1.1 rc 4.
    BadCredentials(String),
    /// No credentials and anonymous access off: v5 0x87, 3.1.1 rc 5.
    NotAuthorized,
    /// The login gate is full or the wait was too long: v5 0x89, 3.1.1 rc 3.
    ServerBusy(GateError),
    /// The check itself failed (a panic, the broker stopping): v5 0x88, 3.1.1 rc 3.
    ServerUnavailable(GateError),
}

impl Refusal {
    /// The v5 CONNACK reason code (the codec maps it to the 3.1.1 return code).
    pub fn reason_code(&self) -> u8 {
        match self {
            Refusal::BadCredentials(_) => 0x86,
            Refusal::NotAuthorized => 0x87,
            Refusal::ServerBusy(_) => 0x89,
            Refusal::ServerUnavailable(_) => 0x88,
        }
    }

    /// For the close line's detail (never holds a password).
    pub fn detail(&self) -> String {
        match self {
            Refusal::BadCredentials(why) => format!("bad user name or password: {why}"),
            Refusal::NotAuthorized => "not authorized".to_string(),
            Refusal::ServerBusy(why) => format!("server busy: {why}"),
            Refusal::ServerUnavailable(why) => format!("server unavailable: {why}"),
        }
    }
}
