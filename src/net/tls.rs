//! TLS for the stream transports: the certificate a relay or supernode serves, and the client
//! side that races TLS beside plain TCP on networks whose firewall passes nothing else.
//!
//! For voxmesh's own traffic TLS is a disguise, not a source of trust: every protocol it carries
//! authenticates the far end by itself (a session's Noise handshake binds the supernode's static
//! key, TURN's MESSAGE-INTEGRITY the relay's credentials, and call media is sealed end to end).
//! So a supernode serves a certificate it made for itself unless given one, and our client takes
//! any certificate ([`camouflage_client`]) while still checking the handshake's signature with
//! it. Checking names would prove nothing the inner layer does not, and supernodes have no names
//! a public CA would certify. `relayd` serving standard TURN clients over TLS is another matter:
//! it takes an operator's certificate (`--cert`, `--key`) for them to verify.

use std::io;
use std::sync::Arc;

/// The first byte of a TLS connection (a handshake record, RFC 8446 §5.1): a listener that
/// serves plain and TLS streams on one port tells them apart by it.
pub const TLS_HANDSHAKE: u8 = 0x16;

/// A TLS certificate that can be replaced while serving (relayd's SIGHUP): handshakes after
/// [`ReloadableCert::load`] present the new one; open connections keep the one they began with.
#[derive(Debug)]
pub struct ReloadableCert(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl ReloadableCert {
    /// Parses PEM `cert_pem` (chain, leaf first) and `key_pem`, checking that they match.
    pub fn new(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<ReloadableCert> {
        Ok(ReloadableCert(std::sync::RwLock::new(certified_key(
            cert_pem, key_pem,
        )?)))
    }

    /// Replaces the certificate; on error the old one stays.
    pub fn load(&self, cert_pem: &[u8], key_pem: &[u8]) -> io::Result<()> {
        let k = certified_key(cert_pem, key_pem)?;
        *self
            .0
            .write()
            .map_err(|_| io::Error::other("certificate lock poisoned"))? = k;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.read().ok().map(|k| k.clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<Arc<rustls::sign::CertifiedKey>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no certificate in the --cert file",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("private key: {e}")))?;
    // from_der checks that the key belongs to the leaf certificate.
    rustls::sign::CertifiedKey::from_der(certs, key, &provider())
        .map(Arc::new)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A TLS server configuration serving `cert`, whichever certificate it holds at the time.
pub fn tls_config_reloadable(cert: Arc<ReloadableCert>) -> io::Result<Arc<rustls::ServerConfig>> {
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    Ok(Arc::new(cfg))
}

/// A TLS server configuration for one fixed certificate chain and key (PEM).
pub fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<Arc<rustls::ServerConfig>> {
    tls_config_reloadable(Arc::new(ReloadableCert::new(cert_pem, key_pem)?))
}

/// A certificate for `name` signed by its own new key, as PEM (certificate, key): what a
/// supernode (or relay) serves TLS with when not given one.
#[cfg(any(feature = "supernode", feature = "relay"))]
pub fn self_signed(name: &str) -> io::Result<(String, String)> {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).map_err(io::Error::other)?;
    Ok((c.cert.pem(), c.key_pair.serialize_pem()))
}

/// Takes any certificate, checks the handshake's signature with it (see the module's notes).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration our streams race TLS with: any certificate (see the module's
/// notes), TLS 1.2 or 1.3.
pub fn camouflage_client() -> io::Result<Arc<rustls::ClientConfig>> {
    let p = provider();
    let cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(p)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}
