//! The reason codes of the contract (README "Reason codes"): one per failure class, shared by logs, `check` output, `/status` and the
//! `reason` metric label. Stage errors (`LoadError`, `ValidateError`) map onto these, never the reverse.

use std::fmt;

use serde::Serialize;

/// Why a credential update was refused (the contract: "Validation").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    MissingFile,
    Unreadable,
    TooLarge,
    BadPem,
    NoCertificate,
    NoPrivateKey,
    MultiplePrivateKeys,
    UnsupportedKey,
    WeakKey,
    KeyMismatch,
    NotYetValid,
    Expired,
    UntrustedChain,
    WrongUsage,
    IdentityMismatch,
    EmptyCaBundle,
    CaNotACa,
    InconsistentSnapshot,
}

impl Reason {
    /// Every code, in the contract's order (for metrics pre-registration and docs tests).
    pub const ALL: [Reason; 18] = [
        Reason::MissingFile,
        Reason::Unreadable,
        Reason::TooLarge,
        Reason::BadPem,
        Reason::NoCertificate,
        Reason::NoPrivateKey,
        Reason::MultiplePrivateKeys,
        Reason::UnsupportedKey,
        Reason::WeakKey,
        Reason::KeyMismatch,
        Reason::NotYetValid,
        Reason::Expired,
        Reason::UntrustedChain,
        Reason::WrongUsage,
        Reason::IdentityMismatch,
        Reason::EmptyCaBundle,
        Reason::CaNotACa,
        Reason::InconsistentSnapshot,
    ];

    /// The code exactly as the README spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::MissingFile => "missing_file",
            Reason::Unreadable => "unreadable",
            Reason::TooLarge => "too_large",
            Reason::BadPem => "bad_pem",
            Reason::NoCertificate => "no_certificate",
            Reason::NoPrivateKey => "no_private_key",
            Reason::MultiplePrivateKeys => "multiple_private_keys",
            Reason::UnsupportedKey => "unsupported_key",
            Reason::WeakKey => "weak_key",
            Reason::KeyMismatch => "key_mismatch",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Expired => "expired",
            Reason::UntrustedChain => "untrusted_chain",
            Reason::WrongUsage => "wrong_usage",
            Reason::IdentityMismatch => "identity_mismatch",
            Reason::EmptyCaBundle => "empty_ca_bundle",
            Reason::CaNotACa => "ca_not_a_ca",
            Reason::InconsistentSnapshot => "inconsistent_snapshot",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_name_matches_as_str() {
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
    }
}
