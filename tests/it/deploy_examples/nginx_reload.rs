//! nginx-reload and nginx-reload-staged (walkthrough steps 7 and 9): nginx terminating mTLS,
//! `watch` reloading it.

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;

use super::manifests::{certificate_spec, flag, Example};
use super::pod::Pod;
use super::run::run_ours;
use super::{
    assert_all_gone, assert_runs_as, client_files, processes, tools, walkthrough_curl, WAIT,
    WEB_APP_DN,
};
use crate::support::cli_clients::{pinned_pubkey, CurlResult};
use crate::support::nginx::{pid_namespace_wrapper_for, served_serial};
use crate::support::pki::TestPki;
use crate::support::prom::{SIGNAL_OK, STAGE_OK, VERIFY_OK};
use crate::support::require_root;
use crate::support::sidecar::{wait_until, Sidecar};

/// nginx's output and the `watch` sidecar's log, for a failure message.
fn nginx_context(pod: &Pod, sc: &Sidecar) -> String {
    format!(
        "{}\n--- watch sidecar ---\n{}",
        pod.logs(pod.ex.app()),
        sc.log()
    )
}

/// True if `body` is nginx's backend's answer, which shows the guide client's identity.
pub(super) fn is_nginx_answer(body: &str) -> bool {
    body.starts_with("hello from behind nginx\n")
        && body
            .lines()
            .any(|l| l == format!("X-Client-DN: {WEB_APP_DN}"))
        && body.lines().any(|l| l == "X-Client-Verify: SUCCESS")
}

/// The walkthrough's curl got nginx's backend, which shows the guide client's identity.
fn assert_nginx_answer(got: &CurlResult, pod: &Pod, sc: &Sidecar) {
    assert!(
        got.http_code == 200 && is_nginx_answer(&got.body),
        "not nginx's backend answer for {WEB_APP_DN}: {got:?}\n{}",
        nginx_context(pod, sc)
    );
}

/// An nginx example's pod, started as kubelet starts it (walkthrough step 7): the init containers
/// pass; the `watch` sidecar and nginx share a PID namespace (`shareProcessNamespace: true`);
/// nginx starts once the sidecar's startup probe passed. Fields drop in order: the sidecar (PID 1
/// of the namespace: nginx ends with it) stops before the pod's files go.
pub(super) struct NginxPod {
    pub(super) sidecar: Sidecar,
    pub(super) pod: Pod,
    /// The sidecar's arguments after `watch`.
    pub(super) args: Vec<String>,
}

impl NginxPod {
    /// True if this machine can run an nginx example (the tools, and root for `unshare --pid`).
    pub(super) fn can_run() -> bool {
        tools(&["nginx", "curl", "openssl", "unshare"])
            && require_root("unshare --pid needs CAP_SYS_ADMIN")
    }

    /// Start example `name`'s pod; return once the sidecar's probes pass and nginx listens.
    pub(super) fn start(name: &'static str, pki: &TestPki) -> NginxPod {
        let pod = Pod::new(Example::load(name), pki);
        assert_eq!(
            pod.ex.pod()["shareProcessNamespace"],
            true,
            "{name}: --process-name needs one PID namespace"
        );

        // Init containers (nginx-reload's check-tls), in order: each must exit 0.
        for c in pod.ex.init_containers() {
            let ran = pod.run_init(c);
            assert!(
                ran.success(),
                "{name}: init container {} failed: {ran:?}",
                Pod::name(c)
            );
        }

        // The native sidecar; nginx waits (as kubelet holds it back) for the start file.
        let sidecar = pod.ex.sidecar();
        let startup = pod.exec_probe(sidecar, "startupProbe");
        if let Some(probe) = &startup {
            // Before the sidecar ran, the startup probe fails (exit 1: invalid), so it holds
            // nginx back.
            let ran = run_ours(probe);
            assert_eq!(
                ran.status.and_then(|s| s.code()),
                Some(1),
                "{name}: the startup probe `{}` before the sidecar ran: {ran:?}",
                probe.join(" ")
            );
        }
        let nginx = pod.ex.app();
        let start_file = pod.dir.path().join("start-nginx");
        for stream in ["stdout", "stderr"] {
            pod.create_log(nginx, stream);
        }
        let mut wrapper = pid_namespace_wrapper_for(
            &pod.nginx_command(nginx),
            &start_file,
            &pod.log_path(nginx, "stdout"),
            &pod.log_path(nginx, "stderr"),
        );
        // The sidecar, PID 1 of the namespace, as its own user.
        wrapper.extend(pod.run_as(sidecar).into_iter().map(Into::into));
        let (sub, args) = pod.sidecar_command(sidecar);
        assert_eq!(sub, "watch", "{name} runs `watch`");
        let sc = Sidecar::watch_via(&wrapper, &args);
        pod.wait_probe(sidecar, "startupProbe", &sc);
        fs::write(&start_file, "").expect("write the start file");
        pod.wait_probe(sidecar, "readinessProbe", &sc);
        pod.wait_probe(sidecar, "livenessProbe", &sc);
        // nginx's own readinessProbe (tcpSocket): it listens.
        let port = pod.service().port(443);
        assert!(
            wait_until(WAIT, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "{name}: nginx does not listen on {port}\n{}",
            nginx_context(&pod, &sc)
        );
        NginxPod {
            sidecar: sc,
            pod,
            args,
        }
    }
}

/// An nginx example, as the walkthrough's step 7 and 9 use it: the pod starts (`NginxPod`); the
/// walkthrough's curl gets nginx's backend with the client's identity; a renewal reaches nginx
/// (signal, then verify).
fn nginx_example_serves_and_reloads(name: &'static str) {
    if !NginxPod::can_run() {
        return;
    }
    let pki = TestPki::new();
    let NginxPod {
        sidecar: sc,
        mut pod,
        args,
    } = NginxPod::start(name, &pki);
    let (sidecar, nginx) = (pod.ex.sidecar(), pod.ex.app());

    // 3. nginx serves the Secret's certificate (the staged copy of it, in the staged variant).
    let svc = pod.service();
    let port = svc.port(443);
    let first = pod.leaf("server-tls").clone();
    assert!(
        wait_until(WAIT, || served_serial(port).as_deref()
            == Some(first.serial_hex.as_str())),
        "nginx does not serve {} on {port}: {:?}\n{}",
        first.serial_hex,
        served_serial(port),
        nginx_context(&pod, &sc)
    );

    // 4. The walkthrough's curl, with the guide's client certificate.
    let web_app = pki.issue(&certificate_spec("web-app-client-tls"));
    let client = client_files(&pod.scratch("web-app"), &web_app, &pod.ca_pem);
    let got = walkthrough_curl(&client, &svc, true, &[]);
    assert_nginx_answer(&got, &pod, &sc);
    let stage_dir = flag(&args, "--stage-dir").map(PathBuf::from);
    if let Some(stage) = &stage_dir {
        assert_eq!(
            fs::read_to_string(stage.join("tls.crt")).ok().as_deref(),
            Some(first.chain_pem.as_str()),
            "{name}: the staged tls.crt"
        );
    }

    // 5. A renewal, as kubelet delivers it: nginx is signalled and serves it, verify says so.
    let second = pod.renewal(&pki, "server-tls");
    pod.publish("server-tls", &second);
    assert!(
        wait_until(WAIT, || served_serial(port).as_deref()
            == Some(second.serial_hex.as_str())),
        "nginx still serves {:?}, not the renewed {}\n{}",
        served_serial(port),
        second.serial_hex,
        nginx_context(&pod, &sc)
    );
    assert!(
        wait_until(WAIT, || sc.counter(VERIFY_OK) == 1.0),
        "the verify action did not count a success\n{}",
        nginx_context(&pod, &sc)
    );
    assert_eq!(
        sc.metric_sum(
            "mtls_sidecar_actions_total",
            &[("action", "verify"), ("result", "failure")]
        ),
        0.0,
        "{}",
        nginx_context(&pod, &sc)
    );
    assert_eq!(
        sc.counter(SIGNAL_OK),
        1.0,
        "one SIGHUP\n{}",
        nginx_context(&pod, &sc)
    );
    if let Some(stage) = &stage_dir {
        assert_eq!(
            sc.counter(STAGE_OK),
            2.0,
            "the first bundle and the renewal"
        );
        assert_eq!(
            fs::read_to_string(stage.join("tls.crt")).ok().as_deref(),
            Some(second.chain_pem.as_str()),
            "{name}: the staged tls.crt"
        );
    }
    // Pinned to the renewed key. A reload starts new workers and lets the old ones finish: for a
    // moment an old worker may still take a connection with the old certificate, so wait.
    let pin = pinned_pubkey(&second.cert_der);
    let mut got = None;
    wait_until(WAIT, || {
        let res = walkthrough_curl(&client, &svc, true, &["--pinnedpubkey", &pin]);
        let pinned = res.ran.success();
        got = Some(res);
        pinned
    });
    assert_nginx_answer(&got.expect("curl ran"), &pod, &sc);

    // 6. Stopping the sidecar (PID 1 of the namespace) ends nginx too.
    let procs = processes(&[sc.pid()]);
    assert_runs_as(&pod, nginx, &procs, "nginx");
    assert_runs_as(&pod, sidecar, &procs, "mtls-sidecar");
    drop(sc);
    assert_all_gone(&procs);
}

#[test]
fn nginx_reload_checks_serves_the_guide_client_and_reloads_nginx_on_renewal() {
    nginx_example_serves_and_reloads("nginx-reload");
}

#[test]
fn nginx_reload_staged_starts_nginx_once_staged_and_reloads_it_on_renewal() {
    nginx_example_serves_and_reloads("nginx-reload-staged");
}
