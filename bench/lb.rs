//! Endpoint selection time: one pick among a service's endpoints, for services of 10, 1,000 and
//! 10,000 endpoints, as the outbound path does it per connection (`StateView::
//! pick_endpoint_for` with the state's own service value: a draw from the endpoint table the
//! snapshot prepared, locality rank, capacity-weighted choice). Four cases per size: no routing
//! preference; FAILOVER by region/zone with endpoints spread over 4 zones; the same with 10% of
//! endpoints ejected by the outlier detector (the skip predicate); and FAILOVER asked with a
//! copy of the service, which the tables do not serve (the list is built per pick: the cost
//! before the tables).
//!
//! Run: `cargo bench --bench lb` (release build, plain `main`, no harness).

use std::collections::HashSet;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use ambit::core::Identity;
use ambit::state::{
    ClientLocality, LoadBalancer, LoadBalancerMode, Locality, LocalityScope, NetworkAddress,
    Service, StateWriter, Update, Workload,
};

const SVC: &str = "b/web.b.svc.cluster.local";

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32))
}

fn endpoint(i: usize) -> Workload {
    let id = Identity::new("cluster.local", "b", "web").unwrap();
    let mut w = Workload::new(format!("ep{i}"), format!("web-{i}"), id);
    w.workload_ips = vec![ip(i)];
    w.locality = Locality {
        region: "r1".into(),
        zone: format!("z{}", i % 4),
        subzone: String::new(),
    };
    w.capacity = 1 + (i % 3) as u32;
    w.services
        .insert(SVC.into(), [(80, 8080)].into_iter().collect());
    w
}

fn service(lb: Option<LoadBalancer>) -> Service {
    Service {
        name: "web".into(),
        namespace: "b".into(),
        hostname: "web.b.svc.cluster.local".into(),
        vips: vec![NetworkAddress {
            network: String::new(),
            address: "10.96.0.1".parse().unwrap(),
        }],
        ports: [(80, 8080)].into_iter().collect(),
        load_balancer: lb,
        ..Default::default()
    }
}

/// ns per pick, over enough iterations for about a quarter second.
fn measure(
    label: &str,
    n: usize,
    lb: Option<LoadBalancer>,
    ejected_share: usize,
    copy: bool,
) -> f64 {
    let (writer, view) = StateWriter::new();
    let mut u = Update::default().upsert(service(lb));
    for i in 0..n {
        u = u.upsert(endpoint(i));
    }
    writer.apply(u);
    let svc = view
        .service_by_host("b", "web.b.svc.cluster.local")
        .unwrap();
    let svc = if copy {
        std::sync::Arc::new(Service::clone(&svc))
    } else {
        svc
    };
    let client = {
        let id = Identity::new("cluster.local", "a", "client").unwrap();
        let mut c = Workload::new("client", "client", id);
        c.locality = Locality {
            region: "r1".into(),
            zone: "z1".into(),
            subzone: String::new(),
        };
        c
    };
    let loc = ClientLocality::of(&client);
    let ejected: HashSet<SocketAddr> = (0..n)
        .filter(|i| ejected_share > 0 && i % ejected_share == 0)
        .map(|i| SocketAddr::new(ip(i), 8080))
        .collect();
    let skip = |w: &Workload, port: u16| {
        !ejected.is_empty() && ejected.contains(&SocketAddr::new(w.workload_ips[0], port))
    };
    let iters = (2_000_000 / n).clamp(200, 200_000);
    // Warm up.
    for _ in 0..iters / 10 {
        black_box(view.pick_endpoint_for(&svc, 80, &loc, skip));
    }
    let start = Instant::now();
    for _ in 0..iters {
        black_box(view.pick_endpoint_for(&svc, 80, &loc, skip));
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    println!("  {label:<40} {n:>6} endpoints: {:>10.0} ns/pick", ns);
    ns
}

fn main() {
    println!("lb: endpoint selection per connection");
    let failover = || {
        Some(LoadBalancer {
            routing_preference: vec![LocalityScope::Region, LocalityScope::Zone],
            mode: LoadBalancerMode::Failover,
            ..Default::default()
        })
    };
    for n in [10, 1_000, 10_000] {
        measure("standard (network, capacity)", n, None, 0, false);
        measure("failover region/zone", n, failover(), 0, false);
        measure("failover, 10% ejected", n, failover(), 10, false);
        measure(
            "failover, per-pick list (service copy)",
            n,
            failover(),
            0,
            true,
        );
    }
}
