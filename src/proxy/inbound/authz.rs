//! Who may call (`--allow-all`, `--allow-cn`, `--allow-ou`, `--allow-dns`, `--allow-uri`): a
//! verified client certificate is allowed if any rule matches it. DNS names match by the one
//! rule of [`crate::creds::x509`]; URI rules ending in `/*` match exactly one more path segment,
//! `/**` any non-empty suffix (SPIFFE IDs).

use super::identity::PeerIdentity;
use crate::creds::x509::dns_matches;

/// The allow-list of a listener.
#[derive(Clone, Debug, Default)]
pub struct Allow {
    pub all: bool,
    pub cn: Vec<String>,
    pub ou: Vec<String>,
    pub dns: Vec<String>,
    pub uri: Vec<String>,
}

impl Allow {
    /// True if at least one rule is configured (one is required).
    pub fn is_configured(&self) -> bool {
        self.all
            || !(self.cn.is_empty()
                && self.ou.is_empty()
                && self.dns.is_empty()
                && self.uri.is_empty())
    }

    pub fn permits(&self, peer: &PeerIdentity) -> bool {
        self.all
            || peer.cn.iter().any(|v| self.cn.contains(v))
            || peer.ou.iter().any(|v| self.ou.contains(v))
            || peer
                .dns
                .iter()
                .any(|san| self.dns.iter().any(|name| dns_matches(san, name)))
            || peer
                .uri
                .iter()
                .any(|v| self.uri.iter().any(|p| uri_matches(p, v)))
    }
}

fn uri_matches(pattern: &str, uri: &str) -> bool {
    // SPIFFE IDs have no `.` or `..` segments; such a URI must not slip under a prefix.
    if uri.split('/').any(|seg| seg == "." || seg == "..") {
        return false;
    }
    if let Some(prefix) = pattern.strip_suffix("/**") {
        return uri
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty());
    }
    if let Some(prefix) = pattern.strip_suffix("/*") {
        return uri
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|seg| !seg.is_empty() && !seg.contains('/'));
    }
    pattern == uri
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_wildcards() {
        let p = "spiffe://cluster.local/ns/prod/sa/*";
        assert!(uri_matches(p, "spiffe://cluster.local/ns/prod/sa/web"));
        assert!(!uri_matches(p, "spiffe://cluster.local/ns/prod/sa/web/x"));
        assert!(!uri_matches(p, "spiffe://cluster.local/ns/prod/sa/"));
        let pp = "spiffe://cluster.local/ns/prod/**";
        assert!(uri_matches(pp, "spiffe://cluster.local/ns/prod/sa/web"));
        assert!(!uri_matches(pp, "spiffe://cluster.local/ns/prodx/sa/web"));
        assert!(!uri_matches(pp, "spiffe://cluster.local/ns/prod"));
        assert!(!uri_matches(pp, "spiffe://cluster.local/ns/prod/../admin"));
        assert!(uri_matches("spiffe://a/b", "spiffe://a/b"));
        assert!(!uri_matches("spiffe://a/b", "spiffe://a/b/c"));
    }

    #[test]
    fn any_rule_admits() {
        let peer = PeerIdentity {
            cn: vec!["web-app".into()],
            ou: vec!["Web Services".into()],
            ..PeerIdentity::default()
        };
        assert!(Allow {
            cn: vec!["web-app".into()],
            ..Allow::default()
        }
        .permits(&peer));
        assert!(Allow {
            ou: vec!["Web Services".into()],
            ..Allow::default()
        }
        .permits(&peer));
        assert!(!Allow {
            cn: vec!["other".into()],
            ..Allow::default()
        }
        .permits(&peer));
        assert!(Allow {
            all: true,
            ..Allow::default()
        }
        .permits(&peer));
        assert!(!Allow::default().is_configured());
    }
}
