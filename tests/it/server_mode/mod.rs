//! `mtls-sidecar server`: the real binary in front of a real upstream, driven by real clients
//! (curl and `openssl s_client` as our users run them, and a rustls client that records the
//! leaf it was served).
//!
//! Rules as in `kubelet_scenarios`: wait for conditions (bounded), never assert on speed;
//! fixed sleeps only to let time pass (a connection's age) or to watch that nothing happens.
//!
//! - `handshake`: who may connect: curl, s_client, rustls; refused client certificates
//! - `http`: identity headers, spoofing, allow-lists, 502/504, keep-alive, HTTP/2
//! - `tcp`: byte copy, half-close, allow-list close, Unix socket targets
//! - `rotation`: leaf and CA rotation under load, `--max-connection-age`
//! - `lifecycle`: usage errors, before the first bundle, drain on SIGTERM, connection limits
//! - `drain`: `/drain` and `mtls-sidecar drain` (readiness off for a rollout, then answered)
//! - `ready_upstream`: `--ready-upstream` (`/readyz` follows the target)

mod drain;
mod grpc;
mod handshake;
mod http;
mod lifecycle;
mod ready_upstream;
mod rotation;
mod tcp;

use std::time::Duration;

use crate::support::fixture::Env;
use crate::support::pki::{Leaf, TestPki};
use crate::support::sidecar::Sidecar;
use crate::support::tls_client::TlsClient;
use crate::support::upstream::HttpUpstream;

/// Upper bound for anything the sidecar should do "soon".
const WAIT: Duration = Duration::from_secs(10);

/// RFC 2253 subject of `TestPki::client()` and of the users' guide client certificate.
const CLIENT_DN: &str = "CN=web-app,OU=Web Services,O=Example Org";

/// `server` arguments for `dir`: `--cert-dir`, `--listen 127.0.0.1:0`, `--target`,
/// `--protocol`, a 1 s poll as a safety net, then `extra` (allow flags and the rest).
fn server_args(dir: &str, protocol: &str, target: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--cert-dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--target",
        target,
        "--protocol",
        protocol,
        "--poll-interval",
        "1s",
        "--debounce",
        "100ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Start `server` on `env`'s volume (no wait for readiness).
fn start(env: &Env, protocol: &str, target: &str, extra: &[&str]) -> Sidecar {
    let dir = env.dir().display().to_string();
    Sidecar::server(server_args(&dir, protocol, target, extra))
}

/// `start`, then wait until `/readyz` is 200.
fn start_ready(env: &Env, protocol: &str, target: &str, extra: &[&str]) -> Sidecar {
    let sc = start(env, protocol, target, extra);
    wait_ready(&sc);
    sc
}

fn wait_ready(sc: &Sidecar) {
    let ready = sc.wait_until(WAIT, || sc.ready());
    assert!(
        ready,
        "/readyz never 200 within {WAIT:?}: {}\n{}",
        sc.get("/readyz").1,
        sc.log()
    );
}

/// Start `server --protocol http` with `extra` flags in front of a fresh upstream; ready.
fn proxy(extra: &[&str]) -> (Env, HttpUpstream, Sidecar) {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(&env, "http", &upstream.addr(), extra);
    (env, upstream, sc)
}

/// An env whose volume holds `pki.server()` and the root CA.
fn env_with_server() -> (Env, Leaf) {
    Env::with_first(TestPki::server)
}

/// A rustls client trusting `env`'s root, presenting `leaf`.
fn client_for(env: &Env, leaf: &Leaf) -> TlsClient {
    TlsClient::with_leaf(&env.pki.root.cert_pem, leaf)
}

/// A temp dir holding `client.crt` (`leaf`'s chain), `client.key` and `ca.crt` (`env`'s root),
/// for `users_curl`.
fn curl_dir(env: &Env, leaf: &Leaf) -> tempfile::TempDir {
    crate::support::cli_clients::curl_dir(&env.pki.root.cert_pem, leaf)
}

/// Assert that `client` cannot get a response from `addr` (handshake refused, or the
/// connection closed with no response); returns the client's error.
fn refused(client: &TlsClient, addr: &str) -> String {
    match client.connect(addr) {
        Err(e) => e,
        Ok(mut conn) => match conn.get("/") {
            Err(e) => e,
            Ok(resp) => panic!(
                "expected the connection to be refused, got HTTP {}: {}",
                resp.status,
                resp.body_text()
            ),
        },
    }
}

/// `NAME{listener="server"}`.
fn server_series(name: &str) -> String {
    format!(r#"{name}{{listener="server"}}"#)
}

/// Sum of `mtls_sidecar_handshake_failures_total{listener="server"}` over every reason.
fn handshake_failures(sc: &Sidecar) -> f64 {
    sc.metric_sum(
        "mtls_sidecar_handshake_failures_total",
        &[("listener", "server")],
    )
}

/// Wait until `/status` serves `serial`.
fn wait_for_serial(sc: &Sidecar, serial: &str) {
    let served = sc.wait_until(WAIT, || sc.serial().as_deref() == Some(serial));
    assert!(
        served,
        "serial {serial} never served within {WAIT:?}; status: {}",
        sc.status()
    );
}

/// Decode `%XX` escapes (and nothing else: `+` stays `+`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
