//! Rotation under traffic: while the app keeps sending requests, each on a new connection and
//! others on kept-alive connections, cert-manager renews the client certificate, or the CA
//! rotates on both sides. No request may fail; once the server has seen the new client
//! certificate, every later request arrives with it (in http mode the old pool is gone; in tcp
//! mode an open connection keeps its first handshake, new ones get the new certificate).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::*;
use crate::support::failures::Failures;
use crate::support::pki::KeyAlg;
use crate::support::sidecar::wait_until;

const SWAPS: usize = 6;

/// Shared between the app threads and the test.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    /// Moves at every change of phase; with the client certificate hash every request started
    /// in that phase must arrive with, or None while a swap is in progress.
    epoch: Mutex<(u64, Option<String>)>,
    failures: Failures,
    requests: AtomicUsize,
    /// Requests made entirely within a settled phase (the ones checked for the hash).
    checked: AtomicUsize,
}

impl Load {
    fn epoch(&self) -> (u64, Option<String>) {
        self.epoch.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_epoch(&self, hash: Option<&str>) {
        let mut e = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        *e = (e.0 + 1, hash.map(str::to_string));
    }

    fn fail(&self, what: String) {
        self.failures.push(what);
    }

    /// Run `request` until stopped, checking each outcome (and with `check_hash`, the client
    /// certificate the server saw).
    fn run(
        self: &Arc<Self>,
        what: &'static str,
        check_hash: bool,
        mut request: impl FnMut(usize) -> Result<Response, String> + Send + 'static,
    ) -> JoinHandle<()> {
        let load = self.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !load.stop.load(Ordering::SeqCst) {
                let (seq, want) = load.epoch();
                let result = request(n);
                let (seq_after, _) = load.epoch();
                match result {
                    Ok(r) if r.status == 200 && !r.closes() => {
                        load.requests.fetch_add(1, Ordering::SeqCst);
                        if let (Some(want), true) = (want, check_hash && seq == seq_after) {
                            load.checked.fetch_add(1, Ordering::SeqCst);
                            let seen = seen_client_hash(&r);
                            if seen != want {
                                load.fail(format!(
                                    "{what} request {n}: the server saw client certificate {seen}, \
                                     {want} was already in use"
                                ));
                            }
                        }
                    }
                    Ok(r) => load.fail(format!(
                        "{what} request {n}: HTTP {} (closes: {}): {}",
                        r.status,
                        r.closes(),
                        r.body_text()
                    )),
                    // The kept-alive connection is gone after an error: stop that thread.
                    Err(e) => return load.fail(format!("{what} request {n}: {e}")),
                }
                n += 1;
            }
        })
    }

    /// Stop the threads and return the failures.
    fn finish(&self, threads: Vec<JoinHandle<()>>) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().expect("app thread panicked");
        }
        self.failures.list()
    }
}

/// The app: one thread opening a new connection per request, two on kept-alive connections.
/// In tcp mode a kept-alive app connection keeps its upstream connection, and with it the
/// certificate it was made with: only new connections are checked for the newest one.
fn start_app(load: &Arc<Load>, client: &Client, protocol: &str) -> Vec<JoinHandle<()>> {
    let addr = client.addr().to_string();
    let check_kept_alive = protocol == "http";
    let mut threads = vec![load.run("new-connection", true, move |n| {
        PlainConn::connect(&addr, SERVER_NAME)?.get(&format!("/new/{n}"))
    })];
    for id in 0..2 {
        let mut conn = client.connect();
        threads.push(load.run("kept-alive", check_kept_alive, move |n| {
            conn.get(&format!("/keep/{id}/{n}"))
        }));
    }
    threads
}

/// Wait (bounded) until the client's `/status` serves `leaf` and a new request reaches the
/// server with it.
fn wait_until_server_sees(client: &Client, leaf: &Leaf) {
    let published = client.wait_until(WAIT, || {
        client.serial().as_deref() == Some(leaf.serial_hex.as_str())
    });
    assert!(
        published,
        "client never published {}:\n{}",
        leaf.serial_hex,
        client.log()
    );
    let mut last = String::new();
    let seen = wait_until(WAIT, || match client.fetch("/probe") {
        Ok(r) if r.status == 200 => {
            last = seen_client_hash(&r);
            last == leaf.sha256_hex
        }
        Ok(r) => {
            last = format!("HTTP {}: {}", r.status, r.body_text());
            false
        }
        Err(e) => {
            last = e;
            false
        }
    });
    assert!(
        seen,
        "the server never saw client certificate {} (last: {last})\n{}",
        leaf.sha256_hex,
        client.log()
    );
}

/// Publish `leaf` (with `ca_pem`) to the client while the app runs; settle on its hash.
fn rotate_client(chain: &mut Chain, load: &Load, leaf: &Leaf, ca_pem: &str) {
    load.set_epoch(None);
    chain.pods.publish_client(leaf, ca_pem);
    wait_until_server_sees(&chain.client, leaf);
    load.set_epoch(Some(&leaf.sha256_hex));
    // Let the app run in the settled phase.
    std::thread::sleep(Duration::from_millis(200));
}

fn assert_no_failures(load: &Load, failures: &[String], chain: &Chain) {
    assert!(
        failures.is_empty(),
        "{} failed requests under rotation, first: {:?}\n--- client ---\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        chain.client.log()
    );
    assert!(
        load.checked.load(Ordering::SeqCst) > 0,
        "no request ran inside a settled phase: the certificate check had no teeth"
    );
    eprintln!(
        "{} requests, {} checked",
        load.requests.load(Ordering::SeqCst),
        load.checked.load(Ordering::SeqCst)
    );
}

#[test]
fn client_certificate_rotation_under_traffic_drops_no_requests() {
    let mut chain = chain("http", &[]);
    let root = chain.pods.pki().root.cert_pem.clone();
    let load = Arc::new(Load::default());
    load.set_epoch(Some(&chain.pods.client_leaf.sha256_hex));
    let threads = start_app(&load, &chain.client, "http");
    for _ in 0..SWAPS {
        let leaf = chain.pods.pki().client();
        rotate_client(&mut chain, &load, &leaf, &root);
    }
    let failures = load.finish(threads);
    assert_no_failures(&load, &failures, &chain);
    let failed = chain.client.metric_sum(
        "mtls_sidecar_handshake_failures_total",
        &[("listener", "client")],
    );
    assert_eq!(failed, 0.0, "{}", chain.client.metrics());
}

#[test]
fn ca_rotation_on_both_sides_under_traffic_drops_no_requests() {
    let mut chain = chain("http", &[]);
    let pki = chain.pods.pki();
    let root = pki.root.cert_pem.clone();
    let new_root = TestPki::new_root("mTLS Rotated Root CA", KeyAlg::EcdsaP256);
    let both = format!("{root}{}", new_root.cert_pem);
    let first = chain.pods.client_leaf.clone();
    let server_first = chain.pods.server_leaf.clone();
    let server_next = pki.issue_by(&new_root, &TestPki::server_spec());
    let client_old_root = pki.client();
    let client_new_root = pki.issue_by(&new_root, &TestPki::client_spec());

    let load = Arc::new(Load::default());
    load.set_epoch(Some(&first.sha256_hex));
    let threads = start_app(&load, &chain.client, "http");

    // 1. Both sides trust both roots (the CA bundle grows first).
    chain.pods.publish_client(&first, &both);
    let client_reloaded = chain
        .client
        .wait_until(WAIT, || chain.client.generation() == 2);
    assert!(client_reloaded, "{}", chain.client.log());
    chain.pods.publish_server(&server_first, &both);
    let server_reloaded = chain
        .server
        .wait_until(WAIT, || chain.server.generation() == 2);
    assert!(server_reloaded, "{}", chain.server.log());

    // 2. The server's certificate now comes from the new root.
    chain.pods.publish_server(&server_next, &both);
    let served = chain.server.wait_until(WAIT, || {
        chain.server.serial().as_deref() == Some(server_next.serial_hex.as_str())
    });
    assert!(served, "{}", chain.server.log());

    // 3. A renewed client certificate (old root): its new pool handshakes with the new-root
    //    server certificate.
    rotate_client(&mut chain, &load, &client_old_root, &both);

    // 4. The client's certificate from the new root too.
    rotate_client(&mut chain, &load, &client_new_root, &both);

    let failures = load.finish(threads);
    assert_no_failures(&load, &failures, &chain);
}

#[test]
fn tcp_mode_new_connections_carry_the_rotated_client_certificate() {
    let mut chain = chain("tcp", &[]);
    let root = chain.pods.pki().root.cert_pem.clone();
    let first = chain.pods.client_leaf.clone();
    let mut early = chain.client.connect();
    assert_eq!(
        seen_client_hash(&early.get("/early").expect("early request")),
        first.sha256_hex
    );
    let load = Arc::new(Load::default());
    load.set_epoch(Some(&first.sha256_hex));
    let threads = start_app(&load, &chain.client, "tcp");
    for _ in 0..3 {
        let leaf = chain.pods.pki().client();
        rotate_client(&mut chain, &load, &leaf, &root);
    }
    let failures = load.finish(threads);
    assert_no_failures(&load, &failures, &chain);
    // An open connection is never cut by a reload: it still runs on its first handshake.
    let resp = early
        .get("/early-again")
        .expect("the pre-rotation connection still works");
    assert_eq!(seen_client_hash(&resp), first.sha256_hex);
}

/// After a publish the old pool is dropped: its idle upstream connection closes, so rotations
/// do not pile up open connections at the server.
#[test]
fn rotation_closes_the_old_pools_idle_connection() {
    let mut chain = chain("http", &[]);
    let root = chain.pods.pki().root.cert_pem.clone();
    let active = r#"mtls_sidecar_connections_active{listener="server"}"#;
    let first = chain.client.fetch("/first").expect("first request");
    assert_eq!(seen_client_hash(&first), chain.pods.client_leaf.sha256_hex);
    let one = chain
        .server
        .wait_until(WAIT, || chain.server.counter(active) == 1.0);
    assert!(one, "{}", chain.server.metrics());
    for _ in 0..3 {
        let leaf = chain.pods.pki().client();
        chain.pods.publish_client(&leaf, &root);
        wait_until_server_sees(&chain.client, &leaf);
        let settled = chain
            .server
            .wait_until(WAIT, || chain.server.counter(active) == 1.0);
        assert!(
            settled,
            "{} upstream connections open after a rotation: the old pool's connection stayed",
            chain.server.counter(active)
        );
    }
}
