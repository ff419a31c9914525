//! Listening sockets, for the proxy listeners and the admin endpoint alike: address reuse (a
//! restarted sidecar binds while old connections linger), a given backlog, and `[::]` as
//! dual-stack (IPv6 and IPv4, whatever `net.ipv6.bindv6only` says), falling back to `0.0.0.0`
//! on a node whose kernel has IPv6 turned off. Callers log the address actually bound.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tracing::warn;

/// A non-blocking listening socket on `addr` (see the module docs).
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    match bind(addr, backlog) {
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() && ipv6_off(&e) => {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            warn!(address = %addr, error = %e, fallback = %v4, "IPv6 is not available here; listening on IPv4 only");
            bind(v4, backlog)
        }
        other => other,
    }
}

fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

/// The errors of a kernel without IPv6 (module not loaded, or turned off).
fn ipv6_off(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EAFNOSUPPORT | Errno::EADDRNOTAVAIL | Errno::EPROTONOSUPPORT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unspecified_v6_accepts_ipv4_too() {
        let Ok(l) = listen("[::]:0".parse().unwrap(), 16) else {
            return; // a machine without IPv6: the fallback is what serves
        };
        let port = l.local_addr().unwrap().port();
        let v4 = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
        assert!(v4.is_ok(), "an IPv4 client reaches [::]:{port}: {v4:?}");
        let v6 = tokio::net::TcpStream::connect(("::1", port)).await;
        assert!(v6.is_ok(), "an IPv6 client reaches [::]:{port}: {v6:?}");
    }

    #[tokio::test]
    async fn a_specific_address_is_bound_as_given() {
        let l = listen("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        assert!(l.local_addr().unwrap().ip().is_loopback());
    }
}
