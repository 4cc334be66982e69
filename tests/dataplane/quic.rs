//! End-to-end HBONE over QUIC through the `ambit` binary: the two-pod dedicated harness with
//! `AMBIT_HBONE_TRANSPORT` set per pod, real curl, nc and iperf3, nftables counters in the
//! server pod to show which transport carried the traffic, and the parity cases (policy deny, a
//! policy added during a flow, drain, certificate rotation) on the QUIC path. Bad input (another
//! CA, wrong ALPN, malformed CONNECT) is in `quic_badinput.rs`.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use ambit_lab::{Netns, Process, http_get};
use common::mesh::{self, pair_config, wait_access_line, wait_log_line};
use common::{PodPair, STEP, servers};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Two pods, each with an ambit running the given transport (and extra environment).
struct QuicMesh {
    client_ambit: Process,
    server_ambit: Process,
    pair: PodPair,
}

#[derive(Clone, Copy)]
struct Side<'a> {
    transport: &'a str,
    extra: &'a [(&'a str, &'a str)],
}

const H3: Side<'static> = Side {
    transport: "h3",
    extra: &[],
};

impl QuicMesh {
    async fn start(test: &str, client: Side<'_>, server: Side<'_>) -> QuicMesh {
        let pair = PodPair::new(test);
        pair.install_redirection();
        common::install_port_counters(&pair.server);
        let dir = pair.dir.path().to_path_buf();
        let config = dir.join("local.yaml");
        std::fs::write(&config, pair_config()).unwrap();
        let ca_dir = dir.join("ca");
        let spec = |name: &str, (ns, n, sa): (&str, &str, &str), side: Side<'_>, dir: &Path| {
            let mut spec = mesh::spec(name, &format!("{ns}/{n}/{sa}"), &config, &ca_dir, None)
                .env("AMBIT_HBONE_TRANSPORT", side.transport);
            for (k, v) in side.extra {
                spec = spec.env(*k, *v);
            }
            let _ = dir;
            spec
        };
        let server_spec = spec("server-ambit", mesh::SERVER_WL, server, &dir);
        let client_spec = spec("client-ambit", mesh::CLIENT_WL, client, &dir);
        let server_ambit = mesh::start(&pair.server, &server_spec, &dir).await;
        let client_ambit = mesh::start(&pair.client, &client_spec, &dir).await;
        QuicMesh {
            client_ambit,
            server_ambit,
            pair,
        }
    }

    async fn curl_ok(&self, v6: bool) -> bool {
        let dst = common::app_addr(v6);
        let out = common::curl(&self.pair.client, &[&common::url(dst, "/")]).await;
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("hello from")
    }
}

/// The value of the sample of `name` whose labels contain every one of `labels`.
async fn labeled_metric(ns: &Netns, name: &str, labels: &[&str]) -> f64 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 15020));
    let resp = http_get(ns, addr, "/metrics", STEP).await.unwrap();
    resp.body
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lb| l.contains(lb)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes the pair config plus `policies` and waits for the server ambit's reload log.
async fn set_policies(m: &QuicMesh, policies: &str) {
    let needle = "local config reloaded";
    let count = |log: String| log.lines().filter(|l| l.contains(needle)).count();
    let before = count(m.server_ambit.log());
    let path = m.pair.dir.path().join("local.yaml");
    let tmp = m.pair.dir.path().join("local.yaml.tmp");
    std::fs::write(&tmp, format!("{}{policies}", pair_config())).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    for _ in 0..100 {
        if count(m.server_ambit.log()) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no reload; tail:\n{}", m.server_ambit.tail(30));
}

const DENY_A: &str = "policies:\n- name: deny-a\n  namespace: b\n  scope: Namespace\n  action: Deny\n  dryRun: false\n  rules: [[[{namespaces: [!Exact a]}]]]\n";

/// An echo round trip on an open captured connection.
async fn ping(s: &mut tokio::net::TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(STEP, s.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("echo timed out"))??;
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_nc_and_iperf3_cross_pods_over_quic_only() {
    let m = QuicMesh::start("quic_tools", H3, H3).await;
    // curl, both families: the server side sees the client's address and SPIFFE identity, h3.
    let mut app = servers::http(&m.pair.server, common::APP_PORT);
    for v6 in [false, true] {
        assert!(m.curl_ok(v6).await, "curl over QUIC (v6={v6})");
        assert_eq!(app.next_seen().await.peer.ip(), common::client_ip(v6));
        let line = wait_access_line(
            &m.server_ambit,
            &[
                "direction=inbound",
                &format!("dst.hbone_addr={}", common::app_addr(v6)),
                "transport=h3",
            ],
        )
        .await;
        assert_eq!(
            line.get("src.identity"),
            Some(mesh::spiffe(mesh::CLIENT_WL).as_str()),
            "{line}"
        );
    }
    drop(app);

    // nc: 4 MiB through, the sink's digest matches ours.
    // Each stage has its own port: a dropped test server's listener closes asynchronously.
    let mut sink = servers::sink(&m.pair.server, common::APP_PORT + 1);
    let data: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = m.pair.dir.path().join("payload.bin");
    std::fs::write(&file, &data).unwrap();
    let nc = format!(
        "nc -N -w 10 {} {} < {}",
        common::SERVER_V4,
        common::APP_PORT + 1,
        file.display()
    );
    let out = m
        .pair
        .client
        .exec(&["sh", "-c", &nc], Duration::from_secs(30))
        .await
        .unwrap();
    let seen = sink.next_seen().await;
    assert_eq!(seen.bytes, data.len() as u64, "nc: {out:?}");
    assert_eq!(seen.sha256, common::sha256_hex(&data));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        seen.sha256,
        "digest reported back through the tunnel"
    );
    drop(sink);

    // iperf3: 2 s of bulk through the tunnel, both directions' control and data over QUIC.
    let port = (common::APP_PORT + 2).to_string();
    let mut iperf_server = ambit_lab::Process::spawn(
        Some(&m.pair.server),
        &ambit_lab::ProcessSpec::new("iperf3-server", "iperf3")
            .arg("-s")
            .arg("-1")
            .arg("-p")
            .arg(port.clone()),
        m.pair.dir.path(),
    )
    .unwrap();
    // The client may start before the server listens (then its connection through the tunnel
    // is refused at the far end): retry, bounded.
    let mut received = None;
    let mut last = String::new();
    for _ in 0..50 {
        let o = m
            .pair
            .client
            .exec(
                &[
                    "iperf3",
                    "-c",
                    common::SERVER_V4,
                    "-p",
                    &port,
                    "-t",
                    "2",
                    "-J",
                ],
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if let Some(bytes) = json["end"]["sum_received"]["bytes"].as_f64() {
            received = Some(bytes);
            break;
        }
        last = String::from_utf8_lossy(&o.stdout).into_owned();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received =
        received.unwrap_or_else(|| panic!("iperf3 failed: {last}\n{}", iperf_server.tail(20)));
    assert!(received > 1e6, "iperf3 moved {received} bytes");
    iperf_server.kill();

    // The traffic went over UDP 15008; nothing ever reached TCP 15008.
    assert!(common::port_counter(&m.pair.server, "udp15008") > 1000);
    assert_eq!(common::port_counter(&m.pair.server, "tcp15008"), 0);
    assert!(
        labeled_metric(
            &m.pair.server,
            "ambit_hbone_transport_streams_total",
            &["transport=\"h3\"", "direction=\"inbound\""]
        )
        .await
            >= 4.0
    );
    // One pooled QUIC connection per peer address (IPv4 and IPv6) carried every stream.
    assert_eq!(
        labeled_metric(
            &m.pair.client,
            "ambit_hbone_transport_connections_total",
            &["transport=\"h3\"", "direction=\"outbound\""]
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_h2_for_a_peer_without_quic_once() {
    let auto = Side {
        transport: "auto",
        extra: &[],
    };
    let h2 = Side {
        transport: "h2",
        extra: &[],
    };
    let m = QuicMesh::start("quic_auto_fallback", auto, h2).await;
    let _app = servers::http(&m.pair.server, common::APP_PORT);
    let fallbacks =
        async || labeled_metric(&m.pair.client, "ambit_hbone_transport_fallbacks_total", &[]).await;
    // The first connection races h2 against the QUIC handshake after a short head start and
    // completes over h2 while that handshake is still waiting for its (1.5 s) timeout: the
    // fallback is not recorded yet when the connection is done.
    assert!(m.curl_ok(false).await, "curl over h2 while QUIC is tried");
    assert_eq!(
        fallbacks().await,
        0.0,
        "the first connection waited for QUIC"
    );
    // HBONE over h2 carries no transport field, as ztunnel's lines do not.
    wait_access_line(
        &m.client_ambit,
        &["direction=outbound", "dst.hbone_addr=", "!transport"],
    )
    .await;
    // Readiness signal: the probe gives up, remembers the peer and logs it.
    wait_log_line(&m.client_ambit, &["falling back to HBONE over h2"]).await;
    assert_eq!(fallbacks().await, 1.0);
    for _ in 0..2 {
        assert!(
            m.curl_ok(false).await,
            "remembered peer goes straight to h2"
        );
    }
    wait_access_line(
        &m.server_ambit,
        &["direction=inbound", "dst.hbone_addr=", "!transport"],
    )
    .await;
    let logged = m
        .client_ambit
        .log()
        .lines()
        .filter(|l| l.contains("falling back to HBONE over h2"))
        .count();
    assert_eq!(logged, 1, "the fallback is logged once");
    assert_eq!(
        fallbacks().await,
        1.0,
        "only the first connection tried QUIC"
    );
    assert!(common::port_counter(&m.pair.server, "tcp15008") > 0);
    assert_eq!(
        labeled_metric(
            &m.pair.client,
            "ambit_hbone_transport_streams_total",
            &["transport=\"h2\"", "direction=\"outbound\""]
        )
        .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_dropped_mid_run_moves_to_h2_and_back_after_the_remembered_period() {
    let auto = Side {
        transport: "auto",
        extra: &[("AMBIT_HBONE_QUIC_FALLBACK", "3s")],
    };
    let m = QuicMesh::start("quic_udp_blocked", auto, auto).await;
    let _app = servers::http(&m.pair.server, common::APP_PORT);
    let h3_streams = async || {
        labeled_metric(
            &m.pair.server,
            "ambit_hbone_transport_streams_total",
            &["transport=\"h3\"", "direction=\"inbound\""],
        )
        .await
    };
    assert!(m.curl_ok(false).await);
    assert_eq!(h3_streams().await, 1.0, "QUIC first");

    m.pair
        .server
        .nft(
            "table inet quic_block {
  chain input { type filter hook input priority -200; policy accept; udp dport 15008 drop; }
}
",
        )
        .unwrap();
    // The pooled QUIC connection dies within the idle timeout; new connections then fall back.
    let blocked = Instant::now();
    let mut fell_back = false;
    for _ in 0..20 {
        if m.curl_ok(false).await
            && labeled_metric(
                &m.pair.server,
                "ambit_hbone_transport_streams_total",
                &["transport=\"h2\"", "direction=\"inbound\""],
            )
            .await
                >= 1.0
        {
            fell_back = true;
            break;
        }
    }
    assert!(fell_back, "no h2 connection after UDP was dropped");
    assert!(blocked.elapsed() < Duration::from_secs(20));
    wait_log_line(&m.client_ambit, &["falling back to HBONE over h2"]).await;
    let before = h3_streams().await;

    m.pair
        .server
        .run(&["nft", "delete", "table", "inet", "quic_block"])
        .unwrap();
    let unblocked = Instant::now();
    let mut back = false;
    for _ in 0..50 {
        assert!(m.curl_ok(false).await);
        if h3_streams().await > before {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "QUIC not used again after the remembered period");
    assert!(
        unblocked.elapsed() >= Duration::from_secs(1),
        "QUIC came back only after the remembered period"
    );
    wait_log_line(&m.client_ambit, &["trying HBONE over QUIC again"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_deny_and_a_deny_added_during_a_flow_on_quic() {
    let m = QuicMesh::start("quic_policy", H3, H3).await;
    let _echo = servers::echo(&m.pair.server, common::APP_PORT);
    let mut s = m
        .pair
        .client
        .connect(common::app_addr(false), STEP)
        .await
        .unwrap();
    assert_eq!(ping(&mut s, b"ping").await.unwrap(), b"ping");

    let written = Instant::now();
    set_policies(&m, DENY_A).await;
    let mut buf = [0u8; 4];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("the flow was not cut");
    assert!(matches!(n, Ok(0) | Err(_)), "closed, got {n:?}");
    assert!(written.elapsed() < Duration::from_secs(1), "cut promptly");
    wait_log_line(
        &m.server_ambit,
        &[
            "connection denied by policy b/deny-a (closed after a policy change)",
            "transport=\"h3\"",
        ],
    )
    .await;

    // A new connection is refused at once (401 on the QUIC CONNECT stream).
    let mut s = m
        .pair
        .client
        .connect(common::app_addr(false), STEP)
        .await
        .unwrap();
    assert!(ping(&mut s, b"deny").await.is_err());
    wait_log_line(
        &m.client_ambit,
        &[
            "\taccess\t",
            "\terror\t",
            "peer answered CONNECT with status 401",
        ],
    )
    .await;
    assert!(common::port_counter(&m.pair.server, "tcp15008") == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_serves_open_quic_streams_until_the_deadline() {
    let server = Side {
        transport: "h3",
        extra: &[("CONNECTION_TERMINATION_DEADLINE", "2s")],
    };
    let m = QuicMesh::start("quic_drain", H3, server).await;
    let _echo = servers::echo(&m.pair.server, common::APP_PORT);
    let mut s = m
        .pair
        .client
        .connect(common::app_addr(false), STEP)
        .await
        .unwrap();
    assert_eq!(ping(&mut s, b"one").await.unwrap(), b"one");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.server_ambit.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let signalled = Instant::now();
    // During the drain the open stream keeps working.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ping(&mut s, b"two").await.unwrap(), b"two");
    // At the deadline the connection is closed.
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf))
        .await
        .expect("not closed at the deadline");
    assert!(matches!(n, Ok(0) | Err(_)), "closed, got {n:?}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_tunnels_survive_certificate_rotation_and_new_ones_use_the_new_certificate() {
    let side = Side {
        transport: "h3",
        extra: &[("SECRET_TTL", "4s")],
    };
    let m = QuicMesh::start("quic_rotation", side, side).await;
    let mut echo = servers::echo(&m.pair.server, common::APP_PORT);
    let mut s = m
        .pair
        .client
        .connect(common::app_addr(true), STEP)
        .await
        .unwrap();
    let (mut sent, mut got) = (sha2::Sha256::new(), sha2::Sha256::new());
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    // ~9 s: at least two rotations at a 4 s lifetime.
    for i in 0..90u32 {
        ticker.tick().await;
        let chunk = format!("chunk {i:04} {}\n", "x".repeat(1000));
        sent.update(chunk.as_bytes());
        got.update(ping(&mut s, chunk.as_bytes()).await.unwrap());
    }
    s.shutdown().await.unwrap();
    assert_eq!(common::hex(&sent.finalize()), common::hex(&got.finalize()));
    echo.next_seen().await;
    // The certificates in force at the start have expired by now: a new connection works only
    // if it was handshaken with the current ones.
    let mut s = m
        .pair
        .client
        .connect(common::app_addr(false), STEP)
        .await
        .unwrap();
    assert_eq!(ping(&mut s, b"fresh").await.unwrap(), b"fresh");
    assert_eq!(common::port_counter(&m.pair.server, "tcp15008"), 0);
}
