//! Clients for the proxy tests.
//!
//! - `TlsClient`: a blocking rustls client (its own config: a CA bundle, an optional client
//!   certificate, ALPN, TLS versions; never resumes a session, so every connection is a full
//!   handshake that shows the leaf served *now*). `connect` gives a `TlsConn` that records the
//!   server's leaf and can send HTTP/1.1 requests on one kept-alive connection, or be used as
//!   a byte stream (`Read`/`Write`, `shutdown_write` for a half-close).
//!
//! curl and `openssl s_client` live in `cli_clients.rs`; the HTTP/1.1 framing in `http1.rs`.
//!
//! Handshake failure is an `Err`. In TLS 1.3 the server checks the client certificate only
//! after the client has sent its Finished, so `connect` waits (up to `settle`) for the
//! server's first record after the handshake: an alert or a close means refused; a session
//! ticket (rustls servers send them at once) or silence means accepted.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use sha2::{Digest, Sha256};

use super::http1::{read_response, write_request};
pub use super::http1::{Response, IO_TIMEOUT};
use super::pki::{serial_hex, Leaf};

/// SNI and verified name by default: the first DNS SAN of `TestPki::server_spec()` and of the
/// users' guide server certificate.
pub const SERVER_NAME: &str = "api.production.svc.cluster.local";

// === TlsClient ===

/// Builder for `TlsClient`.
#[derive(Clone)]
pub struct TlsClientBuilder {
    ca_pem: String,
    identity: Option<(String, String)>,
    server_name: String,
    alpn: Vec<Vec<u8>>,
    tls12_only: bool,
    settle: Duration,
}

impl TlsClientBuilder {
    /// Present `chain_pem` (leaf first) with `key_pem` (PKCS#8, PKCS#1 or SEC1).
    pub fn identity(mut self, chain_pem: &str, key_pem: &str) -> Self {
        self.identity = Some((chain_pem.to_string(), key_pem.to_string()));
        self
    }

    /// Present `leaf` (its chain and PKCS#8 key).
    pub fn leaf(self, leaf: &Leaf) -> Self {
        let (chain, key) = (leaf.chain_pem.clone(), leaf.key_pkcs8_pem.clone());
        self.identity(&chain, &key)
    }

    /// SNI and the name the server certificate is verified against.
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = name.to_string();
        self
    }

    /// Offer these ALPN protocols, e.g. `&["h2", "http/1.1"]`.
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Offer TLS 1.2 only.
    pub fn tls12_only(mut self) -> Self {
        self.tls12_only = true;
        self
    }

    /// How long `connect` waits after a TLS 1.3 handshake for the server's verdict (see
    /// the module docs). Default 1 s; it returns as soon as a record arrives.
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    pub fn build(self) -> TlsClient {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots
                .add(cert.expect("CA bundle PEM parses"))
                .expect("CA certificate is acceptable as a root");
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("protocol versions supported")
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((chain, key)) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(chain.as_bytes())
                        .collect::<Result<_, _>>()
                        .expect("client chain PEM parses");
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key parses");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client cert and key match")
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        config.resumption = Resumption::disabled();
        TlsClient {
            config: Arc::new(config),
            server_name: ServerName::try_from(self.server_name.clone()).expect("valid server name"),
            settle: self.settle,
        }
    }
}

/// A rustls client configuration to open connections with. See the module docs.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    settle: Duration,
}

impl TlsClient {
    /// Trust the certificates of `ca_pem` (a bundle); no client certificate yet.
    pub fn builder(ca_pem: &str) -> TlsClientBuilder {
        TlsClientBuilder {
            ca_pem: ca_pem.to_string(),
            identity: None,
            server_name: SERVER_NAME.to_string(),
            alpn: Vec::new(),
            tls12_only: false,
            settle: Duration::from_secs(1),
        }
    }

    /// Trust `ca_pem`, present `leaf`.
    pub fn with_leaf(ca_pem: &str, leaf: &Leaf) -> TlsClient {
        Self::builder(ca_pem).leaf(leaf).build()
    }

    /// Trust `ca_pem`, present no client certificate.
    pub fn anonymous(ca_pem: &str) -> TlsClient {
        Self::builder(ca_pem).build()
    }

    /// TCP connect to `addr`, complete the TLS handshake, and (TLS 1.3) wait for the server's
    /// verdict on our certificate. Err describes the failure (alert, close, timeout, refused).
    pub fn connect(&self, addr: &str) -> Result<TlsConn, String> {
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
        let conn = ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(|e| format!("client connection: {e}"))?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| format!("handshake: {e}"))?;
        }
        if stream.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            settle(&mut stream, self.settle)?;
        }
        let peer = stream
            .conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|der| PeerLeaf::from_der(der.as_ref()))
            .ok_or("server sent no certificate")?;
        let alpn = stream
            .conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let version = format!("{:?}", stream.conn.protocol_version());
        Ok(TlsConn {
            stream: BufReader::new(stream),
            peer,
            alpn,
            version,
        })
    }

    /// One request on a fresh connection: `connect` then `GET path`.
    pub fn get(&self, addr: &str, path: &str) -> Result<Response, String> {
        self.connect(addr)?.get(path)
    }
}

/// Wait up to `wait` for the first record after the handshake: Err on an alert or a close.
fn settle(
    stream: &mut StreamOwned<ClientConnection, TcpStream>,
    wait: Duration,
) -> Result<(), String> {
    if wait.is_zero() {
        return Ok(());
    }
    stream.sock.set_read_timeout(Some(wait)).expect("timeout");
    let result = match stream.conn.read_tls(&mut stream.sock) {
        Ok(0) => Err("server closed the connection right after the handshake".to_string()),
        Ok(_) => match stream.conn.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => {
                // Flush our own alert, if any, as a well-behaved client would.
                let _ = stream.conn.write_tls(&mut stream.sock);
                Err(format!("refused after the handshake: {e}"))
            }
        },
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
        Err(e) => Err(format!("after the handshake: {e}")),
    };
    stream
        .sock
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("timeout");
    result
}

/// The server's leaf as seen in a handshake.
#[derive(Debug, Clone)]
pub struct PeerLeaf {
    pub der: Vec<u8>,
    /// Lowercase hex, no colons (as `Leaf::serial_hex` and `/status`).
    pub serial_hex: String,
    pub sha256_hex: String,
}

impl PeerLeaf {
    fn from_der(der: &[u8]) -> PeerLeaf {
        PeerLeaf {
            der: der.to_vec(),
            serial_hex: serial_hex(der),
            sha256_hex: hex::encode(Sha256::digest(der)),
        }
    }
}

// === TlsConn ===

/// An established TLS connection. See the module docs.
pub struct TlsConn {
    stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
    /// The leaf the server presented.
    pub peer: PeerLeaf,
    /// The negotiated ALPN protocol.
    pub alpn: Option<String>,
    /// The negotiated version, e.g. `Some(TLSv1_3)`.
    pub version: String,
}

impl TlsConn {
    /// `GET path` on this connection.
    pub fn get(&mut self, path: &str) -> Result<Response, String> {
        self.request("GET", path, &[], b"")
    }

    /// Send one HTTP/1.1 request (with `Host` and `Content-Length` added) and read the
    /// response. Err if the connection fails or closes before a complete response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        write_request(
            self.stream.get_mut(),
            (method, path, SERVER_NAME),
            headers,
            body,
        )?;
        read_response(&mut self.stream).map_err(|e| format!("response to {method} {path}: {e}"))
    }

    /// Read one response, for a request written by hand.
    pub fn response(&mut self) -> Result<Response, String> {
        read_response(&mut self.stream)
    }

    /// True if the server ends the connection (EOF, close_notify, reset) within `timeout`;
    /// false if it stays open (or sends something) that long.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.set_read_timeout(Some(Duration::from_millis(100)));
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
        self.set_read_timeout(Some(IO_TIMEOUT));
        closed
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        let _ = self.stream.get_ref().sock.set_read_timeout(timeout);
    }

    /// Send close_notify and shut down the TCP write side; reading still works.
    pub fn shutdown_write(&mut self) -> Result<(), String> {
        let stream = self.stream.get_mut();
        stream.conn.send_close_notify();
        while stream.conn.wants_write() {
            stream
                .conn
                .write_tls(&mut stream.sock)
                .map_err(|e| format!("close_notify: {e}"))?;
        }
        stream
            .sock
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown(Write): {e}"))
    }

    /// Read until the server ends the stream (close_notify or a bare TCP EOF).
    pub fn read_to_eof(&mut self) -> Result<Vec<u8>, String> {
        let mut data = Vec::new();
        match self.stream.read_to_end(&mut data) {
            Ok(_) => Ok(data),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(data),
            Err(e) => Err(format!("read after {} bytes: {e}", data.len())),
        }
    }
}

impl Read for TlsConn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for TlsConn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.get_mut().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.get_mut().flush()
    }
}
