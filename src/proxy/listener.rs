//! The accept loop shared by `server` and `client` listeners: a semaphore caps open connections
//! (excess connections wait in the kernel backlog), every accepted connection is counted while
//! it lives and handed to the listener's [`Handler`] on its own task. On shutdown it stops
//! accepting (the socket is closed, so new connections are refused); open connections see the
//! shutdown token and finish.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::io::UpstreamSlots;
use super::{ListenerConfig, ListenerMetrics, ListenerStats};

/// What every connection of a listener shares, whatever its direction.
pub struct Shared {
    pub cfg: ListenerConfig,
    pub metrics: ListenerMetrics,
    pub stats: Arc<ListenerStats>,
    pub upstream: Arc<UpstreamSlots>,
}

/// What a listener does with one accepted connection.
pub trait Handler: Send + Sync + 'static {
    fn shared(&self) -> &Shared;
    fn handle(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// Connections the kernel holds for us while every `--max-connections` slot is taken (capped
/// by `net.core.somaxconn`). The standard library's 128 drops the SYNs of a burst beyond it, and
/// clients then retry after 1, 3, 7 s.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds the listening socket and logs the address actually bound.
pub async fn bind(cfg: &ListenerConfig) -> io::Result<(TcpListener, SocketAddr)> {
    let socket = match cfg.listen {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As the standard library does: a restarted sidecar can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(cfg.listen)?;
    let l = socket.listen(LISTEN_BACKLOG)?;
    let addr = l.local_addr()?;
    info!(listener = %cfg.name, address = %addr, target = %cfg.target, "listener bound");
    Ok((l, addr))
}

/// Accepts until `shutdown`, then drops the socket; connection tasks go to `tracker`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let name = handler.shared().cfg.name.clone();
    let limit = Arc::new(Semaphore::new(handler.shared().cfg.max_connections.max(1)));
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
                    warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let _open = Open::count(handler.clone());
            let _ = tcp.set_nodelay(true);
            handler.handle(tcp, peer, shutdown).await;
        });
    }
    info!(listener = %name, "stopped accepting connections");
}

/// Counts a connection as open for as long as it lives.
struct Open<H: Handler>(Arc<H>);

impl<H: Handler> Open<H> {
    fn count(handler: Arc<H>) -> Self {
        let s = handler.shared();
        s.metrics.total.inc();
        s.metrics.active.inc();
        s.stats.active.fetch_add(1, Ordering::Relaxed);
        Open(handler)
    }
}

impl<H: Handler> Drop for Open<H> {
    fn drop(&mut self) {
        let s = self.0.shared();
        s.metrics.active.dec();
        s.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}
