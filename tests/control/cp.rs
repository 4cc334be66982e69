//! The lab's control plane with unmodified node proxies (the workspace's `ambit`, or
//! `AMBIT_LAB_PROXY`), configured by environment only: workloads added and removed at run time,
//! a push with a malformed resource, the control plane killed during traffic, the CA down when a
//! rotation is due, wrong tokens and foreign identities, and `/config_dump`.
//!
//! Each test builds its own lab (shared mode: one node proxy per node, pods over ZDS) and asserts
//! on both sides: the client's bytes, the proxies' logs, and the control plane's records.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::control_plane::CaRecord;
use ambit_lab::control_resources::{self, CpResource};
use ambit_lab::topology::Pod;
use ambit_lab::traffic::{Server, ServerKind, bulk_send};
use ambit_lab::{
    ControlMode, Lab, LabOptions, Process, ProcessSpec, ProxyMode, Topology, http_get,
};
use ambit_proto::ADDRESS_TYPE_URL;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STEP: Duration = Duration::from_secs(20);
const DEMO: &str = include_str!("../../examples/demo.yaml");

async fn lab_with(topology: &str, proxy_env: &[(&str, &str)]) -> Lab {
    let opts = LabOptions {
        proxy: Some(crate::common::mesh::proxy_under_test()),
        mode: ProxyMode::Shared,
        control: ControlMode::ControlPlane,
        proxy_env: proxy_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..LabOptions::default()
    };
    Lab::start(Topology::from_yaml(topology).unwrap(), opts)
        .await
        .unwrap()
}

fn target(lab: &Lab, pod: &str, port: u16) -> SocketAddr {
    SocketAddr::from((lab.topology().pod(pod).unwrap().ip, port))
}

async fn send(lab: &Lab, from: &str, dst: SocketAddr) -> Result<u64, ambit_lab::LabError> {
    bulk_send(lab.pod_ns(from).unwrap(), dst, 100_000, STEP)
        .await
        .map(|r| r.reply.bytes)
}

/// A long-lived flow to an echo server: one round trip proves it is still alive.
async fn round_trip(stream: &mut TcpStream, tag: u8) {
    let data = vec![tag; 4096];
    let io = async {
        stream.write_all(&data).await?;
        let mut back = vec![0u8; data.len()];
        stream.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    let back = tokio::time::timeout(STEP, io).await.unwrap().unwrap();
    assert_eq!(back, data, "echo flow corrupted");
}

/// Waits (bounded) until `p`'s log has a line containing every needle; returns that line.
async fn wait_log(p: &Process, needles: &[&str]) -> String {
    for _ in 0..300 {
        if let Some(l) = p
            .log()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return l.to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never logged {needles:?}:\n{}", p.name(), p.tail(30));
}

async fn config_dump(lab: &Lab, node: &str) -> serde_json::Value {
    let ns = lab.node_ns(node).unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
    let r = http_get(ns, admin, "/config_dump", STEP).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

fn uids(dump: &serde_json::Value) -> Vec<String> {
    dump["workloads"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|w| w["uid"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn cp_workload_added_is_reachable_and_removed_stops_routing() {
    let mut lab = lab_with(DEMO, &[]).await;
    let cp = lab.control_plane().unwrap().clone();
    // Everything the nodes know came from the control plane: the topology's workloads.
    let dump = config_dump(&lab, "node-1").await;
    assert!(uids(&dump).contains(&"Kubernetes//Pod/default/web-2".to_string()));

    // A pod added at run time on node-2: pushed, announced, reachable from node-1, no restarts.
    let pod = Pod {
        name: "web-3".into(),
        namespace: "default".into(),
        service_account: "web3".into(),
        node: "node-2".into(),
        captured: true,
        ip: [10, 244, 2, 50].into(),
        labels: Default::default(),
    };
    let pids: Vec<u32> = ["node-1", "node-2"]
        .iter()
        .map(|n| lab.proxy(n).unwrap().pid())
        .collect();
    lab.add_pod(pod.clone()).await.unwrap();
    let _sink = Server::start(lab.pod_ns("web-3").unwrap(), ServerKind::Sink, 8080).unwrap();
    let dst = target(&lab, "web-3", 8080);
    let mut sent = Err(None);
    for _ in 0..50 {
        match send(&lab, "client", dst).await {
            Ok(n) => {
                sent = Ok(n);
                break;
            }
            Err(e) => sent = Err(Some(e.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sent, Ok(100_000), "new workload never reachable");
    let server_proxy = lab.proxy("node-2").unwrap();
    wait_log(
        server_proxy,
        &[
            "direction=\"inbound\"",
            "src.identity=\"spiffe://cluster.local/ns/default/sa/client\"",
        ],
    )
    .await;
    let issued = cp.ca_records().into_iter().any(|r| {
        r.identity == pod.spiffe() && r.outcome.is_ok() && r.node.as_deref() == Some("node-2")
    });
    assert!(
        issued,
        "no certificate for the new pod: {:?}",
        cp.ca_records()
    );
    for (i, n) in ["node-1", "node-2"].iter().enumerate() {
        assert_eq!(lab.proxy(n).unwrap().pid(), pids[i], "{n} was restarted");
    }

    // The service's endpoints removed: the VIP is no longer routed, with the documented error.
    let vip = SocketAddr::from(([10, 96, 0, 10], 80));
    let _web1 = Server::start(lab.pod_ns("web-1").unwrap(), ServerKind::Sink, 8080).unwrap();
    let _web2 = Server::start(lab.pod_ns("web-2").unwrap(), ServerKind::Sink, 8080).unwrap();
    assert_eq!(send(&lab, "client", vip).await.unwrap(), 100_000);
    let skip = cp.requests().len();
    cp.remove(
        ADDRESS_TYPE_URL,
        &[
            "Kubernetes//Pod/default/web-1",
            "Kubernetes//Pod/default/web-2",
        ],
    );
    // Applied once ACKed (the client applies a response before answering it).
    for node in ["node-1", "node-2"] {
        cp.wait_request(skip, STEP, |r| {
            r.node == node && r.type_url == ADDRESS_TYPE_URL && !r.response_nonce.is_empty()
        })
        .await
        .unwrap();
    }
    let err = send(&lab, "client", vip)
        .await
        .expect_err("the VIP kept working after its endpoints were removed");
    println!("client-side failure: {err}");
    // The proxy accepted (the connection was redirected to it) and then closed it: the client
    // sees its stream end with a reset or a broken pipe, never a reply from a backend.
    let msg = err.to_string();
    assert!(
        msg.contains("bulk send to 10.96.0.10:80")
            && ["reset", "Broken pipe", "unexpected sink reply", "early eof"]
                .iter()
                .any(|k| msg.contains(k)),
        "{msg}"
    );
    wait_log(
        lab.proxy("node-1").unwrap(),
        &["service default/web.default.svc.cluster.local has no healthy endpoint for port 80"],
    )
    .await;
    let dump = config_dump(&lab, "node-1").await;
    assert!(!uids(&dump).contains(&"Kubernetes//Pod/default/web-1".to_string()));
    assert!(uids(&dump).contains(&"Kubernetes//Pod/default/web-3".to_string()));
}

#[tokio::test]
async fn cp_malformed_resource_is_nacked_and_the_rest_applies() {
    let lab = lab_with(DEMO, &[]).await;
    let cp = lab.control_plane().unwrap().clone();
    let _echo = Server::start(lab.pod_ns("web-2").unwrap(), ServerKind::Echo, 9000).unwrap();
    let mut flow = lab
        .pod_ns("client")
        .unwrap()
        .connect(target(&lab, "web-2", 9000), STEP)
        .await
        .unwrap();
    round_trip(&mut flow, 1).await;

    let skip = cp.requests().len();
    let mut extra =
        control_resources::workload(lab.topology().pod("web-2").unwrap(), lab.topology());
    extra.uid = "Kubernetes//Pod/default/extra".into();
    extra.name = "extra".into();
    extra.addresses = vec![vec![10, 244, 2, 77]];
    cp.push_with_malformed(vec![CpResource::workload(extra)], "broken-workload");

    for node in ["node-1", "node-2"] {
        let nack = cp
            .wait_request(skip, STEP, |r| r.node == node && r.is_nack())
            .await
            .unwrap();
        let detail = nack.error_detail.unwrap();
        assert!(detail.starts_with("broken-workload: "), "{detail}");
        assert!(
            !detail.contains("extra"),
            "the good resource was rejected: {detail}"
        );
    }
    // The good resource of the same push applied; the old state still serves.
    let mut found = false;
    for _ in 0..50 {
        if uids(&config_dump(&lab, "node-1").await)
            .contains(&"Kubernetes//Pod/default/extra".into())
        {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        found,
        "the good resource of the NACKed push was not applied"
    );
    round_trip(&mut flow, 2).await;
    let _sink = Server::start(lab.pod_ns("web-1").unwrap(), ServerKind::Sink, 8080).unwrap();
    assert_eq!(
        send(&lab, "client", target(&lab, "web-1", 8080))
            .await
            .unwrap(),
        100_000
    );
    wait_log(
        lab.proxy("node-1").unwrap(),
        &["NACKing xDS response", "broken-workload"],
    )
    .await;

    // /config_dump lists what the control plane sent: every workload and the service.
    let dump = config_dump(&lab, "node-2").await;
    for pod in &lab.topology().pods {
        assert!(uids(&dump).contains(&pod.uid()), "{} missing", pod.uid());
    }
    let services = dump["services"].to_string();
    assert!(
        services.contains("web.default.svc.cluster.local"),
        "{services}"
    );
}

#[tokio::test]
async fn cp_killed_during_traffic_then_resync() {
    let lab = lab_with(DEMO, &[]).await;
    let cp = lab.control_plane().unwrap().clone();
    let _echo = Server::start(lab.pod_ns("web-2").unwrap(), ServerKind::Echo, 9000).unwrap();
    let _sink = Server::start(lab.pod_ns("web-2").unwrap(), ServerKind::Sink, 8080).unwrap();
    let mut flow = lab
        .pod_ns("client")
        .unwrap()
        .connect(target(&lab, "web-2", 9000), STEP)
        .await
        .unwrap();
    round_trip(&mut flow, 1).await;
    let conns_before = cp.requests().iter().map(|r| r.conn).max().unwrap_or(0);

    assert!(lab.stop_control_plane().await);
    // Established flows continue; new connections to known workloads work on the last state.
    round_trip(&mut flow, 2).await;
    assert_eq!(
        send(&lab, "client", target(&lab, "web-2", 8080))
            .await
            .unwrap(),
        100_000
    );
    let proxy = lab.proxy("node-1").unwrap();
    wait_log(proxy, &["xDS stream ended; reconnecting", "retry_in"]).await;
    // Let at least one reconnect attempt fail against the closed port (the backoff grows).
    wait_log(proxy, &["xDS stream ended; reconnecting", "connecting to"]).await;

    let skip = cp.requests().len();
    lab.restart_control_plane().unwrap();
    let resync = cp
        .wait_request(skip, STEP, |r| {
            r.node == "node-1" && r.type_url == ADDRESS_TYPE_URL && r.conn > conns_before
        })
        .await
        .unwrap();
    assert!(resync.response_nonce.is_empty());
    assert_eq!(resync.subscribe, vec!["*"]);
    // It sends what it knows, at the versions the control plane gave it.
    let versions = cp.versions(ADDRESS_TYPE_URL);
    for pod in &lab.topology().pods {
        let uid = pod.uid();
        assert_eq!(
            resync.initial_resource_versions.get(&uid),
            versions.get(&uid),
            "{uid} in {:?}",
            resync.initial_resource_versions
        );
    }
    // And it is ACKed on the new stream: in sync again.
    cp.wait_request(skip, STEP, |r| {
        r.node == "node-1" && r.conn == resync.conn && !r.response_nonce.is_empty() && !r.is_nack()
    })
    .await
    .unwrap();
    round_trip(&mut flow, 3).await;
    assert_eq!(
        send(&lab, "client", target(&lab, "web-2", 8080))
            .await
            .unwrap(),
        100_000
    );
}

#[tokio::test]
async fn cp_ca_down_at_rotation_keeps_the_old_certificate() {
    // 20 s certificates: refresh is due after 10 s.
    let lab = lab_with(DEMO, &[("SECRET_TTL", "20s")]).await;
    let cp = lab.control_plane().unwrap().clone();
    let web = "spiffe://cluster.local/ns/default/sa/web";
    let first = cp
        .wait_ca(0, STEP, |r| {
            r.identity == web && r.node.as_deref() == Some("node-2") && r.outcome.is_ok()
        })
        .await
        .unwrap();
    cp.set_ca_refusing(true);
    let skip = cp.ca_records().len();
    // The refresh comes and is refused.
    let refused = cp
        .wait_ca(skip, STEP, |r| {
            r.identity == web && r.node.as_deref() == Some("node-2")
        })
        .await
        .unwrap();
    assert!(
        refused
            .outcome
            .as_ref()
            .is_err_and(|e| e.contains("Unavailable")),
        "{refused:?}"
    );
    // The old certificate keeps serving (it expires 20 s after issue; we are past 10 s).
    let _sink = Server::start(lab.pod_ns("web-2").unwrap(), ServerKind::Sink, 8080).unwrap();
    assert_eq!(
        send(&lab, "client", target(&lab, "web-2", 8080))
            .await
            .unwrap(),
        100_000
    );
    wait_log(
        lab.proxy("node-2").unwrap(),
        &["certificate issuance failed; will retry"],
    )
    .await;

    cp.set_ca_refusing(false);
    let renewed: CaRecord = cp
        .wait_ca(skip, STEP, |r| {
            r.identity == web && r.node.as_deref() == Some("node-2") && r.outcome.is_ok()
        })
        .await
        .unwrap();
    assert_ne!(renewed.outcome, first.outcome, "the serial did not change");
    assert_eq!(
        send(&lab, "client", target(&lab, "web-2", 8080))
            .await
            .unwrap(),
        100_000
    );
}

const TWO_PODS: &str = "nodes: [{name: node-1}, {name: node-2}]
pods:
  - {name: client, serviceAccount: client, node: node-1}
  - {name: server, serviceAccount: server, node: node-2}
";

/// Runs `ambit` in node-2's namespace with node-2's pods (ZDS) but `token` as its bearer token.
fn rogue_proxy(lab: &Lab, name: &str, token: &std::path::Path) -> Process {
    let cp = lab.control_plane().unwrap();
    let mut spec = ProcessSpec::new(name, crate::common::mesh::proxy_under_test())
        .env("PROXY_MODE", "shared")
        .env(
            "INPOD_UDS",
            lab.agent("node-2").unwrap().socket().display().to_string(),
        )
        .env("NODE_NAME", "node-2")
        .env("RUST_LOG", "info");
    for (k, v) in ambit_lab::control::ControlPlane::proxy_env(cp, "node-2") {
        spec = spec.env(k, v);
    }
    spec = spec.env("AUTH_TOKEN", token.display().to_string());
    Process::spawn(lab.node_ns("node-2"), &spec, lab.run_dir()).unwrap()
}

#[tokio::test]
async fn cp_wrong_token_or_foreign_identity_gets_no_certificate() {
    let mut lab = lab_with(TWO_PODS, &[]).await;
    let cp = lab.control_plane().unwrap().clone();
    let server_id = "spiffe://cluster.local/ns/default/sa/server";
    assert!(lab.kill_proxy("node-2"));

    // A wrong token: Unauthenticated on both streams, no certificate.
    let bad = lab.run_dir().join("bad-token");
    std::fs::write(&bad, "not-a-token\n").unwrap();
    let skip = cp.ca_records().len();
    let rogue = rogue_proxy(&lab, "rogue-token", &bad);
    let rec = cp
        .wait_ca(skip, STEP, |r| r.identity == server_id)
        .await
        .unwrap();
    assert_eq!(rec.node, None);
    assert!(
        rec.outcome
            .as_ref()
            .is_err_and(|e| e.contains("Unauthenticated")),
        "{rec:?}"
    );
    wait_log(&rogue, &["certificate issuance failed", "Unauthenticated"]).await;
    wait_log(
        &rogue,
        &["xDS stream ended", "missing or unknown bearer token"],
    )
    .await;
    drop(rogue);

    // Node-1's valid token, asking for node-2's pod: PermissionDenied, no certificate.
    let skip = cp.ca_records().len();
    let rogue = rogue_proxy(&lab, "rogue-node", &cp.token_path("node-1"));
    let rec = cp
        .wait_ca(skip, STEP, |r| r.identity == server_id)
        .await
        .unwrap();
    assert_eq!(rec.node.as_deref(), Some("node-1"));
    assert!(
        rec.outcome
            .as_ref()
            .is_err_and(|e| e.contains("PermissionDenied")
                && e.contains("node node-1 has no pod with identity")),
        "{rec:?}"
    );
    wait_log(&rogue, &["certificate issuance failed", "PermissionDenied"]).await;
    drop(rogue);
    let leaked = cp.ca_records().into_iter().any(|r| {
        r.identity == server_id && r.outcome.is_ok() && r.node.as_deref() != Some("node-2")
    });
    assert!(!leaked, "{:?}", cp.ca_records());
}
