//! Reaching the upstream of a `client` listener: a TCP connection to `--target` and the mTLS
//! handshake with the current client certificate, within the listener's timeouts. Every way it
//! can fail is an [`UpstreamError`] whose message is a sentence (it goes into 502 bodies and the
//! log) and whose reason is a stable label.

use std::io;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{AlertDescription, CertificateError, Error as TlsError};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::refusal::refuses_certificate;
use crate::proxy::config::ListenerConfig;
use crate::proxy::handshake::HandshakeFailure;
use crate::proxy::io::{connect_tcp, UpstreamBusy};
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

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no valid client credentials yet")]
    NoCredentials,
    #[error("connecting to {addr} failed: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connecting to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("TLS handshake with {addr} failed ({reason}): {detail}")]
    Handshake {
        addr: String,
        reason: HandshakeFailure,
        /// What rustls said, in words (a pin mismatch as our sentence, not rustls' Debug).
        detail: String,
    },
    #[error("the server refused our client certificate (TLS alert {alert:?})")]
    Rejected { alert: AlertDescription },
    #[error("TLS handshake with {addr} timed out after {after:?}")]
    HandshakeTimeout { addr: String, after: Duration },
    #[error(transparent)]
    Busy(UpstreamBusy),
}

impl UpstreamError {
    /// The stable label of the 502 body and the log line.
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect_failed",
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::Busy(_) => "upstream_busy",
            other => other.handshake().map_or("io", HandshakeFailure::as_str),
        }
    }

    /// The handshake failure this is, if it is one (what `handshake_failures_total` counts).
    pub fn handshake(&self) -> Option<HandshakeFailure> {
        match self {
            UpstreamError::NoCredentials => Some(HandshakeFailure::NoCredentials),
            UpstreamError::Handshake { reason, .. } => Some(*reason),
            UpstreamError::Rejected { .. } => Some(HandshakeFailure::RejectedByServer),
            UpstreamError::HandshakeTimeout { .. } => Some(HandshakeFailure::Timeout),
            UpstreamError::Connect { .. }
            | UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Busy(_) => None,
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
    let tcp = match tokio::time::timeout(cfg.connect_timeout, connect_tcp(&addr)).await {
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
            debug!(target = %addr, resumed = ?t.get_ref().1.handshake_kind(), "upstream handshake done");
            Ok(t)
        }
        Ok(Err(e)) => {
            let (reason, detail) = classify(&e);
            Err(UpstreamError::Handshake {
                addr,
                reason,
                detail,
            })
        }
        Err(_) => Err(UpstreamError::HandshakeTimeout {
            addr,
            after: cfg.handshake_timeout,
        }),
    }
}

/// Why an upstream handshake failed, and what happened in words.
fn classify(e: &io::Error) -> (HandshakeFailure, String) {
    use HandshakeFailure::*;
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) else {
        let reason = if e.kind() == io::ErrorKind::UnexpectedEof {
            Eof
        } else {
            Io
        };
        return (reason, e.to_string());
    };
    let reason = match tls {
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                ServerNameMismatch
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                ServerCertExpired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                ServerCertNotYetValid
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => ServerCertUntrusted,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                ServerCertWrongUsage
            }
            CertificateError::Other(o) => {
                // Our own verifier's refusal: say it in our words (rustls would print Debug).
                if let Some(pin) = o.0.downcast_ref::<PinMismatch>() {
                    return (ServerCertPinMismatch, pin.to_string());
                }
                ServerCertInvalid
            }
            _ => ServerCertInvalid,
        },
        // The server refused our certificate (TLS 1.2: during the handshake).
        TlsError::AlertReceived(a) if refuses_certificate(*a) => RejectedByServer,
        TlsError::AlertReceived(
            AlertDescription::ProtocolVersion
            | AlertDescription::HandshakeFailure
            | AlertDescription::InsufficientSecurity
            | AlertDescription::NoApplicationProtocol,
        ) => Incompatible,
        TlsError::PeerIncompatible(_) | TlsError::NoApplicationProtocol => Incompatible,
        _ => HandshakeFailure::Protocol,
    };
    (reason, crate::proxy::tls_error::describe_tls(tls))
}
