//! The admin endpoint (the contract: "Admin endpoint"), plain HTTP/1.1: `/healthz`, `/readyz`, `/status`
//! (JSON), `/metrics` (Prometheus text) and `/drain` (readiness off for a pod's rollout: see
//! [`drain`]). It reads the stores and the metrics registry; it never changes them.
//! Unauthenticated clients can reach it, so a flood of connections must not keep probes out
//! (see [`MAX_ADMIN_CONNECTIONS`]), and a `/drain` that waits holds its own connection only.

pub mod drain;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::creds::store::Store;
use crate::creds::validate::rfc3339;
use crate::metrics::Metrics;
use crate::proxy::ListenerStats;
use drain::Drain;

/// Where the admin endpoint listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    Off,
    On(SocketAddr),
}

/// What the endpoint reports on. The sets and listeners change when a new configuration is
/// applied; the lock is taken on the admin path only.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Set when shutdown starts: not ready while open connections finish.
    pub shutting_down: AtomicBool,
    /// `/drain`: not ready once it was called.
    pub drain: Drain,
    parts: RwLock<Parts>,
    config: Mutex<Option<ConfigStatus>>,
}

#[derive(Default, Clone)]
struct Parts {
    stores: Vec<Arc<Store>>,
    listeners: Vec<Arc<ListenerStats>>,
}

/// The configuration file of `run --config`, as `/status` shows it.
#[derive(Clone, Debug)]
pub struct ConfigStatus {
    pub path: std::path::PathBuf,
    /// 1 for the configuration started with, +1 per applied change.
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// Why the most recent change was refused (every mistake, one per line), and when.
    pub last_error: Option<(String, SystemTime)>,
}

impl AdminState {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(AdminState {
            metrics,
            shutting_down: AtomicBool::new(false),
            drain: Drain::default(),
            parts: RwLock::new(Parts::default()),
            config: Mutex::new(None),
        })
    }

    /// What is reported from now on.
    pub fn set_parts(&self, stores: Vec<Arc<Store>>, listeners: Vec<Arc<ListenerStats>>) {
        *self.parts.write().unwrap_or_else(|e| e.into_inner()) = Parts { stores, listeners };
    }

    fn parts(&self) -> Parts {
        self.parts.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_config(&self, status: ConfigStatus) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    pub fn config(&self) -> Option<ConfigStatus> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Probe connections the kernel holds while the accept loop catches up with a flood (the
/// standard library's 128 would drop a probe's SYN, and its retry comes after the probe's 1 s).
const ADMIN_BACKLOG: u32 = 1024;

/// Binds `addr`; the caller reports a bind failure as a usage/runtime error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = crate::net::listen(addr, ADMIN_BACKLOG)?;
    info!(address = %listener.local_addr()?, "admin endpoint listening");
    Ok(listener)
}

/// Open admin connections at most. When all are taken, a new connection closes the oldest one
/// that never sent a request (or, if all did, the oldest that is not waiting for `/drain`, or
/// the oldest): a client that opens connections and sends nothing (or floods the port) cannot
/// keep kubelet's probes out, since a probe sends its request at once and is answered in well
/// under a millisecond; and the preStop hook's `/drain` is closed last.
pub const MAX_ADMIN_CONNECTIONS: usize = 128;
/// A client that sends no complete request headers within this time is dropped (idle
/// keep-alive connections too: probes and scrapers send at once).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// No admin connection lives longer than this (plus `drain-delay`, which a `/drain` waits).
const ADMIN_MAX_AGE: Duration = Duration::from_secs(60);

/// What an admin connection did so far (see [`MAX_ADMIN_CONNECTIONS`]).
const SILENT: u8 = 0;
const SPOKE: u8 = 1;
const DRAINING: u8 = 2;

/// One open admin connection: the token that closes it, and what it did so far.
struct Slot {
    id: u64,
    close: CancellationToken,
    state: Arc<AtomicU8>,
}

/// Open admin connections, oldest first.
#[derive(Default)]
struct Slots {
    next: u64,
    open: VecDeque<Slot>,
}

impl Slots {
    /// Registers a new connection, closing another if every slot is taken (see
    /// [`MAX_ADMIN_CONNECTIONS`]).
    fn admit(&mut self) -> (u64, CancellationToken, Arc<AtomicU8>) {
        if self.open.len() >= MAX_ADMIN_CONNECTIONS {
            let oldest = |state: u8| {
                self.open
                    .iter()
                    .position(|s| s.state.load(Ordering::Relaxed) == state)
            };
            let evict = oldest(SILENT).or_else(|| oldest(SPOKE)).unwrap_or(0);
            if let Some(evicted) = self.open.remove(evict) {
                evicted.close.cancel();
            }
        }
        self.next += 1;
        let slot = Slot {
            id: self.next,
            close: CancellationToken::new(),
            state: Arc::new(AtomicU8::new(SILENT)),
        };
        let handles = (slot.id, slot.close.clone(), slot.state.clone());
        self.open.push_back(slot);
        handles
    }

    fn release(&mut self, id: u64) {
        if let Some(i) = self.open.iter().position(|s| s.id == id) {
            self.open.remove(i);
        }
    }
}

/// Serves until `cancel`.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, cancel: CancellationToken) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // The admin path only; never taken on a proxied connection.
        let (id, evicted, said) = lock(&slots).admit();
        let (state, slots) = (state.clone(), slots.clone());
        let max_age = ADMIN_MAX_AGE + state.drain.delay();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (state, said) = (state.clone(), said.clone());
                async move {
                    // Held until drain-delay is over: closed last when the slots run out.
                    let waits = req.uri().path() == "/drain";
                    said.store(if waits { DRAINING } else { SPOKE }, Ordering::Relaxed);
                    let response = route(&state, &req).await;
                    said.store(SPOKE, Ordering::Relaxed);
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = tokio::time::timeout(max_age, conn) => match r {
                    Ok(Err(e)) => debug!(%peer, error = %e, "admin connection ended with an error"),
                    Err(_) => debug!(%peer, "admin connection closed after {max_age:?}"),
                    Ok(Ok(())) => {}
                },
                _ = evicted.cancelled() => debug!(%peer, "admin connection closed to make room for a newer one"),
            }
            lock(&slots).release(id);
        });
        // Let the new connection's task read its request before the next accept: under a flood
        // a probe is then marked as speaking before newer connections could push it out.
        tokio::task::yield_now().await;
    }
}

fn lock(slots: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    // Slots stays consistent even if a holder panicked (each step is one push or pop).
    slots.lock().unwrap_or_else(|e| e.into_inner())
}

async fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path == "/drain" {
        // GET for an httpGet preStop hook, which can do nothing else; POST for everyone else.
        if req.method() != Method::GET && req.method() != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "/drain takes GET or POST\n".into(),
            );
        }
        let off_for = state.drain.wait().await;
        return text(
            StatusCode::OK,
            format!(
                "drained: /readyz has answered 503 for {:.1}s\n",
                off_for.as_secs_f64()
            ),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is supported\n".into(),
        );
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match not_ready(state).await {
            None => text(StatusCode::OK, "ready\n".into()),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        "/status" => {
            let mut r = text(StatusCode::OK, format!("{:#}\n", status(state)));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        "/metrics" => {
            let mut r = text(StatusCode::OK, state.metrics.encode());
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /status, /metrics (or /drain)\n".into(),
        ),
    }
}

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `None` when every set serves valid, unexpired credentials, every listener serves them, and
/// every listener with `ready-upstream` reaches its target; otherwise why not.
pub async fn not_ready(state: &AdminState) -> Option<String> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Some("shutting down: draining open connections".into());
    }
    if state.drain.is_draining() {
        return Some("draining".into());
    }
    let now = OffsetDateTime::now_utc();
    let parts = state.parts();
    let reasons: Vec<String> = parts
        .stores
        .iter()
        .filter_map(|s| match s.load() {
            None => Some(match s.last_error() {
                Some(e) => format!(
                    "set {}: no valid credentials yet ({}: {})",
                    s.set(),
                    e.reason,
                    e.message
                ),
                None => format!("set {}: no valid credentials yet", s.set()),
            }),
            Some(p) if p.bundle.leaf().not_after < now => Some(format!(
                "set {}: the served certificate expired at {}",
                s.set(),
                rfc3339(p.bundle.leaf().not_after)
            )),
            Some(_) => None,
        })
        .collect();
    if !reasons.is_empty() {
        return Some(reasons.join("; "));
    }
    // Credentials are published; the listeners serve them a moment later. The targets are
    // probed side by side, so one that does not answer costs its timeout once, not per listener.
    let mut waiting = Vec::new();
    let mut probes = Vec::new();
    for l in parts.listeners {
        if !l.is_serving() {
            waiting.push(format!(
                "listener {}: not serving the credentials yet",
                l.name
            ));
        } else if l.probe.is_some() {
            probes.push(tokio::spawn(async move {
                let probe = l.probe.as_ref()?;
                let e = probe.check().await.err()?;
                Some(format!(
                    "listener {}: target {} not reachable: {e}",
                    l.name,
                    probe.target()
                ))
            }));
        }
    }
    for probe in probes {
        match probe.await {
            Ok(why) => waiting.extend(why),
            Err(e) => waiting.push(format!("probing a target failed: {e}")),
        }
    }
    (!waiting.is_empty()).then(|| waiting.join("; "))
}

/// The `/status` document (the README's shape; more fields may be added).
pub fn status(state: &AdminState) -> Value {
    let parts = state.parts();
    let sets: Vec<Value> = parts.stores.iter().map(|s| set_status(s)).collect();
    let listeners: Vec<Value> = parts
        .listeners
        .iter()
        .map(|l| json!({ "name": l.name, "address": l.address.to_string(), "active_connections": l.active_connections() }))
        .collect();
    let mut doc = json!({ "sets": sets, "listeners": listeners });
    if let Some(c) = state.config() {
        doc["config"] = json!({
            "path": c.path.display().to_string(),
            "generation": c.generation,
            "loaded_at": time_str(c.loaded_at),
            "last_error": c.last_error.map(|(message, at)| json!({ "message": message, "at": time_str(at) })),
        });
    }
    doc
}

fn set_status(s: &Store) -> Value {
    let last_error = s.last_error().map(
        |e| json!({ "reason": e.reason.as_str(), "message": e.message, "at": time_str(e.at) }),
    );
    match s.load() {
        None => json!({
            "name": s.set(), "generation": 0, "sha256": null, "serial": null, "subject": null,
            "sans": [], "not_before": null, "not_after": null, "loaded_at": null,
            "last_error": last_error,
        }),
        Some(p) => {
            let leaf = p.bundle.leaf();
            json!({
                "name": s.set(),
                "generation": p.generation,
                "sha256": leaf.sha256,
                "serial": leaf.serial,
                "subject": leaf.subject,
                "sans": leaf.sans,
                "not_before": rfc3339(leaf.not_before),
                "not_after": rfc3339(leaf.not_after),
                "loaded_at": time_str(p.loaded_at),
                "ca_not_after": p.bundle.ca_not_after().map(rfc3339),
                "last_error": last_error,
            })
        }
    }
}

fn time_str(t: SystemTime) -> String {
    rfc3339(OffsetDateTime::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots full, every connection in `state`; returns them (oldest first).
    fn full(state: u8) -> (Slots, Vec<(CancellationToken, Arc<AtomicU8>)>) {
        let mut slots = Slots::default();
        let open = (0..MAX_ADMIN_CONNECTIONS)
            .map(|_| {
                let (_, close, said) = slots.admit();
                said.store(state, Ordering::Relaxed);
                (close, said)
            })
            .collect();
        (slots, open)
    }

    #[test]
    fn a_held_drain_is_closed_last() {
        let (mut slots, open) = full(SPOKE);
        open[0].1.store(DRAINING, Ordering::Relaxed);
        open[5].1.store(SILENT, Ordering::Relaxed);
        // The silent one goes first, then the oldest that spoke; the drain stays.
        slots.admit().2.store(SPOKE, Ordering::Relaxed);
        assert!(open[5].0.is_cancelled());
        slots.admit();
        assert!(open[1].0.is_cancelled());
        assert!(!open[0].0.is_cancelled(), "the held /drain was closed");
        // Only when every connection waits for /drain does the oldest go.
        let (mut slots, open) = full(DRAINING);
        slots.admit();
        assert!(open[0].0.is_cancelled());
    }
}
