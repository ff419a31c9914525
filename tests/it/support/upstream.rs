//! `HttpUpstream`: an HTTP/1.1 server (hyper, on its own tokio runtime in a background thread)
//! on `127.0.0.1:0`, plaintext or TLS (`start_tls`), stopped on Drop, that answers every request with 200
//! and a JSON echo of what it received: `{"method", "path", "headers": {lowercased name:
//! [values...]}, "body"}`, with status 200 unless its query has `status=N`. A request can be
//! slowed down with `?delay_ms=N` in its query, or
//! every request with `set_delay`. With `?early=1` it answers `200 early` at once and reads the
//! request body afterwards, counting its bytes (`early_body_bytes`), as apps that answer before
//! the upload is over do. It counts connections (accepted, and open now) and requests and keeps the last
//! request it answered (`last`). `Echoed` parses its
//! replies. The byte-level upstream for `--protocol tcp` is `tcp_upstream.rs`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

// === HttpUpstream ===

#[derive(Default)]
struct HttpState {
    connections: AtomicUsize,
    /// Connections accepted and not closed yet.
    open: AtomicUsize,
    /// Requests whose head arrived (counted before any delay).
    started: AtomicUsize,
    /// Requests answered.
    finished: AtomicUsize,
    delay_ms: AtomicU64,
    last: std::sync::Mutex<Option<Value>>,
    /// Body bytes read after `?early=1` answers.
    early_body_bytes: AtomicU64,
}

/// A plaintext HTTP/1.1 echo server. See the module docs.
pub struct HttpUpstream {
    addr: SocketAddr,
    state: Arc<HttpState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpUpstream {
    /// Listen on `127.0.0.1:0` and serve plaintext until dropped.
    pub fn start() -> HttpUpstream {
        Self::spawn(None)
    }

    /// Listen on `127.0.0.1:0` and serve TLS (no client certificates) with this chain and
    /// key until dropped.
    pub fn start_tls(chain_pem: &str, key_pem: &str) -> HttpUpstream {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("upstream chain");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("upstream key");
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("upstream TLS config");
        Self::spawn(Some(Arc::new(cfg)))
    }

    fn spawn(tls: Option<Arc<rustls::ServerConfig>>) -> HttpUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("upstream address");
        let state = Arc::new(HttpState::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("http-upstream".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("upstream runtime");
                rt.block_on(serve_http(listener, tls, thread_state, stopped));
                // Dropping the runtime cancels every connection task.
            })
            .expect("spawn upstream thread");
        HttpUpstream {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`, for `--target`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TCP connections open now (accepted, not closed yet).
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// Requests received so far (counted when the head arrives, before any delay).
    pub fn requests_started(&self) -> usize {
        self.state.started.load(Ordering::SeqCst)
    }

    /// Requests answered so far.
    pub fn requests_finished(&self) -> usize {
        self.state.finished.load(Ordering::SeqCst)
    }

    /// The echo (see the module docs) of the last request answered, if any.
    pub fn last(&self) -> Option<Echoed> {
        let last = self.state.last.lock().unwrap().clone()?;
        Some(Echoed::parse(last.to_string().as_bytes()))
    }

    /// Request body bytes read after the `?early=1` answers.
    pub fn early_body_bytes(&self) -> u64 {
        self.state.early_body_bytes.load(Ordering::SeqCst)
    }

    /// Delay every later response by `delay` (a request's own `?delay_ms=N` wins).
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<HttpState>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let state = state.clone();
        let tls = tls.clone().map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            let _open = OpenConn::count(state.clone());
            let service = hyper::service::service_fn(move |req| echo(req, state.clone()));
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            }
        });
    }
}

/// Counts a connection as open while its task runs.
struct OpenConn(Arc<HttpState>);

impl OpenConn {
    fn count(state: Arc<HttpState>) -> Self {
        state.open.fetch_add(1, Ordering::SeqCst);
        OpenConn(state)
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn echo(
    req: Request<Incoming>,
    state: Arc<HttpState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.started.fetch_add(1, Ordering::SeqCst);
    let (parts, mut body) = req.into_parts();
    if parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "early=1"))
    {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    state
                        .early_body_bytes
                        .fetch_add(data.len() as u64, Ordering::SeqCst);
                }
            }
        });
        return Ok(Response::new(Full::new(Bytes::from_static(b"early"))));
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let query = |name: &str| {
        parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let delay_ms = query("delay_ms").unwrap_or_else(|| state.delay_ms.load(Ordering::SeqCst));
    let status = query("status").unwrap_or(200) as u16;
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let reply = json!({
        "method": parts.method.as_str(),
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    *state.last.lock().unwrap() = Some(reply.clone());
    state.finished.fetch_add(1, Ordering::SeqCst);
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(reply.to_string())))
        .expect("valid response");
    Ok(response)
}

/// What `HttpUpstream` received, parsed from its JSON reply.
#[derive(Debug, Clone)]
pub struct Echoed {
    pub method: String,
    pub path: String,
    /// Lowercased header name -> every value, in arrival order.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
}

impl Echoed {
    /// Parse a reply body of `HttpUpstream`; panics (with the body) if it is not one.
    pub fn parse(body: &[u8]) -> Echoed {
        let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "not an upstream echo ({e}): {}",
                String::from_utf8_lossy(body)
            )
        });
        let headers = v["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, vals)| {
                        let vals = vals
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|x| x.as_str().unwrap_or("").to_string())
                                    .collect()
                            })
                            .unwrap_or_default();
                        (k.clone(), vals)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Echoed {
            method: v["method"].as_str().unwrap_or("").to_string(),
            path: v["path"].as_str().unwrap_or("").to_string(),
            headers,
            body: v["body"].as_str().unwrap_or("").to_string(),
        }
    }

    /// Every value of header `name` (any case) the upstream received.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of header `name`; panics if it came zero or several times.
    pub fn one(&self, name: &str) -> String {
        match self.all(name).as_slice() {
            [one] => one.clone(),
            other => panic!(
                "upstream got {} `{name}` headers, expected exactly one: {other:?}; all headers: {:?}",
                other.len(),
                self.headers
            ),
        }
    }
}
