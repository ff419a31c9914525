//! `--protocol tcp` (the default): bytes copied both ways, half-close carried through in
//! both directions, denied clients closed after the handshake, `unix:` targets.

use std::io::{Read, Write};

use super::*;
use crate::support::tcp_upstream::{reply_after_eof_for, TcpMode, TcpUpstream};

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn tcp_mode_copies_bytes_both_ways() {
    let (env, _) = env_with_server();
    let upstream = TcpUpstream::start(TcpMode::Echo);
    let sc = start_ready(&env, "tcp", upstream.target(), &["--allow-cn", "web-app"]);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    for chunk in [b"hello".to_vec(), payload(64 * 1024), b"bye\n".to_vec()] {
        conn.write_all(&chunk)
            .and_then(|_| conn.flush())
            .expect("write");
        let mut back = vec![0u8; chunk.len()];
        conn.read_exact(&mut back).expect("read the echo");
        assert_eq!(back, chunk);
    }
    assert_eq!(upstream.connections(), 1);
}

#[test]
fn tcp_mode_chooses_no_alpn_protocol_and_refuses_no_offer() {
    // tcp mode carries opaque bytes: a client's ALPN offer is ignored, not refused.
    let (env, _) = env_with_server();
    let upstream = TcpUpstream::start(TcpMode::Echo);
    let sc = start_ready(&env, "tcp", upstream.target(), &["--allow-all"]);
    for offer in [&["h2", "http/1.1"][..], &["http/1.0"], &["x-custom"]] {
        let mut conn = TlsClient::builder(&env.pki.root.cert_pem)
            .leaf(&env.pki.client())
            .alpn(offer)
            .build()
            .connect(sc.listen_addr())
            .unwrap_or_else(|e| panic!("handshake offering {offer:?}: {e}"));
        assert_eq!(conn.alpn, None, "offering {offer:?}");
        conn.write_all(b"ping")
            .and_then(|_| conn.flush())
            .expect("write");
        let mut back = [0u8; 4];
        conn.read_exact(&mut back).expect("read the echo");
        assert_eq!(&back, b"ping");
    }
}

#[test]
fn tcp_mode_carries_a_half_close_both_ways() {
    let (env, _) = env_with_server();
    // Answers only after it sees EOF: the client's half-close must reach it, and the
    // client's read side must stay open for the answer.
    let upstream = TcpUpstream::start(TcpMode::ReplyAfterEof);
    let sc = start_ready(&env, "tcp", upstream.target(), &["--allow-all"]);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    let data = payload(200 * 1024);
    conn.write_all(&data)
        .and_then(|_| conn.flush())
        .expect("write");
    conn.shutdown_write().expect("half-close");
    // The upstream's own half-close after its answer must end our read.
    let got = conn.read_to_eof().expect("read until the upstream's EOF");
    assert_eq!(String::from_utf8_lossy(&got), reply_after_eof_for(&data));
}

#[test]
fn tcp_mode_closes_a_denied_client_after_the_handshake() {
    let (env, _) = env_with_server();
    let upstream = TcpUpstream::start(TcpMode::Echo);
    let sc = start_ready(
        &env,
        "tcp",
        upstream.target(),
        &["--allow-cn", "someone-else"],
    );
    // The client speaks first, as most do; the close must be clean (close_notify and FIN), not
    // a bare close or a reset ("connection reset by peer") that looks like a network fault.
    let client = TlsClient::builder(&env.pki.root.cert_pem)
        .leaf(&env.pki.client())
        .settle(Duration::ZERO)
        .build();
    let mut conn = client.connect(sc.listen_addr()).expect("handshake");
    // Written once the sidecar has decided: bytes that reach a socket closed without reading
    // are answered with a reset.
    std::thread::sleep(Duration::from_millis(200));
    conn.write_all(b"let me in")
        .and_then(|_| conn.flush())
        .expect("write");
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => {} // close_notify
        other => panic!("not a clean close (close_notify, then FIN): {other:?}"),
    }
    let denied = server_series("mtls_sidecar_authz_denied_total");
    assert!(
        sc.wait_until(WAIT, || sc.counter(&denied) == 1.0),
        "{}",
        sc.metrics()
    );
    assert_eq!(
        upstream.connections(),
        0,
        "a denied client reached the upstream"
    );
}

#[test]
fn tcp_mode_forwards_to_a_unix_socket_target() {
    let (env, _) = env_with_server();
    let upstream = TcpUpstream::start_unix(&env.tmp().join("app.sock"), TcpMode::Echo);
    assert!(upstream.target().starts_with("unix:/"));
    let sc = start_ready(&env, "tcp", upstream.target(), &["--allow-all"]);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    conn.write_all(b"over a unix socket")
        .and_then(|_| conn.flush())
        .expect("write");
    let mut back = [0u8; 18];
    conn.read_exact(&mut back).expect("read the echo");
    assert_eq!(&back, b"over a unix socket");
}

#[test]
fn tcp_mode_unreachable_upstream_closes_the_client_and_is_counted() {
    let (env, _) = env_with_server();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .to_string();
    let sc = start_ready(&env, "tcp", &closed, &["--allow-all"]);
    if let Ok(mut conn) = client_for(&env, &env.pki.client()).connect(sc.listen_addr()) {
        let _ = conn.write_all(b"anyone?").and_then(|_| conn.flush());
        assert!(
            conn.closed_within(WAIT),
            "client left hanging with the upstream down"
        );
    }
    let failures = server_series("mtls_sidecar_upstream_failures_total");
    assert!(
        sc.wait_until(WAIT, || sc.counter(&failures) >= 1.0),
        "{}",
        sc.metrics()
    );
}
