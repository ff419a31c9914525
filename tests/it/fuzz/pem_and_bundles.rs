//! Fuzz target: credential validation (`creds::validate`) and the `check` report on arbitrary
//! bytes and on structured mutations of valid cert/key/CA triples (truncation, bit flips in the
//! base64 and in the DER, broken or swapped BEGIN/END lines, CRLF, extra and foreign blocks,
//! garbage, wrong labels, empty and whitespace-only files, very long lines, swapped files).
//!
//! An oracle independent of the validator (rustls-pki-types' PEM parser and x509-parser, on
//! the mutated bytes) finds the fixture leaf that heads `tls.crt`, if any, and sorts each file
//! into: intact (holds what a valid set for that leaf holds), broken (cannot be part of a valid
//! set any more), foreign (the key of another certificate) or changed (anything else). Then:
//! - nothing panics;
//! - an intact triple validates; a triple with a broken file or a foreign key does not, and a
//!   file broken at the parse level is named by one of the failures;
//! - whatever validates really is a fixture leaf whose key signs for it (checked by signing
//!   and verifying, not with the validator's own key-match test);
//! - no failure message, no `Debug` output and no `check` JSON contains key material;
//! - `check` reaches the same verdict and reasons as `validate` for the same files.

use std::path::Path;
use std::sync::LazyLock;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mtls_sidecar::check::check;
use mtls_sidecar::creds::load::{RawBundle, RawFile};
use mtls_sidecar::creds::paths::{CredentialPaths, FileRole};
use mtls_sidecar::creds::validate::{validate, Bundle, Policy, Rejection, ValidateError};
use mtls_sidecar::reason::Reason;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use rustls::SignatureScheme;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::CertificateDer;

use crate::support::pki::{KeyAlg, Leaf, TestPki};

const REGRESSIONS: &str = "tests/it/fuzz/proptest-regressions/pem_and_bundles.txt";

// ---------------------------------------------------------------------------------------------
// The fixture: a small valid PKI, made once per test process.

/// One encoding of one private key.
struct Key {
    /// Which key pair (encodings of the same pair share it).
    id: usize,
    kind: SectionKind,
    der: Vec<u8>,
    pem: String,
}

/// A valid `tls.crt` / `tls.key` / `ca.crt` set.
struct Triple {
    name: &'static str,
    cert: String,
    key: usize,
    ca: String,
    leaf: Vec<u8>,
    chain: Vec<Vec<u8>>,
    /// CA certificates that, alone in `ca.crt`, would anchor this leaf.
    anchors: Vec<Vec<u8>>,
}

struct Fixture {
    triples: Vec<Triple>,
    keys: Vec<Key>,
    /// Every certificate of the PKI, as PEM and DER.
    cert_pems: Vec<String>,
    certs: Vec<Vec<u8>>,
    /// The leaf certificates (not CAs).
    leaves: Vec<Vec<u8>>,
    /// Strings that must never show up in any output: key base64 lines and key DER hex.
    secrets: Vec<String>,
}

impl Triple {
    fn file(&self, role: Role, fx: &Fixture) -> String {
        match role {
            Role::Cert => self.cert.clone(),
            Role::Key => fx.keys[self.key].pem.clone(),
            Role::Ca => self.ca.clone(),
        }
    }
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(build_fixture);

fn pem_der(pem: &str) -> (SectionKind, Vec<u8>) {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("one block")
        .expect("valid PEM")
}

fn build_fixture() -> Fixture {
    let pki = TestPki::new();
    let spec = TestPki::server_spec;
    let ec = pki.server();
    let via_intermediate = pki.issue_by(&pki.intermediate, &spec());
    let ed = pki.issue(&spec().alg(KeyAlg::Ed25519));
    let rsa = pki.issue(&spec().alg(KeyAlg::Rsa2048));
    // A second P-256 leaf of the same root: the classic wrong key for `ecdsa-*`.
    let stray = pki.issue(&spec());

    let mut keys = Vec::new();
    let mut add_key = |id: usize, pem: String| {
        let (kind, der) = pem_der(&pem);
        keys.push(Key { id, kind, der, pem });
        keys.len() - 1
    };
    let ec_pkcs8 = add_key(0, ec.key_pkcs8_pem.clone());
    let ec_sec1 = add_key(0, ec.key_sec1_pem());
    let int_pkcs8 = add_key(1, via_intermediate.key_pkcs8_pem.clone());
    let ed_pkcs8 = add_key(2, ed.key_pkcs8_pem.clone());
    let rsa_pkcs8 = add_key(3, rsa.key_pkcs8_pem.clone());
    let rsa_pkcs1 = add_key(3, rsa.key_pkcs1_pem());
    let stray_pkcs8 = add_key(4, stray.key_pkcs8_pem.clone());
    add_key(4, stray.key_sec1_pem());

    let root = pki.root.cert_der.clone();
    let by_root = |name, leaf: &Leaf, key| Triple {
        name,
        cert: leaf.chain_pem.clone(),
        key,
        ca: pki.root.cert_pem.clone(),
        leaf: leaf.cert_der.clone(),
        chain: vec![leaf.cert_der.clone()],
        anchors: vec![root.clone()],
    };
    let triples = vec![
        by_root("ecdsa-pkcs8", &ec, ec_pkcs8),
        by_root("ecdsa-sec1", &ec, ec_sec1),
        Triple {
            name: "ecdsa-via-intermediate",
            cert: via_intermediate.chain_pem.clone(),
            key: int_pkcs8,
            ca: pki.root.cert_pem.clone(),
            leaf: via_intermediate.cert_der.clone(),
            chain: vec![
                via_intermediate.cert_der.clone(),
                pki.intermediate.cert_der.clone(),
            ],
            anchors: vec![root.clone(), pki.intermediate.cert_der.clone()],
        },
        by_root("ed25519", &ed, ed_pkcs8),
        by_root("rsa-pkcs8", &rsa, rsa_pkcs8),
        by_root("rsa-pkcs1", &rsa, rsa_pkcs1),
        by_root("ecdsa-stray", &stray, stray_pkcs8),
    ];

    let leaves: Vec<&Leaf> = vec![&ec, &via_intermediate, &ed, &rsa, &stray];
    let mut cert_pems = vec![
        pki.root.cert_pem.clone(),
        pki.other_root.cert_pem.clone(),
        pki.intermediate.cert_pem.clone(),
    ];
    cert_pems.extend(leaves.iter().map(|l| l.cert_pem.clone()));
    let certs = cert_pems.iter().map(|p| pem_der(p).1).collect();

    let mut secrets = Vec::new();
    for k in &keys {
        secrets.extend(
            k.pem
                .lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .map(str::to_string),
        );
        secrets.extend(k.der.chunks(16).filter(|c| c.len() == 16).map(hex::encode));
    }

    Fixture {
        triples,
        keys,
        cert_pems,
        certs,
        leaves: leaves.iter().map(|l| l.cert_der.clone()).collect(),
        secrets,
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Cert,
    Key,
    Ca,
}

const ROLES: [Role; 3] = [Role::Cert, Role::Key, Role::Ca];

/// Labels for relabelled and injected blocks: the supported ones, ones the parser skips, and
/// private-key formats this tool refuses.
const LABELS: &[&str] = &[
    "CERTIFICATE",
    "PRIVATE KEY",
    "EC PRIVATE KEY",
    "RSA PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
    "DSA PRIVATE KEY",
    "OPENSSH PRIVATE KEY",
    "PUBLIC KEY",
    "X509 CRL",
    "TRUSTED CERTIFICATE",
    "CERTIFICATE REQUEST",
    "",
    "private key",
];

/// Where a file's bytes start from, before edits.
#[derive(Clone, Debug)]
enum Source {
    Own,
    /// Another file of the same triple (tls.crt and tls.key swapped, CA in the wrong place).
    Role(Role),
    /// Any fixture key, in any encoding (for `tls.key`: often another certificate's key).
    FixtureKey(Index),
    Empty,
    Whitespace(String),
    Random(Vec<u8>),
    /// Random bytes as the body of a block with a fixture label.
    Armored(Index, Vec<u8>),
}

#[derive(Clone, Debug)]
enum DerOp {
    Flip(u8),
    Set(u8),
    Insert(u8),
    Delete,
    Truncate,
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Begin,
    End,
    Both,
}

#[derive(Clone, Debug)]
enum Extra {
    Key(Index),
    Cert(Index),
    Labeled(Index, Vec<u8>),
}

#[derive(Clone, Debug)]
enum Edit {
    /// Cut the file at any byte.
    Truncate(Index),
    /// Flip one bit of one byte of a block's base64 body.
    FlipBodyBit(Index, u8),
    /// Decode a block, change its DER, encode it again (valid base64, damaged content).
    Der(Index, Index, DerOp),
    SwapBeginEnd(Index),
    DuplicateLine(Index),
    DropLine(Index),
    SwapLines(Index, Index),
    Crlf,
    CrOnly,
    Indent(String),
    TrailingSpace(String),
    Garbage(Index, String),
    Block(Index, Extra),
    Relabel(Index, Index, Which),
    /// A block's base64 on one line.
    JoinBody(Index),
    /// A very long line (base64-like or text) anywhere.
    LongLine(Index, usize, bool),
}

/// What happens to one file: where it starts from and the edits applied in order.
#[derive(Clone, Debug)]
struct FilePlan {
    source: Source,
    edits: Vec<Edit>,
}

/// A triple and, per role, the plan for its file (`None`: left as it is).
#[derive(Clone, Debug)]
struct Plan {
    triple: Index,
    files: [Option<FilePlan>; 3],
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        14 => Just(Source::Own),
        1 => prop_oneof![Just(Role::Cert), Just(Role::Key), Just(Role::Ca)].prop_map(Source::Role),
        2 => any::<Index>().prop_map(Source::FixtureKey),
        1 => Just(Source::Empty),
        1 => "[ \t\r\n]{1,40}".prop_map(Source::Whitespace),
        1 => vec(any::<u8>(), 0..512).prop_map(Source::Random),
        1 => (any::<Index>(), vec(any::<u8>(), 0..512)).prop_map(|(l, b)| Source::Armored(l, b)),
    ]
}

fn der_op() -> impl Strategy<Value = DerOp> {
    prop_oneof![
        4 => (0u8..8).prop_map(DerOp::Flip),
        1 => any::<u8>().prop_map(DerOp::Set),
        1 => any::<u8>().prop_map(DerOp::Insert),
        1 => Just(DerOp::Delete),
        1 => Just(DerOp::Truncate),
    ]
}

fn which() -> impl Strategy<Value = Which> {
    prop_oneof![Just(Which::Begin), Just(Which::End), Just(Which::Both)]
}

fn extra() -> impl Strategy<Value = Extra> {
    prop_oneof![
        any::<Index>().prop_map(Extra::Key),
        any::<Index>().prop_map(Extra::Cert),
        (any::<Index>(), vec(any::<u8>(), 0..128)).prop_map(|(l, b)| Extra::Labeled(l, b)),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    // Garbage is free text with no `-`, so that it never forms a BEGIN/END line by accident.
    let garbage = "[a-zA-Z0-9 =:,./+\t]{0,80}";
    prop_oneof![
        2 => any::<Index>().prop_map(Edit::Truncate),
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::FlipBodyBit(i, b)),
        5 => (any::<Index>(), any::<Index>(), der_op()).prop_map(|(b, i, op)| Edit::Der(b, i, op)),
        1 => any::<Index>().prop_map(Edit::SwapBeginEnd),
        2 => any::<Index>().prop_map(Edit::DuplicateLine),
        2 => any::<Index>().prop_map(Edit::DropLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        1 => Just(Edit::Crlf),
        1 => Just(Edit::CrOnly),
        1 => "[ \t]{1,4}".prop_map(Edit::Indent),
        1 => "[ \t]{1,4}".prop_map(Edit::TrailingSpace),
        2 => (any::<Index>(), garbage).prop_map(|(i, g)| Edit::Garbage(i, g)),
        2 => (any::<Index>(), extra()).prop_map(|(i, e)| Edit::Block(i, e)),
        2 => (any::<Index>(), any::<Index>(), which()).prop_map(|(b, l, w)| Edit::Relabel(b, l, w)),
        1 => any::<Index>().prop_map(Edit::JoinBody),
        1 => (any::<Index>(), 1_000usize..100_000, any::<bool>())
            .prop_map(|(i, n, b64)| Edit::LongLine(i, n, b64)),
    ]
}

fn file_plan() -> impl Strategy<Value = FilePlan> {
    (source(), vec(edit(), 0..4)).prop_map(|(source, edits)| FilePlan { source, edits })
}

fn plan() -> impl Strategy<Value = Plan> {
    let file = || proptest::option::weighted(0.6, file_plan());
    (any::<Index>(), file(), file(), file()).prop_map(|(triple, c, k, a)| Plan {
        triple,
        files: [c, k, a],
    })
}

fn armor(label: &str, der: &[u8]) -> String {
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in wrap64(&B64.encode(der)) {
        out.push_str(std::str::from_utf8(&line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn wrap64(b64: &str) -> Vec<Vec<u8>> {
    b64.as_bytes().chunks(64).map(<[u8]>::to_vec).collect()
}

fn split_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect()
}

/// (BEGIN line, END line) of each block, as the lines stand.
fn blocks(lines: &[Vec<u8>]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].starts_with(b"-----BEGIN ") {
            if let Some(end) = (i + 1..lines.len()).find(|&j| lines[j].starts_with(b"-----END ")) {
                out.push((i, end));
                i = end;
            }
        }
        i += 1;
    }
    out
}

fn pick<T: Copy>(items: &[T], at: &Index) -> Option<T> {
    (!items.is_empty()).then(|| items[at.index(items.len())])
}

fn apply(bytes: Vec<u8>, edit: &Edit, fx: &Fixture) -> Vec<u8> {
    let mut lines = split_lines(&bytes);
    let insert_at = |at: &Index, len: usize| at.index(len + 1);
    match edit {
        Edit::Truncate(at) => {
            let mut b = bytes;
            b.truncate(at.index(b.len() + 1));
            return b;
        }
        Edit::FlipBodyBit(at, bit) => {
            let spots: Vec<(usize, usize)> = blocks(&lines)
                .into_iter()
                .flat_map(|(b, e)| b + 1..e)
                .flat_map(|l| (0..lines[l].len()).map(move |c| (l, c)))
                .collect();
            if let Some((l, c)) = pick(&spots, at) {
                lines[l][c] ^= 1 << bit;
            }
        }
        Edit::Der(block, at, op) => {
            if let Some((b, e)) = pick(&blocks(&lines), block) {
                let body: Vec<u8> = lines[b + 1..e]
                    .concat()
                    .into_iter()
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect();
                if let Ok(mut der) = B64.decode(&body) {
                    let i = at.index(der.len() + 1);
                    match op {
                        DerOp::Flip(bit) if i < der.len() => der[i] ^= 1 << bit,
                        DerOp::Set(v) if i < der.len() => der[i] = *v,
                        DerOp::Delete if i < der.len() => {
                            der.remove(i);
                        }
                        DerOp::Insert(v) => der.insert(i, *v),
                        DerOp::Truncate => der.truncate(i),
                        _ => {}
                    }
                    lines.splice(b + 1..e, wrap64(&B64.encode(&der)));
                }
            }
        }
        Edit::SwapBeginEnd(block) => {
            if let Some((b, e)) = pick(&blocks(&lines), block) {
                lines.swap(b, e);
            }
        }
        Edit::DuplicateLine(at) => {
            let i = at.index(lines.len());
            lines.insert(i, lines[i].clone());
        }
        Edit::DropLine(at) => {
            lines.remove(at.index(lines.len()));
            if lines.is_empty() {
                lines.push(Vec::new());
            }
        }
        Edit::SwapLines(a, b) => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        Edit::Crlf => return lines.join(&b"\r\n"[..]),
        Edit::CrOnly => return lines.join(&b'\r'),
        Edit::Indent(ws) => {
            for l in lines.iter_mut().filter(|l| !l.is_empty()) {
                l.splice(0..0, ws.bytes());
            }
        }
        Edit::TrailingSpace(ws) => {
            for l in lines.iter_mut().filter(|l| !l.is_empty()) {
                l.extend(ws.bytes());
            }
        }
        Edit::Garbage(at, text) => lines.insert(insert_at(at, lines.len()), text.clone().into()),
        Edit::Block(at, extra) => {
            let pem = match extra {
                Extra::Key(k) => fx.keys[k.index(fx.keys.len())].pem.clone(),
                Extra::Cert(c) => fx.cert_pems[c.index(fx.cert_pems.len())].clone(),
                Extra::Labeled(l, body) => armor(LABELS[l.index(LABELS.len())], body),
            };
            let block: Vec<Vec<u8>> = pem.lines().map(|l| l.as_bytes().to_vec()).collect();
            let i = insert_at(at, lines.len());
            lines.splice(i..i, block);
        }
        Edit::Relabel(block, label, which) => {
            if let Some((b, e)) = pick(&blocks(&lines), block) {
                let label = LABELS[label.index(LABELS.len())];
                if matches!(which, Which::Begin | Which::Both) {
                    lines[b] = format!("-----BEGIN {label}-----").into_bytes();
                }
                if matches!(which, Which::End | Which::Both) {
                    lines[e] = format!("-----END {label}-----").into_bytes();
                }
            }
        }
        Edit::JoinBody(block) => {
            if let Some((b, e)) = pick(&blocks(&lines), block) {
                let body = lines[b + 1..e].concat();
                lines.splice(b + 1..e, [body]);
            }
        }
        Edit::LongLine(at, n, b64) => {
            let line: Vec<u8> = if *b64 {
                b"QUJD".iter().copied().cycle().take(*n).collect()
            } else {
                b"long line ".iter().copied().cycle().take(*n).collect()
            };
            lines.insert(insert_at(at, lines.len()), line);
        }
    }
    lines.join(&b'\n')
}

/// The three files a plan produces, and the triple they came from.
fn render(plan: &Plan, fx: &'static Fixture) -> (&'static Triple, [Vec<u8>; 3]) {
    let t = &fx.triples[plan.triple.index(fx.triples.len())];
    let files = ROLES.map(|role| {
        let own = t.file(role, fx).into_bytes();
        let Some(fp) = &plan.files[role as usize] else {
            return own;
        };
        let start = match &fp.source {
            Source::Own => own,
            Source::Role(r) => t.file(*r, fx).into_bytes(),
            Source::FixtureKey(k) => fx.keys[k.index(fx.keys.len())].pem.clone().into_bytes(),
            Source::Empty => Vec::new(),
            Source::Whitespace(ws) => ws.clone().into_bytes(),
            Source::Random(b) => b.clone(),
            Source::Armored(l, b) => armor(LABELS[l.index(LABELS.len())], b).into_bytes(),
        };
        fp.edits.iter().fold(start, |b, e| apply(b, e, fx))
    });
    (t, files)
}

// ---------------------------------------------------------------------------------------------
// The oracle.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Holds what the triple's file held (its certificates, or the same key pair).
    Intact,
    /// Cannot parse as what it was: the validator must fail and name this file.
    BrokenParse,
    /// Parses, but can no longer form a valid set (another leaf first, no anchor left).
    BrokenSemantic,
    /// The key of another certificate: must never validate.
    Foreign,
    /// Anything else: may or may not validate, but what validates must be sound.
    Changed,
}

fn pem_items(bytes: &[u8]) -> Option<Vec<(SectionKind, Vec<u8>)>> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .ok()
}

fn certs_in(items: &[(SectionKind, Vec<u8>)]) -> Vec<&Vec<u8>> {
    items
        .iter()
        .filter(|(k, _)| *k == SectionKind::Certificate)
        .map(|(_, d)| d)
        .collect()
}

fn parses_as_certificate(der: &[u8]) -> bool {
    matches!(x509_parser::parse_x509_certificate(der), Ok((rest, _)) if rest.is_empty())
}

fn unknown_and_unparsable(fx: &Fixture, certs: &[&Vec<u8>]) -> bool {
    certs
        .iter()
        .any(|c| !fx.certs.contains(c) && !parses_as_certificate(c))
}

/// The state of `tls.crt`, and the fixture triple whose leaf heads it (the key and the CA are
/// judged against that leaf: a plan may have put a whole other valid set together). Triples
/// that share a leaf agree on everything the oracle reads.
fn cert_state<'f>(bytes: &[u8], fx: &'f Fixture) -> (State, Option<&'f Triple>) {
    let Some(items) = pem_items(bytes) else {
        return (State::BrokenParse, None);
    };
    let certs = certs_in(&items);
    if certs.is_empty() || unknown_and_unparsable(fx, &certs) {
        return (State::BrokenParse, None);
    }
    // Any other first certificate is a CA (no fixture key) or a damaged leaf (its signature
    // no longer verifies).
    let Some(leaf) = fx.triples.iter().find(|t| t.leaf == *certs[0]) else {
        return (State::BrokenSemantic, None);
    };
    if certs.iter().copied().eq(leaf.chain.iter()) {
        (State::Intact, Some(leaf))
    } else {
        (State::Changed, Some(leaf))
    }
}

const KEY_KINDS: [SectionKind; 3] = [
    SectionKind::PrivateKey,
    SectionKind::RsaPrivateKey,
    SectionKind::EcPrivateKey,
];

/// `-----BEGIN ... PRIVATE KEY-----` lines of formats the tool refuses (the contract: such a file is
/// refused even though the PEM parser skips the block).
fn unsupported_key_labels(bytes: &[u8]) -> usize {
    bytes
        .split(|b| *b == b'\n' || *b == b'\r')
        .filter_map(|l| {
            let l = l.trim_ascii();
            l.strip_prefix(b"-----BEGIN ")?.strip_suffix(b"-----")
        })
        .filter(|label| {
            label.ends_with(b"PRIVATE KEY")
                && ![&b"PRIVATE KEY"[..], b"RSA PRIVATE KEY", b"EC PRIVATE KEY"].contains(label)
        })
        .count()
}

/// The states of `tls.crt`, `tls.key` and `ca.crt`.
fn states(files: &[Vec<u8>; 3], fx: &Fixture) -> [State; 3] {
    let (cert, leaf) = cert_state(&files[0], fx);
    [
        cert,
        key_state(&files[1], leaf, fx),
        ca_state(&files[2], leaf, fx),
    ]
}

fn key_structure_parses(kind: SectionKind, der: &[u8]) -> bool {
    match kind {
        SectionKind::PrivateKey => pkcs8::PrivateKeyInfo::try_from(der).is_ok(),
        SectionKind::RsaPrivateKey => pkcs1::RsaPrivateKey::try_from(der).is_ok(),
        SectionKind::EcPrivateKey => sec1::EcPrivateKey::try_from(der).is_ok(),
        _ => false,
    }
}

fn key_state(bytes: &[u8], leaf: Option<&Triple>, fx: &Fixture) -> State {
    let Some(items) = pem_items(bytes) else {
        return State::BrokenParse;
    };
    let keys: Vec<&(SectionKind, Vec<u8>)> = items
        .iter()
        .filter(|(k, _)| KEY_KINDS.contains(k))
        .collect();
    if keys.len() != 1 || unsupported_key_labels(bytes) != 0 {
        return State::BrokenParse;
    }
    let (kind, der) = keys[0];
    let known = fx.keys.iter().find(|k| k.kind == *kind && k.der == *der);
    match (known, leaf) {
        (None, _) if !key_structure_parses(*kind, der) => State::BrokenParse,
        (Some(k), Some(leaf)) if k.id == fx.keys[leaf.key].id => State::Intact,
        (Some(_), Some(_)) => State::Foreign,
        _ => State::Changed,
    }
}

fn ca_state(bytes: &[u8], leaf: Option<&Triple>, fx: &Fixture) -> State {
    let Some(items) = pem_items(bytes) else {
        return State::BrokenParse;
    };
    let certs = certs_in(&items);
    if certs.is_empty()
        || unknown_and_unparsable(fx, &certs)
        || certs.iter().any(|c| fx.leaves.contains(c))
    {
        State::BrokenParse
    } else if let Some(leaf) = leaf {
        if certs.len() == 1 && *certs[0] == leaf.anchors[0] {
            State::Intact
        } else if certs.iter().all(|c| fx.certs.contains(c))
            && !certs.iter().any(|c| leaf.anchors.contains(c))
        {
            State::BrokenSemantic
        } else {
            State::Changed
        }
    } else {
        State::Changed
    }
}

// ---------------------------------------------------------------------------------------------
// Running the validator and judging the outcome.

const CERT_PATH: &str = "/v/tls.crt";
const KEY_PATH: &str = "/v/tls.key";
const CA_PATH: &str = "/v/ca.crt";

fn raw(files: &[Vec<u8>; 3], peer_ca: Option<Vec<u8>>) -> RawBundle {
    RawBundle {
        cert: RawFile::new(FileRole::Cert, CERT_PATH, files[0].clone()),
        key: RawFile::new(FileRole::Key, KEY_PATH, files[1].clone()),
        ca: RawFile::new(FileRole::Ca, CA_PATH, files[2].clone()),
        peer_ca: peer_ca.map(|b| RawFile::new(FileRole::PeerCa, "/v/peer-ca.crt", b)),
    }
}

fn policy() -> Policy {
    Policy::default()
}

/// True if `e` points the user at `path`.
fn names(e: &ValidateError, path: &Path) -> bool {
    e.path() == path
        || matches!(e, ValidateError::KeyMismatch { cert, .. } if cert == path)
        || matches!(e, ValidateError::UntrustedChain { ca, .. } if ca == path)
}

fn leaks(text: &str, fx: &Fixture) -> Option<String> {
    fx.secrets
        .iter()
        .find(|s| text.contains(s.as_str()))
        .cloned()
}

/// Lossy, shortened view of the files for failure messages.
fn show(files: &[Vec<u8>; 3]) -> String {
    let mut out = String::new();
    for (role, f) in ROLES.iter().zip(files) {
        let text = String::from_utf8_lossy(f);
        let cut: String = text.chars().take(3000).collect();
        out.push_str(&format!("--- {role:?} ({} bytes)\n{cut}\n", f.len()));
    }
    out
}

/// The key in the bundle signs, and the leaf's public key verifies it: the pair truly
/// belongs together, whatever the validator's own match test said.
fn prove_key_matches_leaf(bundle: &Bundle, fx: &Fixture) -> Result<(), TestCaseError> {
    let ck = bundle.certified_key();
    let leaf: &CertificateDer<'_> = ck.cert.first().expect("a bundle has a leaf");
    prop_assert!(
        fx.leaves.contains(&leaf.to_vec()),
        "validated a leaf that is not one the fixture issued"
    );
    let offered = [
        SignatureScheme::ECDSA_NISTP256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::ED25519,
        SignatureScheme::RSA_PKCS1_SHA256,
    ];
    let signer = ck
        .key
        .choose_scheme(&offered)
        .ok_or_else(|| TestCaseError::fail("validated key offers no usual scheme"))?;
    let alg = match signer.scheme() {
        SignatureScheme::ECDSA_NISTP256_SHA256 => webpki::aws_lc_rs::ECDSA_P256_SHA256,
        SignatureScheme::ECDSA_NISTP384_SHA384 => webpki::aws_lc_rs::ECDSA_P384_SHA384,
        SignatureScheme::ED25519 => webpki::aws_lc_rs::ED25519,
        _ => webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
    };
    let msg = b"mtls-sidecar fuzz: does this key belong to this leaf?";
    let sig = signer
        .sign(msg)
        .map_err(|e| TestCaseError::fail(format!("validated key cannot sign: {e}")))?;
    let ee = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| TestCaseError::fail(format!("validated leaf unparsable by webpki: {e:?}")))?;
    prop_assert!(
        ee.verify_signature(alg, msg, &sig).is_ok(),
        "validated a key that does not belong to the leaf"
    );
    Ok(())
}

fn judge_rejection(rej: &Rejection, fx: &Fixture) -> Result<(), TestCaseError> {
    prop_assert!(!rej.errors.is_empty(), "a rejection without a failure");
    for e in &rej.errors {
        prop_assert!(Reason::ALL.contains(&e.reason()));
        if let Some(s) = leaks(&e.to_string(), fx) {
            prop_assert!(false, "failure message leaks key material {s:?}: {e}");
        }
    }
    if let Some(s) = leaks(&format!("{rej:?}"), fx) {
        prop_assert!(false, "Rejection's Debug leaks key material {s:?}");
    }
    Ok(())
}

/// Validates the files and checks every property that depends only on them and the triple.
fn judge(t: &Triple, files: &[Vec<u8>; 3], fx: &Fixture) -> Result<(), TestCaseError> {
    let states = states(files, fx);
    let result = validate(raw(files, None), &policy(), SystemTime::now());
    let ctx = || {
        format!(
            "plan started from triple {}, states {states:?}\n{}",
            t.name,
            show(files)
        )
    };
    match &result {
        Ok(bundle) => {
            prop_assert!(
                !states.iter().any(|s| matches!(
                    s,
                    State::BrokenParse | State::BrokenSemantic | State::Foreign
                )),
                "validated although a file is broken or the key foreign: {}",
                ctx()
            );
            prove_key_matches_leaf(bundle, fx)?;
            if let Some(s) = leaks(&format!("{bundle:?}"), fx) {
                prop_assert!(false, "Bundle's Debug leaks key material {s:?}");
            }
        }
        Err(rej) => {
            let reasons: Vec<String> = rej.errors.iter().map(|e| e.to_string()).collect();
            prop_assert!(
                states != [State::Intact; 3],
                "an intact triple was refused: {reasons:#?}\n{}",
                ctx()
            );
            judge_rejection(rej, fx)?;
            for (role, path) in ROLES.iter().zip([CERT_PATH, KEY_PATH, CA_PATH]) {
                if states[*role as usize] == State::BrokenParse {
                    prop_assert!(
                        rej.errors.iter().any(|e| names(e, Path::new(path))),
                        "{role:?} is broken but no failure names it: {reasons:#?}\n{}",
                        ctx()
                    );
                }
            }
            if states[1] == State::Foreign && states[0] == State::Intact {
                prop_assert!(
                    rej.errors
                        .iter()
                        .any(|e| e.reason() == Reason::KeyMismatch),
                    "another certificate's key is refused, but not as key_mismatch: {reasons:#?}\n{}",
                    ctx()
                );
            }
        }
    }
    Ok(())
}

/// The `check` subcommand on the same files, written to a directory.
fn judge_check(t: &Triple, files: &[Vec<u8>; 3], fx: &Fixture) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, bytes) in ["tls.crt", "tls.key", "ca.crt"].iter().zip(files) {
        std::fs::write(dir.path().join(name), bytes).expect("write");
    }
    let paths = CredentialPaths::resolve(Some(dir.path()), None, None, None, None).unwrap();
    let now = SystemTime::now();
    let report = check(&paths, &policy(), now);
    let json = serde_json::to_string(&report).expect("the report serializes");
    if let Some(s) = leaks(&json, fx) {
        prop_assert!(false, "check JSON leaks key material {s:?}: {json}");
    }
    if let Some(s) = leaks(&format!("{report:?}"), fx) {
        prop_assert!(false, "check report's Debug leaks key material {s:?}");
    }
    let validated = validate(raw(files, None), &policy(), now);
    prop_assert_eq!(
        report.valid,
        validated.is_ok(),
        "check and validate disagree (plan started from triple {}): {}",
        t.name,
        json
    );
    let mut from_check: Vec<Reason> = report.failures.iter().map(|f| f.reason).collect();
    let mut from_validate: Vec<Reason> = match &validated {
        Ok(_) => Vec::new(),
        Err(rej) => rej.errors.iter().map(ValidateError::reason).collect(),
    };
    from_check.sort();
    from_validate.sort();
    prop_assert_eq!(from_check, from_validate);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// Arbitrary bytes, raw or as the body of a PEM block with any label.
fn junk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..2048),
        (any::<Index>(), vec(any::<u8>(), 0..1024)).prop_map(|(l, b)| armor(
            LABELS[l.index(LABELS.len())],
            &b
        )
        .into_bytes()),
        "[ -~\t\r\n]{0,512}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(super::config(256, REGRESSIONS))]

    /// Arbitrary bytes in every file (and a peer CA) never validate and never panic, and each
    /// file is named by a failure.
    #[test]
    fn arbitrary_bytes_are_refused(
        cert in junk(),
        key in junk(),
        ca in junk(),
        peer in proptest::option::of(junk()),
    ) {
        let fx = &*FIXTURE;
        let files = [cert, key, ca];
        let result = validate(raw(&files, peer.clone()), &policy(), SystemTime::now());
        let rej = match result {
            Ok(_) => return Err(TestCaseError::fail(format!("junk validated\n{}", show(&files)))),
            Err(rej) => rej,
        };
        judge_rejection(&rej, fx)?;
        let mut paths = vec![CERT_PATH, KEY_PATH, CA_PATH];
        if peer.is_some() {
            paths.push("/v/peer-ca.crt");
        }
        for path in paths {
            prop_assert!(
                rej.errors.iter().any(|e| names(e, Path::new(path))),
                "no failure names {path}: {:#?}",
                rej.errors
            );
        }
    }

    /// Structured mutations of valid triples: see the module documentation.
    #[test]
    fn mutated_triples_are_judged_soundly(plan in plan()) {
        let fx = &*FIXTURE;
        let (t, files) = render(&plan, fx);
        judge(t, &files, fx)?;
    }

    /// The same mutations through `check`: no panic, no key material in its JSON, and the same
    /// verdict and reasons as `validate`.
    #[test]
    fn check_report_never_leaks_and_agrees(plan in plan()) {
        let fx = &*FIXTURE;
        let (t, files) = render(&plan, fx);
        judge_check(t, &files, fx)?;
    }
}

/// The fixture is what the properties assume: every triple validates as it is.
#[test]
fn every_fixture_triple_is_valid() {
    let fx = &*FIXTURE;
    for t in &fx.triples {
        let files = ROLES.map(|r| t.file(r, fx).into_bytes());
        assert_eq!(states(&files, fx), [State::Intact; 3], "{}", t.name);
        judge(t, &files, fx).unwrap_or_else(|e| panic!("{}: {e}", t.name));
    }
}

/// Exhaustively: no fixture key, in any encoding, validates with another key's certificate.
#[test]
fn no_key_validates_with_another_keys_certificate() {
    let fx = &*FIXTURE;
    for t in &fx.triples {
        for k in fx.keys.iter().filter(|k| k.id != fx.keys[t.key].id) {
            let files = [
                t.cert.clone().into_bytes(),
                k.pem.clone().into_bytes(),
                t.ca.clone().into_bytes(),
            ];
            assert_eq!(key_state(&files[1], Some(t), fx), State::Foreign);
            judge(t, &files, fx).unwrap_or_else(|e| panic!("{} with key {}: {e}", t.name, k.id));
        }
    }
}

/// Sanity of the oracle and the mutation machinery the properties rely on.
#[test]
fn oracle_and_mutations_do_what_they_say() {
    let fx = &*FIXTURE;
    let t = &fx.triples[0];
    let key = t.file(Role::Key, fx);
    assert!(
        key.starts_with("-----BEGIN PRIVATE KEY-----"),
        "triple 0 has a PKCS#8 key"
    );
    let relabelled = key.replace(" PRIVATE KEY-----", " EC PRIVATE KEY-----");
    assert_eq!(
        key_state(relabelled.as_bytes(), Some(t), fx),
        State::BrokenParse
    );
    let crlf = apply(key.clone().into_bytes(), &Edit::Crlf, fx);
    assert!(crlf.windows(2).any(|w| w == b"\r\n"));
    assert_eq!(key_state(&crlf, Some(t), fx), State::Intact);
    assert_eq!(key_state(b"", Some(t), fx), State::BrokenParse);
    let two = format!("{key}{}", t.cert);
    assert_eq!(
        key_state(two.as_bytes(), Some(t), fx),
        State::Intact,
        "a cert beside the key is ignored"
    );
    let dup = format!("{key}{key}");
    assert_eq!(
        key_state(dup.as_bytes(), Some(t), fx),
        State::BrokenParse,
        "two keys"
    );
}
