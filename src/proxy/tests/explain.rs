//! `explain` over a state built in code: a VIP with two endpoints, one of them behind a DENY
//! policy for the client; each path is the route the data path takes when its pick lands there.

use std::collections::BTreeSet;

use super::support::{self, id};
use crate::proxy::explain::{ExplainInputs, LookupError, explain, find_destination, find_workload};
use crate::proxy::outbound::{Route, route_avoiding};
use crate::proxy::*;
use crate::rbac::{self, Action, Clause, Match, Rule, Scope, StringMatch};
use crate::state::{NetworkAddress, Service, StateWriter, TunnelProtocol, Update};
use crate::state::{StateView, Workload};

fn workload(name: &str, ip: &str) -> Workload {
    let mut wl = Workload::new(name, name, id("b", name));
    wl.workload_ips = vec![ip.parse().unwrap()];
    wl.protocol = TunnelProtocol::Hbone;
    wl
}

fn state() -> StateView {
    let (writer, view) = StateWriter::new();
    let mut s1 = workload("server-1", "10.0.0.2");
    let mut s2 = workload("server-2", "10.0.0.3");
    for s in [&mut s1, &mut s2] {
        s.services.insert(
            "b/web.b.svc.cluster.local".into(),
            [(80, 8080)].into_iter().collect(),
        );
    }
    s2.authorization_policies = vec!["b/deny-client".into()];
    let deny = rbac::Authorization {
        name: "deny-client".into(),
        namespace: "b".into(),
        scope: Scope::WorkloadSelector,
        action: Action::Deny,
        dry_run: false,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    principals: vec![StringMatch::Suffix("/sa/client".into())],
                    ..Default::default()
                }],
            }],
        }],
    };
    let svc = Service {
        name: "web".into(),
        namespace: "b".into(),
        hostname: "web.b.svc.cluster.local".into(),
        vips: vec![NetworkAddress {
            network: String::new(),
            address: "10.96.0.1".parse().unwrap(),
        }],
        ports: [(80, 8080)].into_iter().collect(),
        ..Default::default()
    };
    writer.apply(
        Update::default()
            .upsert(workload("client", "10.0.0.1"))
            .upsert({
                let mut legacy = workload("legacy", "10.0.0.9");
                legacy.protocol = TunnelProtocol::None;
                legacy
            })
            .upsert(s1)
            .upsert(s2)
            .upsert(svc)
            .upsert(deny),
    );
    view
}

#[test]
fn each_endpoint_is_a_path_with_its_odds_route_and_decision() {
    let view = state();
    let inputs = ExplainInputs {
        state: view.clone(),
        network: String::new(),
        hbone_port: 15008,
    };
    let snap = view.snapshot();
    let client = find_workload(&snap, "", "client").unwrap();
    let dst = find_destination(&snap, "", "web:80").unwrap();
    assert_eq!(dst, "10.96.0.1:80".parse().unwrap());
    let e = explain(&inputs, &client, dst);
    assert_eq!(e.verdict, "depends on the endpoint");
    assert_eq!(e.paths.len(), 2);
    let pi = support::inputs(view, "b", "client", OutlierConfig::default());
    let mut targets = BTreeSet::new();
    for p in &e.paths {
        assert_eq!(p.probability, 0.5);
        let target = p.target.unwrap();
        targets.insert(target);
        // The data path's own route when the pick avoids the other endpoint.
        let routed = route_avoiding(&pi, dst, &|a| a != target, &[]).unwrap();
        let Route::Hbone { hbone, .. } = routed.route else {
            panic!("{:?}", routed.route)
        };
        assert_eq!(p.via, Some(hbone));
        let a = p.authorization.as_ref().unwrap();
        if target.ip().to_string() == "10.0.0.3" {
            assert_eq!(a.decision, "connection denied by policy b/deny-client");
            assert_eq!(p.verdict, "deny");
            assert!(a.policies[0].matched && a.policies[0].rules[0].matched);
        } else {
            assert_eq!(
                (a.decision.as_str(), p.verdict.as_str()),
                ("allowed", "allow")
            );
            assert!(a.policies.is_empty());
        }
    }
    assert_eq!(
        targets,
        ["10.0.0.2:8080", "10.0.0.3:8080"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    );
}

#[test]
fn names_resolve_or_say_why_not() {
    let snap = state().snapshot();
    assert_eq!(
        find_workload(&snap, "", "nobody").unwrap_err(),
        LookupError::Unknown("nobody".into())
    );
    assert_eq!(
        find_destination(&snap, "", "web").unwrap_err(),
        LookupError::BadDestination("web".into())
    );
    assert_eq!(
        find_destination(&snap, "", "b/server-1:9000").unwrap(),
        "10.0.0.2:9000".parse().unwrap()
    );
    assert_eq!(
        find_destination(&snap, "", "[::1]:80").unwrap(),
        "[::1]:80".parse().unwrap()
    );
}

#[test]
fn an_uncaptured_source_goes_direct_and_arrives_without_identity() {
    let view = state();
    let inputs = ExplainInputs {
        state: view.clone(),
        network: String::new(),
        hbone_port: 15008,
    };
    let snap = view.snapshot();
    let legacy = find_workload(&snap, "", "b/legacy").unwrap();
    let e = explain(&inputs, &legacy, "10.0.0.3:8080".parse().unwrap());
    assert!(!e.source.captured);
    let [p] = e.paths.as_slice() else {
        panic!("{e:?}")
    };
    assert_eq!(p.route, "direct");
    let a = p.authorization.as_ref().unwrap();
    // The DENY rule names a principal: with no identity it cannot match.
    assert_eq!((a.identity.as_deref(), a.allowed), (None, true));
    assert!(!a.policies[0].matched);
}
