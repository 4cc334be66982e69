//! End-to-end tests of the HBONE core through the `ambit` binary: two pod namespaces, one
//! dedicated-mode ambit in each, real curl/nc and test servers that report what they saw.
//! (Refusals that need the proxy's library APIs — foreign CA, bad CONNECT authorities, the
//! certificate serial after rotation — are in `hbone_api.rs`.)

use crate::common;

use std::time::Duration;

use common::mesh::{self, Mesh, MeshOpts, metric, wait_access_line};
use common::{STEP, servers};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A captured (unmarked) connection from the client pod to `dst`.
async fn client_connect(mesh: &Mesh, dst: std::net::SocketAddr) -> tokio::net::TcpStream {
    mesh.pair.client.connect(dst, STEP).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_hbone_keeps_client_source_and_identity() {
    let mesh = Mesh::start("curl_through_hbone", MeshOpts::default()).await;
    let mut app = servers::http(&mesh.pair.server, common::APP_PORT);
    for v6 in [false, true] {
        let dst = common::app_addr(v6);
        let out = common::curl(&mesh.pair.client, &[&common::url(dst, "/")]).await;
        assert!(
            out.status.success(),
            "curl to {dst}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        let client_ip = common::client_ip(v6);
        assert!(body.starts_with("hello from 8080, you are "), "{body}");
        let seen = app.next_seen().await;
        assert_eq!(
            seen.peer.ip(),
            client_ip,
            "the app sees the client pod's address"
        );
        let line = wait_access_line(
            &mesh.server_ambit,
            &[
                "direction=inbound",
                &format!("dst.hbone_addr={dst}"),
                "src.identity=",
            ],
        )
        .await;
        assert_eq!(
            line.get("src.identity"),
            Some(mesh::spiffe(mesh::CLIENT_WL).as_str()),
            "{line}"
        );
        assert!(
            line.has("dst.addr^=") && line.has("dst.addr*=:15008"),
            "{line}"
        );
    }
    assert!(
        metric(&mesh.pair.server, "ambit_hbone_inbound_handshakes_total").await >= 1.0,
        "went through 15008"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_arrive_byte_identical() {
    const TOTAL: usize = 100 * 1024 * 1024;
    let mesh = Mesh::start("hundred_megabytes", MeshOpts::default()).await;
    let mut sink = servers::sink(&mesh.pair.server, common::APP_PORT);
    let mut s = client_connect(&mesh, common::app_addr(false)).await;

    // Deterministic, incompressible-looking data (xorshift), hashed as it is sent.
    let mut hasher = sha2::Sha256::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 256 * 1024];
    let mut sent = 0;
    let send = async {
        while sent < TOTAL {
            for w in chunk.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                w.copy_from_slice(&state.to_le_bytes()[..w.len()]);
            }
            hasher.update(&chunk);
            s.write_all(&chunk).await?;
            sent += chunk.len();
        }
        s.shutdown().await?;
        let mut digest = String::new();
        s.read_to_string(&mut digest).await?;
        Ok::<_, std::io::Error>(digest)
    };
    let echoed = tokio::time::timeout(Duration::from_secs(120), send)
        .await
        .expect("transfer timed out")
        .unwrap();
    let ours = common::hex(&hasher.finalize());
    let seen = sink.next_seen().await;
    assert_eq!(seen.bytes, TOTAL as u64);
    assert_eq!(seen.sha256, ours, "server-side digest");
    assert_eq!(echoed, ours, "digest reported back through the tunnel");
    assert_eq!(seen.peer.ip(), common::client_ip(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sequential_connections_share_one_hbone_connection() {
    let mesh = Mesh::start("fifty_sequential", MeshOpts::default()).await;
    let mut echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    for i in 0..50u32 {
        let mut s = client_connect(&mesh, common::app_addr(false)).await;
        let msg = format!("message {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = String::new();
        tokio::time::timeout(STEP, s.read_to_string(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
        assert_eq!(echo.next_seen().await.bytes, msg.len() as u64);
    }
    assert_eq!(
        metric(&mesh.pair.client, "ambit_hbone_connections_opened_total").await,
        1.0
    );
    assert_eq!(
        metric(&mesh.pair.server, "ambit_hbone_inbound_handshakes_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_with_unexpected_identity_is_refused() {
    let opts = MeshOpts {
        server_sa: Some("other"),
        ..MeshOpts::default()
    };
    let mesh = Mesh::start("unexpected_identity", opts).await;
    let mut app = servers::http(&mesh.pair.server, common::APP_PORT);
    let out = common::curl(
        &mesh.pair.client,
        &[&common::url(common::app_addr(false), "/")],
    )
    .await;
    assert!(
        !out.status.success(),
        "curl must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let presented = "spiffe://cluster.local/ns/b/sa/other";
    let expected = mesh::spiffe(mesh::SERVER_WL);
    let presented = format!("error*={presented}");
    let expected = format!("error*={expected}");
    let line = wait_access_line(&mesh.client_ambit, &["error", &presented, &expected]).await;
    // The TLS handshake to the peer proxy failed: ztunnel's TLS_FAILURE.
    assert!(line.has("direction=outbound"), "{line}");
    assert!(!app.saw_any(), "the app saw no connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_tls12_to_15008_are_refused() {
    let mesh = Mesh::start("plaintext_tls12", MeshOpts::default()).await;
    let mut app = servers::http(&mesh.pair.server, common::APP_PORT);
    // From the server pod itself: the client pod's capture would tunnel these.
    let hbone = format!("{}:15008", common::SERVER_V4);

    let nc = format!(
        "printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' | nc -w 3 {} 15008",
        common::SERVER_V4
    );
    let out = mesh
        .pair
        .server
        .exec(&["sh", "-c", &nc], Duration::from_secs(15))
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("HTTP/"),
        "plaintext must get no HTTP answer"
    );

    let out = common::curl(
        &mesh.pair.server,
        &["--tls-max", "1.2", "-k", &format!("https://{hbone}/")],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(35),
        "TLS 1.2 handshake refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        metric(&mesh.pair.server, "ambit_hbone_inbound_handshakes_total").await,
        0.0
    );
    assert!(!app.saw_any(), "the app saw no connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_upstream_closes_the_client_connection_promptly() {
    let mesh = Mesh::start("nothing_upstream", MeshOpts::default()).await;
    for v6 in [false, true] {
        let dst = std::net::SocketAddr::new(common::server_ip(v6), 9999);
        let started = std::time::Instant::now();
        let out = common::curl(&mesh.pair.client, &[&common::url(dst, "/")]).await;
        let took = started.elapsed();
        assert!(!out.status.success(), "curl must fail");
        assert!(
            took < Duration::from_secs(5),
            "closed promptly, not hanging ({took:?})"
        );
        wait_access_line(
            &mesh.server_ambit,
            &[
                "error",
                "connection complete",
                "direction=inbound",
                &format!("dst.hbone_addr={dst}"),
                "error=",
            ],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_tunnel_survives_certificate_rotations() {
    let opts = MeshOpts {
        secret_ttl: Some("4s"),
        ..MeshOpts::default()
    };
    let mesh = Mesh::start("rotation_stream", opts).await;
    let mut echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    let mut s = client_connect(&mesh, common::app_addr(true)).await;
    let (mut sent, mut got) = (sha2::Sha256::new(), sha2::Sha256::new());
    let mut total = 0usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    // ~10.5 s of slow streaming: at least two rotations at a 4 s lifetime (refresh at half-life).
    for i in 0..105u32 {
        ticker.tick().await;
        let chunk = format!("chunk {i:04} {}\n", "x".repeat(1000));
        s.write_all(chunk.as_bytes()).await.unwrap();
        sent.update(chunk.as_bytes());
        let mut back = vec![0u8; chunk.len()];
        tokio::time::timeout(STEP, s.read_exact(&mut back))
            .await
            .expect("echo stalled")
            .unwrap();
        got.update(&back);
        total += back.len();
    }
    s.shutdown().await.unwrap();
    assert_eq!(common::hex(&sent.finalize()), common::hex(&got.finalize()));
    let seen = echo.next_seen().await;
    assert_eq!(
        seen.bytes, total as u64,
        "one connection carried everything"
    );
    assert_eq!(seen.peer.ip(), common::client_ip(true));
}

/// A certificate serial as `/config_dump` shows it (decimal) in big-endian bytes.
fn serial_bytes(decimal: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = Vec::new();
    for d in decimal.bytes() {
        assert!(d.is_ascii_digit(), "serial {decimal:?}");
        let mut carry = u32::from(d - b'0');
        for b in bytes.iter_mut().rev() {
            let v = u32::from(*b) * 10 + carry;
            *b = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            bytes.insert(0, (carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    bytes
}

/// Replaces `path` whole (rename), as a ConfigMap update or an editor does.
fn publish(path: &std::path::Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A captured connection from the client pod must not carry bytes: the HBONE handshake behind
/// it is refused, so the client ambit closes it (EOF or reset) within [`STEP`].
async fn assert_flow_refused(mesh: &Mesh) {
    let mut s = client_connect(mesh, common::app_addr(false)).await;
    let _ = s.write_all(b"are you there?").await;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(STEP, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("a revoked client got {n} bytes back"),
        Err(_) => panic!("the refused flow was not closed within {STEP:?}"),
    }
}

/// `CRL_PATH` end to end: a long flow runs; the client's certificate is revoked by rewriting the
/// CRL file (signed by the built-in CA's root); the server ambit cuts the flow, refuses new
/// handshakes, and says why in its log and metrics; then garbage in the file keeps the
/// revocation in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_is_cut_and_refused_and_garbage_keeps_the_crl() {
    revocation_case("crl_revocation", None).await;
}

/// The same over HBONE on QUIC: its handshakes use the same verifiers, and a QUIC connection is
/// closed the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_is_cut_and_refused_over_quic() {
    revocation_case("crl_revocation_h3", Some("h3")).await;
}

/// A two-pod mesh whose ambits both read `CRL_PATH` (absent at start: accepted, and picked up
/// when it appears, as before the ConfigMap lands), then given a first CRL that revokes
/// something else. Returns the mesh, the file's directory (kept alive), its path, and the
/// built-in CA that signs the CRLs.
async fn crl_mesh(
    test: &str,
    transport: Option<&str>,
) -> (
    Mesh,
    common::TempDir,
    std::path::PathBuf,
    ambit::identity::BuiltinCa,
) {
    let crl_dir = common::TempDir::new(test);
    let crl_path = crl_dir.path().join("ca-crl.pem");
    let mut env = vec![("CRL_PATH", crl_path.display().to_string())];
    if let Some(t) = transport {
        env.push(("AMBIT_HBONE_TRANSPORT", t.to_string()));
    }
    let opts = MeshOpts {
        client_env: env.clone(),
        server_env: env,
        ..MeshOpts::default()
    };
    let mesh = Mesh::start(test, opts).await;
    let ca = ambit::identity::BuiltinCa::load_or_create(&mesh.ca_dir, Duration::from_secs(3600))
        .unwrap();
    publish(&crl_path, ca.crl_pem(&[vec![0x42]]).unwrap().as_bytes());
    for p in [&mesh.server_ambit, &mesh.client_ambit] {
        mesh::wait_log_line(p, &["CRL reloaded", "revoked=1"]).await;
    }
    (mesh, crl_dir, crl_path, ca)
}

/// The serial of the certificate the ambit in `ns` serves, from its own `/config_dump`.
async fn served_serial(ns: &ambit_lab::Netns) -> Vec<u8> {
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], 15000));
    let dump = ambit_lab::http_get(ns, admin, "/config_dump", STEP)
        .await
        .unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump.body).unwrap();
    let decimal = dump["certificates"][0]["certChain"][0]["serialNumber"]
        .as_str()
        .unwrap()
        .to_string();
    serial_bytes(&decimal)
}

/// Waits (bounded) until `flow` is closed under it; returns how long that took. The flow is
/// poked every 100 ms: nothing signals a cut but the socket itself.
async fn wait_cut(flow: &mut tokio::net::TcpStream) -> Duration {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    loop {
        let _ = flow.write_all(b"still there?").await;
        match tokio::time::timeout(STEP, flow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {
                assert!(started.elapsed() < STEP, "the flow outlived the revocation");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => panic!("the revoked flow was not closed within {STEP:?}"),
        }
    }
}

async fn revocation_case(test: &str, transport: Option<&str>) {
    let (mesh, _crl_dir, crl_path, ca) = crl_mesh(test, transport).await;
    // The CRL in force revokes something else: the flow runs.
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    let mut flow = client_connect(&mesh, common::app_addr(false)).await;
    mesh::echo_once(&mut flow, b"before the revocation").await;

    let serial = served_serial(&mesh.pair.client).await;
    let serial_hex = common::hex(&serial);
    publish(
        &crl_path,
        ca.crl_pem(&[vec![0x42], serial.clone()])
            .unwrap()
            .as_bytes(),
    );
    // The flow is cut within a bounded time (two polls of the file, then at once).
    let cut = wait_cut(&mut flow).await;
    assert!(cut < Duration::from_secs(5), "cut after {cut:?}");
    let why = mesh::wait_log_line(
        &mesh.server_ambit,
        &["closing HBONE connection", &format!("serial={serial_hex}")],
    )
    .await;
    assert!(
        why.contains("direction=\"inbound\"") || why.contains("direction=inbound"),
        "{why}"
    );
    assert!(why.contains(&mesh::spiffe(mesh::CLIENT_WL)), "{why}");
    let line = wait_access_line(
        &mesh.server_ambit,
        &["direction=inbound", &format!("error*={serial_hex}")],
    )
    .await;
    assert!(
        line.get("error")
            .is_some_and(|e| e.contains("revoked by CRL (HBONE connection closed)")),
        "{line}"
    );
    assert_eq!(line.get("transport"), transport, "carried as asked: {line}");
    let metrics = mesh::scrape(&mesh.pair.server).await;
    assert_eq!(
        mesh::sample(
            &metrics,
            "istio_crl_policy_rejections_total",
            &["reporter=\"destination\""]
        ),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        mesh::sample(
            &metrics,
            "istio_tcp_connections_closed_total",
            &[
                "reporter=\"destination\"",
                "response_flags=\"CERT_REVOKED\""
            ]
        ),
        Some(1)
    );

    // New connections are refused at the handshake, and counted.
    assert_flow_refused(&mesh).await;
    mesh::wait_access_line(
        &mesh.server_ambit,
        &["error*=Revoked", "error*=TLS handshake"],
    )
    .await;
    let refused = mesh::scrape(&mesh.pair.server).await;
    let after_refusal = mesh::sample(
        &refused,
        "istio_crl_policy_rejections_total",
        &["reporter=\"destination\""],
    )
    .unwrap();
    assert!(after_refusal >= 2, "{refused}");

    // Garbage in the file: a logged error, and the revocation stays in force.
    publish(&crl_path, b"this is not a CRL\n");
    mesh::wait_log_line(
        &mesh.server_ambit,
        &[
            "CRL file change rejected",
            "the last good CRL stays in force",
        ],
    )
    .await;
    assert_flow_refused(&mesh).await;
    let last = mesh::wait_metric(
        &mesh.pair.server,
        "istio_crl_policy_rejections_total",
        (after_refusal + 1) as f64,
    )
    .await;
    assert!(last > after_refusal as f64, "refused again: {last}");
}

/// The other direction: the server's certificate is revoked; the client ambit cuts its pooled
/// connection (the flow's line says why), counts it as `source`, and refuses a new handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_server_cuts_the_pooled_connection() {
    revoked_server_case("crl_revoked_server", None).await;
}

/// The same with the client's pooled QUIC connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_server_cuts_the_pooled_quic_connection() {
    revoked_server_case("crl_revoked_server_h3", Some("h3")).await;
}

async fn revoked_server_case(test: &str, transport: Option<&str>) {
    let (mesh, _crl_dir, crl_path, ca) = crl_mesh(test, transport).await;
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    let mut flow = client_connect(&mesh, common::app_addr(false)).await;
    mesh::echo_once(&mut flow, b"before the revocation").await;

    let serial = served_serial(&mesh.pair.server).await;
    let serial_hex = common::hex(&serial);
    publish(&crl_path, ca.crl_pem(&[serial]).unwrap().as_bytes());
    let cut = wait_cut(&mut flow).await;
    assert!(cut < Duration::from_secs(5), "cut after {cut:?}");
    mesh::wait_log_line(
        &mesh.client_ambit,
        &[
            "closing HBONE connection",
            "outbound",
            &format!("serial={serial_hex}"),
            &mesh::spiffe(mesh::SERVER_WL),
        ],
    )
    .await;
    let metrics = mesh::scrape(&mesh.pair.client).await;
    assert_eq!(
        mesh::sample(
            &metrics,
            "istio_crl_policy_rejections_total",
            &["reporter=\"source\""]
        ),
        Some(1),
        "{metrics}"
    );
    // The flow's own line says why.
    let line = wait_access_line(
        &mesh.client_ambit,
        &["direction=outbound", &format!("error*={serial_hex}")],
    )
    .await;
    assert!(
        line.get("error")
            .is_some_and(|e| e.contains("revoked by CRL (HBONE connection closed)")),
        "{line}"
    );
    assert_eq!(line.get("transport"), transport, "carried as asked: {line}");
    let metrics = mesh::scrape(&mesh.pair.client).await;
    assert_eq!(
        mesh::sample(
            &metrics,
            "istio_tcp_connections_closed_total",
            &["reporter=\"source\"", "response_flags=\"CERT_REVOKED\""]
        ),
        Some(1)
    );
    // A new connection: the client's verifier refuses the revoked server.
    assert_flow_refused(&mesh).await;
    let refused =
        mesh::wait_metric(&mesh.pair.client, "istio_crl_policy_rejections_total", 2.0).await;
    assert!(refused >= 2.0, "{refused}");
}
