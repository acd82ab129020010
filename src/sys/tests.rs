use super::*;

const TEXT: &str = "\
# HELP brokk_sessions Sessions
# TYPE brokk_sessions gauge
brokk_sessions{state=\"connected\"} 3
brokk_sessions{state=\"disconnected\"} 2
brokk_sessions_ended_total{reason=\"session_expired\"} 4
brokk_messages_received_total{qos=\"0\"} 10
brokk_messages_received_total{qos=\"1\"} 5
brokk_connections_closed_total{reason=\"revoked\"} 7
brokk_connections 3
";

fn broker() -> Broker {
    let config = crate::config::Config::default();
    let auth = crate::auth::Authenticator::from_config(&config.auth).expect("auth");
    Broker::new(config, auth)
}

fn lookup<'a>(values: &'a [(String, String)], topic: &str) -> Option<&'a str> {
    values
        .iter()
        .find(|(t, _)| t == topic)
        .map(|(_, v)| v.as_str())
}

#[test]
fn figures_are_read_by_series_and_summed_by_name() {
    let f = Figures::read(TEXT);
    assert_eq!(f.get("brokk_sessions{state=\"connected\"}"), 3.0);
    assert_eq!(f.sum("brokk_messages_received_total"), 15.0);
    // A name that prefixes another's is not summed with it.
    assert_eq!(f.sum("brokk_sessions"), 5.0);
    assert_eq!(f.sum("brokk_connections"), 3.0);
    assert_eq!(f.sum("brokk_nothing"), 0.0);
}

#[test]
fn a_round_publishes_mosquitto_names_then_only_what_changed() {
    let broker = broker();
    let mut sys = Sys::default();
    let start = Instant::now();
    let first = sys.round(&broker, &Figures::read(TEXT), start);
    assert_eq!(lookup(&first, "$SYS/broker/clients/connected"), Some("3"));
    assert_eq!(
        lookup(&first, "$SYS/broker/clients/disconnected"),
        Some("2")
    );
    assert_eq!(lookup(&first, "$SYS/broker/clients/total"), Some("5"));
    assert_eq!(lookup(&first, "$SYS/broker/clients/expired"), Some("4"));
    assert_eq!(lookup(&first, "$SYS/broker/messages/received"), Some("15"));
    assert_eq!(lookup(&first, "$SYS/brokk/closes/revoked"), Some("7"));
    assert_eq!(lookup(&first, "$SYS/brokk/closes/aborted"), Some("0"));
    assert!(lookup(&first, "$SYS/broker/version").is_some_and(|v| v.starts_with("brokk version ")));
    assert!(lookup(&first, "$SYS/broker/uptime").is_some_and(|v| v.ends_with(" seconds")));
    assert!(
        lookup(&first, "$SYS/broker/load/messages/received/1min").is_none(),
        "a rate needs two rounds"
    );

    let later = TEXT.replace("qos=\"1\"} 5", "qos=\"1\"} 65");
    let second = sys.round(
        &broker,
        &Figures::read(&later),
        start + Duration::from_secs(60),
    );
    assert_eq!(lookup(&second, "$SYS/broker/messages/received"), Some("75"));
    assert!(
        lookup(&second, "$SYS/broker/clients/connected").is_none(),
        "unchanged values are not published again"
    );
    // 60 messages in one minute: the 1-minute load moves 63% of the way to 60 per minute.
    assert_eq!(
        lookup(&second, "$SYS/broker/load/messages/received/1min"),
        Some("37.93")
    );
    assert_eq!(
        lookup(&second, "$SYS/broker/load/messages/received/15min"),
        Some("3.87")
    );
    assert_eq!(
        lookup(&second, "$SYS/broker/load/bytes/sent/5min"),
        Some("0.00")
    );
}
