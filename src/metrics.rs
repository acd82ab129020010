//! Metric names and help texts in one place (the names are fixed in CONTRACT.md).

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

// TEMPORARY: replaced by the ops branch.
pub fn install() -> metrics_exporter_prometheus::PrometheusHandle {
    todo!()
}
pub async fn serve(
    _listener: tokio::net::TcpListener,
    _handle: metrics_exporter_prometheus::PrometheusHandle,
    _shutdown: impl std::future::Future<Output = ()>,
) {
}
