//! `server --protocol http`: requests on the TLS connection (HTTP/1.1 keep-alive, or HTTP/2 when
//! ALPN chose `h2`; lifecycle in `http_conn`) are forwarded to the target by the listener's
//! [`Forwarder`], through pooled clients (HTTP/2 prior knowledge for gRPC, HTTP/1.1 otherwise). Client-sent identity headers are removed (`headers`) and ours
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

use super::identity::PeerIdentity;
use crate::proxy::chain::{error_chain, find_in_chain};
use crate::proxy::config::Target;
use crate::proxy::headers::{check_host, strip_protected};
use crate::proxy::http_conn::{relay_response, serve_conn, short, strip_hop_by_hop, Body};
use crate::proxy::io::{
    connect, Activity, Slotted, TouchBody, Upstream, UpstreamBusy, UpstreamSlots,
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

/// Forwards the requests of one `server` listener: its pooled upstream clients.
pub struct Forwarder {
    h1: Client<Connector, TouchBody<Incoming>>,
    h2: Client<Connector, TouchBody<Incoming>>,
    authority: String,
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
        let authority = match &cfg.target {
            Target::Tcp(a) => a.clone(),
            Target::Unix(_) => "localhost".into(),
        };
        Forwarder {
            h1,
            h2,
            authority,
            shared,
        }
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
        let identity = Arc::new(identity);
        let fwd = self.clone();
        let handle = move |req| {
            let (fwd, identity) = (fwd.clone(), identity.clone());
            async move { fwd.respond(req, &identity, allowed, peer).await }
        };
        serve_conn(tls, &self.shared.cfg, peer, shutdown, handle).await;
    }

    async fn respond(
        &self,
        req: Request<Incoming>,
        id: &PeerIdentity,
        allowed: bool,
        peer: SocketAddr,
    ) -> Response<Body> {
        let start = Instant::now();
        let resp = if allowed {
            self.forward(req, id, peer).await
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

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        id: &PeerIdentity,
        peer: SocketAddr,
    ) -> Response<Body> {
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
        let uri = format!("http://{}{}", self.authority, path);
        match uri.parse() {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => return short(StatusCode::BAD_REQUEST, "request path cannot be forwarded"),
        }
        let client = if grpc { &self.h2 } else { &self.h1 };
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
                short(
                    StatusCode::BAD_GATEWAY,
                    "bad gateway: the upstream app did not answer",
                )
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

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}
