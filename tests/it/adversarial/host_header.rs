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

/// One HTTP/2 request with `fields` (after `:method`, `:scheme`, `:path`) on a fresh
/// connection: its status, or 0 if the stream or connection was reset instead.
fn h2_request(env: &Env, addr: &str, fields: &[(&str, &str)]) -> u16 {
    use crate::support::h2raw::{hpack_literal, kind, response_status, H2Conn};
    let mut conn =
        H2Conn::connect(addr, &env.pki.root.cert_pem, &env.pki.client()).expect("h2 connection");
    let mut block = hpack_literal(":method", "GET");
    block.extend(hpack_literal(":scheme", "https"));
    block.extend(hpack_literal(":path", "/h2-host"));
    for (name, value) in fields {
        block.extend(hpack_literal(name, value));
    }
    conn.headers(1, &block, true, true).expect("send HEADERS");
    loop {
        match conn.read_frame(WAIT) {
            Ok(Some(f)) if f.kind == kind::HEADERS && f.stream_id == 1 => {
                return response_status(f.header_block()).expect("a :status");
            }
            Ok(Some(f)) if f.kind == kind::RST_STREAM || f.is_goaway() => return 0,
            Ok(Some(_)) => continue,
            Ok(None) => return 0,
            Err(e) => panic!("no answer: {e}"),
        }
    }
}

#[test]
fn http2_authority_must_be_a_host_and_agree_with_host() {
    let (env, upstream, sc) = http_proxy(&[]);
    let name = "api.production.svc.cluster.local";
    let bad: [(&str, Vec<(&str, &str)>); 4] = [
        (
            "a non-numeric port",
            vec![(":authority", "api.production.svc.cluster.local:abc")],
        ),
        ("brackets around a name", vec![(":authority", "x[::1]")]),
        (
            "a port over 65535",
            vec![(":authority", "api.production.svc.cluster.local:70000")],
        ),
        (
            "a Host naming another host",
            vec![(":authority", name), ("host", "admin.internal")],
        ),
    ];
    for (what, fields) in &bad {
        let status = h2_request(&env, sc.listen_addr(), fields);
        assert!(
            status == 400 || status == 0,
            "{what}: got {status}, expected 400 or a reset"
        );
    }
    assert_eq!(
        upstream.requests_started(),
        0,
        "a bad authority was forwarded"
    );
    // The same name in both is fine, and the app reads it from Host.
    let ok = h2_request(
        &env,
        sc.listen_addr(),
        &[(":authority", name), ("host", name)],
    );
    assert_eq!(ok, 200);
    let seen = upstream.last().expect("forwarded");
    assert_eq!(seen.all("host"), [name]);
}
