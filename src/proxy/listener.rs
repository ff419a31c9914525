//! The accept loop of one TLS listener: a semaphore caps open connections (excess connections
//! wait in the kernel backlog), each accepted connection loads the current rustls config once
//! (one `ArcSwap` load), handshakes within `--handshake-timeout`, is checked against the
//! allow-list, then handed to the tcp or http path. On shutdown it stops accepting (the socket
//! is closed, so new connections are refused) and asks open connections to finish.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustls::{CertificateError, Error as TlsError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::identity::PeerIdentity;
use super::{http, tcp, ListenerConfig, ListenerMetrics, ListenerStats, Protocol, TlsState};

/// What every connection of a listener shares.
pub struct ConnCtx {
    pub cfg: ListenerConfig,
    pub tls: Arc<TlsState>,
    pub metrics: ListenerMetrics,
    pub stats: Arc<ListenerStats>,
    pub http: Option<http::Proxy>,
}

/// Binds the listening socket and logs the address actually bound.
pub async fn bind(cfg: &ListenerConfig) -> io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(cfg.listen).await?;
    let addr = l.local_addr()?;
    info!(listener = %cfg.name, address = %addr, target = %cfg.target, "listener bound");
    Ok((l, addr))
}

/// Accepts until `shutdown`, then drops the socket; connection tasks go to `tracker`.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ConnCtx>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(ctx.cfg.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(listener = %ctx.cfg.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            handle(tcp, peer, ctx, shutdown).await;
        });
    }
    info!(listener = %ctx.cfg.name, "stopped accepting connections");
}

/// Counts a connection as open for as long as it lives.
struct OpenGuard(Arc<ConnCtx>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics.active.dec();
        self.0.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(tcp: TcpStream, peer: SocketAddr, ctx: Arc<ConnCtx>, shutdown: CancellationToken) {
    ctx.metrics.total.inc();
    ctx.metrics.active.inc();
    ctx.stats.active.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(ctx.clone());
    let _ = tcp.set_nodelay(true);
    // The one load per connection: credentials published after this point apply to the next one.
    let Some(config) = ctx.tls.config.load_full() else {
        ctx.metrics.handshake_failed("no_credentials");
        debug!(listener = %ctx.cfg.name, %peer, "no valid credentials yet; closing");
        return;
    };
    let accept = TlsAcceptor::from(config).accept(tcp);
    let tls = match tokio::time::timeout(ctx.cfg.handshake_timeout, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = classify(&e);
            ctx.metrics.handshake_failed(reason);
            info!(listener = %ctx.cfg.name, %peer, reason, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            ctx.metrics.handshake_failed("timeout");
            info!(listener = %ctx.cfg.name, %peer, "handshake timed out");
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
        ctx.metrics.handshake_failed("no_client_cert");
        return;
    };
    let allowed = ctx.cfg.allow.permits(&identity);
    if !allowed {
        ctx.metrics.denied.inc();
        warn!(listener = %ctx.cfg.name, %peer, subject = %identity.subject, "client denied by the allow-list");
    }
    match (ctx.cfg.protocol, allowed) {
        (Protocol::Tcp, false) => {}
        (Protocol::Tcp, true) => tcp::proxy(tls, &ctx, shutdown).await,
        (Protocol::Http, _) => http::serve(tls, identity, allowed, peer, &ctx, shutdown).await,
    }
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
