//! TLS listeners: a rustls acceptor built from `[listeners.X].tls` PEM files.

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("listeners.{listener}.tls: {why}")]
    Config { listener: String, why: String },
}

/// Builds the acceptor for one listener (ring provider; client certificates required when
/// `client_ca` is set).
pub fn acceptor(listener: &str, config: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let _ = (listener, config);
    todo!("ops helper")
}
