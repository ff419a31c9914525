//! The process around the proxy: usage errors, life before the first valid bundle,
//! connection accounting and limits, handshake timeout, and draining on SIGTERM/SIGINT.

use std::io::Read;
use std::net::TcpStream;
use std::process::Command;
use std::time::Instant;

use nix::sys::signal::Signal;

use super::*;
use crate::support::bin;
use crate::support::cli_clients::run_bounded;
use crate::support::tls_client::Response;
use crate::support::upstream::HttpUpstream;

#[test]
fn server_without_an_allow_flag_is_a_usage_error_naming_the_allow_flags() {
    let env = Env::new();
    let dir = env.dir().display().to_string();
    let mut cmd = Command::new(bin());
    cmd.env_remove("RUST_LOG").args([
        "server",
        "--cert-dir",
        &dir,
        "--listen",
        "127.0.0.1:0",
        "--target",
        "127.0.0.1:9",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let ran = run_bounded(&mut cmd, b"", WAIT);
    assert_eq!(
        ran.status.and_then(|s| s.code()),
        Some(2),
        "expected exit 2: {ran:?}"
    );
    for flag in ["--allow-all", "--allow-cn", "--allow-uri"] {
        assert!(
            ran.stderr.contains(flag),
            "usage error does not name {flag}: {}",
            ran.stderr
        );
    }
}

#[test]
fn a_taken_listen_port_is_reported_once_with_the_flag_and_address() {
    let env = Env::new();
    let dir = env.dir().display().to_string();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = busy.local_addr().expect("local addr").to_string();
    let mut cmd = Command::new(bin());
    cmd.env_remove("RUST_LOG").args([
        "server",
        "--cert-dir",
        &dir,
        "--listen",
        &addr,
        "--target",
        "127.0.0.1:9",
        "--allow-all",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let ran = run_bounded(&mut cmd, b"", WAIT);
    assert_eq!(ran.status.and_then(|s| s.code()), Some(1), "{ran:?}");
    let error = ran
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {}", ran.stderr));
    assert!(error.contains("--listen"), "{error}");
    assert!(error.contains(&addr), "{error}");
    assert!(error.contains("in use"), "{error}");
    assert_eq!(
        error.matches("os error").count(),
        1,
        "the OS error is said more than once: {error}"
    );
    drop(busy);
}

#[test]
fn before_the_first_bundle_handshakes_fail_and_readyz_is_503_until_files_appear() {
    let mut env = Env::new();
    let upstream = HttpUpstream::start();
    let sc = start(&env, "http", &upstream.addr(), &["--allow-all"]);
    let (code, body) = sc.get("/readyz");
    assert_eq!(code, 503, "/readyz without credentials: {body}");
    let client = client_for(&env, &env.pki.client());
    let started = Instant::now();
    let err = refused(&client, sc.listen_addr());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the refusal took {:?} ({err}): a hang, not a clean failure",
        started.elapsed()
    );
    assert!(
        sc.healthy(),
        "/healthz must stay 200 while waiting for credentials"
    );

    let server = env.pki.server();
    env.publish(&server);
    wait_ready(&sc);
    let mut conn = client
        .connect(sc.listen_addr())
        .expect("handshake once files appear");
    assert_eq!(conn.peer.serial_hex, server.serial_hex);
    assert_eq!(conn.get("/").expect("GET").status, 200);
}

#[test]
fn status_and_metrics_count_open_connections() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(&env, "http", &upstream.addr(), &["--allow-all"]);
    let active = server_series("mtls_sidecar_connections_active");
    let listener = |sc: &Sidecar| sc.status()["listeners"][0].clone();
    assert_eq!(listener(&sc)["name"], "server", "{}", sc.status());
    assert_eq!(listener(&sc)["address"], sc.listen_addr());

    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    assert_eq!(conn.get("/").expect("GET").status, 200);
    assert!(
        sc.wait_until(WAIT, || listener(&sc)["active_connections"] == 1),
        "{}",
        sc.status()
    );
    assert_eq!(sc.metric(&active), Some(1.0), "{}", sc.metrics());
    assert!(sc.counter(&server_series("mtls_sidecar_connections_total")) >= 1.0);
    drop(conn);
    assert!(
        sc.wait_until(WAIT, || listener(&sc)["active_connections"] == 0),
        "{}",
        sc.status()
    );
    assert_eq!(sc.metric(&active), Some(0.0), "{}", sc.metrics());
}

#[test]
fn a_client_that_never_starts_its_handshake_is_cut_off() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-all", "--handshake-timeout", "1s"],
    );
    let mut idle = TcpStream::connect(sc.listen_addr()).expect("tcp connect");
    idle.set_read_timeout(Some(WAIT)).expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let got = idle.read(&mut buf);
    assert!(
        matches!(got, Ok(0) | Err(_)) && started.elapsed() < Duration::from_secs(8),
        "silent client not cut off by --handshake-timeout 1s: {got:?} after {:?}",
        started.elapsed()
    );
}

#[test]
fn max_connections_1_with_two_clients_never_crashes_the_process() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let mut sc = start_ready(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-all", "--max-connections", "1"],
    );
    let client = client_for(&env, &env.pki.client());
    let addr = sc.listen_addr().to_string();
    let mut first = client.connect(&addr).expect("first client");
    assert_eq!(first.get("/1").expect("first request").status, 200);
    // The second client waits or is refused; either way it must not hurt the process.
    let (c2, a2) = (client.clone(), addr.clone());
    let second = std::thread::spawn(move || c2.get(&a2, "/2").map(|r| r.status));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sc.running(),
        "the process died with two clients over --max-connections 1"
    );
    assert!(sc.healthy());
    assert_eq!(
        first
            .get("/1-again")
            .expect("first client still served")
            .status,
        200
    );
    drop(first);
    let outcome = second.join().expect("second client thread");
    let third = sc.wait_until(WAIT, || {
        client.get(&addr, "/3").is_ok_and(|r| r.status == 200)
    });
    assert!(
        third,
        "no client served after the first left (second got {outcome:?})"
    );
    assert!(sc.running());
}

/// Start a request that the upstream holds for `delay_ms`; returns once the upstream has it.
fn in_flight(
    env: &Env,
    sc: &Sidecar,
    upstream: &HttpUpstream,
    delay_ms: u64,
) -> std::thread::JoinHandle<Result<Response, String>> {
    let client = client_for(env, &env.pki.client());
    let addr = sc.listen_addr().to_string();
    let before = upstream.requests_started();
    let handle = std::thread::spawn(move || {
        let mut conn = client.connect(&addr)?;
        conn.get(&format!("/slow?delay_ms={delay_ms}"))
    });
    assert!(
        sc.wait_until(WAIT, || upstream.requests_started() > before),
        "the slow request never reached the upstream"
    );
    handle
}

#[test]
fn sigterm_finishes_in_flight_requests_refuses_new_connections_and_exits_0() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let mut sc = start_ready(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-all", "--shutdown-grace", "15s"],
    );
    let addr = sc.listen_addr().to_string();
    let slow = in_flight(&env, &sc, &upstream, 5000);

    sc.signal(Signal::SIGTERM);
    let refusing = sc.wait_until(Duration::from_secs(4), || {
        TcpStream::connect(&addr).is_err()
    });
    assert!(
        refusing,
        "still accepting TCP connections on {addr} 4 s after SIGTERM"
    );
    assert!(sc.running(), "exited with a request in flight");

    let resp = slow
        .join()
        .expect("slow request thread")
        .unwrap_or_else(|e| panic!("in-flight request cut by SIGTERM: {e}\n{}", sc.log()));
    assert_eq!(resp.status, 200);
    let status = sc.wait_exit(WAIT).expect("no exit after the drain");
    assert_eq!(status.code(), Some(0), "{status}");
}

/// SIGTERM does not close an idle kept-alive HTTP/1 connection under its client: a request on
/// it within 5 s is answered, with `Connection: close`; then the process exits 0.
#[test]
fn sigterm_answers_the_next_request_of_an_idle_keep_alive_connection_with_connection_close() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let mut sc = start_ready(&env, "http", &upstream.addr(), &["--allow-all"]);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    assert_eq!(conn.get("/before").expect("before SIGTERM").status, 200);
    sc.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_secs(1));
    let resp = conn
        .get("/after")
        .unwrap_or_else(|e| panic!("the request after SIGTERM failed: {e}\n{}", sc.log()));
    assert_eq!(resp.status, 200);
    assert!(resp.closes(), "no `Connection: close`: {:?}", resp.headers);
    let status = sc.wait_exit(WAIT).expect("no exit after the drain");
    assert_eq!(status.code(), Some(0), "{status}");
}

/// A second SIGTERM (and a SIGINT) while draining is logged, once each, and changes nothing:
/// the in-flight request still completes and the exit is 0.
#[test]
fn second_sigterm_during_the_drain_is_logged_and_changes_nothing() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let mut sc = start_ready(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-all", "--shutdown-grace", "15s"],
    );
    let slow = in_flight(&env, &sc, &upstream, 3000);
    sc.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    sc.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    sc.signal(Signal::SIGINT);
    let again = |log: String, name: &str| {
        log.lines()
            .filter(|l| l.contains("shutdown already under way") && l.contains(name))
            .count()
    };
    assert!(
        sc.wait_until(WAIT, || again(sc.log(), "SIGTERM") == 1
            && again(sc.log(), "SIGINT") == 1),
        "the signals during the drain were not logged once each:\n{}",
        sc.log()
    );
    assert!(
        sc.running(),
        "a second signal ended the drain:\n{}",
        sc.log()
    );
    let resp = slow
        .join()
        .expect("slow request thread")
        .unwrap_or_else(|e| panic!("in-flight request cut: {e}\n{}", sc.log()));
    assert_eq!(resp.status, 200);
    let status = sc.wait_exit(WAIT).expect("no exit after the drain");
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(again(sc.log(), "SIGTERM"), 1, "{}", sc.log());
}

#[test]
fn sigint_drains_and_exits_0_too() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let mut sc = start_ready(&env, "http", &upstream.addr(), &["--allow-all"]);
    let slow = in_flight(&env, &sc, &upstream, 1500);
    sc.signal(Signal::SIGINT);
    let resp = slow.join().expect("slow request thread");
    assert_eq!(resp.map(|r| r.status), Ok(200));
    let status = sc.wait_exit(WAIT).expect("no exit after SIGINT");
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn shutdown_grace_bounds_the_drain() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let mut sc = start_ready(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-all", "--shutdown-grace", "1s"],
    );
    let slow = in_flight(&env, &sc, &upstream, 30_000);
    let signalled = Instant::now();
    sc.signal(Signal::SIGTERM);
    let status = sc
        .wait_exit(WAIT)
        .expect("drain not bounded by --shutdown-grace 1s");
    assert!(signalled.elapsed() < Duration::from_secs(8));
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        slow.join().expect("slow thread").is_err(),
        "request outlived the grace"
    );
}
