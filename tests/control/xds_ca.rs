//! The Istio CA client against a fake istiod CA on loopback: a real CSR signed by a test root
//! (rcgen) becomes a usable certificate (a real mTLS handshake succeeds with it); a response for
//! the wrong identity is rejected; with the CA down the `SecretManager` keeps serving the old
//! certificate and picks up a new one when the CA returns.
//!
//! The CA server here is a test double at a boundary this task cannot reach yet (the lab's
//! control plane comes later); it speaks real gRPC over real TCP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ambit::core::Identity;
use ambit::grpc::{AuthToken, GrpcTarget, RootCert};
use ambit::identity::{
    CaClient, CaClientConfig, CaClientError, IstioCaClient, SecretManager, SecretManagerConfig,
};
use ambit::tls::WorkloadCertificate;
use ambit_proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use ambit_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use rcgen::{
    BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    PublicKeyData, SanType, SignatureAlgorithm,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use x509_parser::prelude::FromDer;

const WAIT: Duration = Duration::from_secs(10);

/// The CSR's public key, handed to rcgen for signing.
struct CsrKey(Vec<u8>);

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    lifetime: Duration,
    /// Sign for a different service account than requested.
    wrong_identity: AtomicBool,
    seen: mpsc::UnboundedSender<(MetadataMap, IstioCertificateRequest)>,
}

fn csr_parts(pem: &str) -> Result<(Vec<u8>, String), String> {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&der.contents)
            .map_err(|e| e.to_string())?;
    let key = req
        .certification_request_info
        .subject_pki
        .subject_public_key
        .data
        .to_vec();
    for ext in req.requested_extensions().into_iter().flatten() {
        if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                if let x509_parser::extensions::GeneralName::URI(u) = name {
                    return Ok((key, u.to_string()));
                }
            }
        }
    }
    Err("no URI SAN".into())
}

#[tonic::async_trait]
impl IstioCertificateService for TestCa {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let headers = request.metadata().clone();
        let req = request.into_inner();
        let _ = self.seen.send((headers, req.clone()));
        let (key, san) = csr_parts(&req.csr).map_err(Status::invalid_argument)?;
        let impersonated = ambit_lab::control_ca::impersonated_identity(&req);
        if impersonated.as_deref() != Some(san.as_str()) {
            return Err(Status::permission_denied("identity mismatch"));
        }
        let san = if self.wrong_identity.load(Ordering::SeqCst) {
            san.replace("/sa/", "/sa/not-")
        } else {
            san
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(san.try_into().unwrap())];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(1);
        params.not_after = now + self.lifetime;
        let leaf = params
            .signed_by(&CsrKey(key), &self.issuer)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![leaf.pem(), self.root_pem.clone()],
        }))
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = timeout(WAIT, &mut self.task).await;
    }
}

async fn serve(addr: SocketAddr, ca: Arc<TestCa>) -> Server {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::from_arc(ca))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stop_rx.await;
            })
            .await;
    });
    Server {
        addr,
        stop: Some(stop_tx),
        task,
    }
}

fn test_ca(
    lifetime: Duration,
) -> (
    Arc<TestCa>,
    mpsc::UnboundedReceiver<(MetadataMap, IstioCertificateRequest)>,
) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = params.self_signed(&key).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let ca = TestCa {
        issuer: Issuer::new(params, key),
        root_pem: root.pem(),
        lifetime,
        wrong_identity: AtomicBool::new(false),
        seen: tx,
    };
    (Arc::new(ca), rx)
}

fn token(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ambit-ca-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("istio-token");
    std::fs::write(&path, "ca-token").unwrap();
    path
}

fn client(test: &str, addr: SocketAddr) -> IstioCaClient {
    IstioCaClient::new(CaClientConfig {
        target: GrpcTarget {
            address: format!("http://{addr}"),
            root_cert: RootCert::System,
            alt_hostname: None,
            auth_token: Some(AuthToken::File(token(test))),
            cluster_id: "cluster-a".into(),
            headers: vec![("x-ca-tenant".into(), "blue".into())],
        },
        secret_ttl: Duration::from_secs(3600),
        impersonate: true,
    })
    .unwrap()
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa).unwrap()
}

/// A real TLS 1.3 handshake between two certificates from the CA, each verifying the other's
/// SPIFFE identity.
async fn handshake(server: &WorkloadCertificate, client: &WorkloadCertificate) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config());
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.map(|_| ())
    });
    let connector = tokio_rustls::TlsConnector::from(
        client.client_config(&[server.identity().clone()]).unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    timeout(WAIT, connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    timeout(WAIT, accept).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_signed_csr_becomes_a_usable_certificate() {
    let (ca, mut seen) = test_ca(Duration::from_secs(3600));
    let server = serve("127.0.0.1:0".parse().unwrap(), ca).await;
    let client = client("sign", server.addr);

    let a = timeout(WAIT, client.create_certificate(&id("a")))
        .await
        .unwrap()
        .unwrap();
    let b = timeout(WAIT, client.issue(&id("b")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.identity(), &id("a"));
    assert_eq!(a.chain().len(), 1);
    assert_eq!(a.roots().len(), 1);
    handshake(&a, &b).await;

    let (headers, req) = seen.recv().await.unwrap();
    assert_eq!(headers.get("authorization").unwrap(), "Bearer ca-token");
    assert_eq!(headers.get("clusterid").unwrap(), "cluster-a");
    assert_eq!(headers.get("x-ca-tenant").unwrap(), "blue");
    assert_eq!(req.validity_duration, 3600);
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_for_another_identity_is_rejected() {
    let (ca, _seen) = test_ca(Duration::from_secs(3600));
    ca.wrong_identity.store(true, Ordering::SeqCst);
    let server = serve("127.0.0.1:0".parse().unwrap(), ca).await;
    let client = client("wrong", server.addr);
    match timeout(WAIT, client.create_certificate(&id("a")))
        .await
        .unwrap()
    {
        Err(CaClientError::WrongIdentity { identity, got }) => {
            assert_eq!(identity, id("a"));
            assert_eq!(got, id("not-a"));
        }
        other => panic!(
            "expected WrongIdentity, got {:?}",
            other.map(|c| c.serial_hex())
        ),
    }
    server.stop().await;
}

#[tokio::test]
async fn ca_down_is_an_error_and_the_manager_keeps_the_old_certificate() {
    // Certificates live 4 s, so the manager refreshes about 2 s in.
    let (ca, _seen) = test_ca(Duration::from_secs(3));
    let server = serve("127.0.0.1:0".parse().unwrap(), ca.clone()).await;
    let addr = server.addr;
    let client = Arc::new(client("down", addr));
    let manager = SecretManager::new(
        client.clone(),
        SecretManagerConfig {
            max_in_flight: 2,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(200),
        },
    );
    let first = timeout(WAIT, manager.fetch_certificate(&id("a")))
        .await
        .unwrap()
        .unwrap();
    server.stop().await;

    // The CA is down: a direct request fails with a transport error.
    match timeout(WAIT, client.create_certificate(&id("a")))
        .await
        .unwrap()
    {
        Err(CaClientError::Rpc { code, .. }) => assert_eq!(code, tonic::Code::Unavailable),
        other => panic!(
            "expected an RPC error, got {:?}",
            other.map(|c| c.serial_hex())
        ),
    }

    // The refresh comes due and fails (at least twice); the old certificate keeps serving.
    // (The manager publishes no signal per attempt, so this polls its counter, bounded.)
    let due = timeout(WAIT, async {
        while manager.issuance_count() < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(due.is_ok(), "no refresh attempts");
    let still = manager.fetch_certificate(&id("a")).await.unwrap();
    assert_eq!(still.serial_hex(), first.serial_hex());

    // The CA returns: the next retry gets a new certificate.
    let server = serve(addr, ca).await;
    let renewed = timeout(WAIT, async {
        loop {
            let c = manager.fetch_certificate(&id("a")).await.unwrap();
            if c.serial_hex() != first.serial_hex() {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no renewal after the CA came back");
    assert_eq!(renewed.identity(), &id("a"));
    server.stop().await;
}
