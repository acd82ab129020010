//! Authorisation on a connection: the [`AuthContext`] built at CONNECT (the will is checked
//! there), the credential's deadline, v5 re-authentication with a fresh token (AUTH 0x19),
//! and what a reload of `[auth]` means for a connected client: `revoked`, or its
//! subscriptions judged again under the new rules.
//!
//! The per-packet checks are one call each where the packets are handled: PUBLISH and
//! SUBSCRIBE in `inbound`, deliveries in `outbound`. Deliveries are checked only once some
//! subscription needs it ([`Connection::check_receive`]): without an acl_file, or with filters
//! the rules cover whole, a message costs one test of a bool.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::{
    AuthContext, Credential, Login, LoginRequest, Refresh, SubscribeDecision, TOKEN_METHOD,
};
use crate::broker::Broker;
use crate::close::{CloseReason, InvalidKind};
use crate::logsafe::LogId;
use crate::protocol::{Auth, Connect, Packet};

use super::connect::{Refusal, refusal};
use super::outbuf::OutBuf;
use super::run::Connection;
use super::{Close, ConnectionContext};

/// MQTT 5.0 §3.15.2.1: the client asks to re-authenticate.
const REAUTHENTICATE: u8 = 0x19;

/// What a connection keeps of its login.
pub(super) struct ConnAuth {
    pub context: AuthContext,
    /// Reloads to hear of; `None` when no `[auth]` file is configured (a reload then changes
    /// nothing a connection depends on).
    pub reloads: Option<watch::Receiver<u64>>,
    /// The CONNECT named Authentication Method "JWT": renewals come as AUTH 0x19.
    pub token_method: bool,
    /// When the credential (a token's `exp`) runs out: the close is `expired`.
    pub deadline: Option<Instant>,
}

/// Checks the CONNECT's credentials: under Authentication Method "JWT" the token in its
/// Authentication Data (0x8C when `[auth.jwt]` is not configured), else the user name and
/// password, whose checks wait their turn in the login gate (bounded, fair between addresses).
pub(super) async fn log_in(ctx: &ConnectionContext, connect: &Connect) -> Result<Login, Refusal> {
    let auth = &ctx.broker.auth;
    let token_method = connect.authentication_method.is_some();
    if token_method && auth.state().jwt.is_none() {
        return Err(refusal(0x8C, "tokens are not configured"));
    }
    let request = LoginRequest {
        peer: ctx.peer,
        username: connect.username.as_deref(),
        password: match token_method {
            true => connect.authentication_data.as_ref(),
            false => connect.password.as_ref(),
        },
        identity: &ctx.identity,
        token_method,
    };
    auth.login(request)
        .await
        .map_err(|r| refusal(r.reason_code(), &r.detail()))
}

/// After the login: the connection's context, and the will judged by it. `reloads` was taken
/// before the login, so a reload that landed during the CONNECT is seen here (and by the main
/// loop, which refreshes at once).
pub(super) fn authorise(
    broker: &Broker,
    connect: &Connect,
    login: Login,
    client_id: Arc<str>,
    reloads: watch::Receiver<u64>,
) -> Result<ConnAuth, Refusal> {
    let reloaded = reloads.has_changed().unwrap_or(false);
    let context = AuthContext::new(&broker.auth, login, client_id);
    if reloaded && !broker.auth.still_accepted(context.login()) {
        return Err(refusal(
            0x86,
            "credentials revoked by a reload during the CONNECT",
        ));
    }
    // As Mosquitto: a will the client could not publish itself is refused at CONNECT (v5
    // 0x87 Not authorized, 3.1.1 rc 5), not dropped silently when the connection ends.
    if let Some(will) = &connect.will
        && !context.may_publish(&will.topic)
    {
        return Err(refusal(0x87, "will topic not authorized"));
    }
    let state = broker.auth.state();
    let reloadable = state.passwords.is_some() || state.acl.is_some() || state.jwt.is_some();
    // Renewals replace a token; a certificate login (which a TLS identity listener makes
    // whatever the method) has none to replace.
    let token_method = connect.authentication_method.as_deref() == Some(TOKEN_METHOD)
        && matches!(context.login().credential, Credential::Token(_));
    Ok(ConnAuth {
        deadline: context.expires_at().and_then(deadline_of),
        context,
        reloads: reloadable.then_some(reloads),
        token_method,
    })
}

/// The main loop's instant for a wall-clock deadline (a token's `exp`); `None` when it is too
/// far away for the clock to hold.
fn deadline_of(at: SystemTime) -> Option<Instant> {
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now().checked_add(left)
}

/// Waits for the next reload and hands the receiver back for the wait after it; once reloads
/// cannot happen any more (the broker is going), it never resolves.
pub(super) async fn next_reload(mut receiver: watch::Receiver<u64>) -> watch::Receiver<u64> {
    if receiver.changed().await.is_err() {
        return std::future::pending().await;
    }
    receiver
}

impl Connection {
    /// `[auth]` was reloaded: the new rules apply from now on, and a login they no longer
    /// accept (user removed, password changed, token not signed by the new key) closes with
    /// `revoked` (v5 0x87) and ends the session.
    pub(super) fn on_reload(&mut self) -> Option<Close> {
        match self.auth.context.refresh(&self.broker.auth) {
            Refresh::Unchanged => None,
            Refresh::Updated => {
                self.rejudge();
                None
            }
            Refresh::Revoked => Some(Close {
                discard: true,
                ..Close::detailed(
                    CloseReason::Revoked,
                    "credentials no longer accepted after a reload".to_string(),
                )
            }),
        }
    }

    /// Judges the session's subscriptions and will again (new rules, a renewed token, a
    /// resumed session): subscriptions the rules now refuse are removed (messages stop;
    /// MQTT has no way to tell the client), those that need it get every delivery checked,
    /// and a will whose topic is no longer allowed is dropped.
    pub(super) fn rejudge(&mut self) {
        if !self.auth.context.restricts() {
            return;
        }
        let mut refused = Vec::new();
        for (filter, _) in self.lease.state().subscriptions() {
            match self.auth.context.may_subscribe(filter) {
                SubscribeDecision::Denied => refused.push(filter.to_string()),
                SubscribeDecision::Granted { check_each } => self.check_receive |= check_each,
            }
        }
        if !refused.is_empty() {
            // What they already queued is checked on its way out.
            self.check_receive = true;
            for filter in &refused {
                self.lease.unsubscribe(filter);
            }
            tracing::info!(client_id = %LogId(&self.client_id), removed = refused.len(), "subscriptions no longer authorized were removed");
        }
        let will_refused = (self.lease.state().will())
            .is_some_and(|will| !self.auth.context.may_publish(&will.topic));
        if will_refused {
            self.lease.state_mut().set_will(None);
            tracing::info!(client_id = %LogId(&self.client_id), "will dropped: its topic is no longer authorized");
        }
        self.lease.update_counters();
    }

    /// A v5 AUTH. brokk's one method, "JWT", completes in one step at CONNECT, so the only
    /// AUTH a client may send is a re-authentication (0x19) with the same method (MQTT-4.12.1-1)
    /// after a CONNECT that named it (MQTT-4.12.0-7); anything else is a Protocol Error.
    /// A fresh token moves the credential's deadline and is answered with AUTH 0x00; a token
    /// that fails closes the connection with `revoked` (v5 DISCONNECT 0x87 Not authorized,
    /// MQTT-4.12.1-2), whose session does not survive.
    pub(super) fn handle_auth(&mut self, auth: Auth, out: &mut OutBuf) -> Result<(), CloseReason> {
        let same_method = auth.authentication_method.as_deref() == Some(TOKEN_METHOD);
        if !self.auth.token_method || !same_method || auth.reason_code != REAUTHENTICATE {
            return Err(CloseReason::InvalidInboundMessage(InvalidKind::Protocol));
        }
        let token = auth.authentication_data.unwrap_or_default();
        match self.auth.context.reauthenticate(&self.broker.auth, &token) {
            Ok(expires_at) => {
                self.auth.deadline = deadline_of(expires_at);
                // The new token's `acl` claim may grant less than the old one.
                self.rejudge();
                tracing::debug!(client_id = %LogId(&self.client_id), "re-authenticated");
                let success = Auth {
                    reason_code: 0x00,
                    authentication_method: Some(TOKEN_METHOD.to_string()),
                    authentication_data: None,
                    reason_string: None,
                };
                self.send(&Packet::Auth(success), out)
            }
            Err(refusal) => {
                tracing::info!(client_id = %LogId(&self.client_id), why = refusal.detail(), "re-authentication failed");
                Err(CloseReason::Revoked)
            }
        }
    }
}
