//! A refusal is reported once per distinct refused content: one bad `..data` swap (whose rename
//! fires two events, and whose clean-up another), bad files at start-up (read at start and again
//! when the watch is set up), or bad files left in place across polls are one `credentials
//! refused` line and one `result="failure"`; other bad files, or the same ones again after a
//! publish, are reported again.

use serde_json::Value;

use super::*;
use crate::support::fixture::{tls_files, Env};
use crate::support::pki::{Leaf, TestPki};

/// The JSON log lines of refusals (`credentials refused; ...`).
fn refusal_lines(sc: &Sidecar) -> Vec<Value> {
    sc.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("credentials refused"))
        })
        .collect()
}

/// Waits until `reloads_total{result="failure"}` is `n`, then a little longer, and checks it
/// stayed `n` with `n` refusal lines logged.
fn assert_refused_times(sc: &Sidecar, n: usize, what: &str) {
    let counted = sc.wait_until(WAIT, || sc.counter(RELOAD_FAILURE) >= n as f64);
    assert!(counted, "{what}: not refused\n{}", sc.log());
    std::thread::sleep(QUIET);
    assert_eq!(
        sc.counter(RELOAD_FAILURE),
        n as f64,
        "{what}: counted again\n{}",
        sc.metrics()
    );
    assert_eq!(all_failures(sc), n as f64, "{what}\n{}", sc.metrics());
    let lines = refusal_lines(sc);
    assert_eq!(lines.len(), n, "{what}: logged again: {lines:#?}");
}

/// `leaf`'s files with another leaf's key.
fn mismatched(env: &Env, leaf: &Leaf) -> Vec<(&'static str, Vec<u8>)> {
    let mut files = tls_files(leaf, &env.pki.root.cert_pem);
    files[1].1 = env.pki.server().key_pkcs8_pem.into_bytes();
    files
}

#[test]
fn each_bad_kubelet_update_is_refused_once() {
    let (mut env, first) = Env::with_first(TestPki::server);
    let sc = env.start("0", &[]);
    wait_for_generation(&sc, 1);
    let next = env.pki.server();
    let root = env.pki.root.cert_pem.clone();
    let expired = env.pki.issue(&TestPki::server_spec().expired());
    let other_ca = env
        .pki
        .issue_by(&env.pki.other_root, &TestPki::server_spec());
    let half = {
        let mut files = tls_files(&next, &root);
        let len = files[0].1.len();
        files[0].1.truncate(len / 2);
        files
    };
    let empty = {
        let mut files = tls_files(&next, &root);
        files[0].1.clear();
        files
    };
    let updates = [
        ("a mismatched key", mismatched(&env, &next)),
        ("an expired certificate", tls_files(&expired, &root)),
        ("a certificate of another CA", tls_files(&other_ca, &root)),
        ("half a PEM", half),
        ("an empty tls.crt", empty),
    ];
    for (n, (what, files)) in updates.iter().enumerate() {
        env.vol.write(files);
        assert_refused_times(&sc, n + 1, what);
        let line = &refusal_lines(&sc)[n];
        assert_eq!(
            line["fields"]["old_serial"],
            first.serial_hex.as_str(),
            "{line}"
        );
        assert_eq!(
            line["fields"]["message"], "credentials refused; keeping the last good ones",
            "{line}"
        );
        assert_unchanged(&sc, &env.exec, 1, &first.serial_hex, 0);
    }
}

#[test]
fn bad_files_at_startup_are_refused_once_and_nothing_is_said_to_be_kept() {
    let mut env = Env::new();
    let leaf = env.pki.server();
    env.vol.write(&mismatched(&env, &leaf));
    let sc = env.start("0", &[]);
    assert_refused_times(&sc, 1, "bad files at start-up");
    let line = &refusal_lines(&sc)[0];
    assert_eq!(line["fields"]["old_serial"], "none", "{line}");
    assert_eq!(
        line["fields"]["message"], "credentials refused; nothing served yet",
        "{line}"
    );
    assert_eq!(sc.last_error_reason().as_deref(), Some("key_mismatch"));
    assert!(!sc.ready());
    // Valid files at last: published.
    env.publish(&leaf);
    wait_for_serial(&sc, &leaf.serial_hex);
}

#[test]
fn bad_files_left_in_place_are_not_refused_again_at_each_poll() {
    let (mut env, first) = Env::with_first(TestPki::server);
    let sc = env.start("1s", &[]);
    wait_for_generation(&sc, 1);
    let bad = mismatched(&env, &env.pki.server());
    env.vol.write(&bad);
    assert_refused_times(&sc, 1, "a mismatched key");
    let at = sc.set()["last_error"]["at"].clone();
    // A few polls read the same files again: nothing new to report.
    let unchanged = sc.counter(RELOAD_UNCHANGED);
    std::thread::sleep(Duration::from_millis(2500));
    assert_refused_times(&sc, 1, "the same files at the next polls");
    assert_eq!(sc.set()["last_error"]["at"], at, "{}", sc.status());
    assert_eq!(sc.counter(RELOAD_UNCHANGED), unchanged, "{}", sc.metrics());
    // Other bad files: reported.
    let expired = env.pki.issue(&TestPki::server_spec().expired());
    env.publish(&expired);
    assert_refused_times(&sc, 2, "an expired certificate");
    assert_eq!(sc.last_error_reason().as_deref(), Some("expired"));
    std::thread::sleep(Duration::from_millis(2500));
    assert_refused_times(&sc, 2, "the expired certificate at the next polls");
    // A publish in between: the first bad files again are reported again.
    let good = env.pki.server();
    env.publish(&good);
    wait_for_serial(&sc, &good.serial_hex);
    env.vol.write(&bad);
    assert_refused_times(&sc, 3, "the mismatched key after a publish");
    assert_unchanged(&sc, &env.exec, 2, &good.serial_hex, 1);
    assert_ne!(first.serial_hex, good.serial_hex);
}
