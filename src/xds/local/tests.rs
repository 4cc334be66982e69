use std::path::Path;

use super::*;
use crate::rbac::{Action, Scope, StringMatch};
use crate::state::{GatewayDestination, HealthStatus, StateWriter, TunnelProtocol};

const ORIGIN: &str = "/tmp/x.yaml";

fn err(yaml: &str) -> String {
    parse(yaml, ORIGIN).unwrap_err().to_string()
}

#[test]
fn example_file_loads_and_feeds_the_store() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/localhost.yaml");
    let cfg = load_file(&path).unwrap();
    assert_eq!(cfg.workloads.len(), 2);
    assert_eq!(cfg.services.len(), 1);
    assert_eq!(cfg.policies.len(), 1);
    assert!(cfg.source.contains("allow-client"));
    let server = &cfg.workloads[1];
    assert_eq!(server.protocol, TunnelProtocol::Hbone);
    assert_eq!(
        server.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/server"
    );
    assert_eq!(server.cluster_id, "Kubernetes");
    let p = &cfg.policies[0];
    assert_eq!(
        (p.scope, p.action),
        (Scope::WorkloadSelector, Action::Allow)
    );
    assert_eq!(
        p.rules[0].clauses[0].matches[0].principals,
        vec![StringMatch::Exact(
            "cluster.local/ns/default/sa/client".into()
        )]
    );

    let (writer, view) = StateWriter::new();
    writer.apply(cfg.into_update());
    let svc = view
        .service_by_vip("", "127.10.0.1".parse().unwrap())
        .unwrap();
    let eps = view.endpoints(&svc, 80);
    assert_eq!(eps.len(), 1);
    assert_eq!((eps[0].0.name.as_str(), eps[0].1), ("server", 8080));
    let server = view
        .workload_by_addr("", "127.0.0.3".parse().unwrap())
        .unwrap();
    assert_eq!(view.policies_for(&server).len(), 1);
}

#[test]
fn full_featured_entries_parse() {
    let cfg = parse(
        r#"
workloads:
  - name: w
    namespace: ns
    trustDomain: example.org
    workloadIps: ["10.0.0.1", "fd00::1"]
    status: Unhealthy
    capacity: 3
    waypoint: {destination: "ns/waypoint.ns.svc.cluster.local"}
    networkGateway: {destination: "net2/192.168.0.1", hboneMtlsPort: 15009}
    applicationTunnel: {protocol: PROXY, port: 15088}
    locality: {region: r, zone: z}
services:
  - name: s
    namespace: ns
    hostname: s.ns.svc.cluster.local
    vips: ["net1/10.96.0.1", "/fd00::10"]
    loadBalancer: {healthPolicy: AllowAll, routingPreference: [Network, Zone]}
policies:
  - name: p
    namespace: ns
    scope: Global
    action: Deny
    rules:
      - - - namespaces: [{Prefix: "team-"}, {Presence: {}}]
            notSourceIps: ["10.0.0.0/8"]
            notDestinationPorts: [9999]
            serviceAccounts: [{namespace: ns, serviceAccount: sa}]
"#,
        "inline",
    )
    .unwrap();
    let w = &cfg.workloads[0];
    assert_eq!(w.uid, "Kubernetes//Pod/ns/w");
    assert_eq!(
        w.identity().to_string(),
        "spiffe://example.org/ns/ns/sa/default"
    );
    assert_eq!(w.status, HealthStatus::Unhealthy);
    assert_eq!(w.capacity, 3);
    let wp = w.waypoint.as_ref().unwrap();
    assert_eq!(wp.hbone_mtls_port, 15008);
    assert!(
        matches!(&wp.destination, GatewayDestination::Hostname { namespace, .. } if namespace == "ns")
    );
    let gw = w.network_gateway.as_ref().unwrap();
    assert_eq!(
        (gw.destination.to_string(), gw.hbone_mtls_port),
        ("net2/192.168.0.1".into(), 15009)
    );
    assert_eq!(cfg.services[0].vips[1].to_string(), "/fd00::10");
    assert!(cfg.services[0].allows_unhealthy());
    let m = &cfg.policies[0].rules[0].clauses[0].matches[0];
    assert_eq!(
        m.namespaces,
        vec![StringMatch::Prefix("team-".into()), StringMatch::Presence]
    );
    assert_eq!(m.not_destination_ports, vec![9999]);
    assert!(parse("", "empty").unwrap().workloads.is_empty());
}

#[test]
fn bad_values_name_file_entry_and_field() {
    let cases: &[(&str, &str)] = &[
        (
            "workloads:\n- {name: a, namespace: ns}\n- {uid: client-1, name: c, namespace: ns, workloadIps: [10.0.0.999]}\n",
            r#"local config /tmp/x.yaml: workloads[1] (uid "client-1"): workloadIps[0]: invalid IP address "10.0.0.999""#,
        ),
        (
            "workloads:\n- {uid: a, namespace: ns}\n",
            r#"local config /tmp/x.yaml: workloads[0] (uid "a"): missing required field "name""#,
        ),
        (
            "workloads:\n- {name: a}\n",
            r#"local config /tmp/x.yaml: workloads[0] (name "a"): missing required field "namespace""#,
        ),
        (
            "workloads:\n- {uid: a, name: a, namespace: ns, serviceAccount: \"x/y\"}\n",
            r#"local config /tmp/x.yaml: workloads[0] (uid "a"): serviceAccount: invalid name "x/y": must not contain '/', '?', '#', whitespace or control characters"#,
        ),
        (
            "workloads:\n- {uid: a, name: a, namespace: \"bad ns\"}\n",
            r#"local config /tmp/x.yaml: workloads[0] (uid "a"): namespace: invalid name "bad ns": must not contain '/', '?', '#', whitespace or control characters"#,
        ),
        (
            "workloads:\n- {uid: a, name: a, namespace: ns, services: {\"ns/h\": {80: 70000}}}\n",
            r#"local config /tmp/x.yaml: workloads[0] (uid "a"): services["ns/h"][80]: port 70000 out of range (1-65535)"#,
        ),
        (
            "workloads:\n- {uid: a, name: a, namespace: ns, services: {h: {80: 8080}}}\n",
            r#"local config /tmp/x.yaml: workloads[0] (uid "a"): services["h"]: invalid key "h": expected "namespace/hostname""#,
        ),
        (
            "workloads:\n- {uid: a, name: a, namespace: ns, waypoint: {destination: nowhere}}\n",
            r#"local config /tmp/x.yaml: workloads[0] (uid "a"): waypoint.destination: invalid destination "nowhere": expected "network/IP" or "namespace/hostname""#,
        ),
        (
            "services:\n- {name: s, namespace: ns, hostname: h, vips: [\"10.0.0.1\"]}\n",
            r#"local config /tmp/x.yaml: services[0] (hostname "h"): vips[0]: invalid address "10.0.0.1": expected "network/IP""#,
        ),
        (
            "services:\n- {name: s, namespace: ns, hostname: h, ports: {0: 80}}\n",
            r#"local config /tmp/x.yaml: services[0] (hostname "h"): ports[0]: port 0 out of range (1-65535)"#,
        ),
        (
            "policies:\n- {name: p, namespace: ns, scope: Global, action: Allow, rules: [[[{sourceIps: [\"10.0.0.0/33\"]}]]]}\n",
            r#"local config /tmp/x.yaml: policies[0] (name "p"): rules[0][0][0].sourceIps[0]: prefix length 33 is too long for 10.0.0.0 (max 32)"#,
        ),
        (
            "policies:\n- {name: p, namespace: ns, scope: Global, action: Allow, rules: [[[{notSourceIps: [\"10.0.0/8\"]}]]]}\n",
            r#"local config /tmp/x.yaml: policies[0] (name "p"): rules[0][0][0].notSourceIps[0]: invalid CIDR "10.0.0/8""#,
        ),
        (
            "policies:\n- {name: p, namespace: ns, scope: Global, action: Allow, rules: [[[{destinationPorts: [65536]}]]]}\n",
            r#"local config /tmp/x.yaml: policies[0] (name "p"): rules[0][0][0].destinationPorts[0]: port 65536 out of range (1-65535)"#,
        ),
        (
            "policies:\n- {name: p, namespace: ns, scope: Global, action: Allow, rules: [[[{principals: [[a]]}]]]}\n",
            r#"local config /tmp/x.yaml: policies[0] (name "p"): rules[0][0][0].principals[0]: expected a string or one of {Exact: s}, {Prefix: s}, {Suffix: s}, {Presence: {}}"#,
        ),
        (
            "workloads:\n- {uid: a, name: a, namespace: ns}\n- {uid: b, name: b, namespace: ns}\n- {uid: c, name: c, namespace: ns}\n- {uid: a, name: d, namespace: ns}\n",
            r#"local config /tmp/x.yaml: duplicate workload uid "a" (workloads[0] and workloads[3])"#,
        ),
        (
            "policies:\n- {name: p, namespace: ns, scope: Global, action: Allow}\n- {name: p, namespace: ns, scope: Namespace, action: Deny}\n",
            r#"local config /tmp/x.yaml: duplicate policy "ns/p" (policies[0] and policies[1])"#,
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(&err(yaml), want, "for {yaml}");
    }
}

#[test]
fn serde_errors_carry_path_and_position() {
    let e = err("workloads:\n  - uid: a\n    foo: 1\n");
    assert!(
        e.starts_with(r#"local config /tmp/x.yaml: workloads[0]: unknown field "foo", expected one of "uid", "name","#),
        "{e}"
    );
    assert!(e.ends_with("at line 3 column 5"), "{e}");
    assert_eq!(e.lines().count(), 1);

    let e = err("workloads:\n  - {uid: a, protocol: QUIC}\n");
    assert!(e.starts_with(r#"local config /tmp/x.yaml: workloads[0].protocol: unknown variant "QUIC", expected "TCP" or "HBONE""#), "{e}");

    let e = err("wrkloads: []\n");
    assert!(
        e.starts_with(r#"local config /tmp/x.yaml: unknown field "wrkloads""#),
        "{e}"
    );

    let e = err("workloads:\n  - uid: a\n   name: b\n");
    assert!(e.starts_with("local config /tmp/x.yaml: "), "{e}");
    assert!(e.contains("line 3 column"), "{e}");
    assert_eq!(e.lines().count(), 1);
}

#[test]
fn unreadable_file_is_reported() {
    let e = load_file(Path::new("/nonexistent/ambit.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("local config /nonexistent/ambit.yaml: cannot read file: "),
        "{e}"
    );
}

#[test]
fn weighted_waypoints_parse_and_bad_entries_are_named() {
    let cfg = parse(
        r#"
services:
  - name: s
    namespace: ns
    hostname: s.ns.svc.cluster.local
    weightedWaypoints:
      - {destination: "/10.0.0.1", weight: 3}
      - {destination: "ns/wp.ns.svc.cluster.local", hboneMtlsPort: 15009, weight: 1}
"#,
        "inline",
    )
    .unwrap();
    let ww = &cfg.services[0].weighted_waypoints;
    assert_eq!(ww.len(), 2);
    assert_eq!(ww[0].weight, 3);
    assert_eq!(ww[0].destination.destination.to_string(), "/10.0.0.1");
    assert_eq!(ww[1].destination.hbone_mtls_port, 15009);
    let e = err(
        "services:\n- {name: s, namespace: ns, hostname: h, weightedWaypoints: [{destination: nowhere, weight: 1}]}\n",
    );
    assert!(
        e.contains("weightedWaypoints[0].destination: invalid destination \"nowhere\""),
        "{e}"
    );
}
