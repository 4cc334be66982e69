//! Two networks joined only through an east-west gateway (issue #8, "Must show"): a pod on
//! network 1 reaches a service whose only endpoint is on network 2 by double HBONE, with
//! unmodified clients (`curl`, `nc`):
//! - the bytes arrive (an HTTP answer, an echo);
//! - the gateway's log shows the outer authority `hostname:port` and the client's identity;
//! - the final server's node proxy logs the client's SPIFFE identity (the inner TLS is the
//!   client's own, end to end through the gateway), and every connection completes cleanly;
//! - a direct connection from network 1 to the network-2 pod's address fails (the networks are
//!   isolated; only the gateway joins them).
//!
//! Both ways the lab configures node proxies are covered: its control plane (xDS + CA) and the
//! local config file with the built-in CA; and both proxy modes (shared node proxies, dedicated
//! per-pod proxies).

use std::time::Duration;

use ambit_lab::compat::hbone_probe;
use ambit_lab::traffic::proxied::header_echo;
use ambit_lab::traffic::{Server, ServerKind, WaypointServer, echo};
use ambit_lab::{ControlMode, Lab, LabOptions, ProxyMode, Topology};
use ambit_lab::{accesslog, promtext, witness};

const STEP: Duration = Duration::from_secs(20);
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const AUTHORITY: &str = "web.default.svc.cluster.local:80";

const TOPOLOGY: &str = r#"
nodes:
  - name: node-1
    network: net1
  - name: node-2
    network: net2
eastWestGateways:
  - network: net2
pods:
  - name: client
    serviceAccount: client
    node: node-1
  - name: web-2
    serviceAccount: web
    node: node-2
    labels: {app: web}
  - name: waypoint
    serviceAccount: waypoint
    node: node-2
    labels: {app: waypoint}
    applicationTunnel: {protocol: PROXY, port: 15088}
  - name: shop-2
    serviceAccount: shop
    node: node-2
    labels: {app: shop}
  - name: plain
    serviceAccount: plain
    node: node-2
    captured: false
  - name: tunneled-2
    serviceAccount: tunneled
    node: node-2
    labels: {app: tun}
    applicationTunnel: {protocol: PROXY, port: 9000}
services:
  - name: web
    vips: [10.96.0.10]
    ports: {80: 8080, 81: 8081}
    selector: {app: web}
  - name: shop
    vips: [10.96.0.11]
    ports: {80: 8080}
    selector: {app: shop}
    waypoint: waypoint
  - name: waypoint
    ports: {15008: 15008}
    selector: {app: waypoint}
  - name: tun
    vips: [10.96.0.12]
    ports: {80: 8080}
    selector: {app: tun}
"#;

async fn lab(control: ControlMode, mode: ProxyMode) -> Lab {
    let opts = LabOptions {
        proxy: Some(crate::common::mesh::proxy_under_test()),
        ca_root: crate::common::mesh::ca_root_under_test(),
        mode,
        control,
        ..LabOptions::default()
    };
    Lab::start(Topology::from_yaml(TOPOLOGY).unwrap(), opts)
        .await
        .unwrap()
}

/// Waits (bounded) for a line of `lab`'s proxy for `pod` containing all of `needles`.
async fn proxy_line(lab: &Lab, pod: &str, needles: &[&str]) -> Option<String> {
    for _ in 0..200 {
        let log = lab.proxy_for(pod).unwrap().log();
        if let Some(l) = accesslog::access_lines(&log, needles).into_iter().next() {
            return Some(l.raw);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn double_hbone_through_the_gateway(control: ControlMode, mode: ProxyMode) {
    let lab = lab(control, mode).await;
    let web = lab.pod_ns("web-2").unwrap();
    let _http = Server::start(web, ServerKind::Http, 8080).unwrap();
    let _echo = Server::start(web, ServerKind::Echo, 8081).unwrap();
    let client = lab.pod_ns("client").unwrap();
    let gw = lab.eastwest_gateway("net2").expect("a gateway into net2");
    let web_ip = lab.topology().pod("web-2").unwrap().ip;

    // Isolation first: network 1 cannot reach the network-2 pod directly.
    let direct = format!("http://{web_ip}:8080/");
    let out = client
        .exec(&["curl", "-sS", "-m", "5", &direct], STEP)
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "a direct connection to {web_ip} from network 1 must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // curl to the service VIP: its only endpoint is on net2, behind the gateway.
    let out = client
        .exec(&["curl", "-sS", "-m", "10", "http://10.96.0.10:80/"], STEP)
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl through the gateway failed: {}\nclient proxy:\n{}\ngateway: {:?}",
        String::from_utf8_lossy(&out.stderr),
        lab.proxy_for("client").unwrap().tail(20),
        gw.lines()
    );
    assert!(body.starts_with("peer "), "{body:?}");
    println!("the app saw: {body}");

    // nc to the echo port: exact bytes back.
    let msg = "double hbone from net1 to net2";
    let script = format!("printf '{msg}' | nc -N -w 10 10.96.0.10 81");
    let out = client.exec(&["sh", "-c", &script], STEP).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        msg,
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The gateway saw the service's hostname:port and the client's identity.
    let line = gw
        .wait_line(
            &[&format!("authority={AUTHORITY}"), CLIENT_ID, "status=200"],
            STEP,
        )
        .await;
    assert!(line.is_some(), "gateway log: {:?}", gw.lines());
    let line = gw
        .wait_line(
            &["authority=web.default.svc.cluster.local:81", CLIENT_ID],
            STEP,
        )
        .await;
    assert!(line.is_some(), "gateway log: {:?}", gw.lines());
    println!("gateway: {}", line.unwrap_or_default());

    // The final server's node proxy authenticated the client itself (inner TLS).
    let line = proxy_line(
        &lab,
        "web-2",
        &[
            "direction=inbound",
            &format!("src.identity={CLIENT_ID}"),
            // The inner CONNECT names the service, not the pod.
            &format!("dst.hbone_addr={AUTHORITY}"),
            &format!("dst.addr={web_ip}:15008"),
        ],
    )
    .await;
    assert!(
        line.is_some(),
        "server node log:\n{}",
        lab.proxy_for("web-2").unwrap().tail(30)
    );
    println!("server node: {}", line.unwrap_or_default());
    let echo_line = proxy_line(
        &lab,
        "web-2",
        &[
            "direction=inbound",
            "dst.hbone_addr=web.default.svc.cluster.local:81",
        ],
    )
    .await;
    assert!(
        echo_line.is_some(),
        "no inbound log line for the echo connection"
    );
    // Labels from baggage (issue #14): neither side can look the other up in its state (the
    // server is on another network; the client's address is the gateway's), so each reporter
    // takes its peer's labels from the peer's `baggage` (request / 200 response), as ztunnel.
    let web_proxy = lab.proxy_ns_for("web-2").unwrap();
    let client_proxy = lab.proxy_ns_for("client").unwrap();
    let opened = "istio_tcp_connections_opened_total";
    let want_src = [
        ("reporter", "destination"),
        ("source_workload", "client"),
        ("source_workload_namespace", "default"),
        ("source_principal", CLIENT_ID),
        ("destination_workload", "web-2"),
    ];
    let want_dst = [
        ("reporter", "source"),
        ("destination_workload", "web-2"),
        ("destination_workload_namespace", "default"),
        ("destination_service", "web.default.svc.cluster.local"),
    ];
    for (ns, want) in [(web_proxy, &want_src[..]), (client_proxy, &want_dst[..])] {
        let text = witness::scrape(ns).await.unwrap();
        let n = promtext::sum(&promtext::samples(&text), opened, want);
        assert!(n >= 2.0, "{want:?}: {n}\n{text}");
    }

    // Both connections closed cleanly end to end: the client's side of the outer stream is
    // finished, not reset, so the gateway delivers the inner TLS close to the server.
    let log = lab.proxy_for("web-2").unwrap().log();
    let failed: Vec<String> = accesslog::access_lines(&log, &["direction=inbound", "error="])
        .into_iter()
        .map(|l| l.raw)
        .collect();
    assert!(failed.is_empty(), "inbound connections failed: {failed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_pod_on_net1_reaches_net2_through_the_eastwest_gateway() {
    double_hbone_through_the_gateway(ControlMode::ControlPlane, ProxyMode::Shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_files_pod_on_net1_reaches_net2_through_the_eastwest_gateway() {
    double_hbone_through_the_gateway(ControlMode::LocalFiles, ProxyMode::Shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_proxies_pod_on_net1_reaches_net2_through_the_eastwest_gateway() {
    double_hbone_through_the_gateway(ControlMode::ControlPlane, ProxyMode::Dedicated).await;
}

/// A service whose waypoint is on another network (issue #14; the waypoint named by its
/// service's host name, as istiod does): as ztunnel does it, the client
/// reaches the waypoint by double HBONE through that network's gateway, asking for the
/// *service*; the gateway hands it to the waypoint, which forwards to the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_on_net2_is_reached_through_the_eastwest_gateway() {
    let lab = lab(ControlMode::ControlPlane, ProxyMode::Shared).await;
    let _shop = Server::start(lab.pod_ns("shop-2").unwrap(), ServerKind::Echo, 8080).unwrap();
    let wp = WaypointServer::start(lab.pod_ns("waypoint").unwrap(), 15088).unwrap();
    let client = lab.pod_ns("client").unwrap();
    let gw = lab.eastwest_gateway("net2").expect("a gateway into net2");
    let vip: std::net::SocketAddr = "10.96.0.11:80".parse().unwrap();
    const N: usize = 3;
    for i in 0..N as u8 {
        let msg = [b'r', i, 0xfe];
        let back = echo(client, vip, &msg, STEP).await;
        assert_eq!(
            back.as_deref().ok(),
            Some(&msg[..]),
            "{back:?}\nclient proxy:\n{}\ngateway: {:?}",
            lab.proxy_for("client").unwrap().tail(20),
            gw.lines()
        );
    }
    // The gateway saw the service's authority and the client's identity (outer tunnel).
    let line = gw
        .wait_line(
            &[
                "authority=shop.default.svc.cluster.local:80",
                CLIENT_ID,
                "status=200",
            ],
            STEP,
        )
        .await;
    assert!(line.is_some(), "gateway log: {:?}", gw.lines());
    // The waypoint saw each connection, for the service's VIP, from the client (inner TLS).
    let mut log = wp.log();
    for _ in 0..200 {
        if log.len() >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = wp.log();
    }
    assert_eq!(log.len(), N, "{log:#?}");
    for line in &log {
        assert!(line.contains("dst=10.96.0.11:80"), "{line}");
        assert!(line.contains(&format!("identity={CLIENT_ID}")), "{line}");
    }
    // The endpoint was reached from the waypoint, on its own network.
    let wp_id = format!(
        "src.identity={}",
        lab.topology().pod("waypoint").unwrap().spiffe()
    );
    let line = proxy_line(&lab, "shop-2", &["direction=inbound", &wp_id]).await;
    assert!(
        line.is_some(),
        "shop-2 node log:\n{}",
        lab.proxy_for("shop-2").unwrap().tail(30)
    );
}

/// An endpoint with a PROXY application tunnel, reached by host name through the gateway: the
/// header cannot carry the name, so it names the service's VIP and port (as ztunnel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_tunnel_behind_the_gateway_is_told_the_service_vip() {
    let lab = lab(ControlMode::ControlPlane, ProxyMode::Shared).await;
    let client = lab.pod_ns("client").unwrap();
    let _tun = Server::start(
        lab.pod_ns("tunneled-2").unwrap(),
        ServerKind::ProxyHeader,
        9000,
    )
    .unwrap();
    let tun_vip: std::net::SocketAddr = "10.96.0.12:80".parse().unwrap();
    let (info, back) = header_echo(client, tun_vip, b"named", STEP).await.unwrap();
    assert_eq!(back, b"named");
    assert_eq!(info.dst, tun_vip, "{info:?}");
    assert_eq!(info.identity.as_deref(), Some(CLIENT_ID), "{info:?}");
}

/// A peer the destination cannot look up (the probe's TCP source is its node, no workload's
/// address) is labelled from its request `baggage`; the `200` carries the destination's own
/// baggage; a `forwarded` `host=` naming no service of the destination is not taken as a label
/// (the service is guessed by port instead), and plaintext inbound guesses it by port too; all
/// as ztunnel does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baggage_both_ways_and_a_forged_forwarded_host_is_not_a_label() {
    let lab = lab(ControlMode::ControlPlane, ProxyMode::Shared).await;
    let web = lab.pod_ns("web-2").unwrap();
    let _http = Server::start(web, ServerKind::Http, 8080).unwrap();
    let web_ip = lab.topology().pod("web-2").unwrap().ip;
    let answer = hbone_probe::connect_as(
        &lab,
        ("client", "web-2"),
        &format!("{web_ip}:8080"),
        &[
            (
                "baggage",
                "k8s.cluster.name=far,k8s.namespace.name=elsewhere,k8s.deployment.name=probe-wl,service.name=probe-app,service.version=v9",
            ),
            ("forwarded", "for=\"10.9.9.9:4000\";host=evil.example.com"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);
    let baggage = answer
        .headers
        .get("baggage")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    for part in [
        "k8s.namespace.name=default",
        "k8s.pod.name=web-2",
        "service.name=web",
    ] {
        assert!(
            baggage.split(',').any(|p| p == part),
            "{part} in {baggage:?}"
        );
    }
    let want = [
        ("reporter", "destination"),
        ("source_workload", "probe-wl"),
        ("source_canonical_service", "probe-app"),
        ("source_canonical_revision", "v9"),
        ("source_workload_namespace", "elsewhere"),
        ("source_cluster", "far"),
        ("source_principal", CLIENT_ID),
        ("destination_service", "web.default.svc.cluster.local"),
    ];
    let ns = lab.proxy_ns_for("web-2").unwrap();
    let mut text = String::new();
    for _ in 0..50 {
        text = witness::scrape(ns).await.unwrap();
        if promtext::sum(
            &promtext::samples(&text),
            "istio_tcp_connections_opened_total",
            &want,
        ) >= 1.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let samples = promtext::samples(&text);
    assert_eq!(
        promtext::sum(&samples, "istio_tcp_connections_opened_total", &want),
        1.0,
        "{text}"
    );
    assert!(!text.contains("evil.example.com"), "{text}");

    // Plaintext inbound (an uncaptured pod, so the node proxy's 15006): no `forwarded` at all,
    // the service is guessed from the port the connection was delivered to, as ztunnel does.
    let plain = lab.pod_ns("plain").unwrap();
    let out = plain
        .exec(
            &["curl", "-sS", "-m", "10", &format!("http://{web_ip}:8080/")],
            STEP,
        )
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = [
        ("reporter", "destination"),
        ("source_workload", "plain"),
        ("destination_workload", "web-2"),
        ("destination_service", "web.default.svc.cluster.local"),
        ("destination_service_name", "web"),
    ];
    let mut n = 0.0;
    for _ in 0..50 {
        text = witness::scrape(ns).await.unwrap();
        n = promtext::sum(
            &promtext::samples(&text),
            "istio_tcp_connections_opened_total",
            &want,
        );
        if n >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 1.0, "{text}");
}
