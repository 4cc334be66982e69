//! HBONE TLS over real loopback TCP with real rustls: handshakes that must succeed, and every kind
//! of refusal with its exact error.
//!
//! Certificates come from a tiny rcgen CA defined here: `tls` sits below `identity`, so it cannot use
//! the built-in CA without breaking the module levels. CRLs (`crl.rs`) and the compliance policy
//! (`policy.rs`) have files of their own.

mod crl;
mod policy;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::{CertificateError, ClientConfig, ProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use super::verify::{ServerIdentityVerifier, TrustRoots};
use super::*;

pub(super) const STEP: Duration = Duration::from_secs(10);

pub(super) struct TestCa {
    pub(super) issuer: Issuer<'static, KeyPair>,
    pub(super) root: CertificateDer<'static>,
}

impl TestCa {
    pub(super) fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let root = params.self_signed(&key).unwrap().der().clone();
        TestCa {
            issuer: Issuer::new(params, key),
            root,
        }
    }

    /// A leaf for `uri` (any URI SAN, SPIFFE or not), trusting `roots`.
    fn leaf_trusting(
        &self,
        uri: &str,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<WorkloadCertificate, TlsError> {
        let (chain, key) = self.raw_leaf(uri);
        WorkloadCertificate::new(chain, key, roots)
    }

    pub(super) fn leaf(&self, uri: &str) -> WorkloadCertificate {
        self.leaf_trusting(uri, vec![self.root.clone()]).unwrap()
    }

    pub(super) fn raw_leaf(
        &self,
        uri: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>) {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
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
        (
            vec![cert.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        )
    }
}

pub(super) fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

pub(super) const SERVER: &str = "spiffe://cluster.local/ns/default/sa/server";
pub(super) const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";

pub(super) type ServerSide =
    Result<(tokio_rustls::server::TlsStream<TcpStream>, Identity), TlsError>;
pub(super) type ClientSide = Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError>;

/// Runs one handshake over loopback TCP; returns what each side saw.
pub(super) async fn handshake(
    server: &WorkloadCertificate,
    client: Arc<ClientConfig>,
) -> (ServerSide, ClientSide) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_cfg = server.server_config();
    let serve = async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(server_cfg, tcp).await
    };
    let dial = async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        connect(client, tcp).await
    };
    timeout(STEP, async { tokio::join!(serve, dial) })
        .await
        .unwrap()
}

#[tokio::test]
async fn handshake_succeeds_with_identities_suite_and_alpn() {
    let ca = TestCa::new("root");
    let server = ca.leaf(SERVER);
    let client = ca.leaf(CLIENT);
    let cfg = client.client_config(&[id(SERVER)]).unwrap();

    let (s, c) = handshake(&server, cfg).await;
    let (mut s, peer) = s.unwrap();
    let mut c = c.unwrap();
    assert_eq!(peer, id(CLIENT));
    assert_eq!(peer_identity(c.get_ref().1).unwrap(), id(SERVER));

    for conn in [s.get_ref().1 as &rustls::CommonState, c.get_ref().1] {
        assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        let suite = conn.negotiated_cipher_suite().unwrap().suite();
        assert!(
            suite == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
                || suite == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            "{suite:?}"
        );
    }

    // Bytes flow both ways through the tunnel.
    timeout(STEP, c.write_all(b"ping")).await.unwrap().unwrap();
    let mut buf = [0u8; 4];
    timeout(STEP, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    timeout(STEP, s.write_all(b"pong")).await.unwrap().unwrap();
    timeout(STEP, c.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"pong");
}

#[tokio::test]
async fn server_refuses_client_from_unrelated_ca() {
    let ca = TestCa::new("root");
    let other = TestCa::new("other root");
    let server = ca.leaf(SERVER);
    // The client trusts the server's CA, but its own certificate comes from another one.
    let client = other.leaf_trusting(CLIENT, vec![ca.root.clone()]).unwrap();
    let (s, _) = handshake(&server, client.client_config(&[id(SERVER)]).unwrap()).await;
    match s {
        Err(TlsError::Handshake(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))) => {}
        other => panic!("unexpected: {:?}", other.map(|(_, id)| id)),
    }
}

#[tokio::test]
async fn server_refuses_client_from_other_trust_domain() {
    let ca = TestCa::new("root");
    let server = ca.leaf(SERVER);
    let client = ca.leaf("spiffe://other.domain/ns/default/sa/client");
    let (s, _) = handshake(&server, client.client_config(&[id(SERVER)]).unwrap()).await;
    let err = s.map(|(_, id)| id).unwrap_err();
    assert_eq!(
        err.to_string(),
        "peer identity spiffe://other.domain/ns/default/sa/client is not in trust domain \"cluster.local\""
    );
    assert!(
        matches!(&err, TlsError::TrustDomainMismatch { peer, expected }
            if *peer == id("spiffe://other.domain/ns/default/sa/client") && expected == "cluster.local"),
        "{err:?}"
    );
}

#[tokio::test]
async fn server_refuses_client_whose_san_is_not_a_spiffe_identity() {
    let ca = TestCa::new("root");
    let server = ca.leaf(SERVER);
    let trust = Arc::new(TrustRoots::new(std::slice::from_ref(&ca.root)).unwrap());
    for uri in [
        "https://client.example.com/",
        "spiffe://cluster.local/client",
        "spiffe:///ns/default/sa/client",
    ] {
        // Signed by the mesh root, but naming no workload identity (ambit itself would not
        // load such a certificate, so the client is configured by hand).
        let (chain, key) = ca.raw_leaf(uri);
        let mut cfg = ClientConfig::builder_with_provider(verify::provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerIdentityVerifier::new(
                trust.clone(),
                vec![id(SERVER)],
            )))
            .with_client_auth_cert(chain, key.into())
            .unwrap();
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        let (s, _) = handshake(&server, Arc::new(cfg)).await;
        let err = s.map(|(_, id)| id).expect_err(uri);
        assert!(
            !matches!(err, TlsError::TrustDomainMismatch { .. }),
            "{uri}: refused for the wrong reason: {err}"
        );
    }
}

#[tokio::test]
async fn client_refuses_server_with_unexpected_identity() {
    let ca = TestCa::new("root");
    let server = ca.leaf(SERVER);
    let client = ca.leaf(CLIENT);
    let expected = [
        id("spiffe://cluster.local/ns/default/sa/wanted"),
        id("spiffe://cluster.local/ns/apps/sa/also-wanted"),
    ];
    let (s, c) = handshake(&server, client.client_config(&expected).unwrap()).await;
    let err = c.unwrap_err();
    assert_eq!(
        err.to_string(),
        "server presented identity spiffe://cluster.local/ns/default/sa/server, expected one of \
         [spiffe://cluster.local/ns/apps/sa/also-wanted, spiffe://cluster.local/ns/default/sa/wanted]"
    );
    assert!(
        matches!(&err, TlsError::UnexpectedServerIdentity { presented, .. } if *presented == id(SERVER)),
        "{err:?}"
    );
    // The server learns of it through the client's alert.
    match s {
        Err(TlsError::Handshake(rustls::Error::AlertReceived(_))) => {}
        other => panic!("unexpected: {:?}", other.map(|(_, id)| id)),
    }
}

#[tokio::test]
async fn server_refuses_client_without_certificate() {
    let ca = TestCa::new("root");
    let server = ca.leaf(SERVER);
    let trust = Arc::new(TrustRoots::new(std::slice::from_ref(&ca.root)).unwrap());
    let mut cfg = ClientConfig::builder_with_provider(verify::provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerIdentityVerifier::new(
            trust,
            vec![id(SERVER)],
        )))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    let (s, _) = handshake(&server, Arc::new(cfg)).await;
    match s {
        Err(TlsError::Handshake(rustls::Error::NoCertificatesPresented)) => {}
        other => panic!("unexpected: {:?}", other.map(|(_, id)| id)),
    }
}

#[tokio::test]
async fn server_refuses_tls12_only_client() {
    let ca = TestCa::new("root");
    let server = ca.leaf(SERVER);
    let client = ca.leaf(CLIENT);
    let trust = Arc::new(TrustRoots::new(std::slice::from_ref(&ca.root)).unwrap());
    // Stock aws-lc-rs provider, so TLS 1.2 suites are on offer; only the version list differs.
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(ServerIdentityVerifier::new(
        trust,
        vec![id(SERVER)],
    )))
    .with_client_auth_cert(
        client.chain().to_vec(),
        client.private_key().clone_key().into(),
    )
    .unwrap();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    let (s, c) = handshake(&server, Arc::new(cfg)).await;
    match s {
        Err(TlsError::Handshake(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOfferedOrEnabled,
        ))) => {}
        other => panic!("unexpected: {:?}", other.map(|(_, id)| id)),
    }
    assert!(
        matches!(
            c,
            Err(TlsError::Handshake(rustls::Error::AlertReceived(
                rustls::AlertDescription::ProtocolVersion
            )))
        ),
        "{:?}",
        c.map(|_| ())
    );
}

#[test]
fn certificate_fields_and_config_cache() {
    let ca = TestCa::new("root");
    let cert = ca.leaf(SERVER);
    assert_eq!(cert.identity(), &id(SERVER));
    assert_eq!(cert.chain().len(), 1);
    assert_eq!(cert.roots(), &[ca.root.clone()][..]);
    let now = SystemTime::now();
    assert!(cert.not_before() < now && now < cert.not_after());
    let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
    assert_eq!(lifetime, Duration::from_secs(61 * 60));
    assert!(!cert.serial_hex().is_empty());
    assert!(cert.serial_hex().chars().all(|c| c.is_ascii_hexdigit()));

    // Server config built once; client configs shared per expected set, whatever the order.
    assert!(Arc::ptr_eq(&cert.server_config(), &cert.server_config()));
    let (a, b) = (id(CLIENT), id(SERVER));
    let one = cert.client_config(&[a.clone(), b.clone()]).unwrap();
    let two = cert.client_config(&[b.clone(), a.clone(), b]).unwrap();
    assert!(Arc::ptr_eq(&one, &two));
    assert!(!Arc::ptr_eq(&one, &cert.client_config(&[a]).unwrap()));
    assert!(matches!(
        cert.client_config(&[]),
        Err(TlsError::NoExpectedIdentities)
    ));
}

#[test]
fn bad_material_is_refused() {
    let ca = TestCa::new("root");
    let (chain, _) = ca.raw_leaf(SERVER);
    let (_, other_key) = ca.raw_leaf(SERVER);
    assert!(matches!(
        WorkloadCertificate::new(chain.clone(), other_key, vec![ca.root.clone()]),
        Err(TlsError::BadKey(_))
    ));
    let (_, key) = ca.raw_leaf(SERVER);
    assert!(matches!(
        WorkloadCertificate::new(vec![], key.clone_key(), vec![ca.root.clone()]),
        Err(TlsError::BadCertificate(_))
    ));
    assert!(matches!(
        WorkloadCertificate::new(
            vec![CertificateDer::from(vec![1, 2, 3])],
            key,
            vec![ca.root.clone()]
        ),
        Err(TlsError::BadCertificate(_))
    ));
    assert!(matches!(
        ca.leaf_trusting("https://example.com/not-spiffe", vec![ca.root.clone()]),
        Err(TlsError::NoSpiffeIdentity)
    ));
    assert!(matches!(
        ca.leaf_trusting(SERVER, vec![]),
        Err(TlsError::BadCertificate(_))
    ));
}
