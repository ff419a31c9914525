//! `Bundle`: a credential set that passed every rule. Its fields are private and its only
//! constructor is visible to `validate` alone, so holding a `Bundle` proves validation ran.
//! Later stages read rustls material and public facts from it; it never exposes key bytes.

use std::fmt;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use time::OffsetDateTime;

use super::facts::CertFacts;
use crate::creds::load::RawBundle;

/// Validated credentials, ready to serve.
pub struct Bundle {
    certified_key: Arc<CertifiedKey>,
    ca_roots: Arc<RootCertStore>,
    peer_roots: Arc<RootCertStore>,
    leaf: CertFacts,
    ca: Vec<CertFacts>,
    raw: RawBundle,
}

impl Bundle {
    pub(in crate::creds::validate) fn new(
        certified_key: Arc<CertifiedKey>,
        ca_roots: Arc<RootCertStore>,
        peer_roots: Option<Arc<RootCertStore>>,
        leaf: CertFacts,
        ca: Vec<CertFacts>,
        raw: RawBundle,
    ) -> Self {
        Bundle {
            peer_roots: peer_roots.unwrap_or_else(|| ca_roots.clone()),
            certified_key,
            ca_roots,
            leaf,
            ca,
            raw,
        }
    }

    /// Leaf + intermediates and the signing key, for rustls.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// The `--ca` bundle our own leaf chains to.
    pub fn ca_roots(&self) -> &Arc<RootCertStore> {
        &self.ca_roots
    }

    /// What peers are verified against: `--peer-ca` if given, else `--ca`.
    pub fn peer_roots(&self) -> &Arc<RootCertStore> {
        &self.peer_roots
    }

    pub fn leaf(&self) -> &CertFacts {
        &self.leaf
    }

    pub fn ca_certs(&self) -> &[CertFacts] {
        &self.ca
    }

    /// The earliest expiry among the CA bundle's certificates (the `role="ca"` metric).
    pub fn ca_not_after(&self) -> Option<OffsetDateTime> {
        self.ca.iter().map(|c| c.not_after).min()
    }

    /// SHA-256 over every file's content: equal hashes mean nothing changed.
    pub fn content_hash(&self) -> [u8; 32] {
        self.raw.content_hash()
    }

    /// The files as read, for actions that re-publish them (stage-dir).
    pub fn raw(&self) -> &RawBundle {
        &self.raw
    }
}

/// Public facts only: the signing key stays out of logs.
impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("subject", &self.leaf.subject)
            .field("serial", &self.leaf.serial)
            .field("sha256", &self.leaf.sha256)
            .field("not_after", &self.leaf.not_after)
            .field("ca_certs", &self.ca.len())
            .finish_non_exhaustive()
    }
}
