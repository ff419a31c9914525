//! X.509 names, in one place for the whole program: the subject alternative names of a
//! certificate (extracted once, by this module, for validation facts, peer identities and
//! server pins) and the one rule by which a DNS name matches a certificate, used by
//! `--expect-dns` (our leaf), `--allow-dns` (a client) and `--verify-dns` (a server).
//!
//! The DNS rule (RFC 6125 section 6.4, as webpki applies it to server names): names compare
//! ASCII case-insensitively, a trailing dot is ignored on either side, and a SAN of the form
//! `*.rest` (a `*` that is the whole left-most label, `rest` having at least two labels) covers
//! exactly one more label: `*.example.com` covers `api.example.com`, not `example.com` nor
//! `a.b.example.com`. A `*` anywhere else is an ordinary character, and the name asked for is
//! never a pattern (`--allow-dns '*.example.com'` matches only a SAN `*.example.com`).

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// The subject alternative names of a certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sans {
    pub dns: Vec<String>,
    pub uri: Vec<String>,
    /// Every name as `KIND:value` (`DNS:`, `URI:`, `IP:`, `email:`), for reports.
    pub display: Vec<String>,
}

impl Sans {
    /// True if one of the DNS SANs covers `name` (see the module docs).
    pub fn covers_dns(&self, name: &str) -> bool {
        self.dns.iter().any(|san| dns_matches(san, name))
    }
}

/// The SANs of a parsed certificate; Err if its subjectAltName extension is malformed.
pub fn sans(cert: &X509Certificate<'_>) -> Result<Sans, String> {
    let mut out = Sans::default();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("malformed subjectAltName ({e})"))?;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(d) => {
                out.display.push(format!("DNS:{d}"));
                out.dns.push(d.to_string());
            }
            GeneralName::URI(u) => {
                out.display.push(format!("URI:{u}"));
                out.uri.push(u.to_string());
            }
            GeneralName::IPAddress(ip) => out.display.push(format!("IP:{}", ip_string(ip))),
            GeneralName::RFC822Name(e) => out.display.push(format!("email:{e}")),
            _ => {}
        }
    }
    Ok(out)
}

/// The SANs of a DER certificate; `None` if it cannot be parsed.
pub fn sans_from_der(der: &[u8]) -> Option<Sans> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    sans(&cert).ok()
}

/// True if the DNS SAN `san` covers the DNS name `name` (see the module docs).
pub fn dns_matches(san: &str, name: &str) -> bool {
    let san = san.strip_suffix('.').unwrap_or(san);
    let name = name.strip_suffix('.').unwrap_or(name);
    if san.eq_ignore_ascii_case(name) {
        return true;
    }
    let Some(base) = san.strip_prefix("*.") else {
        return false;
    };
    // `*.com` would cover every name under a top-level domain: not a wildcard we honour.
    if !base.contains('.') || base.contains('*') {
        return false;
    }
    match name.split_once('.') {
        Some((label, rest)) => {
            !label.is_empty() && !label.contains('*') && rest.eq_ignore_ascii_case(base)
        }
        None => false,
    }
}

fn ip_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()).to_string(),
        _ => hex::encode(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::dns_matches;

    /// The rule as a table: (SAN in the certificate, name asked for, matches).
    const RULE: &[(&str, &str, bool)] = &[
        ("api.example.com", "api.example.com", true),
        ("API.Example.COM", "api.example.com", true),
        ("api.example.com", "API.EXAMPLE.COM", true),
        ("api.example.com.", "api.example.com", true),
        ("api.example.com", "api.example.com.", true),
        ("api.example.com", "example.com", false),
        ("api.example.com", "x.api.example.com", false),
        ("*.example.com", "api.example.com", true),
        ("*.Example.com", "API.example.com.", true),
        ("*.example.com.", "api.example.com", true),
        ("*.example.com", "example.com", false),
        ("*.example.com", "a.b.example.com", false),
        ("*.example.com", ".example.com", false),
        ("*.com", "example.com", false),
        ("*.*.example.com", "a.b.example.com", false),
        ("f*.example.com", "foo.example.com", false),
        ("*.example.com", "*.example.com", true),
        ("api.example.com", "*.example.com", false),
        ("*.", "a.", false),
    ];

    #[test]
    fn one_dns_rule() {
        for (san, name, want) in RULE {
            assert_eq!(dns_matches(san, name), *want, "SAN {san:?} for {name:?}");
        }
    }
}
