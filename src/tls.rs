//! The only place that builds rustls configurations. A server config (`server`) or client config
//! (`client`) is built from a validated `Bundle` once per publish (never per connection): our
//! leaf and key, and a webpki verifier over the peer CA bundle: clients must present a
//! certificate; servers must carry serverAuth, the expected name and any pinned SANs. The probe config of
//! `--verify-addr` trusts nothing: it only records which leaf the app serves. The https client
//! of `--webhook` verifies the server against the given roots and presents no certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::aws_lc_rs;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::SingleCertAndKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::creds::validate::Bundle;
use crate::creds::x509;

/// Why a rustls configuration could not be built from a validated bundle (not expected:
/// validation checked what rustls needs).
#[derive(Debug, thiserror::Error)]
pub enum TlsBuildError {
    #[error("building the client certificate verifier: {0}")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    #[error("building the server certificate verifier: {0}")]
    ServerVerifier(#[source] rustls::server::VerifierBuilderError),
    #[error("choosing the TLS versions: {0}")]
    Versions(#[source] rustls::Error),
}

/// Lowest TLS version accepted (`--min-tls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MinTls {
    #[default]
    V12,
    V13,
}

static TLS12_UP: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(min: MinTls) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        MinTls::V12 => &TLS12_UP,
        MinTls::V13 => &TLS13_ONLY,
    }
}

/// A TLS server config that requires and verifies client certificates against the bundle's
/// peer roots. `alpn` lists the protocols offered, most preferred first.
pub fn server_config(
    bundle: &Bundle,
    min: MinTls,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsBuildError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(bundle.peer_roots().clone(), provider.clone())
            .build()
            .map_err(TlsBuildError::ClientVerifier)?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(min))
        .map_err(TlsBuildError::Versions)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(
            bundle.certified_key().clone(),
        )));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Records the end-entity certificate the server presents and accepts it: the caller compares
/// its hash with the leaf it expects, so no trust decision is made here.
#[derive(Debug)]
pub struct LeafRecorder {
    seen: std::sync::Mutex<Option<Vec<u8>>>,
    provider: Arc<CryptoProvider>,
}

impl LeafRecorder {
    /// The DER of the leaf seen during the handshake, if it got that far.
    pub fn seen(&self) -> Option<Vec<u8>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ServerCertVerifier for LeafRecorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config for one probe of which leaf an app serves (no client certificate: the
/// server's certificate arrives before the app could ask for ours).
pub fn leaf_probe() -> Result<(Arc<ClientConfig>, Arc<LeafRecorder>), TlsBuildError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let recorder = Arc::new(LeafRecorder {
        seen: std::sync::Mutex::new(None),
        provider: provider.clone(),
    });
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsBuildError::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    Ok((Arc::new(cfg), recorder))
}

/// A client config that verifies servers against `roots` (webpki, hostname checked) and
/// presents no client certificate: the https webhook.
pub fn https_client(roots: RootCertStore) -> Result<Arc<ClientConfig>, TlsBuildError> {
    let cfg = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsBuildError::Versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// SANs the server's leaf must carry on top of the verified name (`--verify-dns`, `--verify-uri`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pins {
    pub dns: Vec<String>,
    pub uri: Vec<String>,
}

/// The server's leaf lacks a pinned SAN.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the server certificate lacks the pinned {kind} SAN {value:?}")]
pub struct PinMismatch {
    pub kind: &'static str,
    pub value: String,
}

/// A client config for `client`: presents the bundle's leaf (which has clientAuth), verifies the
/// server against the bundle's peer roots (chain, serverAuth, name) and `pins`, and resumes
/// sessions with the servers it already talked to. `alpn` lists the protocols offered.
pub fn client_config(
    bundle: &Bundle,
    min: MinTls,
    alpn: &[&[u8]],
    pins: &Pins,
) -> Result<Arc<ClientConfig>, TlsBuildError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let webpki =
        WebPkiServerVerifier::builder_with_provider(bundle.peer_roots().clone(), provider.clone())
            .build()
            .map_err(TlsBuildError::ServerVerifier)?;
    let verifier = Arc::new(PinnedServer {
        inner: webpki,
        pins: pins.clone(),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(min))
        .map_err(TlsBuildError::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
            bundle.certified_key().clone(),
        )));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// webpki's server verification, then the SAN pins.
#[derive(Debug)]
struct PinnedServer {
    inner: Arc<WebPkiServerVerifier>,
    pins: Pins,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        if self.pins == Pins::default() {
            return Ok(verified);
        }
        let sans = x509::sans_from_der(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        // DNS names by the one rule of `creds::x509`, URIs exactly.
        let dns = self.pins.dns.iter().find(|w| !sans.covers_dns(w));
        let uri = self.pins.uri.iter().find(|w| !sans.uri.contains(w));
        let mismatch = dns
            .map(|value| PinMismatch {
                kind: "DNS",
                value: value.clone(),
            })
            .or(uri.map(|value| PinMismatch {
                kind: "URI",
                value: value.clone(),
            }));
        match mismatch {
            None => Ok(verified),
            Some(m) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(m)),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
