//! Waypoints and application tunnels on the lab, "sandwich" style, with unmodified clients.
//!
//! The waypoint is a captured pod whose workload has `application_tunnel {protocol: PROXY}`;
//! its app is the lab's waypoint stand-in, which reads the PROXY v2 header, logs the original
//! destination and the client's identity, and connects to that destination itself, from its
//! own (captured) pod. So every hop is real ambit code:
//! client → client node proxy (outbound: the service has a waypoint ⇒ HBONE to the waypoint,
//! authority = the original `VIP:port`) → waypoint node proxy (inbound: accepts the VIP because
//! its pod is that service's waypoint; PROXY header to the app) → waypoint app → waypoint node
//! proxy (outbound: the source *is* the waypoint ⇒ not sent back to it, load-balanced to an
//! endpoint over HBONE) → endpoint node proxy (inbound: the source identity is the waypoint's).
//!
//! - service waypoint, configured over the lab's control plane (xDS `GatewayAddress`);
//! - workload waypoint and a plain PROXY application tunnel, configured from a local file.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::accesslog::{self, LogLine};
use ambit_lab::compat::hbone_probe;
use ambit_lab::traffic::proxied::header_echo;
use ambit_lab::traffic::{Server, ServerKind, WaypointServer, echo};
use ambit_lab::{ControlMode, Lab, LabOptions, ProxyMode, Topology};
use ambit_lab::{promtext, witness};

const STEP: Duration = Duration::from_secs(20);
/// The waypoint app's port (its application tunnel's).
const WAYPOINT_APP_PORT: u16 = 15088;

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
  - name: waypoint
    serviceAccount: waypoint
    node: node-2
    applicationTunnel: {protocol: PROXY, port: 15088}
  - name: db
    serviceAccount: db
    node: node-1
    waypoint: waypoint
  - name: tunneled
    serviceAccount: tunneled
    node: node-2
    applicationTunnel: {protocol: PROXY, port: 9000}
services:
  - name: web
    vips: [10.96.0.30]
    ports: {80: 8080, 81: 8081}
    selector: {app: web}
    waypoint: waypoint
policies: []
"#;

async fn lab(control: ControlMode) -> Lab {
    let opts = LabOptions {
        proxy: Some(crate::common::mesh::proxy_under_test()),
        mode: ProxyMode::Shared,
        control,
        ..LabOptions::default()
    };
    Lab::start(Topology::from_yaml(TOPOLOGY).unwrap(), opts)
        .await
        .unwrap()
}

fn ip(lab: &Lab, pod: &str) -> String {
    lab.topology().pod(pod).unwrap().ip.to_string()
}

fn spiffe(lab: &Lab, pod: &str) -> String {
    lab.topology().pod(pod).unwrap().spiffe()
}

/// Access-log lines of the proxy serving `pod` that satisfy every one of `parts`
/// (`ambit_lab::accesslog::LogLine::has`).
fn access(lab: &Lab, pod: &str, parts: &[&str]) -> Vec<LogLine> {
    accesslog::access_lines(&lab.proxy_for(pod).unwrap().log(), parts)
}

/// Waits (bounded) until `f` returns at least `n` items, and returns them.
async fn at_least<T>(n: usize, f: impl Fn() -> Vec<T>) -> Vec<T> {
    let mut got = f();
    for _ in 0..200 {
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        got = f();
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_waypoint_sees_the_client_and_forwards_without_a_loop() {
    let lab = lab(ControlMode::ControlPlane).await;
    let _web = [
        Server::start(lab.pod_ns("web-1").unwrap(), ServerKind::Echo, 8080).unwrap(),
        Server::start(lab.pod_ns("web-2").unwrap(), ServerKind::Echo, 8080).unwrap(),
        Server::start(lab.pod_ns("web-1").unwrap(), ServerKind::Http, 8081).unwrap(),
        Server::start(lab.pod_ns("web-2").unwrap(), ServerKind::Http, 8081).unwrap(),
    ];
    let wp = WaypointServer::start(lab.pod_ns("waypoint").unwrap(), WAYPOINT_APP_PORT).unwrap();
    let client = lab.pod_ns("client").unwrap();
    let vip: SocketAddr = "10.96.0.30:80".parse().unwrap();
    const N: usize = 6;
    for i in 0..N as u8 {
        let msg = [b'w', i, 0xff, i];
        let back = echo(client, vip, &msg, STEP).await.unwrap();
        assert_eq!(back, msg, "connection {i} through the waypoint");
    }

    // The waypoint saw each client connection once, with the original VIP:port and the
    // client's identity: exactly one line per connection (a loop would add more).
    let log = at_least(N, || wp.log()).await;
    let client_ip = ip(&lab, "client");
    let client_id = spiffe(&lab, "client");
    assert_eq!(log.len(), N, "{log:#?}");
    for line in &log {
        assert!(line.contains(&format!("src={client_ip}:")), "{line}");
        assert!(line.contains("dst=10.96.0.30:80"), "{line}");
        assert!(line.contains(&format!("identity={client_id}")), "{line}");
        assert!(line.ends_with("upstream=ok"), "{line}");
    }

    // The client's node sent each connection to the waypoint, asking for the VIP.
    let wp_ip = ip(&lab, "waypoint");
    let wp_hbone = format!("dst.addr={wp_ip}:15008");
    let to_wp = at_least(N, || {
        access(
            &lab,
            "client",
            &[
                "direction=outbound",
                "dst.hbone_addr=10.96.0.30:80",
                &wp_hbone,
            ],
        )
    })
    .await;
    assert_eq!(to_wp.len(), N, "{to_wp:#?}");

    // The waypoint's own outbound went to an endpoint, never back to the waypoint.
    let wp_src = format!("src.addr^={wp_ip}:");
    let from_wp = at_least(N, || {
        access(&lab, "waypoint", &["direction=outbound", &wp_src])
    })
    .await;
    assert_eq!(from_wp.len(), N, "{from_wp:#?}");
    let endpoints = [
        format!("dst.addr={}:15008", ip(&lab, "web-1")),
        format!("dst.addr={}:15008", ip(&lab, "web-2")),
    ];
    for line in &from_wp {
        assert!(!line.has(&wp_hbone), "looped back: {line}");
        assert!(endpoints.iter().any(|e| line.has(e)), "{line}");
    }

    // The endpoints' nodes saw the waypoint as the source identity, N connections in all.
    let wp_id = format!("src.identity={}", spiffe(&lab, "waypoint"));
    let served = at_least(N, || {
        let mut all = Vec::new();
        for pod in ["web-1", "web-2"] {
            let dst = format!("dst.hbone_addr={}:8080", ip(&lab, pod));
            all.extend(access(&lab, pod, &["direction=inbound", &dst]));
        }
        all
    })
    .await;
    assert_eq!(served.len(), N, "{served:#?}");
    for line in &served {
        assert!(line.has(&wp_id), "{line}");
    }

    // curl, through the same path: the endpoint's app sees the waypoint pod as the peer.
    let out = client
        .exec(&["curl", "-sS", "-m", "10", "http://10.96.0.30:81/"], STEP)
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("peer {wp_ip}")
    );
    let log = at_least(N + 1, || wp.log()).await;
    assert_eq!(log.len(), N + 1, "{log:#?}");
    assert!(log[N].contains("dst=10.96.0.30:81"), "{}", log[N]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_waypoint_and_plain_proxy_tunnel() {
    let lab = lab(ControlMode::LocalFiles).await;
    let _db = Server::start(lab.pod_ns("db").unwrap(), ServerKind::Echo, 8080).unwrap();
    let _tunneled = Server::start(
        lab.pod_ns("tunneled").unwrap(),
        ServerKind::ProxyHeader,
        9000,
    )
    .unwrap();
    let wp = WaypointServer::start(lab.pod_ns("waypoint").unwrap(), WAYPOINT_APP_PORT).unwrap();
    let client = lab.pod_ns("client").unwrap();
    let client_ip = ip(&lab, "client");
    let client_id = spiffe(&lab, "client");

    // A PROXY application tunnel to an ordinary app: the header names the client, the address
    // it asked for and its identity; the bytes after it are the client's.
    let target: SocketAddr = format!("{}:8080", ip(&lab, "tunneled")).parse().unwrap();
    let (info, back) = header_echo(client, target, b"hello", STEP).await.unwrap();
    assert_eq!(back, b"hello");
    assert_eq!(info.src.ip().to_string(), client_ip, "{info:?}");
    assert_eq!(info.dst, target, "{info:?}");
    assert_eq!(
        info.identity.as_deref(),
        Some(client_id.as_str()),
        "{info:?}"
    );
    assert!(
        wp.log().is_empty(),
        "no waypoint on this path: {:?}",
        wp.log()
    );

    // A workload with a waypoint: addressed directly, reached through the waypoint.
    let db: SocketAddr = format!("{}:8080", ip(&lab, "db")).parse().unwrap();
    const N: usize = 3;
    for i in 0..N as u8 {
        let msg = [b'd', i];
        assert_eq!(echo(client, db, &msg, STEP).await.unwrap(), msg);
    }
    let log = at_least(N, || wp.log()).await;
    assert_eq!(log.len(), N, "{log:#?}");
    for line in &log {
        assert!(line.contains(&format!("dst={db}")), "{line}");
        assert!(line.contains(&format!("identity={client_id}")), "{line}");
    }
    let wp_id = format!("src.identity={}", spiffe(&lab, "waypoint"));
    let db_dst = format!("dst.hbone_addr={db}");
    let served = at_least(N, || access(&lab, "db", &["direction=inbound", &db_dst])).await;
    assert_eq!(served.len(), N, "{served:#?}");
    for line in &served {
        assert!(line.has(&wp_id), "{line}");
    }
}

/// A waypoint described as istiod describes it (`GatewayAddress` `hostname`: the service `wp`
/// selects the waypoint pod), serving the workload `db`, which also backs the service `dbsvc`
/// (no waypoint of its own).
const WORKLOAD_WAYPOINT: &str = r#"
nodes:
  - name: node-1
  - name: node-2
pods:
  - name: client
    serviceAccount: client
    node: node-1
  - name: wp
    serviceAccount: waypoint
    node: node-2
    labels: {app: wp}
    applicationTunnel: {protocol: PROXY, port: 15088}
  - name: db
    serviceAccount: db
    node: node-1
    labels: {app: db}
    waypoint: wp
services:
  - name: wp
    ports: {15008: 15008}
    selector: {app: wp}
  - name: dbsvc
    vips: [10.96.0.40]
    ports: {5432: 8080}
    selector: {app: db}
policies: []
"#;

/// ztunnel's rule: a workload's waypoint applies to traffic addressed to the workload, not to
/// traffic addressed to a service it backs (that goes to the service's waypoint, or direct).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_waypoint_by_hostname_is_for_workload_addressed_traffic_only() {
    let opts = LabOptions {
        proxy: Some(crate::common::mesh::proxy_under_test()),
        mode: ProxyMode::Shared,
        control: ControlMode::ControlPlane,
        ..LabOptions::default()
    };
    let lab = Lab::start(Topology::from_yaml(WORKLOAD_WAYPOINT).unwrap(), opts)
        .await
        .unwrap();
    let _db = Server::start(lab.pod_ns("db").unwrap(), ServerKind::Echo, 8080).unwrap();
    let wp = WaypointServer::start(lab.pod_ns("wp").unwrap(), WAYPOINT_APP_PORT).unwrap();
    let client = lab.pod_ns("client").unwrap();
    let client_id = spiffe(&lab, "client");
    let db: SocketAddr = format!("{}:8080", ip(&lab, "db")).parse().unwrap();
    let db_dst = format!("dst.hbone_addr={db}");

    // Service-addressed: straight to the endpoint, the client's identity arrives there.
    let vip: SocketAddr = "10.96.0.40:5432".parse().unwrap();
    const N: usize = 3;
    for i in 0..N as u8 {
        let msg = [b's', i];
        assert_eq!(echo(client, vip, &msg, STEP).await.unwrap(), msg);
    }
    let from_client = format!("src.identity={client_id}");
    let served = at_least(N, || {
        access(&lab, "db", &["direction=inbound", &db_dst, &from_client])
    })
    .await;
    assert_eq!(served.len(), N, "{served:#?}");
    let to_wp = format!("dst.addr={}:15008", ip(&lab, "wp"));
    assert!(
        access(&lab, "client", &["direction=outbound", &to_wp]).is_empty(),
        "a service-addressed connection went to the workload's waypoint"
    );
    assert!(wp.log().is_empty(), "{:?}", wp.log());

    // Workload-addressed: through the waypoint (found by its service's host name).
    for i in 0..N as u8 {
        let msg = [b'w', i];
        assert_eq!(echo(client, db, &msg, STEP).await.unwrap(), msg);
    }
    let log = at_least(N, || wp.log()).await;
    assert_eq!(log.len(), N, "{log:#?}");
    for line in &log {
        assert!(line.contains(&format!("dst={db}")), "{line}");
        assert!(line.contains(&format!("identity={client_id}")), "{line}");
    }
    let wp_id = format!("src.identity={}", spiffe(&lab, "wp"));
    let served = at_least(N, || {
        access(&lab, "db", &["direction=inbound", &db_dst, &wp_id])
    })
    .await;
    assert_eq!(served.len(), N, "{served:#?}");

    // The client's reporter names the workload it connected to: the endpoint when direct,
    // the waypoint when through it (as ztunnel).
    let text = witness::scrape(lab.proxy_ns_for("client").unwrap())
        .await
        .unwrap();
    let samples = promtext::samples(&text);
    let opened = |dst: &str, svc: &str| {
        promtext::sum(
            &samples,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("destination_workload", dst),
                ("destination_service", svc),
            ],
        )
    };
    assert_eq!(
        opened("db", "dbsvc.default.svc.cluster.local"),
        N as f64,
        "{text}"
    );
    assert_eq!(opened("wp", "unknown"), N as f64, "{text}");

    // A pod with an application tunnel takes a CONNECT to any target (as ztunnel): its app
    // gets the target in the PROXY header and decides.
    let answer = hbone_probe::connect_as(&lab, ("client", "wp"), "192.0.2.77:4321", &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let log = at_least(N + 1, || wp.log()).await;
    assert!(
        log.iter().any(|l| l.contains("dst=192.0.2.77:4321")),
        "{log:#?}"
    );
}
