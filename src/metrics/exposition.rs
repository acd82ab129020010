//! What `GET /metrics` adds to the recorder's text: the process series (CPU, memory, file
//! descriptors, threads, from `metrics-process`), `brokk_build_info`, and a stable order.
//!
//! The exporter keeps metrics in hash maps, so families and the series within them come out
//! in a different order on every scrape; diffs of two scrapes and people reading them are
//! better served by a sorted page.

use std::sync::OnceLock;

use metrics::{describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusHandle;

use super::BUILD_INFO;

fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Describes the process series and sets `brokk_build_info{version} 1`. Called once, after
/// the recorder is installed.
pub(super) fn initialise() {
    process().describe();
    process().collect();
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which brokk is running."
    );
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// The page for one scrape: process series refreshed, families sorted by name.
pub(super) fn render(handle: &PrometheusHandle) -> String {
    process().collect();
    sorted(&handle.render())
}

/// One metric family: its `# HELP` / `# TYPE` lines and its samples.
struct Family<'a> {
    name: &'a str,
    kind: &'a str,
    comments: Vec<&'a str>,
    samples: Vec<&'a str>,
}

/// Sorts families by name and, within a counter or gauge family, samples by their text.
/// Other kinds (histograms, summaries) keep their samples' order, which carries meaning.
pub fn sorted(text: &str) -> String {
    let mut families: Vec<Family<'_>> = Vec::new();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let header = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "));
        let comment = header.is_none() && line.starts_with('#');
        let name = match header {
            Some(rest) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split(['{', ' ']).next().unwrap_or(""),
        };
        // Other comments stay with the family they are in.
        let continues = families.last().is_some_and(|family| {
            comment || family.name == name || (header.is_none() && sample_of(family.name, name))
        });
        if !continues {
            families.push(Family {
                name,
                kind: "",
                comments: Vec::new(),
                samples: Vec::new(),
            });
        }
        let Some(family) = families.last_mut() else {
            continue;
        };
        if let Some(kind) = line.strip_prefix("# TYPE ") {
            family.kind = kind.split_whitespace().nth(1).unwrap_or("");
        }
        if line.starts_with('#') {
            family.comments.push(line);
        } else {
            family.samples.push(line);
        }
    }
    families.sort_by(|a, b| a.name.cmp(b.name));
    let mut out = String::with_capacity(text.len());
    for mut family in families {
        if matches!(family.kind, "counter" | "gauge" | "untyped" | "") {
            family.samples.sort_unstable();
        }
        for line in family.comments.iter().chain(family.samples.iter()) {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// Whether a sample named `sample` belongs to family `family` (histogram and summary samples
/// carry suffixes).
fn sample_of(family: &str, sample: &str) -> bool {
    sample
        .strip_prefix(family)
        .is_some_and(|suffix| matches!(suffix, "" | "_bucket" | "_sum" | "_count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_their_samples_come_out_sorted() {
        let text = "# HELP b_total B.\n# TYPE b_total counter\nb_total{x=\"2\"} 2\nb_total{x=\"1\"} 1\n\n\
                    # TYPE a gauge\na 3\n\n\
                    # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n\n";
        let out = sorted(text);
        assert_eq!(
            out,
            "# TYPE a gauge\na 3\n\n\
             # HELP b_total B.\n# TYPE b_total counter\nb_total{x=\"1\"} 1\nb_total{x=\"2\"} 2\n\n\
             # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n\n"
        );
        assert_eq!(sorted(&out), out, "sorting is idempotent");
    }
}
