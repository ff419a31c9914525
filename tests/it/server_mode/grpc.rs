//! gRPC passes through `--protocol http`: an HTTP/2 client with ALPN `h2` and a client
//! certificate, a plaintext h2c (prior knowledge) upstream, and trailers (`grpc-status`) making
//! it back to the client. Both ends are hyper; the wire format of gRPC bodies does not matter here.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{env_with_server, start_ready};

/// An h2c upstream answering every request with its body echoed and `grpc-status: 0` trailers.
async fn h2c_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let is_grpc = req
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v == "application/grpc");
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert(
                            "grpc-status",
                            if is_grpc { "0" } else { "3" }.parse().unwrap(),
                        );
                        let mut resp = Response::new(Reply {
                            data: Some(body),
                            trailers: Some(trailers),
                        });
                        resp.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A response body: the echoed bytes, then trailers.
struct Reply {
    data: Option<Bytes>,
    trailers: Option<hyper::HeaderMap>,
}

impl hyper::body::Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

#[test]
fn grpc_passes_through_with_trailers() {
    let (env, _) = env_with_server();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = rt.block_on(h2c_upstream());
    let sc = start_ready(&env, "http", &upstream, &["--allow-all"]);
    let addr = sc.listen_addr().to_string();
    let client = env.pki.client();
    let root = env.pki.root.cert_pem.clone();
    let (status, trailer, body) = rt.block_on(async move {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(root.as_bytes()).unwrap())
            .unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(client.chain_pem.as_bytes())
                .map(|c| c.unwrap())
                .collect();
        let key = PrivateKeyDer::from_pem_slice(client.key_pkcs8_pem.as_bytes()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name = ServerName::try_from("api.production.svc.cluster.local").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::post("https://api.production.svc.cluster.local/echo.Echo/Say")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let collected = resp.into_body().collect().await.unwrap();
        let trailer = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_string());
        (status, trailer, collected.to_bytes())
    });
    assert_eq!(status, 200, "{}", sc.log());
    assert_eq!(
        trailer.as_deref(),
        Some("0"),
        "grpc-status trailer lost; log:\n{}",
        sc.log()
    );
    assert_eq!(&body[..], b"\0\0\0\0\x05hello");
}
