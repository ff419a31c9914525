//! mtls-sidecar: validates and hot-reloads cert-manager mTLS credentials for a Kubernetes pod.
//!
//! ```text
//! watch (notify, poll) -> load (one consistent snapshot) -> validate -> publish (ArcSwap, dedupe) -> apply
//! ```
//!
//! Data flows one way; a module imports only from the stages before it (and `app` knows them
//! all). From the bottom up:
//! - [`reason`]: the reason codes every stage shares; [`net`]: listening sockets (`[::]` is
//!   dual-stack).
//! - [`creds`]: [`creds::paths`] (which files form a set), [`creds::load`] (bounded, hashed
//!   reads), [`creds::snapshot`] (one consistent read through kubelet's `..data`),
//!   [`creds::pem`], [`creds::dn`] and [`creds::x509`] (certificate names, the one DNS matching
//!   rule), [`creds::validate`] (`RawBundle` -> `Bundle`, which only validation can build, or a
//!   `Rejection`), [`creds::store`] (the served bundle and its generation; state only).
//! - [`tls`]: the only place that builds rustls configs.
//! - [`metrics`], [`events`]: metric families, and the one place that logs and counts each event.
//! - [`watch`]: notify on parent directories + debounce + poll -> `Trigger`.
//! - [`reload`]: per set: trigger -> snapshot -> validate -> store, every outcome reported.
//! - [`actions`]: what `watch` runs after a publish: stage, signal (pidfd), exec, webhook,
//!   verify; typed errors, paced and retried.
//! - [`proxy`]: the `server` (inbound) and `client` (outbound) listeners: accept, handshake,
//!   allow-list, tcp copy or http forwarding.
//! - [`admin`]: `/healthz`, `/readyz`, `/status`, `/metrics`, and `/drain` for pod rollouts
//!   (with the `drain` subcommand's client).
//! - [`signals`], [`limits`], [`atomic_dir`]: signal handling, the file-descriptor budget,
//!   kubelet-style `..data` generations (demo volumes, `--stage-dir`).
//! - [`app`]: wires the stages of a long-running subcommand and shuts them down.
//! - [`check`], [`demo`]: the one-shot check and the demo.
//! - [`cli`]: clap flags (every flag also reads `MTLS_SIDECAR_<FLAG>`); only `main` uses it, and
//!   only `cli` and `main` name flags.
#![forbid(unsafe_code)]

pub mod actions;
pub mod admin;
pub mod app;
pub mod atomic_dir;
pub mod check;
pub mod cli;
pub mod config;
pub mod creds;
pub mod demo;
pub mod events;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod reason;
pub mod reload;
pub mod signals;
#[cfg(test)]
mod test_pki;
pub mod tls;
pub mod watch;
