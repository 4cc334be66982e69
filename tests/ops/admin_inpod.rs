//! `/config_dump` in shared (in-pod) mode lists each local pod under `workloadState` with its
//! proxy's live connections, as `istioctl ztunnel-config connections` reads them: a long-lived
//! HBONE flow from `client` (node-1) to `web-2` (node-2) appears as outbound on node-1 and as
//! inbound on node-2 while it is open, and leaves both lists when it closes.

use crate::compat_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::traffic::{Server, ServerKind};
use ambit_lab::{Lab, LabOptions, ProxyMode, Topology, http_get};
use compat_support::Schema;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");
const STEP: Duration = Duration::from_secs(20);
const DEMO: &str = include_str!("../../examples/demo.yaml");

async fn config_dump(lab: &Lab, node: &str) -> Value {
    let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
    let r = http_get(lab.node_ns(node).unwrap(), admin, "/config_dump", STEP)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// The `workloadState` entry of the pod named `name`.
fn pod_state<'a>(dump: &'a Value, name: &str) -> &'a Value {
    dump["workloadState"]
        .as_object()
        .unwrap_or_else(|| panic!("no workloadState: {dump}"))
        .values()
        .find(|p| p["info"]["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in workloadState: {}", dump["workloadState"]))
}

/// Polls node's dump (bounded) until `ok` holds for the pod's entry; returns the entry.
async fn wait_pod(lab: &Lab, node: &str, pod: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let dump = config_dump(lab, node).await;
        last = pod_state(&dump, pod).clone();
        if ok(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{pod} on {node} never reached the expected state; last: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_state_lists_pods_and_their_live_connections() {
    let opts = LabOptions {
        proxy: Some(AMBIT.into()),
        mode: ProxyMode::Shared,
        ..LabOptions::default()
    };
    let lab = Lab::start(Topology::from_yaml(DEMO).unwrap(), opts)
        .await
        .unwrap();
    let web2 = lab.topology().pod("web-2").unwrap().ip;
    let _echo = Server::start(lab.pod_ns("web-2").unwrap(), ServerKind::Echo, 9000).unwrap();

    // Every local pod is listed, up, with its identity; node-1 holds client and web-1.
    let dump = config_dump(&lab, "node-1").await;
    let names: BTreeSet<&str> = dump["workloadState"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|p| p["info"]["name"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["client", "web-1"]), "{dump}");
    let client = pod_state(&dump, "client");
    assert_eq!(client["state"], "Up");
    assert_eq!(client["info"]["namespace"], "default");
    assert_eq!(client["info"]["serviceAccount"], "client");

    // A flow held open across the dumps.
    let target = SocketAddr::from((web2, 9000));
    let mut flow = lab
        .pod_ns("client")
        .unwrap()
        .connect(target, STEP)
        .await
        .unwrap();
    flow.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(STEP, flow.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping");
    let app_src = flow.local_addr().unwrap();

    let client = wait_pod(&lab, "node-1", "client", |p| {
        p["connections"]["outbound"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let out = &client["connections"]["outbound"][0];
    assert_eq!(out["src"], app_src.to_string(), "{client}");
    assert_eq!(out["originalDst"], target.to_string(), "{client}");
    assert_eq!(
        out["actualDst"],
        SocketAddr::from((web2, 15008)).to_string(),
        "{client}"
    );
    assert_eq!(out["protocol"], "HBONE", "{client}");

    let server = wait_pod(&lab, "node-2", "web-2", |p| {
        p["connections"]["inbound"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let inb = &server["connections"]["inbound"][0];
    assert_eq!(inb["actualDst"], target.to_string(), "{server}");
    assert_eq!(inb["protocol"], "HBONE", "{server}");
    assert_eq!(inb["originalDst"], Value::Null, "{server}");
    let src: SocketAddr = inb["src"].as_str().unwrap().parse().unwrap();
    assert_eq!(src.ip(), app_src.ip(), "{server}");

    // Both dumps decode as istioctl reads them.
    for node in ["node-1", "node-2"] {
        let dump = config_dump(&lab, node).await;
        let mut errors = Vec::new();
        Schema::load().check(&dump, "", &mut BTreeSet::new(), &mut errors);
        assert!(errors.is_empty(), "{node}: {errors:?}");
    }

    // Closed: gone from both lists.
    drop(flow);
    wait_pod(&lab, "node-1", "client", |p| {
        p["connections"]["outbound"]
            .as_array()
            .is_some_and(Vec::is_empty)
    })
    .await;
    wait_pod(&lab, "node-2", "web-2", |p| {
        p["connections"]["inbound"]
            .as_array()
            .is_some_and(Vec::is_empty)
    })
    .await;
}
