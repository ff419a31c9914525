//! The TLS proxy: listeners that terminate mTLS (`server`: TLS in, plaintext to `--target`) or
//! originate it (`client`: plaintext in on loopback, mTLS to `--target`). Credentials come from
//! the store: one rustls config per publish, read with one `ArcSwap` load per accepted
//! connection (or per request in `client --protocol http`).
//!
//! - [`listener`]: the accept loop both share: connection limit, counting, drain.
//! - [`inbound`], [`outbound`]: what a `server` or `client` connection does; [`refusal`]: how a
//!   `client` notices that the server refused its certificate.
//! - [`tcp`], [`http_conn`]: byte copy, or an HTTP connection's lifecycle (with
//!   [`header_block`], the HTTP/2 header-read deadline); [`http`] and [`outbound_http`] forward
//!   requests in each direction; [`headers`]: which client headers are dropped, `Host` rules.
//! - [`authz`], [`identity`]: allow-lists and the verified peer's identity.
//! - [`io`]: plaintext upstream connections, the per-listener cap on them, and idle tracking;
//!   [`chain`]: reading an error's cause chain.

pub mod authz;
pub mod chain;
pub mod header_block;
pub mod headers;
pub mod http;
pub mod http_conn;
pub mod identity;
pub mod inbound;
pub mod io;
pub mod listener;
pub mod outbound;
pub mod outbound_http;
pub mod refusal;
pub mod tcp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::creds::store::{Published, Store};
use crate::metrics::{ListenerLabels, ListenerReasonLabels, Metrics};
use crate::tls::MinTls;

/// Where plaintext goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `host:port`
    Tcp(String),
    /// `unix:/path`
    Unix(PathBuf),
}

impl Target {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/app.sock".into());
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() =>
            {
                Ok(Target::Tcp(s.to_string()))
            }
            _ => Err(format!("expected host:port or unix:/path, got {s:?}")),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => f.write_str(a),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `--protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
}

/// Everything a listener needs to know, checked.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub target: Target,
    pub protocol: Protocol,
    pub min_tls: MinTls,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// http mode: open upstream connections at most (tcp mode: one per connection).
    pub max_upstream_connections: usize,
    pub max_connection_age: Option<Duration>,
}

/// A listener as `/status` and `/readyz` see it.
#[derive(Debug)]
pub struct ListenerStats {
    pub name: String,
    pub address: SocketAddr,
    pub active: AtomicI64,
    /// Set once connections are served with the published credentials (the rustls config or
    /// origin is built): `/readyz` waits for it, not only for the publish.
    pub serving: AtomicBool,
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
    /// `http_requests_total{code}` handles, looked up in the registry once per code.
    codes: Arc<[OnceLock<Counter>]>,
    name: String,
    registry: Arc<Metrics>,
}

impl ListenerMetrics {
    pub fn new(metrics: Arc<Metrics>, name: &str) -> Self {
        let l = ListenerLabels {
            listener: name.to_string(),
        };
        ListenerMetrics {
            active: metrics.connections_active.get_or_create_owned(&l),
            total: metrics.connections_total.get_or_create_owned(&l),
            denied: metrics.authz_denied.get_or_create_owned(&l),
            upstream_failures: metrics.upstream_failures.get_or_create_owned(&l),
            upstream_active: metrics.upstream_active.get_or_create_owned(&l),
            duration: metrics.http_duration.get_or_create_owned(&l),
            codes: (0..600).map(|_| OnceLock::new()).collect(),
            name: name.to_string(),
            registry: metrics,
        }
    }

    /// Failed handshakes are off the success path; a registry lookup is fine here.
    pub fn handshake_failed(&self, reason: &'static str) {
        self.registry
            .handshake_failures
            .get_or_create(&ListenerReasonLabels {
                listener: self.name.clone(),
                reason,
            })
            .inc();
    }

    /// Counts a response; after the first response with a code, no lock and no allocation.
    pub fn http_response(&self, code: u16) {
        let lookup = || {
            self.registry
                .http_requests
                .get_or_create_owned(&crate::metrics::ListenerCodeLabels {
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

/// What a listener's connections load, replaced on every publish: a rustls config (`server`) or
/// an upstream origin (`client`). `None` until the first valid bundle.
pub type Slot<T> = ArcSwapOption<T>;

/// Rebuilds `slot` with `build` after every publish until `cancel`, and marks `stats` as
/// serving once it holds a value; a build that fails keeps the previous value (validation
/// already proved the bundle usable, so this is not expected).
pub async fn follow_store<T>(
    store: Arc<Store>,
    slot: Arc<Slot<T>>,
    build: impl Fn(&Published) -> Result<Arc<T>, String>,
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
