//! `GET /v1/stats`: the broker's figures for the console's overview, and `GET /v1/listeners`:
//! where clients (and the console's live viewer) connect.
//!
//! The figures come from the series `/metrics` serves (the Prometheus recorder's rendering,
//! as for `$SYS`), so the three never disagree. A sampler reads them every [`SAMPLE_EVERY`]
//! and keeps 15 minutes of samples; the windows of the answer (closes by reason, refusals by
//! code, message rates over the last 1, 5 and 15 minutes) are differences between the figures
//! now and the oldest sample inside each window. Shortly after a start a window covers less
//! than its length: `span_s` says how much.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::close::CloseReason;
use crate::metrics as m;
use crate::sys::Figures;

use super::AdminState;

/// How often the sampler reads the figures.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How long samples are kept: the longest window and one sample more.
const KEEP: Duration = Duration::from_secs(15 * 60 + 5);
/// The answer's windows, in minutes.
const WINDOWS: [u64; 3] = [1, 5, 15];

/// The counters the windows need, read from one rendering of the metrics.
#[derive(Clone, Debug, Default, PartialEq)]
struct Totals {
    received: f64,
    sent: f64,
    bytes_received: f64,
    bytes_sent: f64,
    dropped: f64,
    accepted: f64,
    closes: BTreeMap<&'static str, f64>,
    refusals: BTreeMap<&'static str, f64>,
}

impl Totals {
    fn read(f: &Figures) -> Totals {
        let closes = CloseReason::ALL
            .iter()
            .map(|r| {
                let series = format!("{}{{reason=\"{}\"}}", m::CONNECTIONS_CLOSED, r.label());
                (r.label(), f.get(&series))
            })
            .collect();
        let refusals = m::REFUSAL_CODES
            .iter()
            .map(|code| {
                let total = m::PROTOCOLS
                    .iter()
                    .map(|protocol| {
                        f.get(&format!(
                            "{}{{protocol=\"{protocol}\",result=\"refused\",code=\"{code}\"}}",
                            m::CONNECTS
                        ))
                    })
                    .sum();
                (*code, total)
            })
            .collect();
        let accepted = m::PROTOCOLS
            .iter()
            .map(|protocol| {
                f.get(&format!(
                    "{}{{protocol=\"{protocol}\",result=\"accepted\"}}",
                    m::CONNECTS
                ))
            })
            .sum();
        Totals {
            received: f.sum(m::MESSAGES_RECEIVED),
            sent: f.sum(m::MESSAGES_SENT),
            bytes_received: f.sum(m::BYTES_RECEIVED),
            bytes_sent: f.sum(m::BYTES_SENT),
            dropped: f.sum(m::MESSAGES_DROPPED),
            accepted,
            closes,
            refusals,
        }
    }
}

/// The samples the windows are computed from, oldest first.
#[derive(Default)]
pub struct Samples {
    samples: Mutex<VecDeque<(Instant, Totals)>>,
}

impl Samples {
    fn push(&self, at: Instant, totals: Totals) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((at, totals));
        while samples
            .front()
            .is_some_and(|(then, _)| at.duration_since(*then) > KEEP)
        {
            samples.pop_front();
        }
    }

    /// The oldest sample no older than `window` before `now`.
    fn oldest_within(&self, now: Instant, window: Duration) -> Option<(Instant, Totals)> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .iter()
            .find(|(then, _)| now.duration_since(*then) <= window)
            .cloned()
    }

    /// Messages per second between consecutive samples, oldest first (for a sparkline).
    fn rates(&self) -> Vec<Rate> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|((t0, a), (t1, b))| {
                let seconds = t1.duration_since(*t0).as_secs_f64().max(0.001);
                Rate {
                    received_per_s: round((b.received - a.received).max(0.0) / seconds),
                    sent_per_s: round((b.sent - a.sent).max(0.0) / seconds),
                }
            })
            .collect()
    }
}

/// Reads the figures every [`SAMPLE_EVERY`] (the first at once) until shutdown.
pub async fn sample(
    samples: Arc<Samples>,
    metrics: PrometheusHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = crate::server::stopped(&mut shutdown) => return,
        }
        let totals = Totals::read(&Figures::read(&metrics.render()));
        samples.push(Instant::now(), totals);
    }
}

/// `GET /v1/stats`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub at: String,
    pub uptime_s: u64,
    pub version: String,
    /// Open network connections.
    pub connections: u64,
    pub sessions_connected: u64,
    pub sessions_disconnected: u64,
    pub subscriptions: u64,
    pub retained: u64,
    pub queued: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub connects_accepted: u64,
    /// Every close reason (all of them, zeros included) since the start.
    pub closes: BTreeMap<String, u64>,
    /// Refused CONNECTs by code since the start.
    pub refusals: BTreeMap<String, u64>,
    pub windows: Vec<Window>,
    /// Messages per second, one entry per [`SAMPLE_EVERY`], oldest first (up to 15 minutes).
    pub rates: Vec<Rate>,
    pub sample_every_s: u64,
}

/// What changed over the last `minutes` (`span_s`: how much of it the samples cover).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub minutes: u64,
    pub span_s: f64,
    pub received_per_s: f64,
    pub sent_per_s: f64,
    pub bytes_received_per_s: f64,
    pub bytes_sent_per_s: f64,
    pub dropped: u64,
    pub connects_accepted: u64,
    /// Closes by reason, reasons with none left out.
    pub closes: BTreeMap<String, u64>,
    /// Refused CONNECTs by code, codes with none left out.
    pub refusals: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub received_per_s: f64,
    pub sent_per_s: f64,
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn count(value: f64) -> u64 {
    value.max(0.0) as u64
}

/// Non-zero increases from `then` to `now`.
fn increases(
    now: &BTreeMap<&'static str, f64>,
    then: &BTreeMap<&'static str, f64>,
) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(key, value)| {
            let before = then.get(key).copied().unwrap_or(0.0);
            (key.to_string(), count(value - before))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn window(minutes: u64, samples: &Samples, now: Instant, totals: &Totals) -> Window {
    let (then, old) = samples
        .oldest_within(now, Duration::from_secs(minutes * 60))
        .unwrap_or_else(|| (now, totals.clone()));
    let span = now.duration_since(then).as_secs_f64();
    let per_s = |now: f64, then: f64| {
        if span < 0.5 {
            0.0
        } else {
            round((now - then).max(0.0) / span)
        }
    };
    Window {
        minutes,
        span_s: round(span),
        received_per_s: per_s(totals.received, old.received),
        sent_per_s: per_s(totals.sent, old.sent),
        bytes_received_per_s: per_s(totals.bytes_received, old.bytes_received),
        bytes_sent_per_s: per_s(totals.bytes_sent, old.bytes_sent),
        dropped: count(totals.dropped - old.dropped),
        connects_accepted: count(totals.accepted - old.accepted),
        closes: increases(&totals.closes, &old.closes),
        refusals: increases(&totals.refusals, &old.refusals),
    }
}

pub async fn stats(State(state): State<Arc<AdminState>>) -> Json<Stats> {
    let figures = Figures::read(&state.metrics.render());
    let totals = Totals::read(&figures);
    let now = Instant::now();
    let windows = WINDOWS
        .iter()
        .map(|minutes| window(*minutes, &state.samples, now, &totals))
        .collect();
    let gauge = |name: &str| count(figures.sum(name));
    let state_gauge = |s: &str| count(figures.get(&format!("{}{{state=\"{s}\"}}", m::SESSIONS)));
    Json(Stats {
        at: super::json::time(std::time::SystemTime::now()),
        uptime_s: state.broker.uptime().as_secs(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        connections: gauge(m::CONNECTIONS),
        sessions_connected: state_gauge("connected"),
        sessions_disconnected: state_gauge("disconnected"),
        subscriptions: gauge(m::SUBSCRIPTIONS),
        retained: gauge(m::RETAINED_MESSAGES),
        queued: gauge(m::QUEUED_MESSAGES),
        messages_received: count(totals.received),
        messages_sent: count(totals.sent),
        messages_dropped: count(totals.dropped),
        bytes_received: count(totals.bytes_received),
        bytes_sent: count(totals.bytes_sent),
        connects_accepted: count(totals.accepted),
        closes: totals
            .closes
            .iter()
            .map(|(k, v)| (k.to_string(), count(*v)))
            .collect(),
        refusals: totals
            .refusals
            .iter()
            .map(|(k, v)| (k.to_string(), count(*v)))
            .collect(),
        windows,
        rates: state.samples.rates(),
        sample_every_s: SAMPLE_EVERY.as_secs(),
    })
}

/// `GET /v1/listeners`: each MQTT listener's name, bound address and transport.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub name: String,
    /// The bound address (the real port when the configuration said 0).
    pub addr: String,
    pub port: u16,
    pub tls: bool,
    /// The HTTP path of an MQTT-over-WebSocket listener; `null` for plain MQTT.
    pub websocket_path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listeners {
    pub listeners: Vec<Listener>,
}

pub async fn listeners(State(state): State<Arc<AdminState>>) -> Json<Listeners> {
    Json(Listeners {
        listeners: state.listeners.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(received: f64, kicks: f64) -> Totals {
        let mut t = Totals {
            received,
            ..Totals::default()
        };
        t.closes.insert("closed_by_controller", kicks);
        t.closes.insert("connection_lost", 1.0);
        t
    }

    #[tokio::test(start_paused = true)]
    async fn windows_are_differences_from_the_oldest_sample_inside_them() {
        let samples = Samples::default();
        let start = Instant::now();
        // One sample every 5 s for 20 minutes: 10 messages and, every minute, one kick.
        for i in 0..=240u32 {
            let at = start + SAMPLE_EVERY * i;
            samples.push(at, totals(f64::from(i) * 10.0, f64::from(i / 12)));
        }
        let now = start + SAMPLE_EVERY * 240;
        let current = totals(2400.0, 20.0);
        let one = window(1, &samples, now, &current);
        assert_eq!(one.span_s, 60.0);
        assert_eq!(one.received_per_s, 2.0);
        assert_eq!(one.closes.get("closed_by_controller"), Some(&1));
        assert_eq!(
            one.closes.get("connection_lost"),
            None,
            "zeros are left out"
        );
        let fifteen = window(15, &samples, now, &current);
        assert_eq!(fifteen.span_s, 900.0);
        assert_eq!(fifteen.closes.get("closed_by_controller"), Some(&15));
        // Older samples were dropped: 15 minutes and one sample are kept.
        assert_eq!(samples.rates().len(), 181);
        assert!(samples.rates().iter().all(|r| r.received_per_s == 2.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_start_has_short_windows_and_no_rates() {
        let samples = Samples::default();
        let now = Instant::now();
        let current = totals(5.0, 1.0);
        let w = window(5, &samples, now, &current);
        assert_eq!(w.span_s, 0.0);
        assert_eq!(w.received_per_s, 0.0);
        assert!(w.closes.is_empty());
        samples.push(now, totals(0.0, 0.0));
        let later = now + Duration::from_secs(10);
        let w = window(5, &samples, later, &current);
        assert_eq!(w.span_s, 10.0);
        assert_eq!(w.received_per_s, 0.5);
        assert_eq!(w.closes.get("closed_by_controller"), Some(&1));
    }

    #[test]
    fn totals_read_the_metric_names_brokk_exports() {
        let text = "brokk_messages_received_total{qos=\"0\"} 3\n\
                    brokk_messages_received_total{qos=\"1\"} 4\n\
                    brokk_connections_closed_total{reason=\"revoked\"} 2\n\
                    brokk_connects_total{protocol=\"3.1.1\",result=\"refused\",code=\"banned\"} 1\n\
                    brokk_connects_total{protocol=\"5.0\",result=\"refused\",code=\"banned\"} 5\n\
                    brokk_connects_total{protocol=\"5.0\",result=\"accepted\"} 7\n";
        let t = Totals::read(&Figures::read(text));
        assert_eq!(t.received, 7.0);
        assert_eq!(t.closes.get("revoked"), Some(&2.0));
        assert_eq!(t.closes.len(), CloseReason::ALL.len());
        assert_eq!(t.refusals.get("banned"), Some(&6.0));
        assert_eq!(t.accepted, 7.0);
    }
}
