//! Services on the lab with unmodified traffic: a VIP in front of three endpoints on two nodes
//! spreads connections over all of them; when one endpoint's app dies, its connects fail before
//! any byte is sent, so they are retried on the others (no client connection fails) and the
//! dead endpoint is ejected (the client node's proxy says so and counts it).

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::traffic::{Server, ServerKind, echo};
use ambit_lab::{Lab, LabOptions, ProxyMode, Topology};

const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");
const STEP: Duration = Duration::from_secs(20);

const TOPOLOGY: &str = r#"
nodes:
  - name: node-1
  - name: node-2
pods:
  - name: client
    serviceAccount: client
    node: node-1
  - name: web-1
    serviceAccount: web
    node: node-1
    labels: {app: web}
  - name: web-2
    serviceAccount: web
    node: node-2
    labels: {app: web}
  - name: web-3
    serviceAccount: web
    node: node-2
    labels: {app: web}
services:
  - name: web
    vips: [10.96.0.10]
    ports: {80: 8080}
    selector: {app: web}
policies: []
"#;

async fn lab() -> Lab {
    let opts = LabOptions {
        proxy: Some(
            std::env::var_os("AMBIT_LAB_PROXY")
                .map(Into::into)
                .unwrap_or_else(|| AMBIT.into()),
        ),
        mode: ProxyMode::Shared,
        ..LabOptions::default()
    };
    Lab::start(Topology::from_yaml(TOPOLOGY).unwrap(), opts)
        .await
        .unwrap()
}

/// Inbound connections the proxy serving `pod` logged for the pod's port 8080.
fn served(lab: &Lab, pod: &str) -> usize {
    let ip = lab.topology().pod(pod).unwrap().ip;
    let want = format!("dst.addr={ip}:8080");
    lab.proxy_for(pod)
        .unwrap()
        .log()
        .lines()
        .filter(|l| l.contains("direction=inbound") && l.contains(&want))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_spreads_over_endpoints_and_ejects_a_dead_one() {
    let lab = lab().await;
    let mut servers = Vec::new();
    for pod in ["web-1", "web-2", "web-3"] {
        servers.push(Server::start(lab.pod_ns(pod).unwrap(), ServerKind::Echo, 8080).unwrap());
    }
    let client = lab.pod_ns("client").unwrap();
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    for i in 0..30u8 {
        let msg = [b'a', i];
        let back = echo(client, vip, &msg, STEP).await.unwrap();
        assert_eq!(back, msg);
    }
    // The access log is written on close; wait (bounded) for all three to show up.
    let mut counts = [0; 3];
    for _ in 0..100 {
        counts = [
            served(&lab, "web-1"),
            served(&lab, "web-2"),
            served(&lab, "web-3"),
        ];
        if counts.iter().sum::<usize>() >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("connections served per endpoint: {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 30, "{counts:?}");
    // 30 uniform picks over 3 endpoints leave one out with odds of about 1 in 10^5.
    assert!(counts.iter().all(|c| *c > 0), "{counts:?}");

    // web-3's app dies: nothing listens on its port any more.
    drop(servers.pop());
    for i in 0..30u8 {
        let msg = [b'b', i];
        let back = echo(client, vip, &msg, STEP).await.unwrap();
        assert_eq!(back, msg, "connection {i} after the endpoint died");
    }
    let client_proxy = lab.proxy_for("client").unwrap();
    let ejected = "endpoint ejected after repeated connect failures";
    let mut seen = false;
    for _ in 0..100 {
        if client_proxy.log().contains(ejected) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "no ejection logged:\n{}", client_proxy.tail(30));
}
