//! Self-tests of the test support code: the rcgen `TestPki` (EKUs, subjects,
//! chains, PKCS#1/SEC1 encodings) and the openssl-CLI `OpenSslPki`.

use std::time::Instant;

use pkcs1::der::Decode;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::Duration;
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::{GeneralName, X509Certificate};

use crate::support::openssl::{self, OpenSslPki, CLIENT_EXT, CLIENT_SUBJ, SERVER_EXT};
use crate::support::pki::{now, Eku, KeyAlg, Leaf, LeafSpec, TestPki};
use crate::support::require_tool;

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der)
        .expect("certificate parses")
        .1
}

fn pem_der(pem: &str) -> (String, Vec<u8>) {
    pkcs1::der::pem::decode_vec(pem.as_bytes())
        .map(|(label, der)| (label.to_string(), der))
        .expect("valid PEM")
}

fn eku(cert: &X509Certificate<'_>) -> Option<(bool, bool, bool)> {
    let ext = cert.extended_key_usage().expect("EKU parses")?;
    Some((
        ext.value.server_auth,
        ext.value.client_auth,
        ext.value.code_signing,
    ))
}

fn dns_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Some(san) = cert.subject_alternative_name().expect("SAN parses") else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

fn server_auth() -> webpki::KeyUsage {
    webpki::KeyUsage::server_auth()
}

/// webpki (what the sidecar builds on) accepts `leaf` under `root` for `usage`.
fn webpki_verifies(leaf: &Leaf, root_der: &[u8], usage: webpki::KeyUsage) -> bool {
    let root = CertificateDer::from(root_der.to_vec());
    let anchor = webpki::anchor_from_trusted_cert(&root).expect("anchor");
    let mut chain: Vec<CertificateDer<'static>> = leaf
        .chain_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .map(|block| CertificateDer::from(pem_der(block).1))
        .collect();
    let ee_der = chain.remove(0);
    let ee = webpki::EndEntityCert::try_from(&ee_der).expect("end entity parses");
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &chain,
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .is_ok()
}

#[test]
fn testpki_server_and_client_leaves() {
    let started = Instant::now();
    let pki = TestPki::new();
    eprintln!("TestPki::new() took {:?}", started.elapsed());

    let server = pki.server();
    let cert = parse(&server.cert_der);
    assert_eq!(eku(&cert), Some((true, false, false)));
    assert_eq!(
        dns_sans(&cert),
        [
            "api.production.svc.cluster.local",
            "api.production.svc",
            "api.production"
        ]
    );
    let bc = cert.basic_constraints().unwrap().expect("basicConstraints");
    assert!(!bc.value.ca);
    assert_eq!(server.chain_pem, server.cert_pem);
    assert_eq!(server.sha256_hex.len(), 64);
    assert!(!server.serial_hex.starts_with("00") && !server.serial_hex.contains(':'));
    assert_eq!(server.serial_hex.len() % 2, 0);
    assert_eq!(
        BigUint::parse_bytes(server.serial_hex.as_bytes(), 16).as_ref(),
        Some(&cert.serial)
    );
    assert!(webpki_verifies(&server, &pki.root.cert_der, server_auth()));
    assert!(!webpki_verifies(
        &server,
        &pki.root.cert_der,
        webpki::KeyUsage::client_auth()
    ));
    assert!(!webpki_verifies(
        &server,
        &pki.other_root.cert_der,
        server_auth()
    ));

    let client = pki.client();
    let cert = parse(&client.cert_der);
    assert_eq!(eku(&cert), Some((false, true, false)));
    assert_eq!(
        cert.subject().to_string(),
        "O=Example Org, OU=Web Services, CN=web-app"
    );
    assert!(webpki_verifies(
        &client,
        &pki.root.cert_der,
        webpki::KeyUsage::client_auth()
    ));

    let none = pki.issue(&LeafSpec::new().eku(Eku::None));
    assert_eq!(eku(&parse(&none.cert_der)), None);
    let code = pki.issue(&LeafSpec::new().eku(Eku::CodeSigning));
    assert_eq!(eku(&parse(&code.cert_der)), Some((false, false, true)));
    let ca_leaf = pki.issue(&LeafSpec::new().is_ca(true));
    assert!(parse(&ca_leaf.cert_der).is_ca());

    let ca = parse(&pki.root.cert_der);
    assert!(ca.is_ca());
    let ku = ca.key_usage().unwrap().expect("keyUsage").value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
}

#[test]
fn testpki_intermediate_chain_and_validity() {
    let pki = TestPki::new();
    let leaf = pki.issue_by(&pki.intermediate, &TestPki::server_spec());
    // The builder takes slices of &str and of String.
    let owned = vec![String::from("b.svc")];
    let spec = LeafSpec::default().dns(&["a.svc"]).dns(&owned);
    let spec = spec
        .uris(&["spiffe://cluster.local/ns/a/sa/b"])
        .ips(&["10.0.0.1".parse().unwrap()]);
    assert_eq!(spec.dns, owned);
    let with_sans = pki.issue(&spec.dns(&["*.example.com", "b.svc"]));
    assert_eq!(
        dns_sans(&parse(&with_sans.cert_der)),
        ["*.example.com", "b.svc"]
    );
    assert_eq!(leaf.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(leaf.chain_pem.ends_with(&pki.intermediate.cert_pem));
    assert!(webpki_verifies(&leaf, &pki.root.cert_der, server_auth()));

    // A CA-capable leaf signs too (chain: leaf, that CA leaf).
    let int_spec = LeafSpec::new().cn("Leaf CA").ca(true).eku(Eku::None);
    let int_leaf = pki.issue(&int_spec);
    let signed = pki.issue_by_leaf_ca(&int_leaf, &TestPki::server_spec());
    assert_eq!(signed.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(webpki_verifies(&signed, &pki.root.cert_der, server_auth()));
    let old_int = pki.issue(&int_spec.expired());
    let signed = pki.issue_by_leaf_ca(&old_int, &TestPki::server_spec());
    assert!(!webpki_verifies(&signed, &pki.root.cert_der, server_auth()));
    let p521_int = pki.issue(&LeafSpec::new().is_ca(true).alg(KeyAlg::EcdsaP521));
    let signed = pki.issue_by(&p521_int.to_ca(), &TestPki::server_spec());
    assert_eq!(parse(&signed.cert_der).issuer().to_string(), "CN=test-leaf");

    let expired = pki.issue(&LeafSpec::new().expired());
    assert!(!webpki_verifies(
        &expired,
        &pki.root.cert_der,
        server_auth()
    ));
    let early = pki.issue(&LeafSpec::new().not_yet_valid());
    assert!(!webpki_verifies(&early, &pki.root.cert_der, server_auth()));
}

#[test]
fn testpki_every_key_alg_and_encoding() {
    let pki = TestPki::new();
    for alg in [
        KeyAlg::Rsa2048,
        KeyAlg::Rsa3072,
        KeyAlg::Rsa4096,
        KeyAlg::EcdsaP256,
        KeyAlg::EcdsaP384,
        KeyAlg::EcdsaP521,
        KeyAlg::Ed25519,
    ] {
        let started = Instant::now();
        let leaf = pki.issue(&TestPki::server_spec().alg(alg));
        eprintln!("issuing a {alg:?} leaf took {:?}", started.elapsed());
        let cert = parse(&leaf.cert_der);
        let spki = &cert.public_key().subject_public_key.data;
        let (label, _) = pem_der(&leaf.key_pkcs8_pem);
        assert_eq!(label, "PRIVATE KEY");

        let other = if alg.is_rsa() {
            let pem = leaf.key_pkcs1_pem();
            let (label, der) = pem_der(&pem);
            assert_eq!(label, "RSA PRIVATE KEY");
            let key = pkcs1::RsaPrivateKey::from_der(&der).expect("PKCS#1 parses");
            let bits = match alg {
                KeyAlg::Rsa2048 => 2048,
                KeyAlg::Rsa3072 => 3072,
                _ => 4096,
            };
            assert_eq!(key.modulus.as_bytes().len() * 8, bits, "{alg:?}");
            Some(pem)
        } else if alg.is_ec() {
            let pem = leaf.key_sec1_pem();
            let (label, der) = pem_der(&pem);
            assert_eq!(label, "EC PRIVATE KEY");
            let key = sec1::EcPrivateKey::from_der(&der).expect("SEC1 parses");
            assert!(key.parameters.and_then(|p| p.named_curve()).is_some());
            assert_eq!(key.public_key, Some(&spki[..]));
            Some(pem)
        } else {
            None
        };
        // The converted key is the same key: aws-lc (via rcgen) reads it back.
        if let Some(pem) = other {
            let kp = rcgen::KeyPair::from_pem(&pem).expect("rcgen reads the converted key");
            assert_eq!(kp.public_key_raw(), &spki[..], "{alg:?}");
        }
    }
}

#[test]
fn sec1_and_pkcs1_are_read_by_openssl() {
    if !require_tool("openssl") {
        return;
    }
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    for (alg, cmd) in [
        (KeyAlg::EcdsaP256, "ec"),
        (KeyAlg::EcdsaP384, "ec"),
        (KeyAlg::Rsa2048, "rsa"),
    ] {
        let leaf = pki.issue(&LeafSpec::new().alg(alg));
        let pem = if alg.is_rsa() {
            leaf.key_pkcs1_pem()
        } else {
            leaf.key_sec1_pem()
        };
        let key = dir.path().join("k.pem");
        std::fs::write(&key, &pem).unwrap();
        openssl::openssl(&[cmd, "-in", "k.pem", "-noout", "-check"], dir.path());
        // Byte for byte what `openssl ec` / `openssl rsa -traditional` writes.
        // (Never assert_eq! on keys: the failure message would print them.)
        let rewritten = match cmd {
            "ec" => openssl::openssl(&["ec", "-in", "k.pem"], dir.path()),
            _ => openssl::openssl(&["rsa", "-in", "k.pem", "-traditional"], dir.path()),
        };
        assert!(
            rewritten == pem,
            "{alg:?} key differs from openssl's encoding"
        );
        // Same public key as the certificate.
        std::fs::write(dir.path().join("c.pem"), &leaf.cert_pem).unwrap();
        let from_key = openssl::openssl(&["pkey", "-in", "k.pem", "-pubout"], dir.path());
        let from_cert =
            openssl::openssl(&["x509", "-in", "c.pem", "-noout", "-pubkey"], dir.path());
        assert_eq!(from_key, from_cert, "{alg:?}");
        // serial_hex and sha256_hex are what openssl prints, lowercased, no colons.
        let serial = openssl::openssl(&["x509", "-in", "c.pem", "-noout", "-serial"], dir.path());
        assert_eq!(
            serial.trim().to_lowercase(),
            format!("serial={}", leaf.serial_hex)
        );
        let fp = openssl::openssl(
            &["x509", "-in", "c.pem", "-noout", "-fingerprint", "-sha256"],
            dir.path(),
        );
        let fp = fp.trim().rsplit('=').next().unwrap().replace(':', "");
        assert_eq!(fp.to_lowercase(), leaf.sha256_hex);
    }
}

#[test]
fn openssl_pki_like_the_users_guide() {
    if !require_tool("openssl") {
        return;
    }
    eprintln!("{}", openssl::openssl_version());
    let started = Instant::now();
    let pki = OpenSslPki::shared();
    eprintln!("OpenSslPki::shared() took {:?}", started.elapsed());
    let d = pki.dir.path();
    let out = openssl::openssl(
        &[
            "verify",
            "-CAfile",
            "mtls-ca.crt",
            "server.crt",
            "client.crt",
        ],
        d,
    );
    assert!(
        out.contains("server.crt: OK") && out.contains("client.crt: OK"),
        "{out}"
    );

    let server_pem = pki.read("server.crt");
    let server_der = pem_der(&server_pem).1;
    let server = parse(&server_der);
    assert_eq!(eku(&server), Some((true, false, false)));
    assert!(dns_sans(&server).contains(&"api.example.com".to_string()));
    let client_der = pem_der(&pki.read("client.crt")).1;
    assert_eq!(eku(&parse(&client_der)), Some((false, true, false)));
    let ca_der = pem_der(&pki.read("mtls-ca.crt")).1;
    assert!(parse(&ca_der).is_ca());
    assert!(pki.read("server.key").contains("BEGIN PRIVATE KEY"));

    let dest = tempfile::tempdir().unwrap();
    pki.copy_triple("client", dest.path());
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(dest.path().join(f).is_file(), "{f}");
    }
}

#[test]
fn openssl_bad_variants() {
    if !require_tool("openssl") {
        return;
    }
    let pki = OpenSslPki::shared();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let weak = pki.sign_leaf(
        d,
        "weak",
        CLIENT_SUBJ,
        CLIENT_EXT,
        &["genrsa", "-out", "{key}", "1024"],
    );
    let text = openssl::openssl(&["x509", "-in", "weak.crt", "-noout", "-text"], d);
    assert!(text.contains("(1024 bit)"), "weak key is 1024-bit");
    assert!(weak.key.is_file());

    let ec = pki.sign_leaf(
        d,
        "ec",
        "/CN=ec",
        SERVER_EXT,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "{key}",
        ],
    );
    assert!(std::fs::read_to_string(&ec.key)
        .unwrap()
        .contains("BEGIN EC PRIVATE KEY"));

    let now = now();
    pki.sign_leaf_dated(
        d,
        "expired",
        CLIENT_SUBJ,
        CLIENT_EXT,
        &[],
        now - Duration::days(30),
        now - Duration::days(1),
    );
    let ca = pki.path("mtls-ca.crt");
    let ca = ca.to_str().unwrap();
    let out = openssl::openssl_output(&["verify", "-CAfile", ca, "expired.crt"], d);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("expired")
            || String::from_utf8_lossy(&out.stderr).contains("expired")
    );
    let subject = openssl::openssl(&["x509", "-in", "expired.crt", "-noout", "-subject"], d);
    assert!(
        subject.contains("O = Example Org, OU = Web Services, CN = web-app"),
        "{subject}"
    );

    pki.sign_leaf_dated(
        d,
        "future",
        "/CN=future",
        SERVER_EXT,
        &[],
        now + Duration::days(1),
        now + Duration::days(30),
    );
    let out = openssl::openssl_output(&["verify", "-CAfile", ca, "future.crt"], d);
    assert!(!out.status.success());
    let ok = openssl::openssl(&["verify", "-CAfile", ca, "weak.crt", "ec.crt"], d);
    assert!(ok.contains("ec.crt: OK"), "{ok}");
}
