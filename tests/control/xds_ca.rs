//! The Istio CA client against the lab's CA scripted on loopback
//! (`ambit_lab::control_scripted::ScriptedCa`): a real CSR signed by a lab root becomes a usable
//! certificate (a real mTLS handshake succeeds with it); a response for the wrong identity is
//! rejected; with the CA down the `SecretManager` keeps serving the old certificate and picks up
//! a new one when the CA returns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit::core::Identity;
use ambit::grpc::{AuthToken, GrpcTarget, RootCert};
use ambit::identity::{
    CaClient, CaClientConfig, CaClientError, IstioCaClient, SecretManager, SecretManagerConfig,
};
use ambit::tls::WorkloadCertificate;
use ambit_lab::control_scripted::{ScriptedCa, WAIT};
use tokio::time::timeout;

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
    let (ca, mut seen) = ScriptedCa::new(Duration::from_secs(3600)).unwrap();
    let server = ca.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
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
    let (ca, _seen) = ScriptedCa::new(Duration::from_secs(3600)).unwrap();
    ca.sign_wrong_identity(true);
    let server = ca.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
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
    let (ca, _seen) = ScriptedCa::new(Duration::from_secs(3)).unwrap();
    let server = ca.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
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
    let server = ca.serve(addr).await.unwrap();
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
