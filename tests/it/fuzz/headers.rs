//! Fuzz target: header hygiene (`proxy::headers`). Protected names in every spelling an app
//! folds together are recognised and stripped, nothing else is touched, and the `Host` check
//! never panics and only lets through values that are an authority (or empty).

use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use hyper::http::uri::Authority;
use hyper::{Request, Version};
use mtls_sidecar::proxy::headers::{
    check_host, is_protected, strip_protected, HostError, PROTECTED, PROTECTED_PREFIXES,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

const REGRESSIONS: &str = "tests/it/fuzz/proptest-regressions/headers.txt";

/// RFC 9110 `tchar`: every byte a header name may hold.
const TCHARS: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// The reference fold, written independently of the library: ASCII lowercase, `_` -> `-`.
fn fold(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// What `is_protected` must answer, by the module's contract.
fn reference_protected(name: &str) -> bool {
    let folded = fold(name);
    PROTECTED.contains(&folded.as_str()) || PROTECTED_PREFIXES.iter().any(|p| folded.starts_with(p))
}

fn tchar() -> impl Strategy<Value = char> {
    select(TCHARS).prop_map(char::from)
}

fn token(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    vec(tchar(), len).prop_map(|cs| cs.into_iter().collect())
}

/// A protected name, or a protected prefix plus any token suffix, as the lists spell them.
fn protected_base() -> impl Strategy<Value = String> {
    prop_oneof![
        select(PROTECTED).prop_map(str::to_string),
        (select(PROTECTED_PREFIXES), token(0..16)).prop_map(|(p, s)| format!("{p}{s}")),
    ]
}

/// `base` with any mix of ASCII case and any subset of its `-` written as `_`.
fn respelled(base: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (base, vec(any::<(bool, bool)>(), 64)).prop_map(|(base, flags)| {
        base.chars()
            .enumerate()
            .map(|(i, c)| {
                let (upper, underscore) = flags.get(i).copied().unwrap_or_default();
                match c {
                    '-' if underscore => '_',
                    c if upper => c.to_ascii_uppercase(),
                    c => c,
                }
            })
            .collect()
    })
}

/// One edit away from a protected name or prefix: the names most likely to be misjudged.
#[derive(Clone, Debug)]
enum NearMiss {
    Drop(Index),
    Replace(Index, char),
    Insert(Index, char),
    Truncate(Index),
    Prepend(char),
    Append(String),
}

fn near_miss() -> impl Strategy<Value = String> {
    let edit = prop_oneof![
        any::<Index>().prop_map(NearMiss::Drop),
        (any::<Index>(), tchar()).prop_map(|(i, c)| NearMiss::Replace(i, c)),
        (any::<Index>(), tchar()).prop_map(|(i, c)| NearMiss::Insert(i, c)),
        any::<Index>().prop_map(NearMiss::Truncate),
        tchar().prop_map(NearMiss::Prepend),
        token(1..6).prop_map(NearMiss::Append),
    ];
    let base = prop_oneof![
        select(PROTECTED).prop_map(str::to_string),
        select(PROTECTED_PREFIXES).prop_map(str::to_string),
    ];
    respelled((base, edit).prop_map(|(base, edit)| {
        let mut cs: Vec<char> = base.chars().collect();
        match edit {
            NearMiss::Drop(i) => {
                cs.remove(i.index(cs.len()));
            }
            NearMiss::Replace(i, c) => {
                let i = i.index(cs.len());
                cs[i] = c;
            }
            NearMiss::Insert(i, c) => cs.insert(i.index(cs.len() + 1), c),
            NearMiss::Truncate(i) => cs.truncate(i.index(cs.len())),
            NearMiss::Prepend(c) => cs.insert(0, c),
            NearMiss::Append(s) => cs.extend(s.chars()),
        }
        let name: String = cs.into_iter().collect();
        if name.is_empty() {
            "x".to_string()
        } else {
            name
        }
    }))
}

/// A header name (valid as a `HeaderName`) from every class that matters.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => respelled(protected_base()),
        3 => near_miss(),
        3 => token(1..24),
        1 => "(x|X)[-_](client|ssl|forwarded|real|amzn)[-_][a-zA-Z_-]{0,16}",
    ]
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    "[ -~]{0,24}".prop_map(|s| HeaderValue::from_str(&s).expect("visible ASCII is a header value"))
}

proptest! {
    #![proptest_config(super::config(512, REGRESSIONS))]

    /// Every protected name and prefix, in every spelling, is protected: as the client wrote it
    /// and as hyper hands it over (lowercased `HeaderName`).
    #[test]
    fn protected_names_are_protected_in_every_spelling(name in respelled(protected_base())) {
        prop_assert!(is_protected(&name), "{name:?} is not protected");
        let as_received = HeaderName::from_bytes(name.as_bytes()).expect("tchars form a name");
        prop_assert!(is_protected(as_received.as_str()), "{as_received} is not protected");
    }

    /// `is_protected` agrees with the reference fold on any string: near misses and random
    /// tokens pass exactly when they do not fold to a protected name or prefix, and no input
    /// (non-ASCII included) makes it panic.
    #[test]
    fn protection_is_exactly_the_folded_lists(
        name in prop_oneof![3 => header_name(), 1 => any::<String>()],
    ) {
        prop_assert_eq!(is_protected(&name), reference_protected(&name), "{:?}", name);
    }

    /// `strip_protected` removes every protected header (all its values) and leaves every
    /// other header exactly as it was: same names, same values, same order per name.
    #[test]
    fn strip_removes_exactly_the_protected_headers(
        headers in vec((header_name(), header_value()), 0..24),
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("tchars form a name");
            map.append(name, value.clone());
        }
        let mut expected: Vec<(HeaderName, Vec<HeaderValue>)> = Vec::new();
        for name in map.keys() {
            if !reference_protected(name.as_str()) {
                expected.push((name.clone(), map.get_all(name).iter().cloned().collect()));
            }
        }
        strip_protected(&mut map);
        for name in map.keys() {
            prop_assert!(!reference_protected(name.as_str()), "{name} survived stripping");
        }
        prop_assert_eq!(map.keys_len(), expected.len(), "{:?}", map);
        for (name, values) in &expected {
            let now: Vec<HeaderValue> = map.get_all(name).iter().cloned().collect();
            prop_assert_eq!(&now, values, "values of {} changed", name);
        }
    }

    /// `check_host` never panics; it answers by the number of Host lines and the version; a
    /// single value it accepts is empty or RFC 9110 `uri-host [":" port]` (by the reference
    /// grammar below), and, unless it holds a `%HH` escape (which `http` refuses in a host),
    /// `http`'s `Authority` reads the same host and port out of it: what an app reads is what
    /// was checked.
    #[test]
    fn check_host_accepts_only_hosts(
        version in select(vec![Version::HTTP_09, Version::HTTP_10, Version::HTTP_11, Version::HTTP_2]),
        hosts in vec(host_value(), 0..4),
    ) {
        let mut req = Request::builder().version(version).uri("/").body(()).unwrap();
        for h in &hosts {
            req.headers_mut().append(HOST, h.clone());
        }
        let verdict = check_host(&req);
        match hosts.as_slice() {
            [] if version == Version::HTTP_11 => prop_assert_eq!(verdict, Err(HostError::Missing)),
            [] => prop_assert_eq!(verdict, Ok(())),
            [_, _, ..] => prop_assert_eq!(verdict, Err(HostError::Several)),
            [one] if verdict.is_err() => prop_assert_eq!(verdict, Err(HostError::Invalid)),
            [one] if one.is_empty() => {}
            [one] => {
                let text = one.to_str();
                prop_assert!(text.is_ok(), "accepted a non-ASCII Host {:?}", one);
                let text = text.unwrap();
                let parts = rfc_host_port(text);
                prop_assert!(parts.is_some(), "accepted Host {:?} is not uri-host [:port]", text);
                let (host, port) = parts.unwrap();
                if !text.contains('%') {
                    let authority = text.parse::<Authority>();
                    prop_assert!(authority.is_ok(), "accepted Host {:?} is not an authority", text);
                    let authority = authority.unwrap();
                    prop_assert_eq!(authority.host(), host, "host of {:?}", text);
                    prop_assert_eq!(
                        authority.port().map(|p| p.as_str().to_string()),
                        port.filter(|p| !p.is_empty()).map(str::to_string),
                        "port of {:?}", text
                    );
                }
            }
        }
    }

    /// The other side of a strict check: every well-formed host (DNS name, IPv4, IPv6
    /// literal, any case, with or without a port) is accepted, so no real client gets a 400.
    #[test]
    fn check_host_accepts_every_well_formed_host(
        host in prop_oneof![
            "[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?){0,4}",
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
        ],
        port in proptest::option::of(any::<u16>()),
        version in select(vec![Version::HTTP_10, Version::HTTP_11, Version::HTTP_2]),
    ) {
        let value = match port {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        let req = Request::builder().version(version).uri("/").header(HOST, &value).body(()).unwrap();
        prop_assert_eq!(check_host(&req), Ok(()), "Host: {}", value);
    }
}

/// RFC 9110 7.2 `Host = uri-host [ ":" port ]` with RFC 3986's `uri-host` (IP-literal,
/// IPv4address or reg-name) and `port = *DIGIT`, written from the RFCs; returns the host and
/// the port text.
fn rfc_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    let (host, rest) = if s.starts_with('[') {
        let end = s.find(']')? + 1;
        let inner = &s[1..end - 1];
        let ok = inner.parse::<std::net::Ipv6Addr>().is_ok() || is_ipvfuture(inner);
        (ok.then_some(&s[..end])?, &s[end..])
    } else {
        let end = s.find(':').unwrap_or(s.len());
        (is_reg_name(&s[..end]).then_some(&s[..end])?, &s[end..])
    };
    let port = match rest.strip_prefix(':') {
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Some(p),
        Some(_) => return None,
        None if rest.is_empty() => None,
        None => return None,
    };
    Some((host, port))
}

const UNRESERVED_OR_SUB_DELIM: &[u8] = b"-._~!$&'()*+,;=";

/// `reg-name = *( unreserved / pct-encoded / sub-delims )` (IPv4address is a reg-name too).
fn is_reg_name(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else if b[i].is_ascii_alphanumeric() || UNRESERVED_OR_SUB_DELIM.contains(&b[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// `IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`.
fn is_ipvfuture(s: &str) -> bool {
    let Some(rest) = s.strip_prefix(['v', 'V']) else {
        return false;
    };
    let Some((version, tail)) = rest.split_once('.') else {
        return false;
    };
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_hexdigit())
        && !tail.is_empty()
        && tail
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b':' || UNRESERVED_OR_SUB_DELIM.contains(&b))
}

/// Host values: arbitrary header-value bytes, and host-like strings built from the pieces
/// (userinfo, brackets, ports, percent signs) where validators go wrong.
fn host_value() -> impl Strategy<Value = HeaderValue> {
    let any_value_byte = prop_oneof![0x20u8..0x7f, Just(b'\t'), 0x80u8..=0xff];
    let host = prop_oneof![
        "[a-zA-Z0-9.-]{0,24}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        "\\[[0-9a-fA-F:.%v]{0,24}\\]",
        any::<std::net::Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
        "([a-zA-Z0-9._~!$&'()*+,;=-]|%[0-9a-fA-F]{2}|%[0-9a-zA-Z]?){0,12}",
        "[a-zA-Z0-9._~!$&'()*+,;=%:@/?#\" <>{}|^`\\[\\]\\\\-]{0,24}",
    ];
    let host_like = (
        proptest::option::of("[a-zA-Z0-9%:._-]{0,8}@"),
        host,
        proptest::option::of(prop_oneof![":[0-9]{0,6}", ":[0-9a-z:]{0,7}"]),
    )
        .prop_map(|(user, host, port)| {
            format!(
                "{}{host}{}",
                user.unwrap_or_default(),
                port.unwrap_or_default()
            )
        });
    prop_oneof![
        vec(any_value_byte, 0..40).prop_map(|b| b.to_vec()),
        host_like.prop_map(String::into_bytes),
    ]
    .prop_filter_map("not a header value", |b| HeaderValue::from_bytes(&b).ok())
}

// Found by this target: `check_host` used to accept whatever `http`'s `Authority` parser
// accepts, which is laxer than RFC 9110 `uri-host [":" port]` (RFC 9112 3.2: answer 400).

/// Any characters in the port were accepted.
#[test]
fn regression_host_with_a_non_numeric_port_is_invalid() {
    for host in [
        "api.example:abc",
        "api.example:8443x",
        "10.0.0.1:-1",
        "[::1]:http",
    ] {
        let req = Request::builder()
            .uri("/")
            .header(HOST, host)
            .body(())
            .unwrap();
        assert_eq!(check_host(&req), Err(HostError::Invalid), "Host: {host}");
    }
}

/// Brackets were accepted anywhere, around anything and with text after them (`http`'s
/// `Authority::host()` reads `x[` as the host of `x[::1]`).
#[test]
fn regression_host_with_brackets_outside_an_ip_literal_is_invalid() {
    for host in [
        "x[::1]",
        "a[b]c",
        "[::1]x",
        "[]",
        "[zz]",
        "[api.example]:443",
    ] {
        let req = Request::builder()
            .uri("/")
            .header(HOST, host)
            .body(())
            .unwrap();
        assert_eq!(check_host(&req), Err(HostError::Invalid), "Host: {host}");
    }
}

/// FINDING of this target in the strict check (open): a port of five digits above 65535 is
/// accepted, but `http`'s `Authority::port()` (what a Rust app reads) finds no port in
/// `api.example:65540`, so the app does not read what was checked. (`u16::from_str` alone is
/// not the fix: it takes `+80`.)
#[test]
fn regression_host_with_a_port_over_65535_is_invalid() {
    for host in [
        "-:65540",
        "api.example:65536",
        "api.example:99999",
        "[::1]:70000",
    ] {
        let req = Request::builder()
            .uri("/")
            .header(HOST, host)
            .body(())
            .unwrap();
        assert_eq!(check_host(&req), Err(HostError::Invalid), "Host: {host}");
    }
}
