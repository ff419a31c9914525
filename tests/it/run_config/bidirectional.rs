//! The users' guide's bidirectional service in one sidecar: one certificate with serverAuth and
//! clientAuth, in one Secret, is the set `service` of a config file used three ways at once:
//!
//! - listener `inbound` (server) terminates mTLS from `web-app` in front of the app (an echo),
//! - listener `outbound` (client) carries the app's calls to `api` (our `server` on its own
//!   Secret) with the same certificate,
//! - a watch entry stages it for a real nginx (the guide's nginx variant) and sends it SIGHUP.
//!
//! While clients use all three paths, cert-manager renews the certificate three times. Each
//! renewal is validated once and reaches every path: `inbound` and nginx serve it, `api` sees it
//! as the client certificate, nginx gets exactly one SIGHUP. No request fails, and a kubelet
//! resync changes nothing.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::{wait_listener_serves, xfcc_hash};
use crate::support::failures::Failures;
use crate::support::fixture::{tls_files, Env};
use crate::support::http1::{PlainConn, Response};
use crate::support::kubelet::KubeletVolume;
use crate::support::nginx::{served_serial, Nginx};
use crate::support::pki::{Eku, Leaf, LeafSpec, TestPki};
use crate::support::require_tool;
use crate::support::sidecar::{wait_until, Sidecar};
use crate::support::tls_client::TlsClient;
use crate::support::upstream::HttpUpstream;

const WAIT: Duration = Duration::from_secs(20);
const RENEWALS: u64 = 3;
const SERVICE: &str = "service.production.svc.cluster.local";
const API: &str = "api.production.svc.cluster.local";

/// The guide's bidirectional certificate: serverAuth and clientAuth, the service's DNS names.
fn service_leaf(pki: &TestPki) -> Leaf {
    pki.issue(
        &LeafSpec::new()
            .cn(SERVICE)
            .dns(&[SERVICE, "service.production.svc", "service.production"])
            .eku(Eku::Both),
    )
}

/// The config file: the guide's pod in one sidecar.
fn config_yaml(secret: &Path, stage: &Path, pid_file: &Path, app: &str, api: &str) -> String {
    format!(
        r#"admin-listen: 127.0.0.1:0
poll-interval: 1s
debounce: 100ms
sets:
  service:
    cert-dir: {secret}
listeners:
  - name: inbound
    kind: server
    credentials: service
    listen: 127.0.0.1:0
    target: {app}
    protocol: http
    allow-cn: [web-app]
  - name: outbound
    kind: client
    credentials: service
    listen: 127.0.0.1:0
    target: {api}
    protocol: http
    server-name: {API}
watch:
  - credentials: service
    stage-dir: {stage}
    pid-file: {pid_file}
"#,
        secret = secret.display(),
        stage = stage.display(),
        pid_file = pid_file.display(),
    )
}

/// The remote `api`: our `server` on its own Secret, in front of an echo, accepting any client
/// of the CA (so the test sees which certificate our outbound listener presented).
struct Api {
    sidecar: Sidecar,
    _echo: HttpUpstream,
    _vol: KubeletVolume,
}

fn start_api(pki: &TestPki, dir: &Path) -> Api {
    let mut vol = KubeletVolume::new(dir);
    vol.write(&tls_files(&pki.server(), &pki.root.cert_pem));
    let echo = HttpUpstream::start();
    let sidecar = Sidecar::server([
        "--cert-dir",
        &dir.display().to_string(),
        "--listen",
        "127.0.0.1:0",
        "--target",
        &echo.addr(),
        "--protocol",
        "http",
        "--allow-all",
    ]);
    assert!(
        sidecar.wait_until(WAIT, || sidecar.ready()),
        "{}",
        sidecar.log()
    );
    Api {
        sidecar,
        _echo: echo,
        _vol: vol,
    }
}

// === Load ===

/// Clients on every path until stopped; any failure is recorded.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    failures: Failures,
    requests: AtomicUsize,
}

impl Load {
    /// `request` until stopped; with `keep_alive`, a response that closes the connection is a
    /// failure (nginx's old workers close theirs after a reload: that is not one).
    fn run(
        self: &Arc<Self>,
        what: &'static str,
        keep_alive: bool,
        mut request: impl FnMut(usize) -> Result<Response, String> + Send + 'static,
    ) -> JoinHandle<()> {
        let load = self.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !load.stop.load(Ordering::SeqCst) {
                match request(n) {
                    Ok(r) if r.status == 200 && !(keep_alive && r.closes()) => {
                        load.requests.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => load.fail(format!("{what} {n}: HTTP {}: {}", r.status, r.body_text())),
                    // A kept-alive connection is gone after an error: stop that client.
                    Err(e) => return load.fail(format!("{what} {n}: {e}")),
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    }

    fn fail(&self, what: String) {
        self.failures.push(what);
    }

    fn finish(&self, threads: Vec<JoinHandle<()>>) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        for t in threads {
            t.join().expect("client thread panicked");
        }
        self.failures.list()
    }
}

/// `inbound`: new connections and one kept-alive; `outbound`: one kept-alive app connection;
/// nginx: new connections (each one a full handshake with our client certificate).
fn start_clients(
    load: &Arc<Load>,
    pki: &TestPki,
    inbound: &str,
    outbound: &str,
    nginx: &str,
) -> Vec<JoinHandle<()>> {
    let web_app = pki.client();
    let to_service = TlsClient::builder(&pki.root.cert_pem)
        .leaf(&web_app)
        .server_name(SERVICE)
        .build();
    let mut threads = Vec::new();
    let (client, addr) = (to_service.clone(), inbound.to_string());
    threads.push(load.run("inbound, new connection", true, move |n| {
        client.get(&addr, &format!("/new/{n}"))
    }));
    let mut kept = to_service
        .connect(inbound)
        .expect("kept-alive connection to inbound");
    threads.push(load.run("inbound, kept alive", true, move |n| {
        kept.get(&format!("/keep/{n}"))
    }));
    let mut app = PlainConn::connect(outbound, API).expect("app connection to outbound");
    threads.push(load.run("outbound, kept alive", true, move |n| {
        app.get(&format!("/out/{n}"))
    }));
    let (client, addr) = (to_service, nginx.to_string());
    threads.push(load.run("nginx, new connection", false, move |n| {
        client.get(&addr, &format!("/nginx/{n}"))
    }));
    threads
}

// === the test ===

/// The number of `credentials published` log lines of set `service`.
fn published_lines(sc: &Sidecar) -> usize {
    sc.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "credentials published")
        .filter(|v| v["fields"]["set"] == "service" || v["span"]["set"] == "service")
        .count()
}

fn signals(sc: &Sidecar, result: &str) -> f64 {
    sc.metric_sum(
        "mtls_sidecar_actions_total",
        &[("set", "service"), ("action", "signal"), ("result", result)],
    )
}

/// Wait until every path shows `leaf`: `inbound` and nginx serve it, `api` receives it.
fn wait_everywhere(sc: &Sidecar, api: &Api, nginx: &Nginx, pki: &TestPki, leaf: &Leaf) {
    let probe = TlsClient::builder(&pki.root.cert_pem)
        .leaf(&pki.client())
        .server_name(SERVICE)
        .build();
    wait_listener_serves(sc, "inbound", &probe, leaf, WAIT);
    let outbound = sc.wait_listener("outbound");
    let mut last = String::new();
    let seen = wait_until(WAIT, || {
        let got = PlainConn::connect(&outbound, API).and_then(|mut c| c.get("/probe"));
        last = got.and_then(|r| xfcc_hash(&r)).unwrap_or_else(|e| e);
        last == leaf.sha256_hex
    });
    assert!(
        seen,
        "api saw {last}, not {}\n--- sidecar ---\n{}\n--- api ---\n{}",
        leaf.sha256_hex,
        sc.log(),
        api.sidecar.log()
    );
    let nginx_serves = wait_until(WAIT, || {
        served_serial(nginx.port()).as_deref() == Some(leaf.serial_hex.as_str())
    });
    assert!(
        nginx_serves,
        "nginx serves {:?}, not {}\nnginx error.log:\n{}\n{}",
        served_serial(nginx.port()),
        leaf.serial_hex,
        nginx.error_log(),
        sc.log()
    );
}

#[test]
fn one_sidecar_serves_calls_and_reloads_nginx_with_one_certificate_through_renewals() {
    if !require_tool("nginx") || !require_tool("openssl") {
        return;
    }
    let mut env = Env::new();
    let first = service_leaf(&env.pki);
    env.publish(&first);
    let api = start_api(&env.pki, &env.tmp().join("api"));
    let app = HttpUpstream::start();
    let stage = env.tmp().join("stage");
    let nginx = Nginx::configure(&env.tmp().join("nginx"), &stage);
    let config = env.tmp().join("config.yaml");
    fs::write(
        &config,
        config_yaml(
            &env.dir(),
            &stage,
            &nginx.pid_file(),
            &app.addr(),
            api.sidecar.listen_addr(),
        ),
    )
    .unwrap();

    let sc = Sidecar::run_config(&config);
    assert!(sc.wait_until(WAIT, || sc.ready()), "{}", sc.log());
    // nginx starts once the first bundle is staged, as the pod's app starts after its sidecar.
    assert!(
        wait_until(WAIT, || stage.join("tls.crt").exists()),
        "{}",
        sc.log()
    );
    let _nginx = nginx.spawn();
    wait_everywhere(&sc, &api, &nginx, &env.pki, &first);
    assert_eq!(
        signals(&sc, "success"),
        0.0,
        "the first bundle is not signalled"
    );

    let load = Arc::new(Load::default());
    let threads = start_clients(
        &load,
        &env.pki,
        &sc.wait_listener("inbound"),
        &sc.wait_listener("outbound"),
        &nginx.addr(),
    );
    for k in 1..=RENEWALS {
        let leaf = service_leaf(&env.pki);
        env.publish(&leaf);
        wait_everywhere(&sc, &api, &nginx, &env.pki, &leaf);
        assert!(
            sc.wait_until(WAIT, || signals(&sc, "success") == k as f64),
            "{}",
            sc.log()
        );
        assert_eq!(
            nginx.sighup_lines().len() as u64,
            k,
            "{:#?}",
            nginx.sighup_lines()
        );
        assert_eq!(
            fs::read_to_string(stage.join("tls.crt")).unwrap(),
            leaf.chain_pem
        );
    }
    // Kubelet's periodic resync rewrites nothing that changed: no new generation, no signal.
    env.vol.resync();
    std::thread::sleep(Duration::from_secs(2));
    let failures = load.finish(threads);

    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        sc.log()
    );
    let requests = load.requests.load(Ordering::SeqCst);
    eprintln!("{requests} requests over {RENEWALS} renewals");
    assert!(requests > 0);
    let set = sc.set_named("service");
    assert_eq!(set["generation"], RENEWALS + 1, "{set:#}");
    assert_eq!(sc.status()["sets"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        published_lines(&sc) as u64,
        RENEWALS + 1,
        "the set is validated and published once per change, whatever uses it\n{}",
        sc.log()
    );
    assert_eq!(
        sc.counter(r#"mtls_sidecar_reloads_total{set="service",result="success"}"#),
        (RENEWALS + 1) as f64
    );
    assert_eq!(signals(&sc, "success"), RENEWALS as f64, "{}", sc.log());
    assert_eq!(signals(&sc, "failure"), 0.0, "{}", sc.log());
    assert_eq!(nginx.sighup_lines().len() as u64, RENEWALS);
    for listener in ["inbound", "outbound"] {
        assert!(
            sc.metric_sum("mtls_sidecar_connections_total", &[("listener", listener)]) > 0.0,
            "no connection counted for listener {listener}\n{}",
            sc.metrics()
        );
    }
}
