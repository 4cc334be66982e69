//! Services on the lab with unmodified traffic: a VIP in front of three endpoints on two nodes
//! spreads connections over all of them; when one endpoint's app dies, its connects fail before
//! any byte is sent, so they are retried on the others (no client connection fails) and the
//! dead endpoint is ejected (the client node's proxy says so and counts it); when its app is
//! back, the endpoint is probed after its ejection and serves again.
//!
//! Health and locality (with the lab's control plane, so a deleted pod's workload is withdrawn
//! from the node proxies while they run): an endpoint marked unhealthy gets no connection;
//! a `FAILOVER`-by-zone service sends everything to the client's zone and, once that endpoint's
//! pod is deleted, to the other zone; a `STRICT`-by-zone service never leaves the client's zone,
//! so with its in-zone endpoint gone connections fail with the proxy's documented error.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::accesslog;
use ambit_lab::traffic::{Server, ServerKind, echo};
use ambit_lab::{ControlMode, Lab, LabOptions, ProxyMode, Topology, http_get};

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
        proxy: Some(crate::common::mesh::proxy_under_test()),
        mode: ProxyMode::Shared,
        // A short first ejection, so the test sees the endpoint come back without waiting the
        // default 10 s; the doubling keeps a still-dead endpoint out longer each time.
        proxy_env: vec![("AMBIT_OUTLIER_BASE_EJECTION_TIME".into(), "1s".into())],
        ..LabOptions::default()
    };
    Lab::start(Topology::from_yaml(TOPOLOGY).unwrap(), opts)
        .await
        .unwrap()
}

/// Inbound connections the proxy serving `pod` logged for the pod's port 8080.
fn served(lab: &Lab, pod: &str) -> usize {
    let ip = lab.topology().pod(pod).unwrap().ip;
    // An HBONE stream names the app in `dst.hbone_addr`, a plaintext one in `dst.addr`.
    let app = format!("{ip}:8080");
    let log = lab.proxy_for(pod).unwrap().log();
    accesslog::access_lines(&log, &["direction=inbound"])
        .iter()
        .filter(|l| l.get("dst.hbone_addr").or(l.get("dst.addr")) == Some(app.as_str()))
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

    // web-3's app is back: once its ejection has passed, a connection probes it, succeeds, and
    // it serves again. Bounded: at most 600 connections, ~15 s (the doubled ejection is 1-4 s).
    let before = served(&lab, "web-3");
    let _web3 = Server::start(lab.pod_ns("web-3").unwrap(), ServerKind::Echo, 8080).unwrap();
    let mut back = false;
    for i in 0..600u16 {
        let msg = [b'c', (i % 256) as u8];
        let echoed = echo(client, vip, &msg, STEP).await.unwrap();
        assert_eq!(echoed, msg, "connection {i} after the endpoint came back");
        if served(&lab, "web-3") > before {
            println!("web-3 served again after {} connections", i + 1);
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        back,
        "web-3 got no connection after its app came back:\n{}",
        client_proxy.tail(30)
    );
}

/// Client and one endpoint in zone z1 (node-1); two endpoints in zone z2 (node-2), one of them
/// unhealthy. `any` has no preference; `failover` and `strict` prefer the client's zone.
const LOCALITY_TOPOLOGY: &str = r#"
nodes:
  - name: node-1
  - name: node-2
pods:
  - name: client
    serviceAccount: client
    node: node-1
    locality: {region: r1, zone: z1}
  - name: near
    serviceAccount: web
    node: node-1
    labels: {app: lb}
    locality: {region: r1, zone: z1}
  - name: far
    serviceAccount: web
    node: node-2
    labels: {app: lb}
    locality: {region: r1, zone: z2}
  - name: sick
    serviceAccount: web
    node: node-2
    labels: {app: lb}
    locality: {region: r1, zone: z2}
    status: Unhealthy
services:
  - name: any
    vips: [10.96.0.20]
    ports: {80: 8080}
    selector: {app: lb}
  - name: failover
    vips: [10.96.0.21]
    ports: {80: 8080}
    endpoints: [near, far]
    loadBalancing: {routingPreference: [Zone], mode: Failover}
  - name: strict
    vips: [10.96.0.22]
    ports: {80: 8080}
    endpoints: [near, far]
    loadBalancing: {routingPreference: [Zone], mode: Strict}
"#;

async fn locality_lab() -> Lab {
    let opts = LabOptions {
        proxy: Some(crate::common::mesh::proxy_under_test()),
        mode: ProxyMode::Shared,
        control: ControlMode::ControlPlane,
        ..LabOptions::default()
    };
    Lab::start(Topology::from_yaml(LOCALITY_TOPOLOGY).unwrap(), opts)
        .await
        .unwrap()
}

/// Echo servers on port 8080 of `pods`.
fn serve(lab: &Lab, pods: &[&str]) -> Vec<Server> {
    pods.iter()
        .map(|p| Server::start(lab.pod_ns(p).unwrap(), ServerKind::Echo, 8080).unwrap())
        .collect()
}

/// `n` echo exchanges from the client to `vip`, each on its own connection; all must succeed.
async fn echo_n(lab: &Lab, vip: SocketAddr, n: u8, tag: u8) {
    let client = lab.pod_ns("client").unwrap();
    for i in 0..n {
        let msg = [tag, i];
        let back = echo(client, vip, &msg, STEP).await.unwrap();
        assert_eq!(back, msg, "connection {i} to {vip}");
    }
}

/// Per-pod inbound counts once they add up to `total` (the access log is written on close).
async fn served_total(lab: &Lab, pods: &[&str], total: usize) -> Vec<usize> {
    let mut counts = Vec::new();
    for _ in 0..100 {
        counts = pods.iter().map(|p| served(lab, p)).collect();
        if counts.iter().sum::<usize>() >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    counts
}

/// Deletes `pod` (its app first) and waits, bounded, until the client's node proxy no longer
/// has its workload: from then on endpoint choice cannot see it.
async fn delete_pod(lab: &mut Lab, pod: &str, app: Server) {
    let uid = lab.topology().pod(pod).unwrap().uid();
    drop(app);
    lab.del_pod(pod).await.unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
    for _ in 0..100 {
        let ns = lab.node_ns("node-1").unwrap();
        let r = http_get(ns, admin, "/config_dump", STEP).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let dump: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let present = dump["workloads"]
            .as_array()
            .is_some_and(|ws| ws.iter().any(|w| w["uid"] == uid.as_str()));
        if !present {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node-1 still has {uid} after the pod was deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_endpoint_gets_no_connection() {
    let lab = locality_lab().await;
    let _apps = serve(&lab, &["near", "far", "sick"]);
    echo_n(&lab, "10.96.0.20:80".parse().unwrap(), 30, b'u').await;
    let counts = served_total(&lab, &["near", "far", "sick"], 30).await;
    println!("connections served (near, far, sick): {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 30, "{counts:?}");
    assert_eq!(counts[2], 0, "the unhealthy endpoint was used: {counts:?}");
    // 30 uniform picks over the 2 healthy endpoints leave one out with odds of 1 in 5 * 10^8.
    assert!(counts[0] > 0 && counts[1] > 0, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_by_zone_prefers_client_zone_then_fails_over() {
    let mut lab = locality_lab().await;
    let mut apps = serve(&lab, &["near", "far"]);
    let vip: SocketAddr = "10.96.0.21:80".parse().unwrap();
    echo_n(&lab, vip, 10, b'f').await;
    let counts = served_total(&lab, &["near", "far"], 10).await;
    assert_eq!(counts, [10, 0], "FAILOVER left the client's zone");

    // The in-zone endpoint's pod goes away: the other zone takes over, no connection fails.
    let near = apps.remove(0);
    delete_pod(&mut lab, "near", near).await;
    echo_n(&lab, vip, 10, b'g').await;
    let far = served_total(&lab, &["far"], 10).await;
    assert_eq!(far, [10], "after failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_by_zone_never_leaves_it() {
    let mut lab = locality_lab().await;
    let mut apps = serve(&lab, &["near", "far"]);
    let vip: SocketAddr = "10.96.0.22:80".parse().unwrap();
    echo_n(&lab, vip, 10, b's').await;
    let counts = served_total(&lab, &["near", "far"], 10).await;
    assert_eq!(counts, [10, 0], "STRICT left the client's zone");

    // With the in-zone endpoint gone, nothing is eligible: every connection fails, none leaves.
    let near = apps.remove(0);
    delete_pod(&mut lab, "near", near).await;
    let client = lab.pod_ns("client").unwrap();
    for i in 0..5u8 {
        let r = echo(client, vip, &[b't', i], STEP).await;
        assert!(r.is_err(), "connection {i} succeeded: {r:?}");
    }
    let proxy = lab.proxy_for("client").unwrap();
    let want =
        "service default/strict.default.svc.cluster.local has no healthy endpoint for port 80";
    let mut failures = 0;
    for _ in 0..100 {
        failures = proxy.log().matches(want).count();
        if failures >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures >= 5, "{failures} logged:\n{}", proxy.tail(30));
    assert_eq!(
        served(&lab, "far"),
        0,
        "STRICT sent a connection to another zone"
    );
}
