//! End-to-end tests of the HBONE core through the `ambit` binary: two pod namespaces, one
//! dedicated-mode ambit in each, real curl/nc and test servers that report what they saw.
//! (Refusals that need the proxy's library APIs — foreign CA, bad CONNECT authorities, the
//! certificate serial after rotation — are in `e2e_hbone_api.rs`.)

mod common;

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
