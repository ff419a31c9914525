//! `run --config FILE` while the file changes under load. The file is a key of a ConfigMap
//! volume (a `KubeletVolume`), so every change is kubelet's atomic `..data` swap; SIGHUP asks for
//! a re-read too. Listener `a` carries traffic throughout (one kept-alive connection and a stream
//! of new connections) while the file:
//!
//! - adds, changes (allow-list, then target) and removes listener `b`: each change is applied,
//!   `a` is never re-bound and its kept-alive connection never cut (`config.generation` and
//!   `result="success"` count the changes),
//! - is broken (a YAML syntax error, an unknown set): refused with `FILE:LINE:` in the log and in
//!   `config.last_error`, counted once per distinct text however many events and polls follow,
//!   the running configuration stays; a revert or a fix clears the error,
//! - is re-read unchanged (SIGHUP, a swap that changes only a comment): `result="unchanged"`,
//!   nothing re-bound,
//! - moves `b` to a port already taken,
//! - points the set at another Secret: the set serves the new Secret's certificate.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tempfile::TempDir;

use crate::support::fixture::tls_files;
use crate::support::http1::Response;
use crate::support::kubelet::{KubeletVolume, WriteOutcome};
use crate::support::pki::{Eku, Leaf, LeafSpec, TestPki};
use crate::support::sidecar::{wait_until, ExecCounter, Sidecar};
use crate::support::tls_client::{TlsClient, TlsConn};
use crate::support::upstream::{Echoed, HttpUpstream};

const WAIT: Duration = Duration::from_secs(20);
/// The ConfigMap key holding the file.
const CONFIG_KEY: &str = "config.yaml";
/// A couple of the file's poll intervals (`poll-interval: 1s`): long enough for repeated
/// re-reads of an unchanged text to have happened.
const A_FEW_POLLS: Duration = Duration::from_millis(2500);

// === the pod ===

/// A Secret volume (set `id`), a ConfigMap volume with the config file, two apps.
struct Pod {
    pki: TestPki,
    server: Leaf,
    secret: KubeletVolume,
    configmap: KubeletVolume,
    app: HttpUpstream,
    app2: HttpUpstream,
    tmp: TempDir,
}

impl Pod {
    fn new() -> Pod {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new();
        let server = pki.server();
        let mut secret = KubeletVolume::new(tmp.path().join("secret"));
        secret.write(&tls_files(&server, &pki.root.cert_pem));
        Pod {
            server,
            secret,
            configmap: KubeletVolume::new(tmp.path().join("configmap")),
            app: HttpUpstream::start(),
            app2: HttpUpstream::start(),
            pki,
            tmp,
        }
    }

    /// The path the sidecar reads: `configmap/config.yaml`, a symlink through `..data`.
    fn config_path(&self) -> PathBuf {
        self.configmap.dir().join(CONFIG_KEY)
    }

    /// Kubelet updates the ConfigMap to `yaml` (a `..data` swap).
    fn write_config(&mut self, yaml: &str) {
        let outcome = self.configmap.write(&[(CONFIG_KEY, yaml)]);
        assert!(
            matches!(outcome, WriteOutcome::Swapped { .. }),
            "expected a swap, kubelet saw the same content: {yaml}"
        );
    }

    /// Writes `yaml` as the first version of the ConfigMap, starts the sidecar on it and
    /// waits until every listener it names is bound and the pod is ready.
    fn start(&mut self, yaml: &str, listeners: &[&str]) -> Sidecar {
        self.write_config(yaml);
        let sc = Sidecar::run_config(&self.config_path());
        for name in listeners {
            sc.wait_listener(name);
        }
        assert!(sc.wait_until(WAIT, || sc.ready()), "{}", sc.log());
        sc
    }

    /// `web-app` (the users' guide client), trusted by every listener's first allow-list.
    fn web_app(&self) -> TlsClient {
        TlsClient::with_leaf(&self.pki.root.cert_pem, &self.pki.client())
    }

    /// A client certificate with CN `other-app`.
    fn other_app(&self) -> TlsClient {
        let leaf = self
            .pki
            .issue(&LeafSpec::new().cn("other-app").eku(Eku::Client));
        TlsClient::with_leaf(&self.pki.root.cert_pem, &leaf)
    }
}

/// One `kind: server` listener of set `id`, `protocol: http`.
fn listener_yaml(name: &str, listen: &str, target: &str, allow_cn: &str) -> String {
    format!(
        "  - name: {name}
    kind: server
    credentials: id
    listen: {listen}
    target: {target}
    protocol: http
    allow-cn: [{allow_cn}]
"
    )
}

/// The whole file: set `id` reads `cert_dir`; `listeners` are `listener_yaml`s.
fn config_yaml(cert_dir: &Path, listeners: &[&str]) -> String {
    format!(
        "admin-listen: 127.0.0.1:0
poll-interval: 1s
debounce: 100ms
sets:
  id:
    cert-dir: {}
listeners:
{}",
        cert_dir.display(),
        listeners.concat()
    )
}

/// A port nobody listens on now (picked by the kernel, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// === what the sidecar reports ===

/// `/status` `config`.
fn config_status(sc: &Sidecar) -> Value {
    sc.status()["config"].clone()
}

fn config_generation(sc: &Sidecar) -> u64 {
    let config = config_status(sc);
    config["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric config.generation in {config:#}"))
}

/// Waits (bounded) until `config.generation` is `n`; panics with the log if it is not.
fn wait_generation(sc: &Sidecar, n: u64) {
    let reached = sc.wait_until(WAIT, || config_generation(sc) == n);
    assert!(
        reached,
        "config.generation {}, expected {n}\n{}",
        config_generation(sc),
        sc.log()
    );
}

/// `mtls_sidecar_config_reloads_total{result=RESULT}`.
fn reloads(sc: &Sidecar, result: &str) -> f64 {
    sc.counter(&format!(
        r#"mtls_sidecar_config_reloads_total{{result="{result}"}}"#
    ))
}

/// The three config reload counters: (success, failure, unchanged).
fn reload_counts(sc: &Sidecar) -> (f64, f64, f64) {
    (
        reloads(sc, "success"),
        reloads(sc, "failure"),
        reloads(sc, "unchanged"),
    )
}

/// `(name, address)` of every listener in `/status`, sorted by name.
fn status_listeners(sc: &Sidecar) -> Vec<(String, String)> {
    let status = sc.status();
    let mut listeners: Vec<(String, String)> = status["listeners"]
        .as_array()
        .unwrap_or_else(|| panic!("no listeners array in /status: {status:#}"))
        .iter()
        .map(|l| {
            let field = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (field("name"), field("address"))
        })
        .collect();
    listeners.sort();
    listeners
}

/// The JSON log lines whose message is `message`.
fn log_lines(sc: &Sidecar, message: &str) -> Vec<Value> {
    sc.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message)
        .collect()
}

/// How many times listener `name` was bound.
fn bound(sc: &Sidecar, name: &str) -> usize {
    log_lines(sc, "listener bound")
        .iter()
        .filter(|v| v["fields"]["listener"] == name)
        .count()
}

/// The `error` field of every `configuration refused` log line.
fn refusals(sc: &Sidecar) -> Vec<String> {
    log_lines(sc, "configuration refused; keeping the running one")
        .iter()
        .map(|v| {
            v["fields"]["error"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// True if `message` starts with `PATH:LINE: ` for the config file `path`.
fn names_file_and_line(message: &str, path: &Path) -> bool {
    let Some(rest) = message.strip_prefix(&format!("{}:", path.display())) else {
        return false;
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && rest[digits..].starts_with(": ")
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in\n{text}"))
        + 1
}

// === traffic on listener `a` ===

/// Requests on listener `a` until stopped: one kept-alive connection, opened once (the test
/// uses it too, between changes) and a stream of new connections. Any failure is recorded;
/// the kept-alive client stops at its first (its connection is gone).
struct Traffic {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    /// Requests answered on the kept-alive connection.
    kept_ok: Arc<AtomicUsize>,
    /// Requests answered on new connections.
    fresh_ok: Arc<AtomicUsize>,
    kept: Arc<Mutex<TlsConn>>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn start(client: &TlsClient, addr: &str) -> Traffic {
        let kept = client
            .connect(addr)
            .unwrap_or_else(|e| panic!("kept-alive connection to {addr}: {e}"));
        let mut traffic = Traffic {
            stop: Arc::default(),
            failures: Arc::default(),
            kept_ok: Arc::default(),
            fresh_ok: Arc::default(),
            kept: Arc::new(Mutex::new(kept)),
            threads: Vec::new(),
        };
        let kept = traffic.kept.clone();
        let thread = traffic.spawn("a, kept alive", traffic.kept_ok.clone(), move |n| {
            lock(&kept).get(&format!("/keep/{n}"))
        });
        traffic.threads.push(thread);
        let (client, addr) = (client.clone(), addr.to_string());
        let thread = traffic.spawn("a, new connection", traffic.fresh_ok.clone(), move |n| {
            client.get(&addr, &format!("/new/{n}"))
        });
        traffic.threads.push(thread);
        traffic
    }

    fn spawn(
        &self,
        what: &'static str,
        ok: Arc<AtomicUsize>,
        mut request: impl FnMut(usize) -> Result<Response, String> + Send + 'static,
    ) -> JoinHandle<()> {
        let (stop, failures) = (self.stop.clone(), self.failures.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let failure = match request(n) {
                    Ok(r) if r.status == 200 && !r.closes() => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        None
                    }
                    Ok(r) => Some(format!(
                        "{what} {n}: HTTP {} (closes: {}): {}",
                        r.status,
                        r.closes(),
                        r.body_text()
                    )),
                    Err(e) => Some(format!("{what} {n}: {e}")),
                };
                if let Some(failure) = failure {
                    lock(&failures).push(failure);
                    if what.contains("kept") {
                        return;
                    }
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    }

    /// Both clients of `a` are still answered (each completes a few more requests from now),
    /// the kept-alive connection answers the test itself, and no request has failed so far.
    fn assert_flowing(&self, sc: &Sidecar, after: &str) {
        let path = format!("/test/after-{}", after.replace(' ', "-"));
        let response = lock(&self.kept).get(&path);
        match &response {
            Ok(r) if r.status == 200 => assert_eq!(Echoed::parse(&r.body).path, path),
            _ => panic!(
                "the kept-alive connection to a after {after}: {response:?}\n{}",
                sc.log()
            ),
        }
        let (kept, fresh) = (
            self.kept_ok.load(Ordering::SeqCst),
            self.fresh_ok.load(Ordering::SeqCst),
        );
        let going = wait_until(WAIT, || {
            self.kept_ok.load(Ordering::SeqCst) >= kept + 3
                && self.fresh_ok.load(Ordering::SeqCst) >= fresh + 3
        });
        let failures = lock(&self.failures).clone();
        assert!(
            failures.is_empty(),
            "requests on a failed after {after}: {failures:#?}\n{}",
            sc.log()
        );
        assert!(
            going,
            "traffic on a stalled after {after} (kept {kept} -> {}, new {fresh} -> {})\n{}",
            self.kept_ok.load(Ordering::SeqCst),
            self.fresh_ok.load(Ordering::SeqCst),
            sc.log()
        );
    }

    /// Stops the clients; the failures of the whole run.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            thread.join().expect("client thread panicked");
        }
        let failures = lock(&self.failures).clone();
        failures
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits (bounded) until `request` on a new connection to `addr` is answered `status`; returns
/// the response.
fn wait_answer(sc: &Sidecar, client: &TlsClient, addr: &str, path: &str, status: u16) -> Response {
    let mut last = Err(String::from("no attempt"));
    let answered = wait_until(WAIT, || {
        last = client.get(addr, path);
        matches!(&last, Ok(r) if r.status == status)
    });
    assert!(
        answered,
        "GET {path} on {addr}: expected HTTP {status}, got {last:?}\n{}",
        sc.log()
    );
    last.expect("checked above")
}

// === the tests ===

/// Listener `b` is added, its allow-list changed, its target changed, and it is removed, while
/// `a` serves steadily: each change is applied once, `b` behaves as the file says, and `a`
/// (never re-bound) keeps its kept-alive connection with no failed request.
#[test]
fn listeners_added_changed_and_removed_while_an_unchanged_one_keeps_its_connections() {
    let mut pod = Pod::new();
    let (secret, app, app2) = (
        pod.secret.dir().to_path_buf(),
        pod.app.addr(),
        pod.app2.addr(),
    );
    let a = listener_yaml("a", "127.0.0.1:0", &app, "web-app");
    let b_addr = format!("127.0.0.1:{}", free_port());
    let sc = pod.start(&config_yaml(&secret, &[&a]), &["a"]);
    let a_addr = sc.wait_listener("a");
    assert_eq!(config_generation(&sc), 1);
    assert!(config_status(&sc)["last_error"].is_null());
    assert_eq!(
        config_status(&sc)["path"],
        pod.config_path().display().to_string()
    );
    assert_eq!(status_listeners(&sc), [("a".into(), a_addr.clone())]);
    let (web_app, other_app) = (pod.web_app(), pod.other_app());
    let traffic = Traffic::start(&web_app, &a_addr);
    traffic.assert_flowing(&sc, "start");

    // (1) b is added: it serves web-app, in front of app.
    pod.write_config(&config_yaml(
        &secret,
        &[&a, &listener_yaml("b", &b_addr, &app, "web-app")],
    ));
    wait_generation(&sc, 2);
    assert_eq!(sc.listener("b").as_deref(), Some(b_addr.as_str()));
    wait_answer(&sc, &web_app, &b_addr, "/b/added", 200);
    assert_eq!(
        status_listeners(&sc),
        [("a".into(), a_addr.clone()), ("b".into(), b_addr.clone())]
    );
    traffic.assert_flowing(&sc, "adding b");

    // (2) b's allow-list changes: web-app is now forbidden, other-app allowed.
    pod.write_config(&config_yaml(
        &secret,
        &[&a, &listener_yaml("b", &b_addr, &app, "other-app")],
    ));
    wait_generation(&sc, 3);
    assert_eq!(bound(&sc, "b"), 2, "a changed listener is bound again");
    let forbidden = wait_answer(&sc, &web_app, &b_addr, "/b/web-app", 403);
    assert!(
        forbidden.body_text().contains("web-app"),
        "{}",
        forbidden.body_text()
    );
    wait_answer(&sc, &other_app, &b_addr, "/b/other-app", 200);
    traffic.assert_flowing(&sc, "changing b's allow-list");

    // (3) b's target changes: its requests reach app2.
    pod.write_config(&config_yaml(
        &secret,
        &[&a, &listener_yaml("b", &b_addr, &app2, "other-app")],
    ));
    wait_generation(&sc, 4);
    assert_eq!(bound(&sc, "b"), 3);
    wait_answer(&sc, &other_app, &b_addr, "/b/app2", 200);
    assert_eq!(pod.app2.last().map(|e| e.path).as_deref(), Some("/b/app2"));
    traffic.assert_flowing(&sc, "changing b's target");

    // (4) b is removed: its port is closed.
    pod.write_config(&config_yaml(&secret, &[&a]));
    wait_generation(&sc, 5);
    let closed = wait_until(WAIT, || other_app.connect(&b_addr).is_err());
    assert!(closed, "b still accepts on {b_addr}\n{}", sc.log());
    assert_eq!(status_listeners(&sc), [("a".into(), a_addr.clone())]);
    traffic.assert_flowing(&sc, "removing b");

    let failures = traffic.finish();
    assert!(failures.is_empty(), "{failures:#?}\n{}", sc.log());
    assert_eq!(bound(&sc, "a"), 1, "a was bound again\n{}", sc.log());
    assert_eq!(sc.listener("a"), Some(a_addr));
    let config = config_status(&sc);
    assert_eq!(config["generation"], 5, "{config:#}");
    assert!(config["last_error"].is_null(), "{config:#}");
    assert_eq!(reload_counts(&sc), (4.0, 0.0, 0.0), "{}", sc.metrics());
    assert_eq!(
        log_lines(&sc, "configuration applied").len(),
        4,
        "{}",
        sc.log()
    );
    assert!(sc.ready(), "{}", sc.get("/readyz").1);
}

/// A YAML syntax error, then a reference to an unknown set: each is refused once (however many
/// file events and polls follow), with `FILE:LINE:` in the log and in `config.last_error`; the
/// running configuration and `a`'s traffic are untouched. Reverting clears the error without a
/// new generation; a fixed file is applied.
#[test]
fn a_broken_file_is_refused_once_and_the_running_configuration_stays() {
    let mut pod = Pod::new();
    let (secret, app) = (pod.secret.dir().to_path_buf(), pod.app.addr());
    let a = listener_yaml("a", "127.0.0.1:0", &app, "web-app");
    let good = config_yaml(&secret, &[&a]);
    let sc = pod.start(&good, &["a"]);
    let a_addr = sc.wait_listener("a");
    let traffic = Traffic::start(&pod.web_app(), &a_addr);
    let path = pod.config_path();

    let b_addr = format!("127.0.0.1:{}", free_port());
    let unclosed = listener_yaml("b", &b_addr, &app, "web-app").replace("[web-app]", "[web-app");
    let unknown_set = listener_yaml("b", &b_addr, &app, "web-app")
        .replace("credentials: id", "credentials: nope");
    let broken = [
        config_yaml(&secret, &[&a, &unclosed]),
        config_yaml(&secret, &[&a, &unknown_set]),
    ];
    for (i, text) in broken.iter().enumerate() {
        let n = i + 1;
        pod.write_config(text);
        let refused = sc.wait_until(WAIT, || reloads(&sc, "failure") == n as f64);
        assert!(refused, "broken file {n} not refused\n{}", sc.log());
        // More file events and poll ticks follow (kubelet's periodic resync, the 1 s poll):
        // the same broken text is not refused again.
        pod.configmap.resync();
        std::thread::sleep(A_FEW_POLLS);
        assert_eq!(reload_counts(&sc), (0.0, n as f64, 0.0), "{}", sc.metrics());
        let logged = refusals(&sc);
        assert_eq!(logged.len(), n, "{logged:#?}");
        let reason = &logged[i];
        assert!(
            names_file_and_line(reason, &path),
            "the reason names {}:LINE: {reason}",
            path.display()
        );
        let config = config_status(&sc);
        assert_eq!(
            config["last_error"]["message"],
            reason.as_str(),
            "{config:#}"
        );
        assert!(config["last_error"]["at"].is_string(), "{config:#}");
        assert_eq!(config["generation"], 1, "{config:#}");
        assert_eq!(status_listeners(&sc), [("a".into(), a_addr.clone())]);
        assert!(sc.listener("b").is_none(), "{}", sc.log());
        traffic.assert_flowing(&sc, &format!("broken file {n}"));
    }
    let unknown = &refusals(&sc)[1];
    let line = line_of(&broken[1], "credentials: nope");
    let expected = format!(
        "{}:{line}: listeners[1].credentials: unknown set",
        path.display()
    );
    assert!(
        unknown.starts_with(&expected),
        "{unknown}\nexpected {expected}..."
    );

    // Back to the running text: nothing to apply, nothing wrong any more.
    pod.write_config(&good);
    let cleared = sc.wait_until(WAIT, || config_status(&sc)["last_error"].is_null());
    assert!(cleared, "{:#}\n{}", config_status(&sc), sc.log());
    assert_eq!(reload_counts(&sc), (0.0, 2.0, 1.0), "{}", sc.metrics());
    assert_eq!(config_generation(&sc), 1);

    // Broken again, then fixed: b is added.
    pod.write_config(&broken[0]);
    let refused = sc.wait_until(WAIT, || reloads(&sc, "failure") == 3.0);
    assert!(refused, "{}", sc.log());
    assert!(!config_status(&sc)["last_error"].is_null());
    pod.write_config(&config_yaml(
        &secret,
        &[&a, &listener_yaml("b", &b_addr, &app, "web-app")],
    ));
    wait_generation(&sc, 2);
    assert!(config_status(&sc)["last_error"].is_null());
    wait_answer(&sc, &pod.web_app(), &b_addr, "/b/fixed", 200);
    traffic.assert_flowing(&sc, "the fix");

    let failures = traffic.finish();
    assert!(failures.is_empty(), "{failures:#?}\n{}", sc.log());
    assert_eq!(bound(&sc, "a"), 1, "{}", sc.log());
    assert_eq!(reload_counts(&sc), (1.0, 3.0, 1.0), "{}", sc.metrics());
}

/// SIGHUP with the file unchanged, and a `..data` swap that changes only a comment: both are
/// `result="unchanged"`; nothing is re-bound, no generation, connections kept. Kubelet's no-op
/// resync and the poll are not counted at all.
#[test]
fn an_unchanged_file_rebinds_nothing_on_sighup_or_a_comment_only_swap() {
    let mut pod = Pod::new();
    let (secret, app) = (pod.secret.dir().to_path_buf(), pod.app.addr());
    let b_addr = format!("127.0.0.1:{}", free_port());
    let a = listener_yaml("a", "127.0.0.1:0", &app, "web-app");
    let b = listener_yaml("b", &b_addr, &app, "web-app");
    let text = config_yaml(&secret, &[&a, &b]);
    let sc = pod.start(&text, &["a", "b"]);
    let web_app = pod.web_app();
    let traffic = Traffic::start(&web_app, &sc.wait_listener("a"));
    let mut on_b = web_app
        .connect(&b_addr)
        .expect("kept-alive connection to b");
    assert_eq!(on_b.get("/b/before").map(|r| r.status), Ok(200));
    traffic.assert_flowing(&sc, "start");
    let binds = log_lines(&sc, "listener bound").len();

    sc.signal(Signal::SIGHUP);
    let counted = sc.wait_until(WAIT, || reloads(&sc, "unchanged") == 1.0);
    assert!(counted, "{}\n{}", sc.metrics(), sc.log());
    traffic.assert_flowing(&sc, "SIGHUP");

    pod.write_config(&format!("# owner: team-a\n{text}"));
    let counted = sc.wait_until(WAIT, || reloads(&sc, "unchanged") == 2.0);
    assert!(counted, "{}\n{}", sc.metrics(), sc.log());
    pod.configmap.resync();
    std::thread::sleep(A_FEW_POLLS);
    traffic.assert_flowing(&sc, "a comment-only swap");

    assert_eq!(on_b.get("/b/after").map(|r| r.status), Ok(200));
    let failures = traffic.finish();
    assert!(failures.is_empty(), "{failures:#?}\n{}", sc.log());
    assert_eq!(reload_counts(&sc), (0.0, 0.0, 2.0), "{}", sc.metrics());
    assert_eq!(
        log_lines(&sc, "listener bound").len(),
        binds,
        "nothing is bound again\n{}",
        sc.log()
    );
    let config = config_status(&sc);
    assert_eq!(config["generation"], 1, "{config:#}");
    assert!(config["last_error"].is_null(), "{config:#}");
}

/// The setup of the taken-port tests: `a` under traffic, `b` on its own port, and a port held
/// by someone else (the returned listener) that the next file moves `b` to.
fn moved_to_a_taken_port(pod: &mut Pod) -> (Sidecar, Traffic, String, String, TcpListener) {
    let (secret, app) = (pod.secret.dir().to_path_buf(), pod.app.addr());
    let a = listener_yaml("a", "127.0.0.1:0", &app, "web-app");
    let b_addr = format!("127.0.0.1:{}", free_port());
    let sc = pod.start(
        &config_yaml(
            &secret,
            &[&a, &listener_yaml("b", &b_addr, &app, "web-app")],
        ),
        &["a", "b"],
    );
    let traffic = Traffic::start(&pod.web_app(), &sc.wait_listener("a"));
    wait_answer(&sc, &pod.web_app(), &b_addr, "/b/before", 200);
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let taken_addr = taken.local_addr().expect("local addr").to_string();
    pod.write_config(&config_yaml(
        &secret,
        &[&a, &listener_yaml("b", &taken_addr, &app, "web-app")],
    ));
    (sc, traffic, b_addr, taken_addr, taken)
}

/// What the process must do whatever else happens when a listener cannot bind its new
/// address: keep running, keep serving the other listeners, and say why in the log.
#[test]
fn a_listener_moved_to_a_taken_port_does_not_stop_the_others() {
    let mut pod = Pod::new();
    let (mut sc, traffic, _b_addr, taken_addr, _taken) = moved_to_a_taken_port(&mut pod);
    let mut logged = Vec::new();
    let reported = sc.wait_until(WAIT, || {
        logged = sc
            .log()
            .lines()
            .filter(|l| l.contains(&taken_addr) && l.contains("\"ERROR\""))
            .map(str::to_string)
            .collect();
        !logged.is_empty()
    });
    assert!(reported, "no error naming {taken_addr}\n{}", sc.log());
    std::thread::sleep(A_FEW_POLLS);
    assert!(sc.running(), "{}", sc.log());
    assert!(sc.healthy());
    traffic.assert_flowing(&sc, "the failed move");
    let failures = traffic.finish();
    assert!(failures.is_empty(), "{failures:#?}\n{}", sc.log());
    assert_eq!(bound(&sc, "a"), 1, "{}", sc.log());
}

/// A listener moved to a port someone else holds: the new file cannot be applied, so it is
/// refused like any other broken file (failure counted, `config.last_error` names the address)
/// and `b` keeps serving where it was. Once the port is free, SIGHUP applies the file.
#[test]
fn a_listener_moved_to_a_taken_port_is_refused_and_keeps_serving() {
    let mut pod = Pod::new();
    let (sc, traffic, b_addr, taken_addr, taken) = moved_to_a_taken_port(&mut pod);
    let refused = sc.wait_until(WAIT, || {
        reloads(&sc, "failure") == 1.0 || reloads(&sc, "success") == 1.0
    });
    assert!(refused, "{}", sc.log());
    let config = config_status(&sc);
    assert_eq!(
        reload_counts(&sc),
        (0.0, 1.0, 0.0),
        "the change is refused\n{config:#}\n{}",
        sc.log()
    );
    assert_eq!(config["generation"], 1, "{config:#}");
    let message = config["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&taken_addr), "{config:#}");
    assert_eq!(sc.listener("b").as_deref(), Some(b_addr.as_str()));
    wait_answer(&sc, &pod.web_app(), &b_addr, "/b/still-here", 200);
    assert!(status_listeners(&sc).contains(&("b".into(), b_addr.clone())));
    traffic.assert_flowing(&sc, "the refused move");

    drop(taken);
    sc.signal(Signal::SIGHUP);
    wait_generation(&sc, 2);
    assert_eq!(sc.listener("b").as_deref(), Some(taken_addr.as_str()));
    wait_answer(&sc, &pod.web_app(), &taken_addr, "/b/moved", 200);
    assert!(config_status(&sc)["last_error"].is_null());
    let failures = traffic.finish();
    assert!(failures.is_empty(), "{failures:#?}\n{}", sc.log());
}

/// The set's `cert-dir` is pointed at another Secret: the set loads it, `/status` shows its
/// serial and new handshakes on the set's listener get its certificate, while the listener
/// itself did not change: it is not bound again and its open connections stay. The set's watch
/// action runs for the new credentials, as for a renewal.
#[test]
fn a_set_pointed_at_another_secret_serves_its_certificate() {
    let mut pod = Pod::new();
    let (secret, app) = (pod.secret.dir().to_path_buf(), pod.app.addr());
    let a = listener_yaml("a", "127.0.0.1:0", &app, "web-app");
    let exec = ExecCounter::new();
    let program: Vec<String> = exec.args().into_iter().skip(1).collect();
    let watch = format!(
        "watch:\n  - credentials: id\n    exec: {}\n",
        serde_json::to_string(&program).unwrap()
    );
    let sc = pod.start(&config_yaml(&secret, &[&a, &watch]), &["a"]);
    assert_eq!(sc.set_named("id")["serial"], pod.server.serial_hex.as_str());
    let a_addr = sc.wait_listener("a");
    let traffic = Traffic::start(&pod.web_app(), &a_addr);

    let other = pod.pki.server();
    let mut other_secret = KubeletVolume::new(pod.tmp.path().join("other-secret"));
    other_secret.write(&tls_files(&other, &pod.pki.root.cert_pem));
    pod.write_config(&config_yaml(other_secret.dir(), &[&a, &watch]));
    wait_generation(&sc, 2);
    let moved = sc.wait_until(WAIT, || {
        sc.set_named("id")["serial"] == other.serial_hex.as_str()
    });
    assert!(moved, "{:#}\n{}", sc.set_named("id"), sc.log());
    let web_app = pod.web_app();
    let mut served = String::new();
    let serves = sc.wait_until(WAIT, || {
        served = match web_app.connect(&sc.wait_listener("a")) {
            Ok(conn) => conn.peer.serial_hex,
            Err(e) => e,
        };
        served == other.serial_hex
    });
    assert!(
        serves,
        "a serves {served}, not {}\n{}",
        other.serial_hex,
        sc.log()
    );
    wait_answer(&sc, &web_app, &sc.wait_listener("a"), "/a/other", 200);
    let config = config_status(&sc);
    assert!(config["last_error"].is_null(), "{config:#}");
    assert_eq!(reload_counts(&sc), (1.0, 0.0, 0.0), "{}", sc.metrics());
    assert_eq!(sc.wait_listener("a"), a_addr);
    assert_eq!(bound(&sc, "a"), 1, "{}", sc.log());
    traffic.assert_flowing(&sc, "the set change");
    let failures = traffic.finish();
    assert!(failures.is_empty(), "{failures:#?}\n{}", sc.log());
    let ran = wait_until(WAIT, || exec.count() == 1);
    assert!(ran, "exec runs: {:?}\n{}", exec.lines(), sc.log());
    assert_eq!(exec.shas(), std::slice::from_ref(&other.sha256_hex));
    assert!(
        sc.wait_until(WAIT, || sc.ready()),
        "{}",
        sc.get("/readyz").1
    );

    // The old Secret is no longer followed: a renewal there changes nothing.
    let renewed = pod.pki.server();
    pod.secret
        .write(&tls_files(&renewed, &pod.pki.root.cert_pem));
    std::thread::sleep(A_FEW_POLLS);
    assert_eq!(sc.set_named("id")["serial"], other.serial_hex.as_str());
}

/// The set's `cert-dir` is pointed at a directory without credentials (a typo, a Secret not
/// mounted): the running set has good credentials, so the change is refused like any other
/// broken file and `a` keeps serving them (a bad update never replaces good credentials).
#[test]
fn a_set_pointed_at_a_directory_without_credentials_is_refused() {
    let mut pod = Pod::new();
    let (secret, app) = (pod.secret.dir().to_path_buf(), pod.app.addr());
    let a = listener_yaml("a", "127.0.0.1:0", &app, "web-app");
    let sc = pod.start(&config_yaml(&secret, &[&a]), &["a"]);
    let a_addr = sc.wait_listener("a");
    let traffic = Traffic::start(&pod.web_app(), &a_addr);

    let empty = pod.tmp.path().join("not-mounted");
    pod.write_config(&config_yaml(&empty, &[&a]));
    let done = sc.wait_until(WAIT, || {
        reloads(&sc, "failure") + reloads(&sc, "success") >= 1.0
    });
    assert!(done, "{}", sc.log());
    let config = config_status(&sc);
    let (success, failure, unchanged) = reload_counts(&sc);
    assert!(
        success == 0.0 && failure >= 1.0 && unchanged == 0.0,
        "the change is refused (and tried again at each poll while the files are missing)\n\
         {config:#}\n{}",
        sc.log()
    );
    let message = config["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&empty.display().to_string()), "{config:#}");
    assert_eq!(config["generation"], 1, "{config:#}");
    assert_eq!(sc.set_named("id")["serial"], pod.server.serial_hex.as_str());
    assert!(sc.ready(), "{}", sc.get("/readyz").1);
    traffic.assert_flowing(&sc, "the refused set change");

    // The Secret is mounted there at last: the same file is tried again and applies, without
    // an edit or a SIGHUP.
    let mounted = pod.pki.server();
    KubeletVolume::new(&empty).write(&tls_files(&mounted, &pod.pki.root.cert_pem));
    let applied = sc.wait_until(WAIT, || {
        sc.set_named("id")["serial"] == mounted.serial_hex.as_str()
    });
    assert!(applied, "{}", sc.log());
    let config = config_status(&sc);
    assert_eq!(config["generation"], 2, "{config:#}");
    assert!(config["last_error"].is_null(), "{config:#}");
    traffic.assert_flowing(&sc, "the set change applied");
    let failures = traffic.finish();
    assert!(failures.is_empty(), "{failures:#?}\n{}", sc.log());
}

/// A change the running set cannot take (its new `cert-dir` has no credentials, then bad ones)
/// is tried again at each poll, but each refusal is reported once: one `configuration refused`
/// line and `result="failure"` per text and error, one `waiting for credentials` line, the bad
/// credentials counted once in the set's `reloads_total{result="failure"}`.
#[test]
fn a_set_change_retried_at_each_poll_is_refused_once() {
    let mut pod = Pod::new();
    let (secret, app) = (pod.secret.dir().to_path_buf(), pod.app.addr());
    let a = listener_yaml("a", "127.0.0.1:0", &app, "web-app");
    let sc = pod.start(&config_yaml(&secret, &[&a]), &["a"]);
    let set_failures =
        |sc: &Sidecar| sc.counter(r#"mtls_sidecar_reloads_total{set="id",result="failure"}"#);

    let empty = pod.tmp.path().join("not-mounted");
    pod.write_config(&config_yaml(&empty, &[&a]));
    let refused = sc.wait_until(WAIT, || reloads(&sc, "failure") >= 1.0);
    assert!(refused, "{}", sc.log());
    let at = config_status(&sc)["last_error"]["at"].clone();
    assert!(at.is_string(), "{:#}", config_status(&sc));
    std::thread::sleep(A_FEW_POLLS);
    assert_eq!(reload_counts(&sc), (0.0, 1.0, 0.0), "{}", sc.metrics());
    assert_eq!(refusals(&sc).len(), 1, "{:#?}", refusals(&sc));
    let waiting = log_lines(&sc, "waiting for credentials to appear");
    assert_eq!(waiting.len(), 1, "{waiting:#?}");
    assert_eq!(config_status(&sc)["last_error"]["at"], at);

    // Another directory, holding a key that does not match the certificate.
    let mut bad = KubeletVolume::new(pod.tmp.path().join("bad"));
    let mut files = tls_files(&pod.pki.server(), &pod.pki.root.cert_pem);
    files[1].1 = pod.pki.server().key_pkcs8_pem.into_bytes();
    bad.write(&files);
    pod.write_config(&config_yaml(bad.dir(), &[&a]));
    let refused = sc.wait_until(WAIT, || reloads(&sc, "failure") >= 2.0);
    assert!(refused, "{}", sc.log());
    std::thread::sleep(A_FEW_POLLS);
    assert_eq!(reload_counts(&sc), (0.0, 2.0, 0.0), "{}", sc.metrics());
    let logged = refusals(&sc);
    assert_eq!(logged.len(), 2, "{logged:#?}");
    assert!(logged[1].contains("key"), "{}", logged[1]);
    assert_eq!(set_failures(&sc), 1.0, "{}", sc.metrics());
    assert_eq!(sc.set_named("id")["serial"], pod.server.serial_hex.as_str());

    // Fixed in place: the same text is tried again and applies.
    let mounted = pod.pki.server();
    bad.write(&tls_files(&mounted, &pod.pki.root.cert_pem));
    wait_generation(&sc, 2);
    let served = sc.wait_until(WAIT, || {
        sc.set_named("id")["serial"] == mounted.serial_hex.as_str()
    });
    assert!(served, "{}", sc.log());
    assert!(config_status(&sc)["last_error"].is_null());
    assert_eq!(reload_counts(&sc), (1.0, 2.0, 0.0), "{}", sc.metrics());
}
