//! `mtls-sidecar run --config FILE`: several credential sets, listeners and watch actions in one
//! process, from a YAML file.
//!
//! - `mistakes`: every mistake in a file is reported before anything starts (exit 2, FILE:LINE:
//!   key: message); `--check`, `--check-credentials`, `--print`
//! - `live_change`: the file changes under load (a ConfigMap `..data` swap, SIGHUP): listeners
//!   added and removed, unchanged ones keep their connections, a broken file is refused
//! - `bidirectional`: the users' guide's bidirectional service in one sidecar: one set used by a
//!   server and a client listener and a stage+signal action for a real nginx, rotating together
//! - `two_sets`: a server identity and a client identity from two Secrets rotate independently

mod bidirectional;
mod live_change;
mod mistakes;
mod two_sets;

use std::time::Duration;

use crate::support::http1::Response;
use crate::support::pki::Leaf;
use crate::support::sidecar::{wait_until, Sidecar};
use crate::support::tls_client::TlsClient;
use crate::support::upstream::Echoed;

/// Wait (bounded by `wait`) until listener `name` of `sc` serves `leaf` to a new connection of
/// `client`; panics with the last serial or error and the log.
fn wait_listener_serves(sc: &Sidecar, name: &str, client: &TlsClient, leaf: &Leaf, wait: Duration) {
    let addr = sc.wait_listener(name);
    let mut last = String::new();
    let served = wait_until(wait, || match client.connect(&addr) {
        Ok(conn) => {
            last = conn.peer.serial_hex;
            last == leaf.serial_hex
        }
        Err(e) => {
            last = e;
            false
        }
    });
    assert!(
        served,
        "{name} serves {last}, not {}\n{}",
        leaf.serial_hex,
        sc.log()
    );
}

/// The SHA-256 of the client certificate our server passed on to the echo behind it (`Hash=`
/// of `X-Forwarded-Client-Cert`); Err says what came instead.
fn xfcc_hash(resp: &Response) -> Result<String, String> {
    if resp.status != 200 {
        return Err(format!("HTTP {}: {}", resp.status, resp.body_text()));
    }
    let xfcc = Echoed::parse(&resp.body).one("x-forwarded-client-cert");
    xfcc.split(';')
        .find_map(|part| part.strip_prefix("Hash="))
        .map(str::to_string)
        .ok_or_else(|| format!("no Hash= in {xfcc}"))
}
