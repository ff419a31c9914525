//! Distinguished names rendered as RFC 2253 strings, the way nginx's `$ssl_client_s_dn` and
//! OpenSSL's `-nameopt RFC2253` print them: most specific RDN first, `,` between RDNs, `+` inside
//! a multi-valued RDN, special characters, control bytes and non-ASCII bytes escaped.

use std::fmt::Write;

use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// `CN=web-app,OU=Web Services,O=Example Org` for a subject written `/O=.../OU=.../CN=web-app`.
pub fn rfc2253(name: &X509Name<'_>) -> String {
    let rdns: Vec<_> = name.iter_rdn().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            push_atv(&mut out, atv);
        }
    }
    out
}

fn push_atv(out: &mut String, atv: &AttributeTypeAndValue<'_>) {
    let oid = atv.attr_type().to_id_string();
    match (short_name(&oid), atv.as_str()) {
        (Some(name), Ok(value)) => {
            out.push_str(name);
            out.push('=');
            escape_into(out, value);
        }
        // RFC 2253 2.4: unknown types use the dotted OID and the value's DER as #hex.
        _ => {
            let _ = write!(
                out,
                "{}=#{}",
                short_name(&oid).unwrap_or(&oid),
                hex::encode(atv.attr_value().data)
            );
        }
    }
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.42" => "GN",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

fn escape_into(out: &mut String, value: &str) {
    let last = value.len().saturating_sub(1);
    for (i, b) in value.bytes().enumerate() {
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(b as char);
            }
            b'#' if i == 0 => out.push_str("\\#"),
            b' ' if i == 0 || i == last => out.push_str("\\ "),
            0x00..=0x1f | 0x7f..=0xff => {
                let _ = write!(out, "\\{b:02X}");
            }
            _ => out.push(b as char),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(v: &str) -> String {
        let mut s = String::new();
        escape_into(&mut s, v);
        s
    }

    #[test]
    fn escapes_specials_and_edges() {
        assert_eq!(escaped("Example, Inc."), "Example\\, Inc.");
        assert_eq!(escaped("#1 "), "\\#1\\ ");
        assert_eq!(escaped("a+b;c"), "a\\+b\\;c");
        assert_eq!(escaped("é"), "\\C3\\A9");
        assert_eq!(escaped("Web Services"), "Web Services");
    }
}
