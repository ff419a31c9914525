//! `mtls-sidecar client`: the real binary carrying a plaintext app's traffic over mTLS to a real
//! server: our own `server --protocol http` in front of an echo upstream (whose replies show
//! which client certificate arrived: `X-Client-DN`, `X-Forwarded-Client-Cert`), or nginx as our
//! users' guide configures it. Each side has its own kubelet-style volume, both from one PKI,
//! as cert-manager issues them from one ClusterIssuer.
//!
//! Rules as in `server_mode`: wait for conditions (bounded), never assert on speed; "promptly"
//! means within `WAIT`.
//!
//! - `identity`: curl through the client reaches our server and the guide's nginx as `web-app`;
//!   what http mode forwards; the bidirectional certificate; `--peer-ca`
//! - `refusals`: servers the client must not talk to, and failures it must report (502 with the
//!   reason in http mode, a closed connection in tcp mode, counted either way)
//! - `rotation`: client certificate and CA rotation under traffic
//! - `pooling`: few upstream handshakes for many app connections; HTTP/2 when offered; servers
//!   that close pooled connections (idle timeout, GOAWAY)
//! - `lifecycle`: usage errors, a leaf without clientAuth, the listener in `/status`, draining
//!   on SIGTERM

mod identity;
mod lifecycle;
mod pooling;
mod refusals;
mod rotation;

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use crate::support::fixture::{tls_files, Env};
use crate::support::http1::{PlainConn, Response};
use crate::support::kubelet::KubeletVolume;
use crate::support::pki::{Leaf, TestPki};
use crate::support::sidecar::{Sidecar, INOTIFY_GATE};
use crate::support::tls_client::SERVER_NAME;
use crate::support::upstream::{Echoed, HttpUpstream};

/// Upper bound for anything that should happen "soon" (a refusal, a reload, a drain).
const WAIT: Duration = Duration::from_secs(10);

/// RFC 2253 subject of `TestPki::client()`, as the server tells its app (`X-Client-DN`).
const CLIENT_DN: &str = "CN=web-app,OU=Web Services,O=Example Org";

// === Pods ===

/// The credentials of the two pods, from one `TestPki`: the server's Secret volume (`env.vol`,
/// holding `pki.server()`) and the client's (holding `pki.client()`), each with `ca.crt` = root.
struct Pods {
    env: Env,
    client_vol: KubeletVolume,
    server_leaf: Leaf,
    client_leaf: Leaf,
}

impl Pods {
    fn new() -> Pods {
        let (env, server_leaf) = Env::with_first(TestPki::server);
        let client_leaf = env.pki.client();
        let mut pods = Pods {
            client_vol: KubeletVolume::new(env.tmp().join("client-vol")),
            env,
            server_leaf,
            client_leaf: client_leaf.clone(),
        };
        let root = pods.env.pki.root.cert_pem.clone();
        pods.publish_client(&client_leaf, &root);
        pods
    }

    fn pki(&self) -> &TestPki {
        &self.env.pki
    }

    /// Kubelet-write `leaf` and `ca_pem` into the client's volume.
    fn publish_client(&mut self, leaf: &Leaf, ca_pem: &str) {
        self.client_vol.write(&tls_files(leaf, ca_pem));
    }

    /// Kubelet-write `leaf` and `ca_pem` into the server's volume.
    fn publish_server(&mut self, leaf: &Leaf, ca_pem: &str) {
        self.env.vol.write(&tls_files(leaf, ca_pem));
    }

    fn client_dir(&self) -> String {
        self.client_vol.dir().display().to_string()
    }

    fn server_dir(&self) -> String {
        self.env.dir().display().to_string()
    }
}

// === Client ===

/// A running `mtls-sidecar client` (a `Sidecar`) and the address of its plaintext listener.
struct Client {
    sc: Sidecar,
    addr: String,
}

impl Deref for Client {
    type Target = Sidecar;
    fn deref(&self) -> &Sidecar {
        &self.sc
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut Sidecar {
        &mut self.sc
    }
}

/// `client` arguments: `--cert-dir DIR --listen 127.0.0.1:0 --target T --server-name NAME
/// --protocol P`, a 1 s poll as a safety net, then `extra`.
fn client_args(dir: &str, protocol: &str, target: &str, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--cert-dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--target",
        target,
        "--server-name",
        name,
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

/// Change the value of `flag` in `args` made by `client_args` (None: drop the flag).
fn set_flag(args: &mut Vec<String>, flag: &str, value: Option<&str>) {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} not in {args:?}"));
    match value {
        Some(v) => args[at + 1] = v.to_string(),
        None => {
            args.drain(at..at + 2);
        }
    }
}

impl Client {
    /// Start `client` with these arguments (see `client_args`); no wait for readiness.
    fn start_with(args: Vec<String>) -> Client {
        // As `Sidecar::server`: not while a test has lowered the inotify queue for its process.
        let sc = {
            let _gate = INOTIFY_GATE.read().unwrap_or_else(|e| e.into_inner());
            Sidecar::start("client", args)
        };
        let listener = sc.status()["listeners"][0].clone();
        assert_eq!(listener["name"], "client", "{}", sc.status());
        let bound = listener["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no listener address in {}", sc.status()));
        // An unspecified address (`--unsafe-listen` on 0.0.0.0) is reached through loopback.
        let port = bound.rsplit_once(':').expect("host:port").1;
        let addr = format!("127.0.0.1:{port}");
        Client { sc, addr }
    }

    /// `client --protocol PROTOCOL` on `dir` to `target`, verifying `SERVER_NAME`, then `extra`;
    /// no wait for readiness.
    fn start(dir: &str, protocol: &str, target: &str, extra: &[&str]) -> Client {
        Self::start_with(client_args(dir, protocol, target, SERVER_NAME, extra))
    }

    /// `start`, then wait until `/readyz` is 200.
    fn start_ready(dir: &str, protocol: &str, target: &str, extra: &[&str]) -> Client {
        let client = Self::start(dir, protocol, target, extra);
        wait_ready(&client);
        client
    }

    /// `127.0.0.1:PORT` of the plaintext listener.
    fn addr(&self) -> &str {
        &self.addr
    }

    /// A new plaintext connection to the listener, as the app opens one.
    fn connect(&self) -> PlainConn {
        PlainConn::connect(&self.addr, SERVER_NAME)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// `GET path` on a new connection (`Connection: close`), as a legacy app does it.
    fn fetch(&self, path: &str) -> Result<Response, String> {
        get_once(&self.addr, path)
    }

    /// `mtls_sidecar_handshake_failures_total{listener="client",reason}`.
    fn handshake_failures(&self, reason: &str) -> f64 {
        self.counter(&format!(
            r#"mtls_sidecar_handshake_failures_total{{listener="client",reason="{reason}"}}"#
        ))
    }

    /// `mtls_sidecar_upstream_failures_total{listener="client"}`.
    fn upstream_failures(&self) -> f64 {
        self.counter(r#"mtls_sidecar_upstream_failures_total{listener="client"}"#)
    }
}

/// `GET path` with `Connection: close` on a new connection to `addr`.
fn get_once(addr: &str, path: &str) -> Result<Response, String> {
    PlainConn::connect(addr, SERVER_NAME)?.request("GET", path, &[("Connection", "close")], b"")
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

/// `server --protocol PROTOCOL --allow-all` on `dir` in front of `target`, then `extra`; ready.
fn start_server(dir: &str, protocol: &str, target: &str, extra: &[&str]) -> Sidecar {
    let mut args = vec![
        "--cert-dir",
        dir,
        "--listen",
        "127.0.0.1:0",
        "--target",
        target,
        "--protocol",
        protocol,
        "--allow-all",
        "--poll-interval",
        "1s",
        "--debounce",
        "100ms",
    ];
    args.extend_from_slice(extra);
    let sc = Sidecar::server(args);
    wait_ready(&sc);
    sc
}

/// Our `server --protocol http` on `pods`' server volume in front of a new echo, then `extra`.
fn our_server(pods: &Pods, extra: &[&str]) -> (HttpUpstream, Sidecar) {
    let upstream = HttpUpstream::start();
    let server = start_server(&pods.server_dir(), "http", &upstream.addr(), extra);
    (upstream, server)
}

// === Chain ===

/// The whole path: app (the test) -> `client` -> `server --protocol http` -> echo upstream.
/// (Fields drop in order: the processes stop before their volumes go.)
struct Chain {
    client: Client,
    server: Sidecar,
    upstream: HttpUpstream,
    pods: Pods,
}

/// A `Chain` whose client runs `--protocol PROTOCOL` with `extra` flags; both sidecars ready.
fn chain(protocol: &str, extra: &[&str]) -> Chain {
    chain_with(protocol, extra, &[])
}

/// `chain`, with `server_extra` flags for the server.
fn chain_with(protocol: &str, extra: &[&str], server_extra: &[&str]) -> Chain {
    let pods = Pods::new();
    let (upstream, server) = our_server(&pods, server_extra);
    let client = Client::start_ready(&pods.client_dir(), protocol, server.listen_addr(), extra);
    Chain {
        pods,
        upstream,
        server,
        client,
    }
}

/// The echo behind our server, from a 200 response that passed through the whole chain.
fn echoed(resp: &Response) -> Echoed {
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    Echoed::parse(&resp.body)
}

/// The SHA-256 of the client certificate our server saw (`Hash=` of `X-Forwarded-Client-Cert`).
fn seen_client_hash(resp: &Response) -> String {
    let xfcc = echoed(resp).one("x-forwarded-client-cert");
    xfcc.split(';')
        .find_map(|part| part.strip_prefix("Hash="))
        .unwrap_or_else(|| panic!("no Hash= in XFCC {xfcc}"))
        .to_string()
}

/// `mtls_sidecar_connections_total{listener="server"}`: TLS connections our server accepted.
fn server_connections(server: &Sidecar) -> f64 {
    server.counter(r#"mtls_sidecar_connections_total{listener="server"}"#)
}
