//! `GET /metrics` beyond brokk's own series: the process series (CPU, memory, file
//! descriptors), `brokk_build_info{version}`, and one order on every scrape.

mod common;

use brokk::protocol::Version;
use common::*;

/// The family names in the order of their `# TYPE` lines.
fn families(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn process_series_and_build_info_are_served() {
    let broker = start().await;
    let text = broker.metrics_text().await;
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    assert!(broker.metric("process_resident_memory_bytes").await > 1e6);
    assert!(broker.metric("process_open_fds").await >= 3.0);
    let build = format!(
        "brokk_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&build), "{text}");
    broker.stop().await;
}

#[tokio::test]
async fn every_scrape_lists_families_and_series_in_one_sorted_order() {
    let broker = start().await;
    let first = broker.metrics_text().await;
    let (_, body) = first.split_once("\r\n\r\n").expect("body");
    let order = families(body);
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "families sorted by name");
    let series = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|line| line.starts_with("brokk_connections_closed_total{"))
            .map(|line| {
                line.rsplit_once(' ')
                    .map(|(s, _)| s.to_string())
                    .unwrap_or_default()
            })
            .collect()
    };
    let closes = series(body);
    assert!(closes.len() >= 16, "{body}");
    for round in 0..5 {
        // Some traffic between scrapes, so the recorder's maps change.
        let (_client, _) = Raw::connect(
            broker.addr,
            connect_packet(Version::V5, &format!("order-{round}")),
        )
        .await;
        let text = broker.metrics_text().await;
        assert_eq!(families(&text), order, "scrape {round}");
        assert_eq!(series(&text), closes, "scrape {round}");
    }
    broker.stop().await;
}
