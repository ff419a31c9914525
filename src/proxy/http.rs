//! `--protocol http`: a hyper server on the TLS connection (HTTP/1.1 keep-alive, or HTTP/2 when
//! ALPN chose `h2`) forwarding to the target through a pooled client (HTTP/2 prior knowledge for
//! gRPC, HTTP/1.1 otherwise). Client-sent identity headers are removed and ours added: the
//! upstream can trust `X-Client-*`. Upstream errors become 502, an upstream slower than
//! `--idle-timeout` 504; neither ever hangs the client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::identity::PeerIdentity;
use super::io::{connect, Activity, Tracked, Upstream};
use super::listener::ConnCtx;
use super::Target;

type Body = BoxBody<Bytes, hyper::Error>;

/// The longest a client may take to send a request's headers.
const MAX_HEADER_READ: Duration = Duration::from_secs(30);
/// Extra time a closing connection gets to finish a response that is still moving.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Identity and forwarding headers we set or vouch for; any copy a client sends is dropped first.
const IDENTITY_HEADERS: [&str; 7] = [
    "forwarded",
    "x-client-cert",
    "x-client-dn",
    "x-client-verify",
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-forwarded-proto",
];

/// Connection-level headers that must not be forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Opens upstream connections for the pooled client.
#[derive(Clone)]
pub struct Connector {
    target: Target,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Upstream>;
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
        let (target, timeout) = (self.target.clone(), self.timeout);
        Box::pin(async move { connect(&target, timeout).await.map(TokioIo::new) })
    }
}

/// The pooled upstream clients of one listener.
pub struct Proxy {
    h1: Client<Connector, Incoming>,
    h2: Client<Connector, Incoming>,
    authority: String,
}

impl Proxy {
    pub fn new(target: &Target, connect_timeout: Duration) -> Self {
        let connector = Connector {
            target: target.clone(),
            timeout: connect_timeout,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(90));
        let h1 = builder.build(connector.clone());
        let h2 = builder.http2_only(true).build(connector);
        let authority = match target {
            Target::Tcp(a) => a.clone(),
            Target::Unix(_) => "localhost".into(),
        };
        Proxy { h1, h2, authority }
    }
}

/// Serves one TLS connection until it ends, the client idles past `--idle-timeout`, it reaches
/// `--max-connection-age`, or shutdown starts (the last two close gracefully: HTTP/1 after the
/// in-flight response with `Connection: close`, HTTP/2 with GOAWAY).
pub async fn serve<S>(
    tls: S,
    identity: PeerIdentity,
    allowed: bool,
    peer: SocketAddr,
    ctx: &Arc<ConnCtx>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(Tracked::new(tls, activity.clone()));
    let identity = Arc::new(identity);
    let svc_ctx = ctx.clone();
    let svc_activity = activity.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (ctx, identity) = (svc_ctx.clone(), identity.clone());
        let activity = svc_activity.clone();
        async move { Ok::<_, Infallible>(respond(req, &ctx, &identity, allowed, peer, &activity).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that starts a request and stalls is dropped like an idle one.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.cfg.idle_timeout.min(MAX_HEADER_READ));
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let age = async {
        match ctx.cfg.max_connection_age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(age);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(listener = %ctx.cfg.name, %peer, error = %e, "http connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => closing = true,
            _ = &mut age, if !closing => closing = true,
            _ = activity.idle(ctx.cfg.idle_timeout), if !closing => closing = true,
            // Graceful close waits for in-flight responses; one that stalls (half-sent request
            // headers, an upstream that stops mid-body) is dropped once nothing moved for the
            // idle timeout plus a short grace.
            _ = activity.idle(ctx.cfg.idle_timeout + CLOSE_GRACE), if closing => {
                debug!(listener = %ctx.cfg.name, %peer, "closing a stalled connection");
                return;
            }
        }
        if closing {
            conn.as_mut().graceful_shutdown();
        }
    }
}

async fn respond(
    req: Request<Incoming>,
    ctx: &ConnCtx,
    id: &PeerIdentity,
    allowed: bool,
    peer: SocketAddr,
    activity: &Activity,
) -> Response<Body> {
    let start = Instant::now();
    let resp = if allowed {
        forward(req, ctx, id, peer, activity).await
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
    ctx.metrics.duration.observe(start.elapsed().as_secs_f64());
    ctx.metrics.http_response(resp.status().as_u16());
    resp
}

async fn forward(
    mut req: Request<Incoming>,
    ctx: &ConnCtx,
    id: &PeerIdentity,
    peer: SocketAddr,
    activity: &Activity,
) -> Response<Body> {
    // The default ConnCtx for http listeners always has a Proxy.
    let Some(proxy) = ctx.http.as_ref() else {
        return short(StatusCode::INTERNAL_SERVER_ERROR, "no upstream client");
    };
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
    for name in IDENTITY_HEADERS {
        headers.remove(name);
    }
    if !headers.contains_key(header::HOST) {
        if let Some(Ok(host)) = inbound_authority.map(|a| HeaderValue::from_str(&a)) {
            headers.insert(header::HOST, host);
        }
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
    let request = client.request(req);
    let outcome = tokio::select! {
        r = request => Ok(r),
        // Not a fixed deadline: a long upload keeps the connection busy and is never cut.
        _ = activity.idle(ctx.cfg.idle_timeout) => Err(()),
    };
    match outcome {
        Ok(Ok(mut resp)) => {
            // With both, the body was decoded as chunked: a stale length would truncate it.
            if resp.headers().contains_key(header::TRANSFER_ENCODING) {
                resp.headers_mut().remove(header::CONTENT_LENGTH);
            }
            strip_hop_by_hop(resp.headers_mut());
            resp.map(|b| b.boxed())
        }
        Ok(Err(e)) => {
            ctx.metrics.upstream_failures.inc();
            warn!(listener = %ctx.cfg.name, target = %ctx.cfg.target, error = %e, "upstream request failed");
            short(
                StatusCode::BAD_GATEWAY,
                "bad gateway: the upstream app did not answer",
            )
        }
        Err(_) => {
            ctx.metrics.upstream_failures.inc();
            warn!(listener = %ctx.cfg.name, target = %ctx.cfg.target, timeout = ?ctx.cfg.idle_timeout, "upstream request timed out");
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

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for name in listed.iter().map(String::as_str).chain(HOP_BY_HOP) {
        // `te: trailers` is how gRPC says it understands trailers; keep exactly that.
        if name == "te" && headers.get(header::TE).is_some_and(|v| v == "trailers") {
            continue;
        }
        headers.remove(name);
    }
}

fn short(code: StatusCode, msg: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{msg}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut r = Response::new(body);
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
