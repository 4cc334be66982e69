//! `auto` transport selection against real loopback peers: an h2-only peer (a silent UDP socket
//! on the same port, so the QUIC handshake hangs), a QUIC-only peer (nothing on TCP) and a peer
//! with both. No timing is asserted: each case is built so that only the intended behaviour can
//! produce its outcome (a QUIC handshake timeout of a minute, h2 refused outright...).
//!
//! The h2 side is plain TCP (a connector without TLS); the QUIC side is real TLS from a CA made
//! here, since QUIC has no plaintext mode.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::*;
use crate::core::Identity;
use crate::hbone;
use crate::hbone::{BoxedIo, ConnectHeaders, Connected, Connector, H2Config};
use crate::tls::{CertProvider, TlsError, WorkloadCertificate};

const STEP: Duration = Duration::from_secs(10);
const ID: &str = "spiffe://cluster.local/ns/a/sa/peer";

/// Opens plain TCP to the key's address.
struct PlainTcp;

impl Connector for PlainTcp {
    fn connect(
        &self,
        key: &PoolKey,
    ) -> Pin<Box<dyn Future<Output = Result<Connected, HboneError>> + Send + '_>> {
        let dst = key.dst;
        Box::pin(async move {
            let tcp = TcpStream::connect(dst)
                .await
                .map_err(|e| HboneError::connect(dst, e))?;
            Ok(Connected::from(Box::new(tcp) as BoxedIo))
        })
    }
}

/// One certificate for everyone: a leaf for [`ID`] from a CA made here.
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

fn certificate() -> Arc<WorkloadCertificate> {
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let root = ca.self_signed(&ca_key).unwrap().der().clone();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names = vec![rcgen::SanType::URI(ID.try_into().unwrap())];
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    Arc::new(WorkloadCertificate::new(vec![cert.der().clone()], key, vec![root]).unwrap())
}

fn udp(port: u16) -> std::net::UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    quic::bind_udp(
        s,
        (Ipv4Addr::LOCALHOST, port).into(),
        &QuicConfig::default(),
    )
    .unwrap()
}

/// An h2 HBONE server on plain TCP that accepts every CONNECT and holds it open.
async fn h2_peer() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let handler = |req: hbone::InboundRequest| async move {
                    let stream = req.accept(None);
                    tokio::time::sleep(STEP).await;
                    drop(stream);
                };
                hbone::serve(tcp, &H2Config::default(), std::future::pending(), handler).await
            });
        }
    });
    addr
}

/// A QUIC HBONE server on `udp` that accepts every CONNECT and holds it open.
fn h3_peer(udp: std::net::UdpSocket, cert: Arc<WorkloadCertificate>) {
    let cfg = QuicConfig::default();
    let endpoint = quic::server_endpoint(udp, Some(cert.server_config_h3()), &cfg).unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok((conn, _)) = quic::accept(incoming, cert.server_config_h3(), &cfg).await else {
                continue;
            };
            tokio::spawn(quic::serve(
                conn,
                std::future::pending(),
                |req: quic::InboundRequest| async move {
                    let halves = req.accept(None).await;
                    tokio::time::sleep(STEP).await;
                    drop(halves);
                },
            ));
        }
    });
}

struct Setup {
    transports: Transports,
    quic: QuicPool,
    metrics: ProxyMetrics,
}

fn auto(
    head_start: Duration,
    handshake_timeout: Duration,
    cert: Arc<WorkloadCertificate>,
) -> Setup {
    let quic_cfg = QuicConfig {
        handshake_timeout,
        ..QuicConfig::default()
    };
    let cfg = TransportConfig {
        mode: HboneTransport::Auto,
        quic_head_start: head_start,
        quic: quic_cfg.clone(),
        ..TransportConfig::default()
    };
    let quic = QuicPool::new(
        quic_cfg,
        quic::client_endpoint(udp(0)).unwrap(),
        Arc::new(Fixed(cert)),
    );
    let metrics = ProxyMetrics::default();
    let h2 = Pool::new(H2Config::default(), Arc::new(PlainTcp));
    Setup {
        transports: Transports::new(h2, Some(quic.clone()), &cfg, metrics.clone()),
        quic,
        metrics,
    }
}

fn key(dst: SocketAddr) -> PoolKey {
    let id: Identity = ID.parse().unwrap();
    PoolKey::new(id.clone(), Ipv4Addr::LOCALHOST.into(), dst, vec![id])
}

fn request() -> ConnectRequest {
    ConnectRequest {
        authority: "10.0.0.2:80".parse().unwrap(),
        headers: ConnectHeaders::default(),
    }
}

async fn open(s: &Setup, dst: SocketAddr) -> Result<Tunnel, TransportError> {
    timeout(STEP, s.transports.open(&key(dst), &request()))
        .await
        .expect("open did not finish")
}

#[tokio::test]
async fn an_h2_only_peer_is_reached_over_h2_while_the_quic_handshake_still_waits() {
    let dst = h2_peer().await;
    // Same port, UDP: takes the QUIC Initial and never answers.
    let _silent = udp(dst.port());
    // A handshake timeout far beyond the open's own deadline: only the race can finish it.
    let s = auto(
        Duration::from_millis(20),
        Duration::from_secs(60),
        certificate(),
    );
    for _ in 0..3 {
        assert!(matches!(open(&s, dst).await, Ok(Tunnel::H2(_))));
    }
    // All three shared the one pending probe; nothing was remembered or counted yet.
    assert_eq!(s.metrics.hbone_transport_fallbacks.get(), 0);
    assert_eq!(s.quic.connections_opened(), 0);
    assert_eq!(lock(&s.transports.probes).len(), 1);
}

#[tokio::test]
async fn a_failed_probe_is_remembered_and_counted_once() {
    let dst = h2_peer().await;
    let _silent = udp(dst.port());
    let s = auto(
        Duration::from_millis(20),
        Duration::from_millis(200),
        certificate(),
    );
    let mut probe = s.transports.probe(
        &s.quic,
        &QuicKey::new(ID.parse().unwrap(), dst, vec![ID.parse().unwrap()]),
    );
    assert!(matches!(open(&s, dst).await, Ok(Tunnel::H2(_))));
    // Readiness signal: the probe's outcome.
    assert_eq!(
        timeout(STEP, settled(&mut probe)).await.unwrap(),
        Probe::Down
    );
    assert_eq!(s.metrics.hbone_transport_fallbacks.get(), 1);
    assert!(s.transports.fallbacks.remembered(dst));
    // Remembered: straight to h2, no new probe.
    assert!(matches!(open(&s, dst).await, Ok(Tunnel::H2(_))));
    assert!(lock(&s.transports.probes).is_empty());
    assert_eq!(s.metrics.hbone_transport_fallbacks.get(), 1);
}

#[tokio::test]
async fn a_quic_only_peer_is_reached_over_quic_even_when_h2_fails_first() {
    // A port with nothing on TCP: h2 is refused at once.
    let port = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let cert = certificate();
    h3_peer(udp(port), cert.clone());
    let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // No head start: h2 runs (and fails) alongside the handshake from the start.
    let s = auto(Duration::ZERO, Duration::from_secs(60), cert);
    assert!(matches!(open(&s, dst).await, Ok(Tunnel::H3(..))));
    assert_eq!(s.quic.connections_opened(), 1);
    assert_eq!(s.metrics.hbone_transport_fallbacks.get(), 0);
}

#[tokio::test]
async fn a_peer_with_both_gets_quic_and_keeps_it() {
    let dst = h2_peer().await;
    let cert = certificate();
    h3_peer(udp(dst.port()), cert.clone());
    // A head start longer than the test's deadline: QUIC must win it alone.
    let s = auto(Duration::from_secs(60), Duration::from_secs(60), cert);
    for _ in 0..3 {
        assert!(matches!(open(&s, dst).await, Ok(Tunnel::H3(..))));
    }
    assert_eq!(s.quic.connections_opened(), 1);
    assert_eq!(s.transports.h2_pool().connections_opened(), 0);
}

#[test]
fn parses_the_transport_names() {
    assert_eq!("h2".parse::<HboneTransport>().unwrap(), HboneTransport::H2);
    assert_eq!("H3".parse::<HboneTransport>().unwrap(), HboneTransport::H3);
    assert_eq!(
        " auto ".parse::<HboneTransport>().unwrap(),
        HboneTransport::Auto
    );
    let err = "tcp".parse::<HboneTransport>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown HBONE transport \"tcp\" (expected h2, h3 or auto)"
    );
    assert!(!HboneTransport::H2.quic_enabled());
    assert!(HboneTransport::Auto.quic_enabled());
}
