//! `client` connections: a plaintext connection from the app on loopback is carried to
//! `--target` over mTLS with the current client certificate. The upstream origin (rustls client
//! config, and the connection pool in http mode) is rebuilt on every publish and read with one
//! `ArcSwap` load; in tcp mode each local connection gets its own upstream TLS connection, in
//! http mode requests go through the pool (`outbound_http`). A failed upstream connect or
//! handshake ends the local connection at once (502 in http mode), logged with its reason and
//! counted.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, Error as TlsError};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::chain::find_in_chain;
use super::io::UpstreamBusy;
use super::listener::{Handler, Shared};
use super::refusal::refuses_certificate;
pub use super::refusal::{rejected_by_server, Rejections, Watched};
use super::{outbound_http, tcp, ListenerConfig, Protocol, Slot};
use crate::tls::PinMismatch;

/// Where and as whom the upstream is reached; fixed at start-up.
#[derive(Clone, Debug)]
pub struct Remote {
    /// `host:port` to connect to.
    pub addr: String,
    /// SNI and the name the server certificate is verified for.
    pub server_name: ServerName<'static>,
    /// `Host` / `:authority` of forwarded requests: the server name, with the port unless 443.
    pub authority: String,
}

/// What connections use until the next publish.
pub struct Origin {
    pub tls: TlsConnector,
    /// http mode: kept-alive upstream connections made with this origin's credentials.
    pub pool: Option<outbound_http::Pool>,
}

/// A `client` listener.
pub struct Outbound {
    pub shared: Shared,
    pub remote: Arc<Remote>,
    pub origin: Arc<Slot<Origin>>,
}

/// Why no upstream connection could be made; `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no valid client credentials yet")]
    NoCredentials,
    #[error("connecting to {addr} failed: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connecting to {addr} timed out after {after:?}")]
    ConnectTimeout {
        addr: String,
        after: std::time::Duration,
    },
    #[error("TLS handshake with {addr} failed ({reason}): {source}")]
    Handshake {
        addr: String,
        reason: &'static str,
        source: io::Error,
    },
    #[error("the server refused our client certificate (TLS alert {alert:?})")]
    Rejected { alert: AlertDescription },
    #[error("TLS handshake with {addr} timed out after {after:?}")]
    HandshakeTimeout {
        addr: String,
        after: std::time::Duration,
    },
    #[error(transparent)]
    Busy(UpstreamBusy),
}

impl UpstreamError {
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::NoCredentials => "no_credentials",
            UpstreamError::Connect { .. } => "connect_failed",
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::Handshake { reason, .. } => reason,
            UpstreamError::Rejected { .. } => "rejected_by_server",
            UpstreamError::HandshakeTimeout { .. } => "timeout",
            UpstreamError::Busy(_) => "upstream_busy",
        }
    }

    /// Counts the failure: every one in `upstream_failures_total`, TLS ones also in
    /// `handshake_failures_total{reason}`.
    pub fn count(&self, shared: &Shared) {
        shared.metrics.upstream_failures.inc();
        if !matches!(
            self,
            UpstreamError::Connect { .. }
                | UpstreamError::ConnectTimeout { .. }
                | UpstreamError::Busy(_)
        ) {
            shared.metrics.handshake_failed(self.reason());
        }
    }
}

/// Connects to the remote and completes the mTLS handshake, within the listener's timeouts.
pub async fn connect(
    remote: &Remote,
    tls: &TlsConnector,
    cfg: &ListenerConfig,
) -> Result<TlsStream<TcpStream>, UpstreamError> {
    let addr = remote.addr.clone();
    let tcp = match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(&addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
        Err(_) => {
            return Err(UpstreamError::ConnectTimeout {
                addr,
                after: cfg.connect_timeout,
            })
        }
    };
    let _ = tcp.set_nodelay(true);
    let handshake = tls.connect(remote.server_name.clone(), tcp);
    match tokio::time::timeout(cfg.handshake_timeout, handshake).await {
        Ok(Ok(t)) => {
            debug!(listener = %cfg.name, target = %addr, resumed = ?t.get_ref().1.handshake_kind(), "upstream handshake done");
            Ok(t)
        }
        Ok(Err(source)) => {
            let reason = classify(&source);
            // rustls shows a custom verifier error with Debug; say it in words.
            let source = match find_in_chain::<PinMismatch>(&source) {
                Some(pin) => io::Error::new(io::ErrorKind::InvalidData, pin.clone()),
                None => source,
            };
            Err(UpstreamError::Handshake {
                addr,
                reason,
                source,
            })
        }
        Err(_) => Err(UpstreamError::HandshakeTimeout {
            addr,
            after: cfg.handshake_timeout,
        }),
    }
}

impl Handler for Outbound {
    fn shared(&self) -> &Shared {
        &self.shared
    }

    async fn handle(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) {
        if self.shared.cfg.protocol == Protocol::Http {
            return outbound_http::serve(tcp, peer, &self, shutdown).await;
        }
        let s = &self.shared;
        // Counted while it lives (tcp mode has no cap of its own: one per local connection).
        let _slot = s.upstream.acquire().await;
        let upstream = match self.origin.load_full() {
            None => Err(UpstreamError::NoCredentials),
            Some(origin) => connect(&self.remote, &origin.tls, &s.cfg).await,
        };
        let failed = match upstream {
            Ok(tls) => {
                let rejections = Arc::new(Rejections::default());
                let tls = Watched::new(tls, rejections.clone());
                tcp::splice(tcp, tls, &s.cfg).await;
                rejections.get()
            }
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            e.count(s);
            warn!(listener = %s.cfg.name, %peer, reason = e.reason(), error = %e, "upstream unavailable; closing the local connection");
        }
    }
}

/// A short, stable label for a failed upstream handshake.
fn classify(e: &io::Error) -> &'static str {
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>());
    match tls {
        Some(TlsError::InvalidCertificate(c)) => {
            match c {
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => "server_name_mismatch",
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "server_cert_expired"
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "server_cert_not_yet_valid"
                }
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    "server_cert_untrusted"
                }
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => "server_cert_wrong_usage",
                CertificateError::Other(o) if o.0.downcast_ref::<PinMismatch>().is_some() => {
                    "server_cert_pin_mismatch"
                }
                _ => "server_cert_invalid",
            }
        }
        // The server refused our certificate (TLS 1.2: during the handshake).
        Some(TlsError::AlertReceived(a)) if refuses_certificate(*a) => "rejected_by_server",
        Some(TlsError::AlertReceived(
            AlertDescription::ProtocolVersion
            | AlertDescription::HandshakeFailure
            | AlertDescription::InsufficientSecurity
            | AlertDescription::NoApplicationProtocol,
        )) => "incompatible",
        Some(TlsError::PeerIncompatible(_)) | Some(TlsError::NoApplicationProtocol) => {
            "incompatible"
        }
        Some(_) => "protocol",
        None if e.kind() == io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}
