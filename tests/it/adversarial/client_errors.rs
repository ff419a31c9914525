//! A request body that the client breaks (invalid chunked framing, or a body cut short by
//! closing the connection) is the client's fault: 400 (when an answer can still be sent),
//! counted as such, and never reported as an upstream failure, so that no client can raise
//! false upstream alerts.

use std::io::{BufReader, Write};

use super::*;
use crate::support::http1::read_response;
use crate::support::http1::PlainConn;
use crate::support::sidecar::wait_until;

/// A chunked request whose second chunk header is not hex.
const BAD_CHUNKS: &str = "POST /upload HTTP/1.1\r\nHost: api.production.svc.cluster.local\r\n\
    Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n";

#[test]
fn malformed_request_body_is_a_400_not_an_upstream_failure() {
    let (env, upstream, sc) = http_proxy(&[]);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    conn.write_all(BAD_CHUNKS.as_bytes()).expect("send");
    conn.flush().expect("flush");
    let resp = read_response(&mut BufReader::new(&mut conn)).expect("a response");
    assert_eq!(resp.status, 400, "{}\n{}", resp.body_text(), sc.log());
    assert!(
        resp.body_text().contains("request body"),
        "{}",
        resp.body_text()
    );
    assert_eq!(
        sc.counter(r#"mtls_sidecar_upstream_failures_total{listener="server"}"#),
        0.0,
        "a client's broken body counted as an upstream failure\n{}",
        sc.log()
    );
    assert_eq!(
        sc.counter(r#"mtls_sidecar_http_requests_total{listener="server",code="400"}"#),
        1.0
    );
    assert!(
        !sc.log().contains("upstream request failed"),
        "logged as an upstream failure:\n{}",
        sc.log()
    );
    // The sidecar still serves, and the upstream is fine.
    let ok = client_for(&env, &env.pki.client())
        .get(sc.listen_addr(), "/after")
        .expect("GET /after");
    assert_eq!(ok.status, 200);
    drop(upstream);
}

#[test]
fn a_body_cut_short_by_the_client_is_not_an_upstream_failure() {
    let (env, upstream, sc) = http_proxy(&[]);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    conn.write_all(
        b"POST /upload HTTP/1.1\r\nHost: api.production.svc.cluster.local\r\n\
          Content-Length: 100000\r\n\r\nonly a few bytes",
    )
    .expect("send");
    conn.flush().expect("flush");
    // The upstream has the request head; then the client goes away mid-body.
    assert!(
        wait_until(WAIT, || upstream.requests_started() == 1),
        "the request never reached the upstream\n{}",
        sc.log()
    );
    drop(conn);
    assert!(
        wait_until(WAIT, || sc.log().contains("request body failed")),
        "the cut-short body was never noticed\n{}",
        sc.log()
    );
    assert_eq!(
        sc.counter(r#"mtls_sidecar_upstream_failures_total{listener="server"}"#),
        0.0,
        "a client that went away counted as an upstream failure\n{}",
        sc.log()
    );
}

#[test]
fn client_mode_answers_400_for_a_malformed_body_from_the_app() {
    // The app talks plaintext to `client`, which forwards to our own `server` over mTLS.
    let (env, upstream, server) = http_proxy(&[]);
    let client_leaf = env.pki.client();
    let dir = tempfile::tempdir().expect("tempdir");
    crate::support::pki::write_triple(
        dir.path(),
        &client_leaf.chain_pem,
        &client_leaf.key_pkcs8_pem,
        &env.pki.root.cert_pem,
    );
    let client = Sidecar::start(
        "client",
        [
            "--cert-dir",
            &dir.path().display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--target",
            server.listen_addr(),
            "--server-name",
            "api.production.svc.cluster.local",
            "--protocol",
            "http",
        ],
    );
    wait_ready(&client);
    let addr = client.status()["listeners"][0]["address"]
        .as_str()
        .expect("client listener address")
        .to_string();
    let mut conn = PlainConn::connect(&addr, "api").expect("connect to client");
    conn.write_all(BAD_CHUNKS.as_bytes()).expect("send");
    let resp = read_response(&mut BufReader::new(&mut conn)).expect("a response");
    assert_eq!(resp.status, 400, "{}\n{}", resp.body_text(), client.log());
    assert_eq!(
        client.counter(r#"mtls_sidecar_upstream_failures_total{listener="client"}"#),
        0.0,
        "{}",
        client.log()
    );
    drop(upstream);
}
