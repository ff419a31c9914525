//! `watch` driving a real nginx configured as in our users' guide (server certificate,
//! `ssl_client_certificate ca.crt`, `ssl_verify_client on`): `--process-name nginx` finds the
//! master (not its workers) inside a PID namespace shared with the sidecar, also when nginx reads
//! `--stage-dir`; `--verify-addr` reports a reload nginx itself rejected, and its retries signal
//! nginx again until it takes the files; and a sidecar without
//! the right to signal the app (EPERM) says how to fix that and keeps running.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cli_clients::{pinned_pubkey, users_curl};
use crate::support::fixture::{tls_files, Env};
use crate::support::nginx::{masters_under, served_serial, Nginx};
use crate::support::pki::{Leaf, TestPki};
use crate::support::procs::{comm, descendants, ns_pid, parent, uid, HupCounter, ProcId};
use crate::support::prom::{SIGNAL_OK, STAGE_OK, VERIFY_OK};
use crate::support::sidecar::{wait_until, Sidecar};
use crate::support::{require_root, require_tool};

const WAIT: Duration = Duration::from_secs(10);

/// Failures carry their reason as a label.
const SIGNAL_NOT_PERMITTED: &str = r#"mtls_sidecar_actions_total{set="default",action="signal",result="failure",reason="permission_denied"}"#;
const VERIFY_STILL_OLD: &str = r#"mtls_sidecar_actions_total{set="default",action="verify",result="failure",reason="still_old_certificate"}"#;

/// Failures of `action`, whatever their reason.
fn failures(sc: &Sidecar, action: &str) -> f64 {
    sc.metric_sum(
        "mtls_sidecar_actions_total",
        &[("action", action), ("result", "failure")],
    )
}

/// True if every tool is on PATH (each one checked with `require_tool`, which fails in CI).
fn tools(names: &[&str]) -> bool {
    names.iter().all(|name| require_tool(name))
}

/// The users' guide's client files in a fresh directory: `client.crt`, `client.key` (a
/// clientAuth leaf of the test root) and `ca.crt`.
fn client_dir(env: &Env) -> PathBuf {
    let dir = env.tmp().join("client");
    let client = env.pki.client();
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("client.crt"), &client.chain_pem).unwrap();
    fs::write(dir.join("client.key"), &client.key_pkcs8_pem).unwrap();
    fs::write(dir.join("ca.crt"), &env.pki.root.cert_pem).unwrap();
    dir
}

/// curl as in the users' guide (client certificate, `--cacert ca.crt`) gets nginx's `ok`
/// while pinning `leaf`'s key: nginx serves `leaf` and accepts our client certificate.
fn assert_curl_sees(client: &Path, nginx: &Nginx, leaf: &Leaf) {
    let pin = pinned_pubkey(&leaf.cert_der);
    // Right after a reload an old nginx worker may still take one more connection with the old
    // certificate: retry (bounded) until the pinned call passes.
    let mut got = users_curl(client, nginx.port(), "/", &["--pinnedpubkey", &pin]);
    wait_until(WAIT, || {
        got = users_curl(client, nginx.port(), "/", &["--pinnedpubkey", &pin]);
        got.ran.success() && got.http_code == 200
    });
    assert!(
        got.ran.success() && got.http_code == 200 && got.body == "ok\n",
        "curl with the client certificate, pinned to serial {}: {got:?}\nnginx error.log:\n{}",
        leaf.serial_hex,
        nginx.error_log()
    );
}

/// Wait until nginx serves `leaf` on its port (read with `openssl s_client`).
fn assert_serves(nginx: &Nginx, sc: &Sidecar, leaf: &Leaf) {
    assert!(
        wait_until(WAIT, || served_serial(nginx.port()).as_deref()
            == Some(leaf.serial_hex.as_str())),
        "nginx serves {:?}, not {}\nnginx error.log:\n{}\nsidecar log:\n{}",
        served_serial(nginx.port()),
        leaf.serial_hex,
        nginx.error_log(),
        sc.log()
    );
}

/// The `detail` of every `action succeeded` log line of the signal action.
fn signal_details(sc: &Sidecar) -> Vec<String> {
    sc.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "action succeeded")
        .filter(|v| v["fields"]["action"] == "signal")
        .filter_map(|v| v["fields"]["detail"].as_str().map(str::to_string))
        .collect()
}

/// The nginx master started by `Nginx::pid_namespace_wrapper` (as a PID seen from here), once it
/// runs with its 2 workers: a child of the sidecar, which is PID 1 of the namespace.
fn nginx_master(sc: &Sidecar, nginx: &Nginx) -> u32 {
    let sidecar = sc.pid();
    assert_eq!(
        ns_pid(sidecar),
        Some(1),
        "the sidecar is PID 1 of its namespace"
    );
    let nginx_procs = |pid: u32| {
        descendants(pid)
            .into_iter()
            .filter(|p| comm(*p).as_deref() == Some("nginx"))
            .count()
    };
    let mut master = None;
    let up = wait_until(WAIT, || {
        master = masters_under(sidecar)
            .into_iter()
            .find(|m| parent(*m) == Some(sidecar) && nginx_procs(*m) == 2);
        master.is_some()
    });
    assert!(
        up,
        "nginx (master + 2 workers) did not start under the sidecar (pid {sidecar})\n\
         nginx stderr:\n{}\nerror.log:\n{}\nsidecar log:\n{}",
        nginx.stderr(),
        nginx.error_log(),
        sc.log()
    );
    master.expect("found above")
}

/// Every process of the sidecar's PID namespace (the sidecar and all its descendants).
fn namespace_processes(sc: &Sidecar) -> Vec<ProcId> {
    std::iter::once(sc.pid())
        .chain(descendants(sc.pid()))
        .filter_map(ProcId::of)
        .collect()
}

/// Stop the sidecar (its Drop) and check that nothing of its PID namespace is left.
fn assert_namespace_ends_with(sc: Sidecar) {
    let procs = namespace_processes(&sc);
    assert!(
        procs.iter().any(|p| p.comm == "nginx"),
        "nginx runs until the sidecar stops: {procs:?}"
    );
    drop(sc);
    assert!(
        wait_until(WAIT, || procs.iter().all(|p| !p.exists())),
        "left behind after the sidecar stopped: {:?}",
        procs.iter().filter(|p| p.exists()).collect::<Vec<_>>()
    );
}

#[test]
fn process_name_sighups_only_the_nginx_master_once_per_real_change() {
    if !tools(&["nginx", "openssl", "curl", "unshare"])
        || !require_root("unshare --pid needs CAP_SYS_ADMIN")
    {
        return;
    }
    let (mut env, first) = Env::with_first(TestPki::server);
    let client = client_dir(&env);
    let nginx = Nginx::configure(&env.tmp().join("nginx"), &env.dir());
    let dir = env.dir().display().to_string();
    let verify = nginx.addr();
    let sc = Sidecar::watch_via(
        &nginx.pid_namespace_wrapper(),
        [
            "--cert-dir",
            &dir,
            "--process-name",
            "nginx",
            "--verify-addr",
            &verify,
            "--poll-interval",
            "1s",
        ],
    );
    let master = nginx_master(&sc, &nginx);
    let master_ns = ns_pid(master).expect("nginx master's PID in the namespace");
    assert!(sc.wait_until(WAIT, || sc.generation() == 1), "{}", sc.log());
    assert_serves(&nginx, &sc, &first);
    assert_curl_sees(&client, &nginx, &first);
    assert!(
        nginx.sighup_lines().is_empty(),
        "the first bundle is not signalled"
    );

    // (a) Kubelet swaps in a new certificate: one SIGHUP, to the master, and nginx serves it.
    let second = env.pki.server();
    env.publish(&second);
    assert_serves(&nginx, &sc, &second);
    assert_curl_sees(&client, &nginx, &second);
    assert!(
        sc.wait_until(WAIT, || sc.counter(VERIFY_OK) == 1.0),
        "--verify-addr did not see the new certificate\n{}",
        sc.log()
    );
    assert_eq!(sc.counter(SIGNAL_OK), 1.0, "{}", sc.log());
    assert_eq!(
        signal_details(&sc),
        [format!("sent SIGHUP to pid {master_ns}")],
        "one signal, to the master only"
    );
    let hups = nginx.sighup_lines();
    assert_eq!(hups.len(), 1, "one SIGHUP in all of nginx: {hups:#?}");
    assert!(
        hups[0].contains(&format!(" {master_ns}#{master_ns}: ")),
        "the master got it: {hups:#?}"
    );
    assert_eq!(
        masters_under(sc.pid()),
        [master],
        "the master reloaded in place"
    );

    // (c) Kubelet's periodic no-op resyncs (every 60-90 s in a pod; every 3 s here, for a
    // minute): nothing changed, so no signal.
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        env.vol.resync();
        std::thread::sleep(Duration::from_secs(3));
    }
    assert_eq!(
        sc.counter(SIGNAL_OK),
        1.0,
        "signalled for a resync\n{}",
        sc.log()
    );
    assert_eq!(failures(&sc, "signal"), 0.0, "{}", sc.log());
    assert_eq!(nginx.sighup_lines().len(), 1, "{:#?}", nginx.sighup_lines());
    assert_eq!(sc.generation(), 2);

    // (b) A broken update (new certificate, another leaf's key): refused, nginx not signalled,
    // still serving the last good certificate.
    let third = env.pki.server();
    let mut broken = tls_files(&third, &env.pki.root.cert_pem);
    assert_eq!(broken[1].0, "tls.key");
    broken[1].1 = env.pki.server().key_pkcs8_pem.into_bytes();
    env.vol.write(&broken);
    assert!(
        sc.wait_until(WAIT, || sc.last_error_reason().as_deref()
            == Some("key_mismatch")),
        "{}",
        sc.log()
    );
    assert!(
        sc.counter(r#"mtls_sidecar_reload_failures_total{set="default",reason="key_mismatch"}"#)
            >= 1.0
    );
    assert!(sc.counter(r#"mtls_sidecar_reloads_total{set="default",result="failure"}"#) >= 1.0);
    // Past --min-interval (1s) and a few polls: still no signal.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sc.counter(SIGNAL_OK), 1.0, "signalled for a broken update");
    assert_eq!(nginx.sighup_lines().len(), 1, "{:#?}", nginx.sighup_lines());
    assert_eq!(sc.serial().as_deref(), Some(second.serial_hex.as_str()));
    assert_eq!(
        served_serial(nginx.port()).as_deref(),
        Some(second.serial_hex.as_str())
    );
    assert_curl_sees(&client, &nginx, &second);

    assert_namespace_ends_with(sc);
}

#[test]
fn process_name_with_stage_dir_nginx_serves_each_staged_certificate() {
    if !tools(&["nginx", "openssl", "curl", "unshare"])
        || !require_root("unshare --pid needs CAP_SYS_ADMIN")
    {
        return;
    }
    let (mut env, first) = Env::with_first(TestPki::server);
    let client = client_dir(&env);
    let stage = env.tmp().join("staged");
    // nginx reads the staged copy; the wrapper starts it once its configuration loads, i.e.
    // once the sidecar staged the first bundle.
    let nginx = Nginx::configure(&env.tmp().join("nginx"), &stage);
    let dir = env.dir().display().to_string();
    let sc = Sidecar::watch_via(
        &nginx.pid_namespace_wrapper(),
        [
            "--cert-dir",
            &dir,
            "--stage-dir",
            stage.to_str().unwrap(),
            "--process-name",
            "nginx",
            "--poll-interval",
            "1s",
        ],
    );
    let master = nginx_master(&sc, &nginx);
    assert_serves(&nginx, &sc, &first);

    for (n, leaf) in (1..).zip(env.leaves(3)) {
        env.publish(&leaf);
        assert_serves(&nginx, &sc, &leaf);
        assert_curl_sees(&client, &nginx, &leaf);
        assert!(
            sc.wait_until(WAIT, || sc.counter(SIGNAL_OK) == f64::from(n)),
            "{}",
            sc.log()
        );
        assert_eq!(nginx.sighup_lines().len(), n as usize);
        assert_eq!(
            fs::read_to_string(stage.join("tls.crt")).unwrap(),
            leaf.chain_pem
        );
    }
    assert_eq!(sc.counter(STAGE_OK), 4.0, "the first bundle and 3 swaps");
    assert_eq!(masters_under(sc.pid()), [master]);

    assert_namespace_ends_with(sc);
}

#[test]
fn a_reload_nginx_rejects_is_reported_by_verify_and_retried_with_a_new_signal() {
    if !tools(&["nginx", "openssl"]) {
        return;
    }
    let (mut env, first) = Env::with_first(TestPki::server);
    let stage = env.tmp().join("staged");
    let nginx = Nginx::configure(&env.tmp().join("nginx"), &stage);
    let dir = env.dir().display().to_string();
    let pid_file = nginx.pid_file();
    let verify = nginx.addr();
    let sc = Sidecar::watch([
        "--cert-dir",
        &dir,
        "--stage-dir",
        stage.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--verify-addr",
        &verify,
        "--verify-timeout",
        "2s",
        "--poll-interval",
        "1s",
    ]);
    assert!(
        sc.wait_until(WAIT, || sc.counter(STAGE_OK) == 1.0),
        "first bundle not staged\n{}",
        sc.log()
    );
    let _nginx = nginx.spawn();
    assert!(
        wait_until(WAIT, || pid_file.exists()),
        "nginx did not start:\n{}",
        nginx.error_log()
    );
    assert_serves(&nginx, &sc, &first);

    // The staged files are replaced behind our back: tls.key, a top-level symlink into
    // ..data, becomes a regular file holding an unrelated key. Like kubelet, our stage writer
    // only creates top-level links that are missing, so it stays.
    let key = stage.join("tls.key");
    assert!(fs::symlink_metadata(&key).unwrap().file_type().is_symlink());
    let unrelated = env.tmp().join("unrelated.key");
    fs::write(&unrelated, env.pki.server().key_pkcs8_pem).unwrap();
    fs::rename(&unrelated, &key).unwrap();

    // A valid update: staged and signalled, but nginx refuses to load it.
    let second = env.pki.server();
    env.publish(&second);
    assert!(
        sc.wait_until(WAIT, || sc.counter(STAGE_OK) == 2.0),
        "{}",
        sc.log()
    );
    assert_eq!(
        fs::read_to_string(stage.join("tls.crt")).unwrap(),
        second.chain_pem
    );
    assert!(
        sc.wait_until(WAIT, || sc.counter(VERIFY_STILL_OLD) >= 1.0),
        "verify did not report the failed reload\n{}",
        sc.log()
    );
    assert!(
        sc.log().contains("does not serve the new certificate"),
        "{}",
        sc.log()
    );
    assert_eq!(sc.counter(VERIFY_OK), 0.0);
    assert!(
        nginx.error_log().contains("key values mismatch"),
        "nginx did not refuse the reload:\n{}",
        nginx.error_log()
    );
    assert_eq!(
        served_serial(nginx.port()).as_deref(),
        Some(first.serial_hex.as_str()),
        "nginx keeps its old configuration"
    );
    // The sidecar itself published the new, valid bundle: only the app failed.
    assert_eq!(sc.serial().as_deref(), Some(second.serial_hex.as_str()));

    // Once what broke the reload is repaired, a retry signals nginx again (retrying the verify
    // alone could never succeed) and nginx serves the new certificate.
    fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", &key).unwrap();
    assert!(
        sc.wait_until(Duration::from_secs(40), || sc.counter(VERIFY_OK) == 1.0),
        "no retry signalled nginx again after the repair\n{}",
        sc.log()
    );
    assert!(sc.counter(SIGNAL_OK) >= 2.0, "{}", sc.log());
    assert_eq!(
        served_serial(nginx.port()).as_deref(),
        Some(second.serial_hex.as_str())
    );
}

/// The effective capabilities of `pid` (`CapEff` of `/proc/PID/status`, hex).
fn effective_caps(pid: u32) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let caps = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    Some(caps.trim().to_string())
}

#[test]
fn an_unprivileged_sidecar_cannot_signal_a_root_app_and_says_how_to_fix_it() {
    if !tools(&["setpriv"])
        || !require_root("the app must run as root and the sidecar as another user")
    {
        return;
    }
    const NOBODY: u32 = 65534;
    let (mut env, _) = Env::with_first(TestPki::server);
    // Temp dirs are 0700: let the sidecar's user read the volume.
    for dir in [env.tmp().to_path_buf(), env.dir()] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let app = HupCounter::start(env.tmp().join("hups"));
    let dir = env.dir().display().to_string();
    let pid = app.pid().to_string();
    let nobody = NOBODY.to_string();
    let reuid = format!("--reuid={nobody}");
    let regid = format!("--regid={nobody}");
    let mut sc = Sidecar::watch_via(
        &[
            "setpriv",
            &reuid,
            &regid,
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ],
        ["--cert-dir", &dir, "--pid", &pid, "--poll-interval", "1s"],
    );
    assert_eq!(uid(sc.pid()), Some(NOBODY), "the sidecar runs as nobody");
    assert_eq!(
        effective_caps(sc.pid()).as_deref(),
        Some("0000000000000000"),
        "without capabilities"
    );
    assert!(sc.wait_until(WAIT, || sc.generation() == 1), "{}", sc.log());

    env.publish(&env.pki.server());
    assert!(
        sc.wait_until(WAIT, || sc.counter(SIGNAL_NOT_PERMITTED) >= 1.0),
        "{}",
        sc.log()
    );
    let log = sc.log();
    assert!(
        log.contains(&format!("not permitted to signal process {pid}"))
            && log.contains("app's UID")
            && log.contains("CAP_KILL"),
        "the log should name the fix (same UID or CAP_KILL):\n{log}"
    );
    assert!(log.contains("permission_denied"), "no reason in:\n{log}");
    assert_eq!(sc.counter(SIGNAL_OK), 0.0);
    assert_eq!(app.count(), 0, "the app got a signal it should not have");
    assert_eq!(sc.generation(), 2, "the new bundle is still published");
    assert!(sc.healthy());
    assert!(sc.running(), "the sidecar keeps running\n{}", sc.log());
}
