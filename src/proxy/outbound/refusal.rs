//! How a `client` learns that the server refused its certificate. With TLS 1.3 the server
//! checks our certificate after our side of the handshake is done, so the refusal (a TLS alert)
//! arrives inside the data stream, where the error the app's side sees (a reset, a broken pipe,
//! a canceled request) no longer says why. [`Watched`] wraps the upstream stream and notes such
//! an alert in [`Rejections`] (per connection in tcp mode, per pool in http mode); the error
//! paths of the tcp and http modes read it back to report `rejected_by_server`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use rustls::{AlertDescription, Error as TlsError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::proxy::chain::find_in_chain;

/// With TLS 1.3 the server checks our certificate after our side of the handshake is done: a
/// refusal arrives as an alert on the first read. The alert, if `e` is such a refusal.
pub fn rejected_by_server(e: &(dyn std::error::Error + 'static)) -> Option<AlertDescription> {
    match find_in_chain::<TlsError>(e)? {
        TlsError::AlertReceived(alert) if refuses_certificate(*alert) => Some(*alert),
        _ => None,
    }
}

/// The alerts by which a server refuses the client's certificate (RFC 8446 6.2).
pub fn refuses_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

/// The last TLS alert by which the server refused our certificate, on one connection (tcp
/// mode) or any of a pool's (http mode). With TLS 1.3 that refusal arrives after the handshake,
/// inside the data stream, where the error the app's side sees no longer says why.
#[derive(Default)]
pub struct Rejections(AtomicU8);

/// `Rejections` holds the alert's code plus one; 0 is "none".
impl Rejections {
    fn note(&self, e: &io::Error) {
        if let Some(alert) = rejected_by_server(e) {
            self.0
                .store(u8::from(alert).saturating_add(1), Ordering::Relaxed);
        }
    }
    /// After a success; a relaxed load first, so the common case writes nothing.
    pub fn clear(&self) {
        if self.0.load(Ordering::Relaxed) != 0 {
            self.0.store(0, Ordering::Relaxed);
        }
    }
    pub fn get(&self) -> Option<AlertDescription> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n => Some(AlertDescription::from(n - 1)),
        }
    }
}

/// An upstream mTLS stream that notes a refusal of our certificate: from a read error, or,
/// when a write fails first (the server closed after its alert), from one read of what is left.
/// For the pool it also tells whether ALPN chose HTTP/2.
pub struct Watched {
    tls: TlsStream<TcpStream>,
    rejections: Arc<Rejections>,
}

impl Watched {
    pub fn new(tls: TlsStream<TcpStream>, rejections: Arc<Rejections>) -> Self {
        Watched { tls, rejections }
    }
}

impl Connection for Watched {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tls).poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = &r {
            this.rejections.note(e);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tls).poll_write(cx, data);
        if let Poll::Ready(Err(_)) = &r {
            let mut scratch = [0u8; 512];
            let mut buf = ReadBuf::new(&mut scratch);
            if let Poll::Ready(Err(e)) = Pin::new(&mut this.tls).poll_read(cx, &mut buf) {
                this.rejections.note(&e);
            }
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}
