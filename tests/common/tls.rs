//! A TLS MQTT client for tests: a rustls connector from PEM text, and a CONNECT over it.

use std::net::SocketAddr;
use std::sync::Arc;

use brokk::protocol::{self, Packet, Version};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::connect_packet;

/// A client trusting `ca_pem`, presenting `client` (certificate PEM, key PEM) when given.
pub fn connector(ca_pem: &str, client: Option<(&str, &str)>) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.expect("ca")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// CONNECT (v5) over TLS to `localhost`; the CONNACK's reason code, or the error that
/// stopped it.
pub async fn mqtt_over_tls(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
) -> Result<u8, String> {
    let socket = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, socket)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = BytesMut::new();
    protocol::encode(
        &Packet::Connect(Box::new(connect_packet(Version::V5, "tls"))),
        Version::V5,
        &mut out,
    )
    .expect("encode");
    tls.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    loop {
        if let Some(packet) =
            protocol::decode(&mut buf, Some(Version::V5), 1 << 20).map_err(|e| e.to_string())?
        {
            return match packet {
                Packet::ConnAck(c) => Ok(c.reason_code),
                other => Err(format!("unexpected {other:?}")),
            };
        }
        // In TLS 1.3 a refused client certificate surfaces on the first read.
        match tls.read_buf(&mut buf).await {
            Ok(0) => return Err("closed".to_string()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}
