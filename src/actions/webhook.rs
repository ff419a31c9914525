//! `--webhook URL`: POST a JSON description of the new credentials to an HTTP endpoint
//! (`{"set", "generation", "sha256", "serial", "subject", "not_after"}`), with a timeout; any
//! answer but 2xx is a failure (retried with backoff by the runner). Plain `http://` only.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::creds::store::Published;
use crate::creds::validate::rfc3339;

/// The longest one POST may take.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct WebhookAction {
    pub url: hyper::Uri,
}

/// `http://host[:port]/path`; anything else is a usage error.
pub fn parse_url(s: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = s.parse().map_err(|e| format!("--webhook {s:?}: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) => Ok(uri),
        (Some("https"), _) => Err(format!("--webhook {s:?}: https is not supported yet; use an http:// endpoint inside the pod or cluster")),
        _ => Err(format!("--webhook {s:?}: expected http://host[:port]/path")),
    }
}

impl WebhookAction {
    pub(super) async fn run(&self, set: &str, p: &Published) -> Result<String, String> {
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
        let req = Request::post(self.url.clone())
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("mtls-sidecar/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let resp = tokio::time::timeout(WEBHOOK_TIMEOUT, async {
            let resp = client
                .request(req)
                .await
                .map_err(|e| format!("POST {} failed: {e}", self.url))?;
            let status = resp.status();
            // Read (a bounded part of) the body so the connection ends cleanly.
            let _ = tokio::time::timeout(Duration::from_secs(1), resp.into_body().collect()).await;
            Ok::<_, String>(status)
        })
        .await
        .map_err(|_| format!("POST {} timed out after {WEBHOOK_TIMEOUT:?}", self.url))??;
        if resp.is_success() {
            Ok(format!("POST {} answered {resp}", self.url))
        } else {
            Err(format!(
                "POST {} answered {resp}; only 2xx counts as success",
                self.url
            ))
        }
    }
}
