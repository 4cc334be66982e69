//! End-to-end tests of in-pod (shared) mode: one ambit in a "node" namespace, pods behind
//! veths with the in-pod redirection rules, and the test itself as the node agent, serving ZDS
//! on a real `SOCK_SEQPACKET` socket and passing each pod's netns fd. Traffic is real curl, nc
//! and test servers.

use crate::common;
use crate::common::zds;

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::Process;
use common::mesh::{metric, wait_access_line};
use common::{STEP, TempDir, servers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zds::{Agent, AgentConn, Answer, Node, Pod};

const A: (&str, &str, &str) = ("a", "client", "client");
const B: (&str, &str, &str) = ("b", "server", "server");
const C: (&str, &str, &str) = ("c", "late", "late");

/// How long ambit may take to (re)connect to the agent (its backoff tops out at 15 s).
const CONNECT: Duration = Duration::from_secs(20);

/// A running node: pods, agent socket, ambit.
struct Harness {
    // Drop order: ambit, then the namespaces, then the scratch directory.
    ambit: Process,
    agent: Agent,
    node: Node,
    dir: TempDir,
}

impl Harness {
    /// Starts ambit and accepts its first ZDS connection (not yet announcing anything).
    async fn start(
        test: &str,
        wls: &[(&'static str, &'static str, &'static str)],
    ) -> (Harness, AgentConn) {
        let dir = TempDir::new(test);
        let node = Node::new(wls);
        let agent = Agent::listen(&dir.path().join("ztunnel.sock"));
        let ambit = node.start_ambit(dir.path(), "ambit", &agent.path);
        let conn = agent.accept(CONNECT).await;
        (
            Harness {
                ambit,
                agent,
                node,
                dir,
            },
            conn,
        )
    }

    fn pod(&self, i: usize) -> &Pod {
        &self.node.pods[i]
    }
}

/// A captured (unmarked) connection from `from` to `dst`.
async fn connect(from: &Pod, dst: SocketAddr) -> TcpStream {
    from.ns.connect(dst, STEP).await.unwrap()
}

/// Writes `msg` and reads the same number of bytes back (an echo flow is alive).
async fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(STEP, s.read_exact(&mut back))
        .await
        .expect("echo within the step")
        .expect("echo flow still alive");
    assert_eq!(back, msg);
}

/// curl from `from` to the HTTP app on `to`; returns the body.
async fn curl(from: &Pod, to: &Pod, port: u16) -> String {
    let url = common::url(SocketAddr::new(to.ip, port), "/");
    let out = common::curl(&from.ns, &[&url]).await;
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_talk_through_hbone_and_readiness_follows_the_snapshot() {
    let (h, conn) = Harness::start("inpod_two_pods", &[A, B]).await;
    let (a, b) = (h.pod(0), h.pod(1));
    // Connected, nothing announced: not ready.
    for _ in 0..100 {
        if h.node.readiness().await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        h.node.readiness().await,
        Some(500),
        "ready before the snapshot"
    );
    assert_eq!(conn.add(a).await, Answer::Ack);
    assert_eq!(conn.add(b).await, Answer::Ack);
    assert_eq!(
        h.node.readiness().await,
        Some(500),
        "ready before the snapshot"
    );
    assert_eq!(conn.snapshot().await, Answer::Ack);
    h.node.wait_readiness(200, &h.ambit).await;

    // curl: the app sees the client pod's address; ambit logs the client's identity.
    let mut app = servers::http(&b.ns, 8080);
    let body = curl(a, b, 8080).await;
    assert_eq!(
        body,
        format!(
            "hello from 8080, you are {}:{}",
            a.ip,
            app.next_seen().await.peer.port()
        )
    );
    let line = wait_access_line(
        &h.ambit,
        &[
            "direction=inbound",
            &format!("dst.hbone_addr={}:8080", b.ip),
            "src.identity=",
        ],
    )
    .await;
    assert_eq!(
        line.get("src.identity"),
        Some(a.spiffe().as_str()),
        "{line}"
    );

    // nc: a megabyte, digest checked by the sink on the other side.
    let mut sink = servers::sink(&b.ns, 9000);
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = h.dir.path().join("payload");
    std::fs::write(&file, &data).unwrap();
    let cmd = format!("nc -N -w 10 {} 9000 < {}", b.ip, file.display());
    let out =
        a.ns.exec(&["sh", "-c", &cmd], Duration::from_secs(20))
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "nc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = sink.next_seen().await;
    assert_eq!(seen.bytes, data.len() as u64);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        common::sha256_hex(&data)
    );
    assert_eq!(seen.peer.ip(), a.ip);

    assert_eq!(
        metric(&h.node.ns, "workload_manager_active_proxy_count").await,
        2.0
    );
    assert_eq!(
        metric(&h.node.ns, "workload_manager_proxies_started_total").await,
        2.0
    );
    assert!(metric(&h.node.ns, "ambit_hbone_inbound_handshakes_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_pod_becomes_reachable_and_deleted_pod_loses_listeners_without_harming_others() {
    let (h, conn) = Harness::start("inpod_add_del", &[A, B, C]).await;
    let (a, b, c) = (h.pod(0), h.pod(1), h.pod(2));
    conn.announce(&[a, b]).await;
    h.node.wait_readiness(200, &h.ambit).await;

    let _echo = servers::echo(&b.ns, 7000);
    let mut flow = connect(a, SocketAddr::new(b.ip, 7000)).await;
    echo_roundtrip(&mut flow, b"before").await;

    // A pod added while the flow runs becomes reachable.
    let _app = servers::http(&c.ns, 8080);
    assert_eq!(conn.add(c).await, Answer::Ack);
    let body = curl(a, c, 8080).await;
    assert!(
        body.starts_with(&format!("hello from 8080, you are {}:", a.ip)),
        "{body}"
    );
    echo_roundtrip(&mut flow, b"during").await;

    // Deleted: its HBONE listener is gone (from the node, unredirected), the flow lives on.
    assert_eq!(conn.del(&c.uid).await, Answer::Ack);
    let refused = h.node.ns.connect(SocketAddr::new(c.ip, 15008), STEP).await;
    assert!(refused.is_err(), "15008 of a deleted pod still accepts");
    echo_roundtrip(&mut flow, b"after").await;
    assert_eq!(
        metric(&h.node.ns, "workload_manager_active_proxy_count").await,
        2.0
    );
    assert_eq!(
        metric(&h.node.ns, "workload_manager_proxies_stopped_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_keeps_flows_and_ambit_restart_recovers() {
    let (mut h, conn) = Harness::start("inpod_restarts", &[A, B]).await;
    conn.announce(&[h.pod(0), h.pod(1)]).await;
    h.node.wait_readiness(200, &h.ambit).await;
    let _echo = servers::echo(&h.pod(1).ns, 7000);
    let _app = servers::http(&h.pod(1).ns, 8080);
    let mut flow = connect(h.pod(0), SocketAddr::new(h.pod(1).ip, 7000)).await;
    echo_roundtrip(&mut flow, b"one").await;

    // The node agent restarts: its socket goes away and comes back.
    drop(conn);
    let path = h.agent.path.clone();
    h.agent = Agent::listen(&path);
    let conn = h.agent.accept(CONNECT).await;
    conn.announce(&[h.pod(0), h.pod(1)]).await;
    echo_roundtrip(&mut flow, b"two").await;
    curl(h.pod(0), h.pod(1), 8080).await;
    assert_eq!(
        metric(&h.node.ns, "workload_manager_proxies_started_total").await,
        2.0,
        "reconciled, not restarted"
    );

    // ambit restarts: the agent re-sends its snapshot to the new one.
    h.ambit.kill();
    drop(conn);
    h.ambit = h.node.start_ambit(h.dir.path(), "ambit-2", &path);
    let conn = h.agent.accept(CONNECT).await;
    conn.announce(&[h.pod(0), h.pod(1)]).await;
    h.node.wait_readiness(200, &h.ambit).await;
    let body = curl(h.pod(0), h.pod(1), 8080).await;
    assert!(
        body.starts_with(&format!("hello from 8080, you are {}:", h.pod(0).ip)),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_while_other_pods_keep_serving() {
    let (h, conn) = Harness::start("inpod_bad_input", &[A, B]).await;
    let (a, b) = (h.pod(0), h.pod(1));
    conn.announce(&[a, b]).await;
    h.node.wait_readiness(200, &h.ambit).await;
    let _app = servers::http(&b.ns, 8080);

    let nack = |ans: Answer, needle: &str| match ans {
        Answer::Nack(m) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected a NACK with {needle:?}, got {other:?}"),
    };
    // AddWorkload without a descriptor.
    nack(
        conn.request(zds::add_request(a), None).await,
        "expected exactly one network namespace descriptor, got 0",
    );
    // A descriptor on DelWorkload.
    let del = ambit_lab::zds::del_request(&b.uid);
    nack(
        conn.request(del, Some(b.netns_file())).await,
        "DelWorkload must not carry a file descriptor",
    );
    // Bytes that are no protobuf.
    let raw = conn.request_raw(&[0xff, 0xff, 0xff, 0xff], None).await;
    nack(raw, "undecodable WorkloadRequest");
    // A regular file instead of a namespace.
    let not_ns = std::fs::File::open("/proc/self/status").unwrap();
    nack(
        conn.request(zds::add_request(a), Some(not_ns)).await,
        "not a network namespace",
    );
    // Nothing of it disturbed the pods.
    curl(a, b, 8080).await;
    assert_eq!(
        metric(&h.node.ns, "workload_manager_active_proxy_count").await,
        2.0
    );

    // A second snapshot ends the connection; ambit reconnects and reconciles.
    assert_eq!(conn.snapshot().await, Answer::Closed);
    let conn = h.agent.accept(CONNECT).await;
    conn.announce(&[a, b]).await;
    curl(a, b, 8080).await;
    assert_eq!(
        metric(&h.node.ns, "workload_manager_proxies_started_total").await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_is_nacked_blocks_readiness_and_is_retried() {
    let (h, conn) = Harness::start("inpod_retry", &[A, B]).await;
    let (a, b) = (h.pod(0), h.pod(1));
    // Something without SO_REUSEPORT holds B's HBONE port: ambit's bind there must fail.
    let blocker = b.ns.tcp_listener("[::]:15008".parse().unwrap()).unwrap();
    assert_eq!(conn.add(a).await, Answer::Ack);
    match conn.add(b).await {
        Answer::Nack(m) => assert!(
            m.contains(&format!("start proxy for {}", b.uid)) && m.contains("15008"),
            "{m}"
        ),
        other => panic!("expected a NACK, got {other:?}"),
    }
    assert_eq!(conn.snapshot().await, Answer::Ack);
    assert_eq!(
        h.node.readiness().await,
        Some(500),
        "a pending pod blocks readiness"
    );
    assert_eq!(
        metric(&h.node.ns, "workload_manager_pending_proxy_count").await,
        1.0
    );

    // The port frees up; the retry (every 5 s) starts the proxy and readiness follows.
    drop(blocker);
    h.node.wait_readiness(200, &h.ambit).await;
    assert_eq!(
        metric(&h.node.ns, "workload_manager_pending_proxy_count").await,
        0.0
    );
    assert_eq!(
        metric(&h.node.ns, "workload_manager_active_proxy_count").await,
        2.0
    );
    let _app = servers::http(&b.ns, 8080);
    curl(a, b, 8080).await;
}

/// Inbound capture by TPROXY, as Istio's in-pod rules do it (no NAT: the packet keeps its
/// destination and the proxy's listener must be transparent to take it): a plain connection
/// from an uncaptured client to the server app is taken by the server's transparent 15006,
/// which learns the destination from the socket's local address and delivers it with the
/// client's own source. (With a listener that is not transparent, the packets bypass the proxy
/// and the access-log check fails.) `AMBIT_LAB_PROXY` runs the server pod's proxy as that peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tproxy_capture_reaches_the_transparent_inbound_listener() {
    use common::mesh::{Mesh, MeshOpts};
    let opts = MeshOpts {
        server_program: std::env::var_os("AMBIT_LAB_PROXY").map(Into::into),
        ..MeshOpts::default()
    };
    let mesh = Mesh::start("tproxy_inbound", opts).await;
    // The client sends plain TCP (its capture off); the server takes inbound by TPROXY, marking
    // the packets with the return path's mark so its policy route delivers them locally.
    mesh.pair
        .client
        .nft("delete table inet ambit_capture\n")
        .unwrap();
    mesh.pair
        .server
        .nft(
            "table ip ambit_tproxy
delete table ip ambit_tproxy
table ip ambit_tproxy {
  chain prerouting {
    type filter hook prerouting priority mangle; policy accept;
    iifname \"lo\" return
    meta mark & 0xfff == 0x539 return
    tcp dport 15008 return
    meta l4proto tcp meta mark set 0x111 tproxy to :15006 accept
  }
}
",
        )
        .unwrap();
    let mut app = servers::http(&mesh.pair.server, common::APP_PORT);
    let url = common::url(common::app_addr(false), "/");
    let out = common::curl(&mesh.pair.client, &[&url]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.starts_with("hello from 8080, you are 10.1.0.2:"),
        "{body}"
    );
    assert_eq!(app.next_seen().await.peer.ip(), common::client_ip(false));
    let line = wait_access_line(
        &mesh.server_ambit,
        &[
            "direction=inbound",
            &format!("dst.addr={}", common::app_addr(false)),
        ],
    )
    .await;
    assert_eq!(
        line.get("src.addr").map(|a| a.starts_with("10.1.0.2:")),
        Some(true),
        "{line:?}"
    );
}
