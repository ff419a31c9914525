//! One HTTP connection accepted by a listener, in either direction: a hyper server (HTTP/1.1
//! keep-alive, or HTTP/2 by ALPN or prior knowledge) running a request handler until the
//! connection ends, the client idles past `--idle-timeout`, it reaches `--max-connection-age`,
//! or shutdown starts. The last three close gracefully: HTTP/1 after the in-flight response
//! with `Connection: close`, HTTP/2 with GOAWAY. Also the header hygiene both directions share.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::io::{Activity, Tracked};
use super::ListenerConfig;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// The longest a client may take to send a request's headers.
const MAX_HEADER_READ: Duration = Duration::from_secs(30);
/// Extra time a closing connection gets to finish a response that is still moving.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Connection-level headers that must not be forwarded (RFC 9110 7.6.1), and credentials meant
/// for a proxy (we are the proxy; they must not reach the next hop).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Serves `io` with `handle` until the connection is done (see the module docs).
pub async fn serve_conn<S, F, Fut>(
    io: S,
    cfg: &ListenerConfig,
    peer: SocketAddr,
    shutdown: CancellationToken,
    handle: F,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(Tracked::new(io, activity.clone()));
    let svc = hyper::service::service_fn(move |req| {
        let resp = handle(req);
        async move { Ok::<_, Infallible>(resp.await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A client that starts a request and stalls is dropped like an idle one.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.idle_timeout.min(MAX_HEADER_READ));
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let age = async {
        match cfg.max_connection_age {
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
                    debug!(listener = %cfg.name, %peer, error = %e, "http connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => closing = true,
            _ = &mut age, if !closing => closing = true,
            _ = activity.idle(cfg.idle_timeout), if !closing => closing = true,
            // Graceful close waits for in-flight responses; one that stalls (half-sent request
            // headers, an upstream that stops mid-body) is dropped once nothing moved for the
            // idle timeout plus a short grace.
            _ = activity.idle(cfg.idle_timeout + CLOSE_GRACE), if closing => {
                debug!(listener = %cfg.name, %peer, "closing a stalled connection");
                return;
            }
        }
        if closing {
            conn.as_mut().graceful_shutdown();
        }
    }
}

/// Removes hop-by-hop headers, and those the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// Prepares an upstream response for the client: with both Transfer-Encoding and
/// Content-Length the body was decoded as chunked, so a stale length would truncate it.
pub fn relay_response(mut resp: Response<Incoming>) -> Response<Body> {
    if resp.headers().contains_key(header::TRANSFER_ENCODING) {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(resp.headers_mut());
    resp.map(|b| b.boxed())
}

/// A short plain-text answer of our own.
pub fn short(code: StatusCode, msg: &str) -> Response<Body> {
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
