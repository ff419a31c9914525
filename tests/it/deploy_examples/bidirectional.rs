//! bidirectional: the users' guide's bidirectional service. One certificate (server auth and
//! client auth, Secret service-bidirectional-tls) is the one set of a `run --config` sidecar
//! with two listeners: `server` in front of the plaintext app (nginx), and `client` for the
//! app's calls to the `api` Service of terminate-legacy-app, which runs next to it here.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::manifests::{certificate_spec, Example};
use super::pod::Pod;
use super::terminate_legacy_app::{assert_legacy_answer, LegacyApp};
use super::{
    assert_all_gone, assert_runs_as, client_files, impostor_spec, processes, tools,
    walkthrough_curl, walkthrough_curl_path, WAIT, WEB_APP_DN,
};
use crate::support::cli_clients::{pinned_pubkey, run_bounded, CurlResult};
use crate::support::nginx::served_serial;
use crate::support::pki::{Eku, Leaf, LeafSpec, TestPki};
use crate::support::procs::Reaped;
use crate::support::sidecar::{wait_until, Sidecar};

/// The one listener of `kind` in the sidecar's config file (as written).
fn listener<'a>(config: &'a Value, kind: &str) -> &'a Value {
    let found: Vec<&Value> = config["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["kind"] == kind)
        .collect();
    let [l] = found[..] else {
        panic!("bidirectional: expected one {kind} listener in config.yaml, found {found:?}");
    };
    l
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("bidirectional: no {key} in {v}"))
}

/// The bidirectional pod, running: our `run --config` sidecar and the app (nginx with
/// `service-app.conf`). Fields drop in order: the processes stop before the pod's files go.
pub(super) struct Bidirectional {
    pub(super) app: Reaped,
    pub(super) sidecar: Sidecar,
    pub(super) pod: Pod,
    /// The sidecar's config file as written.
    config: Value,
}

impl Bidirectional {
    /// Start the pod as kubelet does: the native sidecar, then, once its startup probe passed
    /// (credentials valid, both listeners bound), the app; its Service names resolve to `api`.
    pub(super) fn start(pki: &TestPki, api: &Pod) -> Bidirectional {
        let pod = Pod::calling(Example::load("bidirectional"), pki, &[api]);
        let c = pod.ex.sidecar();
        let config = pod
            .sidecar_config(c)
            .expect("bidirectional runs `run --config`");
        let sidecar = pod.start_run(c);
        pod.wait_probe(c, "startupProbe", &sidecar);
        let app = pod.spawn_nginx(pod.ex.app());
        pod.wait_probe(c, "readinessProbe", &sidecar);
        pod.wait_probe(c, "livenessProbe", &sidecar);
        let target = pod
            .addr(field(listener(&config, "server"), "target"))
            .expect("the server listener's target is host:port");
        assert!(
            wait_until(WAIT, || TcpStream::connect(&target).is_ok()),
            "the app does not listen on the server listener's target {target}\n{}",
            pod.logs(pod.ex.app())
        );
        Bidirectional {
            app,
            sidecar,
            pod,
            config,
        }
    }

    fn context(&self, api: &LegacyApp) -> String {
        format!(
            "{}\n--- run sidecar ---\n{}\n{}",
            self.pod.logs(self.pod.ex.app()),
            self.sidecar.log(),
            api.context()
        )
    }

    /// The app's own call to the API, as the app's user: plain HTTP to the client listener.
    fn app_call(&self) -> String {
        let listen = field(listener(&self.config, "client"), "listen");
        let app = self.pod.ex.app();
        let mut argv = self.pod.run_as(app);
        let call = ["curl", "-sS", &format!("http://{listen}/")].map(String::from);
        argv.extend(self.pod.relocate_args(app, &call));
        let ran = run_bounded(
            Command::new(&argv[0]).args(&argv[1..]),
            b"",
            Duration::from_secs(30),
        );
        assert!(ran.success(), "`{}`: {ran:?}", argv.join(" "));
        ran.stdout
    }

    /// The one set of `/status`, after checking it is the only one and the config's.
    fn set(&self) -> Value {
        let sets = self.sidecar.status()["sets"].clone();
        let names: Vec<&str> = sets
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .collect();
        let want: Vec<&str> = self.config["sets"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.keys().map(String::as_str))
            .collect();
        assert_eq!(names, want, "/status sets: {sets}");
        assert_eq!(names, ["service"], "one set for both directions");
        sets[0].clone()
    }

    fn generation(&self) -> u64 {
        self.set()["generation"].as_u64().expect("a generation")
    }

    /// Validated publishes of set `service` so far.
    fn published(&self) -> f64 {
        self.sidecar.metric_sum(
            "mtls_sidecar_reloads_total",
            &[("set", "service"), ("result", "success")],
        )
    }

    /// Stop both processes and check that nothing is left (nginx's workers included).
    fn stop(self) {
        let procs = processes(&[self.sidecar.pid(), self.app.pid()]);
        assert_runs_as(&self.pod, self.pod.ex.app(), &procs, "nginx");
        assert_runs_as(&self.pod, self.pod.ex.sidecar(), &procs, "mtls-sidecar");
        drop(self);
        assert_all_gone(&procs);
    }
}

/// True if `body` is the app's own answer, with the identity (DN `dn`) the server listener
/// passed on.
pub(super) fn is_app_answer(body: &str, dn: &str) -> bool {
    body.starts_with("hello from the service\n")
        && body.lines().any(|l| l == format!("X-Client-DN: {dn}"))
        && body.lines().any(|l| l == "X-Client-Verify: SUCCESS")
}

/// The app's own answer, with the identity the server listener passed on.
fn assert_app_answer(got: &CurlResult, dn: &str, context: &dyn Fn() -> String) {
    assert!(
        got.http_code == 200 && is_app_answer(&got.body, dn),
        "not the app's answer for {dn}: {got:?}\n{}",
        context()
    );
}

#[test]
fn serves_web_app_calls_the_api_and_rotates_both_ways_with_one_validation() {
    if !tools(&["nginx", "curl", "openssl"]) {
        return;
    }
    let pki = TestPki::new();
    let api = LegacyApp::start(&pki);
    let mut service = Bidirectional::start(&pki, &api.pod);
    let svc = service.pod.service();
    let ca = service.pod.ca_pem.clone();
    assert!(service.generation() >= 1, "{}", service.set());
    let listeners: Vec<Value> = service.sidecar.status()["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["name"].clone())
        .collect();
    let names: Vec<Value> = service.config["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["name"].clone())
        .collect();
    assert_eq!(listeners, names, "/status listeners");

    // Inbound: the walkthrough's curl with the guide's client certificate reaches the app, which
    // sees web-app's identity.
    let web_app = pki.issue(&certificate_spec("web-app-client-tls"));
    let web_app_dir = client_files(&service.pod.scratch("web-app"), &web_app, &ca);
    let got = walkthrough_curl(&web_app_dir, &svc, true, &[]);
    assert_app_answer(&got, WEB_APP_DN, &|| service.context(&api));

    // A client certificate of the same CA outside `allow-uri`: 403, the app never sees it. Also
    // one with web-app's CN, O and OU but the identity of another namespace (what a
    // ClusterIssuer would sign for anyone there): the CN admits nobody.
    let outsider = pki.issue(
        &LeafSpec::new()
            .cn("batch-job")
            .subject_o("Example Org")
            .eku(Eku::Client),
    );
    let impostor = pki.issue(&impostor_spec());
    for (name, leaf) in [("outsider", &outsider), ("impostor", &impostor)] {
        let dir = client_files(&service.pod.scratch(name), leaf, &ca);
        let got = walkthrough_curl(&dir, &svc, true, &[]);
        assert_eq!(
            got.http_code,
            403,
            "{name}: {got:?}\n{}",
            service.context(&api)
        );
    }

    // Outbound: the app's call, in plain HTTP to the client listener, reaches the API over mTLS
    // as this service (the API's `--allow-uri`): the same certificate as served inbound.
    let spec = certificate_spec("service-bidirectional-tls");
    let dn = format!("CN={}", spec.cn);
    let first = service.pod.leaf("service-tls").clone();
    let body = service.app_call();
    assert_legacy_answer(&body, &dn, &first, &|| service.context(&api));
    // And both ways in one request: web-app -> server listener -> app -> client listener -> API.
    let got = walkthrough_curl_path(&web_app_dir, &svc, "/api/", true, &[]);
    assert_eq!(got.http_code, 200, "{got:?}\n{}", service.context(&api));
    assert_legacy_answer(&got.body, &dn, &first, &|| service.context(&api));

    // A renewal, as kubelet delivers it: validated once (one generation, one publish), then
    // served inbound and presented outbound.
    let generation = service.generation();
    let published = service.published();
    let second: Leaf = service.pod.renewal(&pki, "service-tls");
    service.pod.publish("service-tls", &second);
    let port = svc.port(443);
    assert!(
        wait_until(WAIT, || served_serial(port).as_deref()
            == Some(second.serial_hex.as_str())),
        "still serving {:?} (first {}, renewed {})\n{}",
        served_serial(port),
        first.serial_hex,
        second.serial_hex,
        service.context(&api)
    );
    let presented = |body: &str| {
        body.lines()
            .any(|l| l.contains(&format!("Hash={}", second.sha256_hex)))
    };
    let mut body = String::new();
    assert!(
        wait_until(WAIT, || {
            body = service.app_call();
            presented(&body)
        }),
        "the API never saw the renewed client certificate ({}):\n{body}\n{}",
        second.sha256_hex,
        service.context(&api)
    );
    assert_legacy_answer(&body, &dn, &second, &|| service.context(&api));
    assert_eq!(
        service.generation(),
        generation + 1,
        "one renewal, one generation: {}",
        service.set()
    );
    assert_eq!(
        service.published(),
        published + 1.0,
        "one renewal, one validated publish\n{}",
        service.sidecar.metrics()
    );
    let set = service.set();
    assert_eq!(set["serial"], second.serial_hex.as_str(), "{set}");
    let pin = pinned_pubkey(&second.cert_der);
    let got = walkthrough_curl(&web_app_dir, &svc, true, &["--pinnedpubkey", &pin]);
    assert_app_answer(&got, WEB_APP_DN, &|| service.context(&api));
    let got = walkthrough_curl_path(&web_app_dir, &svc, "/api/", true, &["--pinnedpubkey", &pin]);
    assert_eq!(got.http_code, 200, "{got:?}\n{}", service.context(&api));
    assert_legacy_answer(&got.body, &dn, &second, &|| service.context(&api));

    service.stop();
    api.stop();
}
