//! The request-head deadline: a client must send a request's head (HTTP/1 request line and
//! headers, or an HTTP/2 header block) within the deadline once it has started, however it
//! trickles the bytes; a connection that holds a head open longer is dropped. An idle
//! connection, with no head started, is not timed here (that is `--idle-timeout`'s job).
//!
//! hyper hands a request to us only once its head is complete. For HTTP/2 a client can keep a
//! header block open forever by trickling CONTINUATION frames: every frame is traffic, so an
//! idle timer never fires. [`Watched`] reads the frame headers of what the client sends (9 bytes
//! each; payloads are skipped, never copied) and notes when a header block opened and whether
//! it is still open (the preface itself is timed like a head). A stream that does not start
//! with the HTTP/2 preface is HTTP/1: a head is open from the first byte read while no request
//! is in progress until hyper hands the request over ([`Deadline::request_started`]); bytes
//! read while a request is in progress (until its response and its request body are done) are
//! its body. So the head of a request pipelined behind one in progress is timed from the first
//! byte read after that one ends: a client that sends part of such a head and stalls is treated
//! as idle (closed by the `--idle-timeout` rules), as if it had sent nothing.
//! (hyper's own HTTP/1 header-read timeout also runs while a kept-alive connection waits for its
//! next request, so it would close idle connections long before `--idle-timeout`.)
//! [`Deadline::expired`] resolves once a head has been open longer than the deadline.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// `open_since` values: no head open; or (HTTP/1 only) a request in progress, whose bytes are
/// its body.
const CLOSED: u64 = u64::MAX;
const BUSY: u64 = u64::MAX - 1;

/// What the reader and the deadline share: when the open head opened, in ms since `epoch` (or
/// `CLOSED` / `BUSY`), and whether the connection turned out to be HTTP/1.
struct Shared {
    epoch: Instant,
    open_since: AtomicU64,
    http1: AtomicBool,
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Where the parser is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parse {
    /// Matching the connection preface; the count of bytes matched so far.
    Preface(usize),
    /// Reading a frame header; the bytes of it read so far.
    Head([u8; 9], usize),
    /// Skipping a frame payload: the bytes left, and whether the header block ends with it.
    Payload(usize, bool),
    /// Not HTTP/2.
    Off,
}

/// A frame-header reader for one connection (see the module docs). A header block is open from
/// the header of its HEADERS (or PUSH_PROMISE) frame until the last payload byte of the frame
/// that carries END_HEADERS: a client that trickles the payload of a single frame holds it open
/// as surely as one that trickles CONTINUATION frames.
struct Frames {
    parse: Parse,
    open: bool,
}

/// The header-block state after some bytes, if it changed.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    None,
    Opened,
    Closed,
    Off,
}

impl Frames {
    fn new() -> Self {
        Frames {
            parse: Parse::Preface(0),
            open: false,
        }
    }

    /// Feeds bytes the client sent; returns how the header-block state at the end differs
    /// from the state before: `Opened` if the block open at the end opened within `bytes` (also
    /// when another one closed before it), `Closed` if none is open any more, else `None` (a
    /// block opened and closed within `bytes` is no change).
    fn feed(&mut self, mut bytes: &[u8]) -> Change {
        let was_open = self.open;
        let mut opened_here = false;
        while !bytes.is_empty() {
            match &mut self.parse {
                Parse::Off => return Change::Off,
                Parse::Preface(matched) => {
                    let want = &PREFACE[*matched..];
                    let n = want.len().min(bytes.len());
                    if bytes[..n] != want[..n] {
                        self.parse = Parse::Off;
                        return Change::Off;
                    }
                    *matched += n;
                    bytes = &bytes[n..];
                    if *matched == PREFACE.len() {
                        self.parse = Parse::Head([0; 9], 0);
                    }
                }
                Parse::Head(head, have) => {
                    let n = (9 - *have).min(bytes.len());
                    head[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == 9 {
                        let head = *head;
                        let len = usize::from(head[0]) << 16
                            | usize::from(head[1]) << 8
                            | usize::from(head[2]);
                        let ends_block = head[4] & END_HEADERS != 0;
                        let ends = match head[3] {
                            HEADERS | PUSH_PROMISE => {
                                opened_here |= !self.open;
                                self.open = true;
                                ends_block
                            }
                            CONTINUATION => ends_block,
                            _ => false,
                        };
                        self.parse = Parse::Payload(len, ends);
                    }
                }
                Parse::Payload(left, _) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                }
            }
            // A payload read to its end (at once for an empty one) ends its frame.
            if let Parse::Payload(0, ends) = self.parse {
                if ends {
                    self.open = false;
                }
                self.parse = Parse::Head([0; 9], 0);
            }
        }
        match (was_open, self.open) {
            (_, true) if opened_here => Change::Opened,
            (true, false) => Change::Closed,
            _ => Change::None,
        }
    }
}

/// A connection's read side, watched for open header blocks.
pub struct Watched<T> {
    inner: T,
    frames: Frames,
    shared: Arc<Shared>,
}

/// Resolves when a request head stays open too long; told when HTTP/1 requests start and end.
#[derive(Clone)]
pub struct Deadline {
    shared: Arc<Shared>,
}

/// Wraps `inner`; the [`Deadline`] watches it.
pub fn watch<T>(inner: T) -> (Watched<T>, Deadline) {
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        open_since: AtomicU64::new(CLOSED),
        http1: AtomicBool::new(false),
    });
    let deadline = Deadline {
        shared: shared.clone(),
    };
    (
        Watched {
            inner,
            frames: Frames::new(),
            shared,
        },
        deadline,
    )
}

impl Deadline {
    /// Resolves once a request head has been open for `limit`.
    pub async fn expired(&self, limit: Duration) {
        // Checked at half the limit when nothing is open: a head is noticed at most
        // 1.5 x `limit` after it opened, with one timer per connection.
        let recheck = (limit / 2).max(Duration::from_millis(10));
        loop {
            match self.shared.open_since.load(Ordering::Relaxed) {
                CLOSED | BUSY => tokio::time::sleep(recheck).await,
                since => {
                    let opened = self.shared.epoch + Duration::from_millis(since);
                    if opened.elapsed() >= limit {
                        return;
                    }
                    tokio::time::sleep_until(opened + limit).await;
                }
            }
        }
    }

    /// Whether the client speaks HTTP/1 (known from its first bytes).
    pub fn is_http1(&self) -> bool {
        self.shared.http1.load(Ordering::Relaxed)
    }

    /// hyper handed over a request (its head is complete). For HTTP/1 what the client sends
    /// next is this request's body, until [`Deadline::request_ended`]. (For HTTP/2 the frames
    /// say where heads are; nothing to do.)
    pub fn request_started(&self) {
        if self.shared.http1.load(Ordering::Relaxed) {
            self.shared.open_since.store(BUSY, Ordering::Relaxed);
        }
    }

    /// No request is in progress any more: for HTTP/1 the next byte the client sends starts
    /// the next head.
    pub fn request_ended(&self) {
        if self.shared.http1.load(Ordering::Relaxed) {
            let _ = self.shared.open_since.compare_exchange(
                BUSY,
                CLOSED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if read.is_empty() || !matches!(r, Poll::Ready(Ok(()))) {
            return r;
        }
        let shared = &this.shared;
        if this.frames.parse == Parse::Off {
            // HTTP/1: bytes while no request is in progress (and no head open) start a head.
            // (Read first: most reads are body bytes or the rest of a head, and need no clock.)
            if shared.open_since.load(Ordering::Relaxed) == CLOSED {
                let _ = shared.open_since.compare_exchange(
                    CLOSED,
                    shared.now(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            return r;
        }
        // The first bytes are an HTTP/1 head or the HTTP/2 preface: timed as a head from the
        // first byte until the preface is complete or the first request is handed over.
        let in_preface = matches!(this.frames.parse, Parse::Preface(_));
        let first_bytes_open = shared.open_since.load(Ordering::Relaxed) != CLOSED;
        let value = match this.frames.feed(read) {
            // A header block right after a slowly sent preface: still timed from its first byte.
            Change::Opened if in_preface && first_bytes_open => None,
            Change::Opened => Some(shared.now()),
            Change::Closed => Some(CLOSED),
            Change::Off => {
                // HTTP/1: the first request's head, open since its first byte.
                shared.http1.store(true, Ordering::Relaxed);
                (!first_bytes_open).then(|| shared.now())
            }
            Change::None => match this.frames.parse {
                Parse::Preface(_) => (!first_bytes_open).then(|| shared.now()),
                // The preface is complete (with no header block open after it).
                _ if in_preface && !this.frames.open => Some(CLOSED),
                _ => None,
            },
        };
        if let Some(v) = value {
            shared.open_since.store(v, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&1u32.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn http1_switches_the_watch_off() {
        let mut f = Frames::new();
        assert_eq!(f.feed(b"GET / HTTP/1.1\r\n"), Change::Off);
        assert_eq!(f.feed(&frame(HEADERS, 0, b"x")), Change::Off);
    }

    #[test]
    fn an_unfinished_header_block_is_open_until_end_headers() {
        let mut f = Frames::new();
        assert_eq!(f.feed(PREFACE), Change::None);
        assert_eq!(f.feed(&frame(0x4, 0, &[0; 6])), Change::None); // SETTINGS
        assert_eq!(f.feed(&frame(HEADERS, 0, b"abc")), Change::Opened);
        for _ in 0..3 {
            assert_eq!(f.feed(&frame(CONTINUATION, 0, b"d")), Change::None);
        }
        assert_eq!(
            f.feed(&frame(CONTINUATION, END_HEADERS, b"e")),
            Change::Closed
        );
        // A complete block in one frame, read at once: no change.
        assert_eq!(f.feed(&frame(HEADERS, END_HEADERS, b"abc")), Change::None);
        assert!(!f.open);
    }

    #[test]
    fn a_single_frame_whose_payload_trickles_is_open_until_its_last_byte() {
        let mut f = Frames::new();
        f.feed(PREFACE);
        let headers = frame(HEADERS, END_HEADERS, &[7; 200]);
        assert_eq!(f.feed(&headers[..9]), Change::Opened);
        for b in &headers[9..headers.len() - 1] {
            assert_eq!(f.feed(std::slice::from_ref(b)), Change::None);
        }
        assert_eq!(f.feed(&headers[headers.len() - 1..]), Change::Closed);
        // A read that ends one block and opens the next reports the new one (its start time
        // replaces the old block's).
        let mut both = frame(HEADERS, 0, b"x");
        assert_eq!(f.feed(&both), Change::Opened);
        both = frame(CONTINUATION, END_HEADERS, b"y");
        both.extend(frame(HEADERS, 0, b"z"));
        assert_eq!(f.feed(&both), Change::Opened);
        assert_eq!(
            f.feed(&frame(CONTINUATION, END_HEADERS, b"w")),
            Change::Closed
        );
        // The same for the END_HEADERS CONTINUATION of a longer block.
        assert_eq!(f.feed(&frame(HEADERS, 0, b"a")), Change::Opened);
        let last = frame(CONTINUATION, END_HEADERS, b"bc");
        assert_eq!(f.feed(&last[..10]), Change::None);
        assert_eq!(f.feed(&last[10..]), Change::Closed);
    }

    #[test]
    fn byte_by_byte_is_the_same_as_at_once() {
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(0x6, 0, &[0; 8])); // PING
        stream.extend(frame(HEADERS, END_HEADERS, &[1; 30])); // a whole request head
        stream.extend(frame(0x0, 0, &[])); // empty DATA: a zero-length payload
        stream.extend(frame(HEADERS, 0, &[7; 300]));
        let mut f = Frames::new();
        let changes: Vec<Change> = stream
            .iter()
            .map(|b| f.feed(std::slice::from_ref(b)))
            .filter(|c| *c != Change::None)
            .collect();
        assert_eq!(
            changes,
            vec![Change::Opened, Change::Closed, Change::Opened]
        );
        assert!(f.open);
        let mut at_once = Frames::new();
        assert_eq!(at_once.feed(&stream), Change::Opened);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_fires_only_for_a_block_open_too_long() {
        let (mut w, deadline) = watch(tokio::io::empty());
        let limit = Duration::from_secs(3);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(HEADERS, 0, b"a"));
        // Simulate the read path's bookkeeping without a real stream.
        let opened = w.frames.feed(&bytes);
        // (The read path stores when the block opened; here it opened at the epoch.)
        assert_eq!(opened, Change::Opened);
        w.shared.open_since.store(0, Ordering::Relaxed);
        let start = Instant::now();
        deadline.expired(limit).await;
        assert!(start.elapsed() >= limit);
        w.shared.open_since.store(CLOSED, Ordering::Relaxed);
        let quiet = tokio::time::timeout(Duration::from_secs(60), deadline.expired(limit)).await;
        assert!(quiet.is_err(), "no open block: never expires");
        w.shared.open_since.store(BUSY, Ordering::Relaxed);
        let busy = tokio::time::timeout(Duration::from_secs(60), deadline.expired(limit)).await;
        assert!(busy.is_err(), "a request in progress: never expires");
    }

    /// Reads what the client wrote so far through `w`.
    async fn read_some<T: AsyncRead + Unpin>(w: &mut Watched<T>) {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 256];
        assert!(w.read(&mut buf).await.expect("read") > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_head_is_timed_from_its_first_byte_and_an_idle_connection_not_at_all() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut w, deadline) = watch(server);
        let limit = Duration::from_secs(3);
        let expires_within = |d: Duration| {
            let deadline = deadline.clone();
            async move {
                tokio::time::timeout(d, deadline.expired(limit))
                    .await
                    .is_ok()
            }
        };

        // The first request's head, trickled: timed from its first byte.
        client.write_all(b"GET / HT").await.unwrap();
        read_some(&mut w).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        client.write_all(b"TP/1.1\r\n").await.unwrap();
        read_some(&mut w).await;
        assert!(
            expires_within(Duration::from_secs(2)).await,
            "more bytes extended the deadline"
        );

        // hyper hands the request over: its body's bytes are not a head, however long they take.
        deadline.request_started();
        client.write_all(b"body").await.unwrap();
        read_some(&mut w).await;
        assert!(!expires_within(Duration::from_secs(60)).await);

        // The response is done: an idle kept-alive connection is never cut here...
        deadline.request_ended();
        assert!(!expires_within(Duration::from_secs(600)).await);
        // ...and the next request's first byte starts its deadline.
        client.write_all(b"G").await.unwrap();
        read_some(&mut w).await;
        let start = Instant::now();
        assert!(expires_within(Duration::from_secs(10)).await);
        assert!(start.elapsed() >= limit);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_bytes_are_timed_until_they_turn_out_http1_or_the_preface_completes() {
        use tokio::io::AsyncWriteExt;
        let limit = Duration::from_secs(3);
        // "P" could start "PRI * HTTP/2.0" or "POST": a head either way, timed from that byte.
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut w, deadline) = watch(server);
        client.write_all(b"P").await.unwrap();
        read_some(&mut w).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        client.write_all(b"OST / HTTP/1.1\r\n").await.unwrap();
        read_some(&mut w).await;
        let r = tokio::time::timeout(Duration::from_millis(1500), deadline.expired(limit)).await;
        assert!(r.is_ok(), "the head was not timed from its first byte");

        // A preface sent slowly is timed; once complete, with no header block open, it is not.
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut w, deadline) = watch(server);
        client.write_all(&PREFACE[..10]).await.unwrap();
        read_some(&mut w).await;
        assert_ne!(w.shared.open_since.load(Ordering::Relaxed), CLOSED);
        client.write_all(&PREFACE[10..]).await.unwrap();
        read_some(&mut w).await;
        assert_eq!(w.shared.open_since.load(Ordering::Relaxed), CLOSED);
        let r = tokio::time::timeout(Duration::from_secs(60), deadline.expired(limit)).await;
        assert!(r.is_err(), "an idle HTTP/2 connection was cut");

        // A header block in the read that completes a slow preface does not restart the clock.
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut w, deadline) = watch(server);
        client.write_all(&PREFACE[..10]).await.unwrap();
        read_some(&mut w).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut rest = PREFACE[10..].to_vec();
        rest.extend(frame(HEADERS, 0, b"a"));
        client.write_all(&rest).await.unwrap();
        read_some(&mut w).await;
        let r = tokio::time::timeout(Duration::from_millis(1500), deadline.expired(limit)).await;
        assert!(
            r.is_ok(),
            "the header block after the preface restarted the clock"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn http2_ignores_the_request_calls() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut w, deadline) = watch(server);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(HEADERS, 0, b"a"));
        client.write_all(&bytes).await.unwrap();
        read_some(&mut w).await;
        // Another stream's request starting or ending does not close this open block.
        deadline.request_started();
        deadline.request_ended();
        let limit = Duration::from_secs(3);
        let r = tokio::time::timeout(Duration::from_secs(10), deadline.expired(limit)).await;
        assert!(r.is_ok(), "the open header block was forgotten");
    }
}
