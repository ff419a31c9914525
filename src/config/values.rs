//! Parsing the values of options that are not plain strings: durations, addresses, PIDs. The
//! messages say what is expected; the caller says which option (and where) it was.

use std::net::SocketAddr;
use std::time::Duration;

use crate::admin::Listen;

/// humantime (`500ms`, `30s`, `5m`), or `0` for "off".
pub fn duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}, got {s:?}: use a duration like 100ms, 30s, 5m, or 0"))
}

/// `IP:PORT`, with a hint for the usual mistakes (a bare port, a host name).
pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        let hint = if s.trim().parse::<u16>().is_ok() {
            format!(" (a port alone is not enough: 0.0.0.0:{0} for every IPv4 address, [::]:{0} for every address, 127.0.0.1:{0} for loopback)", s.trim())
        } else {
            String::new()
        };
        format!("expected IP:PORT, e.g. 0.0.0.0:8443 or [::]:8443, got {s:?}{hint}")
    })
}

/// An admin endpoint address, or `off`.
pub fn listen(s: &str) -> Result<Listen, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Listen::Off);
    }
    s.trim()
        .parse()
        .map(Listen::On)
        .map_err(|_| format!("expected IP:PORT (e.g. 0.0.0.0:9901, [::]:9901) or `off`, got {s:?}"))
}

/// A PID that may be signalled: never 0 (the whole process group) or 1 (the pod's pause
/// process, or init).
pub fn pid(n: i64) -> Result<i32, String> {
    match i32::try_from(n) {
        Ok(p) if p > 1 => Ok(p),
        Ok(p) if p >= 0 => Err(format!(
            "PID {p} is never signalled (0 is the whole process group, 1 the pod's pause process or init): give the app's PID, or a pid file or process name"
        )),
        _ => Err(format!("expected a process ID (a number above 1), got {n}")),
    }
}

/// Drops empty items: `MTLS_SIDECAR_EXPECT_DNS=""` or a trailing comma (common in templated
/// manifests) must not become a requirement for an empty name.
pub fn non_empty(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(duration("2160h"), Ok(Duration::from_secs(2160 * 3600)));
        let soon = duration("soon").unwrap_err();
        assert!(
            soon.contains("got \"soon\"") && soon.contains("30s"),
            "{soon}"
        );
        assert_eq!(listen("off"), Ok(Listen::Off));
        assert_eq!(
            listen("127.0.0.1:0"),
            Ok(Listen::On("127.0.0.1:0".parse().unwrap()))
        );
        assert!(listen("localhost").is_err());
        assert!(socket_addr("8443").unwrap_err().contains("0.0.0.0:8443"));
        assert_eq!(socket_addr("[::]:8443"), Ok("[::]:8443".parse().unwrap()));
        assert!(pid(1).unwrap_err().contains("pause process"));
        assert!(pid(0).is_err() && pid(-4).is_err() && pid(1 << 40).is_err());
        assert_eq!(pid(42), Ok(42));
        assert_eq!(non_empty(&[" a ".into(), "".into()]), ["a"]);
    }
}
