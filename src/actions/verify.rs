//! `--verify-addr HOST:PORT`: after the other actions, handshake with the app until it serves
//! the newly published leaf (same SHA-256), within `--verify-timeout`. nginx answers a SIGHUP
//! with success even when its reload fails; this is how an operator learns that it did.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::error::{ProbeError, VerifyError};
use super::outcome::ActionOk;
use crate::creds::store::Published;

#[derive(Clone, Debug)]
pub struct VerifyAction {
    pub addr: String,
    pub timeout: Duration,
}

/// Time between probes.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// The longest one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl VerifyAction {
    pub(super) async fn run(&self, p: &Published) -> Result<ActionOk, VerifyError> {
        let want = &p.bundle.leaf().sha256;
        let start = Instant::now();
        loop {
            let last = self.probe().await;
            if last.as_ref().is_ok_and(|sha| sha == want) {
                return Ok(ActionOk::Served {
                    addr: self.addr.clone(),
                    after: start.elapsed(),
                });
            }
            if start.elapsed() + PROBE_EVERY > self.timeout {
                let (addr, want, after) = (self.addr.clone(), want.clone(), self.timeout);
                return Err(match last {
                    Ok(served) => VerifyError::StillOld {
                        addr,
                        want,
                        after,
                        served,
                    },
                    Err(source) => VerifyError::Unreachable {
                        addr,
                        want,
                        after,
                        source,
                    },
                });
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// The SHA-256 of the leaf served at `addr` now.
    async fn probe(&self) -> Result<String, ProbeError> {
        let (cfg, recorder) =
            crate::tls::leaf_probe().map_err(|e| ProbeError::Setup(e.to_string()))?;
        let host = self
            .addr
            .rsplit_once(':')
            .map_or(self.addr.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| ServerName::try_from("localhost").expect("static name"));
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(&self.addr)
                .await
                .map_err(ProbeError::Connect)?;
            // The handshake may fail after the server's certificate (the app wants a client
            // certificate); the recorder has the leaf either way.
            let _ = tokio_rustls::TlsConnector::from(Arc::clone(&cfg))
                .connect(name, tcp)
                .await;
            Ok::<(), ProbeError>(())
        };
        tokio::time::timeout(PROBE_TIMEOUT, attempt)
            .await
            .map_err(|_| ProbeError::Timeout)??;
        recorder
            .seen()
            .map(|der| hex::encode(Sha256::digest(der)))
            .ok_or(ProbeError::NoCertificate)
    }
}
