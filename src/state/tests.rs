use std::collections::{BTreeMap, BTreeSet, HashMap};
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
        cidr_vips: vec![],
        subject_alt_names: vec![],
        waypoint: None,
        weighted_waypoints: vec![],
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

fn pick_weighted(
    c: Vec<(Arc<Workload>, u16)>,
    rng: &mut impl rand::Rng,
) -> Option<(Arc<Workload>, u16)> {
    select_endpoint(
        &Service::default(),
        c,
        &ClientLocality::default(),
        |_, _| false,
        rng,
    )
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

// === services: CIDR VIPs, visibility, locality ===

fn cidr(net: &str, addr: &str, len: u8) -> CidrVip {
    CidrVip {
        network: net.into(),
        net: crate::rbac::IpNet::new(ip(addr), len).unwrap(),
    }
}

#[test]
fn cidr_vips_longest_prefix_and_exact_first() {
    let (w, v) = StateWriter::new();
    let mut wide = service("default", "wide.example", &[], &[(80, 0)]);
    wide.cidr_vips = vec![cidr("", "10.100.0.0", 16)];
    let mut narrow = service("default", "narrow.example", &[], &[(80, 0)]);
    narrow.cidr_vips = vec![cidr("", "10.100.7.0", 24), cidr("", "fd10::", 64)];
    let exact = service(
        "default",
        "exact.example",
        &[("", "10.100.7.7")],
        &[(80, 0)],
    );
    w.apply(Update::default().upsert(wide).upsert(narrow).upsert(exact));
    let host = |a: &str| v.service_by_vip("", ip(a)).map(|s| s.hostname.clone());
    assert_eq!(host("10.100.7.7").as_deref(), Some("exact.example"));
    assert_eq!(host("10.100.7.8").as_deref(), Some("narrow.example"));
    assert_eq!(host("10.100.8.1").as_deref(), Some("wide.example"));
    assert_eq!(host("fd10::5").as_deref(), Some("narrow.example"));
    assert_eq!(host("10.101.0.1"), None);
    assert!(v.service_by_vip("net2", ip("10.100.7.8")).is_none());
}

#[test]
fn vip_lookup_honours_visibility_and_prefers_own_namespace() {
    let (w, v) = StateWriter::new();
    let mut private = service("team", "db.team", &[("", "10.96.5.5")], &[(80, 0)]);
    private.visibility = Visibility::Namespace;
    let mut shared_a = service("a", "x.a", &[("", "10.96.6.6")], &[(80, 0)]);
    shared_a.canonical = false;
    let shared_b = service("b", "x.b", &[("", "10.96.6.6")], &[(80, 0)]);
    let mut private_range = service("team", "r.team", &[], &[(80, 0)]);
    private_range.visibility = Visibility::Namespace;
    private_range.cidr_vips = vec![cidr("", "10.97.0.0", 24)];
    let mut public_range = service("other", "r.other", &[], &[(80, 0)]);
    public_range.cidr_vips = vec![cidr("", "10.97.0.0", 16)];
    w.apply(
        Update::default()
            .upsert(private)
            .upsert(shared_a)
            .upsert(shared_b)
            .upsert(private_range)
            .upsert(public_range),
    );
    let host = |a: &str, ns: &str| {
        v.service_by_vip_for("", ip(a), ns)
            .map(|s| s.hostname.clone())
    };
    assert_eq!(host("10.96.5.5", "team").as_deref(), Some("db.team"));
    assert_eq!(host("10.96.5.5", "elsewhere"), None);
    // Own namespace first, even when not canonical; otherwise the canonical one.
    assert_eq!(host("10.96.6.6", "a").as_deref(), Some("x.a"));
    assert_eq!(host("10.96.6.6", "c").as_deref(), Some("x.b"));
    // A hidden longer prefix gives way to a visible shorter one.
    assert_eq!(host("10.97.0.9", "team").as_deref(), Some("r.team"));
    assert_eq!(host("10.97.0.9", "elsewhere").as_deref(), Some("r.other"));
}

/// A service with endpoints spread over localities: uid → (region, zone, subzone, node).
fn spread(mode: LoadBalancerMode, prefs: &[LocalityScope]) -> (StateWriter, StateView, Service) {
    let (w, v) = StateWriter::new();
    let mut u = Update::default();
    for (uid, region, zone, node) in [
        ("same-zone", "r1", "z1", "n1"),
        ("same-region", "r1", "z2", "n2"),
        ("far", "r2", "z1", "n3"),
    ] {
        let mut wl = backing(workload(uid, "default", &[]), SVC, &[(80, 0)]);
        wl.locality = Locality {
            region: region.into(),
            zone: zone.into(),
            subzone: String::new(),
        };
        wl.node = node.into();
        u = u.upsert(wl);
    }
    let mut s = service("default", "web.default.svc.cluster.local", &[], &[(80, 0)]);
    s.load_balancer = Some(LoadBalancer {
        routing_preference: prefs.to_vec(),
        mode,
        health_policy: HealthPolicy::OnlyHealthy,
    });
    w.apply(u.upsert(s.clone()));
    (w, v, s)
}

fn client_in_z1() -> Workload {
    let mut c = workload("client", "default", &[]);
    c.locality = Locality {
        region: "r1".into(),
        zone: "z1".into(),
        subzone: String::new(),
    };
    c.node = "n9".into();
    c
}

/// The endpoints 60 picks land on; the same from the snapshot's prepared table (the state's
/// own value of the service) as from a list built per pick (a copy of it).
fn picks(v: &StateView, s: &Service, c: &Workload, skip: &[&str]) -> BTreeSet<String> {
    let run = |s: &Service| -> BTreeSet<String> {
        (0..60)
            .filter_map(|_| {
                v.pick_endpoint_for(s, 80, &ClientLocality::of(c), |w, _| {
                    skip.contains(&w.uid.as_str())
                })
            })
            .map(|(w, _)| w.uid.clone())
            .collect()
    };
    let copied = run(s);
    if let Some(own) = v.service_by_host(&s.namespace, &s.hostname) {
        assert_eq!(run(&own), copied, "prepared table vs per-pick list");
    }
    copied
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn failover_prefers_closest_locality_then_fails_over() {
    let prefs = [LocalityScope::Region, LocalityScope::Zone];
    let (w, v, s) = spread(LoadBalancerMode::Failover, &prefs);
    let c = client_in_z1();
    assert_eq!(picks(&v, &s, &c, &[]), set(&["same-zone"]));
    // The zone's endpoint goes unhealthy: the region is next, then anywhere.
    let mut z = (*v.workload_by_uid("same-zone").unwrap()).clone();
    z.status = HealthStatus::Unhealthy;
    w.apply(Update::default().upsert(z));
    assert_eq!(picks(&v, &s, &c, &[]), set(&["same-region"]));
    assert_eq!(picks(&v, &s, &c, &["same-region"]), set(&["far"]));
    // Everything skipped: skipping is ignored rather than failing.
    assert_eq!(
        picks(&v, &s, &c, &["same-region", "far"]),
        set(&["same-region"])
    );
}

#[test]
fn strict_never_leaves_the_locality() {
    let prefs = [LocalityScope::Region, LocalityScope::Zone];
    let (w, v, s) = spread(LoadBalancerMode::Strict, &prefs);
    let c = client_in_z1();
    assert_eq!(picks(&v, &s, &c, &[]), set(&["same-zone"]));
    w.apply(Update::default().remove(ResourceKey::Workload("same-zone".into())));
    assert!(picks(&v, &s, &c, &[]).is_empty());
    // Node scope: only endpoints on the client's node.
    let (_w, v, s) = spread(LoadBalancerMode::Strict, &[LocalityScope::Node]);
    let mut on_n2 = client_in_z1();
    on_n2.node = "n2".into();
    assert_eq!(picks(&v, &s, &on_n2, &[]), set(&["same-region"]));
}

#[test]
fn standard_mode_without_preference_spreads_by_capacity() {
    let (_w, v, s) = spread(LoadBalancerMode::Standard, &[]);
    let c = client_in_z1();
    assert_eq!(
        picks(&v, &s, &c, &[]),
        set(&["same-zone", "same-region", "far"])
    );
    assert_eq!(
        picks(&v, &s, &c, &["far"]),
        set(&["same-region", "same-zone"])
    );
}

#[test]
fn per_endpoint_port_override_wins() {
    let (_w, v) = populated();
    let s = v.service_by_vip("", ip("10.96.0.1")).unwrap();
    // a maps 80 → 8081 itself; b (net2) falls back to the service's 8080.
    let (wl, port) = v.pick_endpoint(&s, 80, "").unwrap();
    assert_eq!((wl.uid.as_str(), port), ("a", 8081));
    let (wl, port) = v.pick_endpoint(&s, 80, "net2").unwrap();
    assert_eq!((wl.uid.as_str(), port), ("b", 8080));
    // 443 maps to itself (target 0).
    assert_eq!(v.pick_endpoint(&s, 443, "").unwrap().1, 443);
}
