//! The only place that builds rustls configurations. A server config is built from a validated
//! `Bundle` once per publish (never per connection): our leaf and key, and a webpki client
//! verifier over the peer CA bundle that requires a client certificate.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::SingleCertAndKey;
use rustls::ServerConfig;

use crate::creds::validate::Bundle;

/// Lowest TLS version accepted (`--min-tls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MinTls {
    #[default]
    #[value(name = "1.2")]
    V12,
    #[value(name = "1.3")]
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
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(bundle.peer_roots().clone(), provider.clone())
            .build()
            .map_err(|e| format!("client verifier: {e}"))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(min))
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(
            bundle.certified_key().clone(),
        )));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}
