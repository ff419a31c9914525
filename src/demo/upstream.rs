//! The demo's "legacy app": a tiny plaintext HTTP server on loopback that greets the caller by
//! the identity the sidecar passed in `X-Client-DN`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves forever on `listener`.
pub(super) async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let who = req
                    .headers()
                    .get("x-client-dn")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("an unknown client")
                    .to_string();
                let body = format!(
                    "hello {who}, this is the plaintext app behind mtls-sidecar ({} {})\n",
                    req.method(),
                    req.uri().path()
                );
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
