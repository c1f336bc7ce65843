//! TLS for peer and client connections, with rustls (the `ring` provider).
//!
//! A node given a certificate and key (`--tls-cert`, `--tls-key`) speaks TLS on its port, to
//! peers and clients alike, and one given a CA (`--tls-ca`) speaks TLS to its peers, checking
//! that each presents a certificate that CA signed for the address it was dialled at (an IP
//! address SAN, since the ring knows its members by address). A node usually gets all three;
//! `kvctl --tls-ca` is the client's half. TLS keeps what crosses the network private and
//! unaltered; who may join the ring and who may write are the cluster secret's and the tokens'
//! business ([`crate::auth`]), which run inside the TLS session and combine with it.
//!
//! Certificates are PEM files; the key may be PKCS#8, PKCS#1 or SEC1. Clients present no
//! certificate.

use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;

/// The server side: what a node with a certificate accepts connections with.
#[derive(Clone)]
pub struct ServerTls(tokio_rustls::TlsAcceptor);

/// The client side: what a node or kvctl dials TLS peers with.
#[derive(Clone)]
pub struct ClientTls(tokio_rustls::TlsConnector);

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls")
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, e: impl fmt::Display) -> Error {
    Error::InvalidInput(format!("{what}: {e}"))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(&path.display().to_string(), e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error(&path.display().to_string(), e))?;
    if certs.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

impl ServerTls {
    /// From a PEM certificate chain and its private key.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file that cannot be read or used.
    pub fn from_files(cert: &Path, key: &Path) -> Result<ServerTls> {
        let chain = certificates(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| tls_error(&key.display().to_string(), e))?;
        Self::from_parts(chain, key)
    }

    /// From a certificate chain and key already in memory (tests generate them).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if rustls refuses them.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ServerTls> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS", e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| tls_error("the TLS certificate and key", e))?;
        Ok(ServerTls(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }

    /// The TLS handshake of an accepted connection.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] if the handshake fails (a client without TLS, a bad record).
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.0
            .accept(stream)
            .await
            .map_err(|e| Error::Unauthorized(format!("TLS handshake failed: {e}")))
    }
}

impl ClientTls {
    /// Trusting the CA certificates in a PEM file.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the file cannot be read or holds no usable certificate.
    pub fn from_ca_file(ca: &Path) -> Result<ClientTls> {
        Self::from_ca(certificates(ca)?)
    }

    /// Trusting these CA certificates.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if none can be used.
    pub fn from_ca(cas: Vec<CertificateDer<'static>>) -> Result<ClientTls> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| tls_error("the TLS CA certificate", e))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("TLS", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls(tokio_rustls::TlsConnector::from(Arc::new(
            config,
        ))))
    }

    /// The TLS handshake with the node at `addr`, which must present a certificate for its IP.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] if the handshake fails or the certificate is not trusted.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::IpAddress(addr.ip().into());
        self.0
            .connect(name, stream)
            .await
            .map_err(|e| Error::Unauthorized(format!("TLS handshake with {addr} failed: {e}")))
    }
}
