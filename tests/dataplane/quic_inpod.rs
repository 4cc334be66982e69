//! HBONE over QUIC in in-pod (shared) mode: one ambit on the node, each pod's listeners — the
//! UDP 15008 endpoint included — created inside the pod's network namespace through the socket
//! factory. curl from pod A to pod B goes over QUIC; nftables counters in pod B show UDP 15008
//! carrying it and nothing on TCP 15008.

use crate::common;
use crate::common::zds;

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::{Process, ProcessSpec};
use common::mesh::wait_access_line;
use common::{TempDir, servers};
use zds::{Agent, Answer, Node};

const A: (&str, &str, &str) = ("a", "client", "client");
const B: (&str, &str, &str) = ("b", "server", "server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_talk_over_quic_from_listeners_inside_their_namespaces() {
    let dir = TempDir::new("quic_inpod");
    let node = Node::new(&[A, B]);
    let agent = Agent::listen(&dir.path().join("ztunnel.sock"));
    let config = dir.path().join("local.yaml");
    std::fs::write(&config, node.config()).unwrap();
    let spec = ProcessSpec::new("ambit", common::mesh::AMBIT)
        .env("PROXY_MODE", "shared")
        .env("INPOD_UDS", agent.path.display().to_string())
        .env("FAKE_CA", "true")
        .env("CA_ADDRESS", "")
        .env("XDS_ADDRESS", "")
        .env("LOCAL_XDS_PATH", config.display().to_string())
        .env("AMBIT_CA_DIR", dir.path().join("ca").display().to_string())
        .env("AMBIT_HBONE_TRANSPORT", "h3")
        .env("RUST_LOG", "info");
    let ambit = Process::spawn(Some(&node.ns), &spec, dir.path()).unwrap();
    let conn = agent.accept(Duration::from_secs(20)).await;
    let (a, b) = (&node.pods[0], &node.pods[1]);
    common::install_port_counters(&b.ns);
    assert_eq!(conn.add(a).await, Answer::Ack);
    assert_eq!(conn.add(b).await, Answer::Ack);
    assert_eq!(conn.snapshot().await, Answer::Ack);
    node.wait_readiness(200, &ambit).await;

    let mut app = servers::http(&b.ns, 8080);
    let url = common::url(SocketAddr::new(b.ip, 8080), "/");
    let out = common::curl(&a.ns, &[&url]).await;
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(app.next_seen().await.peer.ip(), a.ip);
    let line = wait_access_line(
        &ambit,
        &["direction=inbound", "transport=h3", "src.identity="],
    )
    .await;
    assert_eq!(
        line.get("src.identity"),
        Some(a.spiffe().as_str()),
        "{line}"
    );
    assert!(
        common::port_counter(&b.ns, "udp15008") > 0,
        "QUIC reached pod B's namespace"
    );
    assert_eq!(common::port_counter(&b.ns, "tcp15008"), 0);
}
