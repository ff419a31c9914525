//! Writers that are not kubelet, and broken volumes (KUBELET.md scenarios 6-9, 16-19):
//! plain files rewritten non-atomically, invalid certificates, a deleted optional Secret,
//! symlink loops, `/dev/zero` and oversized files, a stale `..data_tmp`, and changes that
//! produce only MODIFY events or none at all.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::support::fixture::{reissue_same_key, tls_files, Env};
use crate::support::pki::{write_triple, Leaf, TestPki};
use crate::support::writers;

/// A kubelet volume holding `pki.server()`, and a sidecar that loaded it.
fn started(poll: &str, extra: &[&str]) -> (Env, Leaf, Sidecar) {
    let (env, first) = Env::with_first(TestPki::server);
    let sc = env.start(poll, extra);
    wait_for_generation(&sc, 1);
    (env, first, sc)
}

/// Plain files (no `..data`) holding `pki.server()`, and a sidecar that loaded them.
fn started_plain(poll: &str) -> (Env, Leaf, Sidecar) {
    let env = Env::new();
    let first = env.pki.server();
    write_triple(
        &env.dir(),
        &first.chain_pem,
        &first.key_pkcs8_pem,
        &env.pki.root.cert_pem,
    );
    let sc = env.start(poll, &[]);
    wait_for_generation(&sc, 1);
    (env, first, sc)
}

/// After a failure: the last good leaf is still served, nothing ran, still ready.
fn assert_kept(sc: &Sidecar, env: &Env, first: &Leaf) {
    assert_unchanged(sc, &env.exec, 1, &first.serial_hex, 0);
    assert!(sc.ready(), "last good credentials are valid, yet not ready");
}

#[test]
fn s06_key_before_cert_rejects_the_mix_then_reloads_once() {
    let (env, _first, sc) = started_plain("0");
    let next = env.pki.server();
    let dir = env.dir();
    writers::key_then_cert(
        &dir.join("tls.key"),
        next.key_pkcs8_pem.as_bytes(),
        &dir.join("tls.crt"),
        next.chain_pem.as_bytes(),
        Duration::from_millis(200),
    );
    wait_for_serial(&sc, &next.serial_hex);
    wait_for_exec(&sc, &env.exec, 1);
    std::thread::sleep(QUIET);
    assert_unchanged(&sc, &env.exec, 2, &next.serial_hex, 1);
    assert_eq!(env.exec.shas(), [next.sha256_hex]);
}

#[test]
fn s07_truncate_then_write_keeps_last_good_until_complete() {
    let (env, first, sc) = started_plain("0");
    // Same key, new certificate (rotationPolicy: Never): only tls.crt changes.
    let next = reissue_same_key(&env.pki, &first);
    let crt = env.dir().join("tls.crt");
    let half = &next.pem.as_bytes()[..next.pem.len() / 2];
    for state in [&b""[..], half] {
        let before = all_failures(&sc);
        writers::write_in_place(&crt, state);
        let rejected = sc.wait_until(WAIT, || all_failures(&sc) > before);
        assert!(
            rejected,
            "a {}-byte tls.crt was not rejected: {}",
            state.len(),
            sc.metrics()
        );
        assert!(sc.last_error_reason().is_some(), "{}", sc.status());
        assert_kept(&sc, &env, &first);
    }
    writers::write_in_place(&crt, next.pem.as_bytes());
    wait_for_serial(&sc, &next.serial_hex);
    wait_for_exec(&sc, &env.exec, 1);
    std::thread::sleep(QUIET);
    assert_unchanged(&sc, &env.exec, 2, &next.serial_hex, 1);
}

#[test]
fn s08_invalid_certificates_are_rejected_with_their_reason() {
    let (mut env, first, sc) = started("0", &["--expect-dns", "api.production.svc"]);
    let spec = TestPki::server_spec;
    let cases = [
        ("expired", env.pki.issue(&spec().expired())),
        ("not_yet_valid", env.pki.issue(&spec().not_yet_valid())),
        (
            "identity_mismatch",
            env.pki.issue(&spec().dns(&["other.example"])),
        ),
        (
            "untrusted_chain",
            env.pki.issue_by(&env.pki.other_root, &spec()),
        ),
    ];
    for (reason, bad) in &cases {
        env.publish(bad);
        let counted = sc.wait_until(WAIT, || failures(&sc, reason) >= 1.0);
        assert!(
            counted,
            "{reason} not counted: {}\n{}",
            sc.status(),
            sc.metrics()
        );
        assert_eq!(
            sc.last_error_reason().as_deref(),
            Some(*reason),
            "{}",
            sc.status()
        );
        assert_kept(&sc, &env, &first);
    }
    assert!(sc.counter(RELOAD_FAILURE) >= 4.0, "{}", sc.metrics());
    let good = env.pki.server();
    env.publish(&good);
    wait_for_serial(&sc, &good.serial_hex);
    wait_for_exec(&sc, &env.exec, 1);
}

#[test]
fn s09_deleted_optional_secret_keeps_last_good_and_does_not_act() {
    let (mut env, first, sc) = started("0", &[]);
    env.vol.delete_all_keys();
    assert!(!env.dir().join("tls.crt").exists());
    let noticed = sc.wait_until(WAIT, || failures(&sc, "missing_file") >= 1.0);
    assert!(noticed, "missing files not counted: {}", sc.metrics());
    std::thread::sleep(QUIET);
    assert_kept(&sc, &env, &first);
    let back = env.pki.server();
    env.publish(&back);
    wait_for_serial(&sc, &back.serial_hex);
    wait_for_exec(&sc, &env.exec, 1);
}

#[test]
fn s16_symlink_loop_is_an_error_without_busy_loop() {
    let (mut env, first, sc) = started("1s", &[]);
    writers::data_symlink_loop(&env.dir());
    let noticed = sc.wait_until(WAIT, || all_failures(&sc) >= 1.0);
    assert!(noticed, "a ..data loop was not reported: {}", sc.metrics());
    assert!(sc.last_error_reason().is_some(), "{}", sc.status());
    let cpu = sc.cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let used = sc.cpu_time() - cpu;
    assert!(
        used < Duration::from_secs(1),
        "busy loop: {used:?} CPU in 2 s"
    );
    assert_kept(&sc, &env, &first);
    let next = env.pki.server();
    env.publish(&next); // a new ..data replaces the loop
    wait_for_serial(&sc, &next.serial_hex);
}

#[test]
fn s17_cert_pointing_at_dev_zero_is_too_large() {
    let (mut env, first, sc) = started("1s", &[]);
    writers::point_key_at(&env.dir(), "tls.crt", Path::new("/dev/zero"));
    let refused = sc.wait_until(WAIT, || failures(&sc, "too_large") >= 1.0);
    assert!(
        refused,
        "/dev/zero not refused as too_large: {}",
        sc.status()
    );
    assert_eq!(sc.last_error_reason().as_deref(), Some("too_large"));
    assert!(
        sc.peak_rss_kib() < 200 << 10,
        "peak RSS {} KiB",
        sc.peak_rss_kib()
    );
    assert_kept(&sc, &env, &first);
    writers::point_key_at(&env.dir(), "tls.crt", Path::new("..data/tls.crt"));
    let next = env.pki.server();
    env.publish(&next);
    wait_for_serial(&sc, &next.serial_hex);
}

#[test]
fn s17_data_pointing_at_dev_zero_keeps_last_good() {
    let (env, first, sc) = started("1s", &[]);
    writers::point_data_at(&env.dir(), Path::new("/dev/zero"));
    let noticed = sc.wait_until(WAIT, || all_failures(&sc) >= 1.0);
    assert!(
        noticed,
        "..data -> /dev/zero not reported: {}",
        sc.metrics()
    );
    assert!(
        sc.peak_rss_kib() < 200 << 10,
        "peak RSS {} KiB",
        sc.peak_rss_kib()
    );
    assert_kept(&sc, &env, &first);
}

#[test]
fn s17_two_mib_certificate_is_too_large() {
    let (mut env, first, sc) = started("0", &[]);
    let next = env.pki.server();
    let mut files = tls_files(&next, &env.pki.root.cert_pem);
    files[0].1 = writers::oversized_pem(&next.chain_pem, 2 << 20);
    env.vol.write(&files);
    let refused = sc.wait_until(WAIT, || failures(&sc, "too_large") >= 1.0);
    assert!(refused, "a 2 MiB tls.crt was not refused: {}", sc.status());
    assert_kept(&sc, &env, &first);
}

#[test]
fn s18_stale_data_tmp_is_ignored() {
    let mut env = Env::new();
    let first = env.pki.server();
    let stale = env.pki.server();
    env.publish(&first);
    let root = env.pki.root.cert_pem.clone();
    writers::stale_data_tmp(&env.dir(), &tls_files(&stale, &root));
    let sc = env.start("1s", &[]);
    wait_for_generation(&sc, 1);
    assert_eq!(sc.serial().as_deref(), Some(first.serial_hex.as_str()));
    // The crashed writer's leftovers change again: still nothing to load.
    writers::stale_data_tmp(&env.dir(), &tls_files(&stale, &root));
    std::thread::sleep(QUIET);
    assert_kept(&sc, &env, &first);
    let next = env.pki.server();
    env.publish(&next);
    wait_for_serial(&sc, &next.serial_hex);
    wait_for_exec(&sc, &env.exec, 1);
    assert_eq!(env.exec.shas(), [next.sha256_hex]);
}

#[test]
fn s19_in_place_modify_reloads_from_the_watcher() {
    let (env, first, sc) = started_plain("0");
    let next = reissue_same_key(&env.pki, &first);
    writers::write_in_place(&env.dir().join("tls.crt"), next.pem.as_bytes());
    wait_for_serial(&sc, &next.serial_hex);
    wait_for_exec(&sc, &env.exec, 1);
    std::thread::sleep(QUIET);
    assert_unchanged(&sc, &env.exec, 2, &next.serial_hex, 1);
}

#[test]
fn s19_change_without_events_converges_by_poll() {
    let (env, first, sc) = started("1s", &[]);
    let next = reissue_same_key(&env.pki, &first);
    // Rewritten inside the current timestamped dir: the non-recursive watch on the volume
    // sees no event at all; only the poll can notice.
    let inside = env.dir().join("..data").join("tls.crt");
    writers::write_in_place(&inside, next.pem.as_bytes());
    wait_for_serial(&sc, &next.serial_hex);
    wait_for_exec(&sc, &env.exec, 1);
    std::thread::sleep(QUIET);
    assert_unchanged(&sc, &env.exec, 2, &next.serial_hex, 1);
}

/// A certificate whose validity starts a few seconds from now (a node clock a little behind the
/// issuer's) is refused as `not_yet_valid`, then published once it is valid: no file event and
/// no poll (`--poll-interval 0`) is needed for that.
#[test]
fn a_certificate_valid_in_a_few_seconds_is_published_when_it_becomes_valid() {
    let (mut env, _first, sc) = started("0", &[]);
    let early = env.pki.issue(
        &TestPki::server_spec()
            .not_before(crate::support::pki::now() + time::Duration::seconds(3))
            .not_after(crate::support::pki::now() + time::Duration::days(30)),
    );
    env.publish(&early);
    assert!(
        sc.wait_until(WAIT, || sc.last_error_reason().as_deref()
            == Some("not_yet_valid")),
        "{}",
        sc.status()
    );
    wait_for_serial(&sc, &early.serial_hex);
    assert_eq!(sc.generation(), 2);
    assert!(sc.last_error_reason().is_none(), "{}", sc.status());
}
