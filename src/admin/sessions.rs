//! `/v1/sessions`: list (paginated by client id), one in detail, kick.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use crate::logsafe::LogId;
use crate::sessions::SessionInfo;

use super::json::{Session, SessionDetailDoc, SessionPage};
use super::{AdminState, ApiError, given};

/// Sessions per page when `limit` is not given, and the most one page may hold.
const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    user: Option<String>,
    prefix: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

/// `GET /v1/sessions`: up to `limit` sessions after `after`, in client-id order. Each page is
/// read shard by shard (never the whole table locked), on a blocking thread so the scan does
/// not hold up the connections served by this worker. A session present from the first page
/// to the last is listed exactly once: pages follow client-id order, not table positions.
pub async fn list(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<SessionPage>, ApiError> {
    let Query(query) = query?;
    let connected = match given(query.state).as_deref() {
        None => None,
        Some("connected") => Some(true),
        Some("disconnected") => Some(false),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "state: {other:?} is neither connected nor disconnected"
            )));
        }
    };
    let limit = parse_limit(given(query.limit), DEFAULT_LIMIT, MAX_LIMIT)?;
    let user = given(query.user);
    let prefix = given(query.prefix);
    let after = given(query.after);
    let broker = state.broker.clone();
    let keep = move |info: &SessionInfo| {
        connected.is_none_or(|c| info.connected == c)
            && user
                .as_deref()
                .is_none_or(|u| info.user.as_deref() == Some(u))
            && prefix
                .as_deref()
                .is_none_or(|p| info.client_id.starts_with(p))
    };
    let mut page = tokio::task::spawn_blocking(move || {
        broker.sessions.list(after.as_deref(), limit + 1, keep)
    })
    .await
    .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?;
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|info| info.client_id.to_string())
    } else {
        None
    };
    Ok(Json(SessionPage {
        sessions: page.iter().map(Session::from).collect(),
        next,
    }))
}

/// `GET /v1/sessions/{client_id}`.
pub async fn detail(
    State(state): State<Arc<AdminState>>,
    client_id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionDetailDoc>, ApiError> {
    let Path(client_id) = client_id?;
    match state.broker.sessions.detail(&client_id).await {
        Some(detail) => Ok(Json(SessionDetailDoc::from(&detail))),
        None => Err(no_session(&client_id)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KickQuery {
    keep_session: Option<bool>,
}

/// `DELETE /v1/sessions/{client_id}`: closes the connection with `closed_by_controller` (v5
/// 0x98) and discards the session, or with `keep_session=true` closes the connection only.
/// Answers once the connection has let go of its session (or after a few seconds).
pub async fn kick(
    State(state): State<Arc<AdminState>>,
    client_id: Result<Path<String>, PathRejection>,
    query: Result<Query<KickQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(client_id) = client_id?;
    let Query(query) = query?;
    let discard = !query.keep_session.unwrap_or(false);
    if state
        .broker
        .sessions
        .kick_and_wait(&client_id, discard)
        .await
    {
        tracing::info!(client_id = %LogId(&client_id), discard, "admin: session kicked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_session(&client_id))
    }
}

fn no_session(client_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no session with client id {client_id:?}"),
    )
}

/// `limit` as a number in 1..=max; `default` when absent.
pub fn parse_limit(limit: Option<String>, default: usize, max: usize) -> Result<usize, ApiError> {
    let Some(limit) = limit else {
        return Ok(default);
    };
    match limit.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "limit: {limit:?} is not a number from 1 to {max}"
        ))),
    }
}
