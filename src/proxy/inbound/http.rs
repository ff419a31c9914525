//! `server --protocol http`: requests on the TLS connection (HTTP/1.1 keep-alive, or HTTP/2 when
//! ALPN chose `h2`; lifecycle in `http_conn`) are forwarded to the target by the listener's
//! [`Forwarder`], through pooled clients (HTTP/2 prior knowledge for gRPC, HTTP/1.1 otherwise;
//! from the start of a drain not pooled any more, see [`Forwarder::stop_pooling`]).
//! Client-sent identity headers are removed (`headers`) and ours added, their values built once
//! per connection ([`IdentityHeaders`]): the upstream can trust `X-Client-*`. Malformed requests
//! (Host headers, a body that fails) are the client's: 400. Upstream errors become 502, an
//! upstream slower than `--idle-timeout` 504; neither ever hangs the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{self, Authority, PathAndQuery};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::identity::PeerIdentity;
use crate::proxy::chain::{error_chain, find_in_chain};
use crate::proxy::config::Target;
use crate::proxy::headers::{check_host, strip_protected};
use crate::proxy::http_conn::{
    relay_response, serve_conn, short, strip_hop_by_hop, Body, RequestBody,
};
use crate::proxy::io::{
    connect, Activity, NotResolved, Slotted, TouchBody, Upstream, UpstreamBusy, UpstreamSlots,
};
use crate::proxy::listener::Shared;

/// Opens upstream connections for the pooled client.
#[derive(Clone)]
pub struct Connector {
    target: Target,
    timeout: Duration,
    slots: Arc<UpstreamSlots>,
    /// False for the HTTP/2 (gRPC) client: hyper-util keeps one shared connection per target
    /// for it and never connects twice at once, so it is counted but needs no slot. Were it
    /// capped, HTTP/1 connections idling in their pool could hold every slot and starve it.
    capped: bool,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Slotted<Upstream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (target, timeout, slots) = (self.target.clone(), self.timeout, self.slots.clone());
        let capped = self.capped;
        Box::pin(async move {
            let slot = if capped {
                slots.acquire().await.map_err(std::io::Error::other)?
            } else {
                slots.count()
            };
            let upstream = connect(&target, timeout).await?;
            Ok(TokioIo::new(Slotted::new(upstream, slot)))
        })
    }
}

/// How long an unused pooled connection to the app stays open.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The upstream clients of one `server` listener.
struct Clients {
    h1: Client<Connector, TouchBody<RequestBody>>,
    h2: Client<Connector, TouchBody<RequestBody>>,
}

impl Clients {
    /// `pooled`: connections stay open between requests (up to [`POOL_IDLE`] unused); else each
    /// one closes once its request is answered.
    fn new(connector: &Connector, pooled: bool) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        // Without a timer the idle timeout is only checked when a connection is reused.
        builder.pool_timer(TokioTimer::new());
        if pooled {
            builder.pool_idle_timeout(POOL_IDLE);
        } else {
            builder.pool_max_idle_per_host(0);
        }
        let h1 = builder.build(connector.clone());
        let h2 = builder.http2_only(true).build(Connector {
            capped: false,
            ..connector.clone()
        });
        Clients { h1, h2 }
    }
}

/// Forwards the requests of one `server` listener: its upstream clients (one load per request).
pub struct Forwarder {
    clients: ArcSwap<Clients>,
    connector: Connector,
    authority: Authority,
    shared: Arc<Shared>,
}

impl Forwarder {
    pub fn new(shared: Arc<Shared>) -> Self {
        let cfg = &shared.cfg;
        let connector = Connector {
            target: cfg.target.clone(),
            timeout: cfg.connect_timeout,
            slots: shared.upstream.clone(),
            capped: true,
        };
        // The upstream request's authority: the target's host:port (checked when the listener was
        // configured), "localhost" for a Unix socket.
        let authority = match &cfg.target {
            Target::Tcp(a) => Authority::try_from(a.as_str()).ok(),
            Target::Unix(_) => None,
        }
        .unwrap_or_else(|| Authority::from_static("localhost"));
        Forwarder {
            clients: ArcSwap::from_pointee(Clients::new(&connector, true)),
            connector,
            authority,
            shared,
        }
    }

    /// From the start of a drain (or the listener's close): no connection to the app is kept
    /// open for later requests. The pooled ones close, the idle ones now and the busy ones once
    /// their response is relayed, and later requests each get a connection that closes after
    /// them. The app is stopped next, and an app that quits gracefully waits for the
    /// connections it has: nginx's SIGQUIT waits for every connection that is not between two
    /// requests, also one the pool opened and never used (it gives such a connection its
    /// `client_header_timeout`, 60 s, longer than the usual grace period).
    pub fn stop_pooling(&self) {
        self.clients
            .store(Arc::new(Clients::new(&self.connector, false)));
        info!(
            target = %self.shared.cfg.target,
            "connections to the app close after their request from now on"
        );
    }

    /// Serves one TLS connection (see `http_conn` for its lifecycle).
    pub async fn serve<S>(
        self: &Arc<Self>,
        tls: S,
        identity: PeerIdentity,
        allowed: bool,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let conn = Arc::new(Caller::new(identity, peer));
        let fwd = self.clone();
        let handle = move |req| {
            let (fwd, conn) = (fwd.clone(), conn.clone());
            async move { fwd.respond(req, &conn, allowed).await }
        };
        serve_conn(tls, &self.shared.cfg, peer, shutdown, handle).await;
    }

    async fn respond(
        &self,
        req: Request<RequestBody>,
        caller: &Caller,
        allowed: bool,
    ) -> Response<Body> {
        let id = &caller.identity;
        let start = Instant::now();
        let resp = if allowed {
            self.forward(req, caller).await
        } else {
            let mut r = short(
                StatusCode::FORBIDDEN,
                &format!(
                    "forbidden: client {} is not allowed by this listener's allow-list",
                    id.subject
                ),
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        };
        let m = &self.shared.metrics;
        m.duration.observe(start.elapsed().as_secs_f64());
        m.http_response(resp.status().as_u16());
        resp
    }

    async fn forward(&self, mut req: Request<RequestBody>, caller: &Caller) -> Response<Body> {
        let cfg = &self.shared.cfg;
        if req.method() == Method::CONNECT {
            return short(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported: this is a reverse proxy",
            );
        }
        if let Err(e) = check_host(&req) {
            return short(StatusCode::BAD_REQUEST, &format!("bad request: {e}"));
        }
        let inbound_authority = req.uri().authority().map(|a| a.to_string());
        let path = req.uri().path_and_query().cloned();
        let grpc = req.version() == Version::HTTP_2
            && req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/grpc"));
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        // Before ours are added: a client cannot send any of them, in any spelling.
        strip_protected(headers);
        // The target's authority (HTTP/2 `:authority`, an HTTP/1 absolute-form target) is the host
        // the client means; the app reads it from Host (RFC 9112 3.2.2: it replaces Host).
        if let Some(Ok(host)) = inbound_authority.map(|a| HeaderValue::from_str(&a)) {
            headers.insert(header::HOST, host);
        }
        caller.headers.add_to(headers);
        let mut uri = uri::Parts::default();
        uri.scheme = Some(uri::Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = Some(path.unwrap_or_else(|| PathAndQuery::from_static("/")));
        match Uri::from_parts(uri) {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => return short(StatusCode::BAD_REQUEST, "request path cannot be forwarded"),
        }
        *req.version_mut() = if grpc {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        // Timed per request: not a fixed deadline (an upload that keeps moving is never cut), and
        // not the connection's traffic (other HTTP/2 streams must not keep a stuck one waiting).
        let waiting = Activity::new();
        let request = {
            let clients = self.clients.load();
            let client = if grpc { &clients.h2 } else { &clients.h1 };
            client.request(req.map(|b| TouchBody::new(b, waiting.clone())))
        };
        let outcome = tokio::select! {
            r = request => Ok(r),
            _ = waiting.idle(cfg.idle_timeout) => Err(()),
        };
        match outcome {
            Ok(Ok(resp)) => relay_response(resp),
            Ok(Err(e)) if waiting.body_failed() => {
                info!(error = %error_chain(&e), "the client's request body failed; answering 400");
                short(
                    StatusCode::BAD_REQUEST,
                    "bad request: the request body is malformed or was cut short",
                )
            }
            Ok(Err(e)) => {
                if let Some(busy) = find_in_chain::<UpstreamBusy>(&e) {
                    warn!(target = %cfg.target, error = %busy, "upstream connection limit reached; answering 503");
                    return short(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "service unavailable: too many requests in progress; try again",
                    );
                }
                self.shared.metrics.upstream_failures.inc();
                warn!(target = %cfg.target, error = %error_chain(&e), "upstream request failed");
                // The client is told what kind of failure, not the target's name (the log has it).
                let body = if find_in_chain::<NotResolved>(&e).is_some() {
                    "bad gateway: the upstream app's host name did not resolve"
                } else {
                    "bad gateway: the upstream app did not answer"
                };
                short(StatusCode::BAD_GATEWAY, body)
            }
            Err(_) => {
                self.shared.metrics.upstream_failures.inc();
                warn!(target = %cfg.target, timeout = ?cfg.idle_timeout, "upstream request timed out");
                short(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway timeout: the upstream app did not answer in time",
                )
            }
        }
    }
}

/// One verified caller (a TLS connection): its identity, and the identity headers of its
/// requests, built once when it connected.
struct Caller {
    identity: PeerIdentity,
    headers: IdentityHeaders,
}

impl Caller {
    fn new(identity: PeerIdentity, peer: SocketAddr) -> Self {
        let headers = IdentityHeaders::new(&identity, peer);
        Caller { identity, headers }
    }
}

const X_CLIENT_CERT: HeaderName = HeaderName::from_static("x-client-cert");
const X_CLIENT_DN: HeaderName = HeaderName::from_static("x-client-dn");
const X_CLIENT_VERIFY: HeaderName = HeaderName::from_static("x-client-verify");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The values of the identity and forwarding headers of one connection's requests (a value that
/// is not a valid header value is left out, as the client's own was removed). Each request
/// copies them by reference count.
struct IdentityHeaders {
    cert: Option<HeaderValue>,
    dn: Option<HeaderValue>,
    xfcc: Option<HeaderValue>,
    forwarded_for: Option<HeaderValue>,
}

impl IdentityHeaders {
    fn new(id: &PeerIdentity, peer: SocketAddr) -> Self {
        let value = |v: &str| HeaderValue::from_str(v).ok();
        IdentityHeaders {
            cert: value(&id.escaped_pem),
            dn: value(&id.subject),
            xfcc: value(&id.xfcc()),
            forwarded_for: value(&peer.ip().to_string()),
        }
    }

    /// Sets ours on a request whose client-sent ones were removed.
    fn add_to(&self, headers: &mut HeaderMap) {
        let set = |headers: &mut HeaderMap, name: HeaderName, v: &Option<HeaderValue>| {
            if let Some(v) = v {
                headers.insert(name, v.clone());
            }
        };
        set(headers, X_CLIENT_CERT, &self.cert);
        set(headers, X_CLIENT_DN, &self.dn);
        headers.insert(X_CLIENT_VERIFY, HeaderValue::from_static("SUCCESS"));
        set(headers, X_FORWARDED_CLIENT_CERT, &self.xfcc);
        set(headers, X_FORWARDED_FOR, &self.forwarded_for);
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    }
}
