//! Path building from the leaf (plus the intermediates in `tls.crt`) to a root in the CA bundle,
//! with webpki, the verifier rustls itself uses, so `check` and the proxy agree. webpki errors
//! become `untrusted_chain` (or `wrong_usage` when an intermediate restricts EKUs) with a message
//! that says which link is missing.

use std::path::Path;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeId, KeyPurposeIdIter};

use super::error::ValidateError;
use super::facts::CertFacts;

/// DER body of id-kp-serverAuth (1.3.6.1.5.5.7.3.1).
pub(super) const EKU_SERVER: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// DER body of id-kp-clientAuth (1.3.6.1.5.5.7.3.2).
pub(super) const EKU_CLIENT: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Every listed EKU must be present in each certificate that has an EKU extension. An empty
/// list accepts anything (the leaf's own EKUs are judged by the usage rule, not here).
struct RequireIfPresent<'a>(&'a [&'static [u8]]);

impl ExtendedKeyUsageValidator for RequireIfPresent<'_> {
    #[allow(deprecated)] // the Context variant needs fields webpki does not let us build
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let present = iter.collect::<Result<Vec<KeyPurposeId<'_>>, _>>()?;
        if present.is_empty() {
            return Ok(());
        }
        for oid in self.0 {
            if !present.contains(&KeyPurposeId::new(oid)) {
                return Err(webpki::Error::RequiredEkuNotFound);
            }
        }
        Ok(())
    }
}

/// What the chain check needs from the rest of validation.
pub(super) struct ChainInput<'a> {
    pub(super) cert_path: &'a Path,
    pub(super) ca_path: &'a Path,
    /// `tls.crt` in order: leaf first.
    pub(super) chain: &'a [CertificateDer<'static>],
    pub(super) chain_facts: &'a [CertFacts],
    pub(super) anchors: &'a [TrustAnchor<'static>],
    pub(super) anchor_subjects: &'a [String],
    pub(super) required_ekus: &'a [&'static [u8]],
    pub(super) time: UnixTime,
}

/// On success, returns the subject of the CA the path ends at.
pub(super) fn verify(input: &ChainInput<'_>) -> Result<String, ValidateError> {
    let fail = |detail: String| ValidateError::UntrustedChain {
        cert: input.cert_path.to_path_buf(),
        ca: input.ca_path.to_path_buf(),
        detail,
    };
    let leaf = EndEntityCert::try_from(&input.chain[0]).map_err(|e| {
        fail(format!(
            "the leaf certificate cannot be parsed for path building ({e:?})"
        ))
    })?;
    let algs = rustls::crypto::aws_lc_rs::default_provider()
        .signature_verification_algorithms
        .all;
    let path = leaf
        .verify_for_usage(
            algs,
            input.anchors,
            &input.chain[1..],
            input.time,
            RequireIfPresent(input.required_ekus),
            None,
            None,
        )
        .map_err(|e| explain(e, input, fail))?;
    let anchor = path.anchor();
    let subject = input
        .anchors
        .iter()
        .position(|a| {
            a.subject.as_ref() == anchor.subject.as_ref()
                && a.subject_public_key_info.as_ref() == anchor.subject_public_key_info.as_ref()
        })
        .and_then(|i| input.anchor_subjects.get(i).cloned())
        .unwrap_or_default();
    Ok(subject)
}

#[allow(deprecated)] // match the old unit variants too: webpki still returns some of them
fn explain(
    err: webpki::Error,
    input: &ChainInput<'_>,
    fail: impl Fn(String) -> ValidateError,
) -> ValidateError {
    use webpki::Error as E;
    let top = input
        .chain_facts
        .last()
        .map(|f| f.issuer.as_str())
        .unwrap_or("");
    let cas = input
        .anchor_subjects
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    match err {
        E::UnknownIssuer => fail(format!(
            "no certificate in the CA bundle (it holds {cas}) or in {} issued '{top}'; if an intermediate CA signed the leaf, {} must hold that intermediate right after the leaf; otherwise put the issuing CA into the CA bundle",
            input.cert_path.display(),
            input.cert_path.display()
        )),
        E::InvalidSignatureForPublicKey => fail(format!(
            "a CA in the bundle has the right name ('{top}') but not the key that signed the certificate: the CA was re-created; update the CA bundle (ca.crt / the trust-manager Bundle)"
        )),
        E::CertExpired { .. } => fail("an intermediate or CA certificate in the chain has expired; renew the CA and re-issue".into()),
        E::CertNotValidYet { .. } => fail("an intermediate or CA certificate in the chain is not valid yet; check the node clock".into()),
        E::CaUsedAsEndEntity => fail(format!(
            "the first certificate in {} is a CA; the leaf must come first, then its intermediates",
            input.cert_path.display()
        )),
        E::EndEntityUsedAsCa => fail(format!(
            "a certificate after the leaf in {} is not a CA; only intermediates may follow the leaf",
            input.cert_path.display()
        )),
        E::PathLenConstraintViolated => fail("a CA's pathLenConstraint forbids this chain length".into()),
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => ValidateError::WrongUsage {
            path: input.cert_path.to_path_buf(),
            serial: input.chain_facts.first().map(|f| f.serial.clone()).unwrap_or_default(),
            needed: "the requested usage",
            present: "what an intermediate CA in the chain restricts it to".into(),
            usages: "ask the CA owner for an intermediate without this EKU restriction",
        },
        E::UnsupportedSignatureAlgorithm
        | E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKey
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => fail(
            "a certificate in the chain is signed with an unsupported algorithm (e.g. SHA-1); re-issue it with SHA-256 or better".into(),
        ),
        other => fail(format!("path building failed ({other:?})")),
    }
}
