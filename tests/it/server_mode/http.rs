//! `--protocol http`: what the upstream is told about the client (and cannot be lied to
//! about), who the allow-lists admit, what the client gets when the upstream fails, and
//! the connection-level behaviour (keep-alive, HTTP/2 via ALPN).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::support::cli_clients::{port_of, users_curl, users_curl_paths};
use crate::support::fixture::Env;
use crate::support::pki::LeafSpec;
use crate::support::require_tool;
use crate::support::sidecar::Sidecar;
use crate::support::tls_client::TlsConn;
use crate::support::upstream::{Echoed, HttpUpstream};

const SPIFFE_WEB: &str = "spiffe://cluster.local/ns/production/sa/web-app";

/// The status a client with a leaf made from `spec` (signed by the root) gets for `GET /`.
fn status_for(env: &Env, sc: &Sidecar, spec: &LeafSpec) -> u16 {
    let leaf = env.pki.issue(spec);
    client_for(env, &leaf)
        .get(sc.listen_addr(), "/")
        .unwrap_or_else(|e| panic!("request as {spec:?} failed: {e}\n{}", sc.log()))
        .status
}

#[test]
fn upstream_receives_the_client_identity_headers() {
    let (env, _upstream, sc) = proxy(&["--allow-all"]);
    let client = env.pki.issue(
        &TestPki::client_spec()
            .uris(&[SPIFFE_WEB])
            .dns(&["web-app.production.svc"]),
    );
    let resp = client_for(&env, &client)
        .get(sc.listen_addr(), "/id")
        .expect("GET /id");
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    let echoed = Echoed::parse(&resp.body);

    assert_eq!(echoed.one("x-client-dn"), CLIENT_DN);
    assert_eq!(echoed.one("x-client-verify"), "SUCCESS");
    assert_eq!(echoed.one("x-forwarded-proto"), "https");
    assert_eq!(echoed.one("x-forwarded-for"), "127.0.0.1");

    // nginx $ssl_client_escaped_cert: the leaf PEM, URL-encoded (no raw spaces or newlines).
    let escaped = echoed.one("x-client-cert");
    assert!(
        !escaped.contains(' ') && !escaped.contains('\n'),
        "X-Client-Cert is not URL-encoded: {escaped:?}"
    );
    let pem = percent_decode(&escaped);
    let (label, der) = pkcs1::der::pem::decode_vec(pem.as_bytes())
        .unwrap_or_else(|e| panic!("X-Client-Cert does not decode to PEM ({e}): {pem:?}"));
    assert_eq!(label, "CERTIFICATE");
    assert_eq!(
        der, client.cert_der,
        "X-Client-Cert is not the client's leaf"
    );

    // Envoy XFCC.
    let xfcc = echoed.one("x-forwarded-client-cert");
    for part in [
        format!("Hash={}", client.sha256_hex),
        format!("Subject=\"{CLIENT_DN}\""),
        format!("URI=\"{SPIFFE_WEB}\""),
        "DNS=\"web-app.production.svc\"".to_string(),
    ] {
        assert!(
            xfcc.split(';').any(|p| p == part),
            "XFCC lacks `{part}`: {xfcc}"
        );
    }
}

#[test]
fn client_sent_identity_headers_are_removed() {
    let (env, _upstream, sc) = proxy(&["--allow-all"]);
    let client = env.pki.client();
    let mut conn = client_for(&env, &client)
        .connect(sc.listen_addr())
        .expect("handshake");
    let spoofed = [
        ("X-Client-DN", "CN=admin,O=Example Org"),
        ("x-client-dn", "CN=root"),
        ("X-Client-Verify", "SUCCESS-ish"),
        ("X-Client-Cert", "-----BEGIN%20CERTIFICATE-----%0Aforged"),
        ("X-Forwarded-Client-Cert", "Hash=00;Subject=\"CN=admin\""),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "http"),
        ("X-Real-IP", "6.6.6.6"),
        ("X-Forwarded-Host", "admin.internal"),
        ("X-Forwarded-Port", "80"),
        ("X-Request-Id", "kept"),
    ];
    let resp = conn
        .request("GET", "/spoof", &spoofed, b"")
        .expect("GET /spoof");
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    let echoed = Echoed::parse(&resp.body);
    assert_eq!(echoed.one("x-client-dn"), CLIENT_DN);
    assert_eq!(echoed.one("x-client-verify"), "SUCCESS");
    assert_eq!(echoed.one("x-forwarded-for"), "127.0.0.1");
    assert_eq!(echoed.one("x-forwarded-proto"), "https");
    for dropped in ["x-real-ip", "x-forwarded-host", "x-forwarded-port"] {
        assert!(
            !echoed.headers.contains_key(dropped),
            "client-sent {dropped} reached the app"
        );
    }
    let pem = percent_decode(&echoed.one("x-client-cert"));
    assert!(
        !pem.contains("forged"),
        "client-sent X-Client-Cert kept: {pem}"
    );
    let xfcc = echoed.one("x-forwarded-client-cert");
    assert!(
        xfcc.contains(&format!("Hash={}", client.sha256_hex)) && !xfcc.contains("CN=admin"),
        "{xfcc}"
    );
    assert_eq!(
        echoed.one("x-request-id"),
        "kept",
        "an unrelated header was dropped"
    );
}

#[test]
fn keep_alive_connection_serves_many_requests() {
    let (env, upstream, sc) = proxy(&["--allow-all"]);
    let total = server_series("mtls_sidecar_connections_total");
    let before = sc.counter(&total);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    for i in 0..20 {
        let resp = conn
            .get(&format!("/n/{i}"))
            .expect("request on a kept-alive connection");
        assert_eq!(resp.status, 200);
        assert!(!resp.closes(), "request {i} got `Connection: close`");
        assert_eq!(Echoed::parse(&resp.body).path, format!("/n/{i}"));
    }
    assert_eq!(sc.counter(&total) - before, 1.0, "one client connection");
    assert!(
        upstream.connections() <= 2,
        "20 sequential requests opened {} upstream connections: no pooling",
        upstream.connections()
    );
}

#[test]
fn requests_are_counted_by_status_code_and_timed() {
    let (env, _upstream, sc) = proxy(&["--allow-cn", "web-app"]);
    let client = client_for(&env, &env.pki.client());
    for _ in 0..3 {
        assert_eq!(client.get(sc.listen_addr(), "/").expect("GET").status, 200);
    }
    assert_eq!(
        status_for(&env, &sc, &TestPki::client_spec().cn("intruder")),
        403
    );
    let ok = r#"mtls_sidecar_http_requests_total{listener="server",code="200"}"#;
    let denied = r#"mtls_sidecar_http_requests_total{listener="server",code="403"}"#;
    assert!(
        sc.wait_until(WAIT, || sc.counter(ok) >= 3.0),
        "{}",
        sc.metrics()
    );
    assert_eq!(sc.counter(ok), 3.0, "{}", sc.metrics());
    assert_eq!(sc.counter(denied), 1.0, "{}", sc.metrics());
    let timed = sc.counter(&server_series(
        "mtls_sidecar_http_request_duration_seconds_count",
    ));
    assert!(timed >= 3.0, "histogram count {timed}:\n{}", sc.metrics());
}

#[test]
fn allow_cn_admits_the_named_client() {
    let (env, _upstream, sc) = proxy(&["--allow-cn", "web-app"]);
    assert_eq!(status_for(&env, &sc, &TestPki::client_spec()), 200);
}

#[test]
fn allow_cn_answers_403_with_one_line_to_another_client() {
    let (env, upstream, sc) = proxy(&["--allow-cn", "web-app"]);
    let other = env.pki.issue(&TestPki::client_spec().cn("web-app-2"));
    let resp = client_for(&env, &other)
        .get(sc.listen_addr(), "/")
        .expect("a denied client still gets an HTTP answer");
    assert_eq!(resp.status, 403, "{}", resp.body_text());
    let body = resp.body_text();
    assert_eq!(
        body.trim_end().lines().count(),
        1,
        "body is not one line: {body:?}"
    );
    assert_eq!(
        upstream.requests_started(),
        0,
        "a denied request reached the upstream"
    );
    let denied = server_series("mtls_sidecar_authz_denied_total");
    assert!(
        sc.wait_until(WAIT, || sc.counter(&denied) == 1.0),
        "{}",
        sc.metrics()
    );
    // Logged with the client's subject.
    let logged = sc.wait_until(WAIT, || {
        sc.log()
            .lines()
            .any(|l| l.contains("\"level\":\"WARN\"") && l.contains("CN=web-app-2"))
    });
    assert!(
        logged,
        "no warning naming the denied subject:\n{}",
        sc.log()
    );
}

#[test]
fn repeated_allow_flags_admit_a_client_matching_any_of_them() {
    let (env, _upstream, sc) = proxy(&[
        "--allow-cn",
        "batch",
        "--allow-cn",
        "web-app",
        "--allow-uri",
        SPIFFE_WEB,
    ]);
    assert_eq!(status_for(&env, &sc, &TestPki::client_spec()), 200);
    assert_eq!(
        status_for(&env, &sc, &TestPki::client_spec().cn("batch")),
        200
    );
    let by_uri = TestPki::client_spec().cn("renamed").uris(&[SPIFFE_WEB]);
    assert_eq!(status_for(&env, &sc, &by_uri), 200);
    assert_eq!(
        status_for(&env, &sc, &TestPki::client_spec().cn("other")),
        403
    );
}

#[test]
fn allow_ou_admits_members_of_the_unit_only() {
    let (env, _upstream, sc) = proxy(&["--allow-ou", "Web Services"]);
    assert_eq!(status_for(&env, &sc, &TestPki::client_spec()), 200);
    let billing = TestPki::client_spec().subject_ou("Billing");
    assert_eq!(status_for(&env, &sc, &billing), 403);
}

#[test]
fn allow_dns_matches_a_dns_san_of_the_client() {
    let (env, _upstream, sc) = proxy(&["--allow-dns", "web-app.production.svc"]);
    let named = TestPki::client_spec().dns(&["web-app.production.svc"]);
    assert_eq!(status_for(&env, &sc, &named), 200);
    let other = TestPki::client_spec().dns(&["batch.production.svc"]);
    assert_eq!(status_for(&env, &sc, &other), 403);
    // The CN is not a DNS SAN.
    let cn_only = TestPki::client_spec().cn("web-app.production.svc");
    assert_eq!(status_for(&env, &sc, &cn_only), 403);
}

#[test]
fn allow_dns_follows_the_one_dns_rule() {
    // The rule of --expect-dns and --verify-dns: case, a trailing dot, a one-label wildcard SAN.
    let (env, _upstream, sc) = proxy(&["--allow-dns", "Web-App.production.svc."]);
    let exact = TestPki::client_spec().dns(&["web-app.production.svc"]);
    assert_eq!(status_for(&env, &sc, &exact), 200);
    let wildcard = TestPki::client_spec().dns(&["*.production.svc"]);
    assert_eq!(status_for(&env, &sc, &wildcard), 200);
    let too_deep = TestPki::client_spec().dns(&["*.svc"]);
    assert_eq!(status_for(&env, &sc, &too_deep), 403);
}

#[test]
fn allow_uri_single_segment_wildcard_matches_one_segment() {
    let (env, _upstream, sc) = proxy(&["--allow-uri", "spiffe://cluster.local/ns/production/sa/*"]);
    let with_uri = |uri: &str| TestPki::client_spec().uris(&[uri]);
    for (uri, want) in [
        ("spiffe://cluster.local/ns/production/sa/web-app", 200),
        ("spiffe://cluster.local/ns/production/sa/batch", 200),
        ("spiffe://cluster.local/ns/production/sa/web-app/extra", 403),
        ("spiffe://cluster.local/ns/staging/sa/web-app", 403),
        ("spiffe://other.domain/ns/production/sa/web-app", 403),
    ] {
        assert_eq!(status_for(&env, &sc, &with_uri(uri)), want, "{uri}");
    }
}

#[test]
fn allow_uri_double_star_wildcard_matches_any_suffix() {
    let (env, _upstream, sc) = proxy(&["--allow-uri", "spiffe://cluster.local/ns/production/**"]);
    let with_uri = |uri: &str| TestPki::client_spec().uris(&[uri]);
    for (uri, want) in [
        ("spiffe://cluster.local/ns/production/sa/web-app", 200),
        (
            "spiffe://cluster.local/ns/production/sa/web-app/extra/deep",
            200,
        ),
        // A prefix match must stop at a segment boundary.
        ("spiffe://cluster.local/ns/production-evil/sa/web-app", 403),
        ("spiffe://cluster.local/ns/staging/sa/web-app", 403),
    ] {
        assert_eq!(status_for(&env, &sc, &with_uri(uri)), want, "{uri}");
    }
}

#[test]
fn unreachable_upstream_answers_502_and_is_counted() {
    let (env, _) = env_with_server();
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .to_string();
    let sc = start_ready(&env, "http", &closed, &["--allow-all"]);
    let resp = client_for(&env, &env.pki.client())
        .get(sc.listen_addr(), "/")
        .expect("an HTTP answer even when the upstream is down");
    assert_eq!(resp.status, 502, "{}", resp.body_text());
    let failures = server_series("mtls_sidecar_upstream_failures_total");
    assert!(
        sc.wait_until(WAIT, || sc.counter(&failures) >= 1.0),
        "{}",
        sc.metrics()
    );
}

#[test]
fn a_target_name_that_does_not_resolve_is_said_so_not_that_the_app_did_not_answer() {
    let (env, _) = env_with_server();
    let sc = start_ready(&env, "http", "no-such-host.invalid:8080", &["--allow-all"]);
    let resp = client_for(&env, &env.pki.client())
        .get(sc.listen_addr(), "/")
        .expect("an HTTP answer even when the target does not resolve");
    assert_eq!(resp.status, 502, "{}", resp.body_text());
    assert_eq!(
        resp.body_text().trim_end(),
        "bad gateway: the upstream app's host name did not resolve"
    );
    assert!(
        sc.wait_until(WAIT, || sc
            .log()
            .contains("the name no-such-host.invalid did not resolve")),
        "{}",
        sc.log()
    );
}

/// What bounds the wait for a slow upstream is `--idle-timeout` (the contract has no separate
/// upstream response timeout).
#[test]
fn slow_upstream_answers_504_and_is_counted() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-all", "--idle-timeout", "1s"],
    );
    let started = Instant::now();
    let resp = client_for(&env, &env.pki.client())
        .get(sc.listen_addr(), "/slow?delay_ms=8000")
        .expect("an HTTP answer when the upstream is slow");
    assert_eq!(resp.status, 504, "{}", resp.body_text());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(7),
        "504 only after {:?}: the upstream answered first?",
        started.elapsed()
    );
    let failures = server_series("mtls_sidecar_upstream_failures_total");
    assert!(
        sc.wait_until(WAIT, || sc.counter(&failures) >= 1.0),
        "{}",
        sc.metrics()
    );
}

#[test]
fn alpn_negotiates_h2_when_offered_and_http_1_1_otherwise() {
    let (env, _upstream, sc) = proxy(&["--allow-all"]);
    let client = env.pki.client();
    let h2 = TlsClient::builder(&env.pki.root.cert_pem)
        .leaf(&client)
        .alpn(&["h2", "http/1.1"])
        .build();
    let conn = h2.connect(sc.listen_addr()).expect("handshake offering h2");
    assert_eq!(conn.alpn.as_deref(), Some("h2"));
    let h1 = TlsClient::builder(&env.pki.root.cert_pem)
        .leaf(&client)
        .alpn(&["http/1.1"])
        .build();
    let mut conn = h1
        .connect(sc.listen_addr())
        .expect("handshake offering http/1.1");
    assert_eq!(conn.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(conn.get("/").expect("GET over http/1.1").status, 200);
    // Preference order: h2, then http/1.1, then http/1.0, whatever the client's order.
    let all = TlsClient::builder(&env.pki.root.cert_pem)
        .leaf(&client)
        .alpn(&["http/1.0", "http/1.1", "h2"])
        .build();
    let conn = all
        .connect(sc.listen_addr())
        .expect("handshake offering all");
    assert_eq!(conn.alpn.as_deref(), Some("h2"));
    let h10 = TlsClient::builder(&env.pki.root.cert_pem)
        .leaf(&client)
        .alpn(&["http/1.0", "http/1.1"])
        .build();
    let conn = h10
        .connect(sc.listen_addr())
        .expect("handshake offering http/1.0 and http/1.1");
    assert_eq!(conn.alpn.as_deref(), Some("http/1.1"));
}

#[test]
fn client_offering_only_http_1_0_by_alpn_is_served() {
    // `curl -0` offers only ALPN `http/1.0` (nginx accepts it); it was refused with
    // `no_application_protocol` and counted as an incompatible handshake.
    if !require_tool("curl") {
        return;
    }
    let (env, _upstream, sc) = proxy(&["--allow-all"]);
    let only = TlsClient::builder(&env.pki.root.cert_pem)
        .leaf(&env.pki.client())
        .alpn(&["http/1.0"])
        .build();
    let conn = only
        .connect(sc.listen_addr())
        .expect("handshake offering only http/1.0");
    assert_eq!(conn.alpn.as_deref(), Some("http/1.0"));
    drop(conn);
    let dir = curl_dir(&env, &env.pki.client());
    let port = port_of(sc.listen_addr());
    let res = users_curl(dir.path(), port, "/h10", &["-0"]);
    assert_eq!(res.http_code, 200, "{res:?}\n{}", sc.log());
    // curl's `%{http_version}` of an HTTP/1.0 response.
    assert_eq!(res.http_version, "1", "{res:?}");
    let echoed = Echoed::parse(res.body.as_bytes());
    assert_eq!(echoed.path, "/h10");
    assert_eq!(echoed.one("x-client-dn"), CLIENT_DN);
    assert_eq!(handshake_failures(&sc), 0.0, "{}", sc.metrics());
}

#[test]
fn curl_http2_reaches_the_upstream_with_identity_headers() {
    if !require_tool("curl") {
        return;
    }
    let (env, _upstream, sc) = proxy(&["--allow-all"]);
    let dir = curl_dir(&env, &env.pki.client());
    let port = port_of(sc.listen_addr());
    let res = users_curl(dir.path(), port, "/h2", &["--http2"]);
    assert_eq!(res.http_code, 200, "{res:?}\n{}", sc.log());
    assert_eq!(res.http_version, "2", "{res:?}");
    let echoed = Echoed::parse(res.body.as_bytes());
    assert_eq!(echoed.path, "/h2");
    assert_eq!(echoed.one("x-client-dn"), CLIENT_DN);
}

#[test]
fn http2_requests_share_one_connection() {
    if !require_tool("curl") {
        return;
    }
    let (env, _upstream, sc) = proxy(&["--allow-all"]);
    let dir = curl_dir(&env, &env.pki.client());
    let port = port_of(sc.listen_addr());
    let res = users_curl_paths(dir.path(), port, &["/a", "/b", "/c"], &["--http2"]);
    let seen: Vec<_> = res
        .transfers
        .iter()
        .map(|t| (t.http_code, t.http_version.as_str(), t.num_connects))
        .collect();
    assert_eq!(
        seen,
        [(200, "2", 1), (200, "2", 0), (200, "2", 0)],
        "{res:?}"
    );
}

/// An http server with `--idle-timeout 1s` in front of an echo upstream, and one open client
/// connection to it (the other values keep the processes alive).
fn connected_with_idle_timeout_1s() -> (Env, HttpUpstream, Sidecar, TlsConn) {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-all", "--idle-timeout", "1s"],
    );
    let conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    (env, upstream, sc, conn)
}

#[test]
fn client_that_stalls_in_its_request_headers_is_disconnected() {
    let (_env, _upstream, _sc, mut conn) = connected_with_idle_timeout_1s();
    use std::io::Write;
    conn.write_all(b"GET /echo HTTP/1.1\r\nHost: a\r\n")
        .expect("partial headers");
    let _ = conn.flush();
    assert!(
        conn.closed_within(std::time::Duration::from_secs(10)),
        "a client holding half-sent headers kept its connection past --idle-timeout"
    );
}

/// A kept-alive HTTP/1 connection with no request in progress is idle: it stays open until
/// `--idle-timeout` (here 40 s), not until the 30 s header-read deadline (that one times a
/// request head once its first byte arrived, as the test above shows); then it is closed.
/// (Before, hyper's header-read timeout also ran between requests and closed it at 30 s.)
#[test]
fn idle_keep_alive_connection_lasts_until_the_idle_timeout_not_the_header_deadline() {
    let (env, _upstream, sc) = proxy(&["--allow-all", "--idle-timeout", "40s"]);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    assert_eq!(conn.get("/first").expect("first request").status, 200);
    let idle = std::time::Duration::from_secs(33);
    assert!(
        !conn.closed_within(idle),
        "an idle kept-alive connection was closed before {idle:?} with --idle-timeout 40s\n{}",
        sc.log()
    );
    assert!(
        conn.closed_within(std::time::Duration::from_secs(40 - 33 + 15)),
        "still open well past --idle-timeout 40s"
    );
}

/// A request head started after a response and then stalled is cut at the header-read
/// deadline (30 s here), well before `--idle-timeout 60s` would close the connection.
#[test]
fn partial_head_after_a_response_is_cut_at_the_header_deadline_not_the_idle_timeout() {
    let (env, _upstream, sc) = proxy(&["--allow-all", "--idle-timeout", "60s"]);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    assert_eq!(conn.get("/first").expect("first request").status, 200);
    use std::io::Write;
    conn.write_all(b"GET /second HTTP/1.1\r\nHost: a\r\n")
        .expect("partial head");
    let _ = conn.flush();
    // The deadline is noticed up to 1.5 x late (45 s); the idle timeout would take 60 s.
    assert!(
        conn.closed_within(std::time::Duration::from_secs(52)),
        "a stalled request head outlived the 30 s header-read deadline\n{}",
        sc.log()
    );
}

/// An app may answer before it has read the whole upload, and go on reading it: the request is
/// in progress until its body is done too, so the upload that goes on after the response is
/// neither taken for the next request's head (and cut at the header-read deadline) nor for an
/// idle connection (here both are 2 s), and the connection serves the next request after it.
#[test]
fn upload_still_moving_after_an_early_response_is_not_cut() {
    let (env, upstream, sc) = proxy(&["--allow-all", "--idle-timeout", "2s"]);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    use std::io::Write;
    const CHUNK: usize = 100;
    const CHUNKS: usize = 32;
    let head = format!(
        "POST /upload?early=1 HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        CHUNK * CHUNKS
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(&[b'x'; CHUNK]).unwrap();
    conn.flush().unwrap();
    let early = conn.response().expect("the early answer");
    assert_eq!(
        (early.status, early.body_text()),
        (200, "early".to_string())
    );
    // 8 s more of upload, a chunk every 250 ms.
    for i in 1..CHUNKS {
        let sent = conn.write_all(&[b'x'; CHUNK]).and_then(|_| conn.flush());
        assert!(
            sent.is_ok() && !conn.closed_within(std::time::Duration::from_millis(250)),
            "the upload was cut after {i} of {CHUNKS} chunks ({:?} after the response)\n{}",
            std::time::Duration::from_millis(250) * i as u32,
            sc.log()
        );
    }
    assert!(
        sc.wait_until(WAIT, || upstream.early_body_bytes()
            == (CHUNK * CHUNKS) as u64),
        "the app read {} of {} body bytes",
        upstream.early_body_bytes(),
        CHUNK * CHUNKS
    );
    assert_eq!(conn.get("/next").expect("next request").status, 200);
}

#[test]
fn upload_longer_than_idle_timeout_is_not_cut() {
    let (_env, _upstream, _sc, mut conn) = connected_with_idle_timeout_1s();
    use std::io::Write;
    // 12 chunks, 250 ms apart: 3 s of upload, with traffic every 250 ms.
    conn.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
        .unwrap();
    for _ in 0..12 {
        conn.write_all(b"x").unwrap();
        let _ = conn.flush();
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    use std::io::Read;
    while !String::from_utf8_lossy(&resp).contains("\r\n\r\n") {
        let n = conn.read(&mut buf).expect("response");
        assert!(n > 0, "connection closed without a response");
        resp.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&resp);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// One stuck request among busy HTTP/2 streams of the same connection still gets its 504: the
/// wait for a response is timed per request, not by the connection's traffic (the busy streams
/// move bytes every 400 ms, well inside the 1 s idle timeout, for about 5 s; the stuck one
/// would answer after 5 s).
#[test]
fn stuck_http2_request_gets_504_while_other_streams_keep_the_connection_busy() {
    if !require_tool("curl") {
        return;
    }
    let (env, _upstream, sc) = proxy(&["--allow-all", "--idle-timeout", "1s"]);
    let dir = curl_dir(&env, &env.pki.client());
    let port = port_of(sc.listen_addr());
    let mut paths = vec!["/hang?delay_ms=5000".to_string()];
    paths.extend((0..12).map(|i| format!("/busy{i}?delay_ms=400")));
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let res = users_curl_paths(
        dir.path(),
        port,
        &paths,
        &["--http2", "--parallel", "--parallel-max", "2"],
    );
    let codes: Vec<u16> = res.transfers.iter().map(|t| t.http_code).collect();
    assert_eq!(res.transfers.len(), 13, "{res:?}");
    assert_eq!(
        codes.iter().filter(|&&c| c == 504).count(),
        1,
        "the stuck request did not get its 504: {codes:?}\n{}",
        sc.log()
    );
    for t in res.transfers.iter().filter(|t| t.http_code == 200) {
        assert!(Echoed::parse(t.body.as_bytes()).path.starts_with("/busy"));
    }
}

/// A legacy app that speaks HTTP/1.0: answers each request with an HTTP/1.0 response, with a
/// Content-Length on `/len` and delimited by closing the connection otherwise, then closes.
/// Stopped on Drop.
struct Http10App {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Http10App {
    fn start() -> Http10App {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the app");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("app address").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let reply: &[u8] = if head.starts_with(b"GET /len ") {
                    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
                } else {
                    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close\n"
                };
                let _ = conn.write_all(reply);
            }
        });
        Http10App {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Http10App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn an_http_1_0_app_does_not_end_the_clients_keep_alive_connection() {
    // Legacy apps often answer HTTP/1.0 (Python's http.server does): the client's HTTP/1.1
    // connection must stay open, not cost a full mTLS handshake per request.
    let (env, _) = env_with_server();
    let app = Http10App::start();
    let sc = start_ready(&env, "http", &app.addr, &["--allow-all"]);
    let total = server_series("mtls_sidecar_connections_total");
    let before = sc.counter(&total);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    for (i, path) in ["/len", "/eof", "/len", "/eof"].iter().enumerate() {
        let resp = conn
            .get(path)
            .unwrap_or_else(|e| panic!("request {i} ({path}) on the kept-alive connection: {e}"));
        assert_eq!(resp.status, 200, "{path}: {}", resp.body_text());
        assert_eq!(
            resp.version, "HTTP/1.1",
            "{path}: answered in the app's version"
        );
        assert!(
            !resp.closes(),
            "{path}: `Connection: close` sent to the client"
        );
        let body = if *path == "/len" {
            "ok\n"
        } else {
            "until close\n"
        };
        assert_eq!(resp.body_text(), body, "{path}");
    }
    assert_eq!(
        sc.counter(&total) - before,
        1.0,
        "four requests, one client connection"
    );
}
