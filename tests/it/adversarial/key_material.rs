//! No private key byte ever leaves the process: `server --protocol http` runs at
//! `--log-level trace` through good and refused handshakes, a client denied by the allow-list,
//! four refused credential updates whose error paths handle key bytes (a mismatched key, a key
//! with corrupt base64, `tls.crt` and `tls.key` swapped, two keys in `tls.key`) and two
//! successful rotations (a SEC1 EC key, a PKCS#1 RSA key); then everything it wrote (stderr,
//! stdout) and served (`/status`, `/metrics`) is scanned for every private key involved.
//!
//! A key counts as found when any of these appears: a line of its PEM body as published (16+
//! characters; shorter ones match by chance), a 32-character window of the base64 of its DER at
//! any of the three byte alignments (so the base64 of any part of the key, such as the bare
//! scalar, is caught too, and the PEM body with its newlines removed), a 32-hex-digit window of
//! its DER (any case, `:` separators ignored), 16 consecutive DER bytes as a decimal list (a
//! `Debug` of the bytes: `48, 129, 135, ...`), or PEM armour (`BEGIN ... PRIVATE KEY`,
//! `PRIVATE KEY-----`). Windows that also occur in a certificate (shared ASN.1 prefixes, public
//! keys) are public and skipped. The bare label `PRIVATE KEY` is allowed: the refusal of swapped
//! files names the PEM label it found in `tls.crt`, which is a label, not key material.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;

use crate::support::fixture::Env;
use crate::support::pki::{Eku, KeyAlg, Leaf, LeafSpec, TestPki};
use crate::support::sidecar::Sidecar;
use crate::support::tls_client::TlsClient;
use crate::support::upstream::HttpUpstream;

/// Upper bound for anything the sidecar should do "soon".
const WAIT: Duration = Duration::from_secs(10);

/// Window lengths: base64 and hex characters, and bytes for the decimal lists.
const B64_WINDOW: usize = 32;
const HEX_WINDOW: usize = 32;
const BYTE_WINDOW: usize = 16;

/// A PEM body line shorter than this is not evidence (it matches by chance).
const MIN_LINE: usize = 16;

#[test]
fn no_private_key_material_in_logs_status_or_metrics_at_trace_level() {
    let (mut env, server) = Env::with_first(TestPki::server);
    let upstream = HttpUpstream::start();
    let sc = Sidecar::server(super::server_args(
        &env,
        "http",
        &upstream.addr(),
        &["--allow-cn", "web-app", "--log-level", "trace"],
    ));
    super::wait_ready(&sc);
    let addr = sc.listen_addr().to_string();
    let ca = env.pki.root.cert_pem.clone();
    let mut keys = KeyRegistry::default();
    keys.add(
        "server key (first generation)",
        &server,
        &[&server.key_pkcs8_pem],
    );

    // Handshakes: good (TLS 1.3 and 1.2), denied by the allow-list, untrusted, anonymous.
    let client = env.pki.client();
    keys.add("client key", &client, &[&client.key_pkcs8_pem]);
    let good = TlsClient::with_leaf(&ca, &client);
    assert_eq!(get_status(&good, &addr, &sc), 200);
    let good12 = TlsClient::builder(&ca).leaf(&client).tls12_only().build();
    assert_eq!(get_status(&good12, &addr, &sc), 200);
    let stranger = env
        .pki
        .issue(&LeafSpec::new().cn("stranger").eku(Eku::Client));
    keys.add("denied client key", &stranger, &[&stranger.key_pkcs8_pem]);
    assert_eq!(
        get_status(&TlsClient::with_leaf(&ca, &stranger), &addr, &sc),
        403
    );
    let untrusted = env
        .pki
        .issue_by(&env.pki.other_root, &TestPki::client_spec());
    keys.add(
        "untrusted client key",
        &untrusted,
        &[&untrusted.key_pkcs8_pem],
    );
    assert!(
        TlsClient::with_leaf(&ca, &untrusted)
            .get(&addr, "/")
            .is_err(),
        "a client of another CA was served"
    );
    assert!(
        TlsClient::anonymous(&ca).get(&addr, "/").is_err(),
        "a client without a certificate was served"
    );

    // Refused updates, each through the kubelet volume.
    let mismatched_leaf = env.pki.server();
    let foreign = env.pki.server();
    keys.add(
        "mismatched leaf's own key (never published)",
        &mismatched_leaf,
        &[],
    );
    keys.add("mismatched key", &foreign, &[&foreign.key_pkcs8_pem]);
    publish(
        &mut env,
        &mismatched_leaf.chain_pem,
        &foreign.key_pkcs8_pem,
        &ca,
    );
    wait_refused(&sc, &["key_mismatch"]);

    let corrupt_leaf = env.pki.server();
    let corrupt_key = corrupt_base64(&corrupt_leaf.key_pkcs8_pem);
    keys.add(
        "key with corrupt base64",
        &corrupt_leaf,
        &[&corrupt_leaf.key_pkcs8_pem, &corrupt_key],
    );
    publish(&mut env, &corrupt_leaf.chain_pem, &corrupt_key, &ca);
    wait_refused(&sc, &["bad_pem"]);

    let swapped = env.pki.server();
    keys.add(
        "key published as tls.crt",
        &swapped,
        &[&swapped.key_pkcs8_pem],
    );
    publish(&mut env, &swapped.key_pkcs8_pem, &swapped.chain_pem, &ca);
    wait_refused(&sc, &["no_certificate", "no_private_key"]);

    let (first, second) = (env.pki.server(), env.pki.server());
    keys.add("first of two keys", &first, &[&first.key_pkcs8_pem]);
    keys.add("second of two keys", &second, &[&second.key_pkcs8_pem]);
    let two_keys = format!("{}{}", first.key_pkcs8_pem, second.key_pkcs8_pem);
    publish(&mut env, &first.chain_pem, &two_keys, &ca);
    wait_refused(&sc, &["multiple_private_keys"]);
    assert_eq!(
        sc.serial().as_deref(),
        Some(server.serial_hex.as_str()),
        "a refused update replaced the served leaf"
    );

    // Successful rotations: an EC key as SEC1, then an RSA key as PKCS#1.
    let ec = env.pki.server();
    let ec_sec1 = ec.key_sec1_pem();
    keys.add("rotated EC key (SEC1)", &ec, &[&ec_sec1, &ec.key_pkcs8_pem]);
    publish(&mut env, &ec.chain_pem, &ec_sec1, &ca);
    wait_serial(&sc, &ec.serial_hex);
    assert_eq!(get_status(&good, &addr, &sc), 200);

    let rsa = env.pki.issue(&TestPki::server_spec().alg(KeyAlg::Rsa2048));
    let rsa_pkcs1 = rsa.key_pkcs1_pem();
    keys.add(
        "rotated RSA key (PKCS#1)",
        &rsa,
        &[&rsa_pkcs1, &rsa.key_pkcs8_pem],
    );
    publish(&mut env, &rsa.chain_pem, &rsa_pkcs1, &ca);
    wait_serial(&sc, &rsa.serial_hex);
    assert_eq!(get_status(&good, &addr, &sc), 200);
    assert_eq!(get_status(&good12, &addr, &sc), 200);

    // Every certificate any of these keys belongs to, and the CAs: public material.
    for cert in [
        &env.pki.root.cert_der,
        &env.pki.other_root.cert_der,
        &env.pki.intermediate.cert_der,
    ] {
        keys.public(cert);
    }
    let patterns = keys.patterns();

    let log = sc.log();
    assert!(
        log.contains(r#""level":"TRACE""#) || log.contains(r#""level":"DEBUG""#),
        "--log-level trace wrote no trace or debug line: the scan would prove little\n{log}"
    );
    let sources = [
        ("stderr", log),
        ("stdout", sc.stdout()),
        ("/status", sc.get("/status").1),
        ("/metrics", sc.metrics()),
    ];
    let mut findings = Vec::new();
    for (name, text) in &sources {
        findings.extend(patterns.scan(name, text));
    }
    assert!(
        findings.is_empty(),
        "private key material found ({} findings; scanned {}):\n{}",
        findings.len(),
        sources
            .iter()
            .map(|(n, t)| format!("{n} {} bytes", t.len()))
            .collect::<Vec<_>>()
            .join(", "),
        findings.join("\n")
    );
}

/// `GET /` with `client`: the status (panics if the request fails).
fn get_status(client: &TlsClient, addr: &str, sc: &Sidecar) -> u16 {
    client
        .get(addr, "/")
        .unwrap_or_else(|e| panic!("GET / failed: {e}\n{}", sc.log()))
        .status
}

/// Kubelet-write `tls.crt`, `tls.key` and `ca.crt` as the next generation.
fn publish(env: &mut Env, tls_crt: &str, tls_key: &str, ca: &str) {
    env.vol.write(&[
        ("tls.crt", tls_crt.as_bytes()),
        ("tls.key", tls_key.as_bytes()),
        ("ca.crt", ca.as_bytes()),
    ]);
}

/// Wait until `/status` reports a refused update with one of `reasons`.
fn wait_refused(sc: &Sidecar, reasons: &[&str]) {
    let refused = sc.wait_until(WAIT, || {
        sc.last_error_reason()
            .is_some_and(|r| reasons.contains(&r.as_str()))
    });
    assert!(
        refused,
        "no refused update with reason {reasons:?} within {WAIT:?}: {}",
        sc.status()
    );
}

/// Wait until `/status` serves `serial`.
fn wait_serial(sc: &Sidecar, serial: &str) {
    let served = sc.wait_until(WAIT, || sc.serial().as_deref() == Some(serial));
    assert!(
        served,
        "serial {serial} never served within {WAIT:?}: {}",
        sc.status()
    );
}

/// `pem` with one base64 character of its second body line replaced by `*`: still shaped
/// like a key, but refused as `bad_pem`.
fn corrupt_base64(pem: &str) -> String {
    let mut lines: Vec<String> = pem.lines().map(str::to_string).collect();
    assert!(
        lines.len() >= 4,
        "a key PEM has at least two body lines: {pem}"
    );
    let line = &mut lines[2];
    let mid = line.len() / 2;
    line.replace_range(mid..mid + 1, "*");
    lines.join("\n") + "\n"
}

/// The DER inside a PEM text (the first block).
fn pem_der(pem: &str) -> Vec<u8> {
    pkcs1::der::pem::decode_vec(pem.as_bytes())
        .unwrap_or_else(|e| panic!("PEM decodes ({e}): {pem}"))
        .1
}

/// The base64 of `der` at each of the three byte alignments.
fn base64_alignments(der: &[u8]) -> Vec<String> {
    (0..3.min(der.len()))
        .map(|skip| base64::engine::general_purpose::STANDARD.encode(&der[skip..]))
        .collect()
}

fn windows(s: &[u8], n: usize) -> impl Iterator<Item = &[u8]> {
    s.windows(n)
}

/// Every key the test created, with the texts the sidecar could have seen, and the
/// certificates (public) to tell key material from public bytes.
#[derive(Default)]
struct KeyRegistry {
    /// (name, DERs of the key in every encoding, the PEM texts as published).
    keys: Vec<(String, Vec<Vec<u8>>, Vec<String>)>,
    public_ders: Vec<Vec<u8>>,
}

impl KeyRegistry {
    /// Register `leaf`'s key as `name`, with its certificate as public material and
    /// `published` as the PEM texts the sidecar was given (plus PKCS#8, always scanned).
    fn add(&mut self, name: &str, leaf: &Leaf, published: &[&String]) {
        let mut texts: Vec<String> = published.iter().map(|s| s.to_string()).collect();
        texts.push(leaf.key_pkcs8_pem.clone());
        let mut ders: Vec<Vec<u8>> = Vec::new();
        for text in &texts {
            // A corrupt text does not decode; its lines are still scanned.
            if let Ok((_, der)) = pkcs1::der::pem::decode_vec(text.as_bytes()) {
                if !ders.contains(&der) {
                    ders.push(der);
                }
            }
        }
        ders.push(pem_der(&leaf.key_pkcs8_pem));
        ders.dedup();
        self.keys.push((name.to_string(), ders, texts));
        for cert in pkcs1::der::pem::decode_vec(leaf.chain_pem.as_bytes())
            .into_iter()
            .map(|(_, der)| der)
            .chain([leaf.cert_der.clone()])
        {
            self.public(&cert);
        }
    }

    fn public(&mut self, der: &[u8]) {
        self.public_ders.push(der.to_vec());
    }

    fn patterns(&self) -> Patterns {
        let mut public_b64 = HashSet::new();
        let mut public_hex = HashSet::new();
        let mut public_bytes = HashSet::new();
        for der in &self.public_ders {
            for b64 in base64_alignments(der) {
                public_b64.extend(windows(b64.as_bytes(), B64_WINDOW).map(<[u8]>::to_vec));
            }
            public_hex.extend(windows(hex::encode(der).as_bytes(), HEX_WINDOW).map(<[u8]>::to_vec));
            public_bytes.extend(windows(der, BYTE_WINDOW).map(<[u8]>::to_vec));
        }
        let public_text: Vec<String> = self
            .public_ders
            .iter()
            .flat_map(|der| base64_alignments(der))
            .collect();

        let mut p = Patterns::default();
        for (name, ders, texts) in &self.keys {
            for der in ders {
                for b64 in base64_alignments(der) {
                    for w in windows(b64.as_bytes(), B64_WINDOW) {
                        if !public_b64.contains(w) {
                            p.b64.entry(w.to_vec()).or_insert_with(|| name.clone());
                        }
                    }
                }
                for w in windows(hex::encode(der).as_bytes(), HEX_WINDOW) {
                    if !public_hex.contains(w) {
                        p.hex.entry(w.to_vec()).or_insert_with(|| name.clone());
                    }
                }
                for w in windows(der, BYTE_WINDOW) {
                    if !public_bytes.contains(w) {
                        p.bytes.entry(w.to_vec()).or_insert_with(|| name.clone());
                    }
                }
            }
            for text in texts {
                for line in text.lines() {
                    let line = line.trim();
                    if line.len() >= MIN_LINE
                        && !line.starts_with("-----")
                        && !public_text.iter().any(|t| t.contains(line))
                    {
                        p.lines.push((line.to_string(), name.clone()));
                    }
                }
            }
        }
        p
    }
}

/// What to look for, each mapped to the name of its key.
#[derive(Default)]
struct Patterns {
    b64: HashMap<Vec<u8>, String>,
    hex: HashMap<Vec<u8>, String>,
    bytes: HashMap<Vec<u8>, String>,
    lines: Vec<(String, String)>,
}

impl Patterns {
    /// Every finding in `text` (from `source`), as "key: what, where".
    fn scan(&self, source: &str, text: &str) -> Vec<String> {
        let mut found = Vec::new();
        let at = |offset: usize| {
            let line = text[..offset].matches('\n').count() + 1;
            let start = text[..offset]
                .char_indices()
                .rev()
                .nth(40)
                .map_or(0, |(i, _)| i);
            let end = text[offset..]
                .char_indices()
                .nth(80)
                .map_or(text.len(), |(i, _)| offset + i);
            format!("{source} line {line}: …{}…", &text[start..end])
        };
        let mut report = |key: &str, what: &str, offset: usize| {
            // One finding per key and kind per source line is enough.
            let entry = format!("key `{key}`: {what}, in {}", at(offset));
            if !found.contains(&entry) {
                found.push(entry);
            }
        };

        for (line, key) in &self.lines {
            if let Some(offset) = text.find(line.as_str()) {
                report(key, "a PEM body line", offset);
            }
        }
        for (offset, w) in text.as_bytes().windows(B64_WINDOW).enumerate() {
            if let Some(key) = self.b64.get(w) {
                report(key, "32 base64 characters of the key", offset);
            }
        }
        // Hex: runs of hex digits and `:`, separators dropped, lowercased.
        for (start, run) in runs(text, |c| c.is_ascii_hexdigit() || c == ':') {
            let digits: Vec<(usize, u8)> = run
                .char_indices()
                .filter(|(_, c)| *c != ':')
                .map(|(i, c)| (start + i, c.to_ascii_lowercase() as u8))
                .collect();
            let hex: Vec<u8> = digits.iter().map(|(_, c)| *c).collect();
            for (i, w) in hex.windows(HEX_WINDOW).enumerate() {
                if let Some(key) = self.hex.get(w) {
                    report(key, "32 hex digits of the key's DER", digits[i].0);
                }
            }
        }
        // Decimal byte lists: runs of digits, `,` and spaces.
        for (start, run) in runs(text, |c| c.is_ascii_digit() || c == ',' || c == ' ') {
            let bytes: Vec<u8> = run
                .split([',', ' '])
                .filter(|t| !t.is_empty())
                .map_while(|t| t.parse::<u8>().ok())
                .collect();
            for w in bytes.windows(BYTE_WINDOW) {
                if let Some(key) = self.bytes.get(w) {
                    report(key, "16 bytes of the key's DER as a decimal list", start);
                }
            }
        }
        for armour in [
            "BEGIN PRIVATE KEY",
            "BEGIN RSA PRIVATE KEY",
            "BEGIN EC PRIVATE KEY",
            "BEGIN ENCRYPTED PRIVATE KEY",
            "PRIVATE KEY-----",
        ] {
            if let Some(offset) = text.find(armour) {
                report("(any)", &format!("PEM armour `{armour}`"), offset);
            }
        }
        found
    }
}

/// Maximal runs of chars satisfying `keep`: (byte offset, run).
fn runs(text: &str, keep: impl Fn(char) -> bool) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (keep(c), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, &text[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

/// The test's own check: the scanner finds each kind of leak it claims to find.
#[test]
fn the_key_scanner_finds_every_form_of_a_leaked_key() {
    let env = Env::new();
    let leaf = env.pki.server();
    let mut keys = KeyRegistry::default();
    keys.add("the key", &leaf, &[&leaf.key_pkcs8_pem]);
    let patterns = keys.patterns();
    let der = pem_der(&leaf.key_pkcs8_pem);
    let body: String = leaf
        .key_pkcs8_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let second_line = leaf
        .key_pkcs8_pem
        .lines()
        .nth(2)
        .expect("a second body line");
    // The P-256 scalar: `02 01 01 04 20` (ECPrivateKey version 1, OCTET STRING of 32) precedes it.
    let scalar_offset = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("an ECPrivateKey in the PKCS#8")
        + 5;
    let leaks = [
        ("whole PEM", leaf.key_pkcs8_pem.clone()),
        (
            "JSON-escaped PEM",
            serde_json::to_string(&leaf.key_pkcs8_pem).unwrap(),
        ),
        ("one body line", format!("error near {second_line:?}")),
        ("base64 body without newlines", format!("key={body}")),
        (
            "base64 of a part",
            base64::engine::general_purpose::STANDARD
                .encode(&der[scalar_offset..scalar_offset + 30]),
        ),
        (
            "hex",
            format!(
                "der={}",
                hex::encode(&der[scalar_offset..scalar_offset + 20])
            ),
        ),
        (
            "uppercase colon hex",
            hex::encode_upper(&der[scalar_offset..scalar_offset + 20])
                .as_bytes()
                .chunks(2)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(":"),
        ),
        (
            "Debug bytes",
            format!("{:?}", &der[scalar_offset..scalar_offset + 20]),
        ),
    ];
    for (what, leak) in leaks {
        let text = format!("{{\"fields\":{{\"message\":\"x\"}}}}\nbefore {leak} after\n");
        assert!(
            !patterns.scan("test", &text).is_empty(),
            "the scanner missed a leak as {what}: {leak}"
        );
    }
    // Public material and label names are not findings.
    let public = format!(
        "{}\n{}\n{:?}\nit holds only PRIVATE KEY, not a CERTIFICATE block\n",
        leaf.cert_pem,
        hex::encode(&leaf.cert_der),
        leaf.sha256_hex
    );
    let found = patterns.scan("test", &public);
    assert!(found.is_empty(), "public material flagged: {found:?}");
}
