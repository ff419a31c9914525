//! `server` connections: load the current rustls config once (one `ArcSwap` load), handshake
//! within `--handshake-timeout` requiring a client certificate, check the allow-list, then hand
//! the TLS stream to the tcp or http path towards the plaintext `--target`. A refused client
//! gets our alert and a clean close (no reset that would hide the alert).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{CertificateError, Error as TlsError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::authz::Allow;
use super::identity::PeerIdentity;
use super::io::connect;
use super::listener::{Handler, Shared};
use super::{http, tcp, Protocol, Slot};

/// A `server` listener.
pub struct Inbound {
    pub shared: Shared,
    pub allow: Allow,
    pub tls: Arc<Slot<rustls::ServerConfig>>,
    pub http: Option<http::Proxy>,
}

impl Handler for Inbound {
    fn shared(&self) -> &Shared {
        &self.shared
    }

    async fn handle(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) {
        let s = &self.shared;
        // The one load per connection: credentials published after this point apply to the next one.
        let Some(config) = self.tls.load_full() else {
            s.metrics.handshake_failed("no_credentials");
            debug!(listener = %s.cfg.name, %peer, "no valid credentials yet; closing");
            return;
        };
        let accept = TlsAcceptor::from(config).accept(tcp).into_fallible();
        let tls = match tokio::time::timeout(s.cfg.handshake_timeout, accept).await {
            Ok(Ok(t)) => t,
            Ok(Err((e, tcp))) => {
                let reason = classify(&e);
                s.metrics.handshake_failed(reason);
                info!(listener = %s.cfg.name, %peer, reason, error = %e, "handshake failed");
                linger(tcp).await;
                return;
            }
            Err(_) => {
                s.metrics.handshake_failed("timeout");
                info!(listener = %s.cfg.name, %peer, "handshake timed out");
                return;
            }
        };
        // The verifier requires a client certificate, so one is present after a handshake.
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| PeerIdentity::from_der(leaf));
        let Some(identity) = identity else {
            s.metrics.handshake_failed("no_client_cert");
            return;
        };
        let allowed = self.allow.permits(&identity);
        if !allowed {
            s.metrics.denied.inc();
            warn!(listener = %s.cfg.name, %peer, subject = %identity.subject, "client denied by the allow-list");
        }
        match (s.cfg.protocol, allowed) {
            (Protocol::Tcp, false) => {}
            (Protocol::Tcp, true) => match connect(&s.cfg.target, s.cfg.connect_timeout).await {
                Ok(upstream) => {
                    // Counted while it lives (no cap of its own: one per client connection).
                    let _slot = s.upstream.acquire().await;
                    tcp::splice(tls, upstream, &s.cfg).await;
                }
                Err(e) => {
                    s.metrics.upstream_failures.inc();
                    warn!(listener = %s.cfg.name, target = %s.cfg.target, error = %e, "upstream connect failed; closing the client connection");
                }
            },
            (Protocol::Http, _) => http::serve(tls, identity, allowed, peer, &self, shutdown).await,
        }
    }
}

/// How long a refused client may go on sending before we close anyway.
const LINGER: Duration = Duration::from_secs(2);

/// Closes after a failed handshake without a reset, so the client learns why. Our alert is out;
/// with TLS 1.3 the client may already have sent data, and closing a socket with unread input
/// sends RST, which makes the client's TCP discard the alert unread. So: stop writing (FIN),
/// read and drop what still arrives until the client closes, for at most `LINGER`.
async fn linger(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A short, stable label for `handshake_failures_total{reason}`.
fn classify(e: &io::Error) -> &'static str {
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>());
    match tls {
        Some(TlsError::NoCertificatesPresented) => "no_client_cert",
        Some(TlsError::InvalidCertificate(c)) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "client_cert_expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "client_cert_not_yet_valid"
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "client_cert_untrusted"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "client_cert_wrong_usage"
            }
            _ => "client_cert_invalid",
        },
        Some(TlsError::PeerIncompatible(_)) | Some(TlsError::NoApplicationProtocol) => {
            "incompatible"
        }
        Some(_) => "protocol",
        None if e.kind() == io::ErrorKind::UnexpectedEof => "eof",
        None => "io",
    }
}
