//! Credentials: where they live, how they are read, and how they are validated.
//!
//! Data flows one way: [`paths`] says which files make up a credential set, [`load`] reads them
//! (bounded, hashed) into a [`load::RawBundle`], and [`validate`] turns that into a
//! [`validate::Bundle`], the only form later stages (store, proxy, actions) accept. [`x509`]
//! holds the certificate names every stage shares: SAN extraction and the DNS matching rule.

pub mod dn;
pub mod load;
pub mod paths;
pub mod pem;
pub mod snapshot;
pub mod store;
pub mod validate;
pub mod x509;
