//! `ValidateError`: one variant per validation failure class. Each message names the file and
//! says what to do; [`ValidateError::reason`] gives the reason code. Messages carry public
//! facts only (paths, subjects, serials), never key material.

use std::path::{Path, PathBuf};

use crate::creds::paths::FileRole;
use crate::reason::Reason;

/// Why a loaded credential set is not acceptable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ValidateError {
    #[error("{role} {path} is not valid PEM: {detail}", path = path.display())]
    BadPem {
        role: FileRole,
        path: PathBuf,
        detail: String,
    },
    #[error("{path} holds no certificate: {hint}", path = path.display())]
    NoCertificate { path: PathBuf, hint: String },
    #[error("{path} holds no private key: {hint}", path = path.display())]
    NoPrivateKey { path: PathBuf, hint: String },
    #[error("{path} holds {count} private keys; it must hold exactly one, the key of the leaf certificate (remove the others)", path = path.display())]
    MultiplePrivateKeys { path: PathBuf, count: usize },
    #[error("{path}: {what} is not supported; use RSA 2048-8192, ECDSA P-256/P-384 or Ed25519 (cert-manager privateKey.algorithm/size), unencrypted PEM", path = path.display())]
    UnsupportedKey { path: PathBuf, what: String },
    #[error("{path}: RSA key of {bits} bits is too weak; issue a new certificate with at least 2048 bits (cert-manager privateKey.size: 2048)", path = path.display())]
    WeakKey { path: PathBuf, bits: u32 },
    #[error("{key} does not match the public key of {cert} (serial {serial}): the key and certificate come from different issuances; make sure both come from the same Secret and the same renewal", key = key.display(), cert = cert.display())]
    KeyMismatch {
        key: PathBuf,
        cert: PathBuf,
        serial: String,
    },
    #[error("{path} (serial {serial}) is not valid until {not_before} ({wait} from now): check the node's clock, or wait", path = path.display())]
    NotYetValid {
        path: PathBuf,
        serial: String,
        not_before: String,
        wait: String,
    },
    #[error("{path} (serial {serial}) expired at {not_after} ({ago} ago): cert-manager should have renewed it; check the Certificate's status (kubectl describe certificate) and the issuer", path = path.display())]
    Expired {
        path: PathBuf,
        serial: String,
        not_after: String,
        ago: String,
    },
    #[error("{cert} does not chain to {ca}: {detail}", cert = cert.display(), ca = ca.display())]
    UntrustedChain {
        cert: PathBuf,
        ca: PathBuf,
        detail: String,
    },
    #[error("{path} (serial {serial}) cannot be used for {needed}: its extended key usage allows only {present}; issue it with cert-manager usages: [{usages}]", path = path.display())]
    WrongUsage {
        path: PathBuf,
        serial: String,
        needed: &'static str,
        present: String,
        usages: &'static str,
    },
    #[error("{path} (serial {serial}) does not carry the expected {kind} SAN {expected:?} (it has: {present}); is this the right Secret?", path = path.display())]
    IdentityMismatch {
        path: PathBuf,
        serial: String,
        kind: &'static str,
        expected: String,
        present: String,
    },
    #[error("{role} {path} holds no certificate: {hint}", path = path.display())]
    EmptyCaBundle {
        role: FileRole,
        path: PathBuf,
        hint: String,
    },
    #[error("{role} {path}: certificate #{index} ({subject}) is not a CA (no basicConstraints CA:TRUE); a CA bundle holds only CA certificates: remove it, or check that the bundle is not a leaf certificate", path = path.display())]
    CaNotACa {
        role: FileRole,
        path: PathBuf,
        index: usize,
        subject: String,
    },
}

impl ValidateError {
    /// The reason code for this failure.
    pub fn reason(&self) -> Reason {
        match self {
            ValidateError::BadPem { .. } => Reason::BadPem,
            ValidateError::NoCertificate { .. } => Reason::NoCertificate,
            ValidateError::NoPrivateKey { .. } => Reason::NoPrivateKey,
            ValidateError::MultiplePrivateKeys { .. } => Reason::MultiplePrivateKeys,
            ValidateError::UnsupportedKey { .. } => Reason::UnsupportedKey,
            ValidateError::WeakKey { .. } => Reason::WeakKey,
            ValidateError::KeyMismatch { .. } => Reason::KeyMismatch,
            ValidateError::NotYetValid { .. } => Reason::NotYetValid,
            ValidateError::Expired { .. } => Reason::Expired,
            ValidateError::UntrustedChain { .. } => Reason::UntrustedChain,
            ValidateError::WrongUsage { .. } => Reason::WrongUsage,
            ValidateError::IdentityMismatch { .. } => Reason::IdentityMismatch,
            ValidateError::EmptyCaBundle { .. } => Reason::EmptyCaBundle,
            ValidateError::CaNotACa { .. } => Reason::CaNotACa,
        }
    }

    /// Every file the failure is about: two for a key that does not match its certificate or a
    /// chain that does not reach the CA, one otherwise.
    pub fn files(&self) -> Vec<&Path> {
        match self {
            ValidateError::KeyMismatch { key, cert, .. } => vec![key, cert],
            ValidateError::UntrustedChain { cert, ca, .. } => vec![cert, ca],
            other => vec![other.path()],
        }
    }

    /// The file the user should look at first.
    pub fn path(&self) -> &Path {
        match self {
            ValidateError::BadPem { path, .. }
            | ValidateError::NoCertificate { path, .. }
            | ValidateError::NoPrivateKey { path, .. }
            | ValidateError::MultiplePrivateKeys { path, .. }
            | ValidateError::UnsupportedKey { path, .. }
            | ValidateError::WeakKey { path, .. }
            | ValidateError::NotYetValid { path, .. }
            | ValidateError::Expired { path, .. }
            | ValidateError::WrongUsage { path, .. }
            | ValidateError::IdentityMismatch { path, .. }
            | ValidateError::EmptyCaBundle { path, .. }
            | ValidateError::CaNotACa { path, .. } => path,
            ValidateError::KeyMismatch { key, .. } => key,
            ValidateError::UntrustedChain { cert, .. } => cert,
        }
    }
}
