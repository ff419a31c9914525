//! Rotation while serving: new handshakes get the newest leaf, open connections are never
//! cut, CA bundles rotate the client verifier too, and `--max-connection-age` makes old
//! connections re-handshake gracefully.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::*;
use crate::support::cli_clients::{port_of, users_curl_paths};
use crate::support::failures::Failures;
use crate::support::fixture::tls_files;
use crate::support::kubelet::KubeletVolume;
use crate::support::pki::KeyAlg;
use crate::support::require_tool;
use crate::support::tls_client::TlsConn;
use crate::support::upstream::{Echoed, HttpUpstream};

const KEEP_ALIVE_CLIENTS: usize = 16;
const SWAPS: usize = 20;

/// Where the rotation is: `seq` moves at every change of phase; `serial` is the leaf every
/// new handshake must see, or None while a swap is in progress.
#[derive(Default)]
struct Epoch {
    seq: u64,
    serial: Option<String>,
}

/// Shared between the load threads and the test.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    last_swap_done: AtomicBool,
    epoch: Mutex<Epoch>,
    failures: Failures,
    requests: AtomicUsize,
    /// Keep-alive clients that completed a request after the last swap settled.
    survivors: AtomicUsize,
    /// New handshakes made entirely within a settled epoch (the ones checked for the serial).
    checked_handshakes: AtomicUsize,
}

impl Load {
    fn fail(&self, what: String) {
        self.failures.push(what);
    }

    fn epoch(&self) -> (u64, Option<String>) {
        let e = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        (e.seq, e.serial.clone())
    }

    fn set_epoch(&self, serial: Option<String>) {
        let mut e = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        e.seq += 1;
        e.serial = serial;
    }
}

/// One client on one connection, sending requests until told to stop.
fn keep_alive_client(load: Arc<Load>, mut conn: TlsConn, id: usize) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut survived = false;
        let mut n = 0;
        while !load.stop.load(Ordering::SeqCst) {
            let after_last = load.last_swap_done.load(Ordering::SeqCst);
            match conn.get(&format!("/keep/{id}/{n}")) {
                Ok(r) if r.status == 200 && !r.closes() => {
                    load.requests.fetch_add(1, Ordering::SeqCst);
                }
                Ok(r) => {
                    return load.fail(format!(
                        "keep-alive client {id} request {n}: HTTP {} (closes: {})",
                        r.status,
                        r.closes()
                    ))
                }
                Err(e) => return load.fail(format!("keep-alive client {id} request {n}: {e}")),
            }
            if after_last && !survived {
                survived = true;
                load.survivors.fetch_add(1, Ordering::SeqCst);
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// New connections one after another; each must succeed, and one made entirely within a
/// settled epoch must be served that epoch's leaf.
fn new_connections(load: Arc<Load>, client: TlsClient, addr: String) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0;
        while !load.stop.load(Ordering::SeqCst) {
            let (seq, serial) = load.epoch();
            let result = client.connect(&addr).and_then(|mut c| {
                let r = c.get(&format!("/new/{n}"))?;
                Ok((c.peer.serial_hex.clone(), r.status))
            });
            let (seq_after, _) = load.epoch();
            match result {
                Ok((_, status)) if status != 200 => {
                    load.fail(format!("new connection {n}: HTTP {status}"))
                }
                Ok((served, _)) => {
                    load.requests.fetch_add(1, Ordering::SeqCst);
                    if let (Some(want), true) = (serial, seq == seq_after) {
                        load.checked_handshakes.fetch_add(1, Ordering::SeqCst);
                        if served != want {
                            load.fail(format!(
                                "new connection {n} after the swap to {want} settled was served {served}"
                            ));
                        }
                    }
                }
                Err(e) => load.fail(format!("new connection {n}: {e}")),
            }
            n += 1;
        }
    })
}

/// Handshake until the served leaf is `serial` (bounded).
fn wait_until_served(client: &TlsClient, addr: &str, serial: &str) {
    let mut last = String::new();
    let served = crate::support::sidecar::wait_until(WAIT, || match client.connect(addr) {
        Ok(c) => {
            last = c.peer.serial_hex.clone();
            last == serial
        }
        Err(e) => {
            last = e;
            false
        }
    });
    assert!(
        served,
        "never served {serial} within {WAIT:?}; last: {last}"
    );
}

#[test]
fn rotation_under_load_drops_no_requests() {
    let (mut env, first) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(&env, "http", &upstream.addr(), &["--allow-all"]);
    let addr = sc.listen_addr().to_string();
    let client = client_for(&env, &env.pki.client());
    let leaves = env.leaves(SWAPS);

    let mut early = client
        .connect(&addr)
        .expect("connection before the first swap");
    assert_eq!(early.peer.serial_hex, first.serial_hex);
    assert_eq!(early.get("/early").expect("early request").status, 200);

    let load = Arc::new(Load::default());
    load.set_epoch(Some(first.serial_hex.clone()));
    let mut threads: Vec<JoinHandle<()>> = (0..KEEP_ALIVE_CLIENTS)
        .map(|id| {
            let conn = client.connect(&addr).expect("keep-alive client connects");
            keep_alive_client(load.clone(), conn, id)
        })
        .collect();
    threads.push(new_connections(load.clone(), client.clone(), addr.clone()));

    for leaf in &leaves {
        load.set_epoch(None);
        env.publish(leaf);
        wait_for_serial(&sc, &leaf.serial_hex);
        wait_until_served(&client, &addr, &leaf.serial_hex);
        load.set_epoch(Some(leaf.serial_hex.clone()));
        // Let some traffic run in the settled epoch.
        std::thread::sleep(Duration::from_millis(100));
    }
    load.last_swap_done.store(true, Ordering::SeqCst);
    let survived = sc.wait_until(WAIT, || {
        load.survivors.load(Ordering::SeqCst) == KEEP_ALIVE_CLIENTS || !load.failures.is_empty()
    });
    load.stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("load thread panicked");
    }

    let failures = load.failures.list();
    assert!(
        failures.is_empty(),
        "{} failures under rotation, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        sc.log()
    );
    assert!(
        survived,
        "not every keep-alive client got through after the last swap"
    );
    let early_again = early
        .get("/early-again")
        .expect("pre-swap connection after the last swap");
    assert_eq!(early_again.status, 200);
    assert!(
        load.checked_handshakes.load(Ordering::SeqCst) > 0,
        "no new handshake happened inside a settled epoch: the serial check had no teeth"
    );
    assert_eq!(handshake_failures(&sc), 0.0, "{}", sc.metrics());
    eprintln!(
        "rotation under load: {} requests, {} checked new handshakes, {SWAPS} swaps",
        load.requests.load(Ordering::SeqCst),
        load.checked_handshakes.load(Ordering::SeqCst)
    );
}

/// Strict form of "new handshakes use the newest published credentials": once `/status`
/// reports a leaf, the very next handshake presents it.
#[test]
fn next_handshake_after_status_reports_a_leaf_presents_it() {
    let (mut env, first) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(&env, "http", &upstream.addr(), &["--allow-all"]);
    let client = client_for(&env, &env.pki.client());
    let mut open = client.connect(sc.listen_addr()).expect("handshake");
    assert_eq!(open.peer.serial_hex, first.serial_hex);
    for leaf in env.leaves(5) {
        env.publish(&leaf);
        wait_for_serial(&sc, &leaf.serial_hex);
        let conn = client
            .connect(sc.listen_addr())
            .expect("handshake after a swap");
        assert_eq!(
            conn.peer.serial_hex, leaf.serial_hex,
            "stale leaf after /status moved"
        );
    }
    let resp = open.get("/").expect("connection from before the swaps");
    assert_eq!(resp.status, 200);
}

#[test]
fn ca_rotation_through_a_bundle_refuses_old_ca_clients_after_the_switch() {
    let (mut env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(&env, "http", &upstream.addr(), &["--allow-all"]);
    let addr = sc.listen_addr().to_string();
    let new_root = TestPki::new_root("mTLS Rotated Root CA", KeyAlg::EcdsaP256);
    let both = format!("{}{}", env.pki.root.cert_pem, new_root.cert_pem);
    let old_client = TlsClient::with_leaf(&both, &env.pki.client());
    let new_client =
        TlsClient::with_leaf(&both, &env.pki.issue_by(&new_root, &TestPki::client_spec()));
    let ok = |c: &TlsClient, what: &str| {
        let resp = c
            .get(&addr, "/")
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", sc.log()));
        assert_eq!(resp.status, 200, "{what}");
    };

    // Phase 1: old CA only.
    ok(&old_client, "old-CA client, old bundle");
    refused(&new_client, &addr);

    // Phase 2: bundle old + new, server leaf from the new CA.
    let leaf2 = env.pki.issue_by(&new_root, &TestPki::server_spec());
    env.vol.write(&tls_files(&leaf2, &both));
    wait_for_serial(&sc, &leaf2.serial_hex);
    wait_until_served(&new_client, &addr, &leaf2.serial_hex);
    ok(&old_client, "old-CA client, old+new bundle");
    let mut open_old = old_client.connect(&addr).expect("old-CA client connects");
    assert_eq!(open_old.get("/").expect("old-CA request").status, 200);

    // Phase 3: new CA only.
    let leaf3 = env.pki.issue_by(&new_root, &TestPki::server_spec());
    env.vol.write(&tls_files(&leaf3, &new_root.cert_pem));
    wait_for_serial(&sc, &leaf3.serial_hex);
    wait_until_served(&new_client, &addr, &leaf3.serial_hex);
    for _ in 0..3 {
        refused(&old_client, &addr);
    }
    ok(&new_client, "new-CA client, new bundle");
    // The reload did not cut the connection the old-CA client already had.
    let resp = open_old
        .get("/")
        .expect("open connection across the CA switch");
    assert_eq!(resp.status, 200);
}

#[test]
fn max_connection_age_closes_an_old_connection_after_its_in_flight_response() {
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-all", "--max-connection-age", "1s"],
    );
    let client = client_for(&env, &env.pki.client());
    let mut conn = client.connect(sc.listen_addr()).expect("handshake");
    assert_eq!(conn.get("/young").expect("first request").status, 200);
    // In flight while the connection turns 1 s old: it must complete, not be cut.
    let resp = conn
        .get("/slow?delay_ms=2500")
        .expect("in-flight request across the age limit");
    assert_eq!(resp.status, 200);
    assert_eq!(Echoed::parse(&resp.body).path, "/slow?delay_ms=2500");
    // Its response says the connection ends (it had not started when the age came), and it does.
    assert!(resp.closes(), "no `Connection: close`: {:?}", resp.headers);
    assert!(
        conn.closed_within(WAIT),
        "connection older than --max-connection-age still open"
    );
    let fresh = client
        .get(sc.listen_addr(), "/fresh")
        .expect("new connection");
    assert_eq!(fresh.status, 200);
}

/// A kept-alive HTTP/1 connection that is idle when it reaches `--max-connection-age` is not
/// closed under its client: a client that reuses it without checking (Python's http.client,
/// for one) would fail its next request. That request is answered, with `Connection: close`,
/// and the connection ends after it.
#[test]
fn an_idle_connection_past_its_age_answers_its_next_request_and_then_closes() {
    let (env, _upstream, sc) = proxy(&["--allow-all", "--max-connection-age", "1s"]);
    let mut conn = client_for(&env, &env.pki.client())
        .connect(sc.listen_addr())
        .expect("handshake");
    let young = conn.get("/young").expect("first request");
    assert!(!young.closes(), "{:?}", young.headers);
    std::thread::sleep(Duration::from_secs(2));
    let old = conn
        .get("/old")
        .unwrap_or_else(|e| panic!("the request after the age failed: {e}\n{}", sc.log()));
    assert_eq!(old.status, 200);
    assert!(old.closes(), "no `Connection: close`: {:?}", old.headers);
    assert!(
        conn.closed_within(WAIT),
        "still open after `Connection: close`"
    );
}

/// A client sending requests back to back on one connection, opening a new one only when a
/// response says `Connection: close` (as HTTP/1 clients do), loses no request to
/// `--max-connection-age`, however the age falls between or during its requests.
#[test]
fn max_connection_age_fails_no_request_of_a_steady_keep_alive_client() {
    let (env, _upstream, sc) = proxy(&["--allow-all", "--max-connection-age", "300ms"]);
    let client = client_for(&env, &env.pki.client());
    let mut conn = client.connect(sc.listen_addr()).expect("handshake");
    let (mut connections, mut closes) = (1, 0);
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while std::time::Instant::now() < until {
        let resp = conn
            .get(&format!("/steady/{n}"))
            .unwrap_or_else(|e| panic!("request {n} failed: {e}\n{}", sc.log()));
        assert_eq!(resp.status, 200);
        if resp.closes() {
            closes += 1;
            connections += 1;
            conn = client.connect(sc.listen_addr()).expect("handshake");
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        closes >= 3,
        "{n} requests on {connections} connections: the age never ended one"
    );
}

/// HTTP/2: the connection is ended with GOAWAY once past the age, after the in-flight
/// response; curl then opens a new connection for its next request (compare
/// `http::http2_requests_share_one_connection`).
#[test]
fn max_connection_age_moves_an_http2_client_to_a_new_connection() {
    if !require_tool("curl") {
        return;
    }
    let (env, _) = env_with_server();
    let upstream = HttpUpstream::start();
    let sc = start_ready(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-all", "--max-connection-age", "1s"],
    );
    let dir = curl_dir(&env, &env.pki.client());
    let port = port_of(sc.listen_addr());
    let res = users_curl_paths(
        dir.path(),
        port,
        &["/slow?delay_ms=2500", "/after"],
        &["--http2"],
    );
    let seen: Vec<_> = res
        .transfers
        .iter()
        .map(|t| (t.http_code, t.http_version.as_str(), t.num_connects))
        .collect();
    assert_eq!(
        seen,
        [(200, "2", 1), (200, "2", 1)],
        "{res:?}\n{}",
        sc.log()
    );
}

/// `--peer-ca` is watched like the other files: a new bundle (a trust-manager ConfigMap
/// update) changes which clients new handshakes accept.
#[test]
fn peer_ca_rotation_applies_to_new_handshakes() {
    let (env, _) = env_with_server();
    let mut peers = KubeletVolume::new(env.tmp().join("peers"));
    let partner_root = &env.pki.other_root;
    peers.write(&[("ca.crt", partner_root.cert_pem.as_bytes())]);
    let peer_ca = peers.dir().join("ca.crt").display().to_string();
    let upstream = HttpUpstream::start();
    let sc = start_ready(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-all", "--peer-ca", &peer_ca],
    );
    let addr = sc.listen_addr().to_string();
    let next_root = TestPki::new_root("mTLS Partner Root CA 2", KeyAlg::EcdsaP256);
    let old_partner = client_for(
        &env,
        &env.pki.issue_by(partner_root, &TestPki::client_spec()),
    );
    let new_partner = client_for(&env, &env.pki.issue_by(&next_root, &TestPki::client_spec()));
    let served = |c: &TlsClient| c.get(&addr, "/").is_ok_and(|r| r.status == 200);
    assert!(served(&old_partner));
    refused(&new_partner, &addr);

    let both = format!("{}{}", partner_root.cert_pem, next_root.cert_pem);
    peers.write(&[("ca.crt", both.as_bytes())]);
    assert!(
        sc.wait_until(WAIT, || served(&new_partner)),
        "new peer CA never trusted:\n{}",
        sc.log()
    );
    assert!(served(&old_partner));

    peers.write(&[("ca.crt", next_root.cert_pem.as_bytes())]);
    assert!(
        sc.wait_until(WAIT, || !served(&old_partner)),
        "old peer CA still trusted after it left the bundle:\n{}",
        sc.log()
    );
    refused(&old_partner, &addr);
    assert!(served(&new_partner));
}
