//! The incremental write path against two oracles, over random batches with colliding keys
//! (shared IPs, names, VIPs and ranges, re-upserts of the same value, removals of what is
//! not there, full replacements): a linear scan of the primary maps, and a snapshot built in
//! one batch from nothing with the same resources.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::super::types::{CidrVip, IpFamilies, NetworkAddress, Visibility};
use super::super::*;
use crate::core::Identity;
use crate::rbac::IpNet;

const NETWORKS: [&str; 2] = ["", "n1"];
const NAMESPACES: [&str; 3] = ["ns", "ns-a", "ns0"];
const PORTS: [u16; 2] = [80, 443];

fn pick<'a, T>(rng: &mut StdRng, from: &'a [T]) -> &'a T {
    &from[rng.random_range(0..from.len())]
}

fn addr(i: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, i])
}

fn vip(i: u8) -> IpAddr {
    IpAddr::from([10, 96, 0, i])
}

fn service_keys() -> Vec<(&'static str, &'static str)> {
    let hosts = ["a.svc", "A.svc", "b.svc"];
    NAMESPACES[..2]
        .iter()
        .flat_map(|ns| hosts.iter().map(move |h| (*ns, *h)))
        .collect()
}

fn random_workload(rng: &mut StdRng) -> Workload {
    let uid = format!("u{}", rng.random_range(0..12));
    let ns = pick(rng, &NAMESPACES);
    let name = format!("n{}", rng.random_range(0..3));
    let mut w = Workload::new(uid, name, Identity::new("cluster.local", ns, "sa").unwrap());
    w.network = pick(rng, &NETWORKS).to_string();
    if rng.random_bool(0.15) {
        w.network_mode = NetworkMode::HostNetwork;
    }
    w.workload_ips = (0..rng.random_range(0..3))
        .map(|_| addr(rng.random_range(0..4)))
        .collect();
    if rng.random_bool(0.2) {
        w.status = HealthStatus::Unhealthy;
    }
    for _ in 0..rng.random_range(0..3) {
        let (ns, host) = *pick(rng, &service_keys());
        let target = *pick(rng, &[0u16, 8080]);
        w.services
            .entry(service_key(ns, host))
            .or_default()
            .insert(*pick(rng, &PORTS), target);
    }
    w
}

fn random_service(rng: &mut StdRng) -> Service {
    let (ns, host) = *pick(rng, &service_keys());
    let vips = (0..rng.random_range(0..3))
        .map(|_| NetworkAddress {
            network: pick(rng, &NETWORKS).to_string(),
            address: vip(rng.random_range(0..3)),
        })
        .collect();
    let cidr_vips = (0..rng.random_range(0..2))
        .map(|_| CidrVip {
            network: pick(rng, &NETWORKS).to_string(),
            net: IpNet::new(vip(0), *pick(rng, &[16u8, 24])).unwrap(),
        })
        .collect();
    Service {
        name: host.into(),
        namespace: ns.into(),
        hostname: host.into(),
        vips,
        cidr_vips,
        ports: [(80, 0)].into_iter().collect(),
        ip_families: IpFamilies::Automatic,
        canonical: rng.random_bool(0.5),
        visibility: Visibility::Public,
        ..Service::default()
    }
}

fn random_batch(rng: &mut StdRng) -> Update {
    let mut u = Update {
        replace_all: rng.random_bool(0.05),
        ..Update::default()
    };
    for _ in 0..rng.random_range(1..8) {
        match rng.random_range(0..10) {
            0..=3 => {
                let w = Arc::new(random_workload(rng));
                if rng.random_bool(0.1) {
                    u.upserts.push(Resource::Workload(w.clone()));
                }
                u.upserts.push(Resource::Workload(w));
            }
            4..=5 => u
                .upserts
                .push(Resource::Service(Arc::new(random_service(rng)))),
            6 => u.removals.push(ResourceKey::Workload(format!(
                "u{}",
                rng.random_range(0..12)
            ))),
            7 => {
                let (ns, host) = *pick(rng, &service_keys());
                u.removals.push(ResourceKey::Service(service_key(ns, host)));
            }
            _ => u.removals.push(ResourceKey::Address(format!(
                "u{}",
                rng.random_range(0..12)
            ))),
        }
    }
    u
}

fn uids(list: &[Arc<Workload>]) -> Vec<String> {
    list.iter().map(|w| w.uid.clone()).collect()
}

/// Every lookup of `got` against the scans of its primary maps and against `fresh`.
fn check(got: &Snapshot, fresh: &Snapshot, step: usize) {
    let mut workloads: Vec<&Arc<Workload>> = got.workloads().collect();
    workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut services: Vec<&Arc<Service>> = got.services().collect();
    services.sort_by_key(|s| s.key());
    assert_eq!(
        got.workloads().count(),
        fresh.workloads().count(),
        "step {step}"
    );
    assert_eq!(
        got.services().count(),
        fresh.services().count(),
        "step {step}"
    );

    for net in NETWORKS {
        for i in 0..4 {
            let ip = addr(i);
            let want = workloads.iter().find(|w| {
                w.network_mode == NetworkMode::Standard
                    && w.network == net
                    && w.workload_ips.contains(&ip)
            });
            let got_uid = got.workload_by_addr(net, ip).map(|w| &w.uid);
            assert_eq!(
                got_uid,
                want.map(|w| &w.uid),
                "step {step}: addr {net}/{ip}"
            );
        }
        for i in 0..3 {
            for ns in [None, Some(NAMESPACES[0]), Some(NAMESPACES[1])] {
                let key = |s: Option<&Arc<Service>>| s.map(|s| s.key());
                assert_eq!(
                    key(got.service_by_vip_for(net, vip(i), ns)),
                    key(fresh.service_by_vip_for(net, vip(i), ns)),
                    "step {step}: vip {net}/{} for {ns:?}",
                    vip(i)
                );
            }
        }
    }
    for ns in NAMESPACES {
        for i in 0..3 {
            let name = format!("n{i}");
            let want = workloads
                .iter()
                .find(|w| w.namespace() == ns && w.name == name);
            let got_uid = got.workload_by_name(ns, &name).map(|w| &w.uid);
            assert_eq!(
                got_uid,
                want.map(|w| &w.uid),
                "step {step}: name {ns}/{name}"
            );
        }
    }
    for host in ["a.svc", "b.svc"] {
        let want: Vec<String> = services
            .iter()
            .filter(|s| s.hostname.to_ascii_lowercase() == host)
            .map(|s| s.key())
            .collect();
        let have: Vec<String> = got
            .services_by_hostname(host)
            .iter()
            .map(|s| s.key())
            .collect();
        assert_eq!(have, want, "step {step}: hostname {host}");
    }
    for s in &services {
        let key = s.key();
        let want: Vec<String> = workloads
            .iter()
            .filter(|w| w.services.contains_key(&key))
            .map(|w| w.uid.clone())
            .collect();
        assert_eq!(uids(got.service_workloads(s)), want, "step {step}: {key}");
        for port in PORTS {
            let eps: Vec<(String, u16)> = got
                .endpoints(s, port)
                .into_iter()
                .map(|(w, p)| (w.uid.clone(), p))
                .collect();
            let fresh_eps: Vec<(String, u16)> = fresh
                .endpoints(s, port)
                .into_iter()
                .map(|(w, p)| (w.uid.clone(), p))
                .collect();
            assert_eq!(eps, fresh_eps, "step {step}: endpoints {key}:{port}");
            check_picks(got, s, port, &eps, step);
        }
    }
}

/// A pick that skips every endpoint but one returns that one exactly when the service's
/// prepared table has it (a skip that leaves none is ignored): the tables are not stale.
fn check_picks(snap: &Snapshot, svc: &Service, port: u16, eps: &[(String, u16)], step: usize) {
    let mut rng = StdRng::seed_from_u64(7);
    let client = lb::ClientLocality::on_network("");
    let all: BTreeSet<&str> = eps.iter().map(|(u, _)| u.as_str()).collect();
    let any = snap.pick_endpoint(svc, port, &client, |_, _| true, &mut rng);
    assert_eq!(
        any.is_some(),
        !eps.is_empty(),
        "step {step}: pick {}",
        svc.key()
    );
    if let Some((w, _)) = any {
        assert!(
            all.contains(w.uid.as_str()),
            "step {step}: stale pick {}",
            w.uid
        );
    }
    for (uid, target) in eps {
        let only = |w: &Workload, _: u16| w.uid != *uid;
        let (w, p) = snap
            .pick_endpoint(svc, port, &client, only, &mut rng)
            .unwrap();
        assert_eq!(
            (&w.uid, p),
            (uid, *target),
            "step {step}: pick {}",
            svc.key()
        );
    }
}

#[test]
fn incremental_indexes_match_a_fresh_build_and_a_scan() {
    let (writer, view) = StateWriter::new();
    let mut rng = StdRng::seed_from_u64(16);
    for step in 0..400 {
        writer.apply(random_batch(&mut rng));
        let got = view.snapshot();
        let all = Update {
            replace_all: true,
            upserts: got
                .workloads()
                .map(|w| Resource::Workload(w.clone()))
                .chain(got.services().map(|s| Resource::Service(s.clone())))
                .collect(),
            removals: Vec::new(),
        };
        let (fresh, _) = Snapshot::default().with_update(all, 1);
        check(&got, &fresh, step);
    }
}
