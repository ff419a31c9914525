//! The HTTP/2 header-read deadline. hyper hands a request to us only once its header block is
//! complete, and a client can keep a block open forever by trickling CONTINUATION frames:
//! every frame is traffic, so an idle timer never fires. [`Watched`] reads the frame headers
//! of what the client sends (9 bytes each; payloads are skipped, never copied) and notes when a
//! header block opened and whether it is still open; [`Deadline::expired`] resolves once one
//! has been open longer than the deadline, and the connection is then dropped. A stream that
//! does not start with the HTTP/2 preface is HTTP/1, where hyper's header-read timeout does
//! this job; the watch then switches itself off.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// `OPEN_SINCE` values: not HTTP/2 (the watch is off), or no header block open.
const OFF: u64 = u64::MAX;
const CLOSED: u64 = u64::MAX - 1;

/// What the reader and the deadline share: when the open header block opened, in ms since
/// `epoch` (or `OFF` / `CLOSED`).
struct Shared {
    epoch: Instant,
    open_since: AtomicU64,
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

/// Resolves when a header block stays open too long.
#[derive(Clone)]
pub struct Deadline {
    shared: Arc<Shared>,
}

/// Wraps `inner`; the [`Deadline`] watches it.
pub fn watch<T>(inner: T) -> (Watched<T>, Deadline) {
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        open_since: AtomicU64::new(CLOSED),
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
    /// Resolves once a header block has been open for `limit`; never for HTTP/1.
    pub async fn expired(&self, limit: Duration) {
        // Checked at half the limit when nothing is open: a block is noticed at most
        // 1.5 x `limit` after it opened, with one timer per connection.
        let recheck = (limit / 2).max(Duration::from_millis(10));
        loop {
            match self.shared.open_since.load(Ordering::Relaxed) {
                OFF => return std::future::pending().await,
                CLOSED => tokio::time::sleep(recheck).await,
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
        if this.frames.parse != Parse::Off && matches!(r, Poll::Ready(Ok(()))) {
            let value = match this.frames.feed(&buf.filled()[before..]) {
                Change::None => None,
                Change::Opened => Some(this.shared.epoch.elapsed().as_millis() as u64),
                Change::Closed => Some(CLOSED),
                Change::Off => Some(OFF),
            };
            if let Some(v) = value {
                this.shared.open_since.store(v, Ordering::Relaxed);
            }
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
        w.shared.open_since.store(OFF, Ordering::Relaxed);
        let off = tokio::time::timeout(Duration::from_secs(60), deadline.expired(limit)).await;
        assert!(off.is_err());
    }
}
