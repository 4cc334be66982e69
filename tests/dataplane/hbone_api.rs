//! End-to-end refusals and rotation checks that speak to an ambit's port 15008 directly, with
//! the proxy's own library: certificates minted by `BuiltinCa` from the mesh's shared CA
//! directory (or, for the negative case, by an unrelated CA made here with rcgen), rustls through `ambit::tls`, and a raw `h2`
//! client (so malformed CONNECT authorities can be sent at all).

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit::core::Identity;
use ambit::identity::{BuiltinCa, CaClient};
use ambit_lab::nft::PROXY_MARK;
use common::mesh::{self, Mesh, MeshOpts, metric};
use common::{STEP, servers};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncReadExt;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

fn identity(wl: (&str, &str, &str)) -> Identity {
    mesh::spiffe(wl).parse().unwrap()
}

/// A client TLS config for the client pod's identity, minted by the CA in `ca_dir`, expecting
/// the server pod's identity.
async fn client_config(ca_dir: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let ca = BuiltinCa::load_or_create(ca_dir, Duration::from_secs(3600)).unwrap();
    let cert = ca.issue(&identity(mesh::CLIENT_WL)).await.unwrap();
    cert.client_config(&[identity(mesh::SERVER_WL)]).unwrap()
}

/// A marked (so not captured) TCP connection from the client pod to the server's 15008.
async fn dial_hbone(mesh: &Mesh) -> tokio::net::TcpStream {
    let dst = SocketAddr::new(common::server_ip(false), 15008);
    let sock = mesh
        .pair
        .client
        .tcp_socket_with(dst, |s| s.set_mark(PROXY_MARK))
        .unwrap();
    tokio::time::timeout(STEP, sock.connect(dst))
        .await
        .unwrap()
        .unwrap()
}

async fn tls_to_server(mesh: &Mesh, cfg: Arc<rustls::ClientConfig>) -> Result<Tls, String> {
    let tcp = dial_hbone(mesh).await;
    tokio::time::timeout(STEP, ambit::tls::connect(cfg, tcp))
        .await
        .unwrap()
        .map_err(|e| e.to_string())
}

/// Sends one CONNECT with `authority` over a fresh mTLS connection and returns the status.
async fn connect_status(mesh: &Mesh, cfg: Arc<rustls::ClientConfig>, authority: &str) -> u16 {
    let tls = tls_to_server(mesh, cfg).await.unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(conn);
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .body(())
        .unwrap();
    let (resp, _stream) = send
        .ready()
        .await
        .unwrap()
        .send_request(req, false)
        .unwrap();
    let status = tokio::time::timeout(STEP, resp)
        .await
        .unwrap()
        .unwrap()
        .status()
        .as_u16();
    driver.abort();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_ca_is_refused() {
    let mesh = Mesh::start("foreign_ca", MeshOpts::default()).await;
    let mut app = servers::http(&mesh.pair.server, common::APP_PORT);
    // A leaf for the client's identity from an unrelated CA; the client still trusts the mesh
    // root, so only the server's check of the client certificate can fail.
    let (chain, key) = foreign_leaf(&mesh::spiffe(mesh::CLIENT_WL));
    let cert = ambit::tls::WorkloadCertificate::new(chain, key, mesh_roots(&mesh.ca_dir)).unwrap();
    let cfg = cert.client_config(&[identity(mesh::SERVER_WL)]).unwrap();
    // TLS 1.3: the client's side of the handshake may complete before the server has checked
    // the client certificate; the refusal then arrives as an alert on the first read.
    let err = match tls_to_server(&mesh, cfg).await {
        Err(e) => e,
        Ok(mut tls) => {
            let mut buf = [0u8; 1];
            let res = tokio::time::timeout(STEP, tls.read(&mut buf))
                .await
                .unwrap();
            res.map(|n| format!("read {n} bytes"))
                .unwrap_or_else(|e| e.to_string())
        }
    };
    assert!(
        err.contains("received fatal alert: UnknownCA")
            || err.contains("received fatal alert: BadCertificate"),
        "{err}"
    );
    assert_eq!(
        metric(&mesh.pair.server, "ambit_hbone_inbound_handshakes_total").await,
        0.0
    );
    assert!(!app.saw_any(), "the app saw no connection");
}

/// A CA of its own (not the mesh's) and a leaf it signed for `spiffe`: (chain, PKCS#8 key).
fn foreign_leaf(spiffe: &str) -> (Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe.try_into().unwrap())];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = params.signed_by(&leaf_key, &ca).unwrap();
    let key = PrivatePkcs8KeyDer::from(leaf_key.serialize_der());
    (vec![leaf.der().clone()], key)
}

/// The mesh root from the shared CA directory (`root-cert.pem`).
fn mesh_roots(ca_dir: &std::path::Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(ca_dir.join("root-cert.pem")).unwrap();
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connect_targets_get_400_and_refused_upstream_503() {
    let mesh = Mesh::start("bad_connect", MeshOpts::default()).await;
    let mut app = servers::http(&mesh.pair.server, common::APP_PORT);
    let cfg = client_config(&mesh.ca_dir).await;
    assert_eq!(
        connect_status(&mesh, cfg.clone(), "10.1.0.3:0").await,
        400,
        "malformed authority"
    );
    assert_eq!(
        connect_status(&mesh, cfg.clone(), "10.9.9.9:8080").await,
        400,
        "not a local workload"
    );
    assert!(!app.saw_any(), "the app saw no connection");
    assert_eq!(
        connect_status(&mesh, cfg.clone(), "10.1.0.3:9999").await,
        503,
        "nothing listening"
    );
    assert_eq!(
        connect_status(&mesh, cfg, &format!("{}", common::app_addr(false))).await,
        200
    );
}

/// The serial (hex) of the certificate the server presents on a new TLS connection.
async fn server_serial(mesh: &Mesh, cfg: Arc<rustls::ClientConfig>) -> String {
    let tls = tls_to_server(mesh, cfg).await.unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.tbs_certificate.raw_serial_as_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_see_a_new_serial_after_rotation() {
    let opts = MeshOpts {
        secret_ttl: Some("4s"),
        ..MeshOpts::default()
    };
    let mesh = Mesh::start("rotation_serial", opts).await;
    let cfg = client_config(&mesh.ca_dir).await;
    let first = server_serial(&mesh, cfg.clone()).await;
    // Bounded poll: with a 4 s lifetime the certificate is refreshed at ~2 s.
    let mut rotated = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let serial = server_serial(&mesh, cfg.clone()).await;
        if serial != first {
            rotated = Some(serial);
            break;
        }
    }
    assert!(
        rotated.is_some(),
        "serial {first} never changed within 10 s"
    );
}
