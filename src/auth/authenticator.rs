//! The authenticator: logs CONNECTs in against the current [`AuthState`] (password checks
//! through the login [`Gate`]), and reloads the state on SIGHUP.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::gate::{Gate, GateError};
use super::jwt::looks_like_jwt;
use super::login::{Credential, Login, LoginRequest, PeerIdentity, Refusal};
use super::passwords::Verdict;
use super::state::{AuthState, ReloadReport};
use super::{AuthError, for_log};
use crate::config::AuthConfig;

pub struct Authenticator {
    config: AuthConfig,
    state: ArcSwap<AuthState>,
    gate: Gate<Verdict>,
    /// One reload at a time: two at once could each diff against the same old state.
    reloading: Mutex<()>,
    /// The generation in force, for connections that want to hear of reloads.
    reloads: watch::Sender<u64>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("state", &self.state.load())
            .field("gate_workers", &self.gate.workers())
            .finish()
    }
}

impl Authenticator {
    /// Loads every configured file and starts the login gate (one thread per core).
    pub fn from_config(config: &AuthConfig) -> Result<Authenticator, AuthError> {
        let state = AuthState::load(config, 1)?;
        let gate = Gate::per_core(config.max_pending_auth, config.pending_timeout)
            .map_err(AuthError::Threads)?;
        Ok(Authenticator {
            config: config.clone(),
            state: ArcSwap::from_pointee(state),
            gate,
            reloading: Mutex::new(()),
            reloads: watch::Sender::new(1),
        })
    }

    /// The state in force (a snapshot: a reload does not change it under the caller).
    pub fn state(&self) -> Arc<AuthState> {
        self.state.load_full()
    }

    /// Changes to the generation in force, one per successful reload.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Password checks waiting in the login gate.
    pub fn pending_checks(&self) -> usize {
        self.gate.waiting()
    }

    /// Checks a CONNECT's credentials. Refusals are logged with the user name (never the
    /// password), shortened.
    pub async fn login(&self, request: LoginRequest<'_>) -> Result<Login, Refusal> {
        let state = self.state();
        let result = self.decide(&state, &request).await;
        if let Err(refusal) = &result {
            let user = request.username.map(for_log);
            let peer = request.peer;
            let why = refusal.detail();
            match refusal {
                Refusal::ServerUnavailable(_) => tracing::warn!(user, %peer, why, "login refused"),
                _ => tracing::info!(user, %peer, why, "login refused"),
            }
        }
        result
    }

    async fn decide(
        &self,
        state: &Arc<AuthState>,
        request: &LoginRequest<'_>,
    ) -> Result<Login, Refusal> {
        match request.identity {
            PeerIdentity::Certificate(name) => {
                return Ok(Login::user(name, Credential::Certificate));
            }
            PeerIdentity::MissingCommonName => {
                return Err(Refusal::BadCredentials(
                    "the client certificate has no common name".to_string(),
                ));
            }
            PeerIdentity::None => {}
        }
        let password = request.password.map(|p| &p[..]);
        if request.token_method && (state.jwt.is_none() || password.is_none()) {
            return Err(Refusal::BadCredentials(
                "Authentication Method JWT without a token".to_string(),
            ));
        }
        if let (Some(jwt), Some(token)) = (&state.jwt, password)
            && (request.token_method || looks_like_jwt(token))
        {
            let token_text = String::from_utf8_lossy(token);
            return match jwt.verify(token) {
                Ok(verified) => Ok(Login {
                    expires_at: Some(verified.expires_at),
                    grants: verified.grants,
                    ..Login::user(&verified.user, Credential::Token(Arc::from(token_text)))
                }),
                Err(e) => Err(Refusal::BadCredentials(e.to_string())),
            };
        }
        let Some(user) = request.username else {
            return anonymous(state, Credential::Anonymous);
        };
        let Some(passwords) = &state.passwords else {
            if state.jwt.is_some() && password.is_some() {
                return Err(Refusal::BadCredentials(
                    "the password is not a token".to_string(),
                ));
            }
            // Nothing to check the name against: anonymous, and the name is not trusted.
            return anonymous(state, Credential::Unchecked);
        };
        // MQTT allows a user name without a password: checked as an empty one, with the same
        // work as any other attempt.
        let password = request.password.cloned().unwrap_or_default();
        let (checked_user, passwords) = (user.to_string(), passwords.clone());
        let verdict = self
            .gate
            .run(request.peer.ip(), move || {
                passwords.verify(&checked_user, &password)
            })
            .await;
        match verdict {
            Ok(Verdict::Verified { fingerprint }) => {
                Ok(Login::user(user, Credential::Password { fingerprint }))
            }
            Ok(Verdict::Rejected) => Err(Refusal::BadCredentials(
                "unknown user or wrong password".to_string(),
            )),
            Err(e @ (GateError::QueueFull | GateError::TimedOut)) => Err(Refusal::ServerBusy(e)),
            Err(e @ (GateError::Panicked | GateError::Closed)) => {
                Err(Refusal::ServerUnavailable(e))
            }
        }
    }

    /// Whether `login` still holds under the state in force: its password line unchanged, its
    /// token still signed by the configured key. Anonymous and certificate logins always hold.
    pub fn still_accepted(&self, login: &Login) -> bool {
        let state = self.state();
        match &login.credential {
            Credential::Anonymous | Credential::Unchecked | Credential::Certificate => true,
            Credential::Password { fingerprint } => login.user.as_deref().is_some_and(|user| {
                state.passwords.as_ref().and_then(|p| p.fingerprint(user)) == Some(*fingerprint)
            }),
            Credential::Token(token) => state.jwt.as_ref().is_some_and(|jwt| {
                jwt.verify_ignoring_expiry(token.as_bytes())
                    .is_ok_and(|t| login.user.as_deref() == Some(t.user.as_str()))
            }),
        }
    }

    /// Re-reads `password_file`, `acl_file` and the JWT key into a new state and swaps it in.
    /// A file that fails to load leaves the state in force untouched (and the error says why).
    /// Blocking (file reads, one hash for the unknown-user decoy): call it off the runtime.
    pub fn reload(&self) -> Result<ReloadReport, AuthError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.state();
        let new = match AuthState::load(&self.config, old.generation + 1) {
            Ok(new) => new,
            Err(error) => {
                tracing::warn!(%error, generation = old.generation, "auth reload failed; the rules in force stay");
                return Err(error);
            }
        };
        let report = ReloadReport::between(&old, &new);
        self.state.store(Arc::new(new));
        self.reloads.send_replace(report.generation);
        tracing::info!(
            generation = report.generation,
            users = report.users,
            acl_rules = report.acl_rules,
            removed = ?report.removed_users,
            changed = ?report.changed_users,
            jwt_key_changed = report.jwt_key_changed,
            "auth reloaded"
        );
        Ok(report)
    }
}

fn anonymous(state: &AuthState, credential: Credential) -> Result<Login, Refusal> {
    if state.allow_anonymous {
        Ok(Login::anonymous(credential))
    } else {
        Err(Refusal::NotAuthorized)
    }
}

#[cfg(test)]
mod tests;
