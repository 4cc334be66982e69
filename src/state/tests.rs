use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::*;
use crate::core::Identity;
use crate::rbac::{Action, Scope};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn workload(uid: &str, ns: &str, ips: &[&str]) -> Workload {
    let mut w = Workload::new(uid, uid, Identity::new("cluster.local", ns, "sa").unwrap());
    w.workload_ips = ips.iter().map(|s| ip(s)).collect();
    w.protocol = TunnelProtocol::Hbone;
    w
}

fn backing(mut w: Workload, svc: &str, ports: &[(u16, u16)]) -> Workload {
    w.services
        .insert(svc.to_string(), ports.iter().copied().collect());
    w
}

fn service(ns: &str, host: &str, vips: &[(&str, &str)], ports: &[(u16, u16)]) -> Service {
    Service {
        name: host.split('.').next().unwrap().into(),
        namespace: ns.into(),
        hostname: host.into(),
        vips: vips
            .iter()
            .map(|(n, a)| NetworkAddress {
                network: n.to_string(),
                address: ip(a),
            })
            .collect(),
        ports: ports.iter().copied().collect::<BTreeMap<_, _>>(),
        subject_alt_names: vec![],
        waypoint: None,
        load_balancer: None,
        ip_families: IpFamilies::Automatic,
        canonical: true,
        visibility: Visibility::Public,
    }
}

fn policy(ns: &str, name: &str, scope: Scope) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope,
        action: Action::Deny,
        dry_run: false,
        rules: vec![],
    }
}

const SVC: &str = "default/web.default.svc.cluster.local";

fn populated() -> (StateWriter, StateView) {
    let (w, v) = StateWriter::new();
    let mut net2 = backing(workload("b", "default", &["10.0.0.2"]), SVC, &[(80, 0)]);
    net2.network = "net2".into();
    w.apply(
        Update::default()
            .upsert(backing(
                workload("a", "default", &["10.0.0.1", "fd00::1"]),
                SVC,
                &[(80, 8081)],
            ))
            .upsert(net2)
            .upsert(workload("c", "other", &["10.0.0.1"]))
            .upsert(service(
                "default",
                "web.default.svc.cluster.local",
                &[("", "10.96.0.1"), ("net2", "10.96.0.2")],
                &[(80, 8080), (443, 0)],
            )),
    );
    (w, v)
}

#[test]
fn indexes_workloads_per_network_ip_uid_and_name() {
    let (_w, v) = populated();
    assert_eq!(v.workload_by_addr("", ip("10.0.0.1")).unwrap().uid, "a");
    assert_eq!(v.workload_by_addr("", ip("fd00::1")).unwrap().uid, "a");
    assert_eq!(v.workload_by_addr("net2", ip("10.0.0.2")).unwrap().uid, "b");
    assert!(v.workload_by_addr("", ip("10.0.0.2")).is_none());
    assert_eq!(v.workload_by_uid("c").unwrap().namespace(), "other");
    assert_eq!(v.workload_by_name("other", "c").unwrap().uid, "c");
    assert!(v.workload_by_name("default", "c").is_none());
    assert_eq!(
        v.workload_by_uid("a").unwrap().identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/sa"
    );
}

#[test]
fn host_network_workloads_are_not_indexed_by_ip() {
    let (w, v) = StateWriter::new();
    let mut hn = workload("h", "default", &["10.0.0.9"]);
    hn.network_mode = NetworkMode::HostNetwork;
    w.apply(Update::default().upsert(hn));
    assert!(v.workload_by_addr("", ip("10.0.0.9")).is_none());
    assert!(v.workload_by_uid("h").is_some());
}

#[test]
fn services_by_vip_and_host() {
    let (_w, v) = populated();
    let s = v.service_by_vip("", ip("10.96.0.1")).unwrap();
    assert_eq!(s.key(), SVC);
    assert_eq!(
        v.service_by_vip("net2", ip("10.96.0.2")).unwrap().key(),
        SVC
    );
    assert!(v.service_by_vip("", ip("10.96.0.2")).is_none());
    assert!(
        v.service_by_host("default", "web.default.svc.cluster.local")
            .is_some()
    );
    assert!(
        v.service_by_host("other", "web.default.svc.cluster.local")
            .is_none()
    );
}

#[test]
fn endpoints_map_target_ports() {
    let (_w, v) = populated();
    let s = v
        .service_by_host("default", "web.default.svc.cluster.local")
        .unwrap();
    let eps: Vec<(String, u16)> = v
        .endpoints(&s, 80)
        .into_iter()
        .map(|(w, p)| (w.uid.clone(), p))
        .collect();
    // a: its own mapping wins; b: 0 in its own map ⇒ the service's mapping.
    assert_eq!(eps, vec![("a".into(), 8081), ("b".into(), 8080)]);
    // 443 → 0 in the service ⇒ same as the service port.
    let eps: Vec<u16> = v.endpoints(&s, 443).into_iter().map(|(_, p)| p).collect();
    assert_eq!(eps, vec![443, 443]);
    // A port neither maps is not served.
    assert!(v.endpoints(&s, 9999).is_empty());
}

#[test]
fn unhealthy_endpoints_excluded_unless_allowed() {
    let (w, v) = populated();
    let mut a = (*v.workload_by_uid("a").unwrap()).clone();
    a.status = HealthStatus::Unhealthy;
    w.apply(Update::default().upsert(a));
    let mut s = (*v
        .service_by_host("default", "web.default.svc.cluster.local")
        .unwrap())
    .clone();
    let uids: Vec<String> = v
        .endpoints(&s, 80)
        .iter()
        .map(|(w, _)| w.uid.clone())
        .collect();
    assert_eq!(uids, vec!["b".to_string()]);
    s.load_balancer = Some(LoadBalancer {
        health_policy: HealthPolicy::AllowAll,
        ..Default::default()
    });
    assert_eq!(v.endpoints(&s, 80).len(), 2);
}

#[test]
fn pick_prefers_network_and_weights_capacity() {
    let (w, v) = populated();
    let s = v
        .service_by_host("default", "web.default.svc.cluster.local")
        .unwrap();
    for _ in 0..20 {
        assert_eq!(v.pick_endpoint(&s, 80, "net2").unwrap().0.uid, "b");
        assert_eq!(v.pick_endpoint(&s, 80, "").unwrap().0.uid, "a");
    }
    // No endpoint on the preferred network: any endpoint, by capacity (b never chosen at 0).
    let mut b = (*v.workload_by_uid("b").unwrap()).clone();
    b.capacity = 0;
    w.apply(Update::default().upsert(b));
    let mut seen = HashMap::new();
    for _ in 0..50 {
        let (wl, _) = v.pick_endpoint(&s, 80, "elsewhere").unwrap();
        *seen.entry(wl.uid.clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&50));
    assert!(v.pick_endpoint(&s, 9999, "").is_none());
}

#[test]
fn weighted_pick_uses_capacity_and_all_zero_is_uniform() {
    let mut heavy = workload("heavy", "default", &[]);
    heavy.capacity = 3;
    let mut light = workload("light", "default", &[]);
    light.capacity = 1;
    let cands = vec![(Arc::new(light), 1), (Arc::new(heavy), 1)];
    let mut counts = HashMap::new();
    let mut rng = rand::rng();
    for _ in 0..4000 {
        let (w, _) = pick_weighted(cands.clone(), &mut rng).unwrap();
        *counts.entry(w.uid.clone()).or_insert(0u32) += 1;
    }
    // Expected 3000/1000; bounds are ~20 standard deviations wide.
    assert!((2400..3600).contains(&counts["heavy"]), "{counts:?}");
    let zero: Vec<_> = cands
        .iter()
        .map(|(w, p)| {
            let mut w = (**w).clone();
            w.capacity = 0;
            (Arc::new(w), *p)
        })
        .collect();
    assert!(pick_weighted(zero, &mut rng).is_some());
    assert!(pick_weighted(vec![], &mut rng).is_none());
}

#[test]
fn policies_for_scopes() {
    let (w, v) = StateWriter::new();
    let mut wl = workload("a", "default", &["10.0.0.1"]);
    wl.authorization_policies = vec!["default/selected".into(), "default/missing".into()];
    w.apply(
        Update::default()
            .upsert(wl.clone())
            .upsert(policy("istio-system", "global", Scope::Global))
            .upsert(policy("default", "ns-wide", Scope::Namespace))
            .upsert(policy("other", "other-ns", Scope::Namespace))
            .upsert(policy("default", "selected", Scope::WorkloadSelector))
            .upsert(policy("default", "unselected", Scope::WorkloadSelector)),
    );
    let keys: Vec<String> = v.policies_for(&wl).iter().map(|p| p.key()).collect();
    assert_eq!(
        keys,
        vec!["default/ns-wide", "default/selected", "istio-system/global"]
    );
}

#[tokio::test]
async fn updates_swap_atomically_and_bump_changes() {
    let (w, v) = populated();
    let mut changes = v.changes();
    let before = v.snapshot();
    assert_eq!(*changes.borrow_and_update(), 1);
    let applied = w.apply(
        Update::default()
            .remove(ResourceKey::Workload("a".into()))
            .remove(ResourceKey::Address(SVC.into()))
            .remove(ResourceKey::Policy("x/y".into())),
    );
    assert_eq!(applied.version, 2);
    assert_eq!(
        applied.unknown_removals,
        vec![ResourceKey::Policy("x/y".into())]
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), changes.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*changes.borrow_and_update(), 2);
    // The old snapshot is untouched; the new one has neither the workload nor its indexes.
    assert!(before.workload_by_addr("", ip("10.0.0.1")).is_some());
    assert_eq!(before.version(), 1);
    let after = v.snapshot();
    // `c` shares 10.0.0.1 with `a`: it was shadowed (smallest uid wins) and now shows.
    assert_eq!(after.workload_by_addr("", ip("10.0.0.1")).unwrap().uid, "c");
    assert!(after.workload_by_addr("", ip("fd00::1")).is_none());
    assert!(after.service_by_vip("", ip("10.96.0.1")).is_none());
    assert_eq!(after.workloads().count(), 2);

    // replace_all starts from empty.
    w.apply(Update {
        replace_all: true,
        upserts: vec![workload("z", "default", &["10.0.0.7"]).into()],
        removals: vec![],
    });
    assert_eq!(v.snapshot().workloads().count(), 1);
    assert_eq!(*v.changes().borrow(), 3);
    // A later view sees the same store.
    assert!(w.view().workload_by_uid("z").is_some());
}

#[test]
fn snapshot_serializes_camel_case_in_key_order() {
    let (_w, v) = populated();
    let j = serde_json::to_value(&*v.snapshot()).unwrap();
    assert_eq!(j["version"], 1);
    let wl = &j["workloads"][0];
    assert_eq!(wl["uid"], "a");
    assert_eq!(wl["serviceAccount"], "sa");
    assert_eq!(wl["trustDomain"], "cluster.local");
    assert_eq!(wl["workloadIps"][1], "fd00::1");
    assert_eq!(wl["protocol"], "HBONE");
    assert_eq!(j["services"][0]["vips"][0], "/10.96.0.1");
}

#[test]
fn readers_never_see_half_a_batch() {
    let (w, v) = StateWriter::new();
    let reader = std::thread::spawn(move || {
        let mut last = 0;
        // Bounded: the writer publishes 200 versions; stop when the last one is seen.
        for _ in 0..1_000_000 {
            let snap = v.snapshot();
            // Each batch adds one workload and one service together.
            assert_eq!(snap.workloads().count(), snap.services().count());
            assert_eq!(snap.workloads().count() as u64, snap.version());
            assert!(snap.version() >= last, "versions go backwards");
            last = snap.version();
            if last == 200 {
                return true;
            }
        }
        false
    });
    for i in 0..200 {
        let host = format!("s{i}.default.svc.cluster.local");
        w.apply(
            Update::default()
                .upsert(workload(&format!("w{i}"), "default", &[]))
                .upsert(service("default", &host, &[], &[])),
        );
    }
    assert!(reader.join().unwrap(), "reader never saw the final version");
}
