//! The process around the client: usage errors that name the flag, the plaintext listener kept
//! on loopback unless `--unsafe-listen`, the listener in `/status` and the metrics, and
//! draining on SIGTERM.

use std::net::TcpStream;
use std::process::Command;

use nix::sys::signal::Signal;

use super::*;
use crate::support::bin;
use crate::support::cli_clients::{run_bounded, Ran};

/// `mtls-sidecar client --cert-dir DIR --admin-listen 127.0.0.1:0 ARGS`, bounded.
fn run_client(dir: &str, args: &[&str]) -> Ran {
    let mut cmd = Command::new(bin());
    cmd.env_remove("RUST_LOG")
        .args(["client", "--cert-dir", dir, "--admin-listen", "127.0.0.1:0"])
        .args(args);
    run_bounded(&mut cmd, b"", WAIT)
}

/// Exit 2 with a message on stderr that names every one of `flags`.
fn assert_usage_error(ran: &Ran, flags: &[&str]) {
    assert_eq!(
        ran.status.and_then(|s| s.code()),
        Some(2),
        "expected exit 2: {ran:?}"
    );
    for flag in flags {
        assert!(
            ran.stderr.contains(flag),
            "the usage error does not name {flag}: {}",
            ran.stderr
        );
    }
}

#[test]
fn usage_errors_exit_2_naming_the_flag() {
    let pods = Pods::new();
    let dir = pods.client_dir();
    let ok_target = "127.0.0.1:8443";
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--listen", "0.0.0.0:0", "--target", ok_target],
            &["--listen", "--unsafe-listen"],
        ),
        (
            &["--listen", "127.0.0.1:0", "--target", "unix:/x"],
            &["--target"],
        ),
        (
            &["--listen", "127.0.0.1:0", "--target", "api.production"],
            &["--target"],
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--target",
                ok_target,
                "--server-name",
                "bad name!",
            ],
            &["--server-name"],
        ),
        (&["--target", ok_target], &["--listen"]),
    ];
    for (args, flags) in cases {
        let ran = run_client(&dir, args);
        assert_usage_error(&ran, flags);
    }
}

#[test]
fn unsafe_listen_allows_a_non_loopback_address() {
    let pods = Pods::new();
    let (_upstream, server) = our_server(&pods, &[]);
    let mut args = client_args(
        &pods.client_dir(),
        "http",
        server.listen_addr(),
        SERVER_NAME,
        &["--unsafe-listen"],
    );
    set_flag(&mut args, "--listen", Some("0.0.0.0:0"));
    let client = Client::start_with(args);
    wait_ready(&client);
    let bound = client.status()["listeners"][0]["address"].clone();
    assert!(
        bound.as_str().is_some_and(|a| a.starts_with("0.0.0.0:")),
        "listener bound to {bound}"
    );
    let resp = client
        .fetch("/")
        .expect("request through the 0.0.0.0 listener");
    assert_eq!(echoed(&resp).one("x-client-dn"), CLIENT_DN);
}

#[test]
fn status_and_metrics_name_the_listener_client() {
    let chain = chain("http", &[]);
    let resp = chain.client.fetch("/").expect("request");
    assert_eq!(resp.status, 200);
    let status = chain.client.status();
    let listener = &status["listeners"][0];
    assert_eq!(listener["name"], "client", "{status}");
    assert_eq!(listener["address"], chain.client.addr(), "{status}");
    assert_eq!(status["sets"][0]["name"], "default", "{status}");
    assert_eq!(
        status["sets"][0]["serial"], chain.pods.client_leaf.serial_hex,
        "{status}"
    );
    let total = r#"mtls_sidecar_connections_total{listener="client"}"#;
    let answered = r#"mtls_sidecar_http_requests_total{listener="client",code="200"}"#;
    let counted = chain.client.wait_until(WAIT, || {
        chain.client.counter(total) >= 1.0 && chain.client.counter(answered) >= 1.0
    });
    assert!(counted, "{}", chain.client.metrics());
}

/// SIGTERM while a request the upstream holds for 1.5 s is in flight through client -> server
/// -> upstream: new connections are refused, the request completes, the client exits 0.
fn sigterm_lets_the_in_flight_request_finish(protocol: &str) {
    let mut chain = chain(protocol, &["--shutdown-grace", "15s"]);
    let addr = chain.client.addr().to_string();
    let slow = {
        let addr = addr.clone();
        std::thread::spawn(move || get_once(&addr, "/slow?delay_ms=1500"))
    };
    let in_flight = chain
        .client
        .wait_until(WAIT, || chain.upstream.requests_started() >= 1);
    assert!(in_flight, "the slow request never reached the upstream");

    chain.client.signal(Signal::SIGTERM);
    let refusing = chain
        .client
        .wait_until(WAIT, || TcpStream::connect(&addr).is_err());
    assert!(
        refusing,
        "still accepting connections on {addr} after SIGTERM"
    );

    let resp = slow
        .join()
        .expect("slow request thread")
        .unwrap_or_else(|e| {
            panic!(
                "in-flight request cut by SIGTERM: {e}\n{}",
                chain.client.log()
            )
        });
    assert_eq!(echoed(&resp).path, "/slow?delay_ms=1500");
    let status = chain
        .client
        .wait_exit(WAIT)
        .expect("no exit after the drain");
    assert_eq!(status.code(), Some(0), "{status}\n{}", chain.client.log());
}

#[test]
fn sigterm_in_http_mode_finishes_the_in_flight_request_and_exits_0() {
    sigterm_lets_the_in_flight_request_finish("http");
}

#[test]
fn sigterm_in_tcp_mode_finishes_the_in_flight_request_and_exits_0() {
    sigterm_lets_the_in_flight_request_finish("tcp");
}

/// Our own leaf must carry clientAuth: a server-only certificate in the client's Secret (the
/// wrong Secret mounted) is never published, so nothing is sent with it.
#[test]
fn client_leaf_without_client_auth_is_never_used() {
    let mut pods = Pods::new();
    let root = pods.pki().root.cert_pem.clone();
    let server_only = pods.pki().server();
    pods.publish_client(&server_only, &root);
    let (upstream, server) = our_server(&pods, &[]);
    let client = Client::start(&pods.client_dir(), "http", server.listen_addr(), &[]);
    let refused = client.wait_until(WAIT, || {
        client.last_error_reason().as_deref() == Some("wrong_usage")
    });
    assert!(refused, "{}", client.status());
    assert_eq!(client.generation(), 0, "{}", client.status());
    assert_eq!(client.get("/readyz").0, 503);
    let resp = client.fetch("/").expect("an answer from the client");
    assert_eq!(resp.status, 502, "{}", resp.body_text());
    assert!(
        resp.body_text()
            .starts_with("bad gateway: no_credentials: "),
        "{}",
        resp.body_text()
    );
    assert_eq!(upstream.requests_started(), 0);
}
