//! Validation: `RawBundle` (bytes) -> [`Bundle`] (usable, proven valid) or a [`Rejection`] listing
//! every failure with its reason code. [`inspect`] is the one implementation; it also accepts
//! partial input so `check` can report on whatever files could be read.
//!
//! Rules, in order: PEM shape of each file; certificate parsing; private key count, algorithm,
//! size and match with the leaf; CA bundle non-empty and CA-only; leaf validity window; EKU for
//! the usage; expected SANs; path from the leaf to a CA with webpki.

mod bundle;
mod chain;
mod error;
mod facts;
mod key;
mod policy;
mod rules;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use serde::Serialize;

pub use bundle::Bundle;
pub use error::ValidateError;
pub use facts::{human_span, rfc3339, CertFacts, KeyKind};
pub use key::KeyFacts;
pub use policy::{Policy, Usage};

use crate::creds::load::{RawBundle, RawFile};
use crate::creds::paths::FileRole;
use crate::creds::pem::{self, Shape};

/// The files to validate; `None` where a file could not be read (only `check` passes those).
#[derive(Debug, Default)]
pub struct Parts {
    pub cert: Option<RawFile>,
    pub key: Option<RawFile>,
    pub ca: Option<RawFile>,
    pub peer_ca: Option<RawFile>,
}

impl From<RawBundle> for Parts {
    fn from(raw: RawBundle) -> Self {
        Parts {
            cert: Some(raw.cert),
            key: Some(raw.key),
            ca: Some(raw.ca),
            peer_ca: raw.peer_ca,
        }
    }
}

/// Everything learned about the inputs, valid or not.
#[derive(Debug, Default, Serialize)]
pub struct Facts {
    pub leaf: Option<CertFacts>,
    pub intermediates: Vec<CertFacts>,
    pub key: Option<KeyFacts>,
    pub ca: Vec<CertFacts>,
    pub peer_ca: Vec<CertFacts>,
    pub chain: ChainStatus,
}

/// Outcome of path building.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ChainStatus {
    /// The leaf chains to the CA with this subject.
    Ok { ca: String },
    /// Path building failed; the failure is among the errors.
    Failed,
    /// Not attempted because an input it needs is unusable.
    #[default]
    NotChecked,
}

/// A full inspection: facts, failures, and the bundle when there were none.
#[derive(Debug)]
pub struct Inspection {
    pub facts: Facts,
    pub errors: Vec<ValidateError>,
    pub bundle: Option<Bundle>,
}

/// A credential set that must not be published; `errors` is never empty.
#[derive(Debug)]
pub struct Rejection {
    pub facts: Box<Facts>,
    pub errors: Vec<ValidateError>,
}

impl Rejection {
    /// The failure that names the update's reason in logs and metrics.
    pub fn primary(&self) -> &ValidateError {
        &self.errors[0]
    }
}

/// Validates a complete set of files read together.
pub fn validate(raw: RawBundle, policy: &Policy, now: SystemTime) -> Result<Bundle, Rejection> {
    let inspection = inspect(raw.into(), policy, now);
    match inspection.bundle {
        Some(bundle) => Ok(bundle),
        None => Err(Rejection {
            facts: Box::new(inspection.facts),
            errors: inspection.errors,
        }),
    }
}

/// Applies every rule to whatever parts are present and collects all failures.
pub fn inspect(parts: Parts, policy: &Policy, now: SystemTime) -> Inspection {
    let mut errors = Vec::new();
    let mut facts = Facts::default();

    let chain = parts.cert.as_ref().and_then(|f| read_chain(f, &mut errors));
    if let Some((_, chain_facts)) = &chain {
        facts.leaf = chain_facts.first().cloned();
        facts.intermediates = chain_facts[1..].to_vec();
    }

    let signing_key = parts.key.as_ref().and_then(|f| {
        let (key_facts, key) = read_key(f, &mut errors)?;
        facts.key = Some(key_facts);
        key
    });

    let ca = parts
        .ca
        .as_ref()
        .map(|f| read_ca(f, &mut errors))
        .unwrap_or_default();
    facts.ca = ca.facts.clone();
    let peer = parts.peer_ca.as_ref().map(|f| read_ca(f, &mut errors));
    if let Some(peer) = &peer {
        facts.peer_ca = peer.facts.clone();
    }

    let mut certified_key = None;
    if let (Some((ders, chain_facts)), Some(key_file)) = (&chain, &parts.key) {
        let leaf = &chain_facts[0];
        let cert_path = &parts
            .cert
            .as_ref()
            .map(|f| f.path.clone())
            .unwrap_or_default();
        if let Some(sk) = signing_key {
            let ck = CertifiedKey::new(ders.clone(), sk);
            match ck.keys_match() {
                Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                    errors.push(ValidateError::KeyMismatch {
                        key: key_file.path.clone(),
                        cert: cert_path.clone(),
                        serial: leaf.serial.clone(),
                    })
                }
                // `Unknown`: the provider cannot derive the public key; rustls will still
                // refuse a mismatched pair at handshake time, so do not block here.
                _ => certified_key = Some(Arc::new(ck)),
            }
        }
    }

    if let (Some((ders, chain_facts)), Some(cert_file)) = (&chain, &parts.cert) {
        let leaf = &chain_facts[0];
        let time_ok = rules::validity(leaf, &cert_file.path, now, &mut errors);
        let passed_roles = rules::usage(leaf, &cert_file.path, policy.usage, &mut errors);
        rules::identity(leaf, &cert_file.path, policy, &mut errors);
        if let (false, Some(ca_file)) = (ca.anchors.is_empty(), &parts.ca) {
            let input = chain::ChainInput {
                cert_path: &cert_file.path,
                ca_path: &ca_file.path,
                chain: ders,
                chain_facts,
                anchors: &ca.anchors,
                anchor_subjects: &ca.anchor_subjects,
                required_ekus: &passed_roles,
                time: rules::chain_time(leaf, now, time_ok),
            };
            facts.chain = match chain::verify(&input) {
                Ok(ca) => ChainStatus::Ok { ca },
                Err(e) => {
                    errors.push(e);
                    ChainStatus::Failed
                }
            };
        }
    }

    let bundle = match (errors.is_empty(), parts, certified_key, &facts.leaf) {
        (
            true,
            Parts {
                cert: Some(cert),
                key: Some(key),
                ca: Some(ca_file),
                peer_ca,
            },
            Some(ck),
            Some(leaf),
        ) => Some(Bundle::new(
            ck,
            Arc::new(RootCertStore { roots: ca.anchors }),
            peer.map(|p| Arc::new(RootCertStore { roots: p.anchors })),
            leaf.clone(),
            facts.ca.clone(),
            RawBundle {
                cert,
                key,
                ca: ca_file,
                peer_ca,
            },
        )),
        _ => None,
    };
    Inspection {
        facts,
        errors,
        bundle,
    }
}

/// `tls.crt`: leaf then intermediates, each parsed. `None` if unusable (errors recorded).
fn read_chain(
    file: &RawFile,
    errors: &mut Vec<ValidateError>,
) -> Option<(Vec<CertificateDer<'static>>, Vec<CertFacts>)> {
    let decoded = match decode_or_record(file, errors)? {
        (Shape::Empty, _) => {
            errors.push(ValidateError::NoCertificate {
                path: file.path.clone(),
                hint: "the file is empty; has cert-manager issued the certificate yet? (kubectl describe certificate)".into(),
            });
            return None;
        }
        (_, d) if d.certs.is_empty() => {
            errors.push(ValidateError::NoCertificate {
                path: file.path.clone(),
                hint: only_holds(
                    &d.labels,
                    "a CERTIFICATE block",
                    "are tls.crt and tls.key swapped?",
                ),
            });
            return None;
        }
        (_, d) => d,
    };
    let mut facts = Vec::with_capacity(decoded.certs.len());
    for (i, der) in decoded.certs.iter().enumerate() {
        match CertFacts::from_der(der) {
            Ok(f) => facts.push(f),
            Err(detail) => {
                errors.push(ValidateError::BadPem {
                    role: file.role,
                    path: file.path.clone(),
                    detail: format!("certificate #{} is {detail}", i + 1),
                });
                return None;
            }
        }
    }
    Some((decoded.certs, facts))
}

/// `tls.key`: exactly one supported key. Returns its facts, and the loaded key if usable.
fn read_key(
    file: &RawFile,
    errors: &mut Vec<ValidateError>,
) -> Option<(KeyFacts, Option<Arc<dyn rustls::sign::SigningKey>>)> {
    let path = &file.path;
    let mut decoded = match decode_or_record(file, errors)? {
        (Shape::Empty, _) => {
            errors.push(ValidateError::NoPrivateKey {
                path: path.clone(),
                hint: "the file is empty; check the Secret's tls.key".into(),
            });
            return None;
        }
        (_, d) => d,
    };
    let unsupported: Vec<String> = decoded
        .unsupported_key_labels()
        .map(str::to_owned)
        .collect();
    let count = decoded.keys.len() + unsupported.len();
    if count == 0 {
        errors.push(ValidateError::NoPrivateKey {
            path: path.clone(),
            hint: only_holds(
                &decoded.labels,
                "a PRIVATE KEY block",
                "are tls.crt and tls.key swapped?",
            ),
        });
        return None;
    }
    if count > 1 {
        errors.push(ValidateError::MultiplePrivateKeys {
            path: path.clone(),
            count,
        });
        return None;
    }
    if let Some(label) = unsupported.first() {
        let what = match label.as_str() {
            "ENCRYPTED PRIVATE KEY" => {
                "an encrypted key (decrypt it with `openssl pkey -in KEY -out KEY.pem`)".to_string()
            }
            other => format!("a key in `{other}` format"),
        };
        errors.push(ValidateError::UnsupportedKey {
            path: path.clone(),
            what,
        });
        return None;
    }
    // `count == 1` and no unsupported label: exactly one decoded key.
    let key = decoded.keys.pop()?;
    let key_facts = match key::classify(&key) {
        Ok(f) => f,
        Err(detail) => {
            errors.push(ValidateError::BadPem {
                role: file.role,
                path: path.clone(),
                detail,
            });
            return None;
        }
    };
    if let Err(e) = key::check_allowed(&key_facts.kind, path) {
        errors.push(e);
        return Some((key_facts, None));
    }
    match key::load(key, path) {
        Ok(sk) => Some((key_facts, Some(sk))),
        Err(e) => {
            errors.push(e);
            Some((key_facts, None))
        }
    }
}

/// A CA bundle's certificates: all parsed, all CAs, at least one.
#[derive(Default)]
struct CaBundle {
    facts: Vec<CertFacts>,
    anchors: Vec<TrustAnchor<'static>>,
    anchor_subjects: Vec<String>,
}

fn read_ca(file: &RawFile, errors: &mut Vec<ValidateError>) -> CaBundle {
    let mut out = CaBundle::default();
    let empty = |hint: String| ValidateError::EmptyCaBundle {
        role: file.role,
        path: file.path.clone(),
        hint,
    };
    let decoded = match decode_or_record(file, errors) {
        None => return out,
        Some((Shape::Empty, _)) => {
            errors.push(empty("the file is empty; with a CA issuer cert-manager fills ca.crt, otherwise mount a CA bundle (e.g. a trust-manager ConfigMap) and use that file as the CA bundle".into()));
            return out;
        }
        Some((_, d)) if d.certs.is_empty() => {
            errors.push(empty(only_holds(
                &d.labels,
                "a CERTIFICATE block",
                "this file should hold the CA certificates",
            )));
            return out;
        }
        Some((_, d)) => d,
    };
    for (i, der) in decoded.certs.into_iter().enumerate() {
        let facts = match CertFacts::from_der(&der) {
            Ok(f) => f,
            Err(detail) => {
                errors.push(ValidateError::BadPem {
                    role: file.role,
                    path: file.path.clone(),
                    detail: format!("certificate #{} is {detail}", i + 1),
                });
                continue;
            }
        };
        if !facts.is_ca {
            errors.push(ValidateError::CaNotACa {
                role: file.role,
                path: file.path.clone(),
                index: i + 1,
                subject: facts.subject.clone(),
            });
        } else {
            match webpki::anchor_from_trusted_cert(&der) {
                Ok(anchor) => {
                    out.anchors.push(anchor.to_owned());
                    out.anchor_subjects.push(facts.subject.clone());
                }
                Err(e) => errors.push(ValidateError::BadPem {
                    role: file.role,
                    path: file.path.clone(),
                    detail: format!(
                        "certificate #{} cannot be used as a trust anchor ({e:?})",
                        i + 1
                    ),
                }),
            }
        }
        out.facts.push(facts);
    }
    out
}

/// PEM-decodes a file, recording syntax errors and non-PEM content as `bad_pem`.
fn decode_or_record(
    file: &RawFile,
    errors: &mut Vec<ValidateError>,
) -> Option<(Shape, pem::Decoded)> {
    let bad = |detail: String| ValidateError::BadPem {
        role: file.role,
        path: file.path.clone(),
        detail,
    };
    match pem::decode(file.bytes()) {
        Err(syntax) => {
            errors.push(bad(syntax.0));
            None
        }
        Ok((Shape::NotPem { looks_like_der }, _)) => {
            errors.push(bad(if looks_like_der {
                format!(
                    "it looks like binary DER; convert it to PEM ({})",
                    der_hint(file.role, &file.path)
                )
            } else {
                "it contains no -----BEGIN line; the file is not PEM".to_string()
            }));
            None
        }
        Ok(ok) => Some(ok),
    }
}

fn der_hint(role: FileRole, path: &Path) -> String {
    let p = path.display();
    match role {
        FileRole::Key => format!("openssl pkey -inform DER -in {p} -out {p}.pem"),
        _ => format!("openssl x509 -inform DER -in {p} -out {p}.pem"),
    }
}

fn only_holds(labels: &[String], wanted: &str, swapped_hint: &str) -> String {
    let list = labels.join(", ");
    let swapped = labels
        .iter()
        .any(|l| l == "CERTIFICATE" || l.ends_with("PRIVATE KEY"));
    if swapped {
        format!("it holds only {list}, not {wanted}; {swapped_hint}")
    } else {
        format!("it holds only {list}, not {wanted}")
    }
}
