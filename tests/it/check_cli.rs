//! `mtls-sidecar check` as users run it: the real binary on files in temp dirs, asserting exit
//! codes, reason codes, JSON fields and messages.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::bin;
use crate::support::pki::{write_triple, LeafSpec, TestPki};

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .arg("check")
        .args(args)
        .env_remove("MTLS_SIDECAR_CERT_DIR")
        .output()
        .expect("run mtls-sidecar")
}

fn json(args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = run(&all);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().expect("exit code"), v)
}

fn reasons(v: &Value) -> Vec<String> {
    v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap().to_string())
        .collect()
}

fn server_dir(pki: &TestPki) -> (tempfile::TempDir, crate::support::pki::Leaf) {
    let dir = tempfile::tempdir().unwrap();
    let leaf = pki.server();
    write_triple(
        dir.path(),
        &leaf.chain_pem,
        &leaf.key_pkcs8_pem,
        &pki.root.cert_pem,
    );
    (dir, leaf)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn valid_triple_exits_0_with_documented_json_fields() {
    let pki = TestPki::new();
    let (dir, leaf) = server_dir(&pki);
    let (code, v) = json(&[
        "--cert-dir",
        s(dir.path()),
        "--expect-dns",
        "api.production.svc",
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["valid"], true);
    assert_eq!(v["usage"], "server");
    assert_eq!(v["files"]["cert"], s(&dir.path().join("tls.crt")));
    assert_eq!(v["leaf"]["serial"], leaf.serial_hex.as_str());
    assert_eq!(v["leaf"]["sha256"], leaf.sha256_hex.as_str());
    assert_eq!(v["leaf"]["subject"], "CN=api.production.svc.cluster.local");
    assert_eq!(v["leaf"]["ekus"], serde_json::json!(["serverAuth"]));
    assert_eq!(v["leaf"]["public_key"]["type"], "ECDSA");
    assert!(v["leaf"]["seconds_left"].as_i64().unwrap() > 80 * 86_400);
    assert!(v["leaf"]["not_after"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["key"]["type"], "ECDSA");
    assert_eq!(v["key"]["curve"], "P-256");
    assert_eq!(v["key"]["encoding"], "PKCS#8");
    assert_eq!(v["ca"].as_array().unwrap().len(), 1);
    assert_eq!(v["chain"]["result"], "ok");
    assert_eq!(v["failures"], serde_json::json!([]));
}

#[test]
fn text_report_shows_facts_and_verdict() {
    let pki = TestPki::new();
    let (dir, leaf) = server_dir(&pki);
    let out = run(&["--cert-dir", s(dir.path())]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    for want in [
        "subject",
        "issuer",
        &leaf.serial_hex,
        &leaf.sha256_hex,
        "DNS:api.production.svc",
        "ECDSA P-256",
        "serverAuth",
        "left)",
        "chain         ok",
        "result        valid",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn invalid_triple_exits_1_and_lists_every_failure() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let client = pki.client();
    let other = pki.client();
    write_triple(
        dir.path(),
        &client.chain_pem,
        &other.key_pkcs8_pem,
        &pki.root.cert_pem,
    );
    let (code, v) = json(&[
        "--cert-dir",
        s(dir.path()),
        "--expect-dns",
        "api.production.svc",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["valid"], false);
    let mut r = reasons(&v);
    r.sort();
    assert_eq!(r, ["identity_mismatch", "key_mismatch", "wrong_usage"]);
    for f in v["failures"].as_array().unwrap() {
        assert!(
            f["message"]
                .as_str()
                .unwrap()
                .contains(dir.path().to_str().unwrap()),
            "{f}"
        );
        assert!(f["file"].as_str().unwrap().starts_with(s(dir.path())));
    }
    let text = String::from_utf8(run(&["--cert-dir", s(dir.path())]).stdout).unwrap();
    assert!(
        text.contains("FAIL key_mismatch:") && text.contains("INVALID"),
        "{text}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let no_files = run(&[]);
    assert_eq!(no_files.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_files.stderr).contains("--cert-dir"));
    assert_eq!(
        run(&["--cert-dir", "/x", "--usage", "bogus"]).status.code(),
        Some(2)
    );
    assert_eq!(
        run(&["--cert-dir", "/x", "--output", "yaml"]).status.code(),
        Some(2)
    );
    assert_eq!(run(&["--no-such-flag"]).status.code(), Some(2));
}

#[test]
fn unreadable_files_are_reported_with_the_rest_still_checked() {
    let pki = TestPki::new();
    let (dir, _) = server_dir(&pki);
    std::fs::remove_file(dir.path().join("tls.key")).unwrap();
    std::fs::remove_file(dir.path().join("ca.crt")).unwrap();
    std::fs::create_dir(dir.path().join("ca.crt")).unwrap();
    let (code, v) = json(&["--cert-dir", s(dir.path())]);
    assert_eq!(code, 1);
    assert_eq!(reasons(&v), ["missing_file", "unreadable"]);
    assert_eq!(v["failures"][0]["file"], s(&dir.path().join("tls.key")));
    assert!(
        v["leaf"]["serial"].is_string(),
        "leaf facts still reported: {v:#}"
    );
    assert_eq!(v["chain"]["result"], "not_checked");
}

#[test]
fn file_over_one_mib_is_too_large() {
    let pki = TestPki::new();
    let (dir, _) = server_dir(&pki);
    let mut big = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
    while big.len() <= 1024 * 1024 {
        big.push_str("# padding padding padding padding padding padding padding\n");
    }
    std::fs::write(dir.path().join("ca.crt"), big).unwrap();
    let (code, v) = json(&["--cert-dir", s(dir.path())]);
    assert_eq!(code, 1);
    assert_eq!(reasons(&v), ["too_large"]);
}

#[test]
fn per_file_flags_override_cert_dir_and_ca_can_live_elsewhere() {
    let pki = TestPki::new();
    let (dir, _) = server_dir(&pki);
    let ca_dir = tempfile::tempdir().unwrap();
    std::fs::rename(dir.path().join("ca.crt"), ca_dir.path().join("ca.crt")).unwrap();
    let (code, v) = json(&[
        "--cert-dir",
        s(dir.path()),
        "--ca",
        s(&ca_dir.path().join("ca.crt")),
    ]);
    assert_eq!(code, 0, "{v:#}");
    let (code, _) = json(&[
        "--cert",
        s(&dir.path().join("tls.crt")),
        "--key",
        s(&dir.path().join("tls.key")),
        "--ca",
        s(&ca_dir.path().join("ca.crt")),
    ]);
    assert_eq!(code, 0);
}

#[test]
fn flags_read_environment_and_command_line_wins() {
    let pki = TestPki::new();
    let (dir, _) = server_dir(&pki);
    let out = Command::new(bin())
        .args(["check", "--output", "json"])
        .env("MTLS_SIDECAR_CERT_DIR", dir.path())
        .env("MTLS_SIDECAR_USAGE", "client")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "server cert checked as client via env"
    );
    let out = Command::new(bin())
        .args(["check", "--usage", "server"])
        .env("MTLS_SIDECAR_CERT_DIR", dir.path())
        .env("MTLS_SIDECAR_USAGE", "client")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn kubelet_style_volume_is_read_through_its_symlinks() {
    let pki = TestPki::new();
    let leaf = pki.server();
    let dir = tempfile::tempdir().unwrap();
    mtls_sidecar::atomic_dir::write_generation(
        dir.path(),
        &[
            ("tls.crt", leaf.chain_pem.as_bytes()),
            ("tls.key", leaf.key_pkcs8_pem.as_bytes()),
            ("ca.crt", pki.root.cert_pem.as_bytes()),
        ],
    )
    .unwrap();
    assert!(std::fs::symlink_metadata(dir.path().join("tls.crt"))
        .unwrap()
        .file_type()
        .is_symlink());
    let (code, v) = json(&["--cert-dir", s(dir.path())]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["leaf"]["serial"], leaf.serial_hex.as_str());
}

#[test]
fn private_key_never_reaches_the_output() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = pki.server();
    let other = pki.server();
    // Mismatched key, key also pasted into the CA file and the cert file: every path touches key bytes.
    let cert = format!("{}{}", leaf.chain_pem, other.key_pkcs8_pem);
    write_triple(
        dir.path(),
        &cert,
        &other.key_pkcs8_pem,
        &other.key_pkcs8_pem,
    );
    let body: Vec<String> = other
        .key_pkcs8_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_string)
        .collect();
    for output in ["text", "json"] {
        let out = run(&["--cert-dir", s(dir.path()), "--output", output]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1));
        for line in &body {
            assert!(
                !all.contains(line.as_str()),
                "key material in {output} output"
            );
        }
    }
}

#[test]
fn leaf_signed_by_intermediate_shows_the_intermediate() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let leaf = pki.issue_by(
        &pki.intermediate,
        &LeafSpec::default().cn("svc").dns(&["svc"]),
    );
    write_triple(
        dir.path(),
        &leaf.chain_pem,
        &leaf.key_pkcs8_pem,
        &pki.root.cert_pem,
    );
    let (code, v) = json(&["--cert-dir", s(dir.path())]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["intermediates"].as_array().unwrap().len(), 1);
}
