//! Building blocks shared by the watcher scenarios: a kubelet volume in a temp dir, the
//! `tls.crt`/`tls.key`/`ca.crt` payload of a leaf, a `watch` command line with an exec
//! counter, and re-issuing a certificate for an existing key (cert-manager's
//! `rotationPolicy: Never`), which `TestPki` cannot do because rcgen derives the serial
//! from the public key.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use time::Duration;

use super::kubelet::{KubeletVolume, Rng};
use super::pki::{now, serial_hex, Leaf, TestPki};
use super::sidecar::{ExecCounter, Sidecar};

/// `tls.crt` (leaf + intermediates), `tls.key` (PKCS#8) and `ca.crt`: a kubernetes.io/tls Secret.
pub fn tls_files(leaf: &Leaf, ca_pem: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("tls.crt", leaf.chain_pem.clone().into_bytes()),
        ("tls.key", leaf.key_pkcs8_pem.clone().into_bytes()),
        ("ca.crt", ca_pem.as_bytes().to_vec()),
    ]
}

/// A certificate PEM with the identifiers `/status` reports.
#[derive(Debug, Clone)]
pub struct Cert {
    pub pem: String,
    pub serial_hex: String,
    pub sha256_hex: String,
}

/// A new server certificate (as `TestPki::server_spec`) for `leaf`'s existing key, signed by
/// `pki.root`, with a fresh random serial.
pub fn reissue_same_key(pki: &TestPki, leaf: &Leaf) -> Cert {
    let root_key = KeyPair::from_pem(&pki.root.key_pkcs8_pem()).expect("root key parses");
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, pki.root.subject_cn.as_str());
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = Issuer::new(root_params, root_key);

    let spec = TestPki::server_spec();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, spec.cn.as_str());
    params.subject_alt_names = spec
        .dns
        .iter()
        .map(|d| SanType::DnsName(d.clone().try_into().expect("IA5 DNS name")))
        .collect();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.is_ca = IsCa::ExplicitNoCa;
    params.not_before = now() - Duration::hours(1);
    params.not_after = now() + Duration::days(90);
    params.use_authority_key_identifier_extension = true;
    let mut serial = Rng::seeded().next_u64().to_be_bytes().to_vec();
    serial.extend(Rng::seeded().next_u64().to_be_bytes());
    serial[0] = (serial[0] & 0x7f) | 0x10;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let leaf_key = KeyPair::from_pem(&leaf.key_pkcs8_pem).expect("leaf key parses");
    let cert = params
        .signed_by(&leaf_key, &issuer)
        .expect("re-issue signs");
    let der = cert.der().to_vec();
    Cert {
        pem: cert.pem(),
        serial_hex: serial_hex(&der),
        sha256_hex: hex::encode(Sha256::digest(&der)),
    }
}

/// A temp dir with a kubelet volume at `vol/`, a test PKI and an exec counter.
pub struct Env {
    pub pki: TestPki,
    pub vol: KubeletVolume,
    pub exec: ExecCounter,
    tmp: TempDir,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    /// An empty volume (no `..data` yet).
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        Env {
            pki: TestPki::new(),
            vol: KubeletVolume::new(tmp.path().join("vol")),
            exec: ExecCounter::new(),
            tmp,
        }
    }

    /// A volume whose first generation holds `leaf` and the root CA.
    pub fn with_first(make: impl FnOnce(&TestPki) -> Leaf) -> (Env, Leaf) {
        let mut env = Env::new();
        let leaf = make(&env.pki);
        env.publish(&leaf);
        (env, leaf)
    }

    /// Kubelet-write `leaf` + the root CA as the next generation.
    pub fn publish(&mut self, leaf: &Leaf) {
        let files = tls_files(leaf, &self.pki.root.cert_pem);
        self.vol.write(&files);
    }

    /// `n` fresh server leaves signed by the root.
    pub fn leaves(&self, n: usize) -> Vec<Leaf> {
        (0..n).map(|_| self.pki.server()).collect()
    }

    /// The temp dir holding the volume (for extra files next to it).
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    pub fn dir(&self) -> PathBuf {
        self.vol.dir().to_path_buf()
    }

    /// `watch` arguments for this volume: `--cert-dir`, `--usage server`, the poll
    /// interval, `--debounce 100ms`, `extra`, then the exec counter's `-- /bin/sh ...`.
    pub fn args(&self, poll: &str, extra: &[&str]) -> Vec<String> {
        self.args_with(poll, "100ms", extra)
    }

    /// `args` with another `--debounce`.
    pub fn args_with(&self, poll: &str, debounce: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--cert-dir".into(),
            self.vol.dir().display().to_string(),
            "--usage".into(),
            "server".into(),
            "--poll-interval".into(),
            poll.into(),
            "--debounce".into(),
            debounce.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(self.exec.args());
        args
    }

    /// Start `mtls-sidecar watch` on this volume (see `args`).
    pub fn start(&self, poll: &str, extra: &[&str]) -> Sidecar {
        Sidecar::watch(self.args(poll, extra))
    }
}
