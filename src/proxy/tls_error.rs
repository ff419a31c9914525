//! Handshake errors in words, for logs and `502` bodies. rustls prints some certificate errors
//! with Rust debug text (`DnsName("api")`, `IpAddress(10.0.0.1)`) and times as UNIX seconds;
//! these are rewritten here, the others keep rustls' wording. Both directions use it: a client's
//! refused certificate in `server`'s log, the app's server in `client`'s answers.

use std::io;

use rustls::pki_types::{ServerName, UnixTime};
use rustls::{CertificateError, Error as TlsError};
use time::OffsetDateTime;

use crate::creds::validate::{human_span, rfc3339};

/// `e` in words: its TLS error if it carries one, else its own text.
pub fn describe(e: &io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) {
        Some(tls) => describe_tls(tls),
        None => e.to_string(),
    }
}

/// A rustls error in words.
pub fn describe_tls(e: &TlsError) -> String {
    let TlsError::InvalidCertificate(c) = e else {
        return e.to_string();
    };
    match c {
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names: Vec<&str> = presented.iter().map(|p| plain_name(p)).collect();
            let names = if names.is_empty() {
                "no DNS name or IP address".to_string()
            } else {
                names.join(", ")
            };
            format!(
                "the certificate is not valid for {}: it names {names}",
                server_name(expected)
            )
        }
        CertificateError::ExpiredContext { time, not_after } => format!(
            "the certificate expired at {} ({} ago)",
            when(not_after),
            human_span(secs(time) - secs(not_after))
        ),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "the certificate is not valid before {} ({} from now)",
            when(not_before),
            human_span(secs(not_before) - secs(time))
        ),
        _ => e.to_string(),
    }
}

fn server_name(n: &ServerName<'_>) -> String {
    match n {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => other.to_str().into_owned(),
    }
}

/// `DnsName("api")` -> `api`, `IpAddress(10.0.0.1)` -> `10.0.0.1`; anything else as it is.
fn plain_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|s| s.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|s| s.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

fn secs(t: &UnixTime) -> i64 {
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

fn when(t: &UnixTime) -> String {
    OffsetDateTime::from_unix_timestamp(secs(t)).map_or_else(|_| format!("{}", secs(t)), rfc3339)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(c: CertificateError) -> String {
        describe_tls(&TlsError::InvalidCertificate(c))
    }

    #[test]
    fn certificate_errors_read_without_debug_text_or_unix_seconds() {
        let name = invalid(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("api.example").unwrap(),
            presented: vec![
                "DnsName(\"localhost\")".into(),
                "IpAddress(127.0.0.1)".into(),
            ],
        });
        assert_eq!(
            name,
            "the certificate is not valid for api.example: it names localhost, 127.0.0.1"
        );
        let expired = invalid(CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_799_996_400)),
        });
        assert_eq!(
            expired,
            "the certificate expired at 2027-01-15T07:00:00Z (1h 0m ago)"
        );
        let early = invalid(CertificateError::NotValidYetContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_000)),
            not_before: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_800_000_090)),
        });
        assert_eq!(
            early,
            "the certificate is not valid before 2027-01-15T08:01:30Z (1m 30s from now)"
        );
        assert!(!invalid(CertificateError::UnknownIssuer).is_empty());
    }
}
