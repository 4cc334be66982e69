//! Bad input against a real `ambit` serving HBONE on both transports (dedicated mode, two pods):
//! each refusal is provoked once over h2 (TCP 15008, rustls + `h2` client) and once over h3
//! (UDP 15008, a quinn + `h3` client written here), and the test asserts both get the same
//! answer: the same TLS alert and log line for a client certificate from another CA, alert 120
//! (no_application_protocol) for a wrong ALPN on QUIC, and the same statuses and log lines for
//! malformed CONNECTs (400) and a refused upstream (503).

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit::core::Identity;
use ambit::identity::{BuiltinCa, CaClient};
use ambit_lab::Netns;
use ambit_lab::accesslog::LogLine;
use ambit_lab::nft::PROXY_MARK;
use common::mesh::{self, Mesh, MeshOpts, metric, wait_metric};
use common::{STEP, servers};
use rustls::AlertDescription;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncReadExt;

/// The server ambit serves h3 beside h2 and logs the HTTP layers' own 400s (debug level).
async fn start(test: &str) -> Mesh {
    Mesh::start(
        test,
        MeshOpts {
            server_env: vec![
                ("AMBIT_HBONE_TRANSPORT", "h3".into()),
                (
                    "RUST_LOG",
                    "info,ambit::hbone=debug,ambit::quic=debug".into(),
                ),
            ],
            ..MeshOpts::default()
        },
    )
    .await
}

fn identity(wl: (&str, &str, &str)) -> Identity {
    mesh::spiffe(wl).parse().unwrap()
}

fn hbone_addr() -> SocketAddr {
    SocketAddr::new(common::server_ip(false), 15008)
}

/// The client pod's mesh certificate (from the shared CA directory).
async fn mesh_cert(mesh: &Mesh) -> Arc<ambit::tls::WorkloadCertificate> {
    let ca = BuiltinCa::load_or_create(&mesh.ca_dir, Duration::from_secs(3600)).unwrap();
    Arc::new(ca.issue(&identity(mesh::CLIENT_WL)).await.unwrap())
}

/// A certificate for the client's identity from an unrelated CA, trusting the mesh root: only
/// the server's check of the client can fail.
fn foreign_cert(mesh: &Mesh) -> Arc<ambit::tls::WorkloadCertificate> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let uri = mesh::spiffe(mesh::CLIENT_WL);
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.as_str().try_into().unwrap())];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = params.signed_by(&leaf_key, &ca).unwrap();
    let key = PrivatePkcs8KeyDer::from(leaf_key.serialize_der());
    let pem = std::fs::read(mesh.ca_dir.join("root-cert.pem")).unwrap();
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .unwrap();
    Arc::new(ambit::tls::WorkloadCertificate::new(vec![leaf.der().clone()], key, roots).unwrap())
}

// === h2 client ===

/// TLS over a marked (not captured) TCP connection to the server's 15008; the error as text.
async fn h2_tls(
    ns: &Netns,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let sock = ns
        .tcp_socket_with(hbone_addr(), |s| s.set_mark(PROXY_MARK))
        .unwrap();
    let tcp = tokio::time::timeout(STEP, sock.connect(hbone_addr()))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(STEP, ambit::tls::connect(cfg, tcp))
        .await
        .unwrap()
        .map_err(|e| e.to_string())
}

/// The h2 client's refusal: from the handshake, or (TLS 1.3, the server checks the client
/// certificate after the client's side completed) as an alert on the first read.
async fn h2_refusal(ns: &Netns, cfg: Arc<rustls::ClientConfig>) -> String {
    match h2_tls(ns, cfg).await {
        Err(e) => e,
        Ok(mut tls) => {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(STEP, tls.read(&mut buf))
                .await
                .unwrap();
            read.map(|n| format!("read {n} bytes"))
                .unwrap_or_else(|e| e.to_string())
        }
    }
}

/// One request over a fresh h2 connection; the response status.
async fn h2_status(ns: &Netns, cfg: Arc<rustls::ClientConfig>, req: http::Request<()>) -> u16 {
    let tls = h2_tls(ns, cfg).await.unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(conn);
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

// === h3 client (quinn + h3) ===

/// A quinn client endpoint on a marked UDP socket inside `ns`.
fn quic_endpoint(ns: &Netns) -> quinn::Endpoint {
    let udp = ns
        .run_in(|| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
            s.set_mark(PROXY_MARK).unwrap();
            s.set_nonblocking(true).unwrap();
            s.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into()).unwrap();
            Ok(std::net::UdpSocket::from(s))
        })
        .unwrap();
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp,
        quinn::default_runtime().unwrap(),
    )
    .unwrap()
}

/// `tls` offering `alpn` instead of its own protocols.
fn with_alpn(tls: &rustls::ClientConfig, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut tls = tls.clone();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(tls)
}

fn quinn_config(tls: Arc<rustls::ClientConfig>) -> quinn::ClientConfig {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A QUIC handshake with the server's 15008.
async fn quic_connect(
    ns: &Netns,
    tls: Arc<rustls::ClientConfig>,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let endpoint = quic_endpoint(ns);
    let connecting = endpoint
        .connect_with(quinn_config(tls), hbone_addr(), "server")
        .unwrap();
    tokio::time::timeout(STEP, connecting).await.unwrap()
}

/// The TLS alert that closed a QUIC connection (transport error `0x100 + alert`).
fn alert_of(e: &quinn::ConnectionError) -> Option<AlertDescription> {
    match e {
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            (0x100..=0x1ff)
                .contains(&code)
                .then(|| AlertDescription::from((code - 0x100) as u8))
        }
        _ => None,
    }
}

/// The QUIC client's refusal: at the handshake, or (as on h2) once the server has checked the
/// client certificate, as the connection's close reason.
async fn quic_refusal(ns: &Netns, tls: Arc<rustls::ClientConfig>) -> quinn::ConnectionError {
    match quic_connect(ns, tls).await {
        Err(e) => e,
        Ok(conn) => tokio::time::timeout(STEP, conn.closed()).await.unwrap(),
    }
}

/// One request over a fresh HTTP/3 connection; the response status.
async fn h3_status(ns: &Netns, tls: Arc<rustls::ClientConfig>, req: http::Request<()>) -> u16 {
    let conn = quic_connect(ns, tls).await.unwrap();
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    let drive = tokio::spawn(async move {
        std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let mut stream = send.send_request(req).await.unwrap();
    let status = tokio::time::timeout(STEP, stream.recv_response())
        .await
        .unwrap()
        .unwrap()
        .status()
        .as_u16();
    let _ = stream.finish().await;
    drive.abort();
    status
}

fn connect(authority: &str) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(http::Uri::builder().authority(authority).build().unwrap())
        .body(())
        .unwrap()
}

fn get(authority: &str) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::GET)
        .uri(format!("https://{authority}/"))
        .body(())
        .unwrap()
}

/// The `error=` field of an access log line.
fn error_field(line: &str) -> String {
    LogLine::parse(line)
        .and_then(|l| l.get("error").map(str::to_string))
        .unwrap_or_else(|| panic!("no error field: {line}"))
}

/// Waits for a log line with every one of `needles` on the given transport (`None`: h2, whose
/// lines carry no transport, as ztunnel's do not).
async fn line_on(mesh: &Mesh, transport: Option<&str>, needles: &[&str]) -> String {
    let tag = transport.map(|t| format!("transport=\"{t}\""));
    let mut all: Vec<&str> = needles.to_vec();
    if let Some(t) = &tag {
        all.push(t);
    }
    for _ in 0..100 {
        let log = mesh.server_ambit.log();
        if let Some(line) = log.lines().find(|l| {
            all.iter().all(|n| l.contains(n)) && (transport.is_some() || !l.contains("transport="))
        }) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no line with {all:?}; tail:\n{}",
        mesh.server_ambit.tail(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused_alike_on_h2_and_h3() {
    let mesh = start("qbad_foreign_ca").await;
    let mut app = servers::http(&mesh.pair.server, common::APP_PORT);
    let cert = foreign_cert(&mesh);
    let server_id = identity(mesh::SERVER_WL);

    let h2_err = h2_refusal(
        &mesh.pair.client,
        cert.client_config(std::slice::from_ref(&server_id))
            .unwrap(),
    )
    .await;
    let h3_err = quic_refusal(
        &mesh.pair.client,
        cert.client_config_h3(&[server_id]).unwrap(),
    )
    .await;
    // The client sees the same alert on both: h2's text names it, h3 carries it as 0x100+alert.
    let alert = alert_of(&h3_err).unwrap_or_else(|| panic!("not a TLS alert: {h3_err:?}"));
    assert!(
        matches!(
            alert,
            AlertDescription::UnknownCA | AlertDescription::BadCertificate
        ),
        "{alert:?}"
    );
    assert!(
        h2_err.contains(&format!("received fatal alert: {alert:?}")),
        "h2: {h2_err}, h3: {alert:?}"
    );

    // The server logs the same typed reason for both, the h3 line tagged with its transport.
    let reason = "TLS handshake: TLS handshake failed: invalid peer certificate: UnknownIssuer";
    let h2_line = line_on(&mesh, None, &["connection failed", reason]).await;
    let h3_line = line_on(&mesh, Some("h3"), &["connection failed", reason]).await;
    assert_eq!(error_field(&h2_line), error_field(&h3_line));
    assert_eq!(
        wait_metric(
            &mesh.pair.server,
            "ambit_hbone_inbound_handshake_failures_total",
            2.0
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(&mesh.pair.server, "ambit_hbone_inbound_handshakes_total").await,
        0.0
    );
    assert!(!app.saw_any(), "the app saw no connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_alpn_is_refused_with_no_application_protocol() {
    let mesh = start("qbad_alpn").await;
    let _app = servers::http(&mesh.pair.server, common::APP_PORT);
    let h3_tls = mesh_cert(&mesh)
        .await
        .client_config_h3(&[identity(mesh::SERVER_WL)])
        .unwrap();
    for alpn in [&b"h2"[..], b"hq-29"] {
        let err = quic_connect(&mesh.pair.client, with_alpn(&h3_tls, &[alpn]))
            .await
            .err()
            .unwrap_or_else(|| panic!("ALPN {alpn:?} accepted"));
        // TLS alert 120 (RFC 8446 §6.2), sent by the server in the handshake.
        assert_eq!(
            alert_of(&err),
            Some(AlertDescription::NoApplicationProtocol),
            "{err}"
        );
    }
    let reason = "TLS handshake: TLS handshake failed: peer doesn't support any known protocol";
    let line = line_on(&mesh, Some("h3"), &["connection failed", reason]).await;
    assert!(line.contains("direction=\"inbound\""), "{line}");
    assert_eq!(
        wait_metric(
            &mesh.pair.server,
            "ambit_hbone_inbound_handshake_failures_total",
            2.0
        )
        .await,
        2.0
    );
    // The right ALPN on the same listener works.
    let status = h3_status(
        &mesh.pair.client,
        h3_tls,
        connect(&common::app_addr(false).to_string()),
    )
    .await;
    assert_eq!(status, 200);
}

/// (what, request builder, its target, the status, what every log line about it contains)
type Case = (
    &'static str,
    fn(&str) -> http::Request<()>,
    String,
    u16,
    Vec<String>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connects_get_400_and_a_refused_upstream_503_alike_on_h2_and_h3() {
    let mesh = start("qbad_connect").await;
    let mut app = servers::http(&mesh.pair.server, common::APP_PORT);
    let cert = mesh_cert(&mesh).await;
    let server_id = identity(mesh::SERVER_WL);
    let h2_tls = cert
        .client_config(std::slice::from_ref(&server_id))
        .unwrap();
    let h3_tls = cert.client_config_h3(&[server_id]).unwrap();
    let app_addr = common::app_addr(false).to_string();
    let server_v4 = common::server_ip(false);
    let cases: Vec<Case> = vec![
        (
            "port 0",
            connect,
            format!("{server_v4}:0"),
            400,
            vec!["rejecting CONNECT".into()],
        ),
        (
            "unknown host name",
            connect,
            "server.b.svc:8080".into(),
            400,
            vec!["no service has host name server.b.svc".into()],
        ),
        (
            "not a local workload",
            connect,
            "10.9.9.9:8080".into(),
            400,
            vec!["CONNECT to 10.9.9.9:8080: not an address of the local workload".into()],
        ),
        (
            "GET",
            get,
            app_addr.clone(),
            400,
            vec!["rejecting non-CONNECT request".into()],
        ),
        (
            "nothing listening",
            connect,
            format!("{server_v4}:9999"),
            503,
            vec![format!("dst.hbone_addr={server_v4}:9999"), "error=".into()],
        ),
    ];
    for (what, build, authority, status, _) in &cases {
        let on_h2 = h2_status(&mesh.pair.client, h2_tls.clone(), build(authority)).await;
        let on_h3 = h3_status(&mesh.pair.client, h3_tls.clone(), build(authority)).await;
        assert_eq!((on_h2, on_h3), (*status, *status), "{what}");
    }
    assert!(!app.saw_any(), "no bad request reached the app");
    // The log says why, once per transport (lines the proxy tags with their transport).
    let log = mesh.server_ambit.log();
    for (what, _, _, _, needles) in &cases {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n.as_str())))
            .collect();
        assert_eq!(lines.len(), 2, "{what}: {lines:#?}");
        // Access lines: the h3 one is tagged with its transport, the h2 one (as ztunnel's)
        // carries none; both give the same reason.
        if lines.iter().any(|l| l.contains("\taccess\t")) {
            let h3 = lines
                .iter()
                .filter(|l| l.contains("transport=\"h3\""))
                .count();
            let tagged = lines.iter().filter(|l| l.contains("transport=")).count();
            assert_eq!((h3, tagged), (1, 1), "{what}: {lines:#?}");
            assert_eq!(error_field(lines[0]), error_field(lines[1]), "{what}");
        }
    }
    // A good CONNECT works on both.
    let ok = (
        h2_status(&mesh.pair.client, h2_tls, connect(&app_addr)).await,
        h3_status(&mesh.pair.client, h3_tls, connect(&app_addr)).await,
    );
    assert_eq!(ok, (200, 200));
}
