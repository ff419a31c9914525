//! Two identities in one sidecar: set `server-id` (a serverAuth certificate from one Secret) for
//! the listener `inbound`, set `client-id` (a clientAuth certificate from another Secret) for the
//! listener `outbound`, each with its own exec action. Here `outbound` calls `inbound`, so one
//! request crosses both identities.
//!
//! The pod is not ready until *every* set has valid credentials; each set then rotates on its
//! own: only its generation moves, only its action runs (with `MTLS_SIDECAR_SET` naming it), and
//! the listener using it picks the new certificate up while the other keeps its own.

use std::fs;
use std::time::Duration;

use super::{wait_listener_serves, xfcc_hash};
use crate::support::fixture::tls_files;
use crate::support::http1::PlainConn;
use crate::support::kubelet::KubeletVolume;
use crate::support::pki::{Leaf, TestPki};
use crate::support::sidecar::{wait_until, ExecCounter, Sidecar};
use crate::support::tls_client::{TlsClient, SERVER_NAME};
use crate::support::upstream::HttpUpstream;

const WAIT: Duration = Duration::from_secs(20);

/// The pod: two Secrets, an app (echo), the config file, one exec counter per set.
struct Pod {
    pki: TestPki,
    server_vol: KubeletVolume,
    client_vol: KubeletVolume,
    server_exec: ExecCounter,
    client_exec: ExecCounter,
    _app: HttpUpstream,
    config: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

/// A free port on 127.0.0.1 (the inbound address must be known when the file is written: the
/// outbound listener targets it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An `exec:` list in YAML flow style (JSON is valid YAML): the counter's program, no `--`.
fn exec_yaml(counter: &ExecCounter) -> String {
    let args: Vec<String> = counter.args().into_iter().skip(1).collect();
    serde_json::to_string(&args).unwrap()
}

fn config_yaml(pod: &Pod, inbound_port: u16, app: &str) -> String {
    format!(
        r#"admin-listen: 127.0.0.1:0
poll-interval: 1s
debounce: 100ms
sets:
  server-id:
    cert-dir: {server_dir}
  client-id:
    cert-dir: {client_dir}
listeners:
  - name: inbound
    kind: server
    credentials: server-id
    listen: 127.0.0.1:{inbound_port}
    target: {app}
    protocol: http
    allow-cn: [web-app]
  - name: outbound
    kind: client
    credentials: client-id
    listen: 127.0.0.1:0
    target: 127.0.0.1:{inbound_port}
    protocol: http
    server-name: {SERVER_NAME}
watch:
  - credentials: server-id
    exec: {server_exec}
  - credentials: client-id
    exec: {client_exec}
"#,
        server_dir = pod.server_vol.dir().display(),
        client_dir = pod.client_vol.dir().display(),
        server_exec = exec_yaml(&pod.server_exec),
        client_exec = exec_yaml(&pod.client_exec),
    )
}

/// The pod with the server Secret written and the client Secret still empty (cert-manager has
/// not issued it yet), and its config file.
fn pod() -> (Pod, Leaf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new();
    let mut server_vol = KubeletVolume::new(tmp.path().join("server-tls"));
    let server = pki.server();
    server_vol.write(&tls_files(&server, &pki.root.cert_pem));
    let app = HttpUpstream::start();
    let pod = Pod {
        client_vol: KubeletVolume::new(tmp.path().join("client-tls")),
        server_vol,
        pki,
        server_exec: ExecCounter::new(),
        client_exec: ExecCounter::new(),
        config: tmp.path().join("config.yaml"),
        _tmp: tmp,
        _app: app,
    };
    let yaml = config_yaml(&pod, free_port(), &pod._app.addr());
    fs::write(&pod.config, yaml).unwrap();
    (pod, server)
}

fn publish(vol: &mut KubeletVolume, pki: &TestPki, leaf: &Leaf) {
    vol.write(&tls_files(leaf, &pki.root.cert_pem));
}

/// Wait until `inbound` serves `leaf` to a new connection.
fn wait_inbound_serves(sc: &Sidecar, pod: &Pod, leaf: &Leaf) {
    let client = TlsClient::with_leaf(&pod.pki.root.cert_pem, &pod.pki.client());
    wait_listener_serves(sc, "inbound", &client, leaf, WAIT);
}

/// The client certificate `inbound` saw for a call through `outbound` (XFCC `Hash=`).
fn seen_through_outbound(sc: &Sidecar) -> Result<String, String> {
    xfcc_hash(&PlainConn::connect(&sc.wait_listener("outbound"), SERVER_NAME)?.get("/")?)
}

/// Wait until a call through `outbound` arrives with `leaf` as its client certificate.
fn wait_outbound_presents(sc: &Sidecar, leaf: &Leaf) {
    let mut last = String::new();
    let seen = wait_until(WAIT, || {
        last = seen_through_outbound(sc).unwrap_or_else(|e| e);
        last == leaf.sha256_hex
    });
    assert!(
        seen,
        "outbound presented {last}, not {}\n{}",
        leaf.sha256_hex,
        sc.log()
    );
}

fn generation(sc: &Sidecar, set: &str) -> u64 {
    sc.set_named(set)["generation"].as_u64().unwrap_or(0)
}

fn wait_generations(sc: &Sidecar, server: u64, client: u64) {
    let ok = sc.wait_until(WAIT, || {
        generation(sc, "server-id") == server && generation(sc, "client-id") == client
    });
    assert!(
        ok,
        "generations server-id {} client-id {}, expected {server} {client}\n{}",
        generation(sc, "server-id"),
        generation(sc, "client-id"),
        sc.log()
    );
}

/// Every exec line of `counter` names `set`, and there are `n` of them.
fn assert_execs(counter: &ExecCounter, set: &str, n: usize, sc: &Sidecar) {
    let ok = wait_until(WAIT, || counter.count() == n);
    let lines = counter.lines();
    assert!(
        ok,
        "{set}: {} exec runs, expected {n}: {lines:?}\n{}",
        lines.len(),
        sc.log()
    );
    assert!(
        lines.iter().all(|l| l.ends_with(&format!(" {set}"))),
        "MTLS_SIDECAR_SET of {set}'s action: {lines:?}"
    );
}

#[test]
fn a_server_and_a_client_identity_rotate_independently_and_ready_needs_both() {
    let (mut pod, server) = pod();
    let sc = Sidecar::run_config(&pod.config);
    sc.wait_listener("inbound");
    sc.wait_listener("outbound");

    // The client Secret is still empty: not ready, and /readyz says which set is missing.
    wait_generations(&sc, 1, 0);
    let (code, body) = sc.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("client-id"), "/readyz names the set: {body}");
    assert!(!body.contains("server-id"), "server-id is fine: {body}");
    wait_inbound_serves(&sc, &pod, &server);

    let client = pod.pki.client();
    publish(&mut pod.client_vol, &pod.pki, &client);
    assert!(
        sc.wait_until(WAIT, || sc.ready()),
        "{}",
        sc.get("/readyz").1
    );
    wait_generations(&sc, 1, 1);
    wait_outbound_presents(&sc, &client);

    // The server identity rotates: only server-id moves; outbound keeps its certificate.
    let server2 = pod.pki.server();
    publish(&mut pod.server_vol, &pod.pki, &server2);
    wait_inbound_serves(&sc, &pod, &server2);
    wait_generations(&sc, 2, 1);
    assert_execs(&pod.server_exec, "server-id", 1, &sc);
    // A set's first credentials are not acted on (`act-on-start: false`), even when they
    // appear after start-up.
    assert_execs(&pod.client_exec, "client-id", 0, &sc);
    assert_eq!(seen_through_outbound(&sc), Ok(client.sha256_hex.clone()));

    // The client identity rotates twice: only client-id moves; inbound keeps its certificate.
    for (n, leaf) in (2..).zip([pod.pki.client(), pod.pki.client()]) {
        publish(&mut pod.client_vol, &pod.pki, &leaf);
        wait_outbound_presents(&sc, &leaf);
        wait_generations(&sc, 2, n);
        assert_execs(&pod.client_exec, "client-id", n as usize - 1, &sc);
    }
    assert_execs(&pod.server_exec, "server-id", 1, &sc);
    wait_inbound_serves(&sc, &pod, &server2);

    for (set, n) in [("server-id", 2.0), ("client-id", 3.0)] {
        let series = format!(r#"mtls_sidecar_reloads_total{{set="{set}",result="success"}}"#);
        assert_eq!(sc.counter(&series), n, "{series}\n{}", sc.metrics());
    }
    assert!(sc.ready());
}

/// The client identity's files disappear (the Secret is deleted): the set keeps its last good
/// credentials and stays ready (a bad update never replaces good credentials), and the server
/// identity is untouched.
#[test]
fn a_deleted_client_secret_keeps_the_last_good_client_identity() {
    let (mut pod, server) = pod();
    let client = pod.pki.client();
    publish(&mut pod.client_vol, &pod.pki, &client);
    let sc = Sidecar::run_config(&pod.config);
    assert!(
        sc.wait_until(WAIT, || sc.ready()),
        "{}",
        sc.get("/readyz").1
    );
    wait_outbound_presents(&sc, &client);

    pod.client_vol.delete_all_keys();
    let refused = sc.wait_until(WAIT, || !sc.set_named("client-id")["last_error"].is_null());
    assert!(refused, "{}", sc.log());
    assert!(sc.set_named("server-id")["last_error"].is_null());
    wait_outbound_presents(&sc, &client);
    wait_inbound_serves(&sc, &pod, &server);
    wait_generations(&sc, 1, 1);
    assert!(sc.ready(), "{}", sc.get("/readyz").1);
    assert_eq!(pod.client_exec.count(), 0);
}
