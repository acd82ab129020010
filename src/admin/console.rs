//! The web console: static pages compiled into the binary (plain HTML, CSS and JavaScript
//! modules from `src/admin/web/`, no build step), served at `/` without the token. The pages
//! hold no data: they ask the token at a login form, keep it in the browser's session storage
//! and call the `/v1` API with it like any other client, so every figure, session and close
//! stays behind the token.
//!
//! `/console/close-reasons.json` is the one-line explanation of every close reason, read from
//! the "In one line" section of `docs/close-reasons.md` (compiled in), with the reason's v5 code
//! and whether its session survives from that file's table.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::close::CloseReason;

const INDEX: &str = include_str!("web/index.html");
const STYLE: &str = include_str!("web/style.css");
const APP: &str = include_str!("web/app.js");
const MQTT: &str = include_str!("web/mqtt.js");
const ICON: &str = include_str!("web/icon.svg");
const CLOSE_REASONS_MD: &str = include_str!("../../docs/close-reasons.md");

/// Scripts and styles from this origin only; the live viewer's WebSocket may go to another
/// port (the MQTT listener), hence `ws:`/`wss:` in `connect-src`.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'; form-action 'self'";

/// The public paths and what they serve.
pub const ASSETS: [(&str, &str, &str); 5] = [
    ("/", "text/html; charset=utf-8", INDEX),
    ("/console/style.css", "text/css; charset=utf-8", STYLE),
    ("/console/app.js", "text/javascript; charset=utf-8", APP),
    ("/console/mqtt.js", "text/javascript; charset=utf-8", MQTT),
    ("/console/icon.svg", "image/svg+xml", ICON),
];

/// One static file with the console's security headers.
pub fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A close reason as the console explains it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReasonDoc {
    pub label: String,
    /// Its sentence from "In one line".
    pub summary: String,
    /// The table's "v5 code" cell.
    pub v5_code: String,
    /// The table's "session survives" cell.
    pub session_survives: String,
}

/// `GET /console/close-reasons.json`.
pub async fn close_reasons() -> Response {
    let body = serde_json::to_string(&reason_docs()).unwrap_or_else(|_| "[]".to_string());
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Markdown inline marks removed: the console shows plain text.
fn plain(text: &str) -> String {
    text.replace("**", "").replace('`', "").trim().to_string()
}

/// The reasons of `docs/close-reasons.md`, in its order: the "In one line" list joined with
/// the table's rows by label.
pub fn reason_docs() -> Vec<ReasonDoc> {
    parse_reason_docs(CLOSE_REASONS_MD)
}

fn parse_reason_docs(markdown: &str) -> Vec<ReasonDoc> {
    let table: Vec<Vec<String>> = markdown
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| line.trim_matches('|').split(" | ").map(plain).collect())
        .collect();
    let mut section = false;
    let mut docs = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("## ") {
            section = line == "## In one line";
            continue;
        }
        if !section {
            continue;
        }
        let Some(item) = line.strip_prefix("- `") else {
            continue;
        };
        let Some((label, summary)) = item.split_once("`: ") else {
            continue;
        };
        let row = table
            .iter()
            .find(|row| row.first().map(String::as_str) == Some(label));
        let cell = |n: usize| row.and_then(|row| row.get(n)).cloned().unwrap_or_default();
        docs.push(ReasonDoc {
            label: label.to_string(),
            summary: plain(summary),
            v5_code: cell(2),
            session_survives: cell(3),
        });
    }
    docs
}

/// Labels of every close reason, for the test below and the console's filter.
pub fn labels() -> Vec<&'static str> {
    CloseReason::ALL.iter().map(|r| r.label()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_reason_has_one_sentence_and_a_table_row() {
        let docs = reason_docs();
        let documented: Vec<&str> = docs.iter().map(|d| d.label.as_str()).collect();
        assert_eq!(
            documented,
            labels(),
            "docs/close-reasons.md 'In one line' must list every reason once, in order"
        );
        for doc in &docs {
            assert!(
                !doc.summary.is_empty() && !doc.summary.contains('\n'),
                "{doc:?}"
            );
            assert!(!doc.v5_code.is_empty(), "no table row for {}", doc.label);
            assert!(!doc.session_survives.is_empty(), "{doc:?}");
        }
        let kick = docs
            .iter()
            .find(|d| d.label == "closed_by_controller")
            .expect("kick");
        assert!(kick.v5_code.starts_with("0x98"), "{kick:?}");
        assert!(kick.session_survives.starts_with("no"), "{kick:?}");
    }

    #[test]
    fn the_parser_ignores_other_sections_and_strips_marks() {
        let md = "| `a` | x | 0x01 A | **no**: gone | yes |\n\n## Other\n- `b`: not this\n\n\
                  ## In one line\n- `a`: the **a** one.\n\n## Later\n- `c`: nor this\n";
        assert_eq!(
            parse_reason_docs(md),
            vec![ReasonDoc {
                label: "a".to_string(),
                summary: "the a one.".to_string(),
                v5_code: "0x01 A".to_string(),
                session_survives: "no: gone".to_string(),
            }]
        );
    }

    #[test]
    fn the_pages_refer_only_to_assets_that_are_served() {
        let served: Vec<&str> = ASSETS.iter().map(|(path, _, _)| *path).collect();
        for (_, _, body) in ASSETS {
            for quoted in body.split(['"', '\'']) {
                if quoted.starts_with("/console/") && !quoted.ends_with(".json") {
                    assert!(served.contains(&quoted), "{quoted} is not served");
                }
            }
            // No font, script or style from elsewhere: the broker may run offline. (The SVG
            // namespace is a name, not a download.)
            let text = body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://")
                    && !text.contains("https://")
                    && !text.contains("//fonts"),
                "an external URL"
            );
        }
    }
}
