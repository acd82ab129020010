//! `/v1/users`: revoke, restore, and the revoked list.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::json::Users;
use super::{AdminState, ApiError};

/// `POST /v1/users/{user}/revoke`: every session of the user is closed with `revoked` (v5
/// 0x87) and ended, and the user's CONNECTs are refused until restored. Answers once the
/// closes finished (or after a few seconds) and the revoke is stored.
pub async fn revoke(
    State(state): State<Arc<AdminState>>,
    user: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(user) = user?;
    state
        .broker
        .sessions
        .revoke(&user)
        .await
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/users/{user}/restore`: lifts a revoke (a user never revoked is fine too).
pub async fn restore(
    State(state): State<Arc<AdminState>>,
    user: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(user) = user?;
    state
        .broker
        .sessions
        .restore_user(&user)
        .await
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/users/revoked`.
pub async fn revoked(State(state): State<Arc<AdminState>>) -> Json<Users> {
    let users = state.broker.sessions.revoked_users();
    Json(Users {
        users: users.iter().map(|u| u.to_string()).collect(),
    })
}
