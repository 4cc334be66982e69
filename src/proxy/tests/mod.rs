//! Routing decisions of the outbound path, on a state loaded from a local config; the flows'
//! other tests by topic in this folder.

mod explain;
mod gateway;
mod gateway_loopback;
mod outlier;
mod support;
mod waypoint;

use super::*;
use crate::conn::ILLEGAL_PORTS;
use crate::conn::baggage;
use crate::core::Identity;
use crate::hbone::WorkloadType;
use crate::proxy::outbound::{Route, route};
use crate::state::Workload;
use crate::state::{NetworkAddress, Service, StateWriter, TunnelProtocol, Update};
use support::id;

fn workload(uid: &str, ns: &str, name: &str, ips: &[&str], hbone: bool) -> Workload {
    let mut wl = Workload::new(uid, name, id(ns, name));
    wl.workload_ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
    wl.protocol = if hbone {
        TunnelProtocol::Hbone
    } else {
        TunnelProtocol::None
    };
    wl
}

fn service(name: &str, vip: &str, sans: &[&str]) -> Service {
    Service {
        name: name.into(),
        namespace: "b".into(),
        hostname: format!("{name}.b.svc.cluster.local"),
        vips: vec![NetworkAddress {
            network: String::new(),
            address: vip.parse().unwrap(),
        }],
        ports: [(80, 8080)].into_iter().collect(),
        subject_alt_names: sans.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn inputs() -> ProxyInputs {
    let (writer, view) = StateWriter::new();
    let mut client = workload("c", "a", "client", &["10.0.0.1"], true);
    client.canonical_name = "client-app".into();
    client.canonical_revision = "v2".into();
    client.cluster_id = "east".into();
    client.locality.region = "r1".into();
    client.locality.zone = "z1".into();
    let mut server = workload("s", "b", "server", &["10.0.0.2", "fd00::2"], true);
    server.services.insert(
        "b/web.b.svc.cluster.local".into(),
        [(80, 8080)].into_iter().collect(),
    );
    let legacy = workload("l", "b", "legacy", &["10.0.0.3"], false);
    writer.apply(
        Update::default()
            .upsert(client)
            .upsert(server)
            .upsert(legacy)
            .upsert(service(
                "web",
                "10.96.0.1",
                &["spiffe://cluster.local/ns/b/sa/web-extra"],
            ))
            .upsert(service("empty", "10.96.0.2", &[])),
    );
    support::inputs(view, "a", "client", Default::default())
}

#[test]
fn workload_address_goes_over_hbone_to_its_own_identity() {
    let pi = inputs();
    assert_eq!(
        route(&pi, "10.0.0.2:9000".parse().unwrap()).unwrap(),
        Route::Hbone {
            hbone: "10.0.0.2:15008".parse().unwrap(),
            target: "10.0.0.2:9000".parse().unwrap(),
            expected: vec![id("b", "server")],
        }
    );
    // IPv6 destinations keep their family.
    assert_eq!(
        route(&pi, "[fd00::2]:9000".parse().unwrap()).unwrap(),
        Route::Hbone {
            hbone: "[fd00::2]:15008".parse().unwrap(),
            target: "[fd00::2]:9000".parse().unwrap(),
            expected: vec![id("b", "server")],
        }
    );
}

#[test]
fn service_vip_picks_an_endpoint_and_its_target_port() {
    let pi = inputs();
    assert_eq!(
        route(&pi, "10.96.0.1:80".parse().unwrap()).unwrap(),
        Route::Hbone {
            hbone: "10.0.0.2:15008".parse().unwrap(),
            target: "10.0.0.2:8080".parse().unwrap(),
            expected: vec![id("b", "server"), id("b", "web-extra")],
        }
    );
}

#[test]
fn non_hbone_workloads_and_unknown_addresses_pass_through() {
    let pi = inputs();
    assert_eq!(
        route(&pi, "10.0.0.3:5432".parse().unwrap()).unwrap(),
        Route::Plain("10.0.0.3:5432".parse().unwrap())
    );
    assert_eq!(
        route(&pi, "192.0.2.10:443".parse().unwrap()).unwrap(),
        Route::Plain("192.0.2.10:443".parse().unwrap())
    );
}

#[test]
fn loops_and_empty_services_are_refused() {
    let pi = inputs();
    for port in ILLEGAL_PORTS {
        let dst: SocketAddr = SocketAddr::new("10.0.0.2".parse().unwrap(), port);
        assert_eq!(
            route(&pi, dst).unwrap_err().to_string(),
            format!("refusing a connection to {dst}: it would loop into the proxy")
        );
    }
    assert_eq!(
        route(&pi, "10.96.0.2:80".parse().unwrap())
            .unwrap_err()
            .to_string(),
        "service b/empty.b.svc.cluster.local has no healthy endpoint for port 80"
    );
}

#[test]
fn baggage_describes_the_source_workload() {
    let pi = inputs();
    let wl = pi.state.workload_by_name("a", "client").unwrap();
    let b = baggage(&wl);
    assert_eq!(b.cluster, "east");
    assert_eq!(b.namespace, "a");
    assert_eq!(b.workload_type, WorkloadType::Deployment);
    assert_eq!(b.workload_name, "client");
    assert_eq!(b.service_name, "client-app");
    assert_eq!(b.service_version, "v2");
    assert_eq!((b.region.as_str(), b.zone.as_str()), ("r1", "z1"));
}

#[test]
fn local_identity_takes_the_trust_domain_of_the_workload_record() {
    let (writer, view) = StateWriter::new();
    let local = LocalWorkload {
        namespace: "a".into(),
        name: "client".into(),
        default_identity: id("a", "client"),
    };
    // No record yet: the configured default.
    assert_eq!(
        local.identity(&view).to_string(),
        "spiffe://cluster.local/ns/a/sa/client"
    );
    let record = Workload::new(
        "c//Pod/a/client",
        "client",
        Identity::new("example.org", "a", "client").unwrap(),
    );
    writer.apply(Update::default().upsert(record));
    assert_eq!(
        local.identity(&view).to_string(),
        "spiffe://example.org/ns/a/sa/client"
    );
}

/// A `PASSTHROUGH` service `pt` (VIP 10.96.0.3) backed by `server`, and a service `ext`
/// (VIP 10.96.0.4) whose only endpoint is known by host name.
fn passthrough_and_dns_inputs() -> ProxyInputs {
    use crate::state::{LoadBalancer, LoadBalancerMode};
    let pi = inputs();
    let (writer, view) = StateWriter::new();
    let snapshot = pi.state.snapshot();
    let mut update = Update::default();
    for wl in snapshot.workloads() {
        let mut wl = (**wl).clone();
        if wl.name == "server" {
            wl.services
                .insert("b/pt.b.svc.cluster.local".into(), [(80, 8080)].into());
        }
        update = update.upsert(wl);
    }
    let mut pt = service("pt", "10.96.0.3", &[]);
    pt.load_balancer = Some(LoadBalancer {
        routing_preference: Vec::new(),
        mode: LoadBalancerMode::Passthrough,
        health_policy: Default::default(),
    });
    let mut named = workload("e", "b", "api-example", &[], false);
    named.hostname = "api.example.test".into();
    named
        .services
        .insert("b/ext.b.svc.cluster.local".into(), [(80, 8443)].into());
    writer.apply(
        update
            .upsert(pt)
            .upsert(service("ext", "10.96.0.4", &[]))
            .upsert(named),
    );
    ProxyInputs { state: view, ..pi }
}

#[test]
fn passthrough_services_go_to_the_original_destination_unlabelled() {
    let pi = passthrough_and_dns_inputs();
    let orig: SocketAddr = "10.96.0.3:80".parse().unwrap();
    let routed = crate::proxy::route::route_avoiding(&pi, orig, &|_| false, &[]).unwrap();
    assert_eq!(routed.route, Route::Plain(orig));
    assert_eq!(routed.endpoint, None);
    assert!(routed.service.is_none());
}

#[test]
fn an_endpoint_known_by_name_is_routed_once_resolved() {
    let pi = passthrough_and_dns_inputs();
    let orig: SocketAddr = "10.96.0.4:80".parse().unwrap();
    assert_eq!(
        route(&pi, orig).unwrap_err().to_string(),
        "workload b/api-example is known by host name api.example.test only and was not resolved"
    );
    let named = pi.state.workload_by_name("b", "api-example").unwrap();
    let answer = [(named.clone(), "192.0.2.44".parse().unwrap())];
    let routed = crate::proxy::route::route_avoiding(&pi, orig, &|_| false, &answer).unwrap();
    assert_eq!(
        routed.route,
        Route::Plain("192.0.2.44:8443".parse().unwrap())
    );
    assert_eq!(routed.endpoint, Some("192.0.2.44:8443".parse().unwrap()));
    // Another name's answer does not stand for this one.
    let mut elsewhere = (*named).clone();
    elsewhere.hostname = "other.test".into();
    let other = [(
        std::sync::Arc::new(elsewhere),
        "192.0.2.45".parse().unwrap(),
    )];
    assert!(crate::proxy::route::route_avoiding(&pi, orig, &|_| false, &other).is_err());
}

/// What every open connection keeps for its life stays small: the spawned future of an
/// outbound connection and of an inbound HBONE stream, and the copy. Budgets leave room for
/// growth but catch the regressions this guards against (a future stored twice by a wrapper, a
/// set-up state kept after connecting), which each cost kilobytes per connection.
#[test]
fn per_connection_futures_stay_small() {
    fn size5<A, B, C, D, E, F: std::future::Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn size7<A, B, C, D, E, G, H, F: std::future::Future>(
        _: fn(A, B, C, D, E, G, H) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }
    use crate::conn::copy::{Copy, TcpSink, TcpSource};
    use crate::hbone::{H2Recv, H2Send, InboundRequest};
    let outbound = size5(crate::proxy::outbound::handle);
    let inbound = size7(crate::proxy::inbound::serve_stream::<InboundRequest>);
    let copy = std::mem::size_of::<Copy<H2Recv, H2Send, TcpSource, TcpSink>>();
    // Printed for `cargo test --release … -- --nocapture`: release sizes are what RSS pays.
    let log = std::mem::size_of::<crate::conn::accesslog::ConnectionLog>();
    eprintln!(
        "per-connection sizes: outbound {outbound}, inbound {inbound}, copy {copy}, log {log}"
    );
    assert!(
        outbound <= 768,
        "outbound connection future: {outbound} bytes"
    );
    assert!(inbound <= 1024, "inbound stream future: {inbound} bytes");
    assert!(copy <= 512, "copy: {copy} bytes");
}
