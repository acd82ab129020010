//! File paths in a configuration file are relative to that file's directory, so
//! `brokk --config /etc/brokk/broker.toml` finds `certs/server.pem` in `/etc/brokk/certs/`
//! whatever the working directory. A path set by an environment variable keeps the working
//! directory, as everything typed in a shell does.

use std::path::{Path, PathBuf};

use super::Config;

impl Config {
    /// Every file path the configuration holds, with its key. A new key that names a file
    /// belongs here, so that it is resolved like the others.
    pub fn file_paths_mut(&mut self) -> Vec<(String, &mut PathBuf)> {
        let mut paths = Vec::new();
        for (name, listener) in &mut self.listeners {
            if let Some(tls) = &mut listener.tls {
                paths.push((format!("listeners.{name}.tls.cert"), &mut tls.cert));
                paths.push((format!("listeners.{name}.tls.key"), &mut tls.key));
                if let Some(ca) = &mut tls.client_ca {
                    paths.push((format!("listeners.{name}.tls.client_ca"), ca));
                }
                if let Some(crl) = &mut tls.crl {
                    paths.push((format!("listeners.{name}.tls.crl"), crl));
                }
            }
        }
        let auth = &mut self.auth;
        paths.push(("auth.password_file".to_string(), &mut auth.password_file));
        paths.push(("auth.acl_file".to_string(), &mut auth.acl_file));
        paths.push(("auth.jwt.key_file".to_string(), &mut auth.jwt.key_file));
        paths.push(("storage.path".to_string(), &mut self.storage.path));
        paths.push(("admin.token_file".to_string(), &mut self.admin.token_file));
        paths
    }

    /// Joins every relative, non-empty path to `base`, except those for which `from_env`
    /// (given the key) says an environment variable set them.
    pub(super) fn resolve_relative_paths(&mut self, base: &Path, from_env: impl Fn(&str) -> bool) {
        for (key, path) in self.file_paths_mut() {
            if !path.as_os_str().is_empty() && path.is_relative() && !from_env(&key) {
                *path = base.join(&*path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_file_absolute_ones_stay() {
        let mut config = Config::default();
        config.listeners.insert(
            "s".to_string(),
            crate::config::ListenerConfig {
                bind: "127.0.0.1:0".parse().unwrap(),
                tls: Some(crate::config::TlsConfig {
                    cert: "certs/server.pem".into(),
                    key: "/abs/server.key".into(),
                    client_ca: Some("ca.pem".into()),
                    handshake_timeout: std::time::Duration::from_secs(1),
                    identity_as_username: false,
                    crl: Some("crl.pem".into()),
                }),
                tcp_keepalive: None,
                write_timeout: None,
                websocket: None,
                proxy_protocol: false,
            },
        );
        config.auth.password_file = "passwd".into();
        config.resolve_relative_paths(Path::new("/etc/brokk"), |key| key == "auth.password_file");
        let tls = config.listeners["s"].tls.as_ref().unwrap();
        assert_eq!(tls.cert, Path::new("/etc/brokk/certs/server.pem"));
        assert_eq!(tls.key, Path::new("/abs/server.key"));
        assert_eq!(
            tls.client_ca.as_deref(),
            Some(Path::new("/etc/brokk/ca.pem"))
        );
        assert_eq!(tls.crl.as_deref(), Some(Path::new("/etc/brokk/crl.pem")));
        // Set by an environment variable: relative to the working directory.
        assert_eq!(config.auth.password_file, Path::new("passwd"));

        // An empty path means "none" and stays empty.
        let mut config = Config::default();
        config.resolve_relative_paths(Path::new("/etc/brokk"), |_| false);
        assert_eq!(config.auth.password_file, Path::new(""));
    }
}
