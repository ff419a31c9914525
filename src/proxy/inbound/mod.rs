//! `server` listeners: load the current rustls config once per connection (one `ArcSwap`
//! load), handshake within `--handshake-timeout` requiring a client certificate, check the
//! allow-list ([`authz`]) against the verified identity ([`identity`]), then copy bytes to the
//! plaintext `--target` (tcp mode) or forward requests ([`http`]). A refused client gets our
//! alert and a clean close (no reset that would hide the alert).

pub mod authz;
pub mod http;
pub mod identity;

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

pub use authz::Allow;
use identity::PeerIdentity;

use super::config::Protocol;
use super::handshake::HandshakeFailure;
use super::io::connect;
use super::listener::{follow_store, Handler, Shared, Slot};
use super::tcp;
use crate::creds::store::Store;
use crate::tls;

/// A `server` listener.
pub struct Inbound {
    shared: Arc<Shared>,
    allow: Allow,
    tls: Arc<Slot<rustls::ServerConfig>>,
    mode: Mode,
}

/// What an allowed connection carries.
enum Mode {
    Tcp,
    Http(Arc<http::Forwarder>),
}

impl Inbound {
    pub fn new(shared: Shared, allow: Allow) -> Self {
        let shared = Arc::new(shared);
        let mode = match shared.cfg.protocol {
            Protocol::Tcp => Mode::Tcp,
            Protocol::Http => Mode::Http(Arc::new(http::Forwarder::new(shared.clone()))),
        };
        Inbound {
            shared,
            allow,
            tls: Arc::new(Slot::empty()),
            mode,
        }
    }

    /// Keeps the rustls config in step with `store` until `cancel` (run it as a task).
    pub fn follow(
        &self,
        store: Arc<Store>,
        cancel: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        // http mode serves HTTP/2 and HTTP/1.x, preferred in that order (`curl -0` offers
        // only `http/1.0`); tcp mode carries opaque bytes: no ALPN, so a client's offer is
        // ignored (none chosen) rather than refused.
        let alpn: Vec<&'static [u8]> = match self.mode {
            Mode::Http(_) => vec![b"h2", b"http/1.1", b"http/1.0"],
            Mode::Tcp => Vec::new(),
        };
        let min_tls = self.shared.cfg.min_tls;
        follow_store(
            store,
            self.tls.clone(),
            move |p| tls::server_config(&p.bundle, min_tls, &alpn),
            self.shared.stats.clone(),
            cancel,
        )
    }

    /// Once `close` is cancelled (a drain, or the listener's close): keeps no connection to the
    /// app open for later requests (see [`http::Forwarder::stop_pooling`]; tcp mode has none).
    pub fn stop_pooling_at(
        &self,
        close: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let forwarder = match &self.mode {
            Mode::Http(f) => Some(f.clone()),
            Mode::Tcp => None,
        };
        async move {
            close.cancelled().await;
            if let Some(f) = forwarder {
                f.stop_pooling();
            }
        }
    }
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
            s.metrics.handshake_failed(HandshakeFailure::NoCredentials);
            debug!("no valid credentials yet; closing");
            return;
        };
        let accept = TlsAcceptor::from(config).accept(tcp).into_fallible();
        let tls = match tokio::time::timeout(s.cfg.handshake_timeout, accept).await {
            Ok(Ok(t)) => t,
            Ok(Err((e, tcp))) => {
                let reason = classify(&e);
                s.metrics.handshake_failed(reason);
                info!(%reason, error = %crate::proxy::tls_error::describe(&e), "handshake failed");
                linger(tcp).await;
                return;
            }
            Err(_) => {
                s.metrics.handshake_failed(HandshakeFailure::Timeout);
                info!("handshake timed out");
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
            s.metrics.handshake_failed(HandshakeFailure::NoClientCert);
            return;
        };
        let allowed = self.allow.permits(&identity);
        if !allowed {
            s.metrics.denied.inc();
            warn!(subject = %identity.subject, "client denied by the allow-list");
        }
        match &self.mode {
            Mode::Tcp if !allowed => {
                // Closed cleanly (close_notify, then the same drain as a refused handshake): a
                // reset would reach the client as "connection reset by peer", not as a close.
                let mut tls = tls;
                let _ = tokio::time::timeout(LINGER, tls.shutdown()).await;
                linger(tls.into_inner().0).await;
            }
            Mode::Tcp => match connect(&s.cfg.target, s.cfg.connect_timeout).await {
                Ok(upstream) => {
                    // Counted while it lives (no cap of its own: one per client connection).
                    let _slot = s.upstream.count();
                    tcp::splice(tls, upstream, &s.cfg).await;
                }
                Err(e) => {
                    s.metrics.upstream_failures.inc();
                    warn!(target = %s.cfg.target, error = %e, "upstream connect failed; closing the client connection");
                }
            },
            Mode::Http(fwd) => fwd.serve(tls, identity, allowed, peer, shutdown).await,
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

/// Why a client's handshake failed.
fn classify(e: &io::Error) -> HandshakeFailure {
    use HandshakeFailure::*;
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>());
    match tls {
        Some(TlsError::NoCertificatesPresented) => NoClientCert,
        Some(TlsError::InvalidCertificate(c)) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                ClientCertExpired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                ClientCertNotYetValid
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => ClientCertUntrusted,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                ClientCertWrongUsage
            }
            _ => ClientCertInvalid,
        },
        Some(TlsError::PeerIncompatible(_)) | Some(TlsError::NoApplicationProtocol) => Incompatible,
        Some(_) => HandshakeFailure::Protocol,
        None if e.kind() == io::ErrorKind::UnexpectedEof => Eof,
        None => Io,
    }
}
