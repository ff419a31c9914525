//! `H2Conn`: a raw HTTP/2 client for attack tests, frame by frame over a blocking rustls
//! connection (ALPN `h2`, a client certificate), where a real client library would refuse to
//! misbehave: rapid resets, CONTINUATION floods and trickles, HPACK bombs, PINGs with no request.
//!
//! `connect` sends the client preface and an empty SETTINGS frame and ACKs the server's SETTINGS.
//! Frames go out with `write_frame` (or the `headers`, `continuation`, `data`, `rst_stream`,
//! `ping` helpers); `frame_bytes` + `write_raw` batch many frames into one write, or trickle a
//! frame's bytes. `read_frame` returns the next frame, `None` once the connection is closed (EOF,
//! close_notify, reset, alert), or `Err` when nothing arrived in time; reading ACKs the server's
//! SETTINGS and PINGs, and returns connection flow-control credit for DATA, as a client must.
//! `get` is one well-formed request with its response status.
//!
//! HPACK requests are encoded by hand, never Huffman-coded: `hpack_literal` (literal without
//! indexing, new name), `hpack_literal_incremental` (adds the field to the server's dynamic
//! table, first at index 62) and `hpack_indexed`. `response_status` decodes a response's
//! `:status` as h2 servers encode it (static index, or a literal, Huffman-coded or not).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::http1::IO_TIMEOUT;
use super::pki::Leaf;
use super::tls_client::SERVER_NAME;

/// The client connection preface (RFC 9113 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    /// DATA, HEADERS.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING.
    pub const ACK: u8 = 0x1;
    /// HEADERS, CONTINUATION.
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    /// HEADERS.
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RFC 9113 7).
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// The name of error code `c`, or its number.
pub fn code_name(c: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES
        .get(c as usize)
        .map_or_else(|| format!("error {c:#x}"), |n| n.to_string())
}

/// One frame received.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }

    pub fn is_goaway(&self) -> bool {
        self.kind == kind::GOAWAY
    }

    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            kind::RST_STREAM => 0,
            kind::GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The header block fragment of a HEADERS or CONTINUATION frame (padding and priority
    /// fields removed).
    pub fn header_block(&self) -> &[u8] {
        let mut block = &self.payload[..];
        if self.kind != kind::HEADERS {
            return block;
        }
        if self.has(flag::PADDED) && !block.is_empty() {
            let pad = block[0] as usize;
            block = &block[1..block.len().saturating_sub(pad).max(1)];
        }
        if self.has(flag::PRIORITY) {
            block = block.get(5..).unwrap_or(&[]);
        }
        block
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.kind {
            kind::DATA => "DATA",
            kind::HEADERS => "HEADERS",
            kind::PRIORITY => "PRIORITY",
            kind::RST_STREAM => "RST_STREAM",
            kind::SETTINGS => "SETTINGS",
            kind::PUSH_PROMISE => "PUSH_PROMISE",
            kind::PING => "PING",
            kind::GOAWAY => "GOAWAY",
            kind::WINDOW_UPDATE => "WINDOW_UPDATE",
            kind::CONTINUATION => "CONTINUATION",
            _ => "UNKNOWN",
        };
        write!(
            f,
            "{name}(type={:#x} flags={:#x} stream={} len={}",
            self.kind,
            self.flags,
            self.stream_id,
            self.payload.len()
        )?;
        if let Some(c) = self.error_code() {
            write!(f, " {}", code_name(c))?;
        }
        if self.kind == kind::GOAWAY && self.payload.len() > 8 {
            write!(f, " {:?}", String::from_utf8_lossy(&self.payload[8..]))?;
        }
        if self.kind == kind::HEADERS {
            if let Some(status) = response_status(self.header_block()) {
                write!(f, " :status {status}")?;
            }
        }
        write!(f, ")")
    }
}

/// A frame on the wire: the 9-byte header, then `payload`.
pub fn frame_bytes(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24, "frame payload of {len} bytes does not fit");
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

// === HPACK (RFC 7541), encoding without Huffman ===

/// An integer with an `prefix_bits`-bit prefix, the first byte's high bits set to `first`.
pub fn hpack_int(first: u8, prefix_bits: u8, value: usize) -> Vec<u8> {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        return vec![first | value as u8];
    }
    let mut out = vec![first | max as u8];
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

/// A string literal, not Huffman-coded.
fn hpack_string(s: &[u8]) -> Vec<u8> {
    let mut out = hpack_int(0x00, 7, s.len());
    out.extend_from_slice(s);
    out
}

/// Literal header field without indexing, new name (`0x00`): the table is left alone.
pub fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(hpack_string(name.as_bytes()));
    out.extend(hpack_string(value.as_bytes()));
    out
}

/// Literal header field with incremental indexing, new name (`0x40`): the server adds it to
/// its dynamic table, at index 62 (the newest entry).
pub fn hpack_literal_incremental(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x40];
    out.extend(hpack_string(name.as_bytes()));
    out.extend(hpack_string(value.as_bytes()));
    out
}

/// Indexed header field: entry `index` of the static (1..=61) or dynamic (62..) table.
pub fn hpack_indexed(index: usize) -> Vec<u8> {
    hpack_int(0x80, 7, index)
}

/// The header block of `GET path` to `SERVER_NAME` over https, literals only.
pub fn get_block(path: &str) -> Vec<u8> {
    let mut block = hpack_literal(":method", "GET");
    block.extend(hpack_literal(":scheme", "https"));
    block.extend(hpack_literal(":path", path));
    block.extend(hpack_literal(":authority", SERVER_NAME));
    block
}

/// The `:status` of a response header block, if its first field is `:status` as h2 servers
/// encode it: an indexed static entry (8..=14), or a literal with the static name `:status`
/// and a plain or Huffman-coded value of digits. None otherwise (e.g. a dynamic-table index).
pub fn response_status(block: &[u8]) -> Option<u16> {
    const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let first = *block.first()?;
    if first & 0x80 != 0 {
        let index = (first & 0x7f) as usize;
        return STATIC.get(index.checked_sub(8)?).copied();
    }
    // Literal with incremental indexing (6-bit name index), without indexing or never
    // indexed (4-bit): the name must be static entry 8..=14 (`:status`).
    let name = if first & 0xc0 == 0x40 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if !(8..=14).contains(&name) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let len = (len_byte & 0x7f) as usize;
    let raw = block.get(2..2 + len)?;
    let digits = if len_byte & 0x80 != 0 {
        huffman_digits(raw)?
    } else {
        String::from_utf8(raw.to_vec()).ok()?
    };
    digits.parse().ok()
}

/// Decode a Huffman-coded string made only of the digits 0-9 (RFC 7541 Appendix B).
fn huffman_digits(raw: &[u8]) -> Option<String> {
    // (code, bit length) of '0'..='9'.
    const CODES: [(u32, u32); 10] = [
        (0x0, 5),
        (0x1, 5),
        (0x2, 5),
        (0x19, 6),
        (0x1a, 6),
        (0x1b, 6),
        (0x1c, 6),
        (0x1d, 6),
        (0x1e, 6),
        (0x1f, 6),
    ];
    let bits: Vec<u8> = raw
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut at = 0;
    'next: while at < bits.len() {
        for (digit, (code, len)) in CODES.iter().enumerate() {
            let len = *len as usize;
            let Some(chunk) = bits.get(at..at + len) else {
                continue;
            };
            let value = chunk.iter().fold(0u32, |v, b| v << 1 | u32::from(*b));
            if value == *code {
                out.push(char::from(b'0' + digit as u8));
                at += len;
                continue 'next;
            }
        }
        // Padding: fewer than 8 one bits (the EOS prefix).
        return bits[at..].iter().all(|b| *b == 1).then_some(out);
    }
    Some(out)
}

// === H2Conn ===

/// A raw HTTP/2 connection. See the module docs.
pub struct H2Conn {
    tls: StreamOwned<ClientConnection, TcpStream>,
    /// Received bytes not yet returned as frames.
    buf: Vec<u8>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

impl H2Conn {
    /// `connect_timeout` with `IO_TIMEOUT`.
    pub fn connect(addr: &str, ca_pem: &str, leaf: &Leaf) -> Result<H2Conn, String> {
        Self::connect_timeout(addr, ca_pem, leaf, IO_TIMEOUT)
    }

    /// TCP connect to `addr`, TLS handshake trusting `ca_pem` and presenting `leaf` with ALPN
    /// `h2` (Err unless the server picks it), send the preface and an empty SETTINGS, and
    /// wait for the server's SETTINGS (ACKed). `timeout` bounds the connect, each handshake
    /// read, the wait for SETTINGS and every later write.
    pub fn connect_timeout(
        addr: &str,
        ca_pem: &str,
        leaf: &Leaf,
        timeout: Duration,
    ) -> Result<H2Conn, String> {
        let sock_addr: SocketAddr = addr
            .to_socket_addrs()
            .map_err(|e| format!("resolve {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} resolves to nothing"))?;
        let tcp = TcpStream::connect_timeout(&sock_addr, timeout)
            .map_err(|e| format!("tcp connect to {addr}: {e}"))?;
        tcp.set_read_timeout(Some(timeout)).expect("timeout");
        tcp.set_write_timeout(Some(timeout)).expect("timeout");
        tcp.set_nodelay(true).expect("nodelay");
        let conn = ClientConnection::new(client_config(ca_pem, leaf), server_name())
            .map_err(|e| format!("client connection: {e}"))?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        if tls.conn.alpn_protocol() != Some(b"h2") {
            return Err(format!(
                "server chose ALPN {:?}, not h2",
                tls.conn
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
            ));
        }
        let mut h2 = H2Conn {
            tls,
            buf: Vec::new(),
            closed: None,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame_bytes(kind::SETTINGS, 0, 0, &[]));
        h2.write_raw(&hello)?;
        match h2.read_frame(timeout)? {
            Some(f) if f.kind == kind::SETTINGS && !f.has(flag::ACK) => Ok(h2),
            Some(f) => Err(format!("expected the server's SETTINGS first, got {f:?}")),
            None => Err(format!(
                "closed before the server's SETTINGS: {}",
                h2.closed_reason()
            )),
        }
    }

    /// Write `bytes` as they are (whole frames, or a piece of one), flushed.
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.tls
            .write_all(bytes)
            .and_then(|_| self.tls.flush())
            .map_err(|e| format!("write of {} bytes: {e}", bytes.len()))
    }

    /// Write one frame.
    pub fn write_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: &[u8],
    ) -> Result<(), String> {
        self.write_raw(&frame_bytes(kind, flags, stream_id, payload))
    }

    /// HEADERS carrying `block` (see the `hpack_*` encoders).
    pub fn headers(
        &mut self,
        stream_id: u32,
        block: &[u8],
        end_headers: bool,
        end_stream: bool,
    ) -> Result<(), String> {
        let flags = if end_headers { flag::END_HEADERS } else { 0 }
            | if end_stream { flag::END_STREAM } else { 0 };
        self.write_frame(kind::HEADERS, flags, stream_id, block)
    }

    /// CONTINUATION carrying more of a header block.
    pub fn continuation(
        &mut self,
        stream_id: u32,
        block: &[u8],
        end_headers: bool,
    ) -> Result<(), String> {
        let flags = if end_headers { flag::END_HEADERS } else { 0 };
        self.write_frame(kind::CONTINUATION, flags, stream_id, block)
    }

    /// DATA.
    pub fn data(&mut self, stream_id: u32, payload: &[u8], end_stream: bool) -> Result<(), String> {
        let flags = if end_stream { flag::END_STREAM } else { 0 };
        self.write_frame(kind::DATA, flags, stream_id, payload)
    }

    /// RST_STREAM with error `code` (see `code`).
    pub fn rst_stream(&mut self, stream_id: u32, code: u32) -> Result<(), String> {
        self.write_frame(kind::RST_STREAM, 0, stream_id, &code.to_be_bytes())
    }

    /// PING (not an ACK) with opaque `data`.
    pub fn ping(&mut self, data: [u8; 8]) -> Result<(), String> {
        self.write_frame(kind::PING, 0, 0, &data)
    }

    /// The next frame: `Ok(None)` once the connection is closed (EOF, close_notify, reset,
    /// alert: see `closed_reason`), `Err` if no whole frame arrived within `timeout`. ACKs the
    /// server's SETTINGS and PINGs, and gives back connection window for DATA (write errors
    /// there are left for the next read or write to find).
    pub fn read_frame(&mut self, timeout: Duration) -> Result<Option<Frame>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.pop_frame() {
                self.answer(&frame);
                return Ok(Some(frame));
            }
            if self.closed.is_some() {
                return Ok(None);
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Err(format!("no frame within {timeout:?}"));
            };
            self.fill(left.max(Duration::from_millis(1)));
        }
    }

    /// Every frame that arrives within `wait` (stops early once the connection is closed).
    pub fn drain(&mut self, wait: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + wait;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) | Err(_) => return frames,
            }
        }
    }

    /// True once the server ended the connection (seen by a read).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// How the connection ended ("open" while it has not).
    pub fn closed_reason(&self) -> String {
        self.closed.clone().unwrap_or_else(|| "open".into())
    }

    /// Read and discard frames until the server ends the connection (true) or `timeout`
    /// passes (false). A GOAWAY alone is not a close.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// `GET path` on `stream_id` (odd, above every stream used before): its response status,
    /// once the response has ended (its body is read and dropped). Err if the stream is reset,
    /// the connection goes away or closes first, or the response takes over `timeout`.
    pub fn get(&mut self, stream_id: u32, path: &str, timeout: Duration) -> Result<u16, String> {
        self.headers(stream_id, &get_block(path), true, true)?;
        let deadline = Instant::now() + timeout;
        let mut status = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self
                .read_frame(left)
                .map_err(|e| format!("GET {path} on stream {stream_id}: {e}"))?
                .ok_or_else(|| {
                    format!(
                        "GET {path} on stream {stream_id}: connection closed ({})",
                        self.closed_reason()
                    )
                })?;
            if frame.is_goaway() {
                let last = frame.payload.get(..4).map_or(0, |b| {
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
                });
                if last < stream_id {
                    return Err(format!("GET {path} on stream {stream_id}: {frame:?}"));
                }
            }
            if frame.stream_id != stream_id {
                continue;
            }
            match frame.kind {
                kind::RST_STREAM => return Err(format!("GET {path}: {frame:?}")),
                kind::HEADERS if status.is_none() => {
                    status = Some(response_status(frame.header_block()).ok_or_else(|| {
                        format!("GET {path}: no :status this client decodes in {frame:?}")
                    })?);
                }
                _ => {}
            }
            if frame.has(flag::END_STREAM) && matches!(frame.kind, kind::HEADERS | kind::DATA) {
                return status.ok_or_else(|| format!("GET {path}: stream ended without headers"));
            }
        }
    }

    /// Answer what a client must: SETTINGS with an ACK, PING with a PING ACK, DATA with
    /// connection-level WINDOW_UPDATE.
    fn answer(&mut self, frame: &Frame) {
        let reply = match frame.kind {
            kind::SETTINGS if !frame.has(flag::ACK) => {
                frame_bytes(kind::SETTINGS, flag::ACK, 0, &[])
            }
            kind::PING if !frame.has(flag::ACK) => {
                frame_bytes(kind::PING, flag::ACK, 0, &frame.payload)
            }
            kind::DATA if !frame.payload.is_empty() => {
                let credit = frame.payload.len() as u32;
                frame_bytes(kind::WINDOW_UPDATE, 0, 0, &credit.to_be_bytes())
            }
            _ => return,
        };
        let _ = self.write_raw(&reply);
    }

    /// A whole frame from the front of `buf`, if there is one.
    fn pop_frame(&mut self) -> Option<Frame> {
        let head = self.buf.get(..9)?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        if self.buf.len() < 9 + len {
            return None;
        }
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream_id: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload: self.buf[9..9 + len].to_vec(),
        };
        self.buf.drain(..9 + len);
        Some(frame)
    }

    /// Read what arrives within `wait` into `buf`, or note that the connection closed.
    fn fill(&mut self, wait: Duration) {
        let _ = self.tls.sock.set_read_timeout(Some(wait));
        let mut chunk = [0u8; 16 * 1024];
        match self.tls.read(&mut chunk) {
            Ok(0) => self.closed = Some("EOF".into()),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => self.closed = Some(e.to_string()),
        }
    }
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("valid server name")
}

/// aws-lc-rs, TLS 1.3 and 1.2, roots from `ca_pem`, `leaf` as the client identity, ALPN `h2`,
/// no resumption (as `TlsClient`).
fn client_config(ca_pem: &str, leaf: &Leaf) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("CA bundle PEM parses"))
            .expect("CA certificate is acceptable as a root");
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("client chain PEM parses");
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pkcs8_pem.as_bytes()).expect("key parses");
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions supported")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert and key match");
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = Resumption::disabled();
    Arc::new(config)
}
