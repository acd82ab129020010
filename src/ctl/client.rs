//! A small HTTP/1.1 client for the admin API, on hyper (the broker's own HTTP stack): one
//! connection per request, a deadline, a bounded answer, JSON in and out.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::de::DeserializeOwned;

/// The most an answer may hold (a page of 1,000 sessions is far less).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Bytes kept as they are in a path segment or query value: RFC 3986's unreserved characters
/// but `.` (a segment of dots must never read as `.` or `..`).
const KEEP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// `text` percent-encoded for a path segment or a query value (client ids hold `/`, spaces,
/// `?`, non-ASCII characters...).
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, KEEP).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the admin API at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("the admin API at {url} did not answer within {seconds} s")]
    Timeout { url: String, seconds: u64 },
    /// The API answered with an error; `message` is its own.
    #[error("{status}: {message}")]
    Api { status: StatusCode, message: String },
    #[error("unexpected answer from the admin API: {0}")]
    Answer(String),
}

/// Where the API is, and how to prove who we are.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    host: String,
    port: u16,
    /// The `Host` header (the URL's authority).
    authority: String,
    /// A path the API sits under (behind a reverse proxy), without a trailing `/`.
    base: String,
    token: Option<String>,
    timeout: Duration,
}

impl Client {
    /// `url`: `http://HOST[:PORT][/BASE]`.
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> Result<Client, CtlError> {
        let bad = |why: &str| CtlError::Usage(format!("--admin {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => {
                return Err(bad(
                    "only http:// is supported (put TLS in front with a proxy)",
                ));
            }
            None => return Err(bad("write it as http://HOST:PORT")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        Ok(Client {
            url: url.to_string(),
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_string(),
            base: uri.path().trim_end_matches('/').to_string(),
            token,
            timeout,
        })
    }

    /// GET `path` and decode its JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CtlError> {
        let body = self.call(Method::GET, path).await?;
        serde_json::from_slice(&body).map_err(|e| CtlError::Answer(e.to_string()))
    }

    /// Sends `method` to `path`; an error answer becomes [`CtlError::Api`].
    pub async fn call(&self, method: Method, path: &str) -> Result<Bytes, CtlError> {
        let seconds = self.timeout.as_secs();
        let exchange = self.exchange(method, path);
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| CtlError::Timeout {
                url: self.url.clone(),
                seconds,
            })??;
        if status.is_success() {
            return Ok(body);
        }
        let message = serde_json::from_slice::<crate::admin::json::Error>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).trim().to_string());
        Err(CtlError::Api { status, message })
    }

    async fn exchange(&self, method: Method, path: &str) -> Result<(StatusCode, Bytes), CtlError> {
        let unreachable = |why: String| CtlError::Unreachable {
            url: self.url.clone(),
            why,
        };
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| CtlError::Usage(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| CtlError::Answer(e.to_string()))?
            .to_bytes();
        driver.abort();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_encoded_for_a_path_segment() {
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(encode(".."), "%2E%2E");
        assert_eq!(encode("ø?#%"), "%C3%B8%3F%23%25");
        assert_eq!(encode("dev-1_x~"), "dev-1_x~");
    }

    #[test]
    fn urls_are_checked() {
        let t = Duration::from_secs(1);
        let c = Client::new("http://[::1]:9000/brokk/", None, t).expect("url");
        assert_eq!(
            (c.host.as_str(), c.port, c.base.as_str()),
            ("::1", 9000, "/brokk")
        );
        let c = Client::new("http://localhost", None, t).expect("url");
        assert_eq!((c.port, c.base.as_str()), (80, ""));
        assert!(Client::new("https://x:1", None, t).is_err());
        assert!(Client::new("127.0.0.1:9884", None, t).is_err());
    }
}
