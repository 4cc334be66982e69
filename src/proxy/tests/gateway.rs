//! Multi-network routing (outbound: which endpoints go through a network gateway, and the
//! errors when they cannot) and `hostname:port` targets (inbound), on a state with a service
//! `web` whose endpoints sit on the local network `net1` and the remote network `net2`.

use std::net::SocketAddr;

use http::StatusCode;

use super::support::{self, id};
use crate::core::Authority;
use crate::proxy::inbound::{HostTargetError, host_target};
use crate::proxy::outbound::{Route, RouteError, route};
use crate::proxy::*;
use crate::state::Workload;
use crate::state::{
    GatewayAddress, GatewayDestination, NetworkAddress, Service, StateWriter, TunnelProtocol,
    Update,
};

const WEB: &str = "web.b.svc.cluster.local";

fn workload(ns: &str, name: &str, ip: &str, network: &str) -> Workload {
    let mut wl = Workload::new(format!("{ns}/{name}"), name, id(ns, name));
    wl.workload_ips = vec![ip.parse().unwrap()];
    wl.protocol = TunnelProtocol::Hbone;
    wl.network = network.into();
    wl
}

fn gateway_at(ip: &str) -> GatewayAddress {
    GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress {
            network: "net2".into(),
            address: ip.parse().unwrap(),
        }),
        hbone_mtls_port: 15009,
    }
}

fn web(sans: &[&str]) -> Service {
    Service {
        name: "web".into(),
        namespace: "b".into(),
        hostname: WEB.into(),
        vips: vec![NetworkAddress {
            network: "net1".into(),
            address: "10.96.0.1".parse().unwrap(),
        }],
        ports: [(80, 8080), (81, 0)].into_iter().collect(),
        subject_alt_names: sans.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// `remote` backs `web` on net2 behind the gateway `gw`; with `local_endpoint`, `near` backs it
/// on net1 as well. The proxy serves `ns/name` on network `network`.
fn inputs(
    network: &str,
    (ns, name): (&str, &str),
    remote_gateway: Option<GatewayAddress>,
    sans: &[&str],
    local_endpoint: bool,
) -> ProxyInputs {
    let (writer, view) = StateWriter::new();
    let mut remote = workload("b", "server", "10.2.0.5", "net2");
    remote
        .services
        .insert(format!("b/{WEB}"), [(80, 9090)].into());
    remote.network_gateway = remote_gateway;
    let mut update = Update::default()
        .upsert(workload("a", "client", "10.1.0.1", "net1"))
        .upsert(remote)
        .upsert(workload("istio-system", "eastwest", "172.30.9.9", "net2"))
        .upsert(web(sans));
    if local_endpoint {
        let mut near = workload("b", "near", "10.1.0.7", "net1");
        near.services.insert(format!("b/{WEB}"), [].into());
        update = update.upsert(near);
    }
    writer.apply(update);
    let mut pi = support::inputs(view, ns, name, Default::default());
    let mut cfg = (*pi.cfg).clone();
    cfg.network = network.into();
    pi.cfg = Arc::new(cfg);
    pi
}

fn client(gw: Option<GatewayAddress>, sans: &[&str], local_endpoint: bool) -> ProxyInputs {
    inputs("net1", ("a", "client"), gw, sans, local_endpoint)
}

const SERVER_SAN: &str = "spiffe://cluster.local/ns/b/sa/server";

#[test]
fn a_remote_endpoint_is_reached_through_its_network_gateway() {
    let pi = client(Some(gateway_at("172.30.9.9")), &[SERVER_SAN], false);
    let Route::Gateway { via, target } = route(&pi, "10.96.0.1:80".parse().unwrap()).unwrap()
    else {
        panic!("expected a gateway route");
    };
    assert_eq!(target, Some("10.2.0.5:9090".parse().unwrap()));
    assert_eq!(
        via.gateway,
        "172.30.9.9:15009".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(via.gateway_expected, vec![id("istio-system", "eastwest")]);
    // The authority names the service and its *service* port, not the endpoint.
    assert_eq!(via.authority, Authority::Host(WEB.into(), 80));
    assert_eq!(via.final_expected, vec![id("b", "server")]);
    assert_eq!(via.network, "net2");
}

#[test]
fn a_local_endpoint_is_preferred_over_the_gateway() {
    let pi = client(Some(gateway_at("172.30.9.9")), &[SERVER_SAN], true);
    for _ in 0..20 {
        assert_eq!(
            route(&pi, "10.96.0.1:80".parse().unwrap()).unwrap(),
            Route::Hbone {
                hbone: "10.1.0.7:15008".parse().unwrap(),
                target: "10.1.0.7:8080".parse().unwrap(),
                expected: vec![id("b", "near"), id("b", "server")],
            }
        );
    }
}

fn route_error(pi: &ProxyInputs) -> String {
    match route(pi, "10.96.0.1:80".parse().unwrap()) {
        Err(e @ RouteError::Gateway(_)) => e.to_string(),
        other => panic!("expected a gateway error, got {other:?}"),
    }
}

#[test]
fn a_remote_endpoint_without_a_gateway_is_a_documented_error() {
    let pi = client(None, &[SERVER_SAN], false);
    assert_eq!(
        route_error(&pi),
        format!(
            "endpoint b/server of service b/{WEB} is on network \"net2\", which publishes no \
             network gateway (workload field network_gateway) to reach it through"
        )
    );
}

#[test]
fn a_service_without_subject_alt_names_is_refused() {
    // Names that are not SPIFFE identities verify nothing either.
    for sans in [&[][..], &["not-a-spiffe-id"][..]] {
        let pi = client(Some(gateway_at("172.30.9.9")), sans, false);
        assert_eq!(
            route_error(&pi),
            format!(
                "service b/{WEB} has no subject_alt_names: the inner TLS of double HBONE to its \
                 endpoint on network \"net2\" could not verify the destination, refusing"
            )
        );
    }
}

#[test]
fn an_unknown_gateway_cannot_be_verified_and_is_an_error() {
    let pi = client(Some(gateway_at("172.30.9.10")), &[SERVER_SAN], false);
    assert_eq!(
        route_error(&pi),
        "network gateway net2/172.30.9.10 of network \"net2\" is not a known workload"
    );
}

fn server() -> ProxyInputs {
    inputs("net2", ("b", "server"), None, &[SERVER_SAN], false)
}

#[test]
fn a_host_target_resolves_to_the_local_endpoint_and_its_port_mapping() {
    let pi = server();
    let snap = pi.state.snapshot();
    // The workload's own mapping wins.
    assert_eq!(
        host_target(&pi, &snap, WEB, 80),
        Ok("10.2.0.5:9090".parse().unwrap())
    );
    // Host names are case-insensitive; a 0 target port means the service port.
    assert_eq!(
        host_target(&pi, &snap, "Web.B.svc.cluster.local", 81),
        Ok("10.2.0.5:81".parse().unwrap())
    );
}

#[test]
fn host_targets_that_are_not_ours_are_refused_with_their_status() {
    let pi = server();
    let snap = pi.state.snapshot();
    let unknown = host_target(&pi, &snap, "nope.b.svc.cluster.local", 80).unwrap_err();
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        unknown.to_string(),
        "CONNECT to nope.b.svc.cluster.local:80: no service has host name nope.b.svc.cluster.local"
    );
    let unmapped = host_target(&pi, &snap, WEB, 82).unwrap_err();
    assert_eq!(unmapped.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        unmapped.to_string(),
        format!("CONNECT to {WEB}:82: service b/{WEB} has no mapping for port 82")
    );
    // The client does not back `web`: it is not a destination on this pod.
    let client = client(None, &[SERVER_SAN], false);
    let snap = client.state.snapshot();
    let err = host_target(&client, &snap, WEB, 80).unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    assert!(
        matches!(err, HostTargetError::NotAnEndpoint { .. }),
        "{err}"
    );
}

#[test]
fn a_proxy_header_for_a_host_name_names_the_service_vip_and_port() {
    use crate::proxy::inbound::host_proxy_dst;
    let pi = server();
    let snap = pi.state.snapshot();
    // `web` has its VIP on net1 only: as ztunnel, any VIP will do when this network has none.
    assert_eq!(
        host_proxy_dst(&pi, &snap, WEB, 80),
        Some("10.96.0.1:80".parse().unwrap())
    );
    assert_eq!(host_proxy_dst(&pi, &snap, "nope.example.com", 80), None);
}

#[test]
fn a_source_that_came_through_a_gateway_is_not_looked_up_by_its_address() {
    use crate::conn::accesslog::inbound_labels;
    let pi = server();
    let local = pi.state.workload_by_name("b", "server").unwrap();
    // The TCP peer of a double-HBONE stream is the gateway.
    let gateway: SocketAddr = "172.30.9.9:40000".parse().unwrap();
    let client = id("a", "client");
    let looked_up = inbound_labels(&pi, &local, (Some(gateway), None), Some(&client), (None, 1));
    assert_eq!(
        looked_up.traffic.source_workload, "eastwest",
        "the mis-attribution avoided"
    );
    let from_gateway = inbound_labels(&pi, &local, (None, None), Some(&client), (Some(WEB), 1));
    assert_eq!(from_gateway.traffic.source_workload, "unknown");
    assert_eq!(from_gateway.traffic.source_principal, client.to_string());
    assert_eq!(from_gateway.traffic.destination_service, WEB);
}

#[test]
fn through_a_gateway_the_source_labels_come_from_its_baggage() {
    use crate::conn::accesslog::inbound_labels;
    let pi = server();
    let local = pi.state.workload_by_name("b", "server").unwrap();
    let client = id("a", "client");
    let b: crate::hbone::Baggage =
        "k8s.cluster.name=c2,k8s.namespace.name=a,k8s.deployment.name=client-v1,service.name=client,service.version=v1,cloud.region=r2,cloud.availability_zone=z2"
            .parse()
            .unwrap();
    let l = inbound_labels(&pi, &local, (None, Some(&b)), Some(&client), (None, 9090));
    let t = &l.traffic;
    assert_eq!(
        (
            t.source_workload.as_str(),
            t.source_canonical_service.as_str(),
            t.source_canonical_revision.as_str(),
            t.source_workload_namespace.as_str(),
            t.source_cluster.as_str(),
            t.source_region.as_str(),
            t.source_zone.as_str(),
        ),
        ("client-v1", "client", "v1", "a", "c2", "r2", "z2")
    );
    // ztunnel's mapping: `source_app` is the workload name.
    assert_eq!(t.source_app, "client-v1");
    assert_eq!(t.source_principal, client.to_string());
    assert_eq!(l.src_workload.as_deref(), Some("client"));
    // A source the local state knows wins over what its baggage says.
    let gateway: SocketAddr = "172.30.9.9:40000".parse().unwrap();
    let l = inbound_labels(
        &pi,
        &local,
        (Some(gateway), Some(&b)),
        Some(&client),
        (None, 1),
    );
    assert_eq!(l.traffic.source_workload, "eastwest");
}

#[test]
fn a_forwarded_host_counts_only_when_it_is_a_service_of_the_destination() {
    use crate::conn::accesslog::inbound_labels;
    let pi = server();
    let local = pi.state.workload_by_name("b", "server").unwrap();
    let forged = inbound_labels(
        &pi,
        &local,
        (None, None),
        None,
        (Some("attacker.example.com"), 7777),
    );
    assert_eq!(forged.traffic.destination_service, "unknown");
    // Forged, but the port still says which service it is: the guess, not the forgery.
    let forged = inbound_labels(&pi, &local, (None, None), None, (Some("evil"), 9090));
    assert_eq!(forged.traffic.destination_service, WEB);
    let own = inbound_labels(&pi, &local, (None, None), None, (Some(WEB), 7777));
    assert_eq!(own.traffic.destination_service, WEB);
    assert_eq!(own.traffic.destination_service_name, "web");
}

#[test]
fn without_a_forwarded_host_the_service_is_guessed_by_the_delivered_port() {
    use crate::conn::accesslog::inbound_labels;
    let pi = server();
    let local = pi.state.workload_by_name("b", "server").unwrap();
    // The workload maps WEB's port 80 to 9090: a connection delivered to 9090 is WEB's.
    let guessed = inbound_labels(&pi, &local, (None, None), None, (None, 9090));
    assert_eq!(guessed.traffic.destination_service, WEB);
    assert_eq!(guessed.dst_workload.as_deref(), Some("server"));
    let other = inbound_labels(&pi, &local, (None, None), None, (None, 7777));
    assert_eq!(other.traffic.destination_service, "unknown");
}

/// `web` has the waypoint service `wp`, whose only instance is on net2 behind the gateway.
#[test]
fn a_waypoint_on_another_network_is_reached_through_its_gateway() {
    let pi = client(Some(gateway_at("172.30.9.9")), &[SERVER_SAN], false);
    let snap = pi.state.snapshot();
    let mut web = (**snap.services().find(|s| s.name == "web").unwrap()).clone();
    web.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Hostname {
            namespace: "b".into(),
            hostname: "wp.b.svc.cluster.local".into(),
        },
        hbone_mtls_port: 15008,
    });
    let wp_svc = Service {
        name: "wp".into(),
        namespace: "b".into(),
        hostname: "wp.b.svc.cluster.local".into(),
        ports: [(15008, 15008)].into_iter().collect(),
        subject_alt_names: vec!["spiffe://cluster.local/ns/b/sa/waypoint-sa".into()],
        ..Default::default()
    };
    let mut wp = workload("b", "wp", "10.2.0.9", "net2");
    wp.services
        .insert("b/wp.b.svc.cluster.local".into(), [].into());
    wp.network_gateway = Some(gateway_at("172.30.9.9"));
    let (writer, view) = StateWriter::new();
    let mut update = Update::default().upsert(web).upsert(wp_svc).upsert(wp);
    for w in snap.workloads().filter(|w| w.name != "server") {
        update = update.upsert((**w).clone());
    }
    writer.apply(update);
    let pi = ProxyInputs { state: view, ..pi };
    let Route::Gateway { via, target } = route(&pi, "10.96.0.1:80".parse().unwrap()).unwrap()
    else {
        panic!("expected a gateway route");
    };
    // As ztunnel: the authority is the *service* (the gateway gives it to its waypoint), the
    // final server is verified as the waypoint.
    assert_eq!(target, None);
    assert_eq!(
        via.gateway,
        "172.30.9.9:15009".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(via.authority, Authority::Host(WEB.into(), 80));
    assert_eq!(
        via.final_expected,
        vec![
            id("b", "wp"),
            "spiffe://cluster.local/ns/b/sa/waypoint-sa"
                .parse()
                .unwrap()
        ]
    );
    assert_eq!(via.network, "net2");
}
