//! HTTP/1.1 for the tests' own clients, over any byte stream: `write_request` sends one request,
//! `read_response` reads one response (Content-Length, chunked, or to EOF). `TlsConn` uses
//! them over TLS; `PlainConn` over plain TCP, as an app talks to `client`'s loopback listener.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Bound on connect, and on every read and write of a connection (`PlainConn`, `TlsConn`).
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Response {
    /// From the status line, e.g. `HTTP/1.1`.
    pub version: String,
    pub status: u16,
    /// Lowercased names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `Connection: close` was sent.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }
}

/// Send one request: the request line, `Host: host`, `headers`, `Content-Length`, `body`.
pub fn write_request(
    w: &mut impl Write,
    (method, path, host): (&str, &str, &str),
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), String> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out)
        .and_then(|_| w.flush())
        .map_err(|e| format!("send {method} {path}: {e}"))
}

/// Read one response (skipping 1xx). Err if the stream fails or ends before a complete one.
pub fn read_response(r: &mut impl BufRead) -> Result<Response, String> {
    loop {
        let status_line = line(r)?;
        if status_line.is_empty() {
            return Err("connection closed before a response".into());
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let line = line(r)?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| format!("bad header line {line:?}"))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        let mut response = Response {
            version: status_line
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
            status,
            headers,
            body: Vec::new(),
        };
        response.body = read_body(r, &response)?;
        return Ok(response);
    }
}

fn read_body(r: &mut impl BufRead, response: &Response) -> Result<Vec<u8>, String> {
    if response.status == 204 || response.status == 304 {
        return Ok(Vec::new());
    }
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        loop {
            let size_line = line(r)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                // Trailers, then the blank line.
                while !line(r)?.is_empty() {}
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])
                .map_err(|e| format!("chunk: {e}"))?;
            line(r)?;
        }
    }
    if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len}"))?;
        let mut body = vec![0; len];
        r.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
        return Ok(body);
    }
    // Neither: the body runs to the end of the connection.
    let mut body = Vec::new();
    match r.read_to_end(&mut body) {
        Ok(_) => Ok(body),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(body),
        Err(e) => Err(format!("body: {e}")),
    }
}

/// One CRLF-terminated line without the CRLF; "" at EOF.
fn line(r: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof && line.is_empty() => Ok(line),
        Err(e) => Err(e.to_string()),
    }
}

// === PlainConn ===

/// A plaintext TCP connection speaking HTTP/1.1 (kept alive between requests unless a
/// request says `Connection: close`), or carrying raw bytes.
pub struct PlainConn {
    stream: BufReader<TcpStream>,
    host: String,
}

impl PlainConn {
    /// Connect to `addr`; requests carry `Host: host`.
    pub fn connect(addr: &str, host: &str) -> Result<PlainConn, String> {
        let sock_addr: SocketAddr = addr
            .to_socket_addrs()
            .map_err(|e| format!("resolve {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} resolves to nothing"))?;
        let tcp = TcpStream::connect_timeout(&sock_addr, IO_TIMEOUT)
            .map_err(|e| format!("tcp connect to {addr}: {e}"))?;
        tcp.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        tcp.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        tcp.set_nodelay(true).expect("nodelay");
        Ok(PlainConn {
            stream: BufReader::new(tcp),
            host: host.to_string(),
        })
    }

    /// `GET path` on this connection.
    pub fn get(&mut self, path: &str) -> Result<Response, String> {
        self.request("GET", path, &[], b"")
    }

    /// Send one request (with `Host` and `Content-Length` added) and read the response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        write_request(
            self.stream.get_mut(),
            (method, path, &self.host),
            headers,
            body,
        )?;
        read_response(&mut self.stream).map_err(|e| format!("response to {method} {path}: {e}"))
    }

    /// True if the peer ends the connection (EOF or reset) within `timeout` without sending
    /// anything; false if it stays open (or sends bytes) that long.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let sock = self.stream.get_ref();
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        let closed = loop {
            let mut byte = [0u8; 1];
            match self.stream.read(&mut byte) {
                Ok(0) => break true,
                Ok(_) => break false,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if Instant::now() > deadline {
                        break false;
                    }
                }
                Err(_) => break true,
            }
        };
        let _ = self.stream.get_ref().set_read_timeout(Some(IO_TIMEOUT));
        closed
    }

    /// Read until the peer ends the stream.
    pub fn read_to_eof(&mut self) -> Result<Vec<u8>, String> {
        let mut data = Vec::new();
        match self.stream.read_to_end(&mut data) {
            Ok(_) => Ok(data),
            Err(e) => Err(format!("read after {} bytes: {e}", data.len())),
        }
    }
}

impl Read for PlainConn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for PlainConn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.get_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.get_mut().flush()
    }
}
