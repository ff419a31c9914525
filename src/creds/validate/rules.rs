//! Rules on the leaf alone: validity window, extended key usage for the requested role, and the
//! SANs the operator said to expect (`--expect-dns`, `--expect-uri`).

use std::path::Path;
use std::time::SystemTime;

use rustls_pki_types::UnixTime;
use time::OffsetDateTime;

use super::chain::{EKU_CLIENT, EKU_SERVER};
use super::error::ValidateError;
use super::facts::{human_span, rfc3339, CertFacts};
use super::policy::{unix_time, Policy, Usage};
use crate::creds::x509::dns_matches;

/// Records `not_yet_valid` / `expired`; returns whether `now` is inside the window.
pub(super) fn validity(
    leaf: &CertFacts,
    path: &Path,
    now: SystemTime,
    errors: &mut Vec<ValidateError>,
) -> bool {
    let now = OffsetDateTime::from(now);
    if now < leaf.not_before {
        errors.push(ValidateError::NotYetValid {
            path: path.to_path_buf(),
            serial: leaf.serial.clone(),
            not_before: rfc3339(leaf.not_before),
            wait: human_span((leaf.not_before - now).whole_seconds()),
        });
        return false;
    }
    if now > leaf.not_after {
        errors.push(ValidateError::Expired {
            path: path.to_path_buf(),
            serial: leaf.serial.clone(),
            not_after: rfc3339(leaf.not_after),
            ago: human_span((now - leaf.not_after).whole_seconds()),
        });
        return false;
    }
    true
}

/// The time to build the path at: now, or, when the leaf's own window already failed (and was
/// reported), a moment inside it, so the chain is judged on its own merits.
pub(super) fn chain_time(leaf: &CertFacts, now: SystemTime, leaf_time_ok: bool) -> UnixTime {
    if leaf_time_ok {
        return unix_time(now);
    }
    let mid = leaf.not_before + (leaf.not_after - leaf.not_before) / 2;
    unix_time(SystemTime::from(mid))
}

/// Records `wrong_usage` per missing role; returns the EKU OIDs of the roles that passed, which
/// the chain check then requires of intermediates too. A leaf with no EKU extension passes.
pub(super) fn usage(
    leaf: &CertFacts,
    path: &Path,
    usage: Usage,
    errors: &mut Vec<ValidateError>,
) -> Vec<&'static [u8]> {
    // `usages` is what the cert-manager Certificate must list for the whole usage.
    let (roles, usages): (&[(bool, &'static str, &'static [u8])], _) = match usage {
        Usage::Server => (&[(true, "serverAuth", EKU_SERVER)], "server auth"),
        Usage::Client => (&[(false, "clientAuth", EKU_CLIENT)], "client auth"),
        Usage::Both => (
            &[
                (true, "serverAuth", EKU_SERVER),
                (false, "clientAuth", EKU_CLIENT),
            ],
            "server auth, client auth",
        ),
    };
    let mut passed = Vec::new();
    for &(is_server, needed, oid) in roles {
        let has = if is_server {
            leaf.eku.server
        } else {
            leaf.eku.client
        };
        if !leaf.eku.present || has {
            passed.push(oid);
        } else {
            errors.push(ValidateError::WrongUsage {
                path: path.to_path_buf(),
                serial: leaf.serial.clone(),
                needed,
                present: leaf.ekus.join(", "),
                usages,
            });
        }
    }
    passed
}

/// Records `identity_mismatch` for each expected SAN the leaf lacks.
pub(super) fn identity(
    leaf: &CertFacts,
    path: &Path,
    policy: &Policy,
    errors: &mut Vec<ValidateError>,
) {
    let present = || {
        if leaf.sans.is_empty() {
            "no SANs".to_string()
        } else {
            leaf.sans.join(", ")
        }
    };
    for want in &policy.expect_dns {
        if !leaf.dns_sans.iter().any(|have| dns_matches(have, want)) {
            errors.push(ValidateError::IdentityMismatch {
                path: path.to_path_buf(),
                serial: leaf.serial.clone(),
                kind: "DNS",
                expected: want.clone(),
                present: present(),
            });
        }
    }
    for want in &policy.expect_uri {
        if !leaf.uri_sans.iter().any(|have| have == want) {
            errors.push(ValidateError::IdentityMismatch {
                path: path.to_path_buf(),
                serial: leaf.serial.clone(),
                kind: "URI",
                expected: want.clone(),
                present: present(),
            });
        }
    }
}
