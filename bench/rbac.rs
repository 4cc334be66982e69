//! Authorization decision time: one connection against 10 applicable policies, and against a
//! store of 10,000 policies of 10 rules each (10 of them apply to the destination, the rest are
//! other namespaces' or select other workloads). Because the snapshot indexes policies by scope,
//! the two should cost about the same. Also shown, for scale: 10,000 policies that all apply.
//!
//! Run: `cargo bench --bench rbac` (release build, plain `main`, no harness).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use ambit::core::Identity;
use ambit::rbac::{
    Action, Authorization, Clause, ConnFacts, IpNet, Match, Rule, Scope, StringMatch, check,
};
use ambit::state::{StateWriter, Update, Workload};

const RULES: usize = 10;

/// A DENY policy of 10 rules that never matches the benchmark connection (so every rule is
/// evaluated: the worst case for an applicable policy).
fn policy(ns: &str, i: usize, scope: Scope) -> Authorization {
    let rule = |r: usize| Rule {
        clauses: vec![Clause {
            matches: vec![Match {
                principals: vec![StringMatch::Exact(format!("cluster.local/ns/x{r}/sa/y"))],
                source_ips: vec![IpNet::new([192, 168, r as u8, 0].into(), 24).unwrap()],
                destination_ports: vec![9000 + r as u16],
                ..Default::default()
            }],
        }],
    };
    Authorization {
        name: format!("p{i}"),
        namespace: ns.into(),
        scope,
        action: Action::Deny,
        dry_run: false,
        rules: (0..RULES).map(rule).collect(),
    }
}

fn server() -> Workload {
    let id = Identity::new("cluster.local", "b", "server").unwrap();
    let mut w = Workload::new("c//Pod/b/server", "server", id);
    w.workload_ips = vec!["10.1.0.3".parse().unwrap()];
    w
}

/// ns/decision for the server workload in a store holding `policies`.
fn measure(label: &str, policies: Vec<Authorization>) -> f64 {
    let (writer, view) = StateWriter::new();
    let mut u = Update::default().upsert(server());
    for p in policies {
        u = u.upsert(p);
    }
    writer.apply(u);
    let snap = view.snapshot();
    let wl = snap.workload_by_name("b", "server").unwrap().clone();
    let peer = Identity::new("cluster.local", "a", "client").unwrap();
    let facts = ConnFacts {
        src: "10.1.0.2:40000".parse::<SocketAddr>().unwrap(),
        dst: "10.1.0.3:8080".parse::<SocketAddr>().unwrap(),
        identity: Some(&peer),
    };
    let applicable = snap.applicable_policies(&wl).count();
    // Warm up, then size the run to roughly half a second.
    let mut iters = 1_000u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(check(black_box(&facts), snap.applicable_policies(&wl)));
        }
        let e = t.elapsed();
        if e.as_millis() >= 500 {
            let ns = e.as_nanos() as f64 / iters as f64;
            println!(
                "{label:<48} applicable={applicable:>6} store={:>6}  {ns:>12.1} ns/decision",
                snap.policies().count()
            );
            return ns;
        }
        iters *= 2;
    }
}

fn main() {
    let ten: Vec<Authorization> = (0..10).map(|i| policy("b", i, Scope::Namespace)).collect();
    let small = measure("10 policies (all apply)", ten.clone());

    // 9,990 unrelated: other namespaces, or workload-selector policies nobody selects here.
    let mut big = ten;
    for i in 10..10_000 {
        if i % 2 == 0 {
            big.push(policy(&format!("ns{i}"), i, Scope::Namespace));
        } else {
            big.push(policy("b", i, Scope::WorkloadSelector));
        }
    }
    let large = measure("10,000 policies (10 apply)", big);

    let all: Vec<Authorization> = (0..10_000)
        .map(|i| policy("b", i, Scope::Namespace))
        .collect();
    let every = measure("10,000 policies (all apply, for scale)", all);

    println!("ratio 10,000 (10 apply) / 10: {:.2}", large / small);
    println!("ratio 10,000 (all apply) / 10: {:.1}", every / small);
}
