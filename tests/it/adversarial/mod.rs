//! The adversarial suite: the sidecar attacked from outside as a hostile client, a hostile
//! file writer and a hostile operator would, with real sockets, real TLS and real clients.
//! Each module is one class of attack; each test names the behaviour that must hold.
//!
//! - `spoofing`: forged identity headers (any case, `_` for `-`, other proxies' names)
//! - `host_header`: requests with two `Host` headers, or none on HTTP/1.1
//! - `client_errors`: a malformed request body is the client's fault (400), not the upstream's
//! - `smuggling`: request smuggling and framing tricks over HTTP/1.1
//! - `slowloris`: slow clients before and after the TLS handshake
//! - `floods`: connection floods past `--max-connections`, garbage and huge ClientHellos
//! - `h2`: HTTP/2 rapid reset, CONTINUATION flood and trickle, HPACK bomb, idle with pings
//! - `admin_probes`: probes keep answering while the admin port is flooded
//! - `upstream_cap`: upstream connections are capped per listener; the fd limit is reconciled
//! - `signals`: SIGHUP reloads, other terminating signals are logged and ignored
//! - `draining`: `/readyz` is 503 while draining after SIGTERM
//! - `file_faults`: hostile credential files (special files, garbage, huge lines, loops)
//! - `closed_pipes`: a closed stdout or stderr never kills the process
//! - `transient_reload`: EMFILE while reading credentials is retried with backoff
//! - `key_material`: no private key byte in any log line, at trace level

mod admin_probes;
mod client_errors;
mod closed_pipes;
mod draining;
mod file_faults;
mod floods;
mod h2;
mod host_header;
mod key_material;
mod signals;
mod slowloris;
mod smuggling;
mod spoofing;
mod transient_reload;
mod upstream_cap;

use std::time::Duration;

use crate::support::fixture::Env;
use crate::support::pki::{Leaf, TestPki};
use crate::support::sidecar::Sidecar;
use crate::support::tls_client::TlsClient;
use crate::support::upstream::HttpUpstream;

/// Upper bound for anything the sidecar should do "soon".
const WAIT: Duration = Duration::from_secs(10);

/// `server` arguments for `env`'s volume: `--cert-dir`, `--listen 127.0.0.1:0`, `--target`,
/// `--protocol`, a 1 s poll, then `extra`.
fn server_args(env: &Env, protocol: &str, target: &str, extra: &[&str]) -> Vec<String> {
    let dir = env.dir().display().to_string();
    let mut args: Vec<String> = [
        "--cert-dir",
        &dir,
        "--listen",
        "127.0.0.1:0",
        "--target",
        target,
        "--protocol",
        protocol,
        "--poll-interval",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `server --protocol http --allow-all EXTRA` in front of a fresh echo upstream, ready.
fn http_proxy(extra: &[&str]) -> (Env, HttpUpstream, Sidecar) {
    let (env, _) = Env::with_first(TestPki::server);
    let upstream = HttpUpstream::start();
    let mut args = vec!["--allow-all"];
    args.extend_from_slice(extra);
    let sc = Sidecar::server(server_args(&env, "http", &upstream.addr(), &args));
    wait_ready(&sc);
    (env, upstream, sc)
}

fn wait_ready(sc: &Sidecar) {
    assert!(
        sc.wait_until(WAIT, || sc.ready()),
        "/readyz never 200 within {WAIT:?}: {}\n{}",
        sc.get("/readyz").1,
        sc.log()
    );
}

/// A rustls client trusting `env`'s root, presenting `leaf`.
fn client_for(env: &Env, leaf: &Leaf) -> TlsClient {
    TlsClient::with_leaf(&env.pki.root.cert_pem, leaf)
}
