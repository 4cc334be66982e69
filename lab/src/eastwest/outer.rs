//! The gateway's end of the outer HBONE: mutual TLS 1.3 and HTTP/2 CONNECT, written on
//! `tokio-rustls` and `h2` directly rather than with ambit's own `tls` and `hbone` modules.
//! Double-HBONE tests then drive ambit's client code against a server that shares none of it,
//! so a fault present in both of ambit's ends (a header, a flow-control slip, a verification
//! gap) cannot cancel out.
//!
//! The server verifies the client's chain against the mesh roots (any workload identity may
//! use the gateway, as with Istio's) and reports the client's SPIFFE URI for the log.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::future::poll_fn;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use ambit::tls::WorkloadCertificate;

/// How much the gateway reads from an endpoint before handing it to the stream.
const CHUNK: usize = 16 * 1024;

/// The TLS acceptor for the gateway's certificate: TLS 1.3 only, client certificates required
/// and verified against the certificate's roots, ALPN `h2`.
pub(super) fn acceptor(cert: &WorkloadCertificate) -> Result<tokio_rustls::TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for root in cert.roots() {
        roots.add(root.clone()).map_err(|e| format!("root: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(cert.private_key().clone_key());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain().to_vec(), key)
        .map_err(|e| format!("certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Completes the handshake and names the client by the SPIFFE URI of its leaf certificate.
pub(super) async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> Result<(TlsStream<TcpStream>, String), String> {
    let tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("the client sent no certificate")?;
    let id = spiffe_uri(leaf)?;
    Ok((tls, id))
}

fn spiffe_uri(leaf: &CertificateDer<'_>) -> Result<String, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .ok_or("the client certificate has no subject alternative name")?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
            _ => None,
        })
        .ok_or_else(|| "the client certificate has no SPIFFE URI".to_string())
}

/// One CONNECT received on the outer connection.
pub(super) struct Connect {
    /// `host:port` when the authority is a host name with a port, else the raw authority
    /// (an address, or missing its port) as `Err`.
    pub target: Result<(String, u16), String>,
    body: RecvStream,
    respond: SendResponse<Bytes>,
}

/// An accepted CONNECT: the client's bytes and the way back.
pub(super) struct Tunnel {
    from_client: RecvStream,
    to_client: SendStream<Bytes>,
}

/// Serves HTTP/2 on `tls`, handing every CONNECT to `handle` on a task of its own; any other
/// method is answered `405`. Returns when the client closes the connection or breaks it.
pub(super) async fn serve<F, Fut>(tls: TlsStream<TcpStream>, handle: F) -> Result<(), h2::Error>
where
    F: Fn(Connect) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake(tls)
        .await?;
    while let Some(next) = conn.accept().await {
        let (req, mut respond) = next?;
        if req.method() != Method::CONNECT {
            let _ = respond.send_response(status(StatusCode::METHOD_NOT_ALLOWED), true);
            continue;
        }
        tokio::spawn(handle(Connect::new(req, respond)));
    }
    Ok(())
}

fn status(code: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = code;
    r
}

// === impl Connect ===

impl Connect {
    fn new(req: Request<RecvStream>, respond: SendResponse<Bytes>) -> Connect {
        let raw = req
            .uri()
            .authority()
            .map_or_else(String::new, |a| a.to_string());
        let target = match req.uri().authority() {
            Some(a) if a.host().parse::<std::net::IpAddr>().is_err() => match a.port_u16() {
                Some(port) => Ok((a.host().to_string(), port)),
                None => Err(raw),
            },
            _ => Err(raw),
        };
        Connect {
            target,
            body: req.into_body(),
            respond,
        }
    }

    pub fn reject(mut self, code: StatusCode) {
        let _ = self.respond.send_response(status(code), true);
    }

    /// Answers `200` and keeps the stream open both ways.
    pub fn accept(mut self) -> Result<Tunnel, h2::Error> {
        let to_client = self.respond.send_response(status(StatusCode::OK), false)?;
        Ok(Tunnel {
            from_client: self.body,
            to_client,
        })
    }
}

/// Copies both ways between the tunnel and `up` until both directions end. A direction that
/// fails (the client reset its stream, say) does not cut the other short: bytes already
/// received from one side are still delivered to the other, as a TCP proxy would.
pub(super) async fn pipe(tunnel: Tunnel, up: TcpStream) {
    let Tunnel {
        mut from_client,
        mut to_client,
    } = tunnel;
    let (mut up_r, mut up_w) = up.into_split();
    let to_endpoint = async {
        while let Some(Ok(chunk)) = from_client.data().await {
            let n = chunk.len();
            if up_w.write_all(&chunk).await.is_err() {
                break;
            }
            // Credit the client only for what the endpoint took.
            let _ = from_client.flow_control().release_capacity(n);
        }
        let _ = up_w.shutdown().await;
    };
    let to_client = async {
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            match up_r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            while !buf.is_empty() {
                to_client.reserve_capacity(buf.len());
                let granted = match poll_fn(|cx| to_client.poll_capacity(cx)).await {
                    Some(Ok(n)) => n,
                    // The stream was reset: nothing more can be sent.
                    _ => return,
                };
                let chunk = buf.split_to(granted.min(buf.len())).freeze();
                if !chunk.is_empty() && to_client.send_data(chunk, false).is_err() {
                    return;
                }
            }
        }
        let _ = to_client.send_data(Bytes::new(), true);
    };
    tokio::join!(to_endpoint, to_client);
}
