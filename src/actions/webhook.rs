//! `--webhook URL`: POST a JSON description of the new credentials to an HTTP(S) endpoint
//! (`{"set", "generation", "sha256", "serial", "subject", "not_after"}`), with a timeout; any
//! answer but 2xx is a failure (retried with backoff by the runner). An `https://` endpoint is
//! verified against `--webhook-ca FILE` when given, otherwise against the system trust store;
//! the trust anchors are loaded once at start-up. One connection per POST (posts are rare).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::error::WebhookError;
use super::outcome::ActionOk;
use crate::creds::store::Published;
use crate::creds::validate::rfc3339;

/// The longest one POST may take.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct WebhookAction {
    url: hyper::Uri,
    /// `scheme://host:port/…` for logs: webhook paths and queries often carry a token.
    shown: String,
    host: String,
    port: u16,
    /// Present for https:// endpoints.
    tls: Option<Arc<ClientConfig>>,
}

/// Why a webhook cannot be set up; [`WebhookSetupError::input`] says whether the URL or the CA
/// bundle is at fault, for the layer that knows the flags.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    #[error("{url:?} is not a URL ({detail}); expected http(s)://host[:port]/path")]
    BadUrl { url: String, detail: String },
    #[error("{url:?}: expected http(s)://host[:port]/path")]
    NotHttp { url: String },
    #[error("user:password@ in the URL is not supported (it would be sent as the Host header); put a token in the path or query")]
    UserInfo,
    #[error("a CA bundle is only used with an https:// URL, not an http:// one")]
    CaWithHttp,
    #[error("{path}: {detail}", path = path.display())]
    CaFile { path: PathBuf, detail: String },
    #[error("{path}: no usable CA certificate (expected PEM `CERTIFICATE` blocks)", path = path.display())]
    CaEmpty { path: PathBuf },
    #[error("https:// needs trust anchors, but the system trust store holds no CA certificates{why}; give a CA bundle")]
    NoSystemRoots { why: String },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsBuildError),
}

/// What a [`WebhookSetupError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookInput {
    Url,
    Ca,
}

impl WebhookSetupError {
    pub fn input(&self) -> WebhookInput {
        match self {
            WebhookSetupError::CaFile { .. }
            | WebhookSetupError::CaEmpty { .. }
            | WebhookSetupError::CaWithHttp => WebhookInput::Ca,
            _ => WebhookInput::Url,
        }
    }
}

impl WebhookAction {
    /// Checks `url` (`http://` or `https://host[:port]/path`) and, for https, loads the trust
    /// anchors from `ca` or the system store.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Self, WebhookSetupError> {
        let uri: hyper::Uri =
            url.parse().map_err(
                |e: hyper::http::uri::InvalidUri| WebhookSetupError::BadUrl {
                    url: url.into(),
                    detail: e.to_string(),
                },
            )?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(WebhookSetupError::UserInfo);
        }
        let not_http = || WebhookSetupError::NotHttp { url: url.into() };
        let host = uri
            .host()
            .ok_or_else(not_http)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let (port, tls) = match uri.scheme_str() {
            Some("http") => {
                if ca.is_some() {
                    return Err(WebhookSetupError::CaWithHttp);
                }
                (uri.port_u16().unwrap_or(80), None)
            }
            Some("https") => {
                let roots = match ca {
                    Some(file) => roots_from_file(file)?,
                    None => system_roots()?,
                };
                (
                    uri.port_u16().unwrap_or(443),
                    Some(crate::tls::https_client(roots)?),
                )
            }
            _ => return Err(not_http()),
        };
        let shown = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().map(|a| a.as_str()).unwrap_or_default(),
            if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
                "/…"
            } else {
                "/"
            }
        );
        Ok(WebhookAction {
            url: uri,
            shown,
            host,
            port,
            tls,
        })
    }

    pub(super) async fn run(&self, set: &str, p: &Published) -> Result<ActionOk, WebhookError> {
        let leaf = p.bundle.leaf();
        let body = serde_json::json!({
            "set": set,
            "generation": p.generation,
            "sha256": leaf.sha256,
            "serial": leaf.serial,
            "subject": leaf.subject,
            "not_after": rfc3339(leaf.not_after),
        })
        .to_string();
        let status = tokio::time::timeout(WEBHOOK_TIMEOUT, self.post(body))
            .await
            .map_err(|_| WebhookError::Timeout {
                url: self.shown.clone(),
                after: WEBHOOK_TIMEOUT,
            })??;
        let url = self.shown.clone();
        if status.is_success() {
            Ok(ActionOk::Posted { url, status })
        } else {
            Err(WebhookError::Status { url, status })
        }
    }

    async fn post(&self, body: String) -> Result<hyper::StatusCode, WebhookError> {
        let url = || self.shown.clone();
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| WebhookError::Connect {
                url: url(),
                host: self.host.clone(),
                port: self.port,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.exchange(tcp, body).await,
            Some(cfg) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|source| {
                    WebhookError::ServerName {
                        url: url(),
                        host: self.host.clone(),
                        source,
                    }
                })?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|source| WebhookError::Tls { url: url(), source })?;
                self.exchange(tls, body).await
            }
        }
    }

    /// One HTTP/1.1 request on `io`; reads (a bounded part of) the answer's body so the
    /// connection ends cleanly.
    async fn exchange<IO>(&self, io: IO, body: String) -> Result<hyper::StatusCode, WebhookError>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let http = |source| WebhookError::Http {
            url: self.shown.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http)?;
        let conn = tokio::spawn(conn);
        let path = self.url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let authority = self.url.authority().map(|a| a.as_str()).unwrap_or_default();
        let req = Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("mtls-sidecar/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|source| WebhookError::Request {
                url: self.shown.clone(),
                source,
            })?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let _ = tokio::time::timeout(Duration::from_secs(1), resp.into_body().collect()).await;
        conn.abort();
        Ok(status)
    }
}

/// The certificates of the webhook's CA bundle.
fn roots_from_file(file: &Path) -> Result<RootCertStore, WebhookSetupError> {
    let bad = |e: rustls::pki_types::pem::Error| WebhookSetupError::CaFile {
        path: file.to_path_buf(),
        detail: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(bad)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(WebhookSetupError::CaEmpty {
            path: file.to_path_buf(),
        });
    }
    Ok(roots)
}

/// The system trust store (honours SSL_CERT_FILE / SSL_CERT_DIR).
fn system_roots() -> Result<RootCertStore, WebhookSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(WebhookSetupError::NoSystemRoots { why });
    }
    Ok(roots)
}
