//! Double HBONE over real loopback sockets, TLS and HTTP/2: a client proxy's outbound pool, an
//! east-west gateway stand-in (terminates the outer HBONE with its own certificate, pipes the
//! raw inner bytes on without decrypting them), and a real ambit inbound listener as the final
//! server, in front of an echo app.
//!
//! Certificates come from a small rcgen CA made here: `proxy` sits below `identity`, so it
//! cannot use the built-in CA without breaking the module levels.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::support::{self, id};
use crate::core::Authority;
use crate::core::Identity;
use crate::hbone::{self, ConnectHeaders, HboneError};
use crate::lifecycle::{self, DrainTrigger};
use crate::proxy::gateway::{self, GatewayError, GatewayRoute};
use crate::proxy::outbound::{Route, route};
use crate::proxy::*;
use crate::state::Workload;
use crate::state::{
    GatewayAddress, GatewayDestination, NetworkAddress, Service, StateWriter, TunnelProtocol,
    Update,
};
use crate::tls::CertProvider;
use crate::tls::{self, TlsError, WorkloadCertificate};

const STEP: Duration = Duration::from_secs(10);
const WEB: &str = "web.b.svc.cluster.local";
/// The gateway listens on another loopback address than the server, so the two are distinct
/// workloads by address.
const GATEWAY_IP: &str = "127.0.0.2";

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "gateway test CA");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let root = params.self_signed(&key).unwrap().der().clone();
        TestCa {
            issuer: Issuer::new(params, key),
            root,
        }
    }

    fn leaf(&self, identity: &Identity) -> Arc<WorkloadCertificate> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            identity.to_string().as_str().try_into().unwrap(),
        )];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::hours(1);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Arc::new(
            WorkloadCertificate::new(
                vec![cert.der().clone()],
                PrivatePkcs8KeyDer::from(key.serialize_der()),
                vec![self.root.clone()],
            )
            .unwrap(),
        )
    }
}

/// Hands out the certificates it was built with.
struct Certs(HashMap<Identity, Arc<WorkloadCertificate>>);

impl CertProvider for Certs {
    fn fetch(
        &self,
        id: &Identity,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Arc<WorkloadCertificate>, TlsError>>
                + Send
                + '_,
        >,
    > {
        let found = self
            .0
            .get(id)
            .cloned()
            .ok_or_else(|| TlsError::CertificateUnavailable {
                identity: id.clone(),
                reason: "not in this test".into(),
            });
        Box::pin(async move { found })
    }
}

/// One CONNECT the gateway stand-in received: its authority and the client's identity.
type Seen = (Authority, Identity);

/// The east-west gateway stand-in: terminates the outer HBONE and pipes each stream's raw bytes
/// to `forward_to` (the final server's 15008), answering 503 if that cannot be reached.
async fn run_gateway(
    listener: tokio::net::TcpListener,
    cert: Arc<WorkloadCertificate>,
    forward_to: SocketAddr,
    seen: mpsc::UnboundedSender<Seen>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let (cert, seen) = (cert.clone(), seen.clone());
        tokio::spawn(async move {
            let Ok((tls, peer)) = tls::accept(cert.server_config(), tcp).await else {
                return;
            };
            let handler = move |req: hbone::InboundRequest| {
                let (seen, peer) = (seen.clone(), peer.clone());
                async move {
                    let _ = seen.send((req.authority.clone(), peer));
                    let Ok(mut up) = TcpStream::connect(forward_to).await else {
                        return req.reject(http::StatusCode::SERVICE_UNAVAILABLE);
                    };
                    if let Ok(mut down) = req.accept(None) {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                }
            };
            let cfg = hbone::H2Config::default();
            let _ = hbone::serve(tls, &cfg, std::future::pending(), handler).await;
        });
    }
}

/// An echo app on loopback.
async fn echo_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

struct Multinet {
    client: Arc<ProxyInputs>,
    pool: hbone::Pool,
    seen: mpsc::UnboundedReceiver<Seen>,
    _writer: StateWriter,
    _drain: DrainTrigger,
}

/// Network net1 holds the client; net2 holds the server `b/server` (backing `web`, whose SANs
/// are `sans`) behind the gateway `istio-system/eastwest`. Everything is started.
async fn multinet(sans: &[&str]) -> Multinet {
    let ca = TestCa::new();
    let (client_id, server_id, gw_id) = (
        id("a", "client"),
        id("b", "server"),
        id("istio-system", "eastwest"),
    );
    let app = echo_app().await;
    let gw_listener = tokio::net::TcpListener::bind((GATEWAY_IP, 0))
        .await
        .unwrap();
    let gw_addr = gw_listener.local_addr().unwrap();

    let (writer, view) = StateWriter::new();
    let wl = |ns: &str, name: &str, ip: &str, network: &str| {
        let mut wl = Workload::new(format!("{ns}/{name}"), name, id(ns, name));
        wl.workload_ips = vec![ip.parse().unwrap()];
        wl.protocol = TunnelProtocol::Hbone;
        wl.network = network.into();
        wl
    };
    let mut server = wl("b", "server", "127.0.0.1", "net2");
    server
        .services
        .insert(format!("b/{WEB}"), [(80, app.port())].into());
    server.network_gateway = Some(GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress {
            network: "net2".into(),
            address: gw_addr.ip(),
        }),
        hbone_mtls_port: gw_addr.port(),
    });
    let web = Service {
        name: "web".into(),
        namespace: "b".into(),
        hostname: WEB.into(),
        vips: vec![NetworkAddress {
            network: "net1".into(),
            address: "10.96.0.1".parse().unwrap(),
        }],
        ports: [(80, app.port())].into_iter().collect(),
        subject_alt_names: sans.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    writer.apply(
        Update::default()
            .upsert(wl("a", "client", "127.0.0.3", "net1"))
            .upsert(server)
            .upsert(wl("istio-system", "eastwest", GATEWAY_IP, "net2"))
            .upsert(web),
    );

    let with = |ns, name, network: &str, cert: Arc<WorkloadCertificate>| {
        let mut pi = support::inputs(view.clone(), ns, name, Default::default());
        let mut cfg = (*pi.cfg).clone();
        cfg.network = network.into();
        pi.cfg = Arc::new(cfg);
        pi.certs = Arc::new(Certs([(cert.identity().clone(), cert)].into()));
        pi
    };
    let server = Proxy::bind(with("b", "server", "net2", ca.leaf(&server_id))).unwrap();
    let server_hbone = server.addrs().inbound;
    let (trigger, drain) = lifecycle::drain_channel();
    tokio::spawn(server.run(drain));

    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(run_gateway(
        gw_listener,
        ca.leaf(&gw_id),
        server_hbone,
        seen_tx,
    ));

    let client = Arc::new(with("a", "client", "net1", ca.leaf(&client_id)));
    let connector = crate::conn::transport::h2::TlsConnector::new(client.clone());
    let pool = hbone::Pool::new(client.cfg.h2.clone(), Arc::new(connector));
    Multinet {
        client,
        pool,
        seen,
        _writer: writer,
        _drain: trigger,
    }
}

impl Multinet {
    fn route(&self) -> GatewayRoute {
        match route(&self.client, "10.96.0.1:80".parse().unwrap()).unwrap() {
            Route::Gateway { via, .. } => *via,
            other => panic!("expected a gateway route, got {other:?}"),
        }
    }

    async fn connect(&self, via: &GatewayRoute) -> Result<hbone::H2Stream, GatewayError> {
        let peer: SocketAddr = "127.0.0.3:40000".parse().unwrap();
        timeout(
            STEP,
            gateway::connect(
                &self.client,
                &self.pool,
                peer,
                via,
                ConnectHeaders::default(),
            ),
        )
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn bytes_cross_both_tunnels_and_the_gateway_sees_the_service_authority() {
    let mut net = multinet(&["spiffe://cluster.local/ns/b/sa/server"]).await;
    let via = net.route();
    let mut stream = net.connect(&via).await.unwrap();
    let msg = b"hello from network 1, through the east-west gateway";
    stream.write_all(msg).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(STEP, stream.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, msg);
    let (authority, peer) = timeout(STEP, net.seen.recv()).await.unwrap().unwrap();
    assert_eq!(authority, Authority::Host(WEB.into(), 80));
    assert_eq!(peer, id("a", "client"));
    // The outer connection is pooled: a second connection reuses it.
    let again = net.connect(&via).await.unwrap();
    drop(again);
    assert_eq!(net.pool.connections_opened(), 1);
}

#[tokio::test]
async fn an_inner_server_with_another_identity_is_refused_naming_both() {
    let net = multinet(&["spiffe://cluster.local/ns/b/sa/other"]).await;
    let Err(err) = net.connect(&net.route()).await else {
        panic!("expected an identity refusal, got a stream");
    };
    let GatewayError::InnerTls { source, .. } = &err else {
        panic!("expected an inner TLS refusal, got {err}");
    };
    match &**source {
        TlsError::UnexpectedServerIdentity {
            presented,
            expected,
        } => {
            assert_eq!(presented, &id("b", "server"));
            assert_eq!(expected, &vec![id("b", "other")]);
        }
        other => panic!("expected an identity refusal, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("spiffe://cluster.local/ns/b/sa/server"),
        "{msg}"
    );
    assert!(
        msg.contains("spiffe://cluster.local/ns/b/sa/other"),
        "{msg}"
    );
}

#[tokio::test]
async fn an_inner_connect_to_an_unknown_host_gets_the_servers_status() {
    let net = multinet(&["spiffe://cluster.local/ns/b/sa/server"]).await;
    let mut via = net.route();
    via.authority = Authority::Host("nope.b.svc.cluster.local".into(), 80);
    match net.connect(&via).await {
        Err(GatewayError::Inner { source, .. }) if matches!(*source, HboneError::Status(_)) => {
            assert!(
                matches!(*source, HboneError::Status(http::StatusCode::BAD_REQUEST)),
                "{source}"
            )
        }
        Err(e) => panic!("expected a 400 from the inner server, got {e}"),
        Ok(_) => panic!("expected a 400 from the inner server, got a stream"),
    }
    // A known service on a port it does not map: the server cannot deliver it.
    via.authority = Authority::Host(WEB.into(), 81);
    match net.connect(&via).await {
        Err(GatewayError::Inner { source, .. }) if matches!(*source, HboneError::Status(_)) => {
            assert!(
                matches!(
                    *source,
                    HboneError::Status(http::StatusCode::SERVICE_UNAVAILABLE)
                ),
                "{source}"
            )
        }
        Err(e) => panic!("expected a 503 from the inner server, got {e}"),
        Ok(_) => panic!("expected a 503 from the inner server, got a stream"),
    }
}
