//! terminate-legacy-app (walkthrough steps 6 and 9): a plaintext app behind `server`.

use std::net::TcpStream;

use super::manifests::{certificate_spec, flag, Example};
use super::pod::Pod;
use super::{
    assert_all_gone, assert_runs_as, client_files, impostor_spec, processes, tools,
    walkthrough_curl, WAIT, WEB_APP_DN,
};
use crate::support::cli_clients::pinned_pubkey;
use crate::support::nginx::served_serial;
use crate::support::pki::{Eku, Leaf, LeafSpec, TestPki};
use crate::support::procs::Reaped;
use crate::support::sidecar::{wait_until, Sidecar};

/// The `Hash=` of the `X-Forwarded-Client-Cert:` line of the legacy app's answer.
pub(super) fn xfcc_hash(body: &str) -> Option<&str> {
    body.lines()
        .find_map(|l| l.strip_prefix("X-Forwarded-Client-Cert: "))?
        .split(';')
        .find_map(|part| part.strip_prefix("Hash="))
}

/// True if `body` is the legacy app's answer, passing on the identity of `client` (with DN
/// `dn`).
pub(super) fn is_legacy_answer(body: &str, dn: &str, client: &Leaf) -> bool {
    body.starts_with("hello from the legacy app\n")
        && body.lines().any(|l| l == format!("X-Client-DN: {dn}"))
        && body.lines().any(|l| l == "X-Client-Verify: SUCCESS")
        && xfcc_hash(body) == Some(client.sha256_hex.as_str())
}

/// Assert the legacy app answered, passing on the identity of `client` (with DN `dn`).
pub(super) fn assert_legacy_answer(
    body: &str,
    dn: &str,
    client: &Leaf,
    context: &dyn Fn() -> String,
) {
    assert!(
        is_legacy_answer(body, dn, client),
        "not the legacy app's answer for {dn} (sha256 {}):\n{body}\n{}",
        client.sha256_hex,
        context()
    );
}

/// The terminate-legacy-app pod, running: our `server` sidecar in front of the app (nginx with
/// `legacy-app.conf`). Fields drop in order: the processes stop before the pod's files go.
pub(super) struct LegacyApp {
    /// The app container's nginx master.
    pub(super) app: Reaped,
    /// The native sidecar.
    pub(super) server: Sidecar,
    pub(super) pod: Pod,
}

impl LegacyApp {
    /// Start the pod as kubelet does: the native sidecar, then (no startup probe to wait for)
    /// the app; return once the sidecar's probes pass and the app listens.
    pub(super) fn start(pki: &TestPki) -> LegacyApp {
        let pod = Pod::new(Example::load("terminate-legacy-app"), pki);
        let sidecar = pod.ex.sidecar();
        let (sub, args) = pod.sidecar_command(sidecar);
        assert_eq!(sub, "server", "terminate-legacy-app runs `server`");
        let server = Sidecar::server_via(&pod.run_as(sidecar), &args);
        pod.wait_probe(sidecar, "startupProbe", &server);
        let app = pod.spawn_nginx(pod.ex.app());
        pod.wait_probe(sidecar, "readinessProbe", &server);
        pod.wait_probe(sidecar, "livenessProbe", &server);
        let target = flag(&args, "--target").expect("server --target");
        assert!(
            wait_until(WAIT, || TcpStream::connect(&target).is_ok()),
            "the app does not listen on the sidecar's --target {target}\n{}",
            pod.logs(pod.ex.app())
        );
        LegacyApp { app, server, pod }
    }

    /// Everything for a failure message.
    pub(super) fn context(&self) -> String {
        format!(
            "{}\n--- server sidecar ---\n{}",
            self.pod.logs(self.pod.ex.app()),
            self.server.log()
        )
    }

    /// Stop both processes and check that nothing is left (nginx's workers included).
    pub(super) fn stop(self) {
        let procs = processes(&[self.server.pid(), self.app.pid()]);
        assert_runs_as(&self.pod, self.pod.ex.app(), &procs, "nginx");
        assert_runs_as(&self.pod, self.pod.ex.sidecar(), &procs, "mtls-sidecar");
        drop(self);
        assert_all_gone(&procs);
    }
}

#[test]
fn passes_on_the_guide_client_and_rotates_the_server_certificate() {
    if !tools(&["nginx", "curl", "openssl"]) {
        return;
    }
    let pki = TestPki::new();
    let mut legacy = LegacyApp::start(&pki);
    let api = legacy.pod.service();
    let ca = legacy.pod.ca_pem.clone();

    // The walkthrough's curl with the guide's client certificate (Secret web-app-client-tls).
    let web_app = pki.issue(&certificate_spec("web-app-client-tls"));
    let web_app_dir = client_files(&legacy.pod.scratch("web-app"), &web_app, &ca);
    let got = walkthrough_curl(&web_app_dir, &api, true, &[]);
    assert_eq!(got.http_code, 200, "{got:?}\n{}", legacy.context());
    assert_legacy_answer(&got.body, WEB_APP_DN, &web_app, &|| legacy.context());

    // The bidirectional service's certificate is admitted too (its `--allow-uri`).
    let spec = certificate_spec("service-bidirectional-tls");
    let service = pki.issue(&spec);
    let service_dir = client_files(&legacy.pod.scratch("service"), &service, &ca);
    let got = walkthrough_curl(&service_dir, &api, true, &[]);
    assert_eq!(got.http_code, 200, "{got:?}\n{}", legacy.context());
    let dn = format!("CN={}", spec.cn);
    assert_legacy_answer(&got.body, &dn, &service, &|| legacy.context());

    // A client certificate of the same CA outside the allow rules: 403.
    let outsider = pki.issue(
        &LeafSpec::new()
            .cn("batch-job")
            .subject_o("Example Org")
            .subject_ou("Batch Jobs")
            .eku(Eku::Client),
    );
    let outsider_dir = client_files(&legacy.pod.scratch("outsider"), &outsider, &ca);
    let got = walkthrough_curl(&outsider_dir, &api, true, &[]);
    assert_eq!(got.http_code, 403, "{got:?}\n{}", legacy.context());
    assert!(!got.body.contains("hello from the legacy app"), "{got:?}");

    // web-app's CN, O and OU, but the workload identity of another namespace (what a
    // ClusterIssuer would sign for anyone there): 403, the CN admits nobody.
    let impostor = pki.issue(&impostor_spec());
    let impostor_dir = client_files(&legacy.pod.scratch("impostor"), &impostor, &ca);
    let got = walkthrough_curl(&impostor_dir, &api, true, &[]);
    assert_eq!(got.http_code, 403, "{got:?}\n{}", legacy.context());

    // No client certificate: the handshake fails, no HTTP answer at all.
    let got = walkthrough_curl(&web_app_dir, &api, false, &[]);
    assert!(
        !got.ran.success() && got.http_code == 0,
        "without --cert/--key: {got:?}"
    );

    // A renewal, as kubelet delivers it: new connections get the new certificate.
    let first = legacy.pod.leaf("server-tls").clone();
    let second = legacy.pod.renewal(&pki, "server-tls");
    legacy.pod.publish("server-tls", &second);
    let port = api.port(443);
    assert!(
        wait_until(WAIT, || served_serial(port).as_deref()
            == Some(second.serial_hex.as_str())),
        "still serving {:?} (first {}, renewed {})\n{}",
        served_serial(port),
        first.serial_hex,
        second.serial_hex,
        legacy.context()
    );
    let pin = pinned_pubkey(&second.cert_der);
    let got = walkthrough_curl(&web_app_dir, &api, true, &["--pinnedpubkey", &pin]);
    assert_eq!(got.http_code, 200, "{got:?}\n{}", legacy.context());
    assert_legacy_answer(&got.body, WEB_APP_DN, &web_app, &|| legacy.context());

    legacy.stop();
}
