//! The admin API's JSON documents, shared by the server and `brokk ctl`. Field names are
//! snake_case; times are RFC 3339 in UTC with milliseconds (`Date.parse` reads them); absent
//! values are `null`, never missing, so a browser can rely on every field.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::history::CloseRecord;
use crate::sessions::{SessionDetail, SessionInfo};

/// One session, as `GET /v1/sessions` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub client_id: String,
    /// `connected`, or `disconnected` (the session waits for its client).
    pub state: String,
    pub user: Option<String>,
    /// The client's address (the last one, for a waiting session).
    pub peer: String,
    /// `3.1.1` or `5.0`.
    pub protocol: String,
    /// The `[listeners.NAME]` it connected through.
    pub listener: String,
    pub connected_since: String,
    pub disconnected_since: Option<String>,
    /// When a waiting session ends unless its client returns.
    pub expires_at: Option<String>,
    /// Session Expiry Interval in seconds (0: the session ends with its connection).
    pub expiry_s: u32,
    /// How many subscriptions.
    pub subscriptions: usize,
    /// Messages waiting in its outbound queue.
    pub queued: usize,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
}

/// `GET /v1/sessions`: one page. `next` is the `after` of the following page, `null` on the
/// last one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPage {
    pub sessions: Vec<Session>,
    pub next: Option<String>,
}

/// `GET /v1/sessions/{client_id}`: the session and its subscription list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDetailDoc {
    #[serde(flatten)]
    pub session: Session,
    pub subscription_list: Vec<Subscription>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// As the client sent it (`$share/GROUP/...` included).
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub subscription_identifier: Option<u32>,
}

/// One close, as `GET /v1/closes` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    /// Position in the history: newer closes have larger numbers (`before` pages with it).
    pub seq: u64,
    /// `null`: the connection closed before a CONNECT named a client id.
    pub client_id: Option<String>,
    /// The authenticated user; for a refused CONNECT, the user name it claimed.
    pub user: Option<String>,
    pub peer: String,
    /// A close-reason label (`closed_by_controller`, `revoked`, ...).
    pub reason: String,
    pub at: String,
    pub detail: Option<String>,
    /// How long the connection lasted.
    pub duration_ms: u64,
}

/// `GET /v1/closes`: newest first. `next` is the `before` of the following (older) page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosePage {
    pub closes: Vec<Close>,
    pub next: Option<u64>,
}

/// `GET /v1/users/revoked`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Users {
    pub users: Vec<String>,
}

/// Every error answer: the status code says what kind, `error` says what happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub error: String,
}

/// `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

/// RFC 3339, UTC, milliseconds.
pub fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

impl From<&SessionInfo> for Session {
    fn from(info: &SessionInfo) -> Session {
        let expires_at = info
            .disconnected_since
            .map(|since| time(since + Duration::from_secs(u64::from(info.expiry_interval))));
        Session {
            client_id: info.client_id.to_string(),
            state: if info.connected {
                "connected"
            } else {
                "disconnected"
            }
            .to_string(),
            user: info.user.as_deref().map(str::to_string),
            peer: info.peer.to_string(),
            protocol: info.version.label().to_string(),
            listener: info.listener.to_string(),
            connected_since: time(info.connected_since),
            disconnected_since: info.disconnected_since.map(time),
            expires_at,
            expiry_s: info.expiry_interval,
            subscriptions: info.subscriptions,
            queued: info.queued,
            inflight: info.inflight,
        }
    }
}

impl From<&SessionDetail> for SessionDetailDoc {
    fn from(detail: &SessionDetail) -> SessionDetailDoc {
        SessionDetailDoc {
            session: Session::from(&detail.info),
            subscription_list: detail
                .subscriptions
                .iter()
                .map(|(filter, options)| Subscription {
                    filter: filter.clone(),
                    qos: options.qos as u8,
                    no_local: options.no_local,
                    retain_as_published: options.retain_as_published,
                    subscription_identifier: options.subscription_identifier,
                })
                .collect(),
        }
    }
}

impl From<&CloseRecord> for Close {
    fn from(record: &CloseRecord) -> Close {
        Close {
            seq: record.seq,
            client_id: record.client_id.as_deref().map(str::to_string),
            user: record.user.as_deref().map(str::to_string),
            peer: record.peer.to_string(),
            reason: record.reason.label().to_string(),
            at: time(record.at),
            detail: record.detail.clone(),
            duration_ms: record.duration_ms,
        }
    }
}
