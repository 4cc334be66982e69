//! CRLs: parsing a file (several CRLs, an intermediate's, garbage), and both verifiers refusing
//! a revoked peer over real loopback handshakes, and a live connection's watch firing on the
//! reload that revokes its peer (and only then).

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevokedCertParams, SanType, SerialNumber,
};
use rustls::CertificateError;
use rustls_pki_types::CertificateDer;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

use super::{CLIENT, SERVER, STEP, TestCa, handshake, id};
use crate::tls::*;

/// A CRL signed by `issuer` listing `serials` (each as the certificate's DER serial bytes).
fn crl_pem(issuer: &Issuer<'_, KeyPair>, serials: &[Vec<u8>]) -> String {
    let now = time::OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::hours(1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(issuer).unwrap().pem().unwrap()
}

fn serial_of(der: &CertificateDer<'_>) -> Vec<u8> {
    webpki::EndEntityCert::try_from(der)
        .unwrap()
        .serial()
        .to_vec()
}

/// An intermediate CA under `ca`: its issuer handle and certificate.
fn intermediate(ca: &TestCa, name: &str) -> (Issuer<'static, KeyPair>, CertificateDer<'static>) {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let der = params.signed_by(&key, &ca.issuer).unwrap().der().clone();
    (Issuer::new(params, key), der)
}

/// A workload certificate for `uri` issued by `issuer` (chain: leaf, then `intermediates`),
/// trusting `root`, under `policy`.
fn leaf_under(
    issuer: &Issuer<'_, KeyPair>,
    intermediates: &[CertificateDer<'static>],
    root: &CertificateDer<'static>,
    uri: &str,
    policy: TlsPolicy,
) -> WorkloadCertificate {
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
    let cert = params.signed_by(&key, issuer).unwrap();
    let mut chain = vec![cert.der().clone()];
    chain.extend(intermediates.iter().cloned());
    WorkloadCertificate::with_policy(
        chain,
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        vec![root.clone()],
        policy,
    )
    .unwrap()
}

fn crl_policy(crl: &CrlHandle) -> TlsPolicy {
    TlsPolicy {
        crl: Some(crl.clone()),
        ..TlsPolicy::default()
    }
}

#[test]
fn a_file_with_several_crls_parses_whole_and_garbage_is_refused() {
    let ca = TestCa::new("root");
    let (inter, _) = intermediate(&ca, "intermediate");
    let both = format!(
        "{}{}",
        crl_pem(&ca.issuer, &[vec![1], vec![2]]),
        crl_pem(&inter, &[vec![3]])
    );
    let set = CrlSet::parse(both.as_bytes(), "crl.pem").unwrap();
    assert_eq!((set.len(), set.revoked_entries()), (2, 3));

    // Nothing at all, or PEM without CRL blocks, revokes nothing.
    for empty in [
        "",
        "\n  \n",
        "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
    ] {
        let set = CrlSet::parse(empty.as_bytes(), "crl.pem").unwrap();
        assert!(set.is_empty(), "{empty:?}");
    }

    let garbage = CrlSet::parse(b"this is not a CRL", "/etc/crl.pem").unwrap_err();
    assert!(
        matches!(&garbage, CrlError::Parse { index: 1, .. }),
        "{garbage:?}"
    );
    assert!(
        garbage
            .to_string()
            .starts_with("CRL file /etc/crl.pem: CRL #1 does not parse: "),
        "{garbage}"
    );
    // One good CRL followed by a broken one: the whole file is refused.
    let good = crl_pem(&ca.issuer, &[vec![1]]);
    let broken = format!("{good}-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
    let e = CrlSet::parse(broken.as_bytes(), "crl.pem").unwrap_err();
    assert!(matches!(&e, CrlError::Parse { index: 2, .. }), "{e:?}");
    let truncated = &good[..good.len() / 2];
    assert!(CrlSet::parse(truncated.as_bytes(), "crl.pem").is_err());
}

/// Inbound: the server refuses a client whose leaf an intermediate's CRL revokes, with the
/// `certificate_revoked` alert; an unrelated CRL changes nothing.
#[tokio::test]
async fn server_refuses_a_client_revoked_by_an_intermediate_crl() {
    let ca = TestCa::new("root");
    let (inter, inter_der) = intermediate(&ca, "intermediate");
    let crl = CrlHandle::new();
    let server = leaf_under(
        &inter,
        std::slice::from_ref(&inter_der),
        &ca.root,
        SERVER,
        crl_policy(&crl),
    );
    let client = leaf_under(
        &inter,
        std::slice::from_ref(&inter_der),
        &ca.root,
        CLIENT,
        TlsPolicy::default(),
    );
    let cfg = || client.client_config(&[id(SERVER)]).unwrap();

    crl.replace(CrlSet::parse(crl_pem(&inter, &[vec![9, 9]]).as_bytes(), "crl").unwrap());
    let (s, c) = handshake(&server, cfg()).await;
    assert_eq!(s.unwrap().1, id(CLIENT));
    assert!(c.is_ok());

    let revoked = serial_of(&client.chain()[0]);
    crl.replace(CrlSet::parse(crl_pem(&inter, &[revoked]).as_bytes(), "crl").unwrap());
    let (s, c) = handshake(&server, cfg()).await;
    let err = s.map(|(_, id)| id).unwrap_err();
    assert!(err.is_revoked(), "{err:?}");
    // TLS 1.3: the client's side completes first; the server's alert arrives on its first read.
    let mut c = c.unwrap();
    let mut buf = [0u8; 1];
    let read = timeout(STEP, c.read(&mut buf)).await.unwrap().unwrap_err();
    let alert = read
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned();
    assert_eq!(
        alert,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRevoked
        )),
        "{read}"
    );
}

/// Outbound: the client refuses a server whose intermediate the root's CRL revokes.
#[tokio::test]
async fn client_refuses_a_server_whose_intermediate_is_revoked() {
    let ca = TestCa::new("root");
    let (inter, inter_der) = intermediate(&ca, "intermediate");
    let crl = CrlHandle::new();
    let server = leaf_under(
        &inter,
        std::slice::from_ref(&inter_der),
        &ca.root,
        SERVER,
        TlsPolicy::default(),
    );
    let client = leaf_under(
        &inter,
        std::slice::from_ref(&inter_der),
        &ca.root,
        CLIENT,
        crl_policy(&crl),
    );
    crl.replace(
        CrlSet::parse(
            crl_pem(&ca.issuer, &[serial_of(&inter_der)]).as_bytes(),
            "crl",
        )
        .unwrap(),
    );
    let (_, c) = handshake(&server, client.client_config(&[id(SERVER)]).unwrap()).await;
    let err = c.map(|_| ()).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Handshake(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        ),
        "{err:?}"
    );
}

/// A CRL naming the right issuer but signed by another key revokes nothing: webpki refuses it
/// (the handshake fails closed rather than trusting a forged list).
#[tokio::test]
async fn a_crl_with_a_forged_signature_does_not_pass_as_revocation() {
    let ca = TestCa::new("root");
    let forger = TestCa::new("root");
    let crl = CrlHandle::new();
    let server = {
        let (chain, key) = ca.raw_leaf(SERVER);
        WorkloadCertificate::with_policy(chain, key, vec![ca.root.clone()], crl_policy(&crl))
            .unwrap()
    };
    let client = ca.leaf(CLIENT);
    let serial = serial_of(&client.chain()[0]);
    crl.replace(CrlSet::parse(crl_pem(&forger.issuer, &[serial]).as_bytes(), "crl").unwrap());
    let (s, _) = handshake(&server, client.client_config(&[id(SERVER)]).unwrap()).await;
    let err = s.map(|(_, id)| id).unwrap_err();
    assert!(!err.is_revoked(), "{err:?}");
    assert!(
        matches!(
            err,
            TlsError::Handshake(rustls::Error::InvalidCertificate(CertificateError::Other(
                _
            )))
        ),
        "{err:?}"
    );
}

/// A live connection's watch: pending through reloads that do not concern its peer, resolved
/// (with the leaf's serial) by the one that revokes it.
#[tokio::test]
async fn a_live_watch_fires_on_the_reload_that_revokes_its_peer() {
    let ca = TestCa::new("root");
    let crl = CrlHandle::new();
    let server = {
        let (chain, key) = ca.raw_leaf(SERVER);
        WorkloadCertificate::with_policy(chain, key, vec![ca.root.clone()], crl_policy(&crl))
            .unwrap()
    };
    let client = ca.leaf(CLIENT);
    assert!(
        ca.leaf(SERVER)
            .watch_revocation(client.chain(), PeerRole::Client)
            .is_none(),
        "no CRL, no watch"
    );
    let mut watch = server
        .watch_revocation(client.chain(), PeerRole::Client)
        .unwrap();
    let serial = serial_of(&client.chain()[0]);
    assert_eq!(
        watch.peer_serial(),
        client.serial_hex().trim_start_matches("00")
    );

    let waiting = tokio::spawn(async move { watch.revoked().await });
    crl.replace(CrlSet::parse(crl_pem(&ca.issuer, &[vec![7]]).as_bytes(), "crl").unwrap());
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "an unrelated CRL revokes nothing");
    crl.replace(CrlSet::parse(crl_pem(&ca.issuer, &[serial]).as_bytes(), "crl").unwrap());
    let revoked = timeout(STEP, waiting).await.unwrap().unwrap();
    assert!(revoked.leaf);
    assert_eq!(revoked.serial, client.serial_hex().trim_start_matches("00"));
    assert_eq!(
        revoked.to_string(),
        format!("peer certificate serial {} revoked by CRL", revoked.serial)
    );

    // Registered after the revocation landed: fires at once.
    let mut late = server
        .watch_revocation(client.chain(), PeerRole::Client)
        .unwrap();
    let again = timeout(STEP, late.revoked()).await.unwrap();
    assert_eq!(again, revoked);
}
