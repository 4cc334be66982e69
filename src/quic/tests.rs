//! HBONE over QUIC on real loopback UDP with real TLS: tunnels, identities, pooling, refusals
//! (another CA, wrong ALPN, malformed CONNECT), the handshake timeout and drain.
//!
//! Certificates come from a small rcgen CA made here (`quic` sits below `identity`).

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use super::handshake::local_refusal;
use super::*;
use crate::core::Identity;
use crate::tls::{CertProvider, TlsError, WorkloadCertificate};

const STEP: Duration = Duration::from_secs(10);
const CLIENT: &str = "spiffe://cluster.local/ns/a/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/b/sa/server";

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root: rustls_pki_types::CertificateDer<'static>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let root = params.self_signed(&key).unwrap().der().clone();
        TestCa {
            issuer: Issuer::new(params, key),
            root,
        }
    }

    fn leaf(&self, uri: &str) -> Arc<WorkloadCertificate> {
        self.leaf_trusting(uri, &self.root)
    }

    /// A leaf signed by this CA whose holder trusts `root` (possibly another CA's).
    fn leaf_trusting(
        &self,
        uri: &str,
        root: &rustls_pki_types::CertificateDer<'static>,
    ) -> Arc<WorkloadCertificate> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivatePkcs8KeyDer::from(key.serialize_der());
        Arc::new(
            WorkloadCertificate::new(vec![cert.der().clone()], key, vec![root.clone()]).unwrap(),
        )
    }
}

/// Hands out one fixed certificate, whatever the identity asked for.
struct Fixed(Arc<WorkloadCertificate>);

impl CertProvider for Fixed {
    fn fetch(
        &self,
        _id: &Identity,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<WorkloadCertificate>, TlsError>> + Send + '_>> {
        let c = self.0.clone();
        Box::pin(async move { Ok(c) })
    }
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn udp() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    bind_udp(s, (Ipv4Addr::LOCALHOST, 0).into(), &QuicConfig::default()).unwrap()
}

fn connect_request(authority: &str) -> Request<()> {
    let uri = Uri::builder().authority(authority).build().unwrap();
    Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .header("baggage", "k8s.namespace.name=a")
        .body(())
        .unwrap()
}

/// What the test server saw of each accepted stream.
#[derive(Debug)]
struct Seen {
    peer: Identity,
    authority: String,
    baggage: Option<String>,
}

struct TestServer {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    handshake_errors: Arc<Mutex<Vec<String>>>,
    drain: Option<oneshot::Sender<()>>,
}

/// A server that echoes every stream whose authority port is not 9 (which it answers `401`).
fn server(cert: Arc<WorkloadCertificate>) -> TestServer {
    server_with(cert, QuicConfig::default())
}

/// [`server`] with its own transport settings (e.g. a small stream limit).
fn server_with(cert: Arc<WorkloadCertificate>, cfg: QuicConfig) -> TestServer {
    let endpoint = server_endpoint(udp(), Some(cert.server_config_h3()), &cfg).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (tx, seen) = mpsc::unbounded_channel();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let shutdown = futures_util::future::FutureExt::shared(async move {
        let _ = drain_rx.await;
    });
    let errs = errors.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let (conn, peer) = match accept(incoming, cert.server_config_h3(), &cfg).await {
                Ok(ok) => ok,
                Err(e) => {
                    errs.lock().unwrap().push(e.to_string());
                    continue;
                }
            };
            let tx = tx.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(serve(conn, shutdown, move |req: InboundRequest| {
                let tx = tx.clone();
                let peer = peer.clone();
                async move {
                    let _ = tx.send(Seen {
                        peer,
                        authority: req.authority.to_string(),
                        baggage: req
                            .headers
                            .get("baggage")
                            .map(|v| v.to_str().unwrap().to_string()),
                    });
                    if req.authority.to_string().ends_with(":9") {
                        return req.reject(StatusCode::UNAUTHORIZED).await;
                    }
                    let (mut recv, mut send) = req.accept(None).await.unwrap();
                    while let Some(Ok(chunk)) = recv.recv().await {
                        send.send(chunk).await.unwrap();
                    }
                    send.finish().await.unwrap();
                }
            }));
        }
    });
    TestServer {
        addr,
        seen,
        handshake_errors: errors,
        drain: Some(drain_tx),
    }
}

fn pool(cert: Arc<WorkloadCertificate>) -> QuicPool {
    let endpoint = client_endpoint(udp()).unwrap();
    QuicPool::new(QuicConfig::default(), endpoint, Arc::new(Fixed(cert)))
}

fn key(dst: SocketAddr) -> QuicKey {
    QuicKey::new(id(CLIENT), dst, vec![id(SERVER)])
}

async fn echo(recv: &mut H3Recv, send: &mut H3Send, payload: &[u8]) -> Vec<u8> {
    send.send(Bytes::copy_from_slice(payload)).await.unwrap();
    send.finish().await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = timeout(STEP, recv.recv()).await.unwrap() {
        got.extend_from_slice(&chunk.unwrap());
    }
    got
}

#[tokio::test]
async fn tunnels_bytes_with_identities_and_headers_and_reuses_the_connection() {
    let ca = TestCa::new("ca");
    let mut srv = server(ca.leaf(SERVER));
    let pool = pool(ca.leaf(CLIENT));
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..2 {
        let (mut recv, mut send, _) = timeout(
            STEP,
            pool.send(&key(srv.addr), connect_request("10.0.0.2:80")),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(echo(&mut recv, &mut send, &payload).await, payload);
        let seen = srv.seen.recv().await.unwrap();
        assert_eq!(seen.peer, id(CLIENT));
        assert_eq!(seen.authority, "10.0.0.2:80");
        assert_eq!(seen.baggage.as_deref(), Some("k8s.namespace.name=a"));
    }
    assert_eq!(pool.connections_opened(), 1);
    assert_eq!(pool.connections_open(), 1);
}

/// A caller that gives up on a send (a `select!` that lost, a timeout) leaves the send under
/// way; the next send finishes it first and then sends its own bytes, so nothing is lost or
/// reordered and the next caller is not told its bytes went when they did not.
#[tokio::test]
async fn a_send_given_up_midway_is_finished_before_the_next_one() {
    let ca = TestCa::new("ca");
    let srv = server(ca.leaf(SERVER));
    let pool = pool(ca.leaf(CLIENT));
    let (mut recv, mut send, _) = timeout(
        STEP,
        pool.send(&key(srv.addr), connect_request("10.0.0.2:80")),
    )
    .await
    .unwrap()
    .unwrap();
    // Far beyond every window while nobody reads the echo: the send must stall.
    let big: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let stalled = timeout(
        Duration::from_millis(300),
        send.send(Bytes::from(big.clone())),
    )
    .await;
    assert!(stalled.is_err(), "a 64 MiB send nobody reads cannot finish");
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(chunk) = recv.recv().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        got
    });
    // Moving 64 MiB through a debug build takes seconds, more on a loaded machine: these
    // bounds are for the transfer, not for a single step.
    const BULK: Duration = Duration::from_secs(90);
    timeout(BULK, send.send(Bytes::from_static(b"tail")))
        .await
        .unwrap()
        .unwrap();
    timeout(STEP, send.finish()).await.unwrap().unwrap();
    let got = timeout(BULK, reader).await.unwrap().unwrap();
    let mut want = big;
    want.extend_from_slice(b"tail");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the echo differs from what was sent");
}

#[tokio::test]
async fn a_rejected_connect_reports_the_status() {
    let ca = TestCa::new("ca");
    let srv = server(ca.leaf(SERVER));
    let pool = pool(ca.leaf(CLIENT));
    let err = timeout(
        STEP,
        pool.send(&key(srv.addr), connect_request("10.0.0.2:9")),
    )
    .await
    .unwrap()
    .err()
    .unwrap();
    assert!(
        matches!(err, QuicError::Status(StatusCode::UNAUTHORIZED)),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let ca = TestCa::new("ca");
    let mut srv = server(ca.leaf(SERVER));
    let pool = pool(ca.leaf(CLIENT));
    let get = Request::builder()
        .method(Method::GET)
        .uri("https://10.0.0.2:80/")
        .body(())
        .unwrap();
    let bad_authority = connect_request("not-a-port:xx");
    for req in [get, bad_authority] {
        let err = timeout(STEP, pool.send(&key(srv.addr), req))
            .await
            .unwrap()
            .err()
            .unwrap();
        assert!(
            matches!(err, QuicError::Status(StatusCode::BAD_REQUEST)),
            "{err}"
        );
    }
    // Neither reached the handler.
    assert!(srv.seen.try_recv().is_err());
}

#[tokio::test]
async fn a_client_from_another_ca_is_refused() {
    // The client trusts the server's CA, so only the server's check of the client can fail.
    let ca = TestCa::new("ca");
    let srv = server(ca.leaf(SERVER));
    let pool = pool(TestCa::new("other").leaf_trusting(CLIENT, &ca.root));
    let err = timeout(
        STEP,
        pool.send(&key(srv.addr), connect_request("10.0.0.2:80")),
    )
    .await
    .unwrap()
    .err()
    .unwrap();
    // The server's alert, typed as tokio-rustls reports it on h2.
    let QuicError::Tls {
        by: RefusedBy::Peer,
        error,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert!(
        matches!(
            **error,
            TlsError::Handshake(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA | rustls::AlertDescription::BadCertificate
            ))
        ),
        "{err:?}"
    );
    assert!(err.is_handshake_failure());
    let errors = timeout(STEP, async {
        loop {
            let e = srv.handshake_errors.lock().unwrap().clone();
            if !e.is_empty() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    // The server's own refusal, typed as on h2: the issuer is unknown.
    assert!(
        errors[0].ends_with("TLS handshake failed: invalid peer certificate: UnknownIssuer"),
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_server_with_an_unexpected_identity_is_refused() {
    let ca = TestCa::new("ca");
    let srv = server(ca.leaf("spiffe://cluster.local/ns/b/sa/other"));
    let pool = pool(ca.leaf(CLIENT));
    let err = timeout(
        STEP,
        pool.send(&key(srv.addr), connect_request("10.0.0.2:80")),
    )
    .await
    .unwrap()
    .err()
    .unwrap();
    // Our verifier's refusal comes back as the typed error the h2 path returns.
    let QuicError::Tls {
        by: RefusedBy::Local,
        error,
        ..
    } = err
    else {
        panic!("{err:?}");
    };
    match *error {
        TlsError::UnexpectedServerIdentity {
            presented,
            expected,
        } => {
            assert_eq!(presented, id("spiffe://cluster.local/ns/b/sa/other"));
            assert_eq!(expected, vec![id(SERVER)]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_client_offering_h2_alpn_is_refused() {
    let ca = TestCa::new("ca");
    let srv = server(ca.leaf(SERVER));
    let client = ca.leaf(CLIENT);
    let endpoint = client_endpoint(udp()).unwrap();
    let h2 = endpoint::client_config(
        client.client_config(&[id(SERVER)]).unwrap(),
        &QuicConfig::default(),
    )
    .unwrap();
    let err = timeout(
        STEP,
        endpoint.connect_with(h2, srv.addr, "127.0.0.1").unwrap(),
    )
    .await
    .unwrap()
    .err()
    .unwrap();
    // TLS alert 120, no_application_protocol, as rustls refuses h2 on an h3 listener.
    assert!(err.to_string().contains("error 120"), "{err}");
}

#[tokio::test]
async fn a_silent_peer_times_out_the_handshake() {
    let ca = TestCa::new("ca");
    let silent = udp();
    let dst = silent.local_addr().unwrap();
    let cfg = QuicConfig {
        handshake_timeout: Duration::from_millis(200),
        ..QuicConfig::default()
    };
    let pool = QuicPool::new(
        cfg,
        client_endpoint(udp()).unwrap(),
        Arc::new(Fixed(ca.leaf(CLIENT))),
    );
    let err = timeout(STEP, pool.send(&key(dst), connect_request("10.0.0.2:80")))
        .await
        .unwrap()
        .err()
        .unwrap();
    assert!(matches!(err, QuicError::HandshakeTimeout { .. }), "{err}");
    assert!(err.is_handshake_failure());
}

#[tokio::test]
async fn drain_finishes_open_streams_and_refuses_new_ones() {
    let ca = TestCa::new("ca");
    let mut srv = server(ca.leaf(SERVER));
    let pool = pool(ca.leaf(CLIENT));
    let (mut recv, mut send, _) = timeout(
        STEP,
        pool.send(&key(srv.addr), connect_request("10.0.0.2:80")),
    )
    .await
    .unwrap()
    .unwrap();
    srv.seen.recv().await.unwrap();
    srv.drain.take().unwrap().send(()).unwrap();
    // The open stream still works after the GOAWAY.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        echo(&mut recv, &mut send, b"still here").await,
        b"still here"
    );
    drop((recv, send));
    // Once its last stream ended, the server closes the drained connection.
    let gone = timeout(STEP, async {
        loop {
            if pool.connections_open() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the drained connection was not closed");
}

#[tokio::test]
async fn a_connection_at_its_stream_limit_makes_another() {
    let ca = TestCa::new("ca");
    let srv = server(ca.leaf(SERVER));
    let cfg = QuicConfig {
        max_concurrent_streams: 2,
        ..QuicConfig::default()
    };
    let pool = QuicPool::new(
        cfg,
        client_endpoint(udp()).unwrap(),
        Arc::new(Fixed(ca.leaf(CLIENT))),
    );
    // Five tunnels held open at once: two per connection.
    let mut held = Vec::new();
    for _ in 0..5 {
        let tunnel = timeout(
            STEP,
            pool.send(&key(srv.addr), connect_request("10.0.0.2:80")),
        )
        .await
        .unwrap()
        .unwrap();
        held.push(tunnel);
    }
    assert_eq!(pool.connections_opened(), 3);
    // Every held tunnel still carries bytes.
    for (recv, send, _) in held.iter_mut() {
        assert_eq!(echo(recv, send, b"ping").await, b"ping");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_over_the_stream_limit_opens_enough_connections_without_failures() {
    // Both sides allow 4 streams per connection, so a request that overshot a connection's
    // limit would wait for stream credit that the held tunnels never give back.
    let cfg = QuicConfig {
        max_concurrent_streams: 4,
        ..QuicConfig::default()
    };
    let ca = TestCa::new("ca");
    let srv = server_with(ca.leaf(SERVER), cfg.clone());
    let pool = QuicPool::new(
        cfg,
        client_endpoint(udp()).unwrap(),
        Arc::new(Fixed(ca.leaf(CLIENT))),
    );
    const N: usize = 40;
    let start = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (pool, start, dst) = (pool.clone(), start.clone(), srv.addr);
            tokio::spawn(async move {
                start.wait().await;
                timeout(STEP, pool.send(&key(dst), connect_request("10.0.0.2:80"))).await
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(Ok(tunnel)) => held.push(tunnel),
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(_) => failures.push("timed out waiting for a stream".into()),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    // Every tunnel is still held, so no connection carries more than its limit.
    assert_eq!(pool.connections_opened(), (N / 4) as u64);
    for (recv, send, _) in held.iter_mut() {
        assert_eq!(echo(recv, send, b"ping").await, b"ping");
    }
}

/// rustls' error as our verifier raises it (`tls::verify::refuse`).
fn refused(e: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}

#[test]
fn local_refusals_are_rebuilt_from_rustls_text() {
    use rustls::AlertDescription::{BadCertificate, NoApplicationProtocol, UnknownCA};
    let unexpected = TlsError::UnexpectedServerIdentity {
        presented: id("spiffe://cluster.local/ns/b/sa/other"),
        expected: vec![id(SERVER), id(CLIENT)],
    };
    let mismatch = TlsError::TrustDomainMismatch {
        peer: id("spiffe://other.domain/ns/a/sa/x"),
        expected: "cluster.local".into(),
    };
    let cases = [
        (
            UnknownCA,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ),
        (NoApplicationProtocol, rustls::Error::NoApplicationProtocol),
        (BadCertificate, rustls::Error::NoCertificatesPresented),
    ];
    for (alert, e) in cases {
        let rebuilt = local_refusal(alert, &e.to_string());
        assert!(
            matches!(&rebuilt, TlsError::Handshake(r) if *r == e),
            "{rebuilt:?}"
        );
        assert_eq!(rebuilt.to_string(), TlsError::Handshake(e).to_string());
    }
    for ours in [unexpected, mismatch, TlsError::NoSpiffeIdentity] {
        let text = refused(ours.clone()).to_string();
        let rebuilt = local_refusal(BadCertificate, &text);
        assert_eq!(rebuilt.to_string(), ours.to_string(), "{text}");
        assert_eq!(
            std::mem::discriminant(&rebuilt),
            std::mem::discriminant(&ours)
        );
    }
    // Text that names no known error keeps it and the alert, untyped.
    let other = local_refusal(BadCertificate, "something new");
    assert_eq!(
        other.to_string(),
        "TLS handshake failed: unexpected error: something new (sent BadCertificate)"
    );
}
