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
//! - [`creds::snapshot`]: one consistent read through kubelet's `..data` -> `RawBundle`.
//! - [`creds::store`]: the only writer of served credentials: dedupe, generation, ArcSwap, notify.
//! - [`watch`]: notify on parent directories + debounce + poll -> `Trigger`.
//! - [`reload`]: per set: trigger -> snapshot -> validate -> store (with brief retries).
//! - [`actions`]: what `watch` runs after a publish: signal (pidfd) and exec, paced and retried.
//! - [`tls`]: the only place that builds rustls configs.
//! - [`proxy`]: `server`'s TLS listener: accept, handshake, allow-list, tcp copy or http proxy.
//! - [`admin`]: `/healthz`, `/readyz`, `/status`, `/metrics`.
//! - [`metrics`], [`events`]: metric families, and the one place that logs and counts each event.
//! - [`app`]: wires the stages of a long-running subcommand and shuts them down on SIGTERM.
//! - [`signals`]: SIGTERM/SIGINT drain, SIGHUP re-reads, other terminating signals ignored;
//!   held from the first line of `main` until their handlers exist.
//! - [`limits`]: the file-descriptor budget of a listener, checked at start-up.
//! - [`check`]: the `check` subcommand: run validation once and report (text or JSON).
//! - [`demo`]: the `demo` subcommand: throwaway PKI, plaintext app, `server` in front, rotation.
//! - [`atomic_dir`]: kubelet-style `..data` generations (demo volumes, `--stage-dir`).
//! - [`reason`]: the SPEC reason codes shared by every stage.
#![forbid(unsafe_code)]

pub mod actions;
pub mod admin;
pub mod app;
pub mod atomic_dir;
pub mod check;
pub mod cli;
pub mod creds;
pub mod demo;
pub mod events;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod reason;
pub mod reload;
pub mod signals;
#[cfg(test)]
mod test_pki;
pub mod tls;
pub mod watch;
