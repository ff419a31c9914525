//! The admin endpoint needs no authentication (kubelet probes it), so anyone who reaches it can
//! open connections. Idle connections and a steady churn of new ones must not keep probes out:
//! a probe that fails its 1 s timeout a few times makes kubelet restart a healthy pod.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// A kubelet-style probe: new connection, one GET, 1 s for the whole exchange. The status, or
/// None if it did not complete in time.
fn probe(addr: &str, path: &str) -> Option<u16> {
    let timeout = Duration::from_secs(1);
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// Opens `n` TCP connections to `addr` that never send a byte.
fn idle_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect()
}

#[test]
fn probes_keep_answering_while_idle_connections_hold_the_admin_port() {
    let (_env, _upstream, sc) = http_proxy(&[]);
    let admin = sc.admin_addr().to_string();
    // More than the endpoint's connection slots, all silent.
    let held = idle_connections(&admin, 300);
    assert!(
        held.len() >= 250,
        "could open only {} connections",
        held.len()
    );
    let failed: Vec<(usize, &str)> = (0..20)
        .flat_map(|i| [(i, "/healthz"), (i, "/readyz")])
        .filter(|(_, path)| probe(&admin, path) != Some(200))
        .collect();
    assert!(
        failed.is_empty(),
        "probes failed under the flood: {failed:?}"
    );
    drop(held);
}

#[test]
fn probes_keep_answering_while_new_idle_connections_keep_arriving() {
    let (_env, _upstream, sc) = http_proxy(&[]);
    let admin = sc.admin_addr().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    // A flood that keeps 200 silent connections open, replacing them as fast as it can.
    let flood = {
        let (admin, stop) = (admin.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut open = std::collections::VecDeque::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) = TcpStream::connect(&admin) {
                    open.push_back(s);
                }
                if open.len() > 200 {
                    open.pop_front();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut failed = Vec::new();
    for i in 0..30 {
        if probe(&admin, "/healthz") != Some(200) {
            failed.push(i);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood thread");
    assert!(
        failed.is_empty(),
        "probes {failed:?} of 30 failed under the flood"
    );
}
