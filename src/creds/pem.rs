//! PEM decoding of credential files (rustls-pki-types' parser: it skips text around blocks and
//! accepts `\r\n`). Adds what a diagnosis needs: the labels present, and whether a file holds
//! any PEM at all. Key bytes are never put into an error.

use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM syntax problem, described without echoing file content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PemSyntax(pub String);

/// What a credential file holds, decoded.
#[derive(Debug, Default)]
pub struct Decoded {
    pub certs: Vec<CertificateDer<'static>>,
    pub keys: Vec<PrivateKeyDer<'static>>,
    /// Every `-----BEGIN <label>-----` seen, in order, including labels the parser skips
    /// (e.g. `ENCRYPTED PRIVATE KEY`).
    pub labels: Vec<String>,
}

impl Decoded {
    /// Private-key blocks this tool cannot use (encrypted, DSA, OpenSSH, ...).
    pub fn unsupported_key_labels(&self) -> impl Iterator<Item = &str> {
        self.labels
            .iter()
            .map(String::as_str)
            .filter(|l| l.ends_with("PRIVATE KEY") && !is_supported_key_label(l))
    }
}

/// Why a file's bytes are not PEM at all, or are broken PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Zero bytes or only whitespace.
    Empty,
    /// Bytes, but no `-----BEGIN` line anywhere.
    NotPem { looks_like_der: bool },
    /// PEM blocks present and well-formed.
    Pem,
}

/// Decodes every block the parser knows; a syntax error anywhere fails the whole file.
pub fn decode(bytes: &[u8]) -> Result<(Shape, Decoded), PemSyntax> {
    let labels = begin_labels(bytes);
    if labels.is_empty() {
        let shape = if bytes.iter().all(u8::is_ascii_whitespace) {
            Shape::Empty
        } else {
            // DER certificates and keys are an ASN.1 SEQUENCE: first byte 0x30.
            Shape::NotPem {
                looks_like_der: bytes.first() == Some(&0x30),
            }
        };
        return Ok((shape, Decoded::default()));
    }
    let mut out = Decoded {
        labels,
        ..Decoded::default()
    };
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        let (kind, der) = item.map_err(describe)?;
        match kind {
            SectionKind::Certificate => out.certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                // from_pem cannot fail for these kinds; the match above guarantees it.
                if let Some(key) = PrivateKeyDer::from_pem(kind, der) {
                    out.keys.push(key);
                }
            }
            _ => {}
        }
    }
    Ok((Shape::Pem, out))
}

fn is_supported_key_label(label: &str) -> bool {
    matches!(label, "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY")
}

fn begin_labels(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == b'\n' || *b == b'\r')
        .filter_map(|line| {
            let line = line.trim_ascii();
            let rest = line.strip_prefix(b"-----BEGIN ")?;
            let label = rest.strip_suffix(b"-----")?;
            Some(String::from_utf8_lossy(label).into_owned())
        })
        .collect()
}

fn describe(err: pem::Error) -> PemSyntax {
    PemSyntax(match err {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "the {} block has no END line (file truncated or cut while copying?)",
            String::from_utf8_lossy(&end_marker)
        ),
        pem::Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => {
            "a PEM block's base64 body is corrupt (edited, truncated or double-encoded?)".into()
        }
        _ => "the PEM data is malformed".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT_BLOCK: &str = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";

    #[test]
    fn crlf_and_surrounding_text_are_accepted() {
        let text = format!(
            "subject=CN=x\r\nissuer=CN=y\r\n{}trailing words\r\n",
            CERT_BLOCK.replace('\n', "\r\n")
        );
        let (shape, d) = decode(text.as_bytes()).unwrap();
        assert_eq!(shape, Shape::Pem);
        assert_eq!(d.certs.len(), 1);
        assert_eq!(d.certs[0].as_ref(), &[0x30, 0x03, 0x02, 0x01, 0x00]);
    }

    #[test]
    fn empty_and_garbage_are_told_apart() {
        assert_eq!(decode(b"  \n").unwrap().0, Shape::Empty);
        assert_eq!(
            decode(b"hello").unwrap().0,
            Shape::NotPem {
                looks_like_der: false
            }
        );
        assert_eq!(
            decode(&[0x30, 0x82, 0x01]).unwrap().0,
            Shape::NotPem {
                looks_like_der: true
            }
        );
    }

    #[test]
    fn truncated_block_is_a_syntax_error() {
        let err = decode(b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n").unwrap_err();
        assert!(err.0.contains("no END line"), "{err}");
    }

    #[test]
    fn encrypted_keys_are_seen_as_unsupported() {
        let text = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAMCAQA=\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let (_, d) = decode(text.as_bytes()).unwrap();
        assert!(d.keys.is_empty());
        assert_eq!(
            d.unsupported_key_labels().collect::<Vec<_>>(),
            ["ENCRYPTED PRIVATE KEY"]
        );
    }
}
