//! The pod DNS proxy and SOCKS5, end to end: a dedicated-mode ambit in the client pod with DNS
//! capture (the test writes the :53 → 15053 redirect the node agent would), real `dig` and
//! `curl`, and an upstream resolver the test runs in the server pod (nothing leaves the
//! machine).

use crate::common;
// PASSTHROUGH services and endpoints known by host name only (on-demand DNS).
mod ondemand;
use crate::common::zds;

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::Netns;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::mesh::{self, Mesh, MeshOpts, metric, wait_access_line};
use common::{STEP, TempDir, servers};

/// The resolver the pod's `resolv.conf` would name: the server pod, where the test's upstream
/// listens. Queries from the app to it are captured; ambit's own (marked) ones are not.
const RESOLVER: &str = "10.1.0.3";
const RESOLVER_V6: &str = "fd00:1::3";
const EXTERNAL: &str = "external.example.org";
const EXTERNAL_IP: &str = "198.51.100.7";
/// The host name of a workload known by name only (a `ServiceEntry` with `resolution: DNS`);
/// the test's upstream resolves it to the server pod.
const NAMED: &str = "api.example.test";

/// `server.b` (VIPs), `echo.a` (a service in the client's own namespace) and headless `db.b`,
/// all backed by the server pod.
const SERVICES: &str = "\
- name: server
  namespace: b
  hostname: server.b.svc.cluster.local
  vips: [\"/10.96.0.10\", \"/fd00:96::10\"]
  ports: {80: 8080}
- name: echo
  namespace: a
  hostname: echo.a.svc.cluster.local
  vips: [\"/10.96.0.20\"]
  ports: {80: 8080}
- name: db
  namespace: b
  hostname: db.b.svc.cluster.local
  vips: []
  ports: {8080: 8080}
";
const SERVER_BACKS: &str = "  services:
    b/server.b.svc.cluster.local: {80: 8080}
    a/echo.a.svc.cluster.local: {80: 8080}
    b/db.b.svc.cluster.local: {8080: 8080}
";

/// The node agent's DNS redirect, written by hand: the app's port-53 traffic (UDP and TCP) goes
/// to 15053; ambit's own traffic (mark 0x539) passes.
fn install_dns_capture(ns: &Netns) {
    ns.nft(
        "table inet ambit_dns
delete table inet ambit_dns
table inet ambit_dns {
  chain output {
    type nat hook output priority -110; policy accept;
    meta mark 0x539 return
    udp dport 53 redirect to :15053
    tcp dport 53 redirect to :15053
  }
}
",
    )
    .unwrap();
}

/// A tiny authoritative upstream on UDP :53 in `ns`: `external.example.org` and
/// `api.example.test` have one A record each, every other name is NXDOMAIN.
fn upstream(ns: &Netns) -> tokio::task::JoinHandle<()> {
    let std = ns
        .run_in(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:53").map_err(|source| {
                ambit_lab::LabError::Socket {
                    netns: "server".into(),
                    op: "bind udp :53".into(),
                    source,
                }
            })?;
            s.set_nonblocking(true).unwrap();
            Ok(s)
        })
        .unwrap();
    let sock = tokio::net::UdpSocket::from_std(std).unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
            resp.metadata.recursion_desired = req.metadata.recursion_desired;
            resp.add_queries(req.queries.clone());
            let known = |q: &hickory_proto::op::Query| {
                [(EXTERNAL, EXTERNAL_IP), (NAMED, common::SERVER_V4)]
                    .into_iter()
                    .find(|(name, _)| q.name.to_ascii() == format!("{name}."))
            };
            match req.queries.first().map(|q| (q, known(q))) {
                Some((q, Some((_, ip)))) => {
                    if q.query_type == RecordType::A {
                        resp.add_answer(Record::from_rdata(
                            q.name.clone(),
                            120,
                            RData::A(A(ip.parse().unwrap())),
                        ));
                    }
                }
                _ => resp.metadata.response_code = ResponseCode::NXDomain,
            }
            let _ = sock.send_to(&resp.to_vec().unwrap(), peer).await;
        }
    })
}

/// A `dig` run: the status and the answer section as (name, ttl, type, data).
struct Dig {
    status: String,
    answers: Vec<(String, u32, String, String)>,
    text: String,
}

async fn dig(ns: &Netns, args: &[&str]) -> Dig {
    let mut full = vec!["dig", "+tries=1", "+time=5"];
    full.extend_from_slice(args);
    let out = ns.exec(&full, STEP).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{full:?}: {text}");
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let answers = text
        .split(";; ANSWER SECTION:\n")
        .nth(1)
        .map(|sec| {
            sec.lines()
                .take_while(|l| !l.is_empty())
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    Some((
                        f.first()?.to_string(),
                        f.get(1)?.parse().ok()?,
                        f.get(3)?.to_string(),
                        f.get(4)?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Dig {
        status,
        answers,
        text,
    }
}

fn rec(name: &str, ttl: u32, ty: &str, data: &str) -> (String, u32, String, String) {
    (name.into(), ttl, ty.into(), data.into())
}

async fn dns_mesh(test: &str) -> Mesh {
    let dir_conf = std::env::temp_dir().join(format!(
        "{test}-resolv-{}.conf",
        ambit_lab::sys::unique_suffix()
    ));
    std::fs::write(&dir_conf, format!("nameserver {RESOLVER}\n")).unwrap();
    let mesh = Mesh::start(
        test,
        MeshOpts {
            services_yaml: Some(SERVICES.into()),
            server_workload_extra: Some(SERVER_BACKS.into()),
            client_env: vec![
                ("AMBIT_DNS_RESOLV_CONF", dir_conf.display().to_string()),
                ("UNSTABLE_ENABLE_SOCKS5", "true".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    // ambit reads its resolvers once, at startup.
    let _ = std::fs::remove_file(&dir_conf);
    install_dns_capture(&mesh.pair.client);
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_resolves_mesh_names_and_forwards_the_rest() {
    let mesh = dns_mesh("dig_mesh_names").await;
    let _upstream = upstream(&mesh.pair.server);
    let client = &mesh.pair.client;
    let at = format!("@{RESOLVER}");
    let fqdn = "server.b.svc.cluster.local.";

    // Fully qualified, A and AAAA, TTL 30.
    let d = dig(client, &[&at, fqdn, "A"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert_eq!(d.answers, [rec(fqdn, 30, "A", "10.96.0.10")], "{}", d.text);
    let d = dig(client, &[&at, fqdn, "AAAA"]).await;
    assert_eq!(
        d.answers,
        [rec(fqdn, 30, "AAAA", "fd00:96::10")],
        "{}",
        d.text
    );

    // `name.ns`: a CNAME to the service, then its VIP.
    let d = dig(client, &[&at, "server.b", "A"]).await;
    assert_eq!(
        d.answers,
        [
            rec("server.b.", 30, "CNAME", fqdn),
            rec(fqdn, 30, "A", "10.96.0.10")
        ],
        "{}",
        d.text
    );
    // A short name from the client's own namespace, over TCP and over IPv6.
    let echo = "echo.a.svc.cluster.local.";
    let d = dig(client, &[&at, "+tcp", "echo", "A"]).await;
    assert_eq!(
        d.answers,
        [
            rec("echo.", 30, "CNAME", echo),
            rec(echo, 30, "A", "10.96.0.20")
        ],
        "{}",
        d.text
    );
    let d = dig(client, &[&format!("@{RESOLVER_V6}"), echo, "A"]).await;
    assert_eq!(d.answers, [rec(echo, 30, "A", "10.96.0.20")], "{}", d.text);

    // Headless: the endpoints' addresses.
    let db = "db.b.svc.cluster.local.";
    let d = dig(client, &[&at, db, "A"]).await;
    assert_eq!(d.answers, [rec(db, 30, "A", "10.1.0.3")], "{}", d.text);
    let d = dig(client, &[&at, db, "AAAA"]).await;
    assert_eq!(d.answers, [rec(db, 30, "AAAA", "fd00:1::3")], "{}", d.text);

    // Not in the mesh: the upstream's answer, and its NXDOMAIN.
    let d = dig(client, &[&at, EXTERNAL, "A"]).await;
    assert_eq!(d.status, "NOERROR", "{}", d.text);
    assert_eq!(
        d.answers,
        [rec(&format!("{EXTERNAL}."), 120, "A", EXTERNAL_IP)],
        "{}",
        d.text
    );
    let d = dig(client, &[&at, "nothing.example.org", "A"]).await;
    assert_eq!(d.status, "NXDOMAIN", "{}", d.text);

    // 9 queries, 2 of them forwarded, none failed.
    assert_eq!(metric(client, "istio_dns_requests_total").await, 9.0);
    assert_eq!(
        metric(client, "istio_dns_upstream_requests_total").await,
        2.0
    );
    assert_eq!(
        metric(client, "istio_dns_upstream_failures_total").await,
        0.0
    );
    assert_eq!(
        metric(client, "istio_dns_upstream_request_duration_seconds_count").await,
        2.0
    );
    let tcp = metric_line(
        client,
        "istio_dns_requests_total{request_query_type=\"A\",request_protocol=\"tcp\"",
    )
    .await;
    assert!(tcp.ends_with(" 1"), "{tcp}");
}

/// The first metrics line starting with `prefix`.
async fn metric_line(ns: &Netns, prefix: &str) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], 15020));
    let resp = ambit_lab::http_get(ns, addr, "/metrics", STEP)
        .await
        .unwrap();
    resp.body
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {}", resp.body))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_reaches_mesh_services_through_hbone() {
    let mesh = dns_mesh("socks5_mesh").await;
    let _upstream = upstream(&mesh.pair.server);
    let mut app = servers::http(&mesh.pair.server, common::APP_PORT);
    let client_id = mesh::spiffe(mesh::CLIENT_WL);
    let cases = [
        ("--socks5-hostname", "http://server.b.svc.cluster.local/"),
        ("--socks5-hostname", "http://server.b/"),
        ("--socks5", "http://10.1.0.3:8080/"),
        ("--socks5", "http://[fd00:1::3]:8080/"),
    ];
    for (flag, url) in cases {
        let out = common::curl(&mesh.pair.client, &[flag, "127.0.0.1:15080", url]).await;
        assert!(
            out.status.success(),
            "curl {flag} {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            body.starts_with("hello from 8080, you are "),
            "{url}: {body}"
        );
        let seen = app.next_seen().await;
        // The app sees the client pod (the HBONE peer's original source), not loopback.
        assert!(
            seen.peer.ip() == common::client_ip(false) || seen.peer.ip() == common::client_ip(true),
            "{url}: {seen:?}"
        );
    }
    let line = wait_access_line(
        &mesh.server_ambit,
        &["direction=inbound", "dst.hbone_addr=10.1.0.3:8080"],
    )
    .await;
    assert_eq!(line.get("src.identity"), Some(client_id.as_str()), "{line}");
    assert!(
        metric(&mesh.pair.server, "ambit_hbone_inbound_handshakes_total").await >= 1.0,
        "went through 15008"
    );

    // Failures get RFC 1928 codes: refused (nothing on 127.0.0.1:9) and an unknown name.
    assert_eq!(
        socks5_connect(&mesh.pair.client, &Target::V4([127, 0, 0, 1], 9)).await,
        0x05
    );
    assert_eq!(
        socks5_connect(&mesh.pair.client, &Target::Name("nothing.example.org", 80)).await,
        0x04
    );
    assert_eq!(
        socks5_connect(&mesh.pair.client, &Target::Name("server.b", 80)).await,
        0x00
    );
}

enum Target<'a> {
    V4([u8; 4], u16),
    Name(&'a str, u16),
}

/// A raw SOCKS5 CONNECT from inside `ns`; returns the reply code.
async fn socks5_connect(ns: &Netns, target: &Target<'_>) -> u8 {
    let proxy = SocketAddr::from(([127, 0, 0, 1], 15080));
    let mut s = ns.connect(proxy, STEP).await.unwrap();
    let step = Duration::from_secs(10);
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut method = [0u8; 2];
    tokio::time::timeout(step, s.read_exact(&mut method))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(method, [5, 0]);
    let mut req = vec![5, 1, 0];
    match target {
        Target::V4(ip, port) => {
            req.push(1);
            req.extend_from_slice(ip);
            req.extend_from_slice(&port.to_be_bytes());
        }
        Target::Name(name, port) => {
            req.push(3);
            req.push(name.len() as u8);
            req.extend_from_slice(name.as_bytes());
            req.extend_from_slice(&port.to_be_bytes());
        }
    }
    s.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    tokio::time::timeout(step, s.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply[0], 5);
    reply[1]
}

/// In-pod mode: the DNS and SOCKS5 listeners live inside each pod's namespace, the upstream
/// is the node's resolver (here a server in the node namespace, on its loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inpod_pods_get_dns_and_socks5_in_their_namespace() {
    const A: (&str, &str, &str) = ("a", "client", "client");
    const B: (&str, &str, &str) = ("b", "server", "server");
    let dir = TempDir::new("inpod_dns");
    let node = zds::Node::new(&[A, B]);
    let agent = zds::Agent::listen(&dir.path().join("ztunnel.sock"));
    // The server pod, listed last, backs the service instead of backing none.
    let mut config = node
        .config()
        .strip_suffix("  services: {}\n")
        .unwrap()
        .to_string();
    config.push_str("  services:\n    b/server.b.svc.cluster.local: {80: 8080}\n");
    config.push_str("services:\n");
    config.push_str(SERVICES.split("- name: echo").next().unwrap());
    let config_path = dir.path().join("local.yaml");
    std::fs::write(&config_path, config).unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let spec = ambit_lab::ProcessSpec::new("ambit", mesh::AMBIT)
        .env("PROXY_MODE", "shared")
        .env("INPOD_UDS", agent.path.display().to_string())
        .env("FAKE_CA", "true")
        .env("CA_ADDRESS", "")
        .env("XDS_ADDRESS", "")
        .env("LOCAL_XDS_PATH", config_path.display().to_string())
        .env("AMBIT_CA_DIR", dir.path().join("ca").display().to_string())
        .env("AMBIT_DNS_RESOLV_CONF", resolv.display().to_string())
        .env("UNSTABLE_ENABLE_SOCKS5", "true")
        .env("RUST_LOG", "info");
    let ambit = ambit_lab::Process::spawn(Some(&node.ns), &spec, dir.path()).unwrap();
    let conn = agent.accept(Duration::from_secs(20)).await;
    let _upstream = upstream(&node.ns);
    let (a, b) = (&node.pods[0], &node.pods[1]);
    assert_eq!(conn.add(a).await, zds::Answer::Ack, "{}", ambit.tail(30));
    assert_eq!(conn.add(b).await, zds::Answer::Ack, "{}", ambit.tail(30));
    assert_eq!(conn.snapshot().await, zds::Answer::Ack);
    install_dns_capture(&a.ns);
    let mut app = servers::http(&b.ns, common::APP_PORT);

    // The pod's resolver address is the node's side of its veth; the query is captured.
    let fqdn = "server.b.svc.cluster.local.";
    let d = dig(&a.ns, &["@10.1.1.1", "server.b", "A"]).await;
    assert_eq!(
        d.answers,
        [
            rec("server.b.", 30, "CNAME", fqdn),
            rec(fqdn, 30, "A", "10.96.0.10")
        ],
        "{}",
        d.text
    );
    let d = dig(&a.ns, &["@10.1.1.1", "+tcp", fqdn, "A"]).await;
    assert_eq!(d.answers, [rec(fqdn, 30, "A", "10.96.0.10")], "{}", d.text);
    let d = dig(&a.ns, &["@10.1.1.1", EXTERNAL, "A"]).await;
    assert_eq!(
        d.answers,
        [rec(&format!("{EXTERNAL}."), 120, "A", EXTERNAL_IP)],
        "{}",
        d.text
    );

    let out = common::curl(
        &a.ns,
        &["--socks5-hostname", "127.0.0.1:15080", "http://server.b/"],
    )
    .await;
    assert!(
        out.status.success(),
        "curl: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ambit.tail(30)
    );
    assert_eq!(app.next_seen().await.peer.ip(), a.ip);
    let line = wait_access_line(
        &ambit,
        &["direction=inbound", "dst.hbone_addr=10.1.2.2:8080"],
    )
    .await;
    assert_eq!(
        line.get("src.identity"),
        Some(a.spiffe().as_str()),
        "{line}"
    );
    assert_eq!(metric(&node.ns, "istio_dns_requests_total").await, 3.0);
}
