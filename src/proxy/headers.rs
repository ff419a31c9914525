//! Header hygiene of forwarded requests, shared by both directions: which client-sent headers
//! are dropped because an app trusts them as the proxy's word (identity and forwarding
//! headers), and which requests are malformed by their `Host` headers (RFC 9112 3.2).
//!
//! Protected names are compared the way the apps that trust them read them: ASCII
//! case-insensitively and with `_` folded to `-`. CGI/WSGI-style servers (and nginx with
//! `underscores_in_headers on`, Puma before CVE-2024-45614) map `X-Client-DN` and
//! `X_Client_DN` to the same variable, so either spelling could forge an identity.

use hyper::header::{HeaderMap, HeaderName, HOST};
use hyper::{Request, Version};

/// Headers dropped from every client request by exact (folded) name.
pub const PROTECTED: &[&str] = &[
    // Ours: set by the `server` listener from the verified certificate.
    "x-client-cert",
    "x-client-dn",
    "x-client-verify",
    "x-forwarded-client-cert",
    // Forwarding headers apps trust for the client's address and the original URL.
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-real-ip",
    // Client-certificate headers of other proxies and load balancers that apps trust.
    "client-cert",       // RFC 9440
    "client-cert-chain", // RFC 9440
    "x-client-serial",
    "x-client-subject",
    "x-client-issuer",
    "x-client-s-dn",
    "x-client-i-dn",
    "x-client-fingerprint",
    "x-ssl-cert",
    "x-ssl-subject",
    "x-ssl-issuer",
    "x-ssl-verify",
    "x-arr-clientcert",  // Azure App Service / IIS ARR
    "x-tls-client-cert", // Istio-style gateways
];

/// Headers dropped by (folded) prefix: families where every member carries client-certificate
/// facts.
pub const PROTECTED_PREFIXES: &[&str] = &[
    "x-client-cert",               // -chain, -sha256, -certificate, ...
    "x-ssl-client-",               // haproxy / F5 conventions: -cert, -dn, -verify, -serial
    "ssl-client-",                 // Apache mod_ssl exported as headers: -cert, -verify, -s-dn
    "x-amzn-mtls-clientcert",      // AWS ALB: -serial-number, -issuer, -subject, -validity, -leaf
    "x-forwarded-tls-client-cert", // Traefik: and -info
];

/// True if a client must not be able to send a header named `name` through us.
pub fn is_protected(name: &str) -> bool {
    let name = name.as_bytes();
    PROTECTED
        .iter()
        .any(|p| name.len() == p.len() && folded_eq(name, p.as_bytes()))
        || PROTECTED_PREFIXES
            .iter()
            .any(|p| name.len() >= p.len() && folded_eq(&name[..p.len()], p.as_bytes()))
}

/// `a == b` after ASCII lowercasing and `_` -> `-` on `a` (`b` is already in that form).
fn folded_eq(a: &[u8], b: &[u8]) -> bool {
    a.iter().zip(b).all(|(&x, &y)| {
        let x = if x == b'_' { b'-' } else { x };
        x.to_ascii_lowercase() == y
    })
}

/// Drops every protected header (see [`is_protected`]) a client sent.
pub fn strip_protected(headers: &mut HeaderMap) {
    // Allocates only when a client actually sent one.
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_protected(n.as_str()))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Why a request's `Host` headers make it malformed (RFC 9112 3.2: answered with 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request has more than one Host header")]
    Several,
    #[error("an HTTP/1.1 request needs a Host header")]
    Missing,
    #[error("the Host header is not a valid host[:port]")]
    Invalid,
    #[error("the request's authority is not a valid host[:port]")]
    InvalidAuthority,
    #[error("the Host header names another host than the request's :authority")]
    Mismatch,
}

/// Checks the `Host` headers of a request: at most one, present on HTTP/1.1, and a valid
/// authority (or empty, which RFC 9112 allows when the target has no authority). The request
/// target's authority (HTTP/2 `:authority`, or an HTTP/1 absolute-form target) must be a valid
/// `host[:port]` too, without userinfo, and on HTTP/2 a `Host` header must name the same
/// (RFC 9113 8.3.1): the app must not read another host than the one checked.
pub fn check_host<B>(req: &Request<B>) -> Result<(), HostError> {
    if let Some(authority) = req.uri().authority() {
        if !is_host_port(authority.as_str()) {
            return Err(HostError::InvalidAuthority);
        }
        let host = req.headers().get(HOST);
        if req.version() == Version::HTTP_2
            && host.is_some_and(|h| {
                !h.as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
            })
        {
            return Err(HostError::Mismatch);
        }
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(HostError::Several),
        (None, _) if req.version() == Version::HTTP_11 => Err(HostError::Missing),
        (None, _) => Ok(()),
        (Some(v), None) if v.is_empty() => Ok(()),
        (Some(v), None) => match v.to_str() {
            Ok(s) if is_host_port(s) => Ok(()),
            _ => Err(HostError::Invalid),
        },
    }
}

/// RFC 9110 `Host = uri-host [ ":" port ]`: an IP-literal (`[` IPv6 `]`) or a reg-name (or
/// IPv4 address) of RFC 3986 characters, then optional digits. Stricter than `http`'s
/// `Authority`, which takes `x[::1]`, `[zz]` or `host:abc`: an app that reads the host out of
/// such a value may not read what we checked.
fn is_host_port(s: &str) -> bool {
    let (host_ok, rest) = match s.strip_prefix('[') {
        Some(literal) => match literal.split_once(']') {
            Some((ip, rest)) => (ip.parse::<std::net::Ipv6Addr>().is_ok(), rest),
            None => return false,
        },
        None => {
            let host = s.split(':').next().unwrap_or_default();
            (is_reg_name(host), &s[host.len()..])
        }
    };
    let port_ok = match rest.strip_prefix(':') {
        // Digits only (`+80` parses as a u16 too), and a port a u16 holds, as apps read it.
        Some(port) => {
            port.is_empty()
                || (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok())
        }
        None => rest.is_empty(),
    };
    host_ok && port_ok
}

/// A non-empty RFC 3986 reg-name: unreserved, sub-delims and `%HH` escapes.
fn is_reg_name(host: &str) -> bool {
    let b = host.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if b.len() > i + 2
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                i += 3;
                continue;
            }
            c if c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&c) => {}
            _ => return false,
        }
        i += 1;
    }
    !b.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn protected_names_in_every_spelling() {
        for name in [
            "x-client-dn",
            "x_client_dn",
            "X_Client_DN",
            "X-CLIENT-VERIFY",
            "x_forwarded_client_cert",
            "x_real_ip",
            "X_Forwarded_For",
            "forwarded",
            "x-ssl-client-cert",
            "X_SSL_Client_S_DN",
            "ssl_client_verify",
            "x-arr-clientcert",
            "x-amzn-mtls-clientcert",
            "x-amzn-mtls-clientcert-serial-number",
            "x-client-serial",
            "x-client-cert-chain",
            "client-cert",
            "x-forwarded-tls-client-cert-info",
        ] {
            assert!(is_protected(name), "{name} must be protected");
        }
    }

    #[test]
    fn ordinary_names_pass() {
        for name in [
            "host",
            "accept",
            "x-client-id",
            "x-client-version",
            "x_request_id",
            "x-forwarded",
            "x-forwarded-fo",
            "client-certificate-hint",
            "x-ssl",
            "authorization",
        ] {
            assert!(!is_protected(name), "{name} must pass");
        }
    }

    #[test]
    fn strip_removes_every_value_of_every_spelling() {
        let mut h = HeaderMap::new();
        h.append("x-client-dn", HeaderValue::from_static("CN=a"));
        h.append("x_client_dn", HeaderValue::from_static("CN=b"));
        h.append("x_client_dn", HeaderValue::from_static("CN=c"));
        h.append("accept", HeaderValue::from_static("*/*"));
        strip_protected(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    fn req(version: Version, hosts: &[&str]) -> Request<()> {
        req_to(version, "/", hosts)
    }

    fn req_to(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut r = Request::builder().version(version).uri(uri);
        for h in hosts {
            r = r.header(HOST, *h);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn host_rules() {
        use HostError::*;
        let cases: &[(Version, &[&str], Result<(), HostError>)] = &[
            (Version::HTTP_11, &["api.example:8443"], Ok(())),
            (Version::HTTP_11, &["[::1]:8443"], Ok(())),
            (Version::HTTP_11, &[""], Ok(())),
            (Version::HTTP_11, &[], Err(Missing)),
            (Version::HTTP_10, &[], Ok(())),
            (Version::HTTP_2, &[], Ok(())),
            (Version::HTTP_11, &["a", "a"], Err(Several)),
            (Version::HTTP_2, &["a", "b"], Err(Several)),
            (Version::HTTP_11, &["a b"], Err(Invalid)),
            (Version::HTTP_11, &["user@host"], Err(Invalid)),
            (Version::HTTP_11, &["host/path"], Err(Invalid)),
            (Version::HTTP_11, &["10.0.0.1:8443"], Ok(())),
            (Version::HTTP_11, &["api.example:"], Ok(())),
            (Version::HTTP_11, &["api.example:abc"], Err(Invalid)),
            (Version::HTTP_11, &["api.example:123456"], Err(Invalid)),
            (Version::HTTP_11, &["api.example:65536"], Err(Invalid)),
            (Version::HTTP_11, &["api.example:+80"], Err(Invalid)),
            (Version::HTTP_11, &["[::1]:65535"], Ok(())),
            (Version::HTTP_11, &["a:1:2"], Err(Invalid)),
            (Version::HTTP_11, &[":443"], Err(Invalid)),
            (Version::HTTP_11, &["x[::1]"], Err(Invalid)),
            (Version::HTTP_11, &["[::1]x"], Err(Invalid)),
            (Version::HTTP_11, &["[zz]"], Err(Invalid)),
            (Version::HTTP_11, &["[::1"], Err(Invalid)),
            (Version::HTTP_11, &["a%2"], Err(Invalid)),
            (Version::HTTP_11, &["a%2e"], Ok(())),
        ];
        for (version, hosts, want) in cases {
            assert_eq!(
                check_host(&req(*version, hosts)),
                *want,
                "{version:?} {hosts:?}"
            );
        }
    }

    #[test]
    fn authority_rules() {
        use HostError::*;
        type Case<'a> = (Version, &'a str, &'a [&'a str], Result<(), HostError>);
        let cases: &[Case<'_>] = &[
            (Version::HTTP_2, "https://api.example/", &[], Ok(())),
            (
                Version::HTTP_2,
                "https://api.example:8443/",
                &["API.example:8443"],
                Ok(()),
            ),
            (
                Version::HTTP_2,
                "https://api.example/",
                &["other.example"],
                Err(Mismatch),
            ),
            (
                Version::HTTP_2,
                "https://user@api.example/",
                &[],
                Err(InvalidAuthority),
            ),
            (
                Version::HTTP_2,
                "https://api.example:abc/",
                &[],
                Err(InvalidAuthority),
            ),
            (
                Version::HTTP_2,
                "https://api.example:99999/",
                &[],
                Err(InvalidAuthority),
            ),
            (
                Version::HTTP_2,
                "https://x[::1]/",
                &[],
                Err(InvalidAuthority),
            ),
            // HTTP/1 absolute form: the target's authority wins over Host (RFC 9112 3.2.2).
            (
                Version::HTTP_11,
                "http://api.example/",
                &["other.example"],
                Ok(()),
            ),
            (
                Version::HTTP_11,
                "http://user@api.example/",
                &["a"],
                Err(InvalidAuthority),
            ),
        ];
        for (version, uri, hosts, want) in cases {
            assert_eq!(
                check_host(&req_to(*version, uri, hosts)),
                *want,
                "{version:?} {uri} {hosts:?}"
            );
        }
    }
}
