//! Server-side liveness of TCP sockets: keepalive probes for silent peers and a user timeout
//! for output the peer never acknowledges.
//!
//! MQTT has no server-to-client ping, so a client with keep-alive 0 whose network path died
//! (a NAT or load balancer forgot it, a cable was pulled) would look connected forever. The
//! kernel finds it instead: after `tcp_keepalive` of silence it sends probes, and a peer that
//! answers none of them fails the socket with ETIMEDOUT. Output the peer does not acknowledge
//! for `write_timeout` fails it the same way (TCP_USER_TIMEOUT), rather than piling up in the
//! session's queue until its limit.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::config::{ConfigError, Limits, ListenerConfig, invalid};

/// Unanswered probes after the idle time before the socket fails.
const PROBES: u32 = 3;
/// The kernel's TCP_KEEPIDLE ceiling (seconds).
const MAX_KEEPIDLE_SECS: u64 = 32_767;

/// The liveness options of one listener's sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Idle time before the first probe; zero = no probes.
    pub keepalive: Duration,
    /// How long sent data may stay unacknowledged; zero = the kernel's default.
    pub user_timeout: Duration,
}

impl Liveness {
    /// A listener's own settings, or the global `[limits]` ones.
    pub fn for_listener(limits: &Limits, listener: Option<&ListenerConfig>) -> Liveness {
        Liveness {
            keepalive: listener
                .and_then(|l| l.tcp_keepalive)
                .unwrap_or(limits.tcp_keepalive),
            user_timeout: listener
                .and_then(|l| l.write_timeout)
                .unwrap_or(limits.write_timeout),
        }
    }

    /// The time between probes: a sixth of the idle time (at least a second), so that with
    /// three probes a dead peer is found about 1.5 x the idle time after it fell silent.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_secs(self.keepalive.as_secs().div_ceil(6).max(1))
    }

    /// The longest a dead, silent peer stays connected: idle time plus the probes.
    pub fn detection_bound(&self) -> Duration {
        self.keepalive + self.probe_interval() * PROBES
    }

    /// Sets the options on an accepted socket.
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        let socket = SockRef::from(stream);
        if self.keepalive.is_zero() {
            socket.set_keepalive(false)?;
        } else {
            let keepalive = TcpKeepalive::new()
                .with_time(Duration::from_secs(self.keepalive.as_secs().max(1)))
                .with_interval(self.probe_interval())
                .with_retries(PROBES);
            socket.set_tcp_keepalive(&keepalive)?;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if !self.user_timeout.is_zero() {
            socket.set_tcp_user_timeout(Some(self.user_timeout))?;
        }
        Ok(())
    }

    /// What made a socket fail with ETIMEDOUT, for the close's detail. Keepalive probes are
    /// only sent while nothing is unacknowledged, so output still waiting in brokk (or written
    /// less than the idle time ago) points at the user timeout; long silence both ways at the
    /// probes.
    pub fn explain_timeout(
        &self,
        since_inbound: Duration,
        since_write: Duration,
        output_pending: bool,
    ) -> String {
        let probes = !self.keepalive.is_zero()
            && !output_pending
            && since_inbound >= self.keepalive
            && since_write >= self.keepalive;
        if probes {
            format!(
                "TCP keepalive: the peer answered no probe after {} of silence",
                humantime::format_duration(self.keepalive)
            )
        } else if !self.user_timeout.is_zero() {
            format!(
                "write_timeout: the peer acknowledged none of brokk's output for {} (TCP_USER_TIMEOUT)",
                humantime::format_duration(self.user_timeout)
            )
        } else if !self.keepalive.is_zero() && !output_pending {
            format!(
                "TCP keepalive: the peer answered no probe after {} of silence",
                humantime::format_duration(self.keepalive)
            )
        } else {
            "the peer stopped acknowledging (TCP retransmissions timed out)".to_string()
        }
    }
}

/// `tcp_keepalive`: 0 (off) or whole seconds from 1 s to the kernel's ceiling.
pub(crate) fn check_keepalive(key: &str, idle: Duration) -> Result<(), ConfigError> {
    if idle.is_zero() {
        return Ok(());
    }
    if idle < Duration::from_secs(1) || idle.subsec_nanos() != 0 {
        return Err(invalid(
            key,
            format!(
                "{} must be \"0s\" (off) or whole seconds, at least \"1s\"",
                humantime::format_duration(idle)
            ),
        ));
    }
    if idle.as_secs() > MAX_KEEPIDLE_SECS {
        return Err(invalid(
            key,
            format!("must be at most {MAX_KEEPIDLE_SECS}s (the kernel's TCP_KEEPIDLE limit)"),
        ));
    }
    Ok(())
}

/// `write_timeout`: 0 (off) or up to what TCP_USER_TIMEOUT holds (u32 milliseconds).
pub(crate) fn check_user_timeout(key: &str, timeout: Duration) -> Result<(), ConfigError> {
    if timeout.as_millis() > u128::from(u32::MAX) {
        return Err(invalid(key, format!("must be at most {}ms", u32::MAX)));
    }
    if !timeout.is_zero() && timeout < Duration::from_millis(1) {
        return Err(invalid(key, "must be \"0s\" (off) or at least \"1ms\""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness(keepalive: u64, user_timeout: u64) -> Liveness {
        Liveness {
            keepalive: Duration::from_secs(keepalive),
            user_timeout: Duration::from_secs(user_timeout),
        }
    }

    #[test]
    fn a_dead_peer_is_found_within_one_and_a_half_times_the_idle_time() {
        for idle in [6, 60, 600, 7200] {
            let l = liveness(idle, 30);
            assert_eq!(l.detection_bound(), Duration::from_secs(idle * 3 / 2));
        }
        // Below six seconds the one-second probe interval rounds up.
        assert_eq!(liveness(2, 0).detection_bound(), Duration::from_secs(5));
    }

    #[test]
    fn listener_settings_override_the_global_ones() {
        let limits = Limits::default();
        let mut listener: ListenerConfig =
            toml_listener("bind = \"127.0.0.1:0\"\ntcp_keepalive = \"10s\"");
        let l = Liveness::for_listener(&limits, Some(&listener));
        assert_eq!(l.keepalive, Duration::from_secs(10));
        assert_eq!(l.user_timeout, limits.write_timeout);
        listener.write_timeout = Some(Duration::ZERO);
        assert!(
            Liveness::for_listener(&limits, Some(&listener))
                .user_timeout
                .is_zero()
        );
        assert_eq!(
            Liveness::for_listener(&limits, None).keepalive,
            limits.tcp_keepalive
        );
    }

    fn toml_listener(text: &str) -> ListenerConfig {
        let config =
            crate::config::Config::from_toml(&format!("[listeners.x]\n{text}\n")).expect("config");
        config.listeners["x"].clone()
    }

    #[test]
    fn timeouts_are_explained_by_which_timer_could_have_fired() {
        let l = liveness(60, 30);
        let long = Duration::from_secs(600);
        let short = Duration::from_secs(5);
        assert!(
            l.explain_timeout(long, long, false)
                .starts_with("TCP keepalive")
        );
        // Output brokk could not write: unacknowledged data, never the probes.
        assert!(
            l.explain_timeout(long, long, true)
                .starts_with("write_timeout")
        );
        // Written recently: the probes cannot have run yet.
        assert!(
            l.explain_timeout(long, short, false)
                .starts_with("write_timeout")
        );
        assert!(
            l.explain_timeout(short, long, false)
                .starts_with("write_timeout")
        );
        assert!(
            liveness(60, 0)
                .explain_timeout(short, short, false)
                .starts_with("TCP keepalive")
        );
        assert!(
            liveness(0, 0)
                .explain_timeout(long, long, true)
                .contains("retransmissions")
        );
    }

    #[test]
    fn keys_are_checked_with_their_names() {
        assert!(check_keepalive("limits.tcp_keepalive", Duration::ZERO).is_ok());
        assert!(check_keepalive("limits.tcp_keepalive", Duration::from_secs(1)).is_ok());
        let e = check_keepalive("listeners.tcp.tcp_keepalive", Duration::from_millis(1500))
            .expect_err("fraction");
        assert!(
            e.to_string().starts_with("listeners.tcp.tcp_keepalive:"),
            "{e}"
        );
        assert!(check_keepalive("k", Duration::from_secs(40_000)).is_err());
        assert!(check_user_timeout("limits.write_timeout", Duration::from_secs(30)).is_ok());
        let e = check_user_timeout("limits.write_timeout", Duration::from_secs(5_000_000))
            .expect_err("too long");
        assert!(e.to_string().starts_with("limits.write_timeout:"), "{e}");
    }

    #[tokio::test]
    async fn options_are_set_on_accepted_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        liveness(12, 7).apply(&accepted).expect("apply");
        let socket = SockRef::from(&accepted);
        assert!(socket.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            socket.tcp_keepalive_time().expect("idle"),
            Duration::from_secs(12)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().expect("interval"),
            Duration::from_secs(2)
        );
        assert_eq!(socket.tcp_keepalive_retries().expect("probes"), PROBES);
        #[cfg(target_os = "linux")]
        assert_eq!(
            socket.tcp_user_timeout().expect("user timeout"),
            Some(Duration::from_secs(7))
        );
        liveness(0, 0).apply(&accepted).expect("apply");
        assert!(!socket.keepalive().expect("SO_KEEPALIVE"));
    }
}
