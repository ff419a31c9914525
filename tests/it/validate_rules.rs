//! One test per validation rule, on rcgen PKIs, through the library API (`inspect`/`validate`).

use std::path::Path;
use std::time::SystemTime;

use mtls_sidecar::creds::load::{RawBundle, RawFile};
use mtls_sidecar::creds::paths::FileRole;
use mtls_sidecar::creds::validate::{inspect, validate, ChainStatus, Policy, Usage};
use mtls_sidecar::reason::Reason;
use time::{Duration, OffsetDateTime};

use crate::support::pki::{Eku, KeyAlg, LeafSpec, TestPki};

fn raw(cert: &str, key: &str, ca: &str) -> RawBundle {
    RawBundle {
        cert: RawFile::new(FileRole::Cert, "/v/tls.crt", cert.as_bytes().to_vec()),
        key: RawFile::new(FileRole::Key, "/v/tls.key", key.as_bytes().to_vec()),
        ca: RawFile::new(FileRole::Ca, "/v/ca.crt", ca.as_bytes().to_vec()),
        peer_ca: None,
    }
}

fn policy(usage: Usage) -> Policy {
    Policy {
        usage,
        ..Policy::default()
    }
}

/// The reason codes of every failure, sorted.
fn reasons(cert: &str, key: &str, ca: &str, policy: &Policy) -> Vec<Reason> {
    let ins = inspect(raw(cert, key, ca).into(), policy, SystemTime::now());
    assert_eq!(ins.bundle.is_some(), ins.errors.is_empty());
    let mut r: Vec<Reason> = ins.errors.iter().map(|e| e.reason()).collect();
    r.sort();
    r
}

fn server_reasons(cert: &str, key: &str, ca: &str) -> Vec<Reason> {
    reasons(cert, key, ca, &policy(Usage::Server))
}

#[test]
fn valid_server_triple_builds_a_bundle_with_its_facts() {
    let pki = TestPki::new();
    let leaf = pki.server();
    let bundle = validate(
        raw(&leaf.chain_pem, &leaf.key_pkcs8_pem, &pki.root.cert_pem),
        &policy(Usage::Server),
        SystemTime::now(),
    )
    .expect("valid");
    assert_eq!(bundle.leaf().serial, leaf.serial_hex);
    assert_eq!(bundle.leaf().sha256, leaf.sha256_hex);
    assert!(bundle
        .leaf()
        .sans
        .contains(&"DNS:api.production.svc.cluster.local".to_string()));
    assert_eq!(bundle.certified_key().cert.len(), 1);
    assert_eq!(bundle.ca_roots().roots.len(), 1);
    assert!(bundle.ca_not_after().is_some());
}

#[test]
fn every_supported_key_algorithm_and_encoding_is_accepted() {
    let pki = TestPki::new();
    for alg in [
        KeyAlg::Rsa2048,
        KeyAlg::Rsa3072,
        KeyAlg::Rsa4096,
        KeyAlg::EcdsaP256,
        KeyAlg::EcdsaP384,
        KeyAlg::Ed25519,
    ] {
        let is_rsa = matches!(alg, KeyAlg::Rsa2048 | KeyAlg::Rsa3072 | KeyAlg::Rsa4096);
        let is_ec = matches!(alg, KeyAlg::EcdsaP256 | KeyAlg::EcdsaP384);
        let leaf = pki.issue(&LeafSpec::default().cn("svc").dns(&["svc"]).alg(alg));
        let mut keys = vec![leaf.key_pkcs8_pem.clone()];
        if is_rsa {
            keys.push(leaf.key_pkcs1_pem());
        }
        if is_ec {
            keys.push(leaf.key_sec1_pem());
        }
        for key in keys {
            assert_eq!(
                server_reasons(&leaf.chain_pem, &key, &pki.root.cert_pem),
                vec![],
                "{alg:?}"
            );
        }
    }
}

#[test]
fn windows_line_endings_and_text_around_blocks_are_accepted() {
    let pki = TestPki::new();
    let leaf = pki.server();
    let crlf = |s: &str| {
        format!(
            "Bag Attributes\r\n    friendlyName: x\r\n{}\r\ntrailing\r\n",
            s.replace('\n', "\r\n")
        )
    };
    assert_eq!(
        server_reasons(
            &crlf(&leaf.chain_pem),
            &crlf(&leaf.key_pkcs8_pem),
            &crlf(&pki.root.cert_pem)
        ),
        vec![]
    );
}

#[test]
fn ca_bundle_with_old_and_new_roots_trusts_both() {
    let pki = TestPki::new();
    let new_root = TestPki::new_root("New Root CA", KeyAlg::EcdsaP256);
    let bundle = format!("{}{}", pki.root.cert_pem, new_root.cert_pem);
    let old_leaf = pki.server();
    let new_leaf = pki.issue_by(&new_root, &LeafSpec::default().cn("svc").dns(&["svc"]));
    assert_eq!(
        server_reasons(&old_leaf.chain_pem, &old_leaf.key_pkcs8_pem, &bundle),
        vec![]
    );
    assert_eq!(
        server_reasons(&new_leaf.chain_pem, &new_leaf.key_pkcs8_pem, &bundle),
        vec![]
    );
}

#[test]
fn leaf_with_intermediate_in_tls_crt_chains_to_root() {
    let pki = TestPki::new();
    let leaf = pki.issue_by(
        &pki.intermediate,
        &LeafSpec::default().cn("svc").dns(&["svc"]),
    );
    let ins = inspect(
        raw(&leaf.chain_pem, &leaf.key_pkcs8_pem, &pki.root.cert_pem).into(),
        &policy(Usage::Server),
        SystemTime::now(),
    );
    assert!(ins.errors.is_empty(), "{:?}", ins.errors);
    assert_eq!(ins.facts.intermediates.len(), 1);
    assert!(matches!(ins.facts.chain, ChainStatus::Ok { .. }));
}

#[test]
fn missing_intermediate_is_untrusted_chain_with_a_hint() {
    let pki = TestPki::new();
    let leaf = pki.issue_by(
        &pki.intermediate,
        &LeafSpec::default().cn("svc").dns(&["svc"]),
    );
    let ins = inspect(
        raw(&leaf.cert_pem, &leaf.key_pkcs8_pem, &pki.root.cert_pem).into(),
        &policy(Usage::Server),
        SystemTime::now(),
    );
    assert_eq!(ins.errors.len(), 1, "{:?}", ins.errors);
    assert_eq!(ins.errors[0].reason(), Reason::UntrustedChain);
    let msg = ins.errors[0].to_string();
    assert!(
        msg.contains("intermediate") && msg.contains("/v/tls.crt") && msg.contains("/v/ca.crt"),
        "{msg}"
    );
}

#[test]
fn leaf_from_another_ca_is_untrusted_chain() {
    let pki = TestPki::new();
    let leaf = pki.issue_by(&pki.other_root, &LeafSpec::default().cn("svc"));
    assert_eq!(
        server_reasons(&leaf.chain_pem, &leaf.key_pkcs8_pem, &pki.root.cert_pem),
        vec![Reason::UntrustedChain]
    );
}

#[test]
fn garbage_truncated_and_der_inputs_are_bad_pem() {
    let pki = TestPki::new();
    let leaf = pki.server();
    let ca = &pki.root.cert_pem;
    assert_eq!(
        server_reasons("not a certificate at all", &leaf.key_pkcs8_pem, ca),
        vec![Reason::BadPem]
    );
    let truncated = &leaf.cert_pem[..leaf.cert_pem.len() / 2];
    assert_eq!(
        server_reasons(truncated, &leaf.key_pkcs8_pem, ca),
        vec![Reason::BadPem]
    );
    let der = String::from_utf8_lossy(&leaf.cert_der).into_owned();
    assert_eq!(
        server_reasons(&der, &leaf.key_pkcs8_pem, ca),
        vec![Reason::BadPem]
    );
    assert_eq!(
        server_reasons(&leaf.chain_pem, &leaf.key_pkcs8_pem, "garbage"),
        vec![Reason::BadPem]
    );
    let corrupt_body = leaf.cert_pem.replacen("MII", "M!I", 1);
    assert_eq!(
        server_reasons(&corrupt_body, &leaf.key_pkcs8_pem, ca),
        vec![Reason::BadPem]
    );
}

#[test]
fn pem_without_certificate_is_no_certificate() {
    let pki = TestPki::new();
    let leaf = pki.server();
    // tls.crt and tls.key swapped: the message says so.
    let ins = inspect(
        raw(&leaf.key_pkcs8_pem, &leaf.chain_pem, &pki.root.cert_pem).into(),
        &policy(Usage::Server),
        SystemTime::now(),
    );
    let r: Vec<_> = ins.errors.iter().map(|e| e.reason()).collect();
    assert_eq!(r, vec![Reason::NoCertificate, Reason::NoPrivateKey]);
    assert!(
        ins.errors[0].to_string().contains("swapped"),
        "{}",
        ins.errors[0]
    );
    assert_eq!(
        server_reasons("", &leaf.key_pkcs8_pem, &pki.root.cert_pem),
        vec![Reason::NoCertificate]
    );
}

#[test]
fn key_file_without_key_is_no_private_key() {
    let pki = TestPki::new();
    let leaf = pki.server();
    assert_eq!(
        server_reasons(&leaf.chain_pem, "", &pki.root.cert_pem),
        vec![Reason::NoPrivateKey]
    );
    assert_eq!(
        server_reasons(&leaf.chain_pem, &leaf.cert_pem, &pki.root.cert_pem),
        vec![Reason::NoPrivateKey]
    );
}

#[test]
fn two_keys_are_multiple_private_keys() {
    let pki = TestPki::new();
    let leaf = pki.server();
    let other = pki.client();
    let keys = format!("{}{}", leaf.key_pkcs8_pem, other.key_pkcs8_pem);
    assert_eq!(
        server_reasons(&leaf.chain_pem, &keys, &pki.root.cert_pem),
        vec![Reason::MultiplePrivateKeys]
    );
}

#[test]
fn p521_and_encrypted_keys_are_unsupported() {
    let pki = TestPki::new();
    let leaf = pki.issue(&LeafSpec::default().cn("svc").alg(KeyAlg::EcdsaP521));
    assert_eq!(
        server_reasons(&leaf.chain_pem, &leaf.key_pkcs8_pem, &pki.root.cert_pem),
        vec![Reason::UnsupportedKey]
    );
    let encrypted =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAMCAQA=\n-----END ENCRYPTED PRIVATE KEY-----\n";
    let ins = inspect(
        raw(&pki.server().chain_pem, encrypted, &pki.root.cert_pem).into(),
        &policy(Usage::Server),
        SystemTime::now(),
    );
    assert_eq!(ins.errors.len(), 1);
    assert_eq!(ins.errors[0].reason(), Reason::UnsupportedKey);
    assert!(ins.errors[0].to_string().contains("encrypted"));
}

#[test]
fn key_of_another_certificate_is_key_mismatch() {
    let pki = TestPki::new();
    let leaf = pki.server();
    let other = pki.server();
    let ins = inspect(
        raw(&leaf.chain_pem, &other.key_pkcs8_pem, &pki.root.cert_pem).into(),
        &policy(Usage::Server),
        SystemTime::now(),
    );
    assert_eq!(ins.errors.len(), 1);
    assert_eq!(ins.errors[0].reason(), Reason::KeyMismatch);
    let msg = ins.errors[0].to_string();
    assert!(
        msg.contains("/v/tls.key") && msg.contains("/v/tls.crt") && msg.contains(&leaf.serial_hex),
        "{msg}"
    );
}

#[test]
fn expired_and_not_yet_valid_leaves_are_refused() {
    let pki = TestPki::new();
    let now = OffsetDateTime::now_utc();
    let expired = pki.issue(
        &LeafSpec::default()
            .cn("svc")
            .not_before(now - Duration::days(30))
            .not_after(now - Duration::days(1)),
    );
    assert_eq!(
        server_reasons(
            &expired.chain_pem,
            &expired.key_pkcs8_pem,
            &pki.root.cert_pem
        ),
        vec![Reason::Expired]
    );
    let future = pki.issue(
        &LeafSpec::default()
            .cn("svc")
            .not_before(now + Duration::days(1))
            .not_after(now + Duration::days(30)),
    );
    assert_eq!(
        server_reasons(&future.chain_pem, &future.key_pkcs8_pem, &pki.root.cert_pem),
        vec![Reason::NotYetValid]
    );
}

#[test]
fn eku_must_fit_the_usage() {
    let pki = TestPki::new();
    let ca = &pki.root.cert_pem;
    let client = pki.client();
    let server = pki.server();
    let none = pki.issue(&LeafSpec::default().cn("svc").eku(Eku::None));
    let both = pki.issue(&LeafSpec::default().cn("svc").eku(Eku::Both));
    let code = pki.issue(&LeafSpec::default().cn("svc").eku(Eku::CodeSigning));
    let check =
        |l: &crate::support::pki::Leaf, u| reasons(&l.chain_pem, &l.key_pkcs8_pem, ca, &policy(u));
    assert_eq!(check(&client, Usage::Server), vec![Reason::WrongUsage]);
    assert_eq!(check(&client, Usage::Client), vec![]);
    assert_eq!(check(&server, Usage::Client), vec![Reason::WrongUsage]);
    assert_eq!(check(&server, Usage::Both), vec![Reason::WrongUsage]);
    assert_eq!(check(&both, Usage::Both), vec![]);
    assert_eq!(check(&none, Usage::Both), vec![]);
    assert_eq!(check(&code, Usage::Server), vec![Reason::WrongUsage]);
}

#[test]
fn expected_sans_must_be_present() {
    let pki = TestPki::new();
    let leaf = pki.issue(
        &LeafSpec::default()
            .cn("svc")
            .dns(&["api.production.svc", "*.example.com"])
            .uris(&["spiffe://cluster.local/ns/production/sa/api"]),
    );
    let p = |dns: &[&str], uri: &[&str]| Policy {
        usage: Usage::Server,
        expect_dns: dns.iter().map(|s| s.to_string()).collect(),
        expect_uri: uri.iter().map(|s| s.to_string()).collect(),
    };
    let ca = &pki.root.cert_pem;
    let r = |pol: &Policy| reasons(&leaf.chain_pem, &leaf.key_pkcs8_pem, ca, pol);
    assert_eq!(
        r(&p(
            &["API.production.svc", "www.example.com"],
            &["spiffe://cluster.local/ns/production/sa/api"]
        )),
        vec![]
    );
    assert_eq!(r(&p(&["other.svc"], &[])), vec![Reason::IdentityMismatch]);
    assert_eq!(
        r(&p(&[], &["spiffe://cluster.local/ns/production/sa/web"])),
        vec![Reason::IdentityMismatch]
    );
}

#[test]
fn empty_ca_bundle_is_refused() {
    let pki = TestPki::new();
    let leaf = pki.server();
    assert_eq!(
        server_reasons(&leaf.chain_pem, &leaf.key_pkcs8_pem, ""),
        vec![Reason::EmptyCaBundle]
    );
    assert_eq!(
        server_reasons(&leaf.chain_pem, &leaf.key_pkcs8_pem, "\n\n"),
        vec![Reason::EmptyCaBundle]
    );
    assert_eq!(
        server_reasons(&leaf.chain_pem, &leaf.key_pkcs8_pem, &leaf.key_pkcs8_pem),
        vec![Reason::EmptyCaBundle]
    );
}

#[test]
fn leaf_in_the_ca_bundle_is_ca_not_a_ca() {
    let pki = TestPki::new();
    let leaf = pki.server();
    let bundle = format!("{}{}", pki.root.cert_pem, leaf.cert_pem);
    let ins = inspect(
        raw(&leaf.chain_pem, &leaf.key_pkcs8_pem, &bundle).into(),
        &policy(Usage::Server),
        SystemTime::now(),
    );
    let r: Vec<_> = ins.errors.iter().map(|e| e.reason()).collect();
    assert_eq!(r, vec![Reason::CaNotACa]);
    assert!(
        ins.errors[0].to_string().contains("#2"),
        "{}",
        ins.errors[0]
    );
    // The chain is still judged against the real CA in the bundle.
    assert!(matches!(ins.facts.chain, ChainStatus::Ok { .. }));
}

#[test]
fn peer_ca_is_validated_and_used_for_peers() {
    let pki = TestPki::new();
    let leaf = pki.server();
    let mut r = raw(&leaf.chain_pem, &leaf.key_pkcs8_pem, &pki.root.cert_pem);
    r.peer_ca = Some(RawFile::new(
        FileRole::PeerCa,
        "/p/ca.crt",
        pki.other_root.cert_pem.as_bytes().to_vec(),
    ));
    let bundle = validate(r, &policy(Usage::Server), SystemTime::now()).expect("valid");
    assert_eq!(bundle.peer_roots().roots.len(), 1);
    assert_ne!(
        bundle.peer_roots().roots[0].subject_public_key_info,
        bundle.ca_roots().roots[0].subject_public_key_info
    );

    let mut r = raw(&leaf.chain_pem, &leaf.key_pkcs8_pem, &pki.root.cert_pem);
    r.peer_ca = Some(RawFile::new(FileRole::PeerCa, "/p/ca.crt", Vec::new()));
    let rej = validate(r, &policy(Usage::Server), SystemTime::now()).unwrap_err();
    assert_eq!(rej.primary().reason(), Reason::EmptyCaBundle);
    assert_eq!(rej.primary().path(), Path::new("/p/ca.crt"));
}

#[test]
fn expired_intermediate_is_untrusted_chain() {
    let pki = TestPki::new();
    let now = OffsetDateTime::now_utc();
    let old_int = pki.issue_by(
        &pki.root,
        &LeafSpec::default()
            .cn("Old Intermediate")
            .ca(true)
            .eku(Eku::None)
            .not_before(now - Duration::days(60))
            .not_after(now - Duration::days(1)),
    );
    // A leaf signed by an expired intermediate: build it through the support helper.
    let leaf = pki.issue_by_leaf_ca(&old_int, &LeafSpec::default().cn("svc"));
    assert_eq!(
        server_reasons(&leaf.chain_pem, &leaf.key_pkcs8_pem, &pki.root.cert_pem),
        vec![Reason::UntrustedChain]
    );
}

#[test]
fn bundle_and_rejection_debug_never_show_the_key() {
    let pki = TestPki::new();
    let leaf = pki.server();
    let key_body: String = leaf.key_pkcs8_pem.lines().nth(1).unwrap().to_string();
    let bundle = validate(
        raw(&leaf.chain_pem, &leaf.key_pkcs8_pem, &pki.root.cert_pem),
        &policy(Usage::Server),
        SystemTime::now(),
    )
    .unwrap();
    assert!(!format!("{bundle:?}").contains(&key_body));
    let other = pki.server();
    let rej = validate(
        raw(&leaf.chain_pem, &other.key_pkcs8_pem, &pki.root.cert_pem),
        &policy(Usage::Server),
        SystemTime::now(),
    )
    .unwrap_err();
    let other_body: String = other.key_pkcs8_pem.lines().nth(1).unwrap().to_string();
    let text = format!("{rej:?} {}", rej.primary());
    assert!(!text.contains(&other_body) && !text.contains(&key_body));
}
