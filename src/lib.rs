//! mtls-sidecar: validates and hot-reloads cert-manager mTLS credentials for a Kubernetes pod.
//!
//! ```text
//! watch (notify, poll) -> load (one consistent snapshot) -> validate -> publish (ArcSwap, dedupe) -> apply
//! ```
//!
//! What exists today, one line per module:
//! - [`cli`]: clap flags (every flag also reads `MTLS_SIDECAR_<FLAG>`) turned into checked inputs.
//! - [`creds::paths`]: which files form a credential set (`--cert-dir`, `--cert/--key/--ca`, `--peer-ca`).
//! - [`creds::load`]: bounded, hashed reads of those files -> `RawBundle`, or a `LoadError`.
//! - [`creds::pem`]: PEM decoding with enough detail for a diagnosis.
//! - [`creds::validate`]: `RawBundle` -> `Bundle` (only validation can build one) or a `Rejection`.
//! - [`creds::dn`]: RFC 2253 distinguished names, as nginx prints them.
//! - [`check`]: the `check` subcommand: run validation once and report (text or JSON).
//! - [`demo`]: the `demo` subcommand: a throwaway PKI in a kubelet-style volume to try things on.
//! - [`reason`]: the SPEC reason codes shared by every stage.
#![forbid(unsafe_code)]

pub mod check;
pub mod cli;
pub mod creds;
pub mod demo;
pub mod reason;
