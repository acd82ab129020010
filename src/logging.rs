//! Logging: on stderr (stdout stays free for a command's output), text or JSON lines, filtered
//! by `RUST_LOG` when set, else by `[log] level`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// rustls warns here about every TLS client that sends an IP address as server name (which
/// OpenSSL-based clients do whenever they connect by address): noise about the client, not a
/// problem of the broker. Shown only when the filter asks for debug output.
const SNI_NOISE: &str = "rustls::msgs::handshake=error";

/// Installs the process-wide subscriber. Call once, before anything logs.
pub fn init(config: &LogConfig) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(&config.level, rust_log.as_deref());
    // Colours only for a person at a terminal; logs collected by Docker or CI stay plain.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The filter for `level` (from the configuration) or `rust_log` (which wins when it parses).
pub fn filter(level: &str, rust_log: Option<&str>) -> EnvFilter {
    let text = rust_log
        .filter(|text| EnvFilter::builder().parse(text).is_ok())
        .unwrap_or(level);
    let text = with_defaults(text);
    EnvFilter::builder()
        .parse(&text)
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// `text` plus the default directives it does not override.
fn with_defaults(text: &str) -> String {
    let mentions_rustls = text.contains("rustls");
    // A bare level ("debug") is the default for every target; "brokk=debug" is not.
    let verbose = text.split(',').map(str::trim).any(|directive| {
        directive.eq_ignore_ascii_case("debug") || directive.eq_ignore_ascii_case("trace")
    });
    if mentions_rustls || verbose {
        text.to_string()
    } else if text.trim().is_empty() {
        format!("info,{SNI_NOISE}")
    } else {
        format!("{text},{SNI_NOISE}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_noise_is_hidden_unless_debug_is_asked_for() {
        assert_eq!(with_defaults("info"), format!("info,{SNI_NOISE}"));
        assert_eq!(
            with_defaults("warn,brokk=debug"),
            format!("warn,brokk=debug,{SNI_NOISE}")
        );
        assert_eq!(with_defaults("debug"), "debug");
        assert_eq!(with_defaults("info,rustls=warn"), "info,rustls=warn");
        assert_eq!(with_defaults(""), format!("info,{SNI_NOISE}"));
    }

    #[test]
    fn rust_log_wins_when_it_parses() {
        let f = filter("info", Some("debug")).to_string();
        assert_eq!(f, "debug");
        let f = filter("warn", Some("not a [valid filter")).to_string();
        assert!(f.contains("warn") && !f.contains("valid"), "{f}");
        let f = filter("warn", None).to_string();
        assert!(f.contains("rustls::msgs::handshake=error"), "{f}");
    }
}
