//! `client` listeners: a plaintext connection from the app on loopback is carried to
//! `--target` over mTLS with the current client certificate ([`connect`]). What connections
//! use is rebuilt on every publish and read with one `ArcSwap` load: in tcp mode a rustls
//! connector (each local connection gets its own upstream TLS connection), in http mode a pool
//! of kept-alive upstream connections ([`http`]). A failed upstream connect or handshake ends
//! the local connection at once (502 in http mode), logged with its reason and counted; a
//! refusal of our certificate that arrives after the handshake is noticed by [`refusal`].

pub mod connect;
pub mod http;
pub mod refusal;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use connect::{Remote, UpstreamError};
use refusal::{Rejections, Watched};

use super::config::Protocol;
use super::listener::{follow_store, Handler, Shared, Slot};
use super::tcp;
use crate::creds::store::Store;
use crate::tls::{self, Pins};

/// A `client` listener.
pub struct Outbound {
    shared: Arc<Shared>,
    remote: Arc<Remote>,
    pins: Pins,
    mode: Mode,
}

/// What the current credentials give the connections of each mode.
enum Mode {
    Tcp(Arc<Slot<TlsConnector>>),
    Http(Arc<Slot<http::Pool>>),
}

impl Outbound {
    pub fn new(shared: Shared, remote: Remote, pins: Pins) -> Self {
        let mode = match shared.cfg.protocol {
            Protocol::Tcp => Mode::Tcp(Arc::new(Slot::empty())),
            Protocol::Http => Mode::Http(Arc::new(Slot::empty())),
        };
        Outbound {
            shared: Arc::new(shared),
            remote: Arc::new(remote),
            pins,
            mode,
        }
    }

    /// Keeps the connector (tcp) or pool (http) in step with `store` until `cancel` (run it as
    /// a task).
    pub fn follow(
        &self,
        store: Arc<Store>,
        cancel: CancellationToken,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
        let (min_tls, pins) = (self.shared.cfg.min_tls, self.pins.clone());
        let stats = self.shared.stats.clone();
        match &self.mode {
            // tcp mode carries opaque bytes: no ALPN.
            Mode::Tcp(slot) => Box::pin(follow_store(
                store,
                slot.clone(),
                move |p| {
                    let cfg = tls::client_config(&p.bundle, min_tls, &[], &pins)?;
                    Ok(Arc::new(TlsConnector::from(cfg)))
                },
                stats,
                cancel,
            )),
            // http mode offers HTTP/2 (the pool multiplexes over it), then HTTP/1.1.
            Mode::Http(slot) => {
                let (remote, shared) = (self.remote.clone(), self.shared.clone());
                Box::pin(follow_store(
                    store,
                    slot.clone(),
                    move |p| {
                        let alpn: [&[u8]; 2] = [b"h2", b"http/1.1"];
                        let cfg = tls::client_config(&p.bundle, min_tls, &alpn, &pins)?;
                        let connector = TlsConnector::from(cfg);
                        Ok(Arc::new(http::Pool::new(
                            remote.clone(),
                            connector,
                            shared.clone(),
                        )))
                    },
                    stats,
                    cancel,
                ))
            }
        }
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
        let s = &self.shared;
        let connector = match &self.mode {
            Mode::Http(pools) => {
                return http::serve(tcp, peer, pools, &self.remote, s, shutdown).await;
            }
            Mode::Tcp(slot) => slot.load_full(),
        };
        // Counted while it lives (tcp mode has no cap of its own: one per local connection).
        let _slot = s.upstream.count();
        let upstream = match connector {
            None => Err(UpstreamError::NoCredentials),
            Some(tls) => connect::connect(&self.remote, &tls, &s.cfg).await,
        };
        let failed = match upstream {
            Ok(tls) => {
                let rejections = Arc::new(Rejections::default());
                let tls = Watched::new(tls, rejections.clone());
                tcp::splice(tcp, tls, &s.cfg).await;
                rejections
                    .get()
                    .map(|alert| UpstreamError::Rejected { alert })
            }
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            count(s, &e);
            warn!(reason = e.reason(), error = %e, "upstream unavailable; closing the local connection");
        }
    }
}

/// Counts a failure: every one in `upstream_failures_total` (but a full cap, which is no
/// failure of the upstream), handshake failures also in `handshake_failures_total{reason}`.
fn count(s: &Shared, e: &UpstreamError) {
    if !matches!(e, UpstreamError::Busy(_)) {
        s.metrics.upstream_failures.inc();
    }
    if let Some(reason) = e.handshake() {
        s.metrics.handshake_failed(reason);
    }
}
