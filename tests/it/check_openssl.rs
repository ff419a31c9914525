//! `check` on a PKI made with the openssl CLI exactly as our users' guide makes it (RSA 4096 CA
//! from `genrsa` + `req -x509`, RSA 2048 server and client certificates), then its bad variants.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use time::{Duration, OffsetDateTime};

use crate::support::openssl::{
    openssl, OpenSslPki, CLIENT_EXT, CLIENT_SUBJ, SERVER_EXT, SERVER_SUBJ,
};
use crate::support::{bin, require_tool};

/// Runs `check --output json` with extra args; returns exit code and report.
fn check(dir: &Path, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(bin())
        .args([
            "check",
            "--output",
            "json",
            "--cert-dir",
            dir.to_str().unwrap(),
        ])
        .args(extra)
        .output()
        .expect("run mtls-sidecar");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), v)
}

fn reasons(v: &Value) -> Vec<&str> {
    v["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap())
        .collect()
}

/// A temp dir holding the guide's `name` leaf as a kubernetes.io/tls Secret's files.
fn secret(pki: &OpenSslPki, name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    pki.copy_triple(name, dir.path());
    dir
}

#[test]
fn guide_server_certificate_is_valid_with_openssl_facts() {
    if !require_tool("openssl") {
        return;
    }
    let pki = OpenSslPki::shared();
    let dir = secret(pki, "server");
    let (code, v) = check(
        dir.path(),
        &[
            "--expect-dns",
            "api.production.svc.cluster.local",
            "--expect-dns",
            "api.example.com",
        ],
    );
    assert_eq!(code, 0, "{v:#}");
    let crt = dir.path().join("tls.crt");
    let crt = crt.to_str().unwrap();
    let serial = openssl(&["x509", "-in", crt, "-noout", "-serial"], dir.path());
    assert_eq!(
        v["leaf"]["serial"],
        serial.trim().trim_start_matches("serial=").to_lowercase()
    );
    let fp = openssl(
        &["x509", "-in", crt, "-noout", "-fingerprint", "-sha256"],
        dir.path(),
    );
    let fp = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(v["leaf"]["sha256"], fp);
    let issuer = openssl(
        &[
            "x509", "-in", crt, "-noout", "-issuer", "-nameopt", "RFC2253",
        ],
        dir.path(),
    );
    assert_eq!(
        v["leaf"]["issuer"],
        issuer.trim().trim_start_matches("issuer=")
    );
    assert_eq!(
        v["leaf"]["issuer"],
        "CN=mTLS Root CA,OU=Security,O=Example Org,ST=California,C=US"
    );
    assert_eq!(
        v["leaf"]["public_key"],
        serde_json::json!({"type": "RSA", "bits": 2048})
    );
    assert_eq!(v["key"]["type"], "RSA");
    assert_eq!(v["key"]["bits"], 2048);
    assert_eq!(v["ca"][0]["public_key"]["bits"], 4096);
    assert_eq!(v["chain"]["result"], "ok");
}

#[test]
fn guide_client_certificate_is_valid_for_client_usage() {
    if !require_tool("openssl") {
        return;
    }
    let pki = OpenSslPki::shared();
    let dir = secret(pki, "client");
    let (code, v) = check(dir.path(), &["--usage", "client"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        v["leaf"]["subject"],
        "CN=web-app,OU=Web Services,O=Example Org"
    );
    assert_eq!(v["leaf"]["ekus"], serde_json::json!(["clientAuth"]));
}

#[test]
fn guide_certificates_used_for_the_wrong_role_are_wrong_usage() {
    if !require_tool("openssl") {
        return;
    }
    let pki = OpenSslPki::shared();
    let client = secret(pki, "client");
    let (code, v) = check(client.path(), &[]);
    assert_eq!((code, reasons(&v)), (1, vec!["wrong_usage"]));
    let msg = v["failures"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("serverAuth") && msg.contains("server auth"),
        "{msg}"
    );
    let server = secret(pki, "server");
    let (code, v) = check(server.path(), &["--usage", "both"]);
    assert_eq!((code, reasons(&v)), (1, vec!["wrong_usage"]));
}

#[test]
fn traditional_key_encodings_are_accepted() {
    if !require_tool("openssl") {
        return;
    }
    let pki = OpenSslPki::shared();
    let dir = secret(pki, "server");
    let key = dir.path().join("tls.key");
    let key = key.to_str().unwrap();
    openssl(
        &["rsa", "-in", key, "-traditional", "-out", key],
        dir.path(),
    );
    assert!(std::fs::read_to_string(key)
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let (code, v) = check(dir.path(), &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["key"]["encoding"], "PKCS#1");

    let ec = tempfile::tempdir().unwrap();
    let ecparam = [
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "{key}",
    ];
    pki.sign_leaf(ec.path(), "ec", SERVER_SUBJ, SERVER_EXT, &ecparam);
    install(pki, ec.path(), "ec");
    assert!(std::fs::read_to_string(ec.path().join("tls.key"))
        .unwrap()
        .starts_with("-----BEGIN EC PRIVATE KEY-----"));
    let (code, v) = check(ec.path(), &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        v["key"],
        serde_json::json!({"type": "ECDSA", "curve": "P-256", "encoding": "SEC1"})
    );
}

/// Moves `name.crt`/`name.key` made by `sign_leaf` into place as tls.crt/tls.key + the guide's CA.
fn install(pki: &OpenSslPki, dir: &Path, name: &str) {
    std::fs::rename(dir.join(format!("{name}.crt")), dir.join("tls.crt")).unwrap();
    std::fs::rename(dir.join(format!("{name}.key")), dir.join("tls.key")).unwrap();
    std::fs::copy(pki.path("mtls-ca.crt"), dir.join("ca.crt")).unwrap();
}

#[test]
fn rsa_1024_key_is_weak_key() {
    if !require_tool("openssl") {
        return;
    }
    let pki = OpenSslPki::shared();
    let dir = tempfile::tempdir().unwrap();
    pki.sign_leaf(
        dir.path(),
        "weak",
        SERVER_SUBJ,
        SERVER_EXT,
        &["genrsa", "-out", "{key}", "1024"],
    );
    install(pki, dir.path(), "weak");
    let (code, v) = check(dir.path(), &[]);
    assert_eq!((code, reasons(&v)), (1, vec!["weak_key"]));
    assert!(v["failures"][0]["message"]
        .as_str()
        .unwrap()
        .contains("2048"));
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    if !require_tool("openssl") {
        return;
    }
    let pki = OpenSslPki::shared();
    let now = OffsetDateTime::now_utc();
    let rsa = ["genrsa", "-out", "{key}", "2048"];
    for (name, nb, na, want) in [
        (
            "expired",
            now - Duration::days(90),
            now - Duration::days(2),
            "expired",
        ),
        (
            "future",
            now + Duration::days(2),
            now + Duration::days(90),
            "not_yet_valid",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        pki.sign_leaf_dated(dir.path(), name, SERVER_SUBJ, SERVER_EXT, &rsa, nb, na);
        install(pki, dir.path(), name);
        let (code, v) = check(dir.path(), &[]);
        assert_eq!((code, reasons(&v)), (1, vec![want]), "{v:#}");
        assert_eq!(
            v["chain"]["result"], "ok",
            "chain judged apart from the leaf's dates"
        );
    }
}

#[test]
fn certificate_from_another_ca_is_untrusted_chain() {
    if !require_tool("openssl") {
        return;
    }
    let pki = OpenSslPki::shared();
    let other = OpenSslPki::generate();
    let dir = secret(pki, "server");
    std::fs::copy(other.path("mtls-ca.crt"), dir.path().join("ca.crt")).unwrap();
    let (code, v) = check(dir.path(), &[]);
    assert_eq!((code, reasons(&v)), (1, vec!["untrusted_chain"]));
    // Same CA subject, different key: the message says the CA was re-created.
    assert!(
        v["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("re-created"),
        "{v:#}"
    );
    // During CA rotation the bundle holds old and new roots: trusted again.
    let both = format!("{}{}", other.read("mtls-ca.crt"), pki.read("mtls-ca.crt"));
    std::fs::write(dir.path().join("ca.crt"), both).unwrap();
    assert_eq!(check(dir.path(), &[]).0, 0);
}

#[test]
fn server_cert_with_client_key_is_key_mismatch() {
    if !require_tool("openssl") {
        return;
    }
    let pki = OpenSslPki::shared();
    let dir = secret(pki, "server");
    std::fs::copy(pki.path("client.key"), dir.path().join("tls.key")).unwrap();
    let (code, v) = check(dir.path(), &[]);
    assert_eq!((code, reasons(&v)), (1, vec!["key_mismatch"]));
}

#[test]
fn leaf_pasted_as_ca_bundle_is_ca_not_a_ca() {
    if !require_tool("openssl") {
        return;
    }
    let pki = OpenSslPki::shared();
    let dir = secret(pki, "server");
    std::fs::copy(pki.path("server.crt"), dir.path().join("ca.crt")).unwrap();
    let (code, v) = check(dir.path(), &[]);
    assert_eq!((code, reasons(&v)), (1, vec!["ca_not_a_ca"]));
}

#[test]
fn windows_line_endings_from_openssl_files_are_accepted() {
    if !require_tool("openssl") {
        return;
    }
    let pki = OpenSslPki::shared();
    let dir = secret(pki, "server");
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        let p = dir.path().join(f);
        let text = std::fs::read_to_string(&p).unwrap().replace('\n', "\r\n");
        std::fs::write(&p, format!("# exported by hand\r\n{text}")).unwrap();
    }
    let (code, v) = check(dir.path(), &[]);
    assert_eq!(code, 0, "{v:#}");
}

#[test]
fn client_cert_with_missing_san_is_identity_mismatch() {
    if !require_tool("openssl") {
        return;
    }
    let pki = OpenSslPki::shared();
    let dir = tempfile::tempdir().unwrap();
    pki.sign_leaf(dir.path(), "c", CLIENT_SUBJ, CLIENT_EXT, &[]);
    install(pki, dir.path(), "c");
    let (code, v) = check(
        dir.path(),
        &[
            "--usage",
            "client",
            "--expect-uri",
            "spiffe://cluster.local/ns/production/sa/web-app",
        ],
    );
    assert_eq!((code, reasons(&v)), (1, vec!["identity_mismatch"]));
}

#[test]
fn rsa_8192_key_at_the_upper_bound_is_accepted() {
    if !require_tool("openssl") {
        return;
    }
    // A committed test-only key: generating 8192 bits takes ~10 s; signing with it is quick.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/rsa8192.key");
    let pki = OpenSslPki::shared();
    let dir = tempfile::tempdir().unwrap();
    let fixture = fixture.to_str().unwrap();
    pki.sign_leaf(
        dir.path(),
        "big",
        SERVER_SUBJ,
        SERVER_EXT,
        &["pkey", "-in", fixture, "-out", "{key}"],
    );
    install(pki, dir.path(), "big");
    let (code, v) = check(dir.path(), &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["key"]["bits"], 8192);
}
