//! Operating ambit in shared (in-pod) mode, end to end:
//! - readiness waits for the certificates of the local pods: with the lab's control plane, a pod
//!   added while the CA refuses keeps the node's readiness at 500 naming its identity, until the
//!   CA accepts again; when the pod leaves, its certificate is forgotten (`/config_dump`);
//! - graceful drain of the pods' proxies on SIGTERM, with the test as the node agent: readiness
//!   turns false, the pods' listeners stop accepting, a flow that ends before
//!   `CONNECTION_TERMINATION_DEADLINE` completes intact, one that does not is closed at the
//!   deadline, and the process exits 0.

use crate::common;
use crate::common::zds;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ambit_lab::topology::Pod;
use ambit_lab::{
    ControlMode, Lab, LabOptions, Netns, Process, ProcessSpec, ProxyMode, Topology, http_get,
};
use common::mesh::{AMBIT, echo_once};
use common::{STEP, TempDir, servers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zds::{Agent, Node};

const DEMO: &str = include_str!("../../examples/demo.yaml");
/// The drain deadline of the draining ambit.
const DEADLINE: Duration = Duration::from_secs(3);

/// `GET /healthz/ready` inside `ns`: status and body, once the server answers.
async fn readiness(ns: &Netns) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 15021));
    http_get(ns, addr, "/healthz/ready", Duration::from_secs(2))
        .await
        .ok()
        .map(|r| (r.status, r.body))
}

/// Polls readiness (bounded: `tries` × 100 ms) until `ok` accepts it; returns the body.
async fn wait_readiness(
    ns: &Netns,
    tries: u32,
    what: &str,
    ok: impl Fn(u16, &str) -> bool,
) -> String {
    let mut last = None;
    for _ in 0..tries {
        if let Some((status, body)) = readiness(ns).await {
            if ok(status, &body) {
                return body;
            }
            last = Some((status, body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("readiness never {what}; last: {last:?}");
}

/// The identities in the certificates section of the node's `/config_dump`.
async fn dumped_identities(lab: &Lab, node: &str) -> Vec<(String, String)> {
    let ns = lab.node_ns(node).unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
    let r = http_get(ns, admin, "/config_dump", STEP).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let dump: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    dump["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["identity"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_local_pod_certificates_and_gone_pods_are_forgotten() {
    let opts = LabOptions {
        proxy: Some(AMBIT.into()),
        mode: ProxyMode::Shared,
        control: ControlMode::ControlPlane,
        ..LabOptions::default()
    };
    let mut lab = Lab::start(Topology::from_yaml(DEMO).unwrap(), opts)
        .await
        .unwrap();
    let cp = lab.control_plane().unwrap().clone();
    // Ready at start: the node's pods' certificates were issued before readiness turned 200.
    let web = "spiffe://cluster.local/ns/default/sa/web";
    assert!(
        dumped_identities(&lab, "node-2")
            .await
            .contains(&(web.into(), "Available".into()))
    );

    // The CA refuses; a pod with a new identity arrives on node-2.
    cp.set_ca_refusing(true);
    let pod = Pod {
        name: "web-3".into(),
        namespace: "default".into(),
        service_account: "web3".into(),
        node: "node-2".into(),
        captured: true,
        ip: [10, 244, 2, 50].into(),
        labels: Default::default(),
    };
    let web3 = pod.spiffe();
    lab.add_pod(pod).await.unwrap();
    // Blocked from the moment the pod was acknowledged, naming what is pending.
    let node = lab.node_ns("node-2").unwrap();
    let (status, body) = readiness(node).await.unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains(&format!("inpod: certificate {web3}")),
        "{body}"
    );
    // It stays so while the CA refuses: two refused issuances, readiness unchanged.
    let first = cp
        .wait_ca(0, STEP, |r| r.identity == web3 && r.outcome.is_err())
        .await
        .unwrap();
    let after_first = cp.ca_records().iter().position(|r| *r == first).unwrap() + 1;
    cp.wait_ca(after_first, STEP, |r| {
        r.identity == web3 && r.outcome.is_err()
    })
    .await
    .unwrap();
    let (status, body) = readiness(node).await.unwrap();
    assert_eq!(status, 500, "ready while the CA refused: {body}");
    assert!(body.contains(&web3), "{body}");
    let ids = dumped_identities(&lab, "node-2").await;
    assert!(
        ids.iter()
            .any(|(id, state)| *id == web3 && state.starts_with("Unavailable")),
        "{ids:?}"
    );

    // The CA accepts again: the manager's next retry succeeds and readiness follows.
    cp.set_ca_refusing(false);
    wait_readiness(node, 400, "turned 200 after the CA recovered", |s, _| {
        s == 200
    })
    .await;
    assert!(
        dumped_identities(&lab, "node-2")
            .await
            .contains(&(web3.clone(), "Available".into()))
    );

    // The pod leaves: its identity is forgotten; web-2's stays.
    lab.del_pod("web-3").await.unwrap();
    let ids = dumped_identities(&lab, "node-2").await;
    assert!(ids.iter().all(|(id, _)| *id != web3), "{ids:?}");
    assert!(ids.contains(&(web.into(), "Available".into())), "{ids:?}");
    let node = lab.node_ns("node-2").unwrap();
    assert_eq!(readiness(node).await.map(|r| r.0), Some(200));
}

/// Starts a shared-mode ambit in the node namespace with a 3 s drain deadline.
fn start_ambit(node: &Node, dir: &Path, uds: &Path) -> Process {
    let config = dir.join("local.yaml");
    std::fs::write(&config, node.config()).unwrap();
    let spec = ProcessSpec::new("ambit", AMBIT)
        .env("PROXY_MODE", "shared")
        .env("INPOD_UDS", uds.display().to_string())
        .env("FAKE_CA", "true")
        .env("CA_ADDRESS", "")
        .env("XDS_ADDRESS", "")
        .env("LOCAL_XDS_PATH", config.display().to_string())
        .env("AMBIT_CA_DIR", dir.join("ca").display().to_string())
        .env("CONNECTION_TERMINATION_DEADLINE", "3s")
        .env("RUST_LOG", "info");
    Process::spawn(Some(&node.ns), &spec, dir).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_pod_proxies_in_shared_mode_then_exits_0() {
    let dir = TempDir::new("ops_inpod_drain");
    let node = Node::new(&[("a", "client", "client"), ("b", "server", "server")]);
    let agent = Agent::listen(&dir.path().join("ztunnel.sock"));
    let mut ambit = start_ambit(&node, dir.path(), &agent.path);
    let conn = agent.accept(Duration::from_secs(20)).await;
    let (a, b) = (&node.pods[0], &node.pods[1]);
    conn.announce(&[a, b]).await;
    node.wait_readiness(200, &ambit).await;

    let _echo = servers::echo(&b.ns, 7000);
    let dst = SocketAddr::new(b.ip, 7000);
    let mut short = a.ns.connect(dst, STEP).await.unwrap();
    let mut long = a.ns.connect(dst, STEP).await.unwrap();
    echo_once(&mut short, b"short flow, before the drain").await;
    echo_once(&mut long, b"long flow, before the drain").await;

    let started = Instant::now();
    let out = std::process::Command::new("kill")
        .args(["-TERM", &ambit.pid().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_readiness(&node.ns, 100, "reported draining", |s, body| {
        s == 500 && body.contains("draining")
    })
    .await;

    // The short flow keeps working inside the drain, then ends cleanly, intact.
    let tail: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    echo_once(&mut short, &tail).await;
    short.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, short.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "{} stray bytes", rest.len());
    assert!(started.elapsed() < DEADLINE, "short flow too slow");

    // The pods' listeners no longer accept: B's HBONE port (reached from the node, not
    // redirected) refuses, and a new flow from A gets nothing through.
    let hbone = node.ns.connect(SocketAddr::new(b.ip, 15008), STEP).await;
    assert!(hbone.is_err(), "15008 of a draining pod still accepts");
    if let Ok(mut s) = a.ns.connect(dst, Duration::from_secs(2)).await {
        let _ = s.write_all(b"new").await;
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(STEP, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "a connection opened during the drain was served");
    }

    // The long flow still works before the deadline, and is closed at it.
    echo_once(&mut long, b"long flow, inside the drain").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(DEADLINE + STEP, long.read(&mut buf))
        .await
        .expect("long flow was not closed at the deadline")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let closed_after = started.elapsed();
    assert!(
        closed_after >= DEADLINE - Duration::from_millis(200),
        "closed before the deadline: {closed_after:?}"
    );

    // Exit 0, bounded.
    for _ in 0..200 {
        if let Some(status) = ambit.try_status() {
            assert!(status.success(), "{status}; tail:\n{}", ambit.tail(30));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ambit did not exit; tail:\n{}", ambit.tail(30));
}
