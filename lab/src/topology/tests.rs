//! Topology parsing: allocation, selection, and one-line errors naming entry and field.

use super::*;

const TWO_NODES: &str = "
nodes: [{name: n1}, {name: n2}]
pods:
  - {name: a, node: n1, serviceAccount: sa-a, labels: {app: srv}}
  - {name: b, node: n2, ip: 10.244.2.2, labels: {app: srv}}
  - {name: c, node: n2, captured: false}
services:
  - {name: web, ports: {80: 8080}, selector: {app: srv}}
  - {name: one, ports: {81: 8081}, endpoints: [a], vips: [10.96.1.1]}
";

#[test]
fn allocates_addresses_and_selects_endpoints() {
    let t = Topology::from_yaml(TWO_NODES).unwrap();
    assert_eq!(t.nodes[0].underlay_ip, Ipv4Addr::new(172, 30, 0, 2));
    assert_eq!(t.nodes[1].pod_cidr.to_string(), "10.244.2.0/24");
    assert_eq!(t.pod("a").unwrap().ip, Ipv4Addr::new(10, 244, 1, 2));
    // The given address is skipped by allocation on the same node.
    assert_eq!(t.pod("b").unwrap().ip, Ipv4Addr::new(10, 244, 2, 2));
    assert_eq!(t.pod("c").unwrap().ip, Ipv4Addr::new(10, 244, 2, 3));
    assert!(!t.pod("default/c").unwrap().captured);
    assert_eq!(
        t.pod("a").unwrap().spiffe(),
        "spiffe://cluster.local/ns/default/sa/sa-a"
    );
    assert_eq!(t.pod("b").unwrap().service_account, "default");
    let web = t.service("web").unwrap();
    assert_eq!(web.endpoints, vec!["a", "b"]);
    assert_eq!(web.vips, vec![Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(web.hostname, "web.default.svc.cluster.local");
    assert_eq!(
        t.service("one").unwrap().vips,
        vec![Ipv4Addr::new(10, 96, 1, 1)]
    );
}

fn err(yaml: &str) -> String {
    let e = Topology::from_yaml(yaml).unwrap_err().to_string();
    assert!(!e.contains('\n'), "not one line: {e}");
    e
}

#[test]
fn errors_name_entry_and_field() {
    assert_eq!(
        err("nodes: [{name: n1}]\npods: [{name: a, node: n9}]"),
        "topology: pods[0] (\"a\"): field `node`: no node named \"n9\""
    );
    assert!(
        err("nodes: [{name: n1}]\npods: [{name: a, node: n1, ip: 10.9.0.2}]")
            .starts_with("topology: pods[0] (\"a\"): field `ip`: 10.9.0.2 is not a pod address")
    );
    assert!(err("nodes: [{name: n1}, {name: n1}]").contains("nodes[1] (\"n1\"): field `name`"));
    assert!(err("nodes: [{name: n1, podCidr: 10.0.0.1/24}]").contains("field `podCidr`"));
    assert!(err("nodes: [{name: N_1}]").contains("field `name`"));
    assert!(
        err("nodes: [{name: n1}]\nservices: [{name: s, ports: {}}]")
            .contains("services[0] (\"s\"): field `ports`")
    );
    assert!(
        err("nodes: [{name: n1}]\nservices: [{name: s, ports: {1: 2}, endpoints: [x]}]")
            .contains("field `endpoints`: no pod \"x\"")
    );
    assert!(err("nodes: [{name: n1}]\nbogus: 1").contains("unknown field `bogus`"));
    assert!(err("nodes: []").contains("at least one node"));
}

#[test]
fn cidr_arithmetic() {
    let c = Cidr::parse("10.1.0.0/16").unwrap();
    assert!(c.contains(Ipv4Addr::new(10, 1, 255, 1)));
    assert!(!c.contains(Ipv4Addr::new(10, 2, 0, 1)));
    assert_eq!(c.gateway(), Ipv4Addr::new(10, 1, 0, 1));
    assert!(Cidr::parse("10.1.0.0/30").is_err());
    let small = Cidr::parse("10.1.0.0/28").unwrap();
    assert_eq!(small.nth(14), Some(Ipv4Addr::new(10, 1, 0, 14)));
    assert_eq!(small.nth(15), None);
}

#[test]
fn locality_status_and_load_balancing() {
    let t = Topology::from_yaml(
        "
nodes: [{name: n1}]
pods:
  - {name: a, node: n1, labels: {app: x}, locality: {region: r1, zone: z1}, status: Unhealthy}
  - {name: b, node: n1, labels: {app: x}}
services:
  - name: s
    ports: {80: 8080}
    selector: {app: x}
    loadBalancing: {routingPreference: [Region, Zone], mode: Failover, healthPolicy: AllowAll}
  - {name: plain, ports: {81: 8081}, endpoints: [b]}
",
    )
    .unwrap();
    let a = t.pod("a").unwrap();
    assert_eq!(
        a.locality(),
        Locality {
            region: "r1".into(),
            zone: "z1".into(),
            subzone: String::new(),
        }
    );
    assert_eq!(a.status(), PodStatus::Unhealthy);
    // Kept as labels, so the selector still sees the pod's own ones.
    assert_eq!(a.labels["topology.kubernetes.io/zone"], "z1");
    assert_eq!(t.service("s").unwrap().endpoints, vec!["a", "b"]);
    let b = t.pod("b").unwrap();
    assert!(b.locality().is_empty());
    assert_eq!(b.status(), PodStatus::Healthy);
    assert_eq!(
        t.service("s").unwrap().load_balancing,
        Some(LoadBalancing {
            routing_preference: vec![LocalityScope::Region, LocalityScope::Zone],
            mode: LbMode::Failover,
            health_policy: HealthPolicy::AllowAll,
        })
    );
    assert_eq!(t.service("plain").unwrap().load_balancing, None);
}

#[test]
fn bad_locality_status_and_load_balancing_are_named() {
    let pod = |extra: &str| {
        Topology::from_yaml(&format!(
            "nodes: [{{name: n1}}]\npods: [{{name: a, node: n1, {extra}}}]"
        ))
        .unwrap_err()
        .to_string()
    };
    let e = pod("locality: {zone: Z_1}");
    assert!(e.contains("pods[0]") && e.contains("locality.zone"), "{e}");
    let e = pod("status: Sick");
    assert!(e.contains("Sick"), "{e}");
    let e = pod("locality: {rack: r}");
    assert!(e.contains("rack"), "{e}");
    let svc = |lb: &str| {
        Topology::from_yaml(&format!(
            "nodes: [{{name: n1}}]\nservices: [{{name: s, ports: {{80: 80}}, loadBalancing: {lb}}}]"
        ))
        .unwrap_err()
        .to_string()
    };
    let e = svc("{mode: Sometimes}");
    assert!(e.contains("Sometimes"), "{e}");
    let e = svc("{routingPreference: [Continent]}");
    assert!(e.contains("Continent"), "{e}");
}
