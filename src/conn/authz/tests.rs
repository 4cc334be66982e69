//! Scope selection and port resolution, on a real state store.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::core::Identity;
use crate::rbac::{Action, Authorization, Clause, Match, Rule, Scope};
use crate::state::{Service, StateView, StateWriter, Update, service_key};

fn workload(ns: &str, name: &str, ip: &str, named: &[&str]) -> Workload {
    let id = Identity::new("cluster.local", ns, name).unwrap();
    let mut w = Workload::new(format!("c//Pod/{ns}/{name}"), name, id);
    w.workload_ips = vec![ip.parse().unwrap()];
    w.authorization_policies = named.iter().map(|s| s.to_string()).collect();
    w
}

/// A policy that matches everything on `ports` (all ports when empty).
fn policy(ns: &str, name: &str, scope: Scope, action: Action, ports: &[u16]) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope,
        action,
        dry_run: false,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    destination_ports: ports.to_vec(),
                    ..Default::default()
                }],
            }],
        }],
    }
}

fn state(workloads: Vec<Workload>, policies: Vec<Authorization>) -> (StateWriter, StateView) {
    let (w, v) = StateWriter::new();
    let mut u = Update::default();
    for wl in workloads {
        u = u.upsert(wl);
    }
    for p in policies {
        u = u.upsert(p);
    }
    w.apply(u);
    (w, v)
}

fn decide_for(view: &StateView, ns: &str, name: &str, dst: &str) -> Decision {
    let snap = view.snapshot();
    let wl = snap.workload_by_name(ns, name).unwrap().clone();
    let peer = Identity::new("cluster.local", "client-ns", "client").unwrap();
    let facts = ConnFacts {
        src: "10.9.0.1:40000".parse().unwrap(),
        dst: dst.parse::<SocketAddr>().unwrap(),
        identity: Some(&peer),
    };
    decide(&snap, &wl, &facts)
}

fn denied_by(key: &str) -> Decision {
    Decision::Deny {
        policy: Some(key.into()),
        reason: crate::rbac::DenyReason::DenyMatched,
    }
}

#[test]
fn every_scope_selects_the_right_workloads() {
    let workloads = vec![
        workload("b", "selected", "10.0.0.1", &["b/by-selector", "b/missing"]),
        workload("b", "plain", "10.0.0.2", &[]),
        workload("c", "other", "10.0.0.3", &[]),
    ];
    let policies = vec![
        policy("istio-system", "global", Scope::Global, Action::Deny, &[1]),
        policy("b", "ns-b", Scope::Namespace, Action::Deny, &[2]),
        policy(
            "b",
            "by-selector",
            Scope::WorkloadSelector,
            Action::Deny,
            &[3],
        ),
    ];
    let (_w, v) = state(workloads, policies);
    let cases = [
        // (workload, port, decision)
        (
            ("b", "selected", "10.0.0.1"),
            1,
            denied_by("istio-system/global"),
        ),
        (
            ("c", "other", "10.0.0.3"),
            1,
            denied_by("istio-system/global"),
        ),
        (("b", "plain", "10.0.0.2"), 2, denied_by("b/ns-b")),
        (("b", "selected", "10.0.0.1"), 2, denied_by("b/ns-b")),
        (("c", "other", "10.0.0.3"), 2, Decision::Allow),
        (("b", "selected", "10.0.0.1"), 3, denied_by("b/by-selector")),
        (("b", "plain", "10.0.0.2"), 3, Decision::Allow),
        (("c", "other", "10.0.0.3"), 3, Decision::Allow),
        (("b", "selected", "10.0.0.1"), 4, Decision::Allow),
    ];
    for ((ns, name, ip), port, want) in cases {
        let got = decide_for(&v, ns, name, &format!("{ip}:{port}"));
        assert_eq!(got, want, "{ns}/{name} port {port}");
    }
}

#[test]
fn unrelated_allow_policies_do_not_apply() {
    // An ALLOW in another namespace must not turn on "an ALLOW must match" here.
    let (_w, v) = state(
        vec![workload("b", "plain", "10.0.0.2", &[])],
        vec![policy(
            "c",
            "allow-c",
            Scope::Namespace,
            Action::Allow,
            &[1],
        )],
    );
    assert_eq!(decide_for(&v, "b", "plain", "10.0.0.2:80"), Decision::Allow);
}

#[test]
fn destination_port_is_the_target_port_resolved_through_a_service() {
    // Service port 80 maps to target port 8080: a client that dialled the VIP on 80 reaches
    // the pod on 8080, and that is the port policies see.
    let mut server = workload("b", "server", "10.0.0.2", &[]);
    server.services.insert(
        service_key("b", "web.b.svc"),
        [(80, 0)].into_iter().collect(),
    );
    let svc = Service {
        name: "web".into(),
        namespace: "b".into(),
        hostname: "web.b.svc".into(),
        vips: vec![crate::state::NetworkAddress {
            network: String::new(),
            address: "10.96.0.10".parse().unwrap(),
        }],
        ports: [(80, 8080)].into_iter().collect(),
        cidr_vips: vec![],
        subject_alt_names: vec![],
        waypoint: None,
        weighted_waypoints: vec![],
        load_balancer: None,
        ip_families: crate::state::IpFamilies::Automatic,
        canonical: true,
        visibility: crate::state::Visibility::Public,
    };
    for (allowed_port, want_allow) in [(8080, true), (80, false)] {
        let (w, v) = state(
            vec![server.clone()],
            vec![policy(
                "b",
                "allow",
                Scope::Namespace,
                Action::Allow,
                &[allowed_port],
            )],
        );
        w.apply(Update::default().upsert(svc.clone()));
        let vip_svc: Arc<Service> = v.service_by_vip("", "10.96.0.10".parse().unwrap()).unwrap();
        let (wl, target_port) = v.pick_endpoint(&vip_svc, 80, "").unwrap();
        assert_eq!(target_port, 8080);
        let dst = SocketAddr::new(wl.workload_ips[0], target_port);
        let got = decide_for(&v, "b", "server", &dst.to_string());
        assert_eq!(got.is_allow(), want_allow, "ALLOW on port {allowed_port}");
    }
}

#[test]
fn tracked_connections_to_a_removed_workload_are_left_alone() {
    let (_w, v) = state(
        vec![],
        vec![policy("b", "deny", Scope::Namespace, Action::Deny, &[])],
    );
    let local = LocalWorkload {
        namespace: "b".into(),
        name: "server".into(),
        default_identity: Identity::new("cluster.local", "b", "server").unwrap(),
    };
    let facts = ConnFacts {
        src: "10.9.0.1:1".parse().unwrap(),
        dst: "10.0.0.2:80".parse().unwrap(),
        identity: None,
    };
    assert_eq!(
        decide_tracked(&v.snapshot(), "", &local, &facts),
        Decision::Allow
    );
}
