//! The CONNECT: what is negotiated (pure, unit-tested without sockets), authentication, taking
//! the session, and the CONNACK.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth::TOKEN_METHOD;
use crate::config::Limits;
use crate::logsafe::LogId;
use crate::protocol::{ConnAck, ConnAckProperties, Connect, Packet, Version, Will};
use crate::router;
use crate::sessions::{ConnInfo, ConnectRequest, Counters, Lease};

use super::authz::{self, ConnAuth};
use super::io::Io;
use super::run::Connection;
use super::{ConnectionContext, encode_or_log, own_payload};

/// The smallest v5 CONNACK: fixed header, flags, reason code, empty property block.
const MIN_CONNACK: u32 = 5;

/// Topic aliases a v5 client may use towards us (CONNACK Topic Alias Maximum).
pub(super) const INBOUND_TOPIC_ALIAS_MAX: u16 = 64;

/// What a CONNECT negotiated, before any session is touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// `None`: the client sent an empty client id and brokk assigns one.
    pub client_id: Option<Arc<str>>,
    /// Seconds; 0 = none.
    pub keep_alive: u16,
    /// v5 Server Keep Alive, when brokk overrides the client's value.
    pub server_keep_alive: Option<u16>,
    /// Session Expiry Interval, capped by `session.max_session_expiry`.
    pub expiry: u32,
    /// Whether the cap changed what the client asked (v5 then tells it in CONNACK).
    pub expiry_capped: bool,
    pub client_receive_maximum: u16,
    pub client_maximum_packet_size: Option<u32>,
    pub client_topic_alias_maximum: u16,
}

/// A CONNECT refused before any session exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The v5 CONNACK reason code (mapped to the nearest 3.1.1 return code when sent).
    pub code: u8,
    pub why: String,
    /// false: the CONNECT is malformed and the connection closes without a CONNACK
    /// (MQTT-3.1.4-1).
    pub connack: bool,
}

pub(super) fn refusal(code: u8, why: &str) -> Refusal {
    Refusal {
        code,
        why: why.to_string(),
        connack: true,
    }
}

/// Checks a CONNECT against the limits and works out keep-alive, expiry and the client's own
/// limits. `max_session_expiry` is `session.max_session_expiry` in seconds.
pub fn negotiate(
    connect: &Connect,
    limits: &Limits,
    max_session_expiry: u32,
) -> Result<Negotiated, Refusal> {
    let version = connect.version;
    // One Authentication Method, "JWT" (the token in Authentication Data, checked at login;
    // refused there with 0x8C when `[auth.jwt]` is not configured).
    if let Some(method) = &connect.authentication_method
        && method != TOKEN_METHOD
    {
        return Err(refusal(0x8C, "unsupported Authentication Method"));
    }
    if let Some(will) = &connect.will {
        check_will(will, version, limits)?;
    }
    let client_id = if connect.client_id.is_empty() {
        // MQTT-3.1.3-8: an empty client id needs clean session 1 in 3.1.1.
        if version == Version::V311 && !connect.clean_start {
            return Err(refusal(0x85, "empty client id without clean session"));
        }
        None
    } else {
        Some(Arc::from(connect.client_id.as_str()))
    };
    // Keep-alive: a cap from max_keep_alive. v5 tells the client (Server Keep Alive); 3.1.1
    // has no way to, so, as Mosquitto does, a 3.1.1 client asking for more is refused with a
    // reason it can log rather than cut off later for a rule it was never told.
    let cap = u16::try_from(limits.max_keep_alive.as_secs()).unwrap_or(u16::MAX);
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if cap > 0 && (keep_alive == 0 || keep_alive > cap) {
        if version == Version::V311 {
            return Err(refusal(0x85, "keep-alive above max_keep_alive"));
        }
        keep_alive = cap;
        server_keep_alive = Some(cap);
    }
    let (expiry, expiry_capped) = match version {
        Version::V311 => (
            if connect.clean_start {
                0
            } else {
                max_session_expiry
            },
            false,
        ),
        Version::V5 => {
            let asked = connect.session_expiry_interval.unwrap_or(0);
            (asked.min(max_session_expiry), asked > max_session_expiry)
        }
    };
    // MQTT-3.1.2-24: nothing larger than the client's Maximum Packet Size goes to it. The
    // smallest CONNACK is 5 bytes (v5) / 4 (3.1.1): below that, no CONNACK can be sent at all.
    if connect
        .maximum_packet_size
        .is_some_and(|max| max < MIN_CONNACK)
    {
        return Err(Refusal {
            connack: false,
            ..refusal(0x95, "Maximum Packet Size below the smallest CONNACK")
        });
    }
    Ok(Negotiated {
        client_id,
        keep_alive,
        server_keep_alive,
        expiry,
        expiry_capped,
        client_receive_maximum: connect.receive_maximum.unwrap_or(u16::MAX).max(1),
        client_maximum_packet_size: connect.maximum_packet_size,
        client_topic_alias_maximum: connect.topic_alias_maximum.unwrap_or(0),
    })
}

/// The will topic is a topic name: not empty, no wildcards, not deeper than
/// `limits.max_topic_levels` (MQTT-3.1.3-11; v5 names 0x90 Topic Name Invalid for a bad one).
fn check_will(will: &Will, version: Version, limits: &Limits) -> Result<(), Refusal> {
    if will.topic.is_empty() && version == Version::V311 {
        // A zero-length Will Topic makes the CONNECT malformed: close without a CONNACK, whose
        // return codes would all invite a retry (MQTT-3.1.4-1).
        return Err(Refusal {
            connack: false,
            ..refusal(0x81, "empty will topic")
        });
    }
    if router::validate_topic_name(&will.topic).is_err()
        || router::levels(&will.topic) > limits.max_topic_levels
    {
        return Err(refusal(0x90, "invalid will topic"));
    }
    Ok(())
}

/// A CONNECT that was refused, for the close log and the refusal metric.
pub(super) struct Refused {
    pub version: Version,
    /// The `code` label of `brokk_connects_total{result="refused"}`.
    pub metric: &'static str,
    pub client_id: Option<String>,
    /// The user name the CONNECT claimed (for the close history).
    pub user: Option<String>,
    pub why: String,
}

fn refuse<R, W>(io: &mut Io<R, W>, connect: &Connect, refusal: Refusal) -> Refused {
    if refusal.connack {
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: refusal.code,
            properties: ConnAckProperties::default(),
        });
        encode_or_log(&connack, connect.version, &mut io.out);
    }
    Refused {
        version: connect.version,
        metric: crate::metrics::refusal_code(refusal.code),
        client_id: (!connect.client_id.is_empty()).then(|| connect.client_id.clone()),
        user: connect.username.clone(),
        why: refusal.why,
    }
}

/// A revoked user's CONNECT: v5 0x87 Not authorized (3.1.1 rc 5), counted as `banned`.
fn refuse_revoked<R, W>(io: &mut Io<R, W>, connect: &Connect, user: &str) -> Refused {
    Refused {
        metric: "banned",
        user: Some(user.to_string()),
        ..refuse(io, connect, refusal(0x87, "user revoked"))
    }
}

/// Checks the CONNECT, authenticates, takes the session (taking it over from a connected
/// owner if there is one), and writes the CONNACK.
pub(super) async fn accept<R, W>(
    ctx: &ConnectionContext,
    connect: Box<Connect>,
    io: &mut Io<R, W>,
) -> Result<Connection, Refused>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let broker = &ctx.broker;
    let limits = &broker.config.limits;
    let admitted = admit(ctx, &connect).await.map_err(|e| match e {
        NotAdmitted::Refused(r) => refuse(io, &connect, r),
        NotAdmitted::Revoked(user) => refuse_revoked(io, &connect, &user),
    })?;
    let Admitted {
        negotiated,
        auth,
        client_id,
        assigned,
    } = admitted;
    let lease = take_session(ctx, &connect, &negotiated, &auth, client_id.clone())
        .await
        .map_err(|r| refuse(io, &connect, r))?;
    let mut connack = ConnAck {
        session_present: lease.session_present(),
        reason_code: 0,
        properties: connack_properties(&negotiated, &connect, limits, assigned),
    };
    fit_connack(
        &mut connack,
        connect.version,
        negotiated.client_maximum_packet_size,
    );
    encode_or_log(&Packet::ConnAck(connack), connect.version, &mut io.out);
    broker.stats_connect(connect.version, true);
    tracing::info!(
        client_id = %LogId(&client_id),
        peer = %ctx.peer,
        protocol = connect.version.label(),
        clean_start = connect.clean_start,
        keep_alive = negotiated.keep_alive,
        user = auth.context.user().map(|u| LogId(u).to_string()),
        session_present = lease.session_present(),
        "client connected"
    );
    let resumed = lease.session_present();
    let mut conn = Connection::new(ctx, lease, &negotiated, auth);
    if resumed {
        // The session's subscriptions were granted to an earlier connection, maybe to
        // another user or under other rules.
        conn.rejudge();
    }
    conn.resend_inflight(&mut io.out);
    Ok(conn)
}

/// What a CONNECT is once it passed every check and its client logged in.
struct Admitted {
    negotiated: Negotiated,
    auth: ConnAuth,
    client_id: Arc<str>,
    /// The client id brokk assigned (v5 tells the client in CONNACK).
    assigned: Option<Arc<str>>,
}

/// Why [`admit`] turned a CONNECT away.
enum NotAdmitted {
    Refused(Refusal),
    /// The user is revoked (refused as `banned`, naming the logged-in user).
    Revoked(String),
}

impl From<Refusal> for NotAdmitted {
    fn from(refusal: Refusal) -> Self {
        NotAdmitted::Refused(refusal)
    }
}

/// The connection limit, the negotiation, the login, a revoked user, the will's and the
/// client's authorisation, in that order: the first that fails refuses the CONNECT.
async fn admit(ctx: &ConnectionContext, connect: &Connect) -> Result<Admitted, NotAdmitted> {
    let broker = &ctx.broker;
    if ctx.over_limit {
        return Err(refusal(0x97, "max_connections reached").into());
    }
    let negotiated = negotiate(connect, &broker.config.limits, broker.max_session_expiry())?;
    // Taken before the login, so that no reload can slip between the two unseen.
    let reloads = broker.auth.reloads();
    let login = authz::log_in(ctx, connect).await?;
    if let Some(user) = &login.user
        && broker.sessions.is_revoked(user)
    {
        return Err(NotAdmitted::Revoked(user.to_string()));
    }
    let assigned = negotiated
        .client_id
        .is_none()
        .then(|| Arc::<str>::from(broker.assign_client_id()));
    let client_id = negotiated
        .client_id
        .clone()
        .or_else(|| assigned.clone())
        .unwrap_or_else(|| Arc::from(""));
    let auth = authz::authorise(broker, connect, login, client_id.clone(), reloads)?;
    Ok(Admitted {
        negotiated,
        auth,
        client_id,
        assigned,
    })
}

/// Takes the client id's session: in a cluster its entry first (from another node, with its
/// session, unless the client starts clean), then the local table (a takeover of a connected
/// owner happens there).
async fn take_session(
    ctx: &ConnectionContext,
    connect: &Connect,
    negotiated: &Negotiated,
    auth: &ConnAuth,
    client_id: Arc<str>,
) -> Result<Lease, Refusal> {
    let broker = &ctx.broker;
    let cluster = broker.cluster.get();
    // Held until the session is in the table: an adoption of this id waits for it.
    let claim = match cluster {
        Some(cluster) => Some(cluster.lock_client(&client_id).await),
        None => None,
    };
    let remote = match cluster {
        Some(cluster) => match cluster.claim(&client_id).await {
            Ok(remote) => remote.filter(|_| !connect.clean_start),
            Err(error) => return Err(refusal(0x88, &error.to_string())),
        },
        None => None,
    };
    let lease = broker
        .sessions
        .connect(ConnectRequest {
            remote,
            client_id: client_id.clone(),
            clean_start: connect.clean_start,
            expiry_interval: negotiated.expiry,
            will: connect.will.clone().map(|will| Will {
                payload: own_payload(will.payload),
                ..will
            }),
            info: ConnInfo {
                user: auth.context.login().user.clone(),
                peer: ctx.peer,
                listener: ctx.listener.clone(),
                version: connect.version,
                connected_at: SystemTime::now(),
                counters: Counters::default(),
            },
        })
        .await;
    drop(claim);
    if let Some(cluster) = cluster
        && !cluster.still_owner(&client_id).await
    {
        // A CONNECT on another node took the client id meanwhile: this one is stale at once.
        lease.mailbox().send(crate::sessions::Control::Close {
            reason: crate::close::CloseReason::FailedOver,
            discard: true,
        });
    }
    Ok(lease)
}

fn connack_properties(
    negotiated: &Negotiated,
    connect: &Connect,
    limits: &Limits,
    assigned: Option<Arc<str>>,
) -> ConnAckProperties {
    if connect.version != Version::V5 {
        return ConnAckProperties::default();
    }
    ConnAckProperties {
        session_expiry_interval: negotiated.expiry_capped.then_some(negotiated.expiry),
        receive_maximum: Some(limits.receive_maximum),
        maximum_packet_size: Some(limits.max_packet_size),
        assigned_client_identifier: assigned.map(|id| id.to_string()),
        topic_alias_maximum: Some(INBOUND_TOPIC_ALIAS_MAX),
        retain_available: Some(true),
        wildcard_subscription_available: Some(true),
        subscription_identifiers_available: Some(true),
        shared_subscription_available: Some(true),
        server_keep_alive: negotiated.server_keep_alive,
        // MQTT-4.12.0-5: a successful CONNACK repeats the Authentication Method.
        authentication_method: connect.authentication_method.clone(),
        ..ConnAckProperties::default()
    }
}

/// Drops optional CONNACK properties until the packet fits the client's Maximum Packet Size
/// (MQTT-3.1.2-24): first those equal to their defaults (capabilities that are available),
/// then the limits the client can do without (topic aliases towards brokk, brokk's own
/// maximum packet size and Receive Maximum: it then learns them from refusals). Session
/// Expiry, Server Keep Alive and an assigned client id stay: they change what the client
/// must do. The empty-property CONNACK always fits (`negotiate` refused smaller limits).
pub(super) fn fit_connack(connack: &mut ConnAck, version: Version, limit: Option<u32>) {
    let Some(limit) = limit else {
        return;
    };
    let fits = |c: &ConnAck| {
        crate::protocol::encoded_len(&Packet::ConnAck(c.clone()), version)
            .is_ok_and(|n| n <= limit as usize)
    };
    let trims: [fn(&mut ConnAckProperties); 7] = [
        |p| p.retain_available = None,
        |p| p.wildcard_subscription_available = None,
        |p| p.subscription_identifiers_available = None,
        |p| p.shared_subscription_available = None,
        |p| p.topic_alias_maximum = None,
        |p| p.maximum_packet_size = None,
        |p| p.receive_maximum = None,
    ];
    for trim in trims {
        if fits(connack) {
            return;
        }
        trim(&mut connack.properties);
    }
}

/// 1.5 times a keep-alive of `seconds` (MQTT-3.1.2-24 / v5 3.1.2.10), `None` for 0.
pub(super) fn keep_alive_deadline(seconds: u16) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_millis(u64::from(seconds) * 1500))
}

#[cfg(test)]
mod tests;
