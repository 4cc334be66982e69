//! `PASSTHROUGH` services and endpoints known by host name only, reached from a pod with an
//! unmodified client; the resolver is the test's upstream in the server pod.

use super::{NAMED, RESOLVER, dig, install_dns_capture, rec, upstream};
use crate::common::mesh::{self, Mesh, MeshOpts, wait_access_line};
use crate::common::{self, servers};

/// A `PASSTHROUGH` service at 10.1.0.40 (an address the server pod also answers on) whose
/// endpoint would be the server on another port, and a service `ext` at 10.96.0.70 whose only
/// endpoint is known by host name (`ServiceEntry` with `resolution: DNS`).
const PT_AND_EXT: &str = "\
- name: pt
  namespace: b
  hostname: pt.b.svc.cluster.local
  vips: [\"/10.1.0.40\"]
  ports: {8080: 9999}
  loadBalancer: {routingPreferences: [], mode: Passthrough, healthPolicy: OnlyHealthy}
- name: ext
  namespace: b
  hostname: ext.example.test
  vips: [\"/10.96.0.70\"]
  ports: {80: 8080}
- name: gone
  namespace: b
  hostname: gone.example.test
  vips: [\"/10.96.0.71\"]
  ports: {80: 8080}
";
const PT_BACKS_AND_NAMED: &str = "  services:
    b/pt.b.svc.cluster.local: {8080: 9999}
- uid: cluster1/networking.istio.io/ServiceEntry/b/ext/api.example.test
  name: ext
  namespace: b
  serviceAccount: default
  hostname: api.example.test
  canonicalName: api-example
  workloadIps: []
  protocol: TCP
  services:
    b/ext.example.test: {80: 8080}
- uid: cluster1/networking.istio.io/ServiceEntry/b/gone/missing.example.test
  name: gone
  namespace: b
  serviceAccount: default
  hostname: missing.example.test
  workloadIps: []
  protocol: TCP
  services:
    b/gone.example.test: {80: 8080}
";

/// From the client pod, unmodified curl: a `PASSTHROUGH` service's VIP is reached itself, as
/// plain TCP (not its endpoint, not HBONE); a service whose endpoint is known by name only is
/// reached at the address the resolver gave, each connection counted in
/// `istio_on_demand_dns_total` under the host name and the client's labels; a name the
/// resolver does not know fails the connection with the proxy's error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_and_dns_resolved_endpoints_from_a_pod() {
    // The client pod's proxy: ambit, or the peer named by `AMBIT_LAB_PROXY` (real ztunnel),
    // both reading the pod's own `/etc/resolv.conf`. No DNS capture: the proxy's own lookups
    // go straight to the resolver, as a node proxy's do.
    let peer = std::env::var_os("AMBIT_LAB_PROXY").map(std::path::PathBuf::from);
    let mesh = Mesh::start(
        "ondemand_dns",
        MeshOpts {
            services_yaml: Some(PT_AND_EXT.into()),
            server_workload_extra: Some(PT_BACKS_AND_NAMED.into()),
            client_resolv_conf: Some(format!("nameserver {RESOLVER}\n")),
            client_program: peer.clone(),
            ..Default::default()
        },
    )
    .await;
    let _upstream = upstream(&mesh.pair.server);
    mesh.pair.server.add_addr("eth0", "10.1.0.40/24").unwrap();
    // The VIPs are routed like a cluster's service range (capture takes them before they leave).
    mesh.pair
        .client
        .route(&["10.96.0.0/16", "via", common::SERVER_V4])
        .unwrap();
    let mut app = servers::http(&mesh.pair.server, common::APP_PORT);
    let client = &mesh.pair.client;

    // PASSTHROUGH: the original destination, plain.
    let out = common::curl(client, &["http://10.1.0.40:8080/"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.starts_with(&format!(
            "hello from {}, you are 10.1.0.2:",
            common::APP_PORT
        )),
        "{body}"
    );
    let line = wait_access_line(
        &mesh.client_ambit,
        &["direction=outbound", "dst.addr=10.1.0.40:8080"],
    )
    .await;
    assert_eq!(line.get("dst.hbone_addr"), None, "{line:?}");
    app.next_seen().await;

    // A DNS-resolved endpoint, twice: both connections counted (the second from the cache).
    for _ in 0..2 {
        let out = common::curl(client, &["http://10.96.0.70/"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.starts_with("hello from 8080, you are 10.1.0.2:"),
            "{body}"
        );
        app.next_seen().await;
    }
    wait_access_line(
        &mesh.client_ambit,
        &[
            "direction=outbound",
            &format!("dst.addr={}:8080", common::SERVER_V4),
        ],
    )
    .await;

    // A name the resolver does not know: the connection fails, the error names it.
    let out = common::curl(client, &["http://10.96.0.71/"]).await;
    assert!(!out.status.success());
    if peer.is_none() {
        mesh::wait_log_line(
            &mesh.client_ambit,
            &["on-demand DNS lookup of missing.example.test (endpoint b/gone) failed"],
        )
        .await;
    }

    let text = mesh::scrape(client).await;
    let counted = |host: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("istio_on_demand_dns_total{")
                    && l.contains(&format!("hostname=\"{host}\""))
            })
            .unwrap_or_else(|| panic!("no on-demand DNS count for {host}: {text}"))
            .to_string()
    };
    let named = counted(NAMED);
    // The labels both proxies agree on with this config (it names no trust domain nor
    // workload name: ambit fills Istio's defaults, ztunnel leaves them empty; COMPAT.md).
    for label in ["source_workload_namespace=\"a\",", "/ns/a/sa/client\","] {
        assert!(named.contains(label), "{label} in {named}");
    }
    assert!(named.ends_with("} 2"), "{named}");
    // The connections' destination is the named workload, not the pod owning the address.
    let opened = text
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("destination_canonical_service=\"api-example\"")
        })
        .unwrap_or_else(|| panic!("no connection to the named workload: {text}"));
    assert!(
        opened.contains("destination_workload_namespace=\"b\""),
        "{opened}"
    );
    assert!(opened.ends_with("} 2"), "{opened}");
    assert!(counted("missing.example.test").ends_with("} 1"), "{text}");
}

/// An IPv4-only service with both VIP families, and an IPv6-only headless service whose pod
/// (the server) has both addresses.
const SINGLE_FAMILY: &str = "\
- name: v4only
  namespace: b
  hostname: v4only.b.svc.cluster.local
  vips: [\"/10.96.0.80\", \"/fd00:96::80\"]
  ports: {80: 8080}
  ipFamilies: IPv4
- name: v6head
  namespace: b
  hostname: v6head.b.svc.cluster.local
  vips: []
  ports: {8080: 8080}
  ipFamilies: IPv6
";
const V6HEAD_BACKS: &str = "  services:
    b/v6head.b.svc.cluster.local: {8080: 8080}
";

/// `dig` through the pod's DNS proxy: a single-family service answers its family only, the
/// other is an empty authoritative NOERROR (no CNAME, not NXDOMAIN), as ztunnel answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_family_services_answer_their_family_only() {
    let peer = std::env::var_os("AMBIT_LAB_PROXY").map(std::path::PathBuf::from);
    let mesh = Mesh::start(
        "ip_families",
        MeshOpts {
            services_yaml: Some(SINGLE_FAMILY.into()),
            server_workload_extra: Some(V6HEAD_BACKS.into()),
            client_resolv_conf: Some(format!("nameserver {RESOLVER}\n")),
            client_program: peer,
            ..Default::default()
        },
    )
    .await;
    let _upstream = upstream(&mesh.pair.server);
    install_dns_capture(&mesh.pair.client);
    let client = &mesh.pair.client;
    let at = format!("@{RESOLVER}");
    let v4 = "v4only.b.svc.cluster.local.";
    let v6 = "v6head.b.svc.cluster.local.";
    for (name, qtype, want) in [
        (v4, "A", Some("10.96.0.80")),
        (v4, "AAAA", None),
        (v6, "A", None),
        (v6, "AAAA", Some(common::SERVER_V6)),
        ("v4only.b.", "AAAA", None),
    ] {
        let d = dig(client, &[&at, name, qtype]).await;
        assert_eq!(d.status, "NOERROR", "{name} {qtype}: {}", d.text);
        let want: Vec<_> = want
            .map(|ip| rec(name, 30, qtype, ip))
            .into_iter()
            .collect();
        assert_eq!(d.answers, want, "{name} {qtype}: {}", d.text);
    }
}
