//! The TLS proxy: listeners that terminate mTLS (`server`: TLS in, plaintext to `--target`) or
//! originate it (`client`: plaintext in on loopback, mTLS to `--target`). Credentials come from
//! the store: one rustls config per publish, read with one `ArcSwap` load per accepted
//! connection (or per request in `client --protocol http`).
//!
//! The modules form a tree; imports point down it, never up:
//! - [`inbound`] (`server`: handshake, allow-list, then [`inbound::http`] or [`tcp`]) and
//!   [`outbound`] (`client`: [`outbound::connect`], [`outbound::refusal`], [`outbound::http`]);
//! - what both use: [`listener`] (the accept loop, statistics, metric handles, the credential
//!   slot), [`config`], [`handshake`] (failure reasons), [`tls_error`] (handshake errors in
//!   words), [`http_conn`] (an HTTP connection's
//!   lifecycle, with [`header_block`]: the header-read deadline), [`headers`] (protected
//!   headers, `Host` rules), [`tcp`] (byte copy), [`io`] (plaintext upstream connections, the cap
//!   on them, idle tracking), [`probe`] (`ready-upstream`: is the target accepting now?) and
//!   [`chain`] (reading an error's cause chain).

pub mod chain;
pub mod config;
pub mod handshake;
pub mod header_block;
pub mod headers;
pub mod http_conn;
pub mod inbound;
pub mod io;
pub mod listener;
pub mod outbound;
pub mod probe;
pub mod tcp;
pub mod tls_error;

pub use config::{ListenerConfig, Protocol, Target};
pub use listener::{ListenerMetrics, ListenerStats};
