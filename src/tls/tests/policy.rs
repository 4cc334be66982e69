//! The TLS policy (`TLS12_ENABLED`, `COMPLIANCE_POLICY=pqc`) over real loopback handshakes with
//! clients configured the way a foreign peer would be.

use std::sync::Arc;

use rustls::crypto::{CryptoProvider, SupportedKxGroup, aws_lc_rs};
use rustls::{ClientConfig, NamedGroup, ProtocolVersion, SupportedProtocolVersion};

use super::{CLIENT, SERVER, TestCa, handshake, id};
use crate::tls::verify::{ServerIdentityVerifier, TrustRoots};
use crate::tls::*;

fn server_with(ca: &TestCa, policy: TlsPolicy) -> WorkloadCertificate {
    let (chain, key) = ca.raw_leaf(SERVER);
    WorkloadCertificate::with_policy(chain, key, vec![ca.root.clone()], policy).unwrap()
}

/// A client that presents `CLIENT`'s chain and checks the server as ambit does, but speaks only
/// `versions` and offers only `groups` (stock aws-lc-rs suites, TLS 1.2 ones included).
fn foreign_client(
    ca: &TestCa,
    versions: &[&'static SupportedProtocolVersion],
    groups: Vec<&'static dyn SupportedKxGroup>,
) -> Arc<ClientConfig> {
    let client = ca.leaf(CLIENT);
    let trust = Arc::new(TrustRoots::new(std::slice::from_ref(&ca.root)).unwrap());
    let provider = CryptoProvider {
        kx_groups: groups,
        ..aws_lc_rs::default_provider()
    };
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
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
    Arc::new(cfg)
}

fn stock_groups() -> Vec<&'static dyn SupportedKxGroup> {
    aws_lc_rs::default_provider().kx_groups
}

#[tokio::test]
async fn tls12_peer_is_refused_by_default_and_accepted_with_tls12_enabled() {
    let ca = TestCa::new("root");
    let tls12_only = foreign_client(&ca, &[&rustls::version::TLS12], stock_groups());

    let (s, _) = handshake(&server_with(&ca, TlsPolicy::default()), tls12_only.clone()).await;
    assert!(
        matches!(
            s,
            Err(TlsError::Handshake(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOfferedOrEnabled
            )))
        ),
        "{:?}",
        s.map(|(_, id)| id)
    );

    let policy = TlsPolicy {
        tls12: true,
        ..TlsPolicy::default()
    };
    let server = server_with(&ca, policy.clone());
    let (s, c) = handshake(&server, tls12_only.clone()).await;
    let (s, peer) = s.unwrap();
    assert_eq!(peer, id(CLIENT));
    let conn = s.get_ref().1;
    assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    let suite = conn.negotiated_cipher_suite().unwrap().suite();
    assert!(
        suite == rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            || suite == rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "{suite:?}"
    );
    assert!(c.is_ok());
    // The client would resume (it cached the session); the server never lets it skip the
    // certificate check (and the CRL with it).
    let (s, _) = handshake(&server, tls12_only).await;
    assert_eq!(
        s.unwrap().0.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );

    // Between two ambits TLS 1.3 still wins when 1.2 is allowed.
    let server = server_with(&ca, policy.clone());
    let (_, c) = handshake(
        &server,
        ca.leaf(CLIENT).client_config(&[id(SERVER)]).unwrap(),
    )
    .await;
    assert_eq!(
        c.unwrap().get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        server
            .server_config_h3()
            .crypto_provider()
            .cipher_suites
            .len(),
        6,
        "the provider carries the 1.2 suites"
    );
    // quinn refuses a configuration without TLS 1.3; the h3 ones build under the policy.
    let h3 = ca.leaf(CLIENT).reconfigured(policy).unwrap();
    assert!(h3.client_config_h3(&[id(SERVER)]).is_ok());
}

#[tokio::test]
async fn pqc_negotiates_x25519mlkem768_only() {
    let ca = TestCa::new("root");
    let pqc = TlsPolicy {
        pqc: true,
        ..TlsPolicy::default()
    };
    let server = server_with(&ca, pqc.clone());

    let classic = foreign_client(
        &ca,
        &[&rustls::version::TLS13],
        vec![aws_lc_rs::kx_group::X25519],
    );
    let (s, c) = handshake(&server, classic).await;
    assert!(
        matches!(
            s,
            Err(TlsError::Handshake(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::NoKxGroupsInCommon
            )))
        ),
        "{:?}",
        s.map(|(_, id)| id)
    );
    assert!(c.is_err());

    let hybrid = foreign_client(
        &ca,
        &[&rustls::version::TLS13],
        vec![aws_lc_rs::kx_group::X25519MLKEM768],
    );
    let (s, c) = handshake(&server, hybrid).await;
    let (s, _) = s.unwrap();
    let group = s
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .unwrap()
        .name();
    assert_eq!(group, NamedGroup::X25519MLKEM768);
    assert!(c.is_ok());

    // ambit's own pqc client offers the hybrid group alone.
    let client = ca.leaf(CLIENT).reconfigured(pqc).unwrap();
    let cfg = client.client_config(&[id(SERVER)]).unwrap();
    let offered: Vec<NamedGroup> = cfg
        .crypto_provider()
        .kx_groups
        .iter()
        .map(|g| g.name())
        .collect();
    assert_eq!(offered, vec![NamedGroup::X25519MLKEM768]);
    let (_, c) = handshake(&server, cfg).await;
    let group = c
        .unwrap()
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .unwrap()
        .name();
    assert_eq!(group, NamedGroup::X25519MLKEM768);
}
