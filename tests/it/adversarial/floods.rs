//! Floods against `server --protocol http --allow-all`: far more connections than
//! `--max-connections` (the excess waits in the kernel: in the listen backlog, and past it as
//! SYNs the client retransmits; the sidecar never holds more than the limit, keeps answering its
//! probes, gives every waiting connection its turn and serves a real client once the flood
//! goes), and connections that send garbage instead of a ClientHello (random bytes, plaintext
//! HTTP, a ClientHello announcing 16 MiB, and 16 MiB actually sent): each is closed and counted
//! as a handshake failure, memory stays bounded, and the sidecar keeps serving.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::fixture::Env;
use crate::support::kubelet::Rng;
use crate::support::sidecar::Sidecar;
use crate::support::tls_client::{TlsClient, IO_TIMEOUT};
use crate::support::upstream::HttpUpstream;

/// Upper bound for anything the sidecar should do "soon".
const WAIT: Duration = Duration::from_secs(10);

/// A generous bound on the sidecar's resident memory under the garbage flood.
const RSS_BOUND_KIB: u64 = 200 * 1024;

/// `server --protocol http --allow-all EXTRA...` on a fresh volume and upstream, ready.
fn start(extra: &[&str]) -> (Env, HttpUpstream, Sidecar) {
    super::http_proxy(extra)
}

fn client(env: &Env) -> TlsClient {
    super::client_for(env, &env.pki.client())
}

/// A legitimate client gets 200 (retried until `WAIT`: the sidecar may still be working
/// through what the attack left in its backlog).
fn assert_served(env: &Env, sc: &Sidecar, path: &str) {
    let client = client(env);
    let mut last = String::new();
    let served = sc.wait_until(WAIT, || match client.get(sc.listen_addr(), path) {
        Ok(resp) if resp.status == 200 => true,
        Ok(resp) => {
            last = format!("HTTP {}: {}", resp.status, resp.body_text());
            false
        }
        Err(e) => {
            last = e;
            false
        }
    });
    assert!(
        served,
        "legitimate GET {path} not served within {WAIT:?}: {last}\n{}",
        sc.log()
    );
}

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn connections_active(sc: &Sidecar) -> f64 {
    sc.metric(r#"mtls_sidecar_connections_active{listener="server"}"#)
        .unwrap_or_else(|| panic!("no connections_active series: {}", sc.metrics()))
}

/// One flood connection on its own thread: connect (however long the kernel makes it wait),
/// hold the connection without sending a byte until `release`, then close it. Err if the
/// connection was refused or never completed.
fn flood_connection(addr: SocketAddr, release: Arc<AtomicBool>) -> JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        // Past the listen backlog the kernel drops SYNs, and the client retransmits them
        // (after 1, 3, 7, 15 s): a wait, not a refusal.
        let tcp = TcpStream::connect_timeout(&addr, FLOOD_CONNECT_TIMEOUT)
            .map_err(|e| format!("{e} ({:?})", e.kind()))?;
        while !release.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(tcp);
        Ok(())
    })
}

/// How long a flood connection may wait in the kernel before it counts as locked out.
const FLOOD_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_flood_of_200_connections_never_exceeds_max_connections_and_the_sidecar_recovers() {
    // A handshake timeout longer than the test holds the flood: nothing churns meanwhile.
    let (env, _upstream, mut sc) =
        start(&["--max-connections", "20", "--handshake-timeout", "60s"]);
    let addr: SocketAddr = sc.listen_addr().parse().expect("listen address");
    let total = r#"mtls_sidecar_connections_total{listener="server"}"#;
    let total_before = sc.counter(total);

    // 200 simultaneous connections that never start their handshake.
    let release = Arc::new(AtomicBool::new(false));
    let flood: Vec<_> = (0..200)
        .map(|_| flood_connection(addr, release.clone()))
        .collect();
    assert!(
        sc.wait_until(WAIT, || connections_active(&sc) == 20.0),
        "the flood never filled the 20 slots: {}",
        sc.metrics()
    );

    // Held open for 2 s: the sidecar never holds more than 20, and its probes answer.
    let listener_active = |sc: &Sidecar| sc.status()["listeners"][0]["active_connections"].clone();
    let held_until = Instant::now() + Duration::from_secs(2);
    let mut samples = 0;
    while Instant::now() < held_until {
        let active = connections_active(&sc);
        assert!(
            active <= 20.0,
            "connections_active is {active} under --max-connections 20"
        );
        let status_active = listener_active(&sc);
        assert!(
            status_active.as_u64().is_some_and(|n| n <= 20),
            "/status active_connections is {status_active} under --max-connections 20"
        );
        assert!(sc.healthy(), "/healthz not 200 during the flood");
        samples += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(samples > 0);
    assert!(sc.running(), "the sidecar exited during the flood");

    // Release: every flood connection closes (those still waiting in the kernel once they
    // get through); none was refused.
    release.store(true, Ordering::SeqCst);
    let refused: Vec<String> = flood
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| {
            t.join()
                .expect("flood connection thread")
                .err()
                .map(|e| format!("#{i}: {e}"))
        })
        .collect();
    assert!(
        refused.is_empty(),
        "{} of 200 flood connections were refused or locked out for {FLOOD_CONNECT_TIMEOUT:?}: \
         {refused:?}",
        refused.len()
    );
    assert_served(&env, &sc, "/after-the-flood");
    assert!(
        sc.wait_until(WAIT, || sc.counter(total) >= total_before + 201.0),
        "every flood connection gets its turn once released: connections_total went from \
         {total_before} to {}",
        sc.counter(total)
    );
    assert!(
        sc.wait_until(WAIT, || connections_active(&sc) == 0.0),
        "connections still counted as active after the flood left: {}",
        sc.metrics()
    );
    assert!(sc.running());
}

/// A TLS record (content type, TLS 1.0 record version as ClientHellos use, length, body).
fn record(content_type: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![content_type, 0x03, 0x01];
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// `n` pseudo-random bytes.
fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        out.extend_from_slice(&rng.next_u64().to_be_bytes());
    }
    out.truncate(n);
    out
}

/// Handshake records whose first one starts a ClientHello announcing 16 MiB - 1 bytes (the
/// 24-bit maximum), followed by junk, `total` bytes in all (16 KiB records).
fn announced_16mib_hello(rng: &mut Rng, total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + 16 * 1024);
    let mut first = vec![0x01, 0xff, 0xff, 0xff];
    first.extend(random_bytes(rng, 16 * 1024 - 4));
    out.extend(record(0x16, &first));
    let junk = random_bytes(rng, 16 * 1024);
    while out.len() < total {
        out.extend(record(0x16, &junk));
    }
    out
}

/// Send `payload` on a fresh connection (stopping when the sidecar stops taking it), then wait
/// for the sidecar to end the connection: "" if it did, else what went wrong.
fn send_garbage(addr: SocketAddr, what: &'static str, payload: Vec<u8>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut tcp = match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(t) => t,
            Err(e) => return format!("{what}: connect: {e}"),
        };
        tcp.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let started = Instant::now();
        // A write error means the sidecar closed on us: what we want.
        let _ = tcp.write_all(&payload);
        let deadline = started + WAIT + IO_TIMEOUT;
        let mut buf = [0u8; 4096];
        loop {
            if Instant::now() > deadline {
                return format!(
                    "{what}: still open {:?} after it started",
                    started.elapsed()
                );
            }
            tcp.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            match tcp.read(&mut buf) {
                Ok(0) => return String::new(),
                // An alert, or a plaintext error page: read on until the close.
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return String::new(),
            }
        }
    })
}

#[test]
fn garbage_instead_of_a_client_hello_is_closed_counted_and_costs_bounded_memory() {
    let (env, _upstream, sc) = start(&[]);
    let addr: SocketAddr = sc.listen_addr().parse().expect("listen address");
    let failures = |sc: &Sidecar| {
        sc.metric_sum(
            "mtls_sidecar_handshake_failures_total",
            &[("listener", "server")],
        )
    };
    let before = failures(&sc);
    let mut rng = Rng::seeded();

    let sixteen_mib = 16 * 1024 * 1024;
    let mut cases: Vec<(&'static str, Vec<u8>)> = vec![
        ("4 KiB of random bytes", random_bytes(&mut rng, 4096)),
        (
            "a plaintext HTTP request",
            b"GET / HTTP/1.1\r\nHost: api.production.svc.cluster.local\r\n\r\n".to_vec(),
        ),
        (
            "a ClientHello announcing 16 MiB, then 64 KiB of junk",
            announced_16mib_hello(&mut rng, 64 * 1024),
        ),
        ("an application-data record before any handshake", {
            let mut r = record(0x17, &random_bytes(&mut rng, 1024));
            r.extend(random_bytes(&mut rng, 1024));
            r
        }),
        (
            "a record header announcing 64 KiB (over the 16 KiB limit), then junk",
            {
                let mut r = vec![0x16, 0x03, 0x01, 0xff, 0xff];
                r.extend(random_bytes(&mut rng, 64 * 1024));
                r
            },
        ),
    ];
    // And the announced 16 MiB actually sent, on four connections at once.
    let stream = announced_16mib_hello(&mut rng, sixteen_mib);
    for _ in 0..4 {
        cases.push(("a 16 MiB ClientHello, sent in full", stream.clone()));
    }
    let count = cases.len() as f64;

    let workers: Vec<_> = cases
        .into_iter()
        .map(|(what, payload)| send_garbage(addr, what, payload))
        .collect();
    // Watch memory while they run.
    let mut max_rss = rss_kib(sc.pid());
    while !workers.iter().all(|w| w.is_finished()) {
        max_rss = max_rss.max(rss_kib(sc.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let problems: Vec<String> = workers
        .into_iter()
        .map(|w| w.join().expect("garbage connection thread"))
        .filter(|p| !p.is_empty())
        .collect();
    assert!(
        problems.is_empty(),
        "garbage connections not closed: {problems:?}\n{}",
        sc.log()
    );

    assert!(
        sc.wait_until(WAIT, || failures(&sc) >= before + count),
        "{count} garbage connections, but handshake_failures_total{{listener=\"server\"}} went \
         from {before} to {}:\n{}",
        failures(&sc),
        sc.metrics()
    );
    max_rss = max_rss.max(rss_kib(sc.pid()));
    assert!(
        max_rss <= RSS_BOUND_KIB,
        "VmRSS reached {max_rss} KiB under the garbage flood (bound {RSS_BOUND_KIB} KiB)"
    );
    let peak = sc.peak_rss_kib();
    assert!(
        peak <= RSS_BOUND_KIB,
        "VmHWM (peak RSS) is {peak} KiB after the garbage flood (bound {RSS_BOUND_KIB} KiB)"
    );
    assert!(sc.healthy(), "/healthz not 200 after the garbage");
    assert_served(&env, &sc, "/after-the-garbage");
}
