//! The `$SYS` topics: the broker's figures published as retained messages every
//! `admin.sys_interval`, under the names Mosquitto's users' dashboards already read
//! (`$SYS/broker/clients/connected`, `$SYS/broker/load/messages/received/1min`, ...; see the
//! mosquitto(8) manual, "Broker status"), plus brokk's own `$SYS/brokk/closes/<reason>`.
//!
//! The figures are read from the same series `/metrics` serves (the Prometheus recorder's
//! rendering), so `$SYS` and Prometheus never disagree and the per-message path does no work
//! for `$SYS`. Only values that changed since the last round are published again; a new
//! subscriber gets all of them at once, retained. Topics starting with `$` are not matched by
//! `#` or `+` filters (MQTT-4.7.2-1), so only a `$SYS/...` subscription sees them, and no
//! client may publish under `$SYS/` (see `auth::context`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::broker::Broker;
use crate::close::CloseReason;
use crate::message::Message;
use crate::metrics as m;
use crate::protocol::QoS;

/// The averaging windows of the `load/.../+` topics, in minutes.
const WINDOWS: [(u32, &str); 3] = [(1, "1min"), (5, "5min"), (15, "15min")];

/// Publishes the `$SYS` topics every `interval` (the first round at once) until shutdown.
pub async fn run(
    broker: Arc<Broker>,
    metrics: PrometheusHandle,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sys = Sys::default();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = crate::server::stopped(&mut shutdown) => return,
        }
        let figures = Figures::read(&metrics.render());
        let messages: Vec<Arc<Message>> = sys
            .round(&broker, &figures, Instant::now())
            .into_iter()
            .map(|(topic, payload)| retained(&topic, payload))
            .collect();
        if !messages.is_empty() {
            // No client has an empty client id (brokk assigns one), so No Local never
            // mistakes a subscriber for the publisher.
            broker.sessions.publish(&messages, "");
        }
    }
}

fn retained(topic: &str, payload: String) -> Arc<Message> {
    Arc::new(Message {
        topic: Arc::from(topic),
        payload: Bytes::from(payload),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Bytes::new(),
        expires_at: None,
        stored: Default::default(),
    })
}

/// What one round read from the metrics.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    series: HashMap<String, f64>,
}

impl Figures {
    /// Parses the Prometheus text format: `name{labels} value` lines; comments skipped.
    pub(crate) fn read(text: &str) -> Figures {
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_string(), value.trim().parse::<f64>().ok()?))
            })
            .collect();
        Figures { series }
    }

    /// One series, e.g. `brokk_sessions{state="connected"}`; 0 when absent.
    pub(crate) fn get(&self, series: &str) -> f64 {
        self.series.get(series).copied().unwrap_or(0.0)
    }

    /// Every series of metric `name`, whatever the labels, added up.
    pub(crate) fn sum(&self, name: &str) -> f64 {
        self.series
            .iter()
            .filter(|(series, _)| {
                series
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            })
            .map(|(_, value)| value)
            .sum()
    }
}

/// Counters whose rate the `load/.../+` topics average, by topic stem.
const RATES: [&str; 9] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
    "bytes/received",
    "bytes/sent",
    "connections",
    "sockets",
];

/// State kept between rounds.
#[derive(Debug, Default)]
pub(crate) struct Sys {
    /// The payload last published on each topic.
    published: HashMap<String, String>,
    /// The highest number of connected clients seen at a round.
    maximum: f64,
    /// The previous round's time and counter totals, for rates.
    previous: Option<(Instant, [f64; RATES.len()])>,
    /// Per-minute rates averaged over each window, by counter and window.
    loads: [[f64; WINDOWS.len()]; RATES.len()],
}

impl Sys {
    /// The (topic, payload) pairs to publish this round: those whose value changed.
    pub(crate) fn round(
        &mut self,
        broker: &Broker,
        figures: &Figures,
        now: Instant,
    ) -> Vec<(String, String)> {
        let mut values = self.values(broker, figures);
        values.extend(self.loads(figures, now));
        values.retain(|(topic, payload)| self.published.get(topic) != Some(payload));
        for (topic, payload) in &values {
            self.published.insert(topic.clone(), payload.clone());
        }
        values
    }

    fn values(&mut self, broker: &Broker, f: &Figures) -> Vec<(String, String)> {
        let connected = f.get(&format!("{}{{state=\"connected\"}}", m::SESSIONS));
        let disconnected = f.get(&format!("{}{{state=\"disconnected\"}}", m::SESSIONS));
        self.maximum = self.maximum.max(connected);
        let expired = f.get(&format!(
            "{}{{reason=\"session_expired\"}}",
            m::SESSIONS_ENDED
        ));
        let received = f.sum(m::MESSAGES_RECEIVED);
        let sent = f.sum(m::MESSAGES_SENT);
        let retained = f.sum(m::RETAINED_MESSAGES);
        let count = |v: f64| format!("{}", v.max(0.0) as u64);
        let mut values = vec![
            (
                "broker/version",
                format!("brokk version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "broker/uptime",
                format!("{} seconds", broker.uptime().as_secs()),
            ),
            ("broker/clients/connected", count(connected)),
            ("broker/clients/disconnected", count(disconnected)),
            ("broker/clients/total", count(connected + disconnected)),
            ("broker/clients/maximum", count(self.maximum)),
            ("broker/clients/expired", count(expired)),
            ("broker/messages/received", count(received)),
            ("broker/messages/sent", count(sent)),
            ("broker/publish/messages/received", count(received)),
            ("broker/publish/messages/sent", count(sent)),
            (
                "broker/publish/messages/dropped",
                count(f.sum(m::MESSAGES_DROPPED)),
            ),
            ("broker/bytes/received", count(f.sum(m::BYTES_RECEIVED))),
            ("broker/bytes/sent", count(f.sum(m::BYTES_SENT))),
            ("broker/subscriptions/count", count(f.sum(m::SUBSCRIPTIONS))),
            ("broker/retained messages/count", count(retained)),
            (
                "broker/store/messages/count",
                count(retained + f.sum(m::QUEUED_MESSAGES)),
            ),
        ]
        .into_iter()
        .map(|(topic, value)| (format!("$SYS/{topic}"), value))
        .collect::<Vec<_>>();
        for reason in CloseReason::ALL {
            let label = reason.label();
            let closed = f.get(&format!("{}{{reason=\"{label}\"}}", m::CONNECTIONS_CLOSED));
            values.push((format!("$SYS/brokk/closes/{label}"), count(closed)));
        }
        values
    }

    /// `$SYS/broker/load/<counter>/<window>`: the counter's per-minute rate, averaged
    /// exponentially over the window (the way Unix load averages are), from the second round.
    fn loads(&mut self, f: &Figures, now: Instant) -> Vec<(String, String)> {
        let closed = f.sum(m::CONNECTIONS_CLOSED);
        let totals: [f64; RATES.len()] = [
            f.sum(m::MESSAGES_RECEIVED),
            f.sum(m::MESSAGES_SENT),
            f.sum(m::MESSAGES_RECEIVED),
            f.sum(m::MESSAGES_SENT),
            f.sum(m::MESSAGES_DROPPED),
            f.sum(m::BYTES_RECEIVED),
            f.sum(m::BYTES_SENT),
            f.sum(m::CONNECTS),
            // Sockets opened: those still open and those closed.
            closed + f.sum(m::CONNECTIONS),
        ];
        let Some((then, before)) = self.previous.replace((now, totals)) else {
            return Vec::new();
        };
        let seconds = now.saturating_duration_since(then).as_secs_f64();
        if seconds <= 0.0 {
            return Vec::new();
        }
        let mut values = Vec::new();
        for (i, stem) in RATES.iter().enumerate() {
            let per_minute = (totals[i] - before[i]).max(0.0) * 60.0 / seconds;
            for (w, (minutes, name)) in WINDOWS.iter().enumerate() {
                let decay = (-seconds / (60.0 * f64::from(*minutes))).exp();
                let load = &mut self.loads[i][w];
                *load = per_minute + decay * (*load - per_minute);
                values.push((
                    format!("$SYS/broker/load/{stem}/{name}"),
                    format!("{load:.2}"),
                ));
            }
        }
        values
    }
}

#[cfg(test)]
mod tests;
