//! Slow clients against `server --protocol http --allow-all`: before the TLS handshake
//! (connections that send nothing, or a real ClientHello one byte every 500 ms) and after it
//! (HTTP/1.1 request headers one byte every 500 ms). `--handshake-timeout` is a deadline for the
//! whole handshake and the HTTP/1 header read a deadline for the whole head (`min(--idle-timeout,
//! 30s)`): a trickle that keeps the connection busy does not extend either. Every trickle below
//! would take far longer than the bound it is held to, so being cut within the bound proves the
//! deadline; a legitimate client is served meanwhile, and after `--max-connections` slots held by
//! slow clients free up.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::support::fixture::Env;
use crate::support::sidecar::Sidecar;
use crate::support::tls_client::{TlsClient, TlsConn, SERVER_NAME};
use crate::support::upstream::HttpUpstream;

/// Upper bound for anything the sidecar should do "soon".
const WAIT: Duration = Duration::from_secs(10);

/// The pause between two trickled bytes.
const TRICKLE: Duration = Duration::from_millis(500);

/// `server --protocol http --allow-all EXTRA...` on a fresh volume and upstream, ready.
fn start(extra: &[&str]) -> (Env, HttpUpstream, Sidecar) {
    super::http_proxy(extra)
}

fn client(env: &Env) -> TlsClient {
    super::client_for(env, &env.pki.client())
}

/// `handshake_failures_total{listener="server",reason="timeout"}`.
fn handshake_timeouts(sc: &Sidecar) -> f64 {
    sc.counter(r#"mtls_sidecar_handshake_failures_total{listener="server",reason="timeout"}"#)
}

/// The bytes of a real TLS ClientHello for the server name of our certificates.
fn client_hello(env: &Env) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(env.pki.root.cert_pem.as_bytes()).expect("root PEM");
    roots.add(ca).expect("root is acceptable");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(SERVER_NAME).expect("server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("ClientHello");
    }
    assert!(hello.len() > 100, "a ClientHello is longer: {hello:?}");
    hello
}

/// Wait (bounded by `deadline`) until the peer ends `tcp`; the time from `started` until then,
/// or None if it was still open at `deadline`. Anything the peer sends is read and ignored.
fn time_to_close(mut tcp: TcpStream, started: Instant, deadline: Instant) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        tcp.set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .expect("read timeout");
        match tcp.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
}

/// A TCP connection that never sends a byte, watched on its own thread: the time until the
/// sidecar closed it, or None if it was still open `bound` after connecting.
fn silent(addr: &str, bound: Duration) -> JoinHandle<Option<Duration>> {
    let tcp = TcpStream::connect(addr).expect("tcp connect");
    let started = Instant::now();
    std::thread::spawn(move || time_to_close(tcp, started, started + bound))
}

/// A TCP connection that sends `hello` one byte per `TRICKLE`, on its own thread: the time
/// until the sidecar closed it and the bytes sent by then, or None if it was still open `bound`
/// after connecting.
fn trickling_hello(
    addr: &str,
    hello: Vec<u8>,
    bound: Duration,
) -> JoinHandle<Option<(Duration, usize)>> {
    let mut tcp = TcpStream::connect(addr).expect("tcp connect");
    let started = Instant::now();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        for (sent, byte) in hello.iter().enumerate() {
            if started.elapsed() > bound {
                return None;
            }
            if tcp.write_all(&[*byte]).is_err() {
                return Some((started.elapsed(), sent));
            }
            tcp.set_read_timeout(Some(TRICKLE)).expect("read timeout");
            match tcp.read(&mut buf) {
                Ok(0) => return Some((started.elapsed(), sent + 1)),
                Ok(n) => panic!(
                    "the sidecar answered a partial ClientHello ({} bytes) with {n} bytes",
                    sent + 1
                ),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Some((started.elapsed(), sent + 1)),
            }
        }
        panic!(
            "the whole ClientHello ({} bytes) went out before the sidecar closed the connection",
            hello.len()
        );
    })
}

/// A TLS connection that sends `head` one byte per `TRICKLE`, on its own thread: the time from
/// its first byte until the sidecar closed it and the bytes sent by then, or None if it was
/// still open `bound` after the first byte.
fn trickling_head(
    mut conn: TlsConn,
    head: &'static [u8],
    bound: Duration,
) -> JoinHandle<Option<(Duration, usize)>> {
    std::thread::spawn(move || {
        let started = Instant::now();
        for (sent, byte) in head.iter().enumerate() {
            if started.elapsed() > bound {
                return None;
            }
            if conn.write_all(&[*byte]).and_then(|_| conn.flush()).is_err() {
                return Some((started.elapsed(), sent));
            }
            if conn.closed_within(TRICKLE) {
                return Some((started.elapsed(), sent + 1));
            }
        }
        panic!(
            "the whole request head ({} bytes) went out before the sidecar closed the connection",
            head.len()
        );
    })
}

/// `GET path` as a legitimate client: 200 from the upstream.
fn assert_served(env: &Env, sc: &Sidecar, path: &str) {
    let resp = client(env)
        .get(sc.listen_addr(), path)
        .unwrap_or_else(|e| panic!("legitimate GET {path} failed: {e}\n{}", sc.log()));
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.body_text());
}

#[test]
fn silent_and_trickling_clients_before_the_handshake_are_cut_at_the_handshake_timeout() {
    let timeout = Duration::from_secs(2);
    let (env, _upstream, sc) = start(&["--handshake-timeout", "2s"]);
    let addr = sc.listen_addr().to_string();
    let before = handshake_timeouts(&sc);
    let bound = timeout + WAIT;
    let hello = client_hello(&env);
    // The trickles would need hello.len() * 500 ms (over a minute) to finish.
    assert!(TRICKLE * hello.len() as u32 > bound * 3);

    let silent: Vec<_> = (0..16).map(|_| silent(&addr, bound)).collect();
    let trickling: Vec<_> = (0..3)
        .map(|_| trickling_hello(&addr, hello.clone(), bound))
        .collect();
    // Plenty of slots remain (default --max-connections): a real client is served meanwhile.
    assert_served(&env, &sc, "/during-slowloris");

    for (i, t) in silent.into_iter().enumerate() {
        let closed = t.join().expect("silent connection thread");
        let after = closed.unwrap_or_else(|| {
            panic!(
                "silent connection {i} still open {bound:?} after connecting (--handshake-timeout 2s)\n{}",
                sc.log()
            )
        });
        assert!(
            after >= timeout - Duration::from_millis(100),
            "silent connection {i} closed after {after:?}, before the handshake timeout"
        );
    }
    for (i, t) in trickling.into_iter().enumerate() {
        let closed = t.join().expect("trickling connection thread");
        let (after, sent) = closed.unwrap_or_else(|| {
            panic!(
                "connection {i} trickling a ClientHello still open {bound:?} after connecting \
                 (--handshake-timeout 2s): the trickle extends the deadline\n{}",
                sc.log()
            )
        });
        assert!(
            after >= timeout - Duration::from_millis(100),
            "trickling connection {i} closed after {after:?} ({sent} bytes), before the timeout"
        );
    }
    assert!(
        sc.wait_until(WAIT, || handshake_timeouts(&sc) >= before + 19.0),
        "19 handshakes cut by the timeout, but handshake_failures_total{{reason=\"timeout\"}} \
         went from {before} to {}\n{}",
        handshake_timeouts(&sc),
        sc.metrics()
    );
    assert!(sc.healthy());
    assert_served(&env, &sc, "/after-slowloris");
}

#[test]
fn request_headers_trickled_after_the_handshake_are_cut_at_the_header_read_deadline() {
    // Header-read deadline: min(--idle-timeout 3s, 30 s) = 3 s.
    let deadline = Duration::from_secs(3);
    let (env, upstream, sc) = start(&["--idle-timeout", "3s"]);
    let bound = deadline + WAIT;
    const HEAD: &[u8] = b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    // At one byte per 500 ms the head would take about 40 s: well past the bound.
    assert!(TRICKLE * HEAD.len() as u32 > bound * 2);

    let conns: Vec<TlsConn> = (0..3)
        .map(|_| {
            client(&env)
                .connect(sc.listen_addr())
                .unwrap_or_else(|e| panic!("handshake: {e}\n{}", sc.log()))
        })
        .collect();
    let trickling: Vec<_> = conns
        .into_iter()
        .map(|conn| trickling_head(conn, HEAD, bound))
        .collect();
    // Bytes every 500 ms keep these connections busy; a real client is served meanwhile.
    std::thread::sleep(TRICKLE);
    assert_served(&env, &sc, "/during-slowloris");

    for (i, t) in trickling.into_iter().enumerate() {
        let closed = t.join().expect("trickling connection thread");
        let (after, sent) = closed.unwrap_or_else(|| {
            panic!(
                "connection {i} trickling its request head still open {bound:?} after its first \
                 byte (--idle-timeout 3s): the trickle extends the header-read deadline\n{}",
                sc.log()
            )
        });
        assert!(
            sent < HEAD.len(),
            "connection {i}: the whole head went out ({sent} bytes) in {after:?}"
        );
    }
    assert_eq!(
        upstream.requests_started(),
        1,
        "only the legitimate request may reach the upstream (a half-sent head never does)"
    );
    assert!(sc.healthy());
    assert_served(&env, &sc, "/after-slowloris");
}

#[test]
fn slow_clients_holding_every_connection_slot_do_not_lock_others_out_past_the_handshake_timeout() {
    let (env, _upstream, sc) = start(&["--max-connections", "4", "--handshake-timeout", "2s"]);
    let addr = sc.listen_addr().to_string();
    let active = r#"mtls_sidecar_connections_active{listener="server"}"#;
    let before = handshake_timeouts(&sc);
    let bound = Duration::from_secs(2) + WAIT;

    let slow: Vec<_> = (0..4).map(|_| silent(&addr, bound)).collect();
    assert!(
        sc.wait_until(WAIT, || sc.metric(active) == Some(4.0)),
        "the 4 slow connections never held the 4 slots: {}",
        sc.metrics()
    );

    // A legitimate client queues behind them and is served once their handshake timeout frees
    // the slots (each attempt is bounded by the client's I/O timeout; retry until WAIT * 2).
    let client = client(&env);
    let mut attempts = Vec::new();
    let served = sc.wait_until(WAIT * 2, || {
        match client.get(&addr, "/after-the-slots-free") {
            Ok(resp) if resp.status == 200 => true,
            other => {
                attempts.push(format!("{:?}", other.map(|r| r.status)));
                false
            }
        }
    });
    assert!(
        served,
        "no legitimate client served within {:?} while slow clients came and went; \
         attempts: {attempts:?}\n{}",
        WAIT * 2,
        sc.log()
    );
    for (i, t) in slow.into_iter().enumerate() {
        assert!(
            t.join().expect("slow connection thread").is_some(),
            "slow connection {i} still open {bound:?} after connecting"
        );
    }
    assert!(
        handshake_timeouts(&sc) >= before + 4.0,
        "the slots were not freed by the handshake timeout: {}",
        sc.metrics()
    );
}
