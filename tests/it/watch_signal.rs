//! `watch --signal ... --pid-file|--pid`: the signal reaches the app once per real change, never
//! for a no-op resync or a broken update; and with a real nginx (as in our users' guide) the
//! reload makes nginx serve the new certificate.

use std::process::Command;
use std::time::Duration;

use crate::support::fixture::{tls_files, Env};
use crate::support::nginx::{served_serial, start_nginx};
use crate::support::pki::TestPki;
use crate::support::procs::HupCounter;
use crate::support::require_tool;
use crate::support::sidecar::{wait_until, Sidecar};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn sighup_once_per_real_change_never_for_noise_or_broken_updates() {
    let (mut env, first) = Env::with_first(TestPki::server);
    let app = HupCounter::start(env.tmp().join("hups"));
    let pid_file = env.tmp().join("app.pid");
    std::fs::write(&pid_file, format!("{}\n", app.pid())).unwrap();
    let dir = env.dir().display().to_string();
    let sc = Sidecar::watch([
        "--cert-dir",
        &dir,
        "--poll-interval",
        "1s",
        "--min-interval",
        "0",
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    assert!(sc.wait_until(WAIT, || sc.generation() == 1), "{}", sc.log());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(app.count(), 0, "the first bundle is not signalled");

    let second = env.pki.server();
    env.publish(&second);
    assert!(
        wait_until(WAIT, || app.count() == 1),
        "no SIGHUP after a real change\n{}",
        sc.log()
    );
    assert_eq!(
        sc.counter(r#"mtls_sidecar_actions_total{set="default",action="signal",result="success"}"#),
        1.0
    );

    // Kubelet's resyncs and a broken update: no signal.
    for _ in 0..3 {
        env.vol.resync();
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut broken = tls_files(&first, &env.pki.root.cert_pem);
    broken[1].1 = env.pki.server().key_pkcs8_pem.into_bytes();
    env.vol.write(&broken);
    assert!(sc.wait_until(WAIT, || sc.last_error_reason().as_deref()
        == Some("key_mismatch")));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(app.count(), 1, "signalled for noise or a broken update");
    assert_eq!(sc.serial().as_deref(), Some(second.serial_hex.as_str()));
}

#[test]
fn signal_usage_errors_exit_2() {
    let env = Env::new();
    let dir = env.dir().display().to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["watch", "--cert-dir", &dir];
        args.extend_from_slice(extra);
        Command::new(crate::support::bin())
            .args(&args)
            .output()
            .unwrap()
    };
    let no_target = run(&["--signal", "HUP"]);
    assert_eq!(no_target.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_target.stderr).contains("--pid-file"));
    assert_eq!(
        run(&["--pid", "42", "--signal", "NOPE"]).status.code(),
        Some(2)
    );
    assert_eq!(
        run(&["--pid", "42", "--process-name", "nginx"])
            .status
            .code(),
        Some(2)
    );
    let no_name = run(&["--process-name", "/usr/sbin/"]);
    assert_eq!(no_name.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_name.stderr).contains("--process-name"));
}

/// `--pid 1` is a usage error; a pid file can still name PID 1 at run time.
#[test]
fn pid_1_is_refused_and_counted_as_failure() {
    let (env, _) = Env::with_first(TestPki::server);
    let dir = env.dir().display().to_string();
    let pid_file = env.tmp().join("app.pid");
    std::fs::write(&pid_file, "1\n").unwrap();
    let sc = Sidecar::watch([
        "--cert-dir",
        &dir,
        "--poll-interval",
        "0",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--act-on-start",
    ]);
    let failed = r#"mtls_sidecar_actions_total{set="default",action="signal",result="failure",reason="target_is_pid_1"}"#;
    assert!(
        sc.wait_until(WAIT, || sc.counter(failed) >= 1.0),
        "{}",
        sc.log()
    );
    assert!(sc.log().contains("PID 1"));
}

#[test]
fn sighup_reaches_nginx_master_and_it_serves_the_new_certificate() {
    if !require_tool("nginx") || !require_tool("openssl") {
        return;
    }
    let (mut env, first) = Env::with_first(TestPki::server);
    let work = env.tmp().join("nginx");
    let (_nginx, port) = start_nginx(&work, &env.dir());
    let pid_file = work.join("nginx.pid");
    assert!(
        wait_until(WAIT, || pid_file.exists()),
        "nginx did not start: {:?}",
        std::fs::read_to_string(work.join("error.log"))
    );

    assert!(wait_until(WAIT, || served_serial(port).as_deref()
        == Some(first.serial_hex.as_str())));

    let dir = env.dir().display().to_string();
    let verify = format!("127.0.0.1:{port}");
    let sc = Sidecar::watch([
        "--cert-dir",
        &dir,
        "--poll-interval",
        "1s",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--verify-addr",
        &verify,
    ]);
    assert!(sc.wait_until(WAIT, || sc.generation() == 1));
    let second = env.pki.server();
    env.publish(&second);
    assert!(
        wait_until(WAIT, || served_serial(port).as_deref()
            == Some(second.serial_hex.as_str())),
        "nginx still serves {:?}\n{}",
        served_serial(port),
        sc.log()
    );
    assert_eq!(
        sc.counter(r#"mtls_sidecar_actions_total{set="default",action="signal",result="success"}"#),
        1.0
    );
    // --verify-addr saw nginx serve the new leaf.
    let verified = r#"mtls_sidecar_actions_total{set="default",action="verify",result="success"}"#;
    assert!(
        sc.wait_until(WAIT, || sc.counter(verified) == 1.0),
        "{}",
        sc.log()
    );
}

#[test]
fn stage_dir_holds_only_validated_triples_written_atomically() {
    use std::os::unix::fs::PermissionsExt;
    let (mut env, first) = Env::with_first(TestPki::server);
    let stage = env.tmp().join("staged");
    let dir = env.dir().display().to_string();
    let sc = Sidecar::watch([
        "--cert-dir",
        &dir,
        "--poll-interval",
        "0",
        "--min-interval",
        "0",
        "--stage-dir",
        stage.to_str().unwrap(),
    ]);
    let staged = || std::fs::read_to_string(stage.join("tls.crt")).unwrap_or_default();
    assert!(
        wait_until(WAIT, || staged() == first.chain_pem),
        "first bundle not staged\n{}",
        sc.log()
    );
    assert!(std::fs::symlink_metadata(stage.join("..data"))
        .unwrap()
        .file_type()
        .is_symlink());
    let key_mode = std::fs::metadata(stage.join("tls.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o640);
    assert_eq!(
        std::fs::read_to_string(stage.join("ca.crt")).unwrap(),
        env.pki.root.cert_pem
    );

    let second = env.pki.server();
    env.publish(&second);
    assert!(
        wait_until(WAIT, || staged() == second.chain_pem),
        "second bundle not staged\n{}",
        sc.log()
    );
    assert_eq!(
        std::fs::read_to_string(stage.join("tls.key")).unwrap(),
        second.key_pkcs8_pem
    );

    // A broken update never reaches the staged copy.
    let mut broken = tls_files(&first, &env.pki.root.cert_pem);
    broken[1].1 = env.pki.server().key_pkcs8_pem.into_bytes();
    env.vol.write(&broken);
    assert!(sc.wait_until(WAIT, || sc.last_error_reason().as_deref()
        == Some("key_mismatch")));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(staged(), second.chain_pem);
    assert_eq!(
        sc.counter(r#"mtls_sidecar_actions_total{set="default",action="stage",result="success"}"#),
        2.0
    );
}

#[test]
fn nginx_reading_the_staged_files_serves_each_new_certificate() {
    if !require_tool("nginx") || !require_tool("openssl") {
        return;
    }
    let (mut env, first) = Env::with_first(TestPki::server);
    let stage = env.tmp().join("staged");
    let work = env.tmp().join("nginx");
    let pid_file = work.join("nginx.pid");
    let dir = env.dir().display().to_string();
    let sc = Sidecar::watch([
        "--cert-dir",
        &dir,
        "--poll-interval",
        "1s",
        "--stage-dir",
        stage.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    assert!(
        wait_until(WAIT, || stage.join("tls.crt").exists()),
        "{}",
        sc.log()
    );
    let (_nginx, port) = start_nginx(&work, &stage);
    assert!(wait_until(WAIT, || served_serial(port).as_deref()
        == Some(first.serial_hex.as_str())));
    let second = env.pki.server();
    env.publish(&second);
    assert!(
        wait_until(WAIT, || served_serial(port).as_deref()
            == Some(second.serial_hex.as_str())),
        "nginx still serves {:?}\n{}",
        served_serial(port),
        sc.log()
    );
}

#[test]
fn verify_reports_an_app_that_did_not_reload() {
    if !require_tool("nginx") {
        return;
    }
    let (mut env, _) = Env::with_first(TestPki::server);
    let work = env.tmp().join("nginx");
    let (_nginx, port) = start_nginx(&work, &env.dir());
    assert!(wait_until(WAIT, || served_serial(port).is_some()));
    // The signal goes to a bystander, so nginx never reloads: verify must say so.
    let bystander = HupCounter::start(env.tmp().join("hups"));
    let dir = env.dir().display().to_string();
    let pid = bystander.pid().to_string();
    let verify = format!("127.0.0.1:{port}");
    let sc = Sidecar::watch([
        "--cert-dir",
        &dir,
        "--poll-interval",
        "0",
        "--pid",
        &pid,
        "--verify-addr",
        &verify,
        "--verify-timeout",
        "1s",
    ]);
    assert!(sc.wait_until(WAIT, || sc.generation() == 1));
    env.publish(&env.pki.server());
    let failed = r#"mtls_sidecar_actions_total{set="default",action="verify",result="failure",reason="still_old_certificate"}"#;
    assert!(
        sc.wait_until(WAIT, || sc.counter(failed) >= 1.0),
        "{}",
        sc.log()
    );
    assert!(
        sc.log().contains("does not serve the new certificate"),
        "{}",
        sc.log()
    );
}
