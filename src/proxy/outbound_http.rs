//! `client --protocol http`: requests from the app's plaintext connections (HTTP/1.1, or HTTP/2
//! with prior knowledge) go to the upstream through a pool of kept-alive mTLS connections
//! (HTTP/2 when the server offers `h2` by ALPN, else HTTP/1.1), so an app that opens a
//! connection per request pays no handshake per request. The pool belongs to the origin of one
//! publish: after a rotation new requests use a new pool, and the old pool's connections close
//! once their in-flight requests are done. Upstream failures answer 502 with the reason, an
//! upstream that stays silent for `--idle-timeout` 504; nothing hangs.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::http_conn::{relay_response, serve_conn, short, strip_hop_by_hop, Body};
use super::io::Activity;
use super::listener::Shared;
use super::outbound::{connect, Outbound, Remote, UpstreamError};
use super::ListenerConfig;

/// How long an unused pooled connection stays open.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The kept-alive upstream connections of one origin.
pub struct Pool {
    client: Client<Connector, Incoming>,
}

impl Pool {
    pub fn new(remote: Arc<Remote>, tls: TlsConnector, shared: &Shared) -> Self {
        let connector = Connector {
            remote,
            tls,
            cfg: Arc::new(shared.cfg.clone()),
            metrics: shared.metrics.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Pool { client }
    }
}

/// Opens an upstream mTLS connection for the pool, counting failed handshakes.
#[derive(Clone)]
struct Connector {
    remote: Arc<Remote>,
    tls: TlsConnector,
    cfg: Arc<ListenerConfig>,
    metrics: super::ListenerMetrics,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Upstream>;
    type Error = UpstreamError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            match connect(&this.remote, &this.tls, &this.cfg).await {
                Ok(tls) => Ok(TokioIo::new(Upstream(tls))),
                Err(e) => {
                    if matches!(
                        e,
                        UpstreamError::Handshake { .. } | UpstreamError::HandshakeTimeout { .. }
                    ) {
                        this.metrics.handshake_failed(e.reason());
                    }
                    Err(e)
                }
            }
        })
    }
}

/// An upstream mTLS connection that tells the pool whether ALPN chose HTTP/2.
struct Upstream(TlsStream<TcpStream>);

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.0.get_ref().1.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Serves one plaintext connection from the app (lifecycle in `http_conn`).
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<Outbound>,
    shutdown: CancellationToken,
) {
    let activity = Activity::new();
    let (svc_ctx, svc_activity) = (ctx.clone(), activity.clone());
    let handle = move |req| {
        let (ctx, activity) = (svc_ctx.clone(), svc_activity.clone());
        async move {
            let start = Instant::now();
            let resp = forward(req, &ctx, &activity).await;
            let m = &ctx.shared.metrics;
            m.duration.observe(start.elapsed().as_secs_f64());
            m.http_response(resp.status().as_u16());
            resp
        }
    };
    serve_conn(tcp, &ctx.shared.cfg, peer, shutdown, activity, handle).await;
}

async fn forward(
    mut req: Request<Incoming>,
    ctx: &Outbound,
    activity: &Activity,
) -> Response<Body> {
    let s = &ctx.shared;
    // The one load per request: a publish after this point applies to the next request.
    let Some(origin) = ctx.origin.load_full() else {
        return failed(s, &UpstreamError::NoCredentials);
    };
    let Some(pool) = origin.pool.as_ref() else {
        return short(StatusCode::INTERNAL_SERVER_ERROR, "no upstream pool");
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    match format!("https://{}{}", ctx.remote.authority, path).parse() {
        Ok(u) => *req.uri_mut() = u,
        Err(_) => return short(StatusCode::BAD_REQUEST, "request path cannot be forwarded"),
    }
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    // The pool sets Host (HTTP/1.1) or :authority (HTTP/2) from the URI: the server's name.
    headers.remove(header::HOST);
    *req.version_mut() = Version::HTTP_11;
    let request = pool.client.request(req);
    let outcome = tokio::select! {
        r = request => Ok(r),
        // Not a fixed deadline: a long upload keeps the connection busy and is never cut.
        _ = activity.idle(s.cfg.idle_timeout) => Err(()),
    };
    match outcome {
        Ok(Ok(resp)) => relay_response(resp),
        Ok(Err(e)) => {
            let cause =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .find_map(|e| e.downcast_ref::<UpstreamError>());
            match cause {
                Some(cause) => failed(s, cause),
                None => {
                    s.metrics.upstream_failures.inc();
                    warn!(listener = %s.cfg.name, target = %ctx.remote.addr, error = %e, "upstream request failed");
                    short(
                        StatusCode::BAD_GATEWAY,
                        &format!("bad gateway: the upstream request failed: {e}"),
                    )
                }
            }
        }
        Err(()) => {
            s.metrics.upstream_failures.inc();
            warn!(listener = %s.cfg.name, target = %ctx.remote.addr, timeout = ?s.cfg.idle_timeout, "upstream request timed out");
            short(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway timeout: the upstream did not answer in time",
            )
        }
    }
}

/// 502 for an upstream that could not be reached; handshake failures were counted by the
/// connector already.
fn failed(s: &Shared, e: &UpstreamError) -> Response<Body> {
    s.metrics.upstream_failures.inc();
    if matches!(e, UpstreamError::NoCredentials) {
        s.metrics.handshake_failed(e.reason());
    }
    warn!(listener = %s.cfg.name, reason = e.reason(), error = %e, "upstream unavailable; answering 502");
    short(
        StatusCode::BAD_GATEWAY,
        &format!("bad gateway: {}: {e}", e.reason()),
    )
}
