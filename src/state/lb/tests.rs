//! The prepared endpoint table against [`select`]: same odds, same skip, STRICT and
//! all-zero-capacity behaviour.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::core::Identity;
use crate::state::{LoadBalancer, Locality};

/// Endpoint `i` in zone `z{zone}`, capacity `cap`.
fn ep(i: usize, zone: usize, cap: u32) -> Arc<Workload> {
    let id: Identity = "spiffe://td/ns/b/sa/web".parse().unwrap();
    let mut w = Workload::new(format!("ep{i}"), format!("ep{i}"), id);
    w.locality = Locality {
        region: "r1".into(),
        zone: format!("z{zone}"),
        subzone: String::new(),
    };
    w.capacity = cap;
    Arc::new(w)
}

fn svc(mode: LoadBalancerMode, prefs: &[LocalityScope]) -> Arc<Service> {
    Arc::new(Service {
        load_balancer: Some(LoadBalancer {
            mode,
            routing_preference: prefs.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn client_in(zone: &str) -> Workload {
    let id: Identity = "spiffe://td/ns/a/sa/c".parse().unwrap();
    let mut w = Workload::new("c", "c", id);
    w.locality = Locality {
        region: "r1".into(),
        zone: zone.into(),
        subzone: String::new(),
    };
    w
}

/// Endpoints: z1 has ep0 (cap 1), ep1 (cap 3), ep2 (cap 0); z2 has ep3, ep4 (cap 2 each).
fn endpoints() -> Vec<(Arc<Workload>, u16)> {
    [(0, 1, 1), (1, 1, 3), (2, 1, 0), (3, 2, 2), (4, 2, 2)]
        .into_iter()
        .map(|(i, z, c)| (ep(i, z, c), 8080))
        .collect()
}

fn tally(
    n: usize,
    mut pick: impl FnMut(&mut StdRng) -> Option<(Arc<Workload>, u16)>,
) -> BTreeMap<String, usize> {
    let mut rng = StdRng::seed_from_u64(11);
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let name = pick(&mut rng).map_or("none".to_string(), |(w, _)| w.name.clone());
        *out.entry(name).or_default() += 1;
    }
    out
}

#[test]
fn table_has_the_odds_of_select() {
    let cases = [
        (svc(LoadBalancerMode::Standard, &[]), "z1"),
        (
            svc(
                LoadBalancerMode::Failover,
                &[LocalityScope::Region, LocalityScope::Zone],
            ),
            "z1",
        ),
        (
            svc(
                LoadBalancerMode::Failover,
                &[LocalityScope::Region, LocalityScope::Zone],
            ),
            "z2",
        ),
    ];
    for (s, zone) in cases {
        let c = client_in(zone);
        let loc = ClientLocality::of(&c);
        let table = EndpointTable::new(s.clone(), endpoints());
        let skip_ep1 = |w: &Workload, _: u16| w.name == "ep1";
        for skip_one in [false, true] {
            let skip = |w: &Workload, p: u16| skip_one && skip_ep1(w, p);
            let n = 20_000;
            let fast = tally(n, |r| table.pick(&loc, skip, r));
            let slow = tally(n, |r| select(&s, endpoints(), &loc, skip, r));
            assert_eq!(
                fast.keys().collect::<Vec<_>>(),
                slow.keys().collect::<Vec<_>>(),
                "{zone} skip={skip_one}: {fast:?} vs {slow:?}"
            );
            for (k, f) in &fast {
                // Shares within 2.5 points of each other (sd of one share ≈ 0.35 points).
                let (f, s) = (*f as f64 / n as f64, slow[k] as f64 / n as f64);
                assert!(
                    (f - s).abs() < 0.025,
                    "{zone} skip={skip_one} {k}: {fast:?} vs {slow:?}"
                );
            }
        }
    }
}

#[test]
fn skipping_a_whole_locality_fails_over_and_skipping_all_keeps_them_all() {
    let s = svc(
        LoadBalancerMode::Failover,
        &[LocalityScope::Region, LocalityScope::Zone],
    );
    let c = client_in("z1");
    let loc = ClientLocality::of(&c);
    let table = EndpointTable::new(s, endpoints());
    let z1 = |w: &Workload, _: u16| w.locality.zone == "z1";
    let got = tally(500, |r| table.pick(&loc, z1, r));
    assert_eq!(got.keys().collect::<Vec<_>>(), ["ep3", "ep4"], "{got:?}");
    // Everything skipped: an ejected endpoint beats none, the client's zone first.
    let got = tally(500, |r| table.pick(&loc, |_, _| true, r));
    assert_eq!(got.keys().collect::<Vec<_>>(), ["ep0", "ep1"], "{got:?}");
}

#[test]
fn strict_without_a_match_and_zero_capacity() {
    let s = svc(LoadBalancerMode::Strict, &[LocalityScope::Zone]);
    let c = client_in("z9");
    let table = EndpointTable::new(s, endpoints());
    assert_eq!(
        table.pick(&ClientLocality::of(&c), |_, _| false, &mut rand::rng()),
        None
    );

    // All capacities zero in the best locality: uniform over it.
    let zero: Vec<_> = (0..3).map(|i| (ep(i, 1, 0), 8080)).collect();
    let table = EndpointTable::new(svc(LoadBalancerMode::Standard, &[]), zero);
    let c = client_in("z1");
    let got = tally(3_000, |r| {
        table.pick(&ClientLocality::of(&c), |_, _| false, r)
    });
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.values().all(|n| *n > 800), "{got:?}");
}

#[test]
fn a_table_serves_only_its_own_service_value() {
    let s = svc(LoadBalancerMode::Standard, &[]);
    let table = EndpointTable::new(s.clone(), endpoints());
    assert!(table.is_for(&s));
    let copy = Service::clone(&s);
    assert!(!table.is_for(&copy));
}

#[test]
fn odds_are_the_picks_own_filters_and_weights() {
    let s = svc(
        LoadBalancerMode::Failover,
        &[LocalityScope::Region, LocalityScope::Zone],
    );
    let c = client_in("z1");
    let client = ClientLocality::of(&c);
    let got: Vec<(String, f64)> = odds(&s, endpoints(), &client, |_, _| false)
        .into_iter()
        .map(|(w, _, p)| (w.name.clone(), p))
        .collect();
    // Only the client's zone ranks best; there, by capacity (ep2 has none).
    assert_eq!(
        got,
        vec![
            ("ep0".into(), 0.25),
            ("ep1".into(), 0.75),
            ("ep2".into(), 0.0)
        ]
    );
    let n = 40_000;
    let picks = tally(n, |rng| select(&s, endpoints(), &client, |_, _| false, rng));
    let share = |k: &str| *picks.get(k).unwrap_or(&0) as f64 / n as f64;
    assert!((share("ep0") - 0.25).abs() < 0.02, "{picks:?}");
    assert!((share("ep1") - 0.75).abs() < 0.02, "{picks:?}");
    // Skipping everything but ep3 leaves ep3 certain: what `explain` relies on.
    let only3 = odds(&s, endpoints(), &client, |w: &Workload, _| w.name != "ep3");
    assert_eq!(only3.len(), 1);
    assert_eq!((only3[0].0.name.as_str(), only3[0].2), ("ep3", 1.0));
}
