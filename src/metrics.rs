//! Metric names and help texts in one place (the names are a documented interface: see the README), the
//! process-wide Prometheus recorder, and the small HTTP server behind `GET /metrics`.
//!
//! The process series, `brokk_build_info` and the page's stable order are in `exposition`.
//!
//! The exporter's own HTTP listener is not used: [`serve`] takes an already bound socket, so
//! the broker reports bind errors under `metrics.bind` and tests can bind port 0.

use std::convert::Infallible;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::close::CloseReason;

mod exposition;

pub use exposition::sorted;

pub const CONNECTIONS: &str = "brokk_connections";
pub const SESSIONS: &str = "brokk_sessions";
pub const CONNECTIONS_CLOSED: &str = "brokk_connections_closed_total";
pub const CONNECTS: &str = "brokk_connects_total";
pub const MESSAGES_RECEIVED: &str = "brokk_messages_received_total";
pub const MESSAGES_SENT: &str = "brokk_messages_sent_total";
pub const BYTES_RECEIVED: &str = "brokk_bytes_received_total";
pub const BYTES_SENT: &str = "brokk_bytes_sent_total";
pub const MESSAGES_DROPPED: &str = "brokk_messages_dropped_total";
pub const QUEUED_MESSAGES: &str = "brokk_queued_messages";
pub const RETAINED_MESSAGES: &str = "brokk_retained_messages";
pub const SUBSCRIPTIONS: &str = "brokk_subscriptions";
pub const SESSIONS_ENDED: &str = "brokk_sessions_ended_total";
pub const STORE_FSYNC_SECONDS: &str = "brokk_store_commit_seconds";
pub const STORE_MESSAGES: &str = "brokk_store_messages";
pub const STORE_BYTES: &str = "brokk_store_bytes";
pub const STORE_RECOVERY_SECONDS: &str = "brokk_store_recovery_seconds";
pub const BUILD_INFO: &str = "brokk_build_info";
/// Per listener (`[listeners.NAME]`): separate series, so that `brokk_connections` and
/// `brokk_connections_closed_total` keep their label sets.
pub const LISTENER_CONNECTIONS: &str = "brokk_listener_connections";
pub const LISTENER_CONNECTIONS_CLOSED: &str = "brokk_listener_connections_closed_total";

/// Every brokk metric name, for tests and tooling (the `process_*` series come on top).
pub const ALL: [&str; 14] = [
    CONNECTIONS,
    SESSIONS,
    CONNECTIONS_CLOSED,
    CONNECTS,
    MESSAGES_RECEIVED,
    MESSAGES_SENT,
    BYTES_RECEIVED,
    BYTES_SENT,
    MESSAGES_DROPPED,
    QUEUED_MESSAGES,
    RETAINED_MESSAGES,
    SUBSCRIPTIONS,
    SESSIONS_ENDED,
    BUILD_INFO,
];

/// The per-listener series, created (at zero) for each listener when it starts serving.
pub const PER_LISTENER: [&str; 2] = [LISTENER_CONNECTIONS, LISTENER_CONNECTIONS_CLOSED];

/// `brokk_sessions{state}` values.
pub const SESSION_STATES: [&str; 2] = ["connected", "disconnected"];
/// `brokk_connects_total{protocol}` values.
pub const PROTOCOLS: [&str; 2] = ["3.1.1", "5.0"];
/// `brokk_connects_total{result}` values.
pub const CONNECT_RESULTS: [&str; 2] = ["accepted", "refused"];
/// `brokk_connects_total{result="refused",code}` values brokk produces, created at 0. An
/// accepted CONNECT carries no `code` label.
pub const REFUSAL_CODES: [&str; 10] = [
    "bad_credentials",
    "not_authorized",
    "server_busy",
    "server_unavailable",
    "banned",
    "quota_exceeded",
    "bad_authentication_method",
    "client_identifier_not_valid",
    "topic_name_invalid",
    "unsupported_protocol_version",
];

/// The `code` label of a refused CONNECT, from its v5 CONNACK reason code (the snake_case of
/// the MQTT 5.0 reason name; 0x86 is `bad_credentials`).
pub fn refusal_code(reason_code: u8) -> &'static str {
    match reason_code {
        0x84 => "unsupported_protocol_version",
        0x85 => "client_identifier_not_valid",
        0x86 => "bad_credentials",
        0x87 => "not_authorized",
        0x88 => "server_unavailable",
        0x89 => "server_busy",
        0x8A => "banned",
        0x8C => "bad_authentication_method",
        0x90 => "topic_name_invalid",
        0x95 => "packet_too_large",
        0x97 => "quota_exceeded",
        0x99 => "payload_format_invalid",
        0x9A => "retain_not_supported",
        0x9B => "qos_not_supported",
        0x9C => "use_another_server",
        0x9D => "server_moved",
        0x9F => "connection_rate_exceeded",
        0x81 => "malformed_packet",
        0x82 => "protocol_error",
        0x83 => "implementation_specific_error",
        _ => "unspecified_error",
    }
}

/// Counts a CONNECT refused with CONNACK `reason_code` (v5 numbering).
pub fn count_refused_connect(protocol: &'static str, reason_code: u8) {
    count_refused_connect_as(protocol, refusal_code(reason_code));
}

/// Counts a refused CONNECT under `code` (a [`REFUSAL_CODES`] label), for refusals whose label
/// is not their reason code's name (a revoked user: 0x87 on the wire, `banned` here).
pub fn count_refused_connect_as(protocol: &'static str, code: &'static str) {
    counter!(CONNECTS, "protocol" => protocol, "result" => "refused", "code" => code).increment(1);
}
/// `brokk_messages_{received,sent}_total{qos}` values.
pub const QOS_LABELS: [&str; 3] = ["0", "1", "2"];
/// `brokk_messages_dropped_total{reason}` values known at start (others may appear later).
/// `not_authorized`: a PUBLISH the ACL refused, or a message its subscriber may not read.
pub const DROP_REASONS: [&str; 5] = [
    "queue_full",
    "too_large_for_client",
    "expired",
    "conflated",
    "not_authorized",
];

/// The Prometheus text format version this endpoint speaks.
const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4";

/// Registers a help text for every metric (shown as `# HELP` lines).
pub fn describe() {
    describe_gauge!(CONNECTIONS, "Open network connections.");
    describe_gauge!(
        SESSIONS,
        "Sessions, by state: connected or waiting for their client."
    );
    describe_counter!(CONNECTIONS_CLOSED, "Connections closed, by close reason.");
    describe_gauge!(
        LISTENER_CONNECTIONS,
        "Open network connections, by listener."
    );
    describe_counter!(
        LISTENER_CONNECTIONS_CLOSED,
        "Connections closed, by listener and close reason."
    );
    describe_counter!(
        CONNECTS,
        "CONNECT packets handled, by protocol version and result (refusals by code)."
    );
    describe_counter!(
        MESSAGES_RECEIVED,
        "PUBLISH packets received from clients, by QoS."
    );
    describe_counter!(MESSAGES_SENT, "PUBLISH packets sent to clients, by QoS.");
    describe_counter!(BYTES_RECEIVED, "Bytes read from client sockets.");
    describe_counter!(BYTES_SENT, "Bytes written to client sockets.");
    describe_counter!(
        MESSAGES_DROPPED,
        "Messages discarded instead of delivered, by reason."
    );
    describe_gauge!(
        QUEUED_MESSAGES,
        "Outbound messages queued, all sessions together."
    );
    describe_gauge!(RETAINED_MESSAGES, "Retained messages stored.");
    describe_gauge!(SUBSCRIPTIONS, "Subscriptions, all sessions together.");
    describe_counter!(
        SESSIONS_ENDED,
        "Sessions ended, by why (each session ends once, whatever its connections did)."
    );
    describe_histogram!(
        STORE_FSYNC_SECONDS,
        "Durable store: time to write (and fsync) one group of batches, seconds."
    );
    describe_gauge!(
        STORE_MESSAGES,
        "Durable store: message bodies stored (each once, however many queues refer to it)."
    );
    describe_gauge!(STORE_BYTES, "Durable store: bytes on disk.");
    describe_gauge!(
        STORE_RECOVERY_SECONDS,
        "Durable store: how long reading it back took at start, seconds."
    );
}

/// Creates the per-listener series of listener `name` at zero (they are shared by every
/// broker in the process, so nothing is reset).
pub fn initialise_listener(name: &str) {
    gauge!(LISTENER_CONNECTIONS, "listener" => name.to_string()).increment(0.0);
    for reason in CloseReason::ALL {
        counter!(LISTENER_CONNECTIONS_CLOSED, "listener" => name.to_string(), "reason" => reason.label())
            .increment(0);
    }
}

/// One more (`delta` 1) or one fewer (-1) open connection on listener `name`.
pub fn listener_connections(name: &str, delta: f64) {
    gauge!(LISTENER_CONNECTIONS, "listener" => name.to_string()).increment(delta);
}

/// Counts a close on listener `name`.
pub fn count_listener_close(name: &str, reason: CloseReason) {
    counter!(LISTENER_CONNECTIONS_CLOSED, "listener" => name.to_string(), "reason" => reason.label())
        .increment(1);
}

/// Installs the Prometheus recorder process-wide on first call and returns its handle; later
/// calls return the same handle (several brokers may start in one test process).
///
/// Every metric is created at zero here, with all its known label sets, so `/metrics` shows
/// the full list from the first scrape and rate() has a starting point.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Commit times span fsyncs of tens of microseconds (a fast SSD, or none) to tens of
            // milliseconds (a busy disk).
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(STORE_FSYNC_SECONDS.to_string()),
                    &[0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                Err(e) => {
                    // Another recorder owns the process (an embedding application, say). Serve
                    // an empty registry rather than refuse to start: metrics are not essential.
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            describe();
            initialise();
            exposition::initialise();
            handle
        })
        .clone()
}

/// Creates every metric at zero. Counters use `increment(0)` so that, were this ever run
/// again, it could not lower a value.
fn initialise() {
    gauge!(CONNECTIONS).set(0.0);
    for state in SESSION_STATES {
        gauge!(SESSIONS, "state" => state).set(0.0);
    }
    for reason in CloseReason::ALL {
        counter!(CONNECTIONS_CLOSED, "reason" => reason.label()).increment(0);
    }
    for protocol in PROTOCOLS {
        counter!(CONNECTS, "protocol" => protocol, "result" => "accepted").increment(0);
        for code in REFUSAL_CODES {
            counter!(CONNECTS, "protocol" => protocol, "result" => "refused", "code" => code)
                .increment(0);
        }
    }
    for qos in QOS_LABELS {
        counter!(MESSAGES_RECEIVED, "qos" => qos).increment(0);
        counter!(MESSAGES_SENT, "qos" => qos).increment(0);
    }
    counter!(BYTES_RECEIVED).increment(0);
    counter!(BYTES_SENT).increment(0);
    for reason in DROP_REASONS {
        counter!(MESSAGES_DROPPED, "reason" => reason).increment(0);
    }
    gauge!(QUEUED_MESSAGES).set(0.0);
    gauge!(RETAINED_MESSAGES).set(0.0);
    gauge!(SUBSCRIPTIONS).set(0.0);
    for end in crate::sessions::SessionEnd::ALL {
        counter!(SESSIONS_ENDED, "reason" => end.label()).increment(0);
    }
}

/// Answers `GET /metrics` on `listener` until `shutdown` resolves; then stops accepting and
/// closes open connections after their current response.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) {
    // Tells connection tasks to finish, so a keep-alive scraper does not outlive the broker.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &handle);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                // A client that never finishes its request headers is dropped.
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                // The wait is wrapped so its (non-Send) borrow ends before the next await.
                _ = async { stop.wait_for(|stopped| *stopped).await.is_ok() } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "metrics endpoint: connection error");
            }
        });
    }
    let _ = stop_tx.send(true);
}

fn respond<B>(request: &Request<B>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    if request.uri().path() != "/metrics" {
        *response.status_mut() = StatusCode::NOT_FOUND;
        *response.body_mut() = Full::new(Bytes::from_static(b"not found; try /metrics\n"));
        return response;
    }
    if request.method() != Method::GET {
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    *response.body_mut() = Full::new(Bytes::from(exposition::render(handle)));
    response
}

/// Metric handles registered once, so the per-message path does not look names up.
pub struct Stats {
    pub received: [metrics::Counter; 3],
    pub sent: [metrics::Counter; 3],
    pub bytes_received: metrics::Counter,
    pub bytes_sent: metrics::Counter,
    pub dropped_queue_full: metrics::Counter,
    pub dropped_too_large: metrics::Counter,
    pub dropped_expired: metrics::Counter,
    pub dropped_conflated: metrics::Counter,
    pub dropped_not_authorized: metrics::Counter,
    pub connections: metrics::Gauge,
    pub queued: metrics::Gauge,
    pub subscriptions: metrics::Gauge,
    pub retained: metrics::Gauge,
}

impl Stats {
    pub fn new() -> Stats {
        let by_qos = |name: &'static str| QOS_LABELS.map(|q| counter!(name, "qos" => q));
        Stats {
            received: by_qos(MESSAGES_RECEIVED),
            sent: by_qos(MESSAGES_SENT),
            bytes_received: counter!(BYTES_RECEIVED),
            bytes_sent: counter!(BYTES_SENT),
            dropped_queue_full: counter!(MESSAGES_DROPPED, "reason" => "queue_full"),
            dropped_too_large: counter!(MESSAGES_DROPPED, "reason" => "too_large_for_client"),
            dropped_expired: counter!(MESSAGES_DROPPED, "reason" => "expired"),
            dropped_conflated: counter!(MESSAGES_DROPPED, "reason" => "conflated"),
            dropped_not_authorized: counter!(MESSAGES_DROPPED, "reason" => "not_authorized"),
            connections: gauge!(CONNECTIONS),
            queued: gauge!(QUEUED_MESSAGES),
            subscriptions: gauge!(SUBSCRIPTIONS),
            retained: gauge!(RETAINED_MESSAGES),
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 request over a raw socket; returns the whole response as text.
    async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8(response).unwrap()
    }

    async fn start() -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let handle = install();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, handle, async move {
            let _ = rx.await;
        }));
        (addr, tx, task)
    }

    #[tokio::test]
    async fn every_metric_is_served_from_the_start() {
        let (addr, stop, task) = start().await;
        let response = get(addr, "GET", "/metrics").await;
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        for name in ALL {
            assert!(
                body.contains(&format!("# HELP {name} ")),
                "no help for {name}:\n{body}"
            );
            assert!(
                body.contains(&format!("\n{name}")),
                "{name} missing:\n{body}"
            );
        }
        // Counters may have been bumped by other tests in this process: check the label sets
        // exist, not their values.
        for reason in CloseReason::ALL {
            let line = format!("{CONNECTIONS_CLOSED}{{reason=\"{}\"}} ", reason.label());
            assert!(body.contains(&line), "{line} missing:\n{body}");
        }
        assert!(
            body.contains(&format!("{SESSIONS}{{state=\"disconnected\"}} ")),
            "{body}"
        );
        assert!(body.contains("protocol=\"3.1.1\""), "{body}");
        for code in REFUSAL_CODES {
            let line =
                format!("{CONNECTS}{{protocol=\"5.0\",result=\"refused\",code=\"{code}\"}} ");
            assert!(body.contains(&line), "{line} missing:\n{body}");
        }
        assert!(body.contains(&format!(
            "{CONNECTS}{{protocol=\"3.1.1\",result=\"accepted\"}} "
        )));
        assert!(body.contains(&format!(
            "{MESSAGES_DROPPED}{{reason=\"too_large_for_client\"}} "
        )));
        assert!(
            body.contains(&format!("{MESSAGES_SENT}{{qos=\"2\"}} ")),
            "{body}"
        );

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn recorded_values_show_up() {
        let (addr, _stop, _task) = start().await;
        // A label no broker code uses, so parallel tests cannot disturb the value.
        counter!(MESSAGES_DROPPED, "reason" => "metrics_unit_test").increment(3);
        let response = get(addr, "GET", "/metrics").await;
        let line = format!("{MESSAGES_DROPPED}{{reason=\"metrics_unit_test\"}} 3\n");
        assert!(response.contains(&line), "{response}");
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused() {
        let (addr, _stop, _task) = start().await;
        assert!(get(addr, "GET", "/").await.starts_with("HTTP/1.1 404"));
        assert!(
            get(addr, "GET", "/metricsx")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            get(addr, "POST", "/metrics")
                .await
                .starts_with("HTTP/1.1 405")
        );
        assert!(
            get(addr, "GET", "/metrics?x=1")
                .await
                .starts_with("HTTP/1.1 200")
        );
    }

    #[tokio::test]
    async fn shutdown_stops_accepting() {
        let (addr, stop, task) = start().await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn install_twice_returns_the_same_registry() {
        let first = install();
        let second = install();
        counter!(MESSAGES_DROPPED, "reason" => "metrics_install_test").increment(1);
        assert!(first.render().contains("reason=\"metrics_install_test\""));
        assert!(second.render().contains("reason=\"metrics_install_test\""));
    }

    /// The trap from the issue: with a second crypto provider compiled in, rustls'
    /// `ServerConfig::builder()` panics for want of a process default. The recorder and a TLS
    /// listener must live together in one process.
    #[tokio::test]
    async fn metrics_recorder_and_tls_coexist() {
        let _handle = install();
        let pki = crate::tls::tests::Pki::new();
        let acceptor = crate::tls::acceptor("tls", &pki.server_config(true)).unwrap();
        crate::tls::tests::handshake(acceptor, pki.client(true))
            .await
            .unwrap();
    }
}
