//! The verified client's identity, extracted once per connection from its leaf certificate:
//! what access control matches on and what the identity headers carry (nginx's
//! `$ssl_client_escaped_cert` and `$ssl_client_s_dn`, Envoy's XFCC).

use sha2::{Digest, Sha256};

use crate::creds::dn;

#[derive(Clone, Debug, Default)]
pub struct PeerIdentity {
    pub cn: Vec<String>,
    pub ou: Vec<String>,
    pub dns: Vec<String>,
    pub uri: Vec<String>,
    /// RFC 2253 subject.
    pub subject: String,
    /// Lowercase hex SHA-256 of the leaf DER.
    pub sha256: String,
    /// The leaf as PEM, URL-encoded (`X-Client-Cert`).
    pub escaped_pem: String,
}

impl PeerIdentity {
    /// `None` if the certificate cannot be parsed (it passed webpki, so this is not expected).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let strings =
            |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
                it.filter_map(|a| a.as_str().ok().map(str::to_owned))
                    .collect::<Vec<_>>()
            };
        let mut id = PeerIdentity {
            cn: strings(&mut cert.subject().iter_common_name()),
            ou: strings(&mut cert.subject().iter_organizational_unit()),
            subject: dn::rfc2253(cert.subject()),
            sha256: hex::encode(Sha256::digest(der)),
            escaped_pem: urlencoding::encode(&pem_of(der)).into_owned(),
            ..PeerIdentity::default()
        };
        let sans = crate::creds::x509::sans(&cert).ok()?;
        (id.dns, id.uri) = (sans.dns, sans.uri);
        Some(id)
    }

    /// Envoy's `x-forwarded-client-cert` element for this peer. Every value is quoted, so a
    /// `;`, `,` or `=` inside a SAN cannot forge another field or element.
    pub fn xfcc(&self) -> String {
        let mut out = format!("Hash={};Subject={}", self.sha256, quoted(&self.subject));
        for u in &self.uri {
            out.push_str(&format!(";URI={}", quoted(u)));
        }
        for d in &self.dns {
            out.push_str(&format!(";DNS={}", quoted(d)));
        }
        out
    }
}

fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_values_cannot_forge_fields() {
        let id = PeerIdentity {
            subject: r#"CN=evil\"x"#.into(),
            sha256: "ab".into(),
            uri: vec!["spiffe://td/sa/x;DNS=admin,By=y".into()],
            dns: vec!["a.example".into()],
            ..PeerIdentity::default()
        };
        assert_eq!(
            id.xfcc(),
            r#"Hash=ab;Subject="CN=evil\\\"x";URI="spiffe://td/sa/x;DNS=admin,By=y";DNS="a.example""#
        );
    }
}
