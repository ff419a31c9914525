//! What every listener has, whatever its direction: its statistics and metric handles, the
//! slot its connections read the current credentials from, and the accept loop. A semaphore
//! caps open connections (excess connections wait in the kernel backlog); every accepted
//! connection is counted while it lives and handed to the listener's [`Handler`] on its own
//! task, inside a `conn{listener, peer}` span. On shutdown it stops accepting (the socket is
//! closed, so new connections are refused); open connections see the shutdown token and finish.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use super::config::{ListenerConfig, Protocol};
use super::handshake::HandshakeFailure;
use super::io::UpstreamSlots;
use super::probe::UpstreamProbe;
use crate::creds::store::{Published, Store};
use crate::metrics::{ListenerCodeLabels, ListenerLabels, ListenerReasonLabels, Metrics};
use crate::tls::TlsBuildError;

// === Statistics and metrics ===

/// A listener as `/status` and `/readyz` see it.
#[derive(Debug)]
pub struct ListenerStats {
    pub name: String,
    pub address: SocketAddr,
    pub active: AtomicI64,
    /// Set once connections are served with the published credentials (the rustls config or
    /// the upstream pool is built): `/readyz` waits for it, not only for the publish.
    pub serving: AtomicBool,
    /// `ready-upstream`: `/readyz` also waits for the target to accept connections.
    pub probe: Option<UpstreamProbe>,
}

impl ListenerStats {
    pub fn active_connections(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }
}

/// Metric handles of one listener, created once so the connection path takes no registry lock.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub active: Gauge,
    pub total: Counter,
    pub denied: Counter,
    pub upstream_failures: Counter,
    pub upstream_active: Gauge,
    pub duration: Histogram,
    /// `handshake_failures_total{reason}`, one per reason of this listener's direction.
    handshakes: Arc<[Option<Counter>; HandshakeFailure::COUNT]>,
    /// `http_requests_total{code}` handles, looked up in the registry once per code.
    codes: Arc<[OnceLock<Counter>]>,
    name: String,
    registry: Arc<Metrics>,
}

impl ListenerMetrics {
    /// The handles of listener `name`, with `reasons` (its direction's handshake failures)
    /// registered at zero.
    pub fn new(metrics: Arc<Metrics>, name: &str, reasons: &[HandshakeFailure]) -> Self {
        let l = ListenerLabels {
            listener: name.to_string(),
        };
        let mut handshakes: [Option<Counter>; HandshakeFailure::COUNT] = Default::default();
        for reason in reasons {
            handshakes[reason.index()] = Some(metrics.handshake_failures.get_or_create_owned(
                &ListenerReasonLabels {
                    listener: name.to_string(),
                    reason: reason.as_str(),
                },
            ));
        }
        ListenerMetrics {
            active: metrics.connections_active.get_or_create_owned(&l),
            total: metrics.connections_total.get_or_create_owned(&l),
            denied: metrics.authz_denied.get_or_create_owned(&l),
            upstream_failures: metrics.upstream_failures.get_or_create_owned(&l),
            upstream_active: metrics.upstream_active.get_or_create_owned(&l),
            duration: metrics.http_duration.get_or_create_owned(&l),
            handshakes: Arc::new(handshakes),
            codes: (0..600).map(|_| OnceLock::new()).collect(),
            name: name.to_string(),
            registry: metrics,
        }
    }

    /// Counts a failed handshake; no lock, no allocation.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        match &self.handshakes[reason.index()] {
            Some(counter) => counter.inc(),
            // A reason of the other direction: a bug, but count it rather than lose it.
            None => self
                .registry
                .handshake_failures
                .get_or_create(&ListenerReasonLabels {
                    listener: self.name.clone(),
                    reason: reason.as_str(),
                })
                .inc(),
        };
    }

    /// Counts a response; after the first response with a code, no lock and no allocation.
    pub fn http_response(&self, code: u16) {
        let lookup = || {
            self.registry
                .http_requests
                .get_or_create_owned(&ListenerCodeLabels {
                    listener: self.name.clone(),
                    code,
                })
        };
        match self.codes.get(usize::from(code)) {
            Some(slot) => slot.get_or_init(lookup).inc(),
            None => lookup().inc(),
        };
    }
}

// === Shared ===

/// What every connection of a listener shares, whatever its direction.
pub struct Shared {
    pub cfg: ListenerConfig,
    pub metrics: ListenerMetrics,
    pub stats: Arc<ListenerStats>,
    pub upstream: Arc<UpstreamSlots>,
}

impl Shared {
    /// The statistics, metric handles (with `reasons` pre-registered) and upstream slots of a
    /// listener bound at `address`.
    pub fn new(
        cfg: ListenerConfig,
        registry: Arc<Metrics>,
        address: SocketAddr,
        reasons: &[HandshakeFailure],
    ) -> Self {
        let metrics = ListenerMetrics::new(registry, &cfg.name, reasons);
        let cap = (cfg.protocol == Protocol::Http).then_some(cfg.max_upstream_connections);
        let upstream = Arc::new(UpstreamSlots::new(
            cap,
            cfg.connect_timeout,
            metrics.upstream_active.clone(),
        ));
        Shared {
            stats: Arc::new(ListenerStats {
                name: cfg.name.clone(),
                address,
                active: AtomicI64::new(0),
                serving: AtomicBool::new(false),
                probe: cfg
                    .ready_upstream
                    .then(|| UpstreamProbe::new(cfg.target.clone(), cfg.connect_timeout)),
            }),
            metrics,
            upstream,
            cfg,
        }
    }
}

// === Credentials ===

/// What a listener's connections load, replaced on every publish: a rustls config (`server`) or
/// an upstream connector or pool (`client`). `None` until the first valid bundle.
pub type Slot<T> = ArcSwapOption<T>;

/// Rebuilds `slot` with `build` after every publish until `cancel`, and marks the listener as
/// serving once it holds a value; a build that fails keeps the previous value (validation
/// already proved the bundle usable, so this is not expected).
pub async fn follow_store<T>(
    store: Arc<Store>,
    slot: Arc<Slot<T>>,
    build: impl Fn(&Published) -> Result<Arc<T>, TlsBuildError>,
    stats: Arc<ListenerStats>,
    cancel: CancellationToken,
) {
    let mut generations = store.subscribe();
    loop {
        if let Some(p) = store.load() {
            match build(&p) {
                Ok(v) => {
                    slot.store(Some(v));
                    stats.serving.store(true, Ordering::Release);
                    info!(
                        set = store.set(),
                        generation = p.generation,
                        "tls config updated for new connections"
                    );
                }
                Err(e) => {
                    error!(set = store.set(), generation = p.generation, error = %e, "cannot build a tls config; keeping the previous one")
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = generations.changed() => if changed.is_err() { return },
        }
    }
}

// === Accept loop ===

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

/// Binds the listening socket for `addr` (the caller logs what it serves on it).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    crate::net::listen(addr, LISTEN_BACKLOG)
}

/// Accepts until `shutdown`; connection tasks go to `tracker` and close gracefully once `close`
/// is cancelled (at shutdown, or from the start of a drain: each connection then finishes its
/// request and closes, so kept-alive clients move to the pods still in the Service). Returns
/// the listening socket, still open: connections the kernel queued meanwhile wait for whoever
/// serves it next (a changed listener on the same address), or are refused when it is dropped.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: CancellationToken,
    close: CancellationToken,
    tracker: TaskTracker,
) -> TcpListener {
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
        let close = close.clone();
        let span = info_span!("conn", listener = %name, %peer);
        tracker.spawn(
            async move {
                let _permit = permit;
                let _open = Open::count(handler.clone());
                let _ = tcp.set_nodelay(true);
                handler.handle(tcp, peer, close).await;
            }
            .instrument(span),
        );
    }
    info!(listener = %name, "stopped accepting connections");
    listener
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
