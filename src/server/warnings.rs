//! Start-up warnings: settings that are legal but rarely what the operator meant.

use crate::config::Config;

use super::preflight::PreparedListener;

/// One sentence per finding, naming the keys involved.
pub(super) fn collect(config: &Config, listeners: &[PreparedListener]) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(warning) = refuses_everyone(config) {
        warnings.push(warning);
    }
    if let Some(warning) = anonymous_beyond_loopback(config, listeners) {
        warnings.push(warning);
    }
    warnings
}

/// No anonymous access and nothing to check credentials against: no password file, no token
/// key, no listener taking the user from a client certificate. Any new source of credentials
/// must be counted here.
fn refuses_everyone(config: &Config) -> Option<String> {
    let auth = &config.auth;
    let certificates = config
        .listeners
        .values()
        .filter_map(|listener| listener.tls.as_ref())
        .any(|tls| tls.identity_as_username);
    let has_credentials = !auth.password_file.as_os_str().is_empty()
        || !auth.jwt.key_file.as_os_str().is_empty()
        || certificates;
    (!auth.allow_anonymous && !has_credentials).then(|| {
        "auth.allow_anonymous = false with no auth.password_file, no auth.jwt.key_file and no \
         listener with tls.identity_as_username: every client will be refused"
            .to_string()
    })
}

/// Anonymous access on a listener other hosts can reach. A listener that requires client
/// certificates (`tls.client_ca`) is not open to anyone, so it does not count.
fn anonymous_beyond_loopback(config: &Config, listeners: &[PreparedListener]) -> Option<String> {
    if !config.auth.allow_anonymous {
        return None;
    }
    let open: Vec<String> = listeners
        .iter()
        .filter(|listener| {
            let mtls = config
                .listeners
                .get(&listener.name)
                .and_then(|l| l.tls.as_ref())
                .is_some_and(|tls| tls.client_ca.is_some());
            !mtls && listener.addrs.iter().any(|addr| !addr.ip().is_loopback())
        })
        .map(|listener| format!("listeners.{}", listener.name))
        .collect();
    (!open.is_empty()).then(|| {
        format!(
            "auth.allow_anonymous = true and {} not on loopback: any host that reaches {} \
             may connect without credentials",
            open.join(", "),
            if open.len() == 1 { "it" } else { "them" }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str, addr: &str) -> PreparedListener {
        PreparedListener {
            name: name.to_string(),
            addrs: vec![addr.parse().unwrap()],
            tls: None,
        }
    }

    #[test]
    fn refusing_everyone_is_a_warning() {
        let mut config = Config::default();
        config.auth.allow_anonymous = false;
        let warnings = collect(&config, &[listener("tcp", "0.0.0.0:1883")]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("every client will be refused"),
            "{warnings:?}"
        );
        config.auth.password_file = "/etc/brokk/passwd".into();
        assert!(collect(&config, &[listener("tcp", "0.0.0.0:1883")]).is_empty());
        config.auth.password_file = "".into();
        config.auth.jwt.key_file = "/etc/brokk/jwt.key".into();
        assert!(collect(&config, &[listener("tcp", "0.0.0.0:1883")]).is_empty());
    }

    #[test]
    fn anonymous_access_beyond_loopback_is_a_warning() {
        let config = Config::default();
        let warnings = collect(
            &config,
            &[
                listener("local", "127.0.0.1:1883"),
                listener("tcp", "0.0.0.0:1884"),
                listener("v6", "[::]:1885"),
            ],
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("listeners.tcp, listeners.v6 not on loopback"),
            "{warnings:?}"
        );
        assert!(!warnings[0].contains("listeners.local"), "{warnings:?}");
        assert!(collect(&config, &[listener("local", "[::1]:1883")]).is_empty());
    }
}
