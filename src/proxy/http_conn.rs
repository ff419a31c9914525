//! One HTTP connection accepted by a listener, in either direction: a hyper server (HTTP/1.1
//! keep-alive, or HTTP/2 by ALPN or prior knowledge) running a request handler until the
//! connection ends, the client idles past `--idle-timeout`, it reaches `--max-connection-age`,
//! or shutdown starts (a connection with no request yet first gets `FIRST_REQUEST_GRACE` to
//! send one: it was accepted while its client sent it). The last three close gracefully:
//! HTTP/2 with GOAWAY; HTTP/1 with `Connection: close` on its next response (the one in
//! flight if its head has not gone out yet), after which hyper closes it: closing a kept-alive
//! HTTP/1 connection between two requests fails the next request of a client that reuses it
//! without checking first (Python's http.client, for one). At its age an HTTP/1 connection
//! waits for that response as long as the idle rules let it; at shutdown for `IDLE_LINGER`,
//! and is then closed (after the response in flight, if any).
//!
//! Idle means "no request in progress" (a request is in progress from its complete header block
//! until both its response body and its request body are done: a client may still be uploading
//! after an app answered early), not "no bytes": HTTP/2 PINGs or a trickled header block keep
//! bytes moving. A request's head, once started, must be complete within the header-read
//! deadline, min(`--idle-timeout`, 30 s), or the connection is dropped ([`header_block`], for
//! both HTTP versions; hyper's HTTP/1 header-read timeout is off, as it also runs between
//! requests and would close an idle kept-alive connection after 30 s). Also the header hygiene
//! both directions share.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::config::ListenerConfig;
use super::header_block;
use super::io::{Activity, Tracked};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// The longest a client may take to send a request's headers.
const MAX_HEADER_READ: Duration = Duration::from_secs(30);
/// Extra time a closing connection gets to finish a response that is still moving.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// A connection accepted just before shutdown (or before its listener changed) that has not
/// sent a request yet: its client is most likely sending one. It gets this long to, and that
/// request is served, before the graceful close.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);
/// At shutdown (or a drain), a kept-alive HTTP/1 connection waits this long for a response that
/// can carry `Connection: close` before it is closed.
const IDLE_LINGER: Duration = Duration::from_secs(5);

/// Connection-level headers that must not be forwarded (RFC 9110 7.6.1), and credentials meant
/// for a proxy (we are the proxy; they must not reach the next hop).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
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
    F: Fn(Request<RequestBody>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let header_deadline = cfg.idle_timeout.min(MAX_HEADER_READ);
    let activity = Activity::new();
    let (io, header_block) = header_block::watch(Tracked::new(io, activity.clone()));
    let io = TokioIo::new(io);
    let requests = Requests::new(header_block.clone());
    let svc_requests = requests.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = svc_requests.enter();
        let http1 = req.version() < Version::HTTP_2;
        let req = req.map(|body| RequestBody::new(body, &svc_requests));
        let resp = handle(req);
        async move {
            let mut resp = resp.await;
            if http1 && guard.0.closing() {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp.map(|body| InFlight {
                body,
                _guard: guard,
            }))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // The header-read deadline is `header_block`'s (see the module docs).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
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
    let opened = Instant::now();
    let stop = async {
        shutdown.cancelled().await;
        if !requests.any() {
            let left = FIRST_REQUEST_GRACE.saturating_sub(opened.elapsed());
            let _ = tokio::time::timeout(left, requests.first()).await;
        }
    };
    tokio::pin!(stop);
    let (mut stopped, mut aged) = (false, false);
    // An idle HTTP/1 connection asked to close: closed at this time unless its next response
    // (with `Connection: close`) ends it first.
    let mut linger: Option<Instant> = None;
    let mut closing: Option<Instant> = None;
    loop {
        let open = closing.is_none();
        let lingered = async {
            match linger {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // What ended the wait, for an open connection: `Some(linger)` asks it to close after
        // its next response (or at once if it cannot wait), `None` closes it now.
        let ask: Option<Option<Duration>>;
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(listener = %cfg.name, %peer, error = %e, "http connection ended with an error");
                }
                return;
            }
            _ = header_block.expired(header_deadline) => {
                debug!(listener = %cfg.name, %peer, "request headers not complete within the header-read deadline; closing");
                return;
            }
            _ = &mut stop, if open && !stopped => {
                stopped = true;
                ask = Some(Some(IDLE_LINGER));
            }
            _ = &mut age, if open && !aged => {
                aged = true;
                ask = Some(None);
            }
            _ = lingered, if open => ask = None,
            _ = activity.idle(cfg.idle_timeout), if open => ask = None,
            _ = requests.idle(cfg.idle_timeout, None), if open => ask = None,
            // Graceful close waits for in-flight responses, and then for their last bytes to
            // leave (a slow reader may still be taking a response's tail from the buffers).
            // With no request left it is dropped once nothing moved for a short grace, or, if
            // the client keeps it busy without a request (PINGs), once the idle timeout has
            // passed since the close began. One that stalls with a request in flight (an
            // upstream that stops mid-body) once nothing moved for the idle timeout plus the grace.
            _ = drained(&requests, &activity, closing), if !open => {
                debug!(listener = %cfg.name, %peer, "closing a connection with nothing left to send");
                return;
            }
            _ = requests.idle(cfg.idle_timeout, closing), if !open => {
                debug!(listener = %cfg.name, %peer, "closing a connection that did not close by itself");
                return;
            }
            _ = activity.idle(cfg.idle_timeout + CLOSE_GRACE), if !open => {
                debug!(listener = %cfg.name, %peer, "closing a stalled connection");
                return;
            }
        }
        let Some(wait) = ask else {
            closing = Some(Instant::now());
            conn.as_mut().graceful_shutdown();
            continue;
        };
        if header_block.is_http1() {
            // The next response to start (or the one in flight, if its head has not gone out)
            // carries `Connection: close`, and hyper closes after it.
            requests.close_after_response();
            if let Some(wait) = wait {
                let until = Instant::now() + wait;
                linger = Some(linger.map_or(until, |t| t.min(until)));
            }
        } else {
            // HTTP/2: GOAWAY (or a connection that has not sent a byte: closed).
            closing = Some(Instant::now());
            conn.as_mut().graceful_shutdown();
        }
    }
}

/// Resolves once no request was in progress and nothing moved for `CLOSE_GRACE`, both counted
/// from `since` at the earliest.
async fn drained(requests: &Requests, activity: &Activity, since: Option<Instant>) {
    loop {
        requests.idle(CLOSE_GRACE, since).await;
        let quiet = activity.idle_for();
        if quiet >= CLOSE_GRACE {
            return;
        }
        tokio::time::sleep(CLOSE_GRACE - quiet).await;
    }
}

/// Requests in progress on one connection, and when the last one ended; tells the header-read
/// deadline when requests start and end.
#[derive(Clone)]
struct Requests(Arc<RequestsInner>);

struct RequestsInner {
    heads: header_block::Deadline,
    epoch: Instant,
    /// Set at the first request.
    any: AtomicBool,
    /// Responses from now on carry `Connection: close` (HTTP/1).
    closing: AtomicBool,
    first: Notify,
    in_flight: AtomicUsize,
    /// When `in_flight` last dropped to zero, in ms since `epoch`.
    last_end_ms: AtomicU64,
}

impl Requests {
    fn new(heads: header_block::Deadline) -> Self {
        Requests(Arc::new(RequestsInner {
            heads,
            epoch: Instant::now(),
            any: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            first: Notify::new(),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        }))
    }

    /// A request's head is complete: it is in progress until the guard drops (with its
    /// response body).
    fn enter(&self) -> RequestGuard {
        self.0.heads.request_started();
        if !self.0.any.load(Ordering::Relaxed) {
            self.0.any.store(true, Ordering::Release);
            self.0.first.notify_waiters();
        }
        self.hold()
    }

    /// Keeps the request in progress until this guard drops too (with its request body).
    fn hold(&self) -> RequestGuard {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// From now on responses (HTTP/1) end their connection.
    fn close_after_response(&self) {
        self.0.closing.store(true, Ordering::Relaxed);
    }

    fn closing(&self) -> bool {
        self.0.closing.load(Ordering::Relaxed)
    }

    /// Whether a request has started on this connection.
    fn any(&self) -> bool {
        self.0.any.load(Ordering::Acquire)
    }

    /// Resolves once a request has started.
    async fn first(&self) {
        let notified = self.0.first.notified();
        tokio::pin!(notified);
        // Registered before the check: a request that starts in between wakes it.
        notified.as_mut().enable();
        if !self.any() {
            notified.await;
        }
    }

    /// Resolves once no request was in progress for `limit`, counting from `not_before` at the
    /// earliest.
    async fn idle(&self, limit: Duration, not_before: Option<Instant>) {
        loop {
            // Acquire pairs with the guard's Release: seeing the count drop to zero means seeing
            // the end time stored before it.
            let from = if self.0.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: look again a full `limit` later (one timer per connection).
                Instant::now()
            } else {
                let end = self.0.epoch
                    + Duration::from_millis(self.0.last_end_ms.load(Ordering::Acquire));
                not_before.map_or(end, |t| t.max(end))
            };
            if self.0.in_flight.load(Ordering::Acquire) == 0 && from.elapsed() >= limit {
                return;
            }
            tokio::time::sleep_until(from + limit).await;
        }
    }
}

/// One request in progress: from its complete headers until its response body (one guard) and
/// its request body (another) are done or dropped.
struct RequestGuard(Requests);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let r = &(self.0).0;
        r.last_end_ms
            .store(r.epoch.elapsed().as_millis() as u64, Ordering::Release);
        if r.in_flight.fetch_sub(1, Ordering::Release) == 1 {
            r.heads.request_ended();
        }
    }
}

/// A request body as the handlers get it: it keeps its request counted as in progress until it
/// has been read to its end or dropped.
pub struct RequestBody {
    inner: Incoming,
    guard: Option<RequestGuard>,
}

impl RequestBody {
    fn new(inner: Incoming, requests: &Requests) -> Self {
        let guard = (!hyper::body::Body::is_end_stream(&inner)).then(|| requests.hold());
        RequestBody { inner, guard }
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || hyper::body::Body::is_end_stream(&this.inner) {
            this.guard = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

/// A response body that keeps its request counted as in progress until it is done.
struct InFlight {
    body: Body,
    _guard: RequestGuard,
}

impl hyper::body::Body for InFlight {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Removes hop-by-hop headers, and those the `Connection` header lists. Allocates only when a
/// `Connection` header lists names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // `te: trailers` is how gRPC says it understands trailers; keep exactly that.
    let keep_te = headers.get(header::TE).is_some_and(|v| v == "trailers");
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
        .collect();
    for name in listed.into_iter().chain(HOP_BY_HOP) {
        if keep_te && name == header::TE {
            continue;
        }
        headers.remove(name);
    }
}

/// Prepares an upstream response for the client: with both Transfer-Encoding and
/// Content-Length the body was decoded as chunked, so a stale length would truncate it. The
/// upstream's HTTP version is that hop's: an app that answers HTTP/1.0 must not turn the
/// client's HTTP/1.1 keep-alive connection into one request per connection (one full mTLS
/// handshake each). hyper answers in the client's version (HTTP/1.0 clients get 1.0 framing;
/// HTTP/2 ignores the field).
pub fn relay_response(mut resp: Response<Incoming>) -> Response<Body> {
    *resp.version_mut() = Version::HTTP_11;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_listed_headers_go_in_any_case_and_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("X-Foo, Keep-Alive"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-bar", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["te", "x-bar"]);

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "only `te: trailers` is kept");
    }
}
