//! `/v1/closes`: the close history, newest first.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;

use crate::close::CloseReason;
use crate::history;

use super::json::{Close, ClosePage};
use super::sessions::parse_limit;
use super::{AdminState, ApiError, given};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClosesQuery {
    client_id: Option<String>,
    reason: Option<String>,
    user: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

/// `GET /v1/closes?client_id=&reason=&user=&limit=&before=`: the latest closes (of one client
/// id, of one reason, of one user), at most `limit`, older than `before` (a `seq`). A query by client id reads
/// that client's records only, through the history's index.
pub async fn list(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<ClosesQuery>, QueryRejection>,
) -> Result<Json<ClosePage>, ApiError> {
    let Query(query) = query?;
    let limit = parse_limit(given(query.limit), DEFAULT_LIMIT, MAX_LIMIT)?;
    let reason = given(query.reason);
    if let Some(reason) = &reason
        && !CloseReason::ALL.iter().any(|r| r.label() == reason)
    {
        return Err(ApiError::bad_request(format!(
            "reason: {reason:?} is not a close reason"
        )));
    }
    let before = match given(query.before) {
        None => None,
        Some(before) => Some(before.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("before: {before:?} is not a sequence number"))
        })?),
    };
    let client_id = given(query.client_id);
    let user = given(query.user);
    let mut found = state.broker.closes.query(&history::Query {
        client_id: client_id.as_deref(),
        reason: reason.as_deref(),
        user: user.as_deref(),
        before,
        limit: limit + 1,
    });
    let next = if found.len() > limit {
        found.truncate(limit);
        found.last().map(|record| record.seq)
    } else {
        None
    };
    Ok(Json(ClosePage {
        closes: found.iter().map(Close::from).collect(),
        next,
    }))
}
