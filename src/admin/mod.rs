//! The HTTP admin API on `[admin].bind`: JSON over HTTP/1.1, a bearer token from
//! `admin.token_file` on every path but `/v1/health`. It talks to the sessions module and the
//! close history only; `brokk ctl` is its command-line client, and a browser console can use
//! it as it is (same origin, JSON documents in [`json`]).
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/health` | 200 `{"status":"ok"}`, no token |
//! | `GET /v1/sessions?state=&user=&prefix=&limit=&after=` | a page of sessions, client-id order |
//! | `GET /v1/sessions/{client_id}` | one session with its subscription list, or 404 |
//! | `DELETE /v1/sessions/{client_id}[?keep_session=true]` | kick: 204, or 404 |
//! | `POST /v1/users/{user}/revoke`, `.../restore` | 204 |
//! | `GET /v1/users/revoked` | the revoked users |
//! | `GET /v1/closes?client_id=&reason=&user=&limit=&before=` | the latest closes, newest first |
//! | `GET /v1/stats` | the overview's figures: totals, and windows of the last 1, 5, 15 minutes |
//! | `GET /v1/listeners` | the MQTT listeners: name, bound address, TLS, WebSocket path |
//! | `GET /`, `/console/...` | the web console's static pages ([`console`]), no token |
//!
//! Errors are `{"error": "..."}` with 400, 401, 404, 405 or 500.

mod closes;
pub mod console;
pub mod json;
mod serve;
mod sessions;
pub mod stats;
mod token;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::broker::Broker;

pub use serve::serve;

/// What every handler sees.
pub struct AdminState {
    pub broker: Arc<Broker>,
    /// `None`: no token configured (loopback binds only).
    pub token: Option<String>,
    /// The metrics `/v1/stats` reads (the recorder `/metrics` serves).
    pub metrics: PrometheusHandle,
    /// Filled by [`stats::sample`].
    pub samples: Arc<stats::Samples>,
    /// The MQTT listeners, as bound.
    pub listeners: Vec<stats::Listener>,
}

/// The API's routes; everything but `/v1/health` and the console's static pages (unknown
/// paths included, so they reveal nothing) needs the token.
pub fn router(state: Arc<AdminState>) -> Router {
    let api = Router::new()
        .route("/v1/sessions", get(sessions::list))
        .route(
            "/v1/sessions/{client_id}",
            get(sessions::detail).delete(sessions::kick),
        )
        .route("/v1/users/revoked", get(users::revoked))
        .route("/v1/users/{user}/revoke", post(users::revoke))
        .route("/v1/users/{user}/restore", post(users::restore))
        .route("/v1/closes", get(closes::list))
        .route("/v1/stats", get(stats::stats))
        .route("/v1/listeners", get(stats::listeners))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            token::require,
        ))
        .with_state(state);
    let mut public = Router::new()
        .route("/v1/health", get(health))
        .route("/console/close-reasons.json", get(console::close_reasons));
    for (path, content_type, body) in console::ASSETS {
        public = public.route(
            path,
            get(move || async move { console::asset(content_type, body) }),
        );
    }
    public.merge(api)
}

async fn health() -> axum::Json<json::Health> {
    axum::Json(json::Health {
        status: "ok".to_string(),
    })
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such path")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json::Error {
            error: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// A query or path the extractors refused: 400 with their words.
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::bad_request(rejection.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> ApiError {
        ApiError::bad_request(rejection.body_text())
    }
}

/// `Some(value)` unless it is missing or empty (`?user=` means no filter, as in a form).
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}
