//! A rolling update of each example that serves callers (terminate-legacy-app, bidirectional,
//! nginx-reload, nginx-reload-staged) under traffic, replayed as kubelet and the endpoints
//! controller play it, with the manifest's preStop hook and `terminationGracePeriodSeconds`
//! (README "Drain for pod rollouts"). (outbound-client serves nobody: kubelet stops its app
//! before its native sidecar, so the app's calls always have the sidecar.)
//!
//! - The Service: the pods it selects, and which of them are its endpoints now. An endpoints
//!   controller (a thread) reads every pod's readinessProbe (the manifest's path and port: the
//!   sidecar's `/readyz`) every `ENDPOINTS_PERIOD`, each time on a new connection as kubelet
//!   does; a pod is an endpoint while it answers 200. (In a cluster a pod being deleted also
//!   leaves at once, as terminating, but the endpoints learn of it seconds later: the
//!   readiness the sidecar controls stands for both here. The app's own readinessProbe is not
//!   run: it fails only `periodSeconds` x `failureThreshold` (10 s) after the app stopped,
//!   later than anything here.)
//! - Clients, as web-app (mTLS with its certificate): threads that open a connection per request
//!   and threads that keep theirs alive. Each new connection goes to an endpoint of the moment,
//!   round robin, as kube-proxy picks one per connection; a kept-alive one stays on its pod until
//!   the server closes it (conntrack), also once that pod left the endpoints. A response with
//!   `Connection: close` is served, and the next request opens a new connection; so does one
//!   that finds its reused connection closed by the server before any answer (RFC 9112 9.3.1:
//!   a client may retry an idempotent request then). Anything else (an error, a status other
//!   than 200, another body than the app's for web-app) is a failed request. bidirectional's
//!   clients alternate between its app (`/`) and, through its app and the sidecar's client
//!   listener, the API (`/api/`: a terminate-legacy-app pod that is not rolled), which must see the
//!   service's identity: both listeners of the old pod serve until its app has exited.
//! - The rollout, as a Deployment of 2 replicas rolls (maxSurge 1, maxUnavailable 0): the new pod
//!   starts and becomes an endpoint, and only then is the old one terminated as kubelet does:
//!   the app container's preStop hook (its httpGet, on the admin endpoint, waited for), the
//!   image's stop signal to the app (nginx's: SIGQUIT, a graceful quit) and its exit, then
//!   SIGTERM to the native sidecar and its exit, all within `terminationGracePeriodSeconds` from
//!   the start of the hook.
//!
//! The control terminates the old pod without the hook: the app stops while the pod is still an
//! endpoint (the sidecar's readiness does not follow the app: the example sets no
//! `--ready-upstream`), and requests routed there meet the stopped app.

use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::bidirectional::{is_app_answer, Bidirectional};
use super::manifests::{certificate_spec, port_of};
use super::nginx_reload::{is_nginx_answer, NginxPod};
use super::pod::{runs_nginx_image, Pod};
use super::terminate_legacy_app::{is_legacy_answer, LegacyApp};
use super::{assert_all_gone, processes, tools, WAIT, WEB_APP_DN};
use crate::support::failures::Failures;
use crate::support::http1::PlainConn;
use crate::support::pki::{Leaf, TestPki};
use crate::support::procs::{ProcId, Reaped};
use crate::support::sidecar::{wait_until, Sidecar};
use crate::support::tls_client::{Response, TlsClient, TlsConn};

/// How often the endpoints controller here reads each pod's readiness (kubelet probes every
/// `periodSeconds`, 5 s in the manifest: faster here, so the test waits less).
const ENDPOINTS_PERIOD: Duration = Duration::from_millis(100);

/// Client threads of each kind.
const NEW_CONNECTION_CLIENTS: usize = 2;
const KEPT_ALIVE_CLIENTS: usize = 2;

/// Between two requests of one client: steady traffic that leaves the machine some CPU.
const PAUSE: Duration = Duration::from_millis(5);

/// `read_response`'s error for a connection that ended before any byte of a response.
const CLOSED_BEFORE_A_RESPONSE: &str = "connection closed before a response";

/// Where the pod's kubelet sends httpGet `handler` (a probe or a lifecycle hook) here: its path
/// on our sidecar's admin endpoint, after checking that it names the port the manifest's
/// `--admin-listen` binds, over plain HTTP, to the pod IP.
fn admin_http_get(pod: &Pod, handler: &Value, what: &str) -> String {
    let get = handler
        .get("httpGet")
        .unwrap_or_else(|| panic!("{}: {what} is no httpGet: {handler}", pod.ex.name));
    let admin = port_of(&pod.admin_listen(pod.ex.sidecar()));
    let port = pod.container_port(&get["port"]);
    assert_eq!(
        port, admin,
        "{}: {what} GETs port {port}, but the admin endpoint binds {admin}",
        pod.ex.name
    );
    assert!(
        get["scheme"].is_null() || get["scheme"] == "HTTP",
        "{}: {what}: the admin endpoint speaks plain HTTP",
        pod.ex.name
    );
    assert!(
        get["host"].is_null(),
        "{}: {what}: a host other than the pod IP is not emulated",
        pod.ex.name
    );
    get["path"].as_str().unwrap_or("/").to_string()
}

/// The pod's `terminationGracePeriodSeconds` (Kubernetes' default: 30).
fn grace_period(pod: &Pod) -> Duration {
    Duration::from_secs(
        pod.ex.pod()["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30),
    )
}

/// The app's error log (nginx's stderr), for failure messages: its access log holds every
/// request of the load, and the sidecar prints its own log when a test fails (`Sidecar`'s Drop).
fn app_log(replica: &Replica) -> String {
    let path = replica.pod.log_path(replica.pod.ex.app(), "stderr");
    let log = std::fs::read_to_string(path).unwrap_or_default();
    format!("--- app stderr ---\n{log}")
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

// === The pods ===

/// The examples rolled here.
#[derive(Clone, Copy, Debug)]
enum Rolled {
    /// terminate-legacy-app: web-app's requests reach the legacy app.
    LegacyApp,
    /// bidirectional: web-app's requests reach its app, and through its app and the sidecar's
    /// client listener the API (`/api/`).
    Bidirectional,
    /// nginx-reload and nginx-reload-staged (the example's name): nginx terminates mTLS itself;
    /// the `watch` sidecar's readiness is the pod's.
    NginxReload(&'static str),
}

impl Rolled {
    /// Start a replica; bidirectional's calls go to `api`.
    fn start(self, pki: &TestPki, api: Option<&LegacyApp>) -> Replica {
        match self {
            Rolled::LegacyApp => {
                let LegacyApp { app, server, pod } = LegacyApp::start(pki);
                Replica {
                    app: Some(app),
                    sidecar: server,
                    pod,
                }
            }
            Rolled::Bidirectional => {
                let api = api.expect("bidirectional calls the API");
                let Bidirectional {
                    app, sidecar, pod, ..
                } = Bidirectional::start(pki, &api.pod);
                Replica {
                    app: Some(app),
                    sidecar,
                    pod,
                }
            }
            Rolled::NginxReload(name) => {
                let NginxPod { sidecar, pod, .. } = NginxPod::start(name, pki);
                Replica {
                    app: None,
                    sidecar,
                    pod,
                }
            }
        }
    }

    /// The pod's volume with the certificate its server listener serves.
    fn served_volume(self) -> &'static str {
        match self {
            Rolled::LegacyApp | Rolled::NginxReload(_) => "server-tls",
            Rolled::Bidirectional => "service-tls",
        }
    }

    /// Where the `n`th request of a client goes: its path's prefix.
    fn prefix(self, n: usize) -> &'static str {
        match self {
            Rolled::Bidirectional if n % 2 == 1 => "/api",
            _ => "",
        }
    }
}

/// One replica of the Deployment, running. Fields drop in order: the processes stop before the
/// pod's files go.
struct Replica {
    /// The app container's nginx master, started here (None: started by the sidecar's PID
    /// namespace wrapper, nginx-reload's).
    app: Option<Reaped>,
    /// The native sidecar.
    sidecar: Sidecar,
    pod: Pod,
}

impl Replica {
    /// The app container's nginx master: its PID.
    fn app_pid(&self) -> u32 {
        match &self.app {
            Some(app) => app.pid(),
            // In the shared PID namespace nginx's master is the sidecar's child.
            None => processes(&[self.sidecar.pid()])
                .into_iter()
                .find(|p| p.comm == "nginx" && parent(p.pid) == Some(self.sidecar.pid()))
                .map(|p| p.pid)
                .unwrap_or_else(|| panic!("no nginx master under the sidecar\n{}", app_log(self))),
        }
    }

    /// Its processes (nginx's workers included).
    fn processes(&self) -> Vec<ProcId> {
        processes(&[self.sidecar.pid(), self.app_pid()])
    }
}

/// The parent of process `pid`, if it exists.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// True if process `pid` exited (gone, or a zombie its parent has not reaped yet).
fn exited(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    state == Some("Z")
}

// === The Service ===

/// One pod as the Service sees it.
struct Backend {
    /// "old" or "new", for messages.
    name: &'static str,
    /// Its Service port 443, here (the sidecar's listener).
    addr: String,
    /// The serial of the leaf its sidecar serves: which pod a connection reached.
    serial: String,
    /// Its sidecar's admin endpoint (`host:port`), and the readinessProbe's path there.
    admin: String,
    readiness_path: String,
    /// An endpoint now.
    ready: AtomicBool,
    /// When it first stopped being an endpoint, and the probe's answer then (None: no answer).
    left: OnceLock<(Instant, Option<(u16, String)>)>,
    /// Requests it answered as it should.
    served: AtomicUsize,
    rolled: Rolled,
    /// The certificate it serves, and presents as a client (bidirectional).
    leaf: Leaf,
}

impl Backend {
    fn of(name: &'static str, rolled: Rolled, replica: &Replica) -> Arc<Backend> {
        let pod = &replica.pod;
        let leaf = pod.leaf(rolled.served_volume()).clone();
        let probe = &pod.ex.sidecar()["readinessProbe"];
        let path = admin_http_get(pod, probe, "the sidecar's readinessProbe");
        Arc::new(Backend {
            name,
            addr: format!("127.0.0.1:{}", pod.service().port(443)),
            serial: leaf.serial_hex.clone(),
            admin: replica.sidecar.admin_addr().to_string(),
            readiness_path: path,
            ready: AtomicBool::new(false),
            left: OnceLock::new(),
            served: AtomicUsize::new(0),
            rolled,
            leaf,
        })
    }

    /// True if `body` is this pod's answer to web-app's request for `path`: from its app, or
    /// (bidirectional, `/api/`) from the API, which saw this pod's client certificate.
    fn answered(&self, path: &str, body: &str, web_app: &Leaf) -> bool {
        match self.rolled {
            Rolled::LegacyApp => is_legacy_answer(body, WEB_APP_DN, web_app),
            Rolled::Bidirectional if path.starts_with("/api/") => {
                let dn = format!("CN={}", certificate_spec("service-bidirectional-tls").cn);
                is_legacy_answer(body, &dn, &self.leaf)
            }
            Rolled::Bidirectional => is_app_answer(body, WEB_APP_DN),
            Rolled::NginxReload(_) => is_nginx_answer(body),
        }
    }

    /// One readiness probe, on a new connection: the answer, None if there is none.
    fn probe(&self) -> Option<(u16, String)> {
        let close = [("Connection", "close")];
        let resp = PlainConn::connect(&self.admin, &self.admin)
            .and_then(|mut c| c.request("GET", &self.readiness_path, &close, b""))
            .ok()?;
        Some((resp.status, resp.body_text()))
    }

    fn served(&self) -> usize {
        self.served.load(SeqCst)
    }
}

/// The Service's pods, the outcome of every request, and the stop flag of the threads.
#[derive(Default)]
struct Traffic {
    backends: Mutex<Vec<Arc<Backend>>>,
    /// Round robin over the endpoints.
    next: AtomicUsize,
    stop: AtomicBool,
    failures: Failures,
    /// Kept-alive connections the server closed (with `Connection: close`, or before any
    /// answer to a request on a reused connection).
    reconnects: AtomicUsize,
}

impl Traffic {
    /// The Service selects `backend` (an endpoint once its readiness says so).
    fn select(&self, backend: &Arc<Backend>) {
        self.backends().push(backend.clone());
    }

    fn backends(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Backend>>> {
        self.backends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// kube-proxy: an endpoint for a new connection, if there is one.
    fn route(&self) -> Option<Arc<Backend>> {
        let ready: Vec<Arc<Backend>> = self
            .backends()
            .iter()
            .filter(|b| b.ready.load(SeqCst))
            .cloned()
            .collect();
        (!ready.is_empty()).then(|| ready[self.next.fetch_add(1, SeqCst) % ready.len()].clone())
    }

    fn stopped(&self) -> bool {
        self.stop.load(SeqCst)
    }

    fn fail(&self, what: String) {
        self.failures.push(what);
    }

    fn failures(&self) -> Vec<String> {
        self.failures.list()
    }

    /// Count `resp` from `backend` to the request for `path` as served, or as a failure.
    fn record(&self, backend: &Backend, what: &str, path: &str, resp: &Response, web_app: &Leaf) {
        let body = resp.body_text();
        if resp.status == 200 && backend.answered(path, &body, web_app) {
            backend.served.fetch_add(1, SeqCst);
        } else {
            self.fail(format!(
                "{what} to the {} pod: HTTP {}: {body}",
                backend.name, resp.status
            ));
        }
    }

    /// A summary for messages.
    fn summary(&self) -> String {
        let served: Vec<String> = self
            .backends()
            .iter()
            .map(|b| format!("{} pod {}", b.name, b.served()))
            .collect();
        format!(
            "served: {}; reconnects: {}",
            served.join(", "),
            self.reconnects.load(SeqCst)
        )
    }
}

/// Connect to `backend`, checking that the connection reached that pod (its leaf).
fn connect(client: &TlsClient, backend: &Backend) -> Result<TlsConn, String> {
    let conn = client.connect(&backend.addr)?;
    if conn.peer.serial_hex != backend.serial {
        return Err(format!(
            "connected to serial {} for the {} pod ({})",
            conn.peer.serial_hex, backend.name, backend.serial
        ));
    }
    Ok(conn)
}

// === Threads ===

/// The endpoints controller and the clients, stopped and joined on drop (also when the test
/// fails).
struct Running {
    traffic: Arc<Traffic>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Start the endpoints controller; the clients come later (`clients`).
    fn start(traffic: &Arc<Traffic>) -> Running {
        Running {
            traffic: traffic.clone(),
            threads: vec![endpoints_controller(traffic.clone())],
        }
    }

    /// Start the clients.
    fn clients(&mut self, client: &TlsClient, web_app: &Leaf) {
        for id in 0..NEW_CONNECTION_CLIENTS {
            let t = new_connections(&self.traffic, client, web_app, id);
            self.threads.push(t);
        }
        for id in 0..KEPT_ALIVE_CLIENTS {
            let t = kept_alive(&self.traffic, client, web_app, id);
            self.threads.push(t);
        }
    }

    /// Stop every thread; one that panicked fails the test.
    fn stop(mut self) {
        self.traffic.stop.store(true, SeqCst);
        for t in self.threads.drain(..) {
            t.join()
                .expect("a client or the endpoints controller panicked");
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

/// Every `ENDPOINTS_PERIOD`, every selected pod is an endpoint while its readiness probe answers
/// 200; the first time one stops being one is recorded.
fn endpoints_controller(traffic: Arc<Traffic>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        while !traffic.stopped() {
            let backends: Vec<Arc<Backend>> = traffic.backends().clone();
            for b in backends {
                let answer = b.probe();
                let ready = matches!(answer, Some((200, _)));
                if b.ready.swap(ready, SeqCst) && !ready {
                    b.left.get_or_init(|| (Instant::now(), answer));
                }
            }
            std::thread::sleep(ENDPOINTS_PERIOD);
        }
    })
}

/// A client that opens a new connection, to an endpoint of the moment, for every request.
fn new_connections(
    traffic: &Arc<Traffic>,
    client: &TlsClient,
    web_app: &Leaf,
    id: usize,
) -> JoinHandle<()> {
    let (traffic, client, web_app) = (traffic.clone(), client.clone(), web_app.clone());
    std::thread::spawn(move || {
        let mut n = 0;
        while !traffic.stopped() {
            let what = format!("new-connection client {id}, request {n}");
            match traffic.route() {
                None => traffic.fail(format!("{what}: the Service has no endpoint")),
                Some(b) => {
                    let path = format!("{}/new/{id}/{n}", b.rolled.prefix(n));
                    match connect(&client, &b).and_then(|mut c| c.get(&path)) {
                        Ok(resp) => traffic.record(&b, &what, &path, &resp, &web_app),
                        Err(e) => traffic.fail(format!("{what} to the {} pod: {e}", b.name)),
                    }
                }
            }
            n += 1;
            std::thread::sleep(PAUSE);
        }
    })
}

/// A client that keeps its connection (to the endpoint it got when it opened it) until the
/// server closes it, then opens the next one.
fn kept_alive(
    traffic: &Arc<Traffic>,
    client: &TlsClient,
    web_app: &Leaf,
    id: usize,
) -> JoinHandle<()> {
    let (traffic, client, web_app) = (traffic.clone(), client.clone(), web_app.clone());
    std::thread::spawn(move || {
        // The pod, the connection, and the requests it carried.
        let mut open: Option<(Arc<Backend>, TlsConn, usize)> = None;
        let mut n = 0;
        while !traffic.stopped() {
            let what = format!("kept-alive client {id}, request {n}");
            n += 1;
            if open.is_none() {
                match traffic.route() {
                    Some(b) => match connect(&client, &b) {
                        Ok(conn) => open = Some((b, conn, 0)),
                        Err(e) => traffic.fail(format!("{what} to the {} pod: {e}", b.name)),
                    },
                    None => traffic.fail(format!("{what}: the Service has no endpoint")),
                }
            }
            let Some((b, conn, used)) = open.as_mut() else {
                std::thread::sleep(PAUSE);
                continue;
            };
            let path = format!("{}/keep/{id}/{n}", b.rolled.prefix(n));
            let keep = match conn.get(&path) {
                Ok(resp) => {
                    traffic.record(b, &what, &path, &resp, &web_app);
                    *used += 1;
                    if resp.closes() {
                        traffic.reconnects.fetch_add(1, SeqCst);
                    }
                    !resp.closes()
                }
                Err(e) if *used > 0 && e.ends_with(CLOSED_BEFORE_A_RESPONSE) => {
                    traffic.reconnects.fetch_add(1, SeqCst);
                    false
                }
                Err(e) => {
                    traffic.fail(format!(
                        "{what} to the {} pod (request {} on its connection): {e}",
                        b.name,
                        *used + 1
                    ));
                    false
                }
            };
            if !keep {
                open = None;
            }
            std::thread::sleep(PAUSE);
        }
    })
}

// === kubelet ===

/// The app container's preStop hook, as kubelet runs it: its httpGet, waited for until it is
/// answered (within the grace period): the answer.
fn pre_stop_hook(replica: &Replica, deadline: Instant) -> (u16, String) {
    let pod = &replica.pod;
    let hook = &pod.ex.app()["lifecycle"]["preStop"];
    let path = admin_http_get(pod, hook, "the app's preStop hook");
    let url = format!("http://{}{path}", replica.sidecar.admin_addr());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(remaining(deadline)))
        .build()
        .into();
    match agent.get(&url).call() {
        Ok(mut resp) => (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => panic!(
            "preStop hook GET {url}: {e} (within the grace period)\n{}",
            app_log(replica)
        ),
    }
}

/// The app container's stop signal to its process, and its exit, before `deadline`. The nginx
/// images' STOPSIGNAL is SIGQUIT (a graceful quit: requests in flight finish); kubelet sends
/// the image's.
fn stop_app(replica: &mut Replica, deadline: Instant) {
    let app = replica.pod.ex.app();
    let signal = if runs_nginx_image(app) {
        Signal::SIGQUIT
    } else {
        Signal::SIGTERM
    };
    let pid = replica.app_pid();
    kill(Pid::from_raw(pid as i32), signal).expect("signal the app");
    let gone = wait_until(remaining(deadline), || match replica.app.as_mut() {
        Some(app) => matches!(app.0.try_wait(), Ok(Some(_))),
        None => exited(pid),
    });
    assert!(
        gone,
        "nginx did not exit within the grace period (kubelet would SIGKILL it)\n{}",
        app_log(replica)
    );
}

/// SIGTERM to the native sidecar once the app has exited, and its exit status, before
/// `deadline`.
fn stop_sidecar(replica: &mut Replica, deadline: Instant) -> ExitStatus {
    replica.sidecar.signal(Signal::SIGTERM);
    let status = replica.sidecar.wait_exit(remaining(deadline));
    status.unwrap_or_else(|| {
        panic!(
            "the sidecar did not exit within the grace period (kubelet would SIGKILL it)\n{}",
            app_log(replica)
        )
    })
}

/// Drop `old`, a pod kubelet terminated: its files go, and nothing signals its app's PID again
/// (`Reaped` would on drop; the process was reaped, another may have the PID by now).
fn gone(old: Replica) {
    let Replica { app, sidecar, pod } = old;
    std::mem::forget(app);
    drop(sidecar);
    drop(pod);
}

// === The rollout ===

/// Up to the old pod's termination: the old pod serving the clients, then the new one started
/// and an endpoint too, both having served requests.
struct Rollout {
    traffic: Arc<Traffic>,
    old_backend: Arc<Backend>,
    new_backend: Arc<Backend>,
    /// Fields drop in order: the threads stop before the pods do, the API last.
    running: Running,
    new: Replica,
    old: Replica,
    api: Option<LegacyApp>,
}

impl Rollout {
    fn start(pki: &TestPki, rolled: Rolled) -> Rollout {
        let web_app = pki.issue(&certificate_spec("web-app-client-tls"));
        let api = matches!(rolled, Rolled::Bidirectional).then(|| LegacyApp::start(pki));
        let old = rolled.start(pki, api.as_ref());
        let client = TlsClient::builder(&old.pod.ca_pem)
            .leaf(&web_app)
            .server_name(&old.pod.service().host)
            .build();
        let traffic = Arc::new(Traffic::default());
        let old_backend = Backend::of("old", rolled, &old);
        traffic.select(&old_backend);
        let mut running = Running::start(&traffic);
        let endpoint = wait_until(WAIT, || old_backend.ready.load(SeqCst));
        assert!(
            endpoint,
            "{rolled:?}: the old pod never became an endpoint\n{}",
            app_log(&old)
        );
        running.clients(&client, &web_app);
        let serving = wait_until(WAIT, || old_backend.served() > 0);
        assert!(
            serving,
            "{rolled:?}: the old pod served nothing ({}), failures: {:?}\n{}",
            traffic.summary(),
            traffic.failures(),
            app_log(&old)
        );
        let new = rolled.start(pki, api.as_ref());
        let new_backend = Backend::of("new", rolled, &new);
        traffic.select(&new_backend);
        let serving = wait_until(WAIT, || new_backend.served() > 0);
        assert!(
            serving,
            "{rolled:?}: the new pod served nothing ({}), failures: {:?}\n{}",
            traffic.summary(),
            traffic.failures(),
            app_log(&new)
        );
        Rollout {
            traffic,
            old_backend,
            new_backend,
            running,
            new,
            old,
            api,
        }
    }

    /// For failure messages: the traffic, the apps' error logs, the old sidecar's log (`finish`
    /// drops it before the last assertions; the new one prints its own if the test fails).
    fn context(&self) -> String {
        let api = self.api.as_ref().map(|a| a.context()).unwrap_or_default();
        format!(
            "{:?}: {}\n=== old pod ===\n{}--- sidecar ---\n{}\n=== new pod ===\n{}{api}",
            self.old_backend.rolled,
            self.traffic.summary(),
            app_log(&self.old),
            self.old.sidecar.log(),
            app_log(&self.new)
        )
    }

    /// Let the clients run on until the new pod served `more` requests more.
    fn serve_on(&self, more: usize) {
        let from = self.new_backend.served();
        let served = wait_until(WAIT, || self.new_backend.served() >= from + more);
        assert!(served, "the new pod stopped serving\n{}", self.context());
    }

    /// Stop the clients and the pods (checking nothing of the new one is left): the failures.
    fn finish(self) -> Vec<String> {
        let Rollout {
            traffic,
            running,
            new,
            old,
            api,
            ..
        } = self;
        running.stop();
        gone(old);
        let procs = new.processes();
        drop(new);
        assert_all_gone(&procs);
        drop(api);
        traffic.failures()
    }
}

/// Roll `rolled`'s Deployment as kubelet terminates pods, with the app's preStop hook: no request
/// fails, and the old pod left the endpoints (draining) before the hook returned.
fn rollout_with_the_prestop_hook_fails_no_request(rolled: Rolled) {
    let can_run = match rolled {
        Rolled::NginxReload(_) => NginxPod::can_run(),
        _ => tools(&["nginx"]),
    };
    if !can_run {
        return;
    }
    let pki = TestPki::new();
    let mut rollout = Rollout::start(&pki, rolled);
    let old_procs = rollout.old.processes();

    // kubelet terminates the old pod.
    let deadline = Instant::now() + grace_period(&rollout.old.pod);
    let (code, body) = pre_stop_hook(&rollout.old, deadline);
    let hook_returned = Instant::now();
    stop_app(&mut rollout.old, deadline);
    let exit = stop_sidecar(&mut rollout.old, deadline);
    assert_all_gone(&old_procs);
    rollout.serve_on(20);

    assert_eq!(
        code,
        200,
        "the preStop hook answered {code}: {body}\n{}",
        rollout.context()
    );
    let left = rollout.old_backend.left.get().cloned();
    let drained_first = matches!(
        &left,
        Some((at, Some((503, answer)))) if *at <= hook_returned && answer.contains("draining")
    );
    assert!(
        drained_first,
        "the old pod should have left the endpoints, its /readyz answering 503 (draining), \
         before the preStop hook returned; left: {left:?}, hook: {code} {body}\n{}",
        rollout.context()
    );
    assert!(
        exit.success(),
        "the old sidecar exited with {exit}\n{}",
        rollout.context()
    );
    let context = rollout.context();
    let summary = rollout.traffic.summary();
    let (old_served, new_served) = (rollout.old_backend.served(), rollout.new_backend.served());
    let failures = rollout.finish();
    assert!(
        failures.is_empty(),
        "{} failed requests in the rollout, first: {:#?}\n(A kept-alive connection stays on \
         its pod until the server closes it: if the old pod's sidecar keeps serving kept-alive \
         connections through its drain, their requests meet the stopped app.)\n{context}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(old_served > 0 && new_served > 0, "{context}");
    eprintln!("{rolled:?}: {summary}");
}

#[test]
fn terminate_legacy_app_rollout_with_the_prestop_hook_fails_no_request() {
    rollout_with_the_prestop_hook_fails_no_request(Rolled::LegacyApp);
}

#[test]
fn bidirectional_rollout_with_the_prestop_hook_fails_no_request() {
    rollout_with_the_prestop_hook_fails_no_request(Rolled::Bidirectional);
}

#[test]
fn nginx_reload_rollout_with_the_prestop_hook_fails_no_request() {
    rollout_with_the_prestop_hook_fails_no_request(Rolled::NginxReload("nginx-reload"));
}

#[test]
fn nginx_reload_staged_rollout_with_the_prestop_hook_fails_no_request() {
    rollout_with_the_prestop_hook_fails_no_request(Rolled::NginxReload("nginx-reload-staged"));
}

#[test]
fn rollout_without_the_prestop_hook_sends_requests_to_the_stopped_app() {
    if !tools(&["nginx"]) {
        return;
    }
    let pki = TestPki::new();
    let mut rollout = Rollout::start(&pki, Rolled::LegacyApp);

    // kubelet terminates the old pod as if the manifest had no hook: the app first, while the
    // pod is still an endpoint.
    let deadline = Instant::now() + grace_period(&rollout.old.pod);
    assert!(
        rollout.old_backend.ready.load(SeqCst),
        "{}",
        rollout.context()
    );
    let old_procs = rollout.old.processes();
    stop_app(&mut rollout.old, deadline);
    let failed = wait_until(WAIT, || !rollout.traffic.failures().is_empty());
    let exit = stop_sidecar(&mut rollout.old, deadline);
    assert_all_gone(&old_procs);
    let context = rollout.context();
    let failures = rollout.finish();
    assert!(
        failed && failures.iter().all(|f| f.contains(" to the old pod")),
        "requests routed to the old pod after its app stopped should fail, and only those: \
         {failures:#?}\n{context}"
    );
    assert!(
        exit.success(),
        "the old sidecar exited with {exit}\n{context}"
    );
}
