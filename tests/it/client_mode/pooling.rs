//! http mode keeps upstream mTLS connections alive: an app that opens a connection per request
//! pays no handshake per request, and with a server that offers `h2` concurrent requests share
//! one connection. A server that closes pooled connections (idle timeout, GOAWAY at
//! `--max-connection-age`) costs the app no failed request. Upstream connections are counted
//! where they arrive: our server's `mtls_sidecar_connections_total{listener="server"}`.

use std::sync::Arc;
use std::thread::JoinHandle;

use super::*;
use crate::support::cli_clients::curl;
use crate::support::require_tool;

const SEQUENTIAL: usize = 1000;
const CONCURRENT: usize = 8;

#[test]
fn a_thousand_app_connections_cost_only_a_few_upstream_handshakes() {
    let chain = chain("http", &[]);
    let before = server_connections(&chain.server);
    for i in 0..SEQUENTIAL {
        let resp = chain
            .client
            .fetch(&format!("/seq/{i}"))
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", chain.client.log()));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.body_text());
    }
    let handshakes = server_connections(&chain.server) - before;
    assert!(
        handshakes <= 5.0,
        "{SEQUENTIAL} app connections made {handshakes} upstream connections: no pooling"
    );
    let app_connections = chain
        .client
        .counter(r#"mtls_sidecar_connections_total{listener="client"}"#);
    assert!(
        app_connections >= SEQUENTIAL as f64,
        "the client counted {app_connections} app connections"
    );
    eprintln!("{SEQUENTIAL} app connections, {handshakes} upstream connection(s)");
}

/// Warm the pool with one request, then send `CONCURRENT` requests that the upstream holds
/// for a second each, all in flight at once, each on its own app connection. Returns how many
/// new connections our server accepted meanwhile.
fn new_upstream_connections_for_concurrent_requests(chain: &Chain) -> f64 {
    let warm = chain.client.fetch("/warm").expect("warm-up request");
    assert_eq!(warm.status, 200, "{}", warm.body_text());
    let before = server_connections(&chain.server);
    let started_before = chain.upstream.requests_started();
    let addr: Arc<str> = chain.client.addr().into();
    let threads: Vec<JoinHandle<Result<Response, String>>> = (0..CONCURRENT)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || get_once(&addr, &format!("/concurrent/{i}?delay_ms=1000")))
        })
        .collect();
    let all_in_flight = chain.client.wait_until(WAIT, || {
        chain.upstream.requests_started() >= started_before + CONCURRENT
    });
    assert!(
        all_in_flight,
        "the requests never were all in flight at once"
    );
    for (i, t) in threads.into_iter().enumerate() {
        let resp = t
            .join()
            .expect("request thread")
            .unwrap_or_else(|e| panic!("concurrent request {i}: {e}\n{}", chain.client.log()));
        assert_eq!(resp.status, 200, "{}", resp.body_text());
    }
    server_connections(&chain.server) - before
}

/// Our server offers `h2` by ALPN in http mode: concurrent requests are streams on the one
/// pooled connection. (The server forwards to its app over HTTP/1.1, so the echo cannot show
/// the version: multiplexing is the observable sign of HTTP/2.)
#[test]
fn concurrent_requests_share_one_http2_connection_when_the_server_offers_h2() {
    let chain = chain("http", &[]);
    let new = new_upstream_connections_for_concurrent_requests(&chain);
    assert_eq!(
        new, 0.0,
        "{CONCURRENT} concurrent requests opened {new} more upstream connections: not HTTP/2"
    );
}

/// The control for the test above: our server in tcp mode offers no ALPN, so the client speaks
/// HTTP/1.1 and concurrent requests need connections of their own.
#[test]
fn concurrent_requests_open_parallel_http1_connections_without_h2() {
    let pods = Pods::new();
    let upstream = HttpUpstream::start();
    let server = start_server(&pods.server_dir(), "tcp", &upstream.addr(), &[]);
    let client = Client::start_ready(&pods.client_dir(), "http", server.listen_addr(), &[]);
    let chain = Chain {
        pods,
        upstream,
        server,
        client,
    };
    let new = new_upstream_connections_for_concurrent_requests(&chain);
    assert!(
        new >= (CONCURRENT - 1) as f64,
        "{CONCURRENT} concurrent HTTP/1.1 requests opened only {new} more upstream connections"
    );
}

/// (One URL per run: curl 7.88 fails its second request on a reused h2c connection with
/// "Error in the HTTP2 framing layer" against any h2c server, nginx too.)
#[test]
fn app_speaking_http2_with_prior_knowledge_is_served() {
    if !require_tool("curl") {
        return;
    }
    let chain = chain("http", &[]);
    let url = format!("http://{}/h2c", chain.client.addr());
    let res = curl(chain.pods.env.tmp(), &["--http2-prior-knowledge", &url]);
    assert_eq!(
        (res.http_code, res.http_version.as_str()),
        (200, "2"),
        "{res:?}"
    );
    let echo = Echoed::parse(res.body.as_bytes());
    assert_eq!(echo.path, "/h2c");
    assert_eq!(echo.one("x-client-dn"), CLIENT_DN);
}

/// Our server drops connections idle for 1 s: the pooled connection the client kept is gone
/// by the next request, which must still succeed (on a new connection), not fail with a 502.
#[test]
fn server_closing_idle_pooled_connections_fails_no_request() {
    let chain = chain_with("http", &[], &["--idle-timeout", "1s"]);
    for i in 0..3 {
        let resp = chain
            .client
            .fetch(&format!("/after-idle/{i}"))
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", chain.client.log()));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.body_text());
        // Let the server's idle timeout close the pooled connection.
        std::thread::sleep(Duration::from_millis(2500));
    }
    assert_eq!(
        chain.client.upstream_failures(),
        0.0,
        "{}",
        chain.client.metrics()
    );
    assert!(
        server_connections(&chain.server) >= 2.0,
        "the server never closed an idle connection: the test proved nothing"
    );
}

/// Our server ends each connection after 250 ms (`--max-connection-age`, GOAWAY on HTTP/2):
/// while the app sends requests without pause, the client moves to new connections with no
/// failure. A request the server refused because it came after the GOAWAY was never processed,
/// so it is safe to send again on a new connection.
#[test]
fn server_max_connection_age_fails_no_request() {
    let chain = chain_with("http", &[], &["--max-connection-age", "250ms"]);
    let addr: Arc<str> = chain.client.addr().into();
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    let threads: Vec<JoinHandle<Vec<String>>> = (0..4)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut n = 0;
                while std::time::Instant::now() < deadline {
                    match get_once(&addr, &format!("/aged/{t}/{n}")) {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => {
                            failures.push(format!("{t}/{n}: HTTP {}: {}", r.status, r.body_text()))
                        }
                        Err(e) => failures.push(format!("{t}/{n}: {e}")),
                    }
                    n += 1;
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("request thread"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        chain.client.log()
    );
    assert!(
        server_connections(&chain.server) >= 3.0,
        "the server never aged out a connection: the test proved nothing"
    );
}
