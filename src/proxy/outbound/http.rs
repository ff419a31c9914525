//! `client --protocol http`: requests from the app's plaintext connections (HTTP/1.1, or HTTP/2
//! with prior knowledge) go to the upstream through a pool of kept-alive mTLS connections
//! (HTTP/2 when the server offers `h2` by ALPN, else HTTP/1.1), so an app that opens a
//! connection per request pays no handshake per request. The pool belongs to one publish: after a rotation new requests use a new pool, and the old pool's connections close
//! once their in-flight requests are done. A request the server provably did not process (an
//! HTTP/2 stream refused, or above the last stream id of a graceful GOAWAY: the server is
//! draining the connection) is sent once more on another connection if it has no body and an
//! idempotent method. Upstream failures answer 502 with the reason, an upstream that stays
//! silent for `--idle-timeout` 504; nothing hangs.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as _, Incoming};
use hyper::header;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::connect::{connect, Remote, UpstreamError};
use super::refusal::{rejected_by_server, Rejections, Watched};
use crate::proxy::chain::{error_chain, find_in_chain};
use crate::proxy::handshake::HandshakeFailure;
use crate::proxy::http_conn::{
    relay_response, serve_conn, short, strip_hop_by_hop, Body, RequestBody,
};
use crate::proxy::io::{Activity, Slotted, TouchBody};
use crate::proxy::listener::{Shared, Slot};

/// How long an unused pooled connection stays open.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// HTTP/2 keepalive of pooled connections while requests are in flight: a PING this often,
/// and the connection is closed if the answer takes longer than the timeout.
const H2_PING: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The kept-alive upstream connections made with the credentials of one publish.
pub struct Pool {
    client: Client<Connector, Body>,
    rejected: Arc<Rejections>,
}

impl Pool {
    pub fn new(remote: Arc<Remote>, tls: TlsConnector, shared: Arc<Shared>) -> Self {
        let rejected = Arc::new(Rejections::default());
        let connector = Connector {
            remote,
            tls,
            shared,
            rejected: rejected.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            // Without a timer the idle timeout is only checked when a connection is reused.
            .pool_timer(TokioTimer::new())
            // A pooled HTTP/2 connection to a vanished peer is noticed in seconds, not when
            // the kernel gives up retransmitting.
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(H2_PING)
            .http2_keep_alive_timeout(H2_PING_TIMEOUT)
            .build(connector);
        Pool { client, rejected }
    }
}

/// Opens an upstream mTLS connection for the pool, counting failed handshakes.
#[derive(Clone)]
struct Connector {
    remote: Arc<Remote>,
    tls: TlsConnector,
    shared: Arc<Shared>,
    rejected: Arc<Rejections>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Slotted<Watched>>;
    type Error = UpstreamError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let s = &this.shared;
            let slot = s.upstream.acquire().await.map_err(UpstreamError::Busy)?;
            match connect(&this.remote, &this.tls, &s.cfg).await {
                Ok(tls) => Ok(TokioIo::new(Slotted::new(
                    Watched::new(tls, this.rejected.clone()),
                    slot,
                ))),
                Err(e) => {
                    if let Some(reason) = e.handshake() {
                        s.metrics.handshake_failed(reason);
                    }
                    Err(e)
                }
            }
        })
    }
}

/// Serves one plaintext connection from the app (lifecycle in `http_conn`) with the pool of
/// the current publish.
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    pools: &Arc<Slot<Pool>>,
    remote: &Arc<Remote>,
    shared: &Arc<Shared>,
    shutdown: CancellationToken,
) {
    let (pools, remote, s) = (pools.clone(), remote.clone(), shared.clone());
    let handle = move |req| {
        let (pools, remote, s) = (pools.clone(), remote.clone(), s.clone());
        async move {
            let start = Instant::now();
            let resp = forward(req, &pools, &remote, &s).await;
            s.metrics.duration.observe(start.elapsed().as_secs_f64());
            s.metrics.http_response(resp.status().as_u16());
            resp
        }
    };
    serve_conn(tcp, &shared.cfg, peer, shutdown, handle).await;
}

async fn forward(
    req: Request<RequestBody>,
    pools: &Slot<Pool>,
    remote: &Remote,
    s: &Shared,
) -> Response<Body> {
    // The one load per request: a publish after this point applies to the next request.
    let Some(pool) = pools.load_full() else {
        return failed(s, &UpstreamError::NoCredentials);
    };
    if req.method() == Method::CONNECT {
        return short(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported: requests go to the configured target",
        );
    }
    // The app's Host is replaced by the server's name below: no Host rules to apply here (a
    // legacy app's sloppy Host must not break its calls).
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match format!("https://{}{}", remote.authority, path).parse() {
        Ok(u) => parts.uri = u,
        Err(_) => return short(StatusCode::BAD_REQUEST, "request path cannot be forwarded"),
    }
    strip_hop_by_hop(&mut parts.headers);
    // The pool sets Host (HTTP/1.1) or :authority (HTTP/2) from the URI: the server's name.
    parts.headers.remove(header::HOST);
    parts.version = Version::HTTP_11;
    // What a second attempt needs, for requests that can be replayed.
    let replay = (body.is_end_stream() && is_idempotent(&parts.method)).then(|| {
        let mut again = Request::new(Empty::<bytes::Bytes>::new().map_err(|never| match never {}));
        *again.method_mut() = parts.method.clone();
        *again.uri_mut() = parts.uri.clone();
        *again.version_mut() = parts.version;
        *again.headers_mut() = parts.headers.clone();
        again
    });
    let mut result = send(&pool, Request::from_parts(parts, body), s).await;
    if let (Sent::Failed(e, _), Some(again)) = (&result, replay) {
        if unprocessed(e) {
            debug!(error = %e, "the server refused the stream unprocessed; sending it again");
            result = send(&pool, again.map(|b| b.boxed()), s).await;
        }
    }
    match result {
        Sent::Answered(resp) => {
            pool.rejected.clear();
            relay_response(resp)
        }
        Sent::Failed(e, true) => {
            info!(error = %error_chain(&e), "the app's request body failed; answering 400");
            short(
                StatusCode::BAD_REQUEST,
                "bad request: the request body is malformed or was cut short",
            )
        }
        Sent::Failed(e, false) => {
            // The connector's own error (counted there if it was a handshake).
            if let Some(cause) = find_in_chain::<UpstreamError>(&e) {
                return failed(s, cause);
            }
            let alert = rejected_by_server(&e).or_else(|| pool.rejected.get());
            if let Some(alert) = alert {
                let rejected = UpstreamError::Rejected { alert };
                if let Some(reason) = rejected.handshake() {
                    s.metrics.handshake_failed(reason);
                }
                return failed(s, &rejected);
            }
            let chain = error_chain(&e);
            s.metrics.upstream_failures.inc();
            warn!(target = %remote.addr, error = %chain, "upstream request failed");
            short(
                StatusCode::BAD_GATEWAY,
                &format!("bad gateway: the upstream request failed: {chain}"),
            )
        }
        Sent::TimedOut => {
            s.metrics.upstream_failures.inc();
            warn!(target = %remote.addr, timeout = ?s.cfg.idle_timeout, "upstream request timed out");
            short(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway timeout: the upstream did not answer in time",
            )
        }
    }
}

/// How sending one request through the pool ended.
enum Sent {
    Answered(Response<Incoming>),
    /// The request failed; true if the app's own request body failed first.
    Failed(hyper_util::client::legacy::Error, bool),
    /// Nothing moved for `--idle-timeout` while waiting for the response.
    TimedOut,
}

/// Sends `req` through the pool. Timed per request: not a fixed deadline (an upload that keeps
/// moving is never cut), and not the app connection's traffic (other HTTP/2 streams must not
/// keep a stuck one waiting).
async fn send<B>(pool: &Pool, req: Request<B>, s: &Shared) -> Sent
where
    B: hyper::body::Body<Data = bytes::Bytes, Error = hyper::Error> + Send + Sync + Unpin + 'static,
{
    let waiting = Activity::new();
    let req = req.map(|b| TouchBody::new(b, waiting.clone()).boxed());
    tokio::select! {
        r = pool.client.request(req) => match r {
            Ok(resp) => Sent::Answered(resp),
            Err(e) => Sent::Failed(e, waiting.body_failed()),
        },
        _ = waiting.idle(s.cfg.idle_timeout) => Sent::TimedOut,
    }
}

/// RFC 9110 9.2.2, without a body to replay.
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The server said it did not process the request: an HTTP/2 stream refused, or one above the
/// last stream id of a graceful GOAWAY (RFC 9113 6.8, 8.7).
fn unprocessed(e: &hyper_util::client::legacy::Error) -> bool {
    find_in_chain::<h2::Error>(e).is_some_and(|h| {
        h.reason() == Some(h2::Reason::REFUSED_STREAM)
            || (h.is_go_away() && h.is_remote() && h.reason() == Some(h2::Reason::NO_ERROR))
    })
}

/// 502 for an upstream that could not be reached; handshake failures were counted by the
/// connector already.
fn failed(s: &Shared, e: &UpstreamError) -> Response<Body> {
    if let UpstreamError::Busy(busy) = e {
        warn!(error = %busy, "upstream connection limit reached; answering 503");
        return short(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable: too many requests in progress; try again",
        );
    }
    s.metrics.upstream_failures.inc();
    if matches!(e, UpstreamError::NoCredentials) {
        s.metrics.handshake_failed(HandshakeFailure::NoCredentials);
    }
    warn!(reason = e.reason(), error = %e, "upstream unavailable; answering 502");
    short(
        StatusCode::BAD_GATEWAY,
        &format!("bad gateway: {}: {e}", e.reason()),
    )
}
