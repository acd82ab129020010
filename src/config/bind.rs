//! `bind` values: an IP address or a host name, with a port.
//!
//! A host name is kept as written and resolved when the broker prepares to start (and by
//! `--check-config`), so a configuration file stays valid on another machine and a name that
//! does not resolve is reported under its key, not as a parse error.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use serde::Deserialize;

/// Where a listener (or the metrics endpoint) listens: `"0.0.0.0:1883"`, `"[::]:1883"`,
/// `"localhost:1883"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub enum BindAddr {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

/// Why a `bind` value cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindAddrError {
    #[error(
        "invalid address {0:?} (write e.g. \"0.0.0.0:1883\", \"[::]:1883\" or \"localhost:1883\")"
    )]
    Syntax(String),
}

impl BindAddr {
    pub fn port(&self) -> u16 {
        match self {
            BindAddr::Ip(addr) => addr.port(),
            BindAddr::Name { port, .. } => *port,
        }
    }

    /// Whether only this machine can reach it: a loopback address, or `localhost` (which the
    /// system resolves to loopback addresses; checked without asking the resolver).
    pub fn is_loopback(&self) -> bool {
        match self {
            BindAddr::Ip(addr) => addr.ip().is_loopback(),
            BindAddr::Name { host, .. } => host.eq_ignore_ascii_case("localhost"),
        }
    }

    /// Every address the value stands for (a host name may resolve to several, e.g. `::1`
    /// and `127.0.0.1` for `localhost`), without duplicates, in resolver order. Blocking: a
    /// host name asks the system resolver.
    pub fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let found = match self {
            BindAddr::Ip(addr) => return Ok(vec![*addr]),
            BindAddr::Name { host, port } => (host.as_str(), *port).to_socket_addrs()?,
        };
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in found {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name has no address",
            ));
        }
        Ok(addrs)
    }
}

impl From<SocketAddr> for BindAddr {
    fn from(addr: SocketAddr) -> Self {
        BindAddr::Ip(addr)
    }
}

impl FromStr for BindAddr {
    type Err = BindAddrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(BindAddr::Ip(addr));
        }
        let invalid = || BindAddrError::Syntax(text.to_string());
        let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
        let port = port.parse::<u16>().map_err(|_| invalid())?;
        // Letters, digits, '-', '.' and '_' only: anything else (a second ':', brackets,
        // spaces) is a typo in an address, not a host name.
        let name_like = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        // Digits and dots alone are an IPv4 address with a typo, never a name worth a lookup.
        let numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
        if host.is_empty() || !name_like || numeric {
            return Err(invalid());
        }
        Ok(BindAddr::Name {
            host: host.to_string(),
            port,
        })
    }
}

impl TryFrom<String> for BindAddr {
    type Error = BindAddrError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Ip(addr) => addr.fmt(f),
            BindAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_parse() {
        let ip: BindAddr = "127.0.0.1:1883".parse().unwrap();
        assert_eq!(ip, BindAddr::Ip("127.0.0.1:1883".parse().unwrap()));
        let v6: BindAddr = "[::1]:0".parse().unwrap();
        assert_eq!(v6.port(), 0);
        let name: BindAddr = "localhost:1883".parse().unwrap();
        assert_eq!(
            name,
            BindAddr::Name {
                host: "localhost".to_string(),
                port: 1883
            }
        );
        assert_eq!(name.to_string(), "localhost:1883");
        assert_eq!(v6.to_string(), "[::1]:0");
    }

    #[test]
    fn typos_are_refused() {
        for bad in [
            "localhost",
            ":1883",
            "localhost:",
            "localhost:99999",
            "::1:1883",
            "1.2.3.4",
            "999.1.1.1:1883",
            "host name:1883",
            "[::1]",
            "",
        ] {
            assert!(bad.parse::<BindAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn localhost_resolves_to_loopback() {
        let name: BindAddr = "localhost:1883".parse().unwrap();
        let addrs = name.resolve().unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 1883)
        );
        let ip: BindAddr = "0.0.0.0:1".parse().unwrap();
        assert_eq!(ip.resolve().unwrap(), vec!["0.0.0.0:1".parse().unwrap()]);
    }
}
