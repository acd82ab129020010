//! TLS listeners: a rustls acceptor built from `[listeners.X].tls` PEM files.
//!
//! The ring provider is passed explicitly to every builder rather than installed process-wide:
//! rustls' `ServerConfig::builder()` panics when it cannot pick a default provider (which
//! happens as soon as a second provider, e.g. aws-lc-rs, is compiled in by some dependency),
//! and a library should not set process-global state anyway.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject, SectionKind};
use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer,
};
use tokio_rustls::rustls::server::WebPkiClientVerifier;

use crate::auth::PeerIdentity;
use crate::config::TlsConfig;

/// What a TLS listener's connections need: the acceptor, the handshake deadline, and whether
/// the client certificate names the user.
#[derive(Clone)]
pub struct TlsListener {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub handshake_timeout: std::time::Duration,
    pub identity_as_username: bool,
}

pub fn listener(name: &str, config: &TlsConfig) -> Result<TlsListener, TlsError> {
    Ok(TlsListener {
        acceptor: acceptor(name, config)?,
        handshake_timeout: config.handshake_timeout,
        identity_as_username: config.identity_as_username,
    })
}

/// The user a verified client certificate names: its subject's first Common Name (as
/// Mosquitto's `use_identity_as_username`).
pub fn peer_identity(connection: &rustls::ServerConnection) -> PeerIdentity {
    let Some(cert) = connection.peer_certificates().and_then(|c| c.first()) else {
        return PeerIdentity::MissingCommonName;
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return PeerIdentity::MissingCommonName;
    };
    let common_name = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty() && !cn.contains('\0'));
    match common_name {
        Some(cn) => PeerIdentity::Certificate(Arc::from(cn)),
        None => PeerIdentity::MissingCommonName,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("listeners.{listener}.tls: {why}")]
    Config { listener: String, why: String },
    /// A problem with one file: `key` is the full key, e.g. `listeners.tls.tls.cert`.
    #[error("{key}: {why}")]
    Key { key: String, why: String },
}

fn key_error(listener: &str, field: &str, why: impl Into<String>) -> TlsError {
    TlsError::Key {
        key: format!("listeners.{listener}.tls.{field}"),
        why: why.into(),
    }
}

/// The ring provider, shared by every config built here.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(listener: &str, field: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| {
        key_error(
            listener,
            field,
            format!("cannot read {}: {e}", path.display()),
        )
    })
}

/// What a PEM file holds instead of the expected item, for an error that says what to do.
fn instead(pem: &[u8], path: &Path, wanted: &str) -> String {
    let kinds: Vec<SectionKind> = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem)
        .filter_map(|section| section.ok().map(|(kind, _)| kind))
        .collect();
    let path = path.display();
    let has = |kind: SectionKind| kinds.contains(&kind);
    if has(SectionKind::Csr) {
        format!(
            "{path} is a certificate signing request (CSR), not a certificate: have it signed              by a CA first (scripts/make-certs does the whole set)"
        )
    } else if has(SectionKind::PrivateKey)
        || has(SectionKind::RsaPrivateKey)
        || has(SectionKind::EcPrivateKey)
    {
        format!("{path} holds a private key, no {wanted}")
    } else if has(SectionKind::Certificate) {
        format!("{path} holds a certificate, no {wanted}")
    } else {
        format!("no {wanted} found in {path}")
    }
}

/// All certificates in a PEM file; at least one.
fn load_certs(
    listener: &str,
    field: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(listener, field, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| key_error(listener, field, format!("{}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(key_error(
            listener,
            field,
            instead(&pem, path, "certificate"),
        ));
    }
    Ok(certs)
}

/// Every CRL in a PEM file; at least one.
fn load_crls(
    listener: &str,
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read(listener, "crl", path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| key_error(listener, "crl", format!("{}: bad PEM: {e}", path.display())))?;
    if crls.is_empty() {
        return Err(key_error(
            listener,
            "crl",
            format!("no certificate revocation list found in {}", path.display()),
        ));
    }
    Ok(crls)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
fn load_key(listener: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(listener, "key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound => instead(&pem, path, "private key"),
            e => format!("{}: bad PEM: {e}", path.display()),
        };
        key_error(listener, "key", why)
    })
}

/// The server certificate must parse as an X.509 v3 end-entity certificate, the only kind
/// rustls serves; checked here so the error names `cert`, not the key.
fn check_server_cert(
    listener: &str,
    path: &Path,
    cert: &CertificateDer<'_>,
) -> Result<(), TlsError> {
    webpki::EndEntityCert::try_from(cert)
        .map(|_| ())
        .map_err(|e| {
            let why = match e {
                webpki::Error::UnsupportedCertVersion => format!(
                    "{} is an X.509 v1 certificate; reissue it as v3 (see scripts/make-certs)",
                    path.display()
                ),
                e => format!("{}: not a usable certificate: {e:?}", path.display()),
            };
            key_error(listener, "cert", why)
        })
}

/// The close detail for a failed TLS handshake. A client certificate in X.509 v1 (what
/// `openssl x509 -req` makes without extensions) is refused by the verifier, which accepts
/// only v3: that case gets a sentence the operator can act on.
pub fn handshake_failure(error: &std::io::Error) -> String {
    let v1 = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| match e {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                matches!(
                    other.0.downcast_ref::<webpki::Error>(),
                    Some(webpki::Error::UnsupportedCertVersion)
                )
            }
            _ => false,
        });
    if v1 {
        "TLS handshake failed: client certificate is X.509 v1; reissue it as v3, see README \
         (UnsupportedCertVersion)"
            .to_string()
    } else {
        format!("TLS handshake failed: {error}")
    }
}

/// Builds the acceptor for one listener (ring provider; client certificates required when
/// `client_ca` is set).
pub fn acceptor(listener: &str, config: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let certs = load_certs(listener, "cert", &config.cert)?;
    check_server_cert(listener, &config.cert, &certs[0])?;
    let key = load_key(listener, &config.key)?;

    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            listener: listener.to_string(),
            why: e.to_string(),
        })?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in load_certs(listener, "client_ca", ca_path)? {
                roots.add(ca).map_err(|e| {
                    key_error(listener, "client_ca", format!("{}: {e}", ca_path.display()))
                })?;
            }
            // Without allow_unauthenticated(), a client with no certificate fails the handshake.
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            if let Some(crl) = &config.crl {
                // The client's own certificate is checked, as OpenSSL's CRL_CHECK does (not
                // the intermediates); a certificate whose issuer has no CRL in the file is
                // refused, so a missing CRL cannot silently let a revoked client in.
                verifier = verifier
                    .with_crls(load_crls(listener, crl)?)
                    .only_check_end_entity_revocation();
            }
            let verifier = verifier.build().map_err(|e| {
                key_error(listener, "client_ca", format!("{}: {e}", ca_path.display()))
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // with_single_cert also checks that the key belongs to the certificate.
    let server = builder.with_single_cert(certs, key).map_err(|e| {
        let (key, cert) = (config.key.display(), config.cert.display());
        let why = match e {
            rustls::Error::InconsistentKeys(_) => {
                format!("{key} is not the private key of the certificate in {cert}")
            }
            e => format!("{key} cannot be used with {cert}: {e}"),
        };
        key_error(listener, "key", why)
    })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// Test helpers shared with `metrics` (which checks that the recorder and TLS coexist).
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::ServerName;

    /// A CA, a server certificate for `localhost` and a client certificate, all signed by the
    /// CA, written as PEM files into a temporary directory. Generated per test: no keys in git.
    pub(crate) struct Pki {
        pub dir: tempfile::TempDir,
        pub ca_pem: String,
        pub client_cert_pem: String,
        pub client_key_pem: String,
    }

    impl Pki {
        pub fn new() -> Pki {
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

            let server_key = KeyPair::generate().unwrap();
            let server = CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .signed_by(&server_key, &ca)
                .unwrap();
            let client_key = KeyPair::generate().unwrap();
            let client = CertificateParams::new(vec!["client".to_string()])
                .unwrap()
                .signed_by(&client_key, &ca)
                .unwrap();

            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
            std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
            Pki {
                dir,
                ca_pem: ca.pem(),
                client_cert_pem: client.pem(),
                client_key_pem: client_key.serialize_pem(),
            }
        }

        pub fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        pub fn server_config(&self, mtls: bool) -> TlsConfig {
            TlsConfig {
                cert: self.path("server.pem"),
                key: self.path("server.key"),
                client_ca: mtls.then(|| self.path("ca.pem")),
                handshake_timeout: Duration::from_secs(10),
                identity_as_username: false,
                crl: None,
            }
        }

        /// A client trusting the CA, presenting the client certificate when `with_cert`.
        pub fn client(&self, with_cert: bool) -> tokio_rustls::TlsConnector {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
                roots.add(ca.unwrap()).unwrap();
            }
            let builder = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
            let config = if with_cert {
                let certs = CertificateDer::pem_slice_iter(self.client_cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_slice(self.client_key_pem.as_bytes()).unwrap();
                builder.with_client_auth_cert(certs, key).unwrap()
            } else {
                builder.with_no_client_auth()
            };
            tokio_rustls::TlsConnector::from(Arc::new(config))
        }
    }

    /// Accepts one TLS connection on 127.0.0.1 and echoes a few bytes; `Ok` when the client
    /// got its bytes back and the server saw no error.
    pub(crate) async fn handshake(
        acceptor: tokio_rustls::TlsAcceptor,
        connector: tokio_rustls::TlsConnector,
    ) -> Result<(), String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(socket).await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            tls.write_all(&buf).await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())
        });
        let client = async {
            let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut tls = connector
                .connect(name, socket)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            // In TLS 1.3 a rejected client certificate surfaces on the first read.
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            if &buf != b"ping" {
                return Err("echo mismatch".to_string());
            }
            Ok::<(), String>(())
        };
        let client = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .map_err(|_| "client timed out".to_string())?;
        let server = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .map_err(|_| "server timed out".to_string())?
            .unwrap();
        client.and(server)
    }

    #[tokio::test]
    async fn handshake_without_client_auth() {
        let pki = Pki::new();
        let acceptor = acceptor("tls", &pki.server_config(false)).unwrap();
        handshake(acceptor, pki.client(false)).await.unwrap();
    }

    #[tokio::test]
    async fn client_ca_requires_a_client_certificate() {
        let pki = Pki::new();
        let acceptor = acceptor("tls", &pki.server_config(true)).unwrap();
        let refused = handshake(acceptor.clone(), pki.client(false)).await;
        let why = refused.expect_err("a client without a certificate got through");
        assert!(why.to_lowercase().contains("certificate"), "{why}");
        handshake(acceptor, pki.client(true)).await.unwrap();
    }

    #[tokio::test]
    async fn client_certificate_from_another_ca_is_refused() {
        let pki = Pki::new();
        let other = Pki::new();
        let acceptor = acceptor("tls", &pki.server_config(true)).unwrap();
        // A client that trusts our server but holds a certificate signed by another CA.
        let mut client = Pki::new();
        client.ca_pem = pki.ca_pem.clone();
        client.client_cert_pem = other.client_cert_pem.clone();
        client.client_key_pem = other.client_key_pem.clone();
        let why = handshake(acceptor, client.client(true)).await.unwrap_err();
        // Both test CAs carry rcgen's default name, so the chain resolves to our CA and fails
        // on the signature (alert DecryptError) rather than as an unknown issuer.
        assert!(
            why.contains("DecryptError") || why.contains("UnknownCA"),
            "{why}"
        );
    }

    #[test]
    fn errors_name_the_key_and_file() {
        let pki = Pki::new();
        let mut config = pki.server_config(false);

        config.cert = pki.path("missing.pem");
        let e = acceptor("s", &config).err().unwrap().to_string();
        assert!(e.starts_with("listeners.s.tls.cert: cannot read "), "{e}");

        // A key file holds no certificate.
        config.cert = pki.path("server.key");
        let e = acceptor("s", &config).err().unwrap().to_string();
        assert!(e.starts_with("listeners.s.tls.cert: "), "{e}");
        assert!(
            e.ends_with("server.key holds a private key, no certificate"),
            "{e}"
        );

        // A certificate signing request where the certificate belongs.
        let csr_key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .serialize_request(&csr_key)
            .unwrap();
        std::fs::write(pki.path("server.csr"), csr.pem().unwrap()).unwrap();
        config.cert = pki.path("server.csr");
        let e = acceptor("s", &config).err().unwrap().to_string();
        assert!(e.starts_with("listeners.s.tls.cert: "), "{e}");
        assert!(
            e.contains("server.csr is a certificate signing request (CSR), not a certificate"),
            "{e}"
        );

        // Not PEM at all.
        std::fs::write(pki.path("garbage.pem"), "hello\n").unwrap();
        config.cert = pki.path("garbage.pem");
        let e = acceptor("s", &config).err().unwrap().to_string();
        assert!(
            e.starts_with("listeners.s.tls.cert: no certificate found in "),
            "{e}"
        );

        config = pki.server_config(false);
        config.key = pki.path("server.pem");
        let e = acceptor("s", &config).err().unwrap().to_string();
        assert!(e.starts_with("listeners.s.tls.key: "), "{e}");
        assert!(
            e.ends_with("server.pem holds a certificate, no private key"),
            "{e}"
        );

        // A key that does not belong to the certificate.
        std::fs::write(
            pki.path("other.key"),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        config.key = pki.path("other.key");
        let e = acceptor("s", &config).err().unwrap().to_string();
        assert!(e.starts_with("listeners.s.tls.key:"), "{e}");
        assert!(
            e.contains("other.key is not the private key of the certificate in "),
            "{e}"
        );

        config = pki.server_config(true);
        std::fs::write(pki.path("empty.pem"), "").unwrap();
        config.client_ca = Some(pki.path("empty.pem"));
        let e = acceptor("s", &config).err().unwrap().to_string();
        assert!(
            e.starts_with("listeners.s.tls.client_ca: no certificate found in "),
            "{e}"
        );
    }
}
