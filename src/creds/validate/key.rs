//! The private key: which algorithm and size it is (from its own encoding, so a weak or exotic
//! key is named even when the crypto provider refuses it), whether the contract allows it, and loading it
//! into a rustls `SigningKey`. Nothing here formats key bytes.

use std::path::Path;
use std::sync::Arc;

use rustls::sign::SigningKey;
use rustls_pki_types::PrivateKeyDer;
use serde::Serialize;

use super::error::ValidateError;
use super::facts::{algorithm_name, bit_len, curve_name, KeyKind, OID_EC, OID_ED25519, OID_RSA};

/// What a private key is and how it was encoded.
#[derive(Clone, Debug, Serialize)]
pub struct KeyFacts {
    #[serde(flatten)]
    pub kind: KeyKind,
    /// `PKCS#8`, `PKCS#1` or `SEC1`.
    pub encoding: &'static str,
}

/// Reads algorithm and size from the key's own DER; `Err` says what is malformed.
pub(super) fn classify(key: &PrivateKeyDer<'_>) -> Result<KeyFacts, String> {
    match key {
        PrivateKeyDer::Pkcs1(k) => Ok(KeyFacts {
            kind: rsa_kind(k.secret_pkcs1_der())?,
            encoding: "PKCS#1",
        }),
        PrivateKeyDer::Sec1(k) => Ok(KeyFacts {
            kind: sec1_kind(k.secret_sec1_der(), None)?,
            encoding: "SEC1",
        }),
        PrivateKeyDer::Pkcs8(k) => {
            let info = pkcs8::PrivateKeyInfo::try_from(k.secret_pkcs8_der())
                .map_err(|_| "the PKCS#8 structure is malformed".to_string())?;
            let oid = info.algorithm.oid.to_string();
            let kind = match oid.as_str() {
                OID_RSA => rsa_kind(info.private_key)?,
                OID_EC => {
                    let curve = info.algorithm.parameters_oid().ok().map(|o| o.to_string());
                    sec1_kind(info.private_key, curve)?
                }
                OID_ED25519 => KeyKind::Ed25519,
                other => KeyKind::Other {
                    algorithm: algorithm_name(other),
                },
            };
            Ok(KeyFacts {
                kind,
                encoding: "PKCS#8",
            })
        }
        _ => Err("unknown private key encoding".into()),
    }
}

fn rsa_kind(pkcs1_der: &[u8]) -> Result<KeyKind, String> {
    let rsa = pkcs1::RsaPrivateKey::try_from(pkcs1_der)
        .map_err(|_| "the RSA key structure is malformed".to_string())?;
    Ok(KeyKind::Rsa {
        bits: bit_len(rsa.modulus.as_bytes()),
    })
}

/// `curve_oid` comes from the PKCS#8 wrapper when present; a bare SEC1 key names its own curve,
/// and without either the scalar length tells P-256 (32 bytes) from P-384 (48 bytes).
fn sec1_kind(sec1_der: &[u8], curve_oid: Option<String>) -> Result<KeyKind, String> {
    let ec = sec1::EcPrivateKey::try_from(sec1_der)
        .map_err(|_| "the EC key structure is malformed".to_string())?;
    let oid = curve_oid.or_else(|| {
        ec.parameters
            .and_then(|p| p.named_curve())
            .map(|o| o.to_string())
    });
    let curve = match oid {
        Some(oid) => curve_name(&oid),
        None => match ec.private_key.len() {
            32 => "P-256".into(),
            48 => "P-384".into(),
            66 => "P-521".into(),
            n => format!("unknown curve ({n}-byte scalar)"),
        },
    };
    Ok(KeyKind::Ecdsa { curve })
}

/// The contract ("Keys"): RSA 2048-8192, ECDSA P-256/P-384, Ed25519.
pub(super) fn check_allowed(kind: &KeyKind, path: &Path) -> Result<(), ValidateError> {
    let unsupported = |what: String| ValidateError::UnsupportedKey {
        path: path.to_path_buf(),
        what,
    };
    match kind {
        KeyKind::Rsa { bits } if *bits < 2048 => Err(ValidateError::WeakKey {
            path: path.to_path_buf(),
            bits: *bits,
        }),
        KeyKind::Rsa { bits } if *bits > 8192 => Err(unsupported(format!(
            "an RSA key of {bits} bits (over 8192)"
        ))),
        KeyKind::Rsa { .. } | KeyKind::Ed25519 => Ok(()),
        KeyKind::Ecdsa { curve } if curve == "P-256" || curve == "P-384" => Ok(()),
        KeyKind::Ecdsa { curve } => Err(unsupported(format!("an ECDSA key on {curve}"))),
        KeyKind::Other { algorithm } => Err(unsupported(format!("a {algorithm} key"))),
    }
}

/// Hands the key to the aws-lc-rs provider, which also checks its internal consistency.
pub(super) fn load(
    key: PrivateKeyDer<'static>,
    path: &Path,
) -> Result<Arc<dyn SigningKey>, ValidateError> {
    rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| ValidateError::UnsupportedKey {
            path: path.to_path_buf(),
            what: format!("a key the TLS library refuses ({e})"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_rules() {
        let p = Path::new("/k");
        let rsa = |bits| KeyKind::Rsa { bits };
        assert!(matches!(
            check_allowed(&rsa(1024), p),
            Err(ValidateError::WeakKey { bits: 1024, .. })
        ));
        assert!(check_allowed(&rsa(2048), p).is_ok());
        assert!(check_allowed(&rsa(8192), p).is_ok());
        assert!(matches!(
            check_allowed(&rsa(16384), p),
            Err(ValidateError::UnsupportedKey { .. })
        ));
        let ec = |c: &str| KeyKind::Ecdsa { curve: c.into() };
        assert!(check_allowed(&ec("P-256"), p).is_ok());
        assert!(check_allowed(&ec("P-384"), p).is_ok());
        assert!(check_allowed(&ec("P-521"), p).is_err());
        assert!(check_allowed(&KeyKind::Ed25519, p).is_ok());
    }
}
