//! docs/ca-rotation.md replayed on the walkthrough's pair: terminate-legacy-app (our `server`)
//! called by outbound-client (our `client`), wired as `outbound_client` wires them, while the
//! app keeps calling: threads that open a connection to the client sidecar per request, and
//! threads that keep theirs alive. A request fails unless it gets the legacy app's 200 answer
//! for a web-app certificate the server may see at that moment (the old one, the new one, or
//! both while the client's certificate changes).
//!
//! Both sidecars read `--ca` from the CA bundle ConfigMap (`mtls-ca-bundle`), not from their
//! Secret's `ca.crt` (checked here): a bundle change is one kubelet update of that volume per
//! pod; a re-issued leaf is one of the Secret (with the new root as its `ca.crt`, as
//! cert-manager's CA Issuer writes it).
//!
//! The runbook's steps (numbered as its sections), each waited for on `/status` or in a
//! handshake (bounded by `WAIT`) and followed by more requests, none failed:
//! - before: the old root in the bundle, leaves from the old root;
//! - 2-3: bundle = old + new root, loaded by both sidecars (generation +1, no error);
//! - 4: the server's leaf re-issued from the new root (served in a handshake), then the
//!   client's (the server sees its hash in `X-Forwarded-Client-Cert`);
//! - 6: bundle = new root only, loaded by both; a client certificate of the old root is now
//!   refused by the server sidecar, one of the new root admitted.
//!
//! The control breaks the order: the bundle becomes the new root only while every leaf still
//! comes from the old one. Each sidecar checks its own leaf against the new bundle, refuses the
//! update (`untrusted_chain`) and keeps serving the old bundle and leaf: nothing breaks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::manifests::{ca_bundle_key, command_line, flag, Example};
use super::outbound_client::start_client_sidecar;
use super::pod::{mounts, Pod};
use super::terminate_legacy_app::{is_legacy_answer, xfcc_hash, LegacyApp};
use super::{assert_all_gone, processes, tools, WAIT, WEB_APP_DN};
use crate::support::failures::Failures;
use crate::support::http1::{PlainConn, Response};
use crate::support::pki::{Ca, KeyAlg, Leaf, TestPki};
use crate::support::sidecar::{wait_until, Sidecar};
use crate::support::tls_client::TlsClient;

/// Client threads of each kind.
const NEW_CONNECTION_CLIENTS: usize = 2;
const KEPT_ALIVE_CLIENTS: usize = 2;

/// Between two requests of one client: steady traffic that leaves the machine some CPU.
const PAUSE: Duration = Duration::from_millis(5);

/// Requests served after each step, to call it one that traffic survived.
const SERVED_PER_STEP: usize = 20;

/// The runbook's name for the new root (step 1).
const NEW_ROOT_CN: &str = "mTLS Root CA 2";

// === Traffic ===

/// The outcome of every request, what the server may pass on, and the threads' stop flag.
#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    /// Moves at every change, with the web-app leaves the legacy app may report now.
    expected: Mutex<(u64, Vec<Leaf>)>,
    failures: Failures,
    served: AtomicUsize,
}

impl Traffic {
    fn expect(&self, leaves: &[&Leaf]) {
        let mut e = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        *e = (e.0 + 1, leaves.iter().map(|l| (*l).clone()).collect());
    }

    fn expected(&self) -> Vec<Leaf> {
        self.expected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    fn fail(&self, what: String) {
        self.failures.push(what);
    }

    fn failures(&self) -> Vec<String> {
        self.failures.list()
    }

    fn served(&self) -> usize {
        self.served.load(SeqCst)
    }

    /// Count one request as served or failed: `before` were expected when it started, and a
    /// request that spans a change may carry either side's certificate. True if served.
    fn record(&self, what: &str, before: &[Leaf], result: Result<Response, String>) -> bool {
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                self.fail(format!("{what}: {e}"));
                return false;
            }
        };
        let body = resp.body_text();
        let known = before
            .iter()
            .chain(&self.expected())
            .any(|leaf| is_legacy_answer(&body, WEB_APP_DN, leaf));
        if resp.status == 200 && !resp.closes() && known {
            self.served.fetch_add(1, SeqCst);
            true
        } else {
            self.fail(format!(
                "{what}: HTTP {} (closes: {}): {body}",
                resp.status,
                resp.closes()
            ));
            false
        }
    }
}

/// The app's threads, calling the client sidecar's listener; stopped and joined on drop (also
/// when the test fails).
struct Running {
    traffic: Arc<Traffic>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    fn start(traffic: &Arc<Traffic>, addr: &str) -> Running {
        let mut threads = Vec::new();
        for id in 0..NEW_CONNECTION_CLIENTS {
            threads.push(new_connections(traffic, addr, id));
        }
        for id in 0..KEPT_ALIVE_CLIENTS {
            threads.push(kept_alive(traffic, addr, id));
        }
        Running {
            traffic: traffic.clone(),
            threads,
        }
    }

    /// Stop every thread; one that panicked fails the test.
    fn stop(mut self) {
        self.traffic.stop.store(true, SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("a client thread panicked");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.traffic.stop.store(true, SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The app opening a new connection for every request.
fn new_connections(traffic: &Arc<Traffic>, addr: &str, id: usize) -> JoinHandle<()> {
    let (traffic, addr) = (traffic.clone(), addr.to_string());
    std::thread::spawn(move || {
        let mut n = 0;
        while !traffic.stop.load(SeqCst) {
            let before = traffic.expected();
            let result =
                PlainConn::connect(&addr, &addr).and_then(|mut c| c.get(&format!("/new/{id}/{n}")));
            traffic.record(
                &format!("new-connection client {id}, request {n}"),
                &before,
                result,
            );
            n += 1;
            std::thread::sleep(PAUSE);
        }
    })
}

/// The app keeping its connection alive; after a failed request it opens a new one.
fn kept_alive(traffic: &Arc<Traffic>, addr: &str, id: usize) -> JoinHandle<()> {
    let (traffic, addr) = (traffic.clone(), addr.to_string());
    std::thread::spawn(move || {
        let mut open: Option<PlainConn> = None;
        let mut n = 0;
        while !traffic.stop.load(SeqCst) {
            let what = format!("kept-alive client {id}, request {n}");
            n += 1;
            let before = traffic.expected();
            let conn = match open.take() {
                Some(conn) => Ok(conn),
                None => PlainConn::connect(&addr, &addr),
            };
            let mut kept = None;
            let result = conn.and_then(|mut c| {
                let resp = c.get(&format!("/keep/{id}/{n}"));
                kept = Some(c);
                resp
            });
            if traffic.record(&what, &before, result) {
                open = kept;
            }
            std::thread::sleep(PAUSE);
        }
    })
}

// === The pods ===

/// The two pods, running. Fields drop in order: the client sidecar stops before its pod's files
/// go, and before the server it calls.
struct Pair {
    client: Sidecar,
    /// The client sidecar's listener: the app's `http://127.0.0.1:8080` here.
    client_addr: String,
    client_pod: Pod,
    legacy: LegacyApp,
}

impl Pair {
    fn start(pki: &TestPki) -> Pair {
        let legacy = LegacyApp::start(pki);
        let mut client_pod = Pod::new(Example::load("outbound-client"), pki);
        client_pod.resolve_service_of(&legacy.pod);
        assert_ca_is_the_bundle(&legacy.pod);
        assert_ca_is_the_bundle(&client_pod);
        let (client, args) = start_client_sidecar(&client_pod);
        let client_addr = flag(&args, "--listen").expect("client --listen");
        Pair {
            client,
            client_addr,
            client_pod,
            legacy,
        }
    }

    fn server(&self) -> &Sidecar {
        &self.legacy.server
    }

    /// Both sidecars' generations: (server, client).
    fn generations(&self) -> (u64, u64) {
        (self.server().generation(), self.client.generation())
    }

    /// The CA bundle ConfigMap changes to `bundle`; kubelet delivers it to both pods.
    fn publish_ca_bundle(&mut self, bundle: &str) {
        self.legacy.pod.publish_ca_bundle(bundle);
        self.client_pod.publish_ca_bundle(bundle);
    }

    /// Wait until both sidecars published exactly one new generation since `before`, without a
    /// failed reload (the runbook's step 3).
    fn wait_loaded(&self, before: (u64, u64), step: &str) {
        for (name, sc, was) in [
            ("server", self.server(), before.0),
            ("client", &self.client, before.1),
        ] {
            let loaded = wait_until(WAIT, || sc.generation() > was);
            assert!(
                loaded,
                "{step}: the {name} sidecar never loaded the bundle (generation {}, last error \
                 {:?})\n{}",
                sc.generation(),
                sc.last_error_reason(),
                self.context()
            );
            let set = sc.set();
            assert!(
                set["generation"] == was + 1 && set["last_error"].is_null(),
                "{step}: the {name} sidecar should be at generation {} without an error: \
                 {set}\n{}",
                was + 1,
                self.context()
            );
        }
    }

    /// The server sidecar's listener (behind Service port 443).
    fn api(&self) -> String {
        format!("127.0.0.1:{}", self.legacy.pod.service().port(443))
    }

    /// A direct handshake with the server sidecar as web-app with `leaf`, trusting `bundle`:
    /// the serial the server served, or why the handshake failed (the client waits for the
    /// server's verdict on its certificate).
    fn handshake(&self, bundle: &str, leaf: &Leaf) -> Result<String, String> {
        let client = TlsClient::builder(bundle)
            .leaf(leaf)
            .server_name(&self.legacy.pod.service().host)
            .build();
        let conn = client.connect(&self.api())?;
        Ok(conn.peer.serial_hex)
    }

    /// One request through the client sidecar, on a new connection: the client certificate
    /// hash the server passed on, or what came instead.
    fn seen_client_hash(&self) -> Result<String, String> {
        let addr = &self.client_addr;
        let resp = PlainConn::connect(addr, addr)?.get("/probe")?;
        let body = resp.body_text();
        match xfcc_hash(&body) {
            Some(hash) if resp.status == 200 => Ok(hash.to_string()),
            _ => Err(format!("HTTP {}: {body}", resp.status)),
        }
    }

    /// `role="ca"` of the expiry metric, per sidecar: (server, client).
    fn ca_expiry(&self) -> (f64, f64) {
        let name = "mtls_sidecar_certificate_expiration_timestamp_seconds";
        let ca = [("role", "ca")];
        (
            self.server().metric_sum(name, &ca),
            self.client.metric_sum(name, &ca),
        )
    }

    fn context(&self) -> String {
        format!(
            "--- client sidecar ---\n{}\n{}",
            self.client.log(),
            self.legacy.context()
        )
    }

    /// Stop every process and check that none is left.
    fn stop(self) {
        let Pair {
            client,
            client_pod,
            legacy,
            ..
        } = self;
        let procs = processes(&[client.pid()]);
        drop(client);
        assert_all_gone(&procs);
        drop(client_pod);
        legacy.stop();
    }
}

/// Our sidecar's `--ca` reads the CA bundle ConfigMap (trust-manager's target), so a bundle
/// change reaches it through that volume alone (a Secret's `ca.crt` would need a Secret update).
fn assert_ca_is_the_bundle(pod: &Pod) {
    let sidecar = pod.ex.sidecar();
    let path = flag(&command_line(sidecar), "--ca").expect("the sidecar's --ca");
    let volume = mounts(sidecar)
        .filter(|(at, _)| path.strip_prefix(at).is_some_and(|r| r.starts_with('/')))
        .max_by_key(|(at, _)| at.len())
        .map(|(_, volume)| volume)
        .unwrap_or_else(|| panic!("{}: --ca {path}: nothing mounted there", pod.ex.name));
    let config_map = pod.ex.pod()["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == volume)
        .and_then(|v| v["configMap"]["name"].as_str());
    assert!(
        config_map.is_some_and(|name| ca_bundle_key(name).is_some()),
        "{}: --ca {path} reads volume {volume}, not the CA bundle ConfigMap: this replay updates \
         only that ConfigMap",
        pod.ex.name
    );
}

/// A certificate's notAfter, as the expiry metric gives it (Unix seconds).
fn not_after(ca: &Ca) -> f64 {
    let (_, cert) = x509_parser::parse_x509_certificate(&ca.cert_der).expect("CA parses");
    cert.validity().not_after.timestamp() as f64
}

/// Let the app run on until `SERVED_PER_STEP` more requests were served; no request may have
/// failed so far.
fn traffic_flows(traffic: &Traffic, pair: &Pair, step: &str) {
    let from = traffic.served();
    let flowed = wait_until(WAIT, || {
        traffic.served() >= from + SERVED_PER_STEP || !traffic.failures().is_empty()
    });
    let failures = traffic.failures();
    assert!(
        flowed && failures.is_empty(),
        "{step}: {} requests served since the step, {} failed, first: {:#?}\n{}",
        traffic.served() - from,
        failures.len(),
        &failures[..failures.len().min(10)],
        pair.context()
    );
}

// === The runbook ===

#[test]
fn root_rotation_by_the_runbook_fails_no_request() {
    if !tools(&["nginx"]) {
        return;
    }
    let pki = TestPki::new();
    let (old_root, new_root) = (&pki.root, TestPki::new_root(NEW_ROOT_CN, KeyAlg::EcdsaP256));
    let both = format!("{}{}", old_root.cert_pem, new_root.cert_pem);
    let mut pair = Pair::start(&pki);
    let old_client = pair.client_pod.leaf("client-tls").clone();
    let traffic = Arc::new(Traffic::default());
    traffic.expect(&[&old_client]);
    let running = Running::start(&traffic, &pair.client_addr);

    // Before: the old root in the bundle, every leaf from it.
    traffic_flows(&traffic, &pair, "before: old root");

    // 2.-3. The new root next to the old one, loaded by every pod.
    let before = pair.generations();
    pair.publish_ca_bundle(&both);
    pair.wait_loaded(before, "2. old + new root");
    traffic_flows(&traffic, &pair, "2. old + new root");
    let earliest = not_after(old_root).min(not_after(&new_root));
    assert_eq!(
        pair.ca_expiry(),
        (earliest, earliest),
        "2. the CA expiry is the bundle's earliest"
    );

    // 4. Every leaf re-issued from the new root: the server's first.
    let new_server = pair.legacy.pod.reissue_by(&pki, &new_root, "server-tls");
    pair.legacy
        .pod
        .publish_issued("server-tls", &new_server, &new_root.cert_pem);
    let mut last = Err(String::new());
    let served = wait_until(WAIT, || {
        last = pair.handshake(&both, &old_client);
        last.as_deref() == Ok(new_server.serial_hex.as_str())
            && pair.server().serial().as_deref() == Some(new_server.serial_hex.as_str())
    });
    assert!(
        served,
        "4. the server never served its new-root leaf {} (last handshake: {last:?})\n{}",
        new_server.serial_hex,
        pair.context()
    );
    traffic_flows(&traffic, &pair, "4. new-root server leaf");

    // Then the client's: the server sees it on the client's new connections.
    let new_client = pair.client_pod.reissue_by(&pki, &new_root, "client-tls");
    traffic.expect(&[&old_client, &new_client]);
    pair.client_pod
        .publish_issued("client-tls", &new_client, &new_root.cert_pem);
    let mut last = Err(String::new());
    let seen = wait_until(WAIT, || {
        last = pair.seen_client_hash();
        last.as_deref() == Ok(new_client.sha256_hex.as_str())
            && pair.client.serial().as_deref() == Some(new_client.serial_hex.as_str())
    });
    assert!(
        seen,
        "4. the server never saw the client's new-root leaf {} (last: {last:?})\n{}",
        new_client.sha256_hex,
        pair.context()
    );
    traffic.expect(&[&new_client]);
    traffic_flows(&traffic, &pair, "4. new-root client leaf");
    // The server still admits an old-root client certificate (the control for step 6).
    let admitted = pair.handshake(&both, &old_client);
    assert_eq!(
        admitted.as_deref(),
        Ok(new_server.serial_hex.as_str()),
        "4. an old-root client certificate, both roots trusted\n{}",
        pair.context()
    );

    // 6. The old root removed from the bundle, loaded by every pod.
    let before = pair.generations();
    pair.publish_ca_bundle(&new_root.cert_pem);
    pair.wait_loaded(before, "6. new root only");
    traffic_flows(&traffic, &pair, "6. new root only");
    let expiry = not_after(&new_root);
    assert_eq!(
        pair.ca_expiry(),
        (expiry, expiry),
        "6. the CA expiry is the new root's"
    );
    let refused = pair.handshake(&new_root.cert_pem, &old_client);
    assert!(
        refused.is_err(),
        "6. the server sidecar should refuse a client certificate of the old root: {refused:?}\n{}",
        pair.context()
    );
    // The client sees the alert before the server's task counts the refusal.
    let server = pair.server();
    let counted = server.wait_until(WAIT, || {
        server.metric_sum(
            "mtls_sidecar_handshake_failures_total",
            &[("reason", "client_cert_untrusted")],
        ) >= 1.0
    });
    assert!(counted, "{}", server.metrics());
    let admitted = pair.handshake(&new_root.cert_pem, &new_client);
    assert_eq!(
        admitted.as_deref(),
        Ok(new_server.serial_hex.as_str()),
        "6. the new-root client certificate\n{}",
        pair.context()
    );

    running.stop();
    let failures = traffic.failures();
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:#?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        pair.context()
    );
    eprintln!("{} requests served", traffic.served());
    pair.stop();
}

#[test]
fn new_root_only_before_reissuing_is_refused_and_traffic_flows() {
    if !tools(&["nginx"]) {
        return;
    }
    let pki = TestPki::new();
    let new_root = TestPki::new_root(NEW_ROOT_CN, KeyAlg::EcdsaP256);
    let mut pair = Pair::start(&pki);
    let old_client = pair.client_pod.leaf("client-tls").clone();
    let old_server = pair.legacy.pod.leaf("server-tls").clone();
    let traffic = Arc::new(Traffic::default());
    traffic.expect(&[&old_client]);
    let running = Running::start(&traffic, &pair.client_addr);
    traffic_flows(&traffic, &pair, "old root");

    // The old root removed first: every leaf still comes from it.
    let before = pair.generations();
    pair.publish_ca_bundle(&new_root.cert_pem);
    for (name, sc) in [("server", pair.server()), ("client", &pair.client)] {
        let refused = wait_until(WAIT, || {
            sc.last_error_reason().as_deref() == Some("untrusted_chain")
        });
        assert!(
            refused,
            "the {name} sidecar should refuse a bundle its own leaf does not chain to: {}\n{}",
            sc.set(),
            pair.context()
        );
    }
    assert_eq!(
        pair.generations(),
        before,
        "a refused bundle is not published\n{}",
        pair.context()
    );
    traffic_flows(&traffic, &pair, "new root only, refused");
    // The old bundle and leaves stay in force: the server serves its old-root leaf and admits
    // the old-root client certificate.
    let kept = pair.handshake(&pki.root.cert_pem, &old_client);
    assert_eq!(
        kept.as_deref(),
        Ok(old_server.serial_hex.as_str()),
        "{}",
        pair.context()
    );

    running.stop();
    let failures = traffic.failures();
    assert!(failures.is_empty(), "{failures:#?}\n{}", pair.context());
    // No peer refused anything: the refusal stays in each sidecar's reload.
    for (name, sc) in [("server", pair.server()), ("client", &pair.client)] {
        let failed = sc.metric_sum("mtls_sidecar_handshake_failures_total", &[]);
        assert_eq!(failed, 0.0, "{name} sidecar:\n{}", sc.metrics());
    }
    pair.stop();
}
