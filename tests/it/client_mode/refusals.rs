//! Servers the client must not talk to, and upstreams it cannot reach. The app is never left
//! hanging: in http mode it gets a 502 whose body names the reason, in tcp mode its connection
//! is closed at once; either way the failure is counted under that reason.
//!
//! Certificates our `server` refuses to publish (no serverAuth, expired, not yet valid) are
//! served by a plain TLS echo (`HttpUpstream::start_tls`) instead.

use std::io::Write;
use std::time::Instant;

use super::*;
use crate::support::pki::{Eku, LeafSpec};

const MODES: [&str; 2] = ["http", "tcp"];

/// A TLS echo (no client certificates asked) serving a leaf made from `spec`, signed by the root.
fn tls_echo(pods: &Pods, spec: &LeafSpec) -> HttpUpstream {
    let leaf = pods.pki().issue(spec);
    HttpUpstream::start_tls(&leaf.chain_pem, &leaf.key_pkcs8_pem)
}

/// The app's request through `client` fails promptly with `reason`: in http mode a 502 with
/// body `bad gateway: REASON: ...`, in tcp mode the connection closed without a byte.
fn assert_refused(client: &Client, protocol: &str, reason: &str) {
    let started = Instant::now();
    if protocol == "http" {
        let resp = client
            .fetch("/")
            .unwrap_or_else(|e| panic!("no response from the client: {e}\n{}", client.log()));
        assert_eq!(resp.status, 502, "{}\n{}", resp.body_text(), client.log());
        let body = resp.body_text();
        assert!(
            body.starts_with(&format!("bad gateway: {reason}: ")),
            "the 502 does not name {reason}: {body:?}\n{}",
            client.log()
        );
        for debug_text in ["DnsName(", "IpAddress(", "(UNIX)"] {
            assert!(
                !body.contains(debug_text),
                "the 502 shows rustls' debug text {debug_text:?}: {body:?}"
            );
        }
    } else {
        let mut conn = client.connect();
        // The app speaks first, as an HTTP client does; nothing may come back.
        let _ = conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            conn.closed_within(WAIT),
            "tcp mode kept the app's connection open ({reason} expected)\n{}",
            client.log()
        );
    }
    assert!(
        started.elapsed() < WAIT,
        "the refusal took {:?}: a hang, not a clean failure",
        started.elapsed()
    );
}

/// `assert_refused`, then: counted once per refusal in `upstream_failures_total` and, for a
/// TLS reason, in `handshake_failures_total{reason}`.
fn assert_refused_and_counted(client: &Client, protocol: &str, reason: &str) {
    assert_refused(client, protocol, reason);
    let counted = client.wait_until(WAIT, || {
        client.upstream_failures() >= 1.0 && client.handshake_failures(reason) >= 1.0
    });
    assert!(
        counted,
        "{protocol} mode: refusal ({reason}) not counted:\n{}\n{}",
        client.metrics(),
        client.log()
    );
}

/// A ready client in each mode to `target` verifying `name`, refused with `reason`.
fn refused_in_both_modes(pods: &Pods, target: &str, name: &str, extra: &[&str], reason: &str) {
    for protocol in MODES {
        let args = client_args(&pods.client_dir(), protocol, target, name, extra);
        let client = Client::start_with(args);
        wait_ready(&client);
        assert_refused_and_counted(&client, protocol, reason);
    }
}

#[test]
fn wrong_server_name_is_refused_as_server_name_mismatch() {
    let pods = Pods::new();
    let (_upstream, server) = our_server(&pods, &[]);
    refused_in_both_modes(
        &pods,
        server.listen_addr(),
        "billing.production.svc.cluster.local",
        &[],
        "server_name_mismatch",
    );
}

#[test]
fn server_certificate_from_another_ca_is_refused_as_untrusted() {
    let mut pods = Pods::new();
    // A server whose own CA is another root (it still trusts our client's root).
    let pki = pods.pki();
    let foreign = pki.issue_by(&pki.other_root, &TestPki::server_spec());
    let bundle = format!("{}{}", pki.other_root.cert_pem, pki.root.cert_pem);
    pods.publish_server(&foreign, &bundle);
    let (_upstream, server) = our_server(&pods, &[]);
    refused_in_both_modes(
        &pods,
        server.listen_addr(),
        SERVER_NAME,
        &[],
        "server_cert_untrusted",
    );
}

#[test]
fn server_certificate_without_server_auth_is_refused_as_wrong_usage() {
    let pods = Pods::new();
    let upstream = tls_echo(&pods, &TestPki::server_spec().eku(Eku::Client));
    refused_in_both_modes(
        &pods,
        &upstream.addr(),
        SERVER_NAME,
        &[],
        "server_cert_wrong_usage",
    );
}

#[test]
fn expired_server_certificate_is_refused_as_expired() {
    let pods = Pods::new();
    let upstream = tls_echo(&pods, &TestPki::server_spec().expired());
    refused_in_both_modes(
        &pods,
        &upstream.addr(),
        SERVER_NAME,
        &[],
        "server_cert_expired",
    );
}

#[test]
fn server_certificate_not_yet_valid_is_refused_as_not_yet_valid() {
    let pods = Pods::new();
    let upstream = tls_echo(&pods, &TestPki::server_spec().not_yet_valid());
    refused_in_both_modes(
        &pods,
        &upstream.addr(),
        SERVER_NAME,
        &[],
        "server_cert_not_yet_valid",
    );
}

#[test]
fn verify_pin_the_server_lacks_is_refused_as_pin_mismatch() {
    let pods = Pods::new();
    let (_upstream, server) = our_server(&pods, &[]);
    refused_in_both_modes(
        &pods,
        server.listen_addr(),
        SERVER_NAME,
        &[
            "--verify-dns",
            "api.production",
            "--verify-dns",
            "api.example.com",
        ],
        "server_cert_pin_mismatch",
    );
    refused_in_both_modes(
        &pods,
        server.listen_addr(),
        SERVER_NAME,
        &[
            "--verify-uri",
            "spiffe://cluster.local/ns/production/sa/api",
        ],
        "server_cert_pin_mismatch",
    );
}

#[test]
fn a_pin_mismatch_is_reported_in_words_not_as_debug_text() {
    let pods = Pods::new();
    let (_upstream, server) = our_server(&pods, &[]);
    let args = client_args(
        &pods.client_dir(),
        "http",
        server.listen_addr(),
        SERVER_NAME,
        &["--verify-dns", "api.example.com"],
    );
    let client = Client::start_with(args);
    wait_ready(&client);
    let resp = client.fetch("/").expect("a 502 answer");
    assert_eq!(resp.status, 502);
    let body = resp.body_text();
    assert!(
        body.contains("lacks the pinned DNS SAN \"api.example.com\""),
        "{body}"
    );
    for text in [body.as_str(), client.log().as_str()] {
        assert!(
            !text.contains("OtherError") && !text.contains("PinMismatch {"),
            "Rust debug text reached a user: {text}"
        );
    }
}

#[test]
fn verify_pins_the_server_has_let_requests_through() {
    let pods = Pods::new();
    let (_upstream, server) = our_server(&pods, &[]);
    for protocol in MODES {
        let client = Client::start_ready(
            &pods.client_dir(),
            protocol,
            server.listen_addr(),
            &[
                "--verify-dns",
                "api.production",
                "--verify-dns",
                "api.production.svc",
            ],
        );
        let resp = client
            .fetch("/pinned")
            .unwrap_or_else(|e| panic!("{protocol}: {e}\n{}", client.log()));
        assert_eq!(echoed(&resp).one("x-client-dn"), CLIENT_DN);
        assert_eq!(client.upstream_failures(), 0.0, "{}", client.metrics());
    }
}

#[test]
fn client_certificate_the_server_does_not_trust_is_reported_as_rejected_by_server() {
    let mut pods = Pods::new();
    // Our client's certificate comes from another root, which the server does not trust.
    let pki = pods.pki();
    let stranger = pki.issue_by(&pki.other_root, &TestPki::client_spec());
    let bundle = format!("{}{}", pki.root.cert_pem, pki.other_root.cert_pem);
    pods.publish_client(&stranger, &bundle);
    let (upstream, server) = our_server(&pods, &[]);
    refused_in_both_modes(
        &pods,
        server.listen_addr(),
        SERVER_NAME,
        &[],
        "rejected_by_server",
    );
    assert_eq!(upstream.requests_started(), 0, "a request got through");
}

#[test]
fn before_the_first_client_bundle_requests_fail_as_no_credentials() {
    let pods = Pods::new();
    let (_upstream, server) = our_server(&pods, &[]);
    let empty = KubeletVolume::new(pods.env.tmp().join("empty-vol"));
    let dir = empty.dir().display().to_string();
    for protocol in MODES {
        let client = Client::start(&dir, protocol, server.listen_addr(), &[]);
        let (code, body) = client.get("/readyz");
        assert_eq!(code, 503, "/readyz without credentials: {body}");
        assert_refused_and_counted(&client, protocol, "no_credentials");
        assert!(client.healthy());
    }
}

#[test]
fn unreachable_upstream_fails_promptly_as_connect_failed() {
    let pods = Pods::new();
    // A port nobody listens on (bound, then released).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    for protocol in MODES {
        let client = Client::start_ready(&pods.client_dir(), protocol, &closed, &[]);
        assert_refused(&client, protocol, "connect_failed");
        let counted = client.wait_until(WAIT, || client.upstream_failures() >= 1.0);
        assert!(counted, "{protocol}: not counted:\n{}", client.metrics());
        let handshakes = client.metric_sum(
            "mtls_sidecar_handshake_failures_total",
            &[("listener", "client")],
        );
        assert_eq!(
            handshakes,
            0.0,
            "{protocol}: a refused TCP connect is no handshake failure:\n{}",
            client.metrics()
        );
    }
}

#[test]
fn a_target_name_that_does_not_resolve_is_said_so() {
    let pods = Pods::new();
    let target = "no-such-host.invalid:443";
    for protocol in MODES {
        let client = Client::start_ready(&pods.client_dir(), protocol, target, &[]);
        assert_refused(&client, protocol, "connect_failed");
        let said = "the name no-such-host.invalid did not resolve";
        if protocol == "http" {
            let body = client.fetch("/").expect("a 502").body_text();
            assert!(body.contains(said), "{body}");
        }
        assert!(
            client.wait_until(WAIT, || client.log().contains(said)),
            "{protocol}: the log does not say the name did not resolve:\n{}",
            client.log()
        );
    }
}

#[test]
fn upstream_silent_past_idle_timeout_answers_504() {
    let chain = chain("http", &["--idle-timeout", "1s"]);
    // The upstream would answer 200 after 5 s: a 504 is the 1 s timeout at work.
    let resp = chain
        .client
        .fetch("/slow?delay_ms=5000")
        .unwrap_or_else(|e| panic!("no response: {e}\n{}", chain.client.log()));
    assert_eq!(resp.status, 504, "{}", resp.body_text());
    assert!(chain.client.upstream_failures() >= 1.0);
    // The client itself stays usable.
    let ok = chain.client.fetch("/after").expect("request after the 504");
    assert_eq!(ok.status, 200);
}

/// `client_args` without `--server-name`: the name verified is the target's host.
fn args_without_server_name(pods: &Pods, protocol: &str, target: &str) -> Vec<String> {
    let mut args = client_args(&pods.client_dir(), protocol, target, SERVER_NAME, &[]);
    set_flag(&mut args, "--server-name", None);
    args
}

#[test]
fn without_server_name_the_target_host_is_verified() {
    let mut pods = Pods::new();
    let (_upstream, server) = our_server(&pods, &[]);
    // The guide's server certificate has DNS names only: 127.0.0.1 is not one of them.
    for protocol in MODES {
        let client = Client::start_with(args_without_server_name(
            &pods,
            protocol,
            server.listen_addr(),
        ));
        wait_ready(&client);
        assert_refused_and_counted(&client, protocol, "server_name_mismatch");
    }
    // A server certificate that names 127.0.0.1 is accepted for target 127.0.0.1:PORT.
    let root = pods.pki().root.cert_pem.clone();
    let with_ip = pods
        .pki()
        .issue(&TestPki::server_spec().ips(&["127.0.0.1".parse().expect("an IP address")]));
    pods.publish_server(&with_ip, &root);
    let served = server.wait_until(WAIT, || {
        server.serial().as_deref() == Some(with_ip.serial_hex.as_str())
    });
    assert!(served, "{}", server.log());
    for protocol in MODES {
        let client = Client::start_with(args_without_server_name(
            &pods,
            protocol,
            server.listen_addr(),
        ));
        wait_ready(&client);
        let resp = client
            .fetch("/by-ip")
            .unwrap_or_else(|e| panic!("{protocol}: {e}\n{}", client.log()));
        assert_eq!(echoed(&resp).one("x-client-dn"), CLIENT_DN);
    }
}

/// A server that cannot speak the TLS version we require answers with a protocol alert, not a
/// certificate one: that is `incompatible`, never `rejected_by_server` (which would send the
/// operator looking at the client certificate).
#[test]
fn a_tls_version_the_server_lacks_is_incompatible_not_a_rejected_certificate() {
    if !crate::support::require_tool("openssl") {
        return;
    }
    let pods = Pods::new();
    let leaf = pods.pki().server();
    let dir = pods.env.tmp().join("s_server");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), &leaf.chain_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &leaf.key_pkcs8_pem).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let _server = crate::support::procs::Reaped(
        std::process::Command::new("openssl")
            .current_dir(&dir)
            .args(["s_server", "-quiet", "-tls1_2", "-www"])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .args(["-cert", "tls.crt", "-key", "tls.key"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    let target = format!("127.0.0.1:{port}");
    assert!(
        crate::support::sidecar::wait_until(WAIT, || std::net::TcpStream::connect(&target).is_ok()),
        "openssl s_server did not start"
    );
    refused_in_both_modes(
        &pods,
        &target,
        SERVER_NAME,
        &["--min-tls", "1.3"],
        "incompatible",
    );
}
