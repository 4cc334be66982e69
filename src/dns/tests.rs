use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use super::*;
use crate::core::Identity;
use crate::state::{NetworkAddress, Service, StateWriter, Update, Visibility, Workload};

const CD: &str = "cluster.local";

fn scope(ns: &str) -> LookupScope {
    LookupScope {
        namespace: ns.into(),
        network: String::new(),
        cluster_domain: CD.into(),
        preferred_namespace: None,
    }
}

fn service(ns: &str, name: &str, vips: &[&str]) -> Service {
    Service {
        name: name.into(),
        namespace: ns.into(),
        hostname: format!("{name}.{ns}.svc.{CD}"),
        vips: vips
            .iter()
            .map(|v| NetworkAddress {
                network: String::new(),
                address: v.parse().unwrap(),
            })
            .collect(),
        ports: BTreeMap::from([(80, 8080)]),
        ..Default::default()
    }
}

fn endpoint(ns: &str, name: &str, svc: &Service, ips: &[&str]) -> Workload {
    let mut w = Workload::new(
        format!("uid-{name}"),
        name,
        Identity::new("cluster.local", ns, "default").unwrap(),
    );
    w.workload_ips = ips.iter().map(|i| i.parse().unwrap()).collect();
    w.services.insert(svc.key(), BTreeMap::new());
    w
}

/// A mesh with `server` in `b` (VIPs v4+v6), headless `db` in `b`, a namespace-private
/// `secret` in `c` and a ServiceEntry-like `*.example.com`.
fn mesh() -> (StateWriter, StateView) {
    let (writer, view) = StateWriter::new();
    let server = service("b", "server", &["10.96.0.10", "fd00:96::10"]);
    let db = service("b", "db", &[]);
    let mut secret = service("c", "secret", &["10.96.0.30"]);
    secret.visibility = Visibility::Namespace;
    let mut wildcard = service("b", "ext", &["10.96.0.40"]);
    wildcard.hostname = "*.example.com".into();
    let update = Update::default()
        .upsert(endpoint("b", "db-0", &db, &["10.1.0.5"]))
        .upsert(endpoint("b", "db-1", &db, &["10.1.0.6", "fd00:1::6"]))
        .upsert(server)
        .upsert(db)
        .upsert(secret)
        .upsert(wildcard);
    writer.apply(update);
    (writer, view)
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|i| i.parse().unwrap()).collect()
}

#[test]
fn candidates_follow_the_search_domains() {
    let s = scope("a");
    assert_eq!(
        s.candidates("server."),
        [
            "server",
            "server.a.svc.cluster.local",
            "server.svc.cluster.local",
            "server.cluster.local"
        ]
    );
    let c = s.candidates("Server.B.a.svc.cluster.local");
    assert_eq!(c[0], "server.b.a.svc.cluster.local");
    assert!(
        c.contains(&"server.b.svc.cluster.local".to_string()),
        "{c:?}"
    );
}

#[test]
fn mesh_names_resolve_to_vips_endpoints_or_nothing() {
    let (_w, view) = mesh();
    let s = scope("a");
    let full = "server.b.svc.cluster.local";
    for q in [
        "server.b",
        "server.b.svc",
        full,
        "SERVER.b.svc.cluster.local.",
    ] {
        let m = lookup(&view, &s, q).unwrap_or_else(|| panic!("{q}"));
        assert_eq!(m.hostname, full, "{q}");
        assert_eq!(m.addrs, ips(&["10.96.0.10", "fd00:96::10"]), "{q}");
    }
    // Short name: only from the service's own namespace.
    assert!(lookup(&view, &s, "server").is_none());
    assert_eq!(lookup(&view, &scope("b"), "server").unwrap().hostname, full);
    // Headless: the endpoints' addresses.
    let db = lookup(&view, &s, "db.b").unwrap();
    assert_eq!(db.addrs, ips(&["10.1.0.5", "10.1.0.6", "fd00:1::6"]));
    // Namespace visibility.
    assert!(lookup(&view, &s, "secret.c").is_none());
    assert!(lookup(&view, &scope("c"), "secret").is_some());
    // Wildcards cover deeper names.
    let ext = lookup(&view, &s, "api.eu.example.com").unwrap();
    assert_eq!(ext.hostname, "*.example.com");
    assert!(lookup(&view, &s, "example.org").is_none());
}

#[test]
fn a_host_in_several_namespaces_prefers_own_then_preferred_namespace() {
    let (writer, view) = StateWriter::new();
    let mut update = Update::default();
    for (ns, vip) in [("b", "10.96.1.2"), ("p", "10.96.1.3"), ("z", "10.96.1.4")] {
        let mut svc = service(ns, "shared", &[vip]);
        svc.hostname = "shared.example.com".into();
        update = update.upsert(svc);
    }
    writer.apply(update);
    let q = "shared.example.com";
    let own = lookup(&view, &scope("z"), q).unwrap();
    let mut preferring = scope("z");
    preferring.preferred_namespace = Some("p".into());
    assert_eq!(own.addrs, ips(&["10.96.1.4"]));
    assert_eq!(lookup(&view, &preferring, q).unwrap().addrs, own.addrs);
    let mut preferring = scope("a");
    preferring.preferred_namespace = Some("p".into());
    assert_eq!(
        lookup(&view, &preferring, q).unwrap().addrs,
        ips(&["10.96.1.3"])
    );
    // Without a preference (or an absent one): the first public service.
    let first = lookup(&view, &scope("a"), q).unwrap().addrs;
    preferring.preferred_namespace = Some("nowhere".into());
    assert_eq!(lookup(&view, &preferring, q).unwrap().addrs, first);
}

/// A resolver for client namespace `a` in front of `upstream`.
fn inputs(view: StateView, upstream: Vec<SocketAddr>) -> DnsInputs {
    let fwd = Forwarder::new(upstream, Duration::from_millis(500), None);
    DnsInputs {
        resolver: Resolver::new(view, scope("a"), true, Arc::new(fwd)),
        pod_name: "client".into(),
        metrics: DnsMetrics::default(),
    }
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

async fn ask(inputs: &DnsInputs, name: &str, qtype: RecordType) -> Message {
    let bytes = query(name, qtype);
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        server::respond(inputs, &bytes, Transport::Udp),
    )
    .await
    .unwrap()
    .unwrap();
    let msg = Message::from_vec(&answer).unwrap();
    assert_eq!(msg.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
    msg
}

/// A loopback upstream: `known.test` has A 192.0.2.7, everything else is NXDOMAIN.
async fn upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let req = Message::from_vec(&buf[..n]).unwrap();
            let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
            resp.add_queries(req.queries.clone());
            let q = &req.queries[0];
            if q.name.to_ascii() == "known.test." && q.query_type == RecordType::A {
                resp.add_answer(Record::from_rdata(
                    q.name.clone(),
                    300,
                    RData::A(A("192.0.2.7".parse().unwrap())),
                ));
            } else if q.name.to_ascii() != "known.test." {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
            sock.send_to(&resp.to_vec().unwrap(), peer).await.unwrap();
        }
    });
    (addr, task)
}

fn answers(msg: &Message) -> Vec<(String, u32, String)> {
    msg.answers
        .iter()
        .map(|r| (r.name.to_ascii(), r.ttl, r.data.to_string()))
        .collect()
}

#[tokio::test]
async fn mesh_answers_carry_cname_and_ttl_30() {
    let (_w, view) = mesh();
    let inputs = inputs(view, Vec::new());
    let msg = ask(&inputs, "server.b.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(msg.metadata.authoritative);
    assert_eq!(
        answers(&msg),
        [
            (
                "server.b.".to_string(),
                30,
                "server.b.svc.cluster.local.".to_string()
            ),
            (
                "server.b.svc.cluster.local.".to_string(),
                30,
                "10.96.0.10".to_string()
            ),
        ]
    );
    let msg = ask(&inputs, "server.b.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(
        answers(&msg),
        [(
            "server.b.svc.cluster.local.".to_string(),
            30,
            "fd00:96::10".to_string()
        )]
    );
    let text = {
        let mut reg = prometheus_client::registry::Registry::default();
        inputs.metrics.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    };
    assert!(
        text.contains("istio_dns_requests_total{request_query_type=\"A\",request_protocol=\"udp\",source_canonical_service=\"unknown\",source_canonical_revision=\"unknown\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("istio_dns_upstream_requests_total{"),
        "{text}"
    );
}

#[tokio::test]
async fn other_names_are_forwarded_and_failures_are_servfail() {
    let (_w, view) = mesh();
    let (up, task) = upstream().await;
    let inputs = inputs(view.clone(), vec![up]);
    let msg = ask(&inputs, "known.test.", RecordType::A).await;
    assert_eq!(
        answers(&msg),
        [("known.test.".to_string(), 300, "192.0.2.7".to_string())]
    );
    let msg = ask(&inputs, "missing.test.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    // Non-address types for mesh names go upstream too.
    let msg = ask(&inputs, "server.b.svc.cluster.local.", RecordType::MX).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    // SOCKS5's view: mesh first, then upstream.
    assert_eq!(
        inputs.resolver.lookup_ip("server.b").await.unwrap(),
        ips(&["10.96.0.10", "fd00:96::10"])
    );
    assert_eq!(
        inputs.resolver.lookup_ip("known.test").await.unwrap(),
        ips(&["192.0.2.7"])
    );
    let err = inputs.resolver.lookup_ip("missing.test").await.unwrap_err();
    assert!(matches!(err, DnsError::Rejected { .. }), "{err}");
    task.abort();

    // A dead upstream: SERVFAIL, counted as a failure.
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let inputs = inputs_with(view, vec![dead.local_addr().unwrap()]);
    let msg = ask(&inputs, "known.test.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    let labels = DnsLabels {
        request_query_type: "A".into(),
        request_protocol: "udp",
        source_canonical_service: "unknown".into(),
        source_canonical_revision: "unknown".into(),
    };
    assert_eq!(
        inputs
            .metrics
            .upstream_requests
            .get_or_create(&labels)
            .get(),
        1
    );
    assert_eq!(
        inputs
            .metrics
            .upstream_failures
            .get_or_create(&labels)
            .get(),
        1
    );
}

fn inputs_with(view: StateView, upstream: Vec<SocketAddr>) -> DnsInputs {
    inputs(view, upstream)
}

#[tokio::test]
async fn servers_answer_over_udp_and_tcp() {
    let (_w, view) = mesh();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (uaddr, taddr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let server = DnsServer::new(inputs(view, Vec::new()), vec![udp], vec![tcp]);
    let (trigger, watcher) = crate::lifecycle::drain_channel();
    let task = tokio::spawn(server.run(watcher));

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .send_to(&query("server.b.", RecordType::A), uaddr)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let msg = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(msg.answers.len(), 2);

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(taddr).await.unwrap();
    for _ in 0..2 {
        let q = query("db.b.svc.cluster.local.", RecordType::A);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).await.unwrap();
        let len = tokio::time::timeout(Duration::from_secs(5), s.read_u16())
            .await
            .unwrap()
            .unwrap();
        let mut body = vec![0u8; usize::from(len)];
        s.read_exact(&mut body).await.unwrap();
        let msg = Message::from_vec(&body).unwrap();
        let got: Vec<String> = msg.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(got, ["10.1.0.5", "10.1.0.6"]);
    }
    tokio::time::timeout(
        Duration::from_secs(5),
        trigger.drain(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn resolv_conf_nameservers() {
    let text = "# comment\nsearch a.svc.cluster.local\nnameserver 10.0.0.10\nnameserver fe80::1%eth0\nnameserver ::1\noptions ndots:5\n";
    assert_eq!(
        parse_resolv_conf(text.as_bytes()).unwrap(),
        [
            "10.0.0.10:53".parse::<SocketAddr>().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
}

#[test]
fn resolv_conf_takes_common_options_and_refuses_unknown_directives() {
    // systemd-resolved's stub file.
    let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n";
    assert_eq!(
        parse_resolv_conf(stub.as_bytes()).unwrap(),
        ["127.0.0.53:53".parse::<SocketAddr>().unwrap()]
    );
    let e = parse_resolv_conf(b"nameserver 10.0.0.10\nbogus 1\n").unwrap_err();
    assert_eq!(e.to_string(), "line 2: unknown directive");
    let e = parse_resolv_conf(b"nameserver not-an-ip\n").unwrap_err();
    assert_eq!(e.to_string(), "line 1: invalid IP address");
}

/// ztunnel's rule: a single-family service answers only its family, even where its VIPs or
/// (headless) its endpoints have both; the other family is an empty authoritative NOERROR
/// with no CNAME; `Dual` and unset answer both.
#[tokio::test]
async fn single_family_services_answer_their_family_only() {
    use crate::state::IpFamilies;
    let (writer, view) = StateWriter::new();
    let mut v4 = service("b", "v4", &["10.96.0.50", "fd00:96::50"]);
    v4.ip_families = IpFamilies::Ipv4Only;
    let mut v6 = service("b", "v6", &[]);
    v6.ip_families = IpFamilies::Ipv6Only;
    let mut dual = service("b", "dual", &["10.96.0.52", "fd00:96::52"]);
    dual.ip_families = IpFamilies::Dual;
    writer.apply(
        Update::default()
            .upsert(endpoint("b", "v6-0", &v6, &["10.1.0.9", "fd00:1::9"]))
            .upsert(v4)
            .upsert(v6)
            .upsert(dual),
    );
    let s = scope("a");
    assert_eq!(
        lookup(&view, &s, "v4.b").unwrap().addrs,
        ips(&["10.96.0.50"])
    );
    assert_eq!(
        lookup(&view, &s, "v6.b").unwrap().addrs,
        ips(&["fd00:1::9"])
    );
    assert_eq!(
        lookup(&view, &s, "dual.b").unwrap().addrs,
        ips(&["10.96.0.52", "fd00:96::52"])
    );
    let inputs = inputs(view, Vec::new());
    let full = |n: &str| format!("{n}.b.svc.cluster.local.");
    for (name, qtype, want) in [
        ("v4", RecordType::A, Some("10.96.0.50")),
        ("v4", RecordType::AAAA, None),
        ("v6", RecordType::A, None),
        ("v6", RecordType::AAAA, Some("fd00:1::9")),
        ("dual", RecordType::A, Some("10.96.0.52")),
        ("dual", RecordType::AAAA, Some("fd00:96::52")),
    ] {
        let msg = ask(&inputs, &full(name), qtype).await;
        assert_eq!(
            msg.metadata.response_code,
            ResponseCode::NoError,
            "{name} {qtype}"
        );
        assert!(msg.metadata.authoritative, "{name} {qtype}");
        let want: Vec<(String, u32, String)> = want
            .map(|ip| (full(name), 30, ip.to_string()))
            .into_iter()
            .collect();
        assert_eq!(answers(&msg), want, "{name} {qtype}");
    }
    // Through a search domain: still no CNAME when the family has no address.
    let msg = ask(&inputs, "v4.b.", RecordType::AAAA).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(msg.answers.is_empty(), "{:?}", answers(&msg));
}
