//! `server --protocol http`: requests on the TLS connection (HTTP/1.1 keep-alive, or HTTP/2 when
//! ALPN chose `h2`; lifecycle in `http_conn`) are forwarded to the target through a pooled client (HTTP/2 prior knowledge for
//! gRPC, HTTP/1.1 otherwise). Client-sent identity headers are removed (`headers`) and ours
//! added: the upstream can trust `X-Client-*`. Malformed requests (Host headers, a body that
//! fails) are the client's: 400. Upstream errors become 502, an upstream slower than
//! `--idle-timeout` 504; neither ever hangs the client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::chain::{error_chain, find_in_chain};
use super::headers::{check_host, strip_protected};
use super::http_conn::{relay_response, serve_conn, short, strip_hop_by_hop, Body};
use super::identity::PeerIdentity;
use super::inbound::Inbound;
use super::io::{connect, Activity, Slotted, TouchBody, Upstream, UpstreamBusy, UpstreamSlots};
use super::Target;

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

/// The pooled upstream clients of one listener.
pub struct Proxy {
    h1: Client<Connector, TouchBody<Incoming>>,
    h2: Client<Connector, TouchBody<Incoming>>,
    authority: String,
}

impl Proxy {
    pub fn new(target: &Target, connect_timeout: Duration, slots: Arc<UpstreamSlots>) -> Self {
        let connector = Connector {
            target: target.clone(),
            timeout: connect_timeout,
            slots,
            capped: true,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(90))
            // Without a timer the idle timeout is only checked when a connection is reused.
            .pool_timer(TokioTimer::new());
        let h1 = builder.build(connector.clone());
        let h2 = builder.http2_only(true).build(Connector {
            capped: false,
            ..connector
        });
        let authority = match target {
            Target::Tcp(a) => a.clone(),
            Target::Unix(_) => "localhost".into(),
        };
        Proxy { h1, h2, authority }
    }
}

/// Serves one TLS connection of a `server` listener (see `http_conn` for its lifecycle).
pub async fn serve<S>(
    tls: S,
    identity: PeerIdentity,
    allowed: bool,
    peer: SocketAddr,
    ctx: &Arc<Inbound>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let identity = Arc::new(identity);
    let svc_ctx = ctx.clone();
    let handle = move |req| {
        let (ctx, identity) = (svc_ctx.clone(), identity.clone());
        async move { respond(req, &ctx, &identity, allowed, peer).await }
    };
    serve_conn(tls, &ctx.shared.cfg, peer, shutdown, handle).await;
}

async fn respond(
    req: Request<Incoming>,
    ctx: &Inbound,
    id: &PeerIdentity,
    allowed: bool,
    peer: SocketAddr,
) -> Response<Body> {
    let start = Instant::now();
    let resp = if allowed {
        forward(req, ctx, id, peer).await
    } else {
        let mut r = short(
            StatusCode::FORBIDDEN,
            &format!(
                "forbidden: client {} is not allowed by this listener's --allow-* rules",
                id.subject
            ),
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    };
    ctx.shared
        .metrics
        .duration
        .observe(start.elapsed().as_secs_f64());
    ctx.shared.metrics.http_response(resp.status().as_u16());
    resp
}

async fn forward(
    mut req: Request<Incoming>,
    ctx: &Inbound,
    id: &PeerIdentity,
    peer: SocketAddr,
) -> Response<Body> {
    // An http listener always has a Proxy.
    let Some(proxy) = ctx.http.as_ref() else {
        return short(StatusCode::INTERNAL_SERVER_ERROR, "no upstream client");
    };
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
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
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
    set(headers, "x-client-cert", &id.escaped_pem);
    set(headers, "x-client-dn", &id.subject);
    headers.insert("x-client-verify", HeaderValue::from_static("SUCCESS"));
    set(headers, "x-forwarded-client-cert", &id.xfcc());
    set(headers, "x-forwarded-for", &peer.ip().to_string());
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    let uri = format!("http://{}{}", proxy.authority, path);
    match uri.parse() {
        Ok(u) => *req.uri_mut() = u,
        Err(_) => return short(StatusCode::BAD_REQUEST, "request path cannot be forwarded"),
    }
    let client = if grpc { &proxy.h2 } else { &proxy.h1 };
    *req.version_mut() = if grpc {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    // Timed per request: not a fixed deadline (an upload that keeps moving is never cut), and
    // not the connection's traffic (other HTTP/2 streams must not keep a stuck one waiting).
    let waiting = Activity::new();
    let request = client.request(req.map(|b| TouchBody::new(b, waiting.clone())));
    let outcome = tokio::select! {
        r = request => Ok(r),
        _ = waiting.idle(ctx.shared.cfg.idle_timeout) => Err(()),
    };
    match outcome {
        Ok(Ok(resp)) => relay_response(resp),
        Ok(Err(e)) if waiting.body_failed() => {
            info!(listener = %ctx.shared.cfg.name, %peer, error = %error_chain(&e), "the client's request body failed; answering 400");
            short(
                StatusCode::BAD_REQUEST,
                "bad request: the request body is malformed or was cut short",
            )
        }
        Ok(Err(e)) => {
            if let Some(busy) = find_in_chain::<UpstreamBusy>(&e) {
                warn!(listener = %ctx.shared.cfg.name, target = %ctx.shared.cfg.target, error = %busy, "upstream connection limit reached; answering 503");
                return short(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service unavailable: too many requests in progress; try again",
                );
            }
            ctx.shared.metrics.upstream_failures.inc();
            warn!(listener = %ctx.shared.cfg.name, target = %ctx.shared.cfg.target, error = %error_chain(&e), "upstream request failed");
            short(
                StatusCode::BAD_GATEWAY,
                "bad gateway: the upstream app did not answer",
            )
        }
        Err(_) => {
            ctx.shared.metrics.upstream_failures.inc();
            warn!(listener = %ctx.shared.cfg.name, target = %ctx.shared.cfg.target, timeout = ?ctx.shared.cfg.idle_timeout, "upstream request timed out");
            short(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway timeout: the upstream app did not answer in time",
            )
        }
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}
