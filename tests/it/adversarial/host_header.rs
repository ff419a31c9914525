//! `Host` headers (RFC 9112 3.2): a request with two of them, or an HTTP/1.1 request with none,
//! is answered 400 and never forwarded: the app and the sidecar could otherwise disagree on
//! which host was meant (virtual-host confusion, cache poisoning).

use std::io::{BufReader, Write};

use super::*;
use crate::support::http1::{read_response, Response};
use crate::support::tls_client::TlsConn;

/// Writes `raw` on `conn` and reads one response.
fn exchange(conn: &mut TlsConn, raw: &str) -> Response {
    conn.write_all(raw.as_bytes()).expect("send request");
    conn.flush().expect("flush");
    read_response(&mut BufReader::new(conn)).expect("a response")
}

#[test]
fn malformed_host_headers_are_answered_400_and_not_forwarded() {
    let (env, upstream, sc) = http_proxy(&[]);
    let client = client_for(&env, &env.pki.client());
    let cases = [
        (
            "two Host headers",
            "GET /two HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        (
            "two Host headers, same value",
            "GET /same HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
        ),
        ("HTTP/1.1 without Host", "GET /none HTTP/1.1\r\n\r\n"),
        (
            "a Host that is not host[:port]",
            "GET /bad HTTP/1.1\r\nHost: user@evil.example\r\n\r\n",
        ),
    ];
    for (what, raw) in cases {
        let mut conn = client.connect(sc.listen_addr()).expect("handshake");
        let resp = exchange(&mut conn, raw);
        assert_eq!(resp.status, 400, "{what}: {}", resp.body_text());
        assert!(
            resp.body_text().contains("Host"),
            "{what}: {}",
            resp.body_text()
        );
    }
    assert_eq!(
        upstream.requests_started(),
        0,
        "a malformed request was forwarded"
    );
    assert_eq!(
        sc.counter(r#"mtls_sidecar_http_requests_total{listener="server",code="400"}"#),
        cases.len() as f64
    );
}

#[test]
fn one_host_or_none_on_http_1_0_is_forwarded() {
    let (env, upstream, sc) = http_proxy(&[]);
    let client = client_for(&env, &env.pki.client());
    for raw in [
        "GET /one HTTP/1.1\r\nHost: api.production.svc.cluster.local\r\nConnection: close\r\n\r\n",
        "GET /old HTTP/1.0\r\n\r\n",
    ] {
        let mut conn = client.connect(sc.listen_addr()).expect("handshake");
        let resp = exchange(&mut conn, raw);
        assert_eq!(resp.status, 200, "{raw:?}: {}", resp.body_text());
    }
    assert_eq!(upstream.requests_finished(), 2);
}
