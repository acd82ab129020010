//! One connection's authorisation: built at CONNECT from its [`Login`], asked on every
//! PUBLISH, SUBSCRIBE, will and delivery, refreshed after a reload, renewed by v5 AUTH.
//!
//! How the connection uses it (`src/connection/authz.rs`, with one call each in `inbound` and
//! `outbound`):
//! - CONNECT: `AuthContext::new`; a will whose topic fails [`AuthContext::may_publish`] is
//!   refused (v5 CONNACK 0x87, 3.1.1 rc 5); a token's [`AuthContext::expires_at`] arms the
//!   main loop's timer, which closes with `expired` (v5 0xA0).
//! - PUBLISH: [`AuthContext::may_publish`]; refused: v5 PUBACK/PUBREC 0x87, 3.1.1 acknowledged
//!   and dropped, counted in `brokk_messages_dropped_total{reason="not_authorized"}`.
//! - SUBSCRIBE: [`AuthContext::may_subscribe`] per filter; `Denied`: SUBACK 0x87 (3.1.1 0x80).
//!   `Granted { check_each: true }`: from then on the connection checks each message it
//!   delivers (retained ones too, before they are queued) with [`AuthContext::may_receive`],
//!   dropping the refused ones. While no subscription asks for it (the usual case), a
//!   delivery costs nothing.
//! - A reload (see [`super::Authenticator::reloads`]): [`AuthContext::refresh`]; `Revoked`
//!   closes with `revoked` (v5 0x87) and ends the session, `Updated` re-judges the
//!   subscriptions (Mosquitto applies reloaded ACLs to existing subscriptions too): refused
//!   ones are removed. A resumed session is re-judged the same way at CONNECT.
//! - v5 AUTH, method "JWT", reason 0x19: [`AuthContext::reauthenticate`] with the new token;
//!   success moves the deadline (answer AUTH 0x00), failure closes with `revoked`
//!   (DISCONNECT 0x87).
//!
//! The checks use the state snapshot taken at CONNECT or at the last refresh, so a check never
//! waits for a lock and a reload cannot change rules halfway through one packet.

use std::sync::Arc;
use std::time::SystemTime;

use super::acl::{Access, SubscribeDecision, TopicGrants};
use super::authenticator::Authenticator;
use super::login::{Credential, Login, Refusal};
use super::state::AuthState;

pub struct AuthContext {
    login: Login,
    client_id: Arc<str>,
    state: Arc<AuthState>,
}

/// What a reload meant for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Nothing was reloaded since the last look.
    Unchanged,
    /// New rules apply from now on; the login still holds.
    Updated,
    /// The login no longer holds: close with `revoked`.
    Revoked,
}

/// `$SYS/...` belongs to the broker: no client publishes there (MQTT 4.7.2 leaves `$` topics
/// to the server; Mosquitto refuses such writes whatever the ACL says).
fn reserved(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

impl AuthContext {
    pub fn new(auth: &Authenticator, login: Login, client_id: Arc<str>) -> AuthContext {
        AuthContext {
            login,
            client_id,
            state: auth.state(),
        }
    }

    pub fn user(&self) -> Option<&str> {
        self.login.user.as_deref()
    }

    pub fn login(&self) -> &Login {
        &self.login
    }

    /// A token's deadline: close with `expired` when it passes (unless renewed first).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.login.expires_at
    }

    /// Whether any rule can refuse a subscription or a delivery (an acl_file, a token's `acl`
    /// claim). Without one, every filter is granted without `check_each`, so a connection can
    /// skip re-judging its subscriptions.
    pub fn restricts(&self) -> bool {
        self.state.acl.is_some() || self.login.grants.is_some()
    }

    fn grants(&self) -> Option<&TopicGrants> {
        self.login.grants.as_deref()
    }

    fn acl_allows(&self, topic: &str, access: Access) -> bool {
        let file = self
            .state
            .acl
            .as_ref()
            .is_none_or(|acl| acl.allowed(self.user(), &self.client_id, topic, access));
        file && self.grants().is_none_or(|g| g.allowed(topic, access))
    }

    /// PUBLISH (and the will at CONNECT) on the topic name `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        !reserved(topic) && self.acl_allows(topic, Access::Write)
    }

    /// A message on `topic` delivered to this client (a retained one included).
    pub fn may_receive(&self, topic: &str) -> bool {
        self.acl_allows(topic, Access::Read)
    }

    /// A SUBSCRIBE filter (`$share/GROUP/` looked through).
    pub fn may_subscribe(&self, filter: &str) -> SubscribeDecision {
        let file = match &self.state.acl {
            Some(acl) => acl.view(self.user(), &self.client_id).subscribe(filter),
            None => SubscribeDecision::Granted { check_each: false },
        };
        match self.grants() {
            Some(grants) => file.and(grants.subscribe(filter)),
            None => file,
        }
    }

    /// Takes up the state in force after a reload; says whether the login still holds.
    pub fn refresh(&mut self, auth: &Authenticator) -> Refresh {
        let state = auth.state();
        if state.generation == self.state.generation {
            return Refresh::Unchanged;
        }
        self.state = state;
        if auth.still_accepted(&self.login) {
            Refresh::Updated
        } else {
            Refresh::Revoked
        }
    }

    /// v5 re-authentication with a fresh token: same user, new deadline (and grants). On
    /// failure the connection is to be closed (the old token stays in force until then).
    pub fn reauthenticate(
        &mut self,
        auth: &Authenticator,
        token: &[u8],
    ) -> Result<SystemTime, Refusal> {
        let state = auth.state();
        let Some(jwt) = &state.jwt else {
            return Err(Refusal::BadCredentials(
                "tokens are not configured".to_string(),
            ));
        };
        let verified = jwt
            .verify(token)
            .map_err(|e| Refusal::BadCredentials(e.to_string()))?;
        if self.user() != Some(verified.user.as_str()) {
            return Err(Refusal::NotAuthorized);
        }
        self.login.credential = Credential::Token(Arc::from(String::from_utf8_lossy(token)));
        self.login.expires_at = Some(verified.expires_at);
        self.login.grants = verified.grants;
        self.state = state;
        Ok(verified.expires_at)
    }
}

#[cfg(test)]
mod tests;
