//! Connections to the upstream (`host:port` or `unix:/path`, with `--connect-timeout`), the
//! slots that count and cap them per listener, and an I/O wrapper that records the last
//! activity, so an idle watchdog can end connections after `--idle-timeout` without a lock
//! (one relaxed atomic store per read or write).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::config::Target;

/// A plaintext upstream stream.
pub enum Upstream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects to the target within `timeout`.
pub async fn connect(target: &Target, timeout: Duration) -> io::Result<Upstream> {
    let fut = async {
        match target {
            Target::Tcp(addr) => {
                let s = connect_tcp(addr).await?;
                s.set_nodelay(true)?;
                Ok(Upstream::Tcp(s))
            }
            Target::Unix(path) => Ok(Upstream::Unix(UnixStream::connect(path).await?)),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {target} timed out after {timeout:?}"),
        )),
    }
}

/// The host name of a target did not resolve: said in those words, not only in the resolver's
/// (`failed to lookup address information: Name or service not known`). Wrapped in an
/// `io::Error`; find it with [`crate::proxy::chain::find_in_chain`].
#[derive(Debug, thiserror::Error)]
#[error("the name {host} did not resolve: {error}")]
pub struct NotResolved {
    pub host: String,
    /// The resolver's error (part of the message, not a `source`: it would be said twice).
    error: io::Error,
}

/// Connects to `addr` (`host:port`): to each address its host resolves to in turn, as
/// `TcpStream::connect` does, until one accepts; a name that does not resolve is a
/// [`NotResolved`].
pub async fn connect_tcp(addr: &str) -> io::Result<TcpStream> {
    let not_resolved = |error: io::Error| {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        io::Error::new(error.kind(), NotResolved { host, error })
    };
    let addrs = match tokio::net::lookup_host(addr).await {
        Ok(addrs) => addrs,
        // Not a name that failed to resolve, but no `host:port` at all.
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => return Err(e),
        Err(e) => return Err(not_resolved(e)),
    };
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        not_resolved(io::Error::new(io::ErrorKind::NotFound, "it has no address"))
    }))
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Upstream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl hyper_util::client::legacy::connect::Connection for Upstream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

/// Last read or write, in milliseconds since `epoch`; and, for a request body, whether the
/// client's body failed (see [`TouchBody`]).
#[derive(Clone)]
pub struct Activity {
    epoch: Instant,
    inner: Arc<ActivityInner>,
}

struct ActivityInner {
    last_ms: AtomicU64,
    body_failed: AtomicBool,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            inner: Arc::new(ActivityInner {
                last_ms: AtomicU64::new(0),
                body_failed: AtomicBool::new(false),
            }),
        }
    }

    fn touch(&self) {
        self.inner
            .last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the last byte moved.
    pub fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.inner.last_ms.load(Ordering::Relaxed)))
    }

    /// Resolves once nothing moved for `limit`.
    pub async fn idle(&self, limit: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }

    /// True if the client's request body ended in an error (malformed framing, or the client
    /// went away mid-body): a failed request is then the client's doing, not the upstream's.
    pub fn body_failed(&self) -> bool {
        self.inner.body_failed.load(Ordering::Relaxed)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// Wraps a stream and touches `activity` on every successful read or write.
pub struct Tracked<T> {
    pub inner: T,
    activity: Activity,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        Tracked { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            this.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(_))) {
            this.activity.touch();
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A request body that touches `activity` for every frame it yields, so the wait for a
/// response can be timed per request (an upload that keeps moving is never cut) rather than per
/// connection, where other HTTP/2 streams would keep the timer alive. A body that fails is
/// noted in `activity` (see [`Activity::body_failed`]).
pub struct TouchBody<B> {
    inner: B,
    activity: Activity,
}

impl<B> TouchBody<B> {
    pub fn new(inner: B, activity: Activity) -> Self {
        TouchBody { inner, activity }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for TouchBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(_))) => this.activity.touch(),
            Poll::Ready(Some(Err(_))) => this
                .activity
                .inner
                .body_failed
                .store(true, Ordering::Relaxed),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

// === Upstream connection slots ===

/// The upstream connections of one listener: counted (`upstream_connections_active`), and in
/// http mode capped, so that clients multiplexing many requests (HTTP/2 streams) cannot make
/// the listener open connections without bound. A request that finds every slot taken waits
/// up to `wait` for one to free up (a pooled connection being reused counts as free), then
/// fails with [`UpstreamBusy`].
pub struct UpstreamSlots {
    limit: Option<(Arc<Semaphore>, usize)>,
    wait: Duration,
    gauge: Gauge,
}

/// Every slot stayed taken for the whole wait.
#[derive(Debug, thiserror::Error)]
#[error("all {limit} upstream connections of this listener are in use (waited {waited:?} for one)")]
pub struct UpstreamBusy {
    pub limit: usize,
    pub waited: Duration,
}

impl UpstreamSlots {
    /// `limit` `None`: counted only (tcp mode, where `--max-connections` bounds them already).
    pub fn new(limit: Option<usize>, wait: Duration, gauge: Gauge) -> Self {
        UpstreamSlots {
            limit: limit.map(|n| (Arc::new(Semaphore::new(n.max(1))), n.max(1))),
            wait,
            gauge,
        }
    }

    /// Counts one new upstream connection without taking a slot (one the cap does not apply to).
    pub fn count(&self) -> UpstreamSlot {
        self.gauge.inc();
        UpstreamSlot {
            _permit: None,
            gauge: self.gauge.clone(),
        }
    }

    /// A slot for one new upstream connection, held for as long as that connection lives.
    pub async fn acquire(&self) -> Result<UpstreamSlot, UpstreamBusy> {
        let permit = match &self.limit {
            None => None,
            Some((sem, limit)) => {
                match tokio::time::timeout(self.wait, sem.clone().acquire_owned()).await {
                    Ok(Ok(p)) => Some(p),
                    // The semaphore is never closed; a timeout is the one way to get here.
                    _ => {
                        return Err(UpstreamBusy {
                            limit: *limit,
                            waited: self.wait,
                        })
                    }
                }
            }
        };
        self.gauge.inc();
        Ok(UpstreamSlot {
            _permit: permit,
            gauge: self.gauge.clone(),
        })
    }
}

/// One upstream connection's slot; freed on drop.
pub struct UpstreamSlot {
    _permit: Option<OwnedSemaphorePermit>,
    gauge: Gauge,
}

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// An upstream connection that holds its slot for as long as it lives.
pub struct Slotted<T> {
    inner: T,
    _slot: UpstreamSlot,
}

impl<T> Slotted<T> {
    pub fn new(inner: T, slot: UpstreamSlot) -> Self {
        Slotted { inner, _slot: slot }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Slotted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Slotted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: hyper_util::client::legacy::connect::Connection>
    hyper_util::client::legacy::connect::Connection for Slotted<T>
{
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.inner.connected()
    }
}
