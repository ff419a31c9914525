//! Public facts about certificates and keys, extracted once with x509-parser: what `check`
//! prints, what `/status` and the metrics show, and what the rules in `validate` look at.

use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use crate::creds::dn;

/// The algorithm and size of a public or private key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum KeyKind {
    #[serde(rename = "RSA")]
    Rsa {
        bits: u32,
    },
    #[serde(rename = "ECDSA")]
    Ecdsa {
        curve: String,
    },
    Ed25519,
    #[serde(rename = "other")]
    Other {
        algorithm: String,
    },
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA {bits}"),
            KeyKind::Ecdsa { curve } => write!(f, "ECDSA {curve}"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::Other { algorithm } => write!(f, "algorithm {algorithm}"),
        }
    }
}

pub(crate) const OID_RSA: &str = "1.2.840.113549.1.1.1";
pub(crate) const OID_EC: &str = "1.2.840.10045.2.1";
pub(crate) const OID_ED25519: &str = "1.3.101.112";

/// Names curves by OID the way cert-manager and OpenSSL users know them.
pub(crate) fn curve_name(oid: &str) -> String {
    match oid {
        "1.2.840.10045.3.1.7" => "P-256".into(),
        "1.3.132.0.34" => "P-384".into(),
        "1.3.132.0.35" => "P-521".into(),
        "1.3.132.0.10" => "secp256k1".into(),
        other => format!("curve {other}"),
    }
}

/// Key algorithm names for an algorithm OID with no size or curve.
pub(crate) fn algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.113549.1.1.10" => "RSA-PSS".into(),
        "1.2.840.10040.4.1" => "DSA".into(),
        "1.3.101.113" => "Ed448".into(),
        "1.3.101.110" => "X25519".into(),
        "1.3.101.111" => "X448".into(),
        other => other.into(),
    }
}

/// Bit length of a big-endian unsigned integer (leading zero bytes and bits ignored).
pub(crate) fn bit_len(be: &[u8]) -> u32 {
    let trimmed: &[u8] = match be.iter().position(|b| *b != 0) {
        Some(i) => &be[i..],
        None => return 0,
    };
    trimmed.len() as u32 * 8 - trimmed[0].leading_zeros()
}

/// What a certificate says about itself.
#[derive(Clone, Debug, Serialize)]
pub struct CertFacts {
    /// RFC 2253, most specific first (as nginx `$ssl_client_s_dn`).
    pub subject: String,
    pub issuer: String,
    /// Lowercase hex, no colons, no leading zero bytes.
    pub serial: String,
    /// Lowercase hex SHA-256 of the DER (`openssl x509 -outform DER | sha256sum`).
    pub sha256: String,
    /// `DNS:name`, `URI:uri`, `IP:addr`, `email:addr`, in certificate order.
    pub sans: Vec<String>,
    /// Extended key usages by name; empty when the certificate has no EKU extension.
    pub ekus: Vec<String>,
    pub public_key: KeyKind,
    pub is_ca: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(skip)]
    pub(crate) eku: EkuFlags,
    #[serde(skip)]
    pub(crate) dns_sans: Vec<String>,
    #[serde(skip)]
    pub(crate) uri_sans: Vec<String>,
}

/// The EKU extension as flags, for the usage rule.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EkuFlags {
    pub(crate) present: bool,
    pub(crate) server: bool,
    pub(crate) client: bool,
}

impl CertFacts {
    /// Extracts facts; `Err` carries a short description of what is malformed.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not a valid X.509 certificate ({e})"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the certificate".into());
        }
        Self::from_parsed(&cert, der)
    }

    fn from_parsed(cert: &X509Certificate<'_>, der: &[u8]) -> Result<Self, String> {
        let crate::creds::x509::Sans {
            dns: dns_sans,
            uri: uri_sans,
            display: sans,
        } = crate::creds::x509::sans(cert)?;
        let mut eku = EkuFlags::default();
        let mut ekus = Vec::new();
        if let Some(ext) = cert
            .extended_key_usage()
            .map_err(|e| format!("malformed extendedKeyUsage ({e})"))?
        {
            let v = ext.value;
            eku = EkuFlags {
                present: true,
                server: v.server_auth,
                client: v.client_auth,
            };
            let named = [
                (v.server_auth, "serverAuth"),
                (v.client_auth, "clientAuth"),
                (v.code_signing, "codeSigning"),
                (v.email_protection, "emailProtection"),
                (v.time_stamping, "timeStamping"),
                (v.ocsp_signing, "OCSPSigning"),
                (v.any, "anyExtendedKeyUsage"),
            ];
            ekus.extend(
                named
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| n.to_string()),
            );
            ekus.extend(v.other.iter().map(|o| o.to_id_string()));
        }
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| format!("malformed basicConstraints ({e})"))?
            .is_some_and(|bc| bc.value.ca);
        let validity = cert.validity();
        Ok(CertFacts {
            subject: dn::rfc2253(cert.subject()),
            issuer: dn::rfc2253(cert.issuer()),
            serial: serial_hex(cert.raw_serial()),
            sha256: hex::encode(Sha256::digest(der)),
            sans,
            ekus,
            public_key: spki_kind(cert),
            is_ca,
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            eku,
            dns_sans,
            uri_sans,
        })
    }
}

/// Serial as /status shows it: lowercase hex without colons or DER padding.
fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[start..])
}

fn spki_kind(cert: &X509Certificate<'_>) -> KeyKind {
    let spki = cert.public_key();
    let oid = spki.algorithm.algorithm.to_id_string();
    match oid.as_str() {
        OID_RSA => match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => KeyKind::Rsa {
                bits: bit_len(rsa.modulus),
            },
            _ => KeyKind::Other {
                algorithm: "RSA (malformed)".into(),
            },
        },
        OID_EC => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| curve_name(&o.to_id_string()))
                .unwrap_or_else(|| "unknown curve".into());
            KeyKind::Ecdsa { curve }
        }
        OID_ED25519 => KeyKind::Ed25519,
        other => KeyKind::Other {
            algorithm: algorithm_name(other),
        },
    }
}

/// RFC 3339 in UTC, second precision: `2026-11-28T04:06:42Z`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// A short span for humans: `89d 23h`, `5h 12m`, `42s`.
pub fn human_span(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3_600, (s % 3_600) / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {}s", s % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_len_ignores_padding() {
        assert_eq!(bit_len(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_len(&[0x01, 0x00]), 9);
        assert_eq!(bit_len(&[0x00]), 0);
    }

    #[test]
    fn spans_read_well() {
        assert_eq!(human_span(42), "42s");
        assert_eq!(human_span(-3_700), "1h 1m");
        assert_eq!(human_span(90 * 86_400 - 3_600), "89d 23h");
    }

    #[test]
    fn serial_strips_der_padding() {
        assert_eq!(serial_hex(&[0x00, 0x9f, 0x01]), "9f01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[0x1f]), "1f");
    }
}
