use std::path::{Path, PathBuf};

use super::*;
use crate::rbac::{Action, Scope, StringMatch};
use crate::state::{
    AppTunnelProtocol, GatewayDestination, HealthStatus, IpFamilies, LoadBalancerMode,
    LocalityScope, NetworkMode, StateWriter, TunnelProtocol, Visibility,
};

const ORIGIN: &str = "/tmp/x.yaml";

fn err(yaml: &str) -> String {
    parse(yaml, ORIGIN).unwrap_err().to_string()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/local")
}

fn fixture(name: &str) -> LocalConfig {
    load_file(&fixtures().join(name)).unwrap()
}

/// Fixtures where ambit decides differently from ztunnel on purpose, and why.
const DELIBERATE: &[(&str, &str)] = &[
    (
        "bad_empty_file.yaml",
        "an empty file is what a half-written file looks like; ztunnel loads it as no workloads",
    ),
    (
        "bad_comment_only.yaml",
        "a file of comments has no document either, same as an empty file",
    ),
    (
        "bad_gateway_empty_hostname.yaml",
        "a waypoint without a hostname names nothing to connect to; xDS and local both refuse it",
    ),
    (
        "bad_service_key_two_slashes.yaml",
        "a hostname cannot hold a '/'; xDS and local both refuse the key",
    ),
    (
        "bad_service_port_zero.yaml",
        "service port 0 can be no destination; xDS and local both refuse it",
    ),
];

/// Every fixture gets the verdict the real ztunnel gave it (recorded by
/// `tests/data/local/record_ztunnel.py` into `verdicts.json`), except the deliberate ones.
#[test]
fn fixtures_get_the_verdicts_ztunnel_gave_them() {
    let text = std::fs::read_to_string(fixtures().join("verdicts.json")).unwrap();
    let verdicts: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 30, "{names:?}");
    let mut mismatches = Vec::new();
    for name in &names {
        let zt = verdicts[name.as_str()]["ztunnel"].as_str();
        let zt = zt.unwrap_or_else(|| panic!("{name}: no ztunnel verdict recorded"));
        let ours = match load_file(&fixtures().join(name)) {
            Ok(_) => "accepted".to_string(),
            Err(e) => {
                let msg = e.to_string();
                assert_eq!(msg.lines().count(), 1, "{name}: {msg}");
                "rejected".to_string()
            }
        };
        let deliberate = DELIBERATE.iter().any(|(n, _)| n == name);
        if (ours == zt) == deliberate {
            mismatches.push(format!("{name}: ztunnel {zt}, ambit {ours}"));
        }
        assert_eq!(
            name.starts_with("ok_"),
            ours == "accepted",
            "{name}: fixture names say what ambit does"
        );
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

/// A policy as ztunnel's `/config_dump` shows it (`rules` as `[[[match]]]`, empty lists left
/// out, string matches as `{"Exact": s}` / `{"Presence": []}`).
fn ztunnel_shape(p: &crate::rbac::Authorization) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let strings = |v: &[StringMatch]| -> Value {
        v.iter()
            .map(|m| match m {
                StringMatch::Exact(s) => json!({"Exact": s}),
                StringMatch::Prefix(s) => json!({"Prefix": s}),
                StringMatch::Suffix(s) => json!({"Suffix": s}),
                StringMatch::Presence => json!({"Presence": []}),
            })
            .collect()
    };
    let nets = |v: &[crate::rbac::IpNet]| -> Value {
        v.iter()
            .map(|n| json!(format!("{}/{}", n.addr(), n.prefix_len())))
            .collect()
    };
    let accounts = |v: &[crate::rbac::ServiceAccountMatch]| -> Value {
        v.iter()
            .map(|a| json!({"namespace": a.namespace, "serviceAccount": a.service_account}))
            .collect()
    };
    let rules: Vec<Value> = p
        .rules
        .iter()
        .map(|r| {
            let clauses: Vec<Value> = r
                .clauses
                .iter()
                .map(|c| {
                    let matches: Vec<Value> = c
                        .matches
                        .iter()
                        .map(|m| {
                            let mut out = Map::new();
                            for (k, v) in [
                                ("namespaces", strings(&m.namespaces)),
                                ("notNamespaces", strings(&m.not_namespaces)),
                                ("principals", strings(&m.principals)),
                                ("notPrincipals", strings(&m.not_principals)),
                                ("sourceIps", nets(&m.source_ips)),
                                ("notSourceIps", nets(&m.not_source_ips)),
                                ("destinationIps", nets(&m.destination_ips)),
                                ("notDestinationIps", nets(&m.not_destination_ips)),
                                ("destinationPorts", json!(m.destination_ports)),
                                ("notDestinationPorts", json!(m.not_destination_ports)),
                                ("serviceAccounts", accounts(&m.service_accounts)),
                                ("notServiceAccounts", accounts(&m.not_service_accounts)),
                            ] {
                                if v.as_array().is_some_and(|a| !a.is_empty()) {
                                    out.insert(k.into(), v);
                                }
                            }
                            Value::Object(out)
                        })
                        .collect();
                    Value::Array(matches)
                })
                .collect();
            Value::Array(clauses)
        })
        .collect();
    let scope = match p.scope {
        Scope::Global => "Global",
        Scope::Namespace => "Namespace",
        Scope::WorkloadSelector => "WorkloadSelector",
    };
    let action = match p.action {
        Action::Allow => "Allow",
        Action::Deny => "Deny",
    };
    json!({"name": p.name, "namespace": p.namespace, "scope": scope, "action": action,
           "dryRun": p.dry_run, "rules": rules})
}

/// What ztunnel loaded from each accepted fixture (its `/config_dump`, recorded beside the
/// verdicts) is what ambit loads: the same policies, match for match.
#[test]
fn accepted_fixtures_load_the_policies_ztunnel_loaded() {
    let text = std::fs::read_to_string(fixtures().join("verdicts.json")).unwrap();
    let verdicts: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut compared = 0;
    for (name, v) in verdicts.as_object().unwrap() {
        let Some(want) = v.get("policies") else {
            continue;
        };
        if !name.starts_with("ok_") {
            continue;
        }
        let mut got: Vec<_> = fixture(name).policies.iter().map(ztunnel_shape).collect();
        got.sort_by_key(|p| p["name"].as_str().unwrap_or_default().to_string());
        assert_eq!(&serde_json::Value::Array(got), want, "{name}");
        compared += want.as_array().map_or(0, Vec::len);
    }
    assert!(compared >= 5, "{compared}");
}

#[test]
fn example_file_loads_and_feeds_the_store() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/localhost.yaml");
    let cfg = load_file(&path).unwrap();
    assert_eq!(
        (cfg.workloads.len(), cfg.services.len(), cfg.policies.len()),
        (2, 1, 1)
    );
    assert!(cfg.source.contains("allow-client"));
    let server = &cfg.workloads[1];
    assert_eq!(server.protocol, TunnelProtocol::Hbone);
    assert_eq!(
        server.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/server"
    );
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
}

#[test]
fn tags_become_string_matches() {
    let cfg = fixture("ok_tagged_matches.yaml");
    let p = &cfg.policies[0];
    assert_eq!(p.key(), "b/allow-tags");
    let m = &p.rules[0].clauses[0].matches[0];
    assert_eq!(
        m.principals,
        vec![
            StringMatch::Exact("cluster.local/ns/a/sa/client".into()),
            StringMatch::Prefix("cluster.local/ns/c/".into()),
        ]
    );
    assert_eq!(
        m.not_principals,
        vec![StringMatch::Suffix("/sa/blocked".into())]
    );
    assert_eq!(m.namespaces, vec![StringMatch::Presence]);
    assert_eq!(
        m.not_namespaces,
        vec![StringMatch::Exact("kube-system".into())]
    );
    let ips = &p.rules[0].clauses[0].matches[1];
    assert_eq!(
        (
            ips.source_ips[1].addr().to_string(),
            ips.source_ips[1].prefix_len()
        ),
        ("fd00::".into(), 64)
    );
    assert_eq!(
        (
            ips.destination_ports.clone(),
            ips.not_destination_ports.clone()
        ),
        (vec![8080], vec![8081])
    );
    let sa = &p.rules[0].clauses[1].matches[0];
    assert_eq!(sa.service_accounts[0].service_account, "client");
    assert!(cfg.policies[1].dry_run);
    assert_eq!(cfg.policies[1].action, Action::Deny);
    assert_eq!(cfg.policies[2].scope, Scope::Global);
}

#[test]
fn workload_fields_keep_their_meaning() {
    let cfg = fixture("ok_workload_fields.yaml");
    let w = &cfg.workloads[0];
    assert_eq!(w.uid, "c1//Pod/b/full");
    assert_eq!(
        w.identity().to_string(),
        "spiffe://example.org/ns/b/sa/full-sa"
    );
    assert_eq!(w.network_mode, NetworkMode::HostNetwork);
    assert_eq!(w.status, HealthStatus::Unhealthy);
    // Kept as written, as ztunnel keeps it.
    assert_eq!(w.workload_type, "deployment");
    assert_eq!((w.cluster_id.as_str(), w.capacity), ("c1", 4));
    assert_eq!(w.locality.subzone, "rack-3");
    let wp = w.waypoint.as_ref().unwrap();
    assert!(matches!(
        &wp.destination,
        GatewayDestination::Hostname { namespace, hostname }
            if namespace == "b" && hostname == "wp.b.svc.cluster.local"
    ));
    let gw = w.network_gateway.as_ref().unwrap();
    assert_eq!(
        (gw.destination.to_string(), gw.hbone_mtls_port),
        ("net-2/192.0.2.10".into(), 15009)
    );
    let t = w.application_tunnel.as_ref().unwrap();
    assert_eq!(
        (t.protocol, t.port),
        (AppTunnelProtocol::Proxy, Some(15088))
    );
    assert_eq!(w.services["b/full.b.svc.cluster.local"][&90], 0);

    // No uid: Istio's shape, with the default cluster; no name is allowed.
    let bare = &cfg.workloads[1];
    assert_eq!(bare.uid, "Kubernetes//Pod/b/");
    assert_eq!(
        bare.identity().to_string(),
        "spiffe://cluster.local/ns/b/sa/default"
    );
    assert_eq!(bare.capacity, 1);
    assert_eq!(bare.application_tunnel.as_ref().unwrap().port, None);
}

#[test]
fn service_fields_keep_their_meaning() {
    let cfg = fixture("ok_service_fields.yaml");
    let s = &cfg.services[0];
    assert_eq!(s.vips[1].to_string(), "net-1/fd00::20");
    assert_eq!(s.cidr_vips.len(), 1);
    assert_eq!(s.cidr_vips[0].net.prefix_len(), 16);
    let lb = s.load_balancer.as_ref().unwrap();
    assert_eq!(lb.mode, LoadBalancerMode::Failover);
    assert_eq!(lb.routing_preference[0], LocalityScope::Network);
    assert!(s.allows_unhealthy());
    assert_eq!(s.ip_families, IpFamilies::Dual);
    assert_eq!(s.visibility, Visibility::Namespace);
    assert_eq!(s.weighted_waypoints[0].weight, 90);
    assert_eq!(s.ports[&443], 0);
    assert_eq!(cfg.services[1].ip_families, IpFamilies::Ipv4Only);
    assert_eq!(
        cfg.services[1].load_balancer.as_ref().unwrap().mode,
        LoadBalancerMode::Standard
    );
    // The service's endpoint list becomes the workload's membership, as istiod sends it.
    let w = &cfg.workloads[0];
    assert_eq!(w.services["b/full.b.svc.cluster.local"][&80], 8080);
}

#[test]
fn errors_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "workloads:\n- {name: a, namespace: ns, services: {}, workloadIps: [10.0.0.999]}\n",
            "local config /tmp/x.yaml: workloads[0].workloadIps[0]: invalid IP address syntax at line 2 column 56",
        ),
        (
            "workloads:\n- {uid: a, namespace: ns, workloadIps: [], services: {h: {80: 8080}}}\n",
            r#"local config /tmp/x.yaml: workloads[0] (uid "a"): services["h"]: invalid key "h": expected "namespace/hostname""#,
        ),
        (
            "workloads:\n- {uid: a, namespace: ns, workloadIps: [], services: {}, waypoint: {destination: ns/, hboneMtlsPort: 15008}}\n",
            r#"local config /tmp/x.yaml: workloads[0] (uid "a"): waypoint.destination: required field is missing or empty"#,
        ),
        (
            "services:\n- {name: s, namespace: ns, hostname: h, vips: [], ports: {0: 80}}\n",
            r#"local config /tmp/x.yaml: services[0] (hostname "h"): ports: port 0 out of range (1-65535)"#,
        ),
        (
            "policies:\n- {name: p, namespace: ns, scope: Global, action: Allow, dryRun: false, rules: [[[{principals: [{Exact: a}]}]]]}\n",
            "local config /tmp/x.yaml: policies[0].rules[0][0][0].principals[0]: invalid type: map, expected a YAML tag starting with '!' at line 2 column 97",
        ),
        (
            "policies:\n- {name: p, namespace: ns, scope: Global, action: Allow, rules: []}\n",
            r#"local config /tmp/x.yaml: policies[0]: missing field "dryRun" at line 2 column 3"#,
        ),
        (
            "workloads:\n- {namespace: ns, workloadIps: [], services: {}, protocol: QUIC}\n",
            r#"local config /tmp/x.yaml: workloads[0].protocol: unknown variant "QUIC", expected "TCP" or "HBONE" at line 2 column 60"#,
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(&err(yaml), want, "for {yaml}");
    }
}

// Found by the `local_config` fuzz loop: a YAML scalar spanning lines came back verbatim in
// serde's message, breaking the error over several log lines.
#[test]
fn yaml_errors_stay_on_one_line() {
    let e = err("policies:\n- name: x\n  namespace: b\n  scope: Sideway\n\n    action: Allow\n");
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains(r#"unknown variant "Sideway\naction""#), "{e}");
    let e = err("policies: [{name:- u\n\n  rules: []}]\n");
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains(r#"unknown field "name:- u\nrules""#), "{e}");
}

#[test]
fn later_entries_replace_earlier_ones() {
    let cfg = parse(
        "workloads:\n- {uid: a, name: first, namespace: ns, workloadIps: [], services: {}}\n- {uid: b, namespace: ns, workloadIps: [], services: {}}\n- {uid: a, name: second, namespace: ns, workloadIps: [], services: {}}\n",
        ORIGIN,
    )
    .unwrap();
    let names: Vec<_> = cfg
        .workloads
        .iter()
        .map(|w| (w.uid.as_str(), w.name.as_str()))
        .collect();
    assert_eq!(names, [("a", "second"), ("b", "")]);
}

#[test]
fn a_file_without_a_document_is_refused_but_an_empty_map_is_not() {
    for text in ["", "\n  \n", "# only a comment\n", "---\n"] {
        assert_eq!(
            err(text),
            r#"local config /tmp/x.yaml: the file has no content (an empty config is written "{}")"#,
            "{text:?}"
        );
    }
    assert!(parse("{}", ORIGIN).unwrap().workloads.is_empty());
    assert!(parse("workloads: []", ORIGIN).unwrap().workloads.is_empty());
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

/// ambit's serialised entry with ztunnel's `/config_dump` spellings where they differ.
fn in_ztunnel_spelling(
    mut v: serde_json::Value,
    cidr_vips: &[crate::state::CidrVip],
) -> serde_json::Value {
    use serde_json::{Value, json};
    let Value::Object(m) = &mut v else {
        return v;
    };
    if m.get("protocol") == Some(&json!("NONE")) {
        m.insert("protocol".into(), json!("TCP"));
    }
    if let Some(Value::Object(lb)) = m.get_mut("loadBalancer")
        && let Some(p) = lb.remove("routingPreference")
    {
        lb.insert("routingPreferences".into(), p);
    }
    match m.get("ipFamilies").and_then(Value::as_str) {
        Some("Automatic") => {
            m.remove("ipFamilies");
        }
        Some(f) => {
            let f = f.replace("Ipv4Only", "IPv4").replace("Ipv6Only", "IPv6");
            m.insert("ipFamilies".into(), json!(f));
        }
        None => {}
    }
    if m.contains_key("cidrVips") {
        let cidrs: Vec<Value> = cidr_vips
            .iter()
            .map(|c| json!({"network": c.network, "cidr": format!("{}/{}", c.net.addr(), c.net.prefix_len())}))
            .collect();
        m.insert("cidrVips".into(), cidrs.into());
    }
    v
}

/// What ztunnel loaded from each accepted fixture is what ambit loads: every value ztunnel's
/// dump shows for a workload (with a uid) or a service, and each service endpoint as a
/// membership of its workload. (ztunnel leaves out values at their defaults; ambit's defaults
/// for an absent trust domain and service account are Istio's, see the report.)
#[test]
fn accepted_fixtures_load_the_workloads_and_services_ztunnel_loaded() {
    let text = std::fs::read_to_string(fixtures().join("verdicts.json")).unwrap();
    let verdicts: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut compared = 0;
    for (name, v) in verdicts.as_object().unwrap() {
        if !name.starts_with("ok_") {
            continue;
        }
        let cfg = fixture(name);
        for zw in v["workloads"].as_array().unwrap() {
            let Some(uid) = zw["uid"].as_str() else {
                continue;
            };
            let w = cfg.workloads.iter().find(|w| w.uid == uid).unwrap();
            let ours = in_ztunnel_spelling(serde_json::to_value(w).unwrap(), &[]);
            for (k, want) in zw.as_object().unwrap() {
                assert_eq!(&ours[k], want, "{name}: workload {uid}: {k}");
                compared += 1;
            }
        }
        assert_eq!(
            v["services"].as_array().unwrap().len(),
            cfg.services.len(),
            "{name}"
        );
        for zs in v["services"].as_array().unwrap() {
            let host = zs["hostname"].as_str().unwrap();
            let s = cfg.services.iter().find(|s| s.hostname == host).unwrap();
            let ours = in_ztunnel_spelling(serde_json::to_value(s).unwrap(), &s.cidr_vips);
            for (k, want) in zs.as_object().unwrap() {
                if k == "endpoints" {
                    for ep in want.as_object().unwrap().values() {
                        let uid = ep["workloadUid"].as_str().unwrap();
                        let w = cfg.workloads.iter().find(|w| w.uid == uid).unwrap();
                        let ports = serde_json::to_value(&w.services[&s.key()]).unwrap();
                        assert_eq!(ports, ep["port"], "{name}: {host}: endpoint {uid}");
                    }
                    continue;
                }
                assert_eq!(&ours[k], want, "{name}: service {host}: {k}");
                compared += 1;
            }
        }
    }
    assert!(compared >= 60, "{compared}");
}
