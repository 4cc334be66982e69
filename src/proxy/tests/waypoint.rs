//! Waypoint routing (outbound) and sandwich-mode destination acceptance (inbound), on a state
//! with a service waypoint, a workload waypoint and the waypoint's own service.

use std::net::SocketAddr;

use super::support::{self, id};
use crate::proxy::inbound::local_destination;
use crate::proxy::outbound::{Route, route};
use crate::proxy::*;
use crate::state::Workload;
use crate::state::{
    GatewayAddress, GatewayDestination, NetworkAddress, Service, StateWriter, TunnelProtocol,
    Update,
};

fn workload(ns: &str, name: &str, ip: &str) -> Workload {
    let mut wl = Workload::new(format!("{ns}/{name}"), name, id(ns, name));
    wl.workload_ips = vec![ip.parse().unwrap()];
    wl.protocol = TunnelProtocol::Hbone;
    wl
}

fn service(name: &str, vip: &str, port: (u16, u16)) -> Service {
    Service {
        name: name.into(),
        namespace: "b".into(),
        hostname: format!("{name}.b.svc.cluster.local"),
        vips: vec![NetworkAddress {
            network: String::new(),
            address: vip.parse().unwrap(),
        }],
        ports: [port].into_iter().collect(),
        ..Default::default()
    }
}

/// `web` (VIP 10.96.0.1) has the waypoint service `wp` (instance b/wp at 10.0.0.9); the
/// workload b/db (10.0.0.3) has the waypoint at address 10.0.0.9 and backs `dbsvc` (VIP
/// 10.96.0.3, no waypoint of its own); b/server backs `web`.
fn inputs(local_ns: &str, local_name: &str) -> ProxyInputs {
    let (writer, view) = StateWriter::new();
    let wp_host = GatewayAddress {
        destination: GatewayDestination::Hostname {
            namespace: "b".into(),
            hostname: "wp.b.svc.cluster.local".into(),
        },
        hbone_mtls_port: 15008,
    };
    let wp_addr = GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress {
            network: String::new(),
            address: "10.0.0.9".parse().unwrap(),
        }),
        hbone_mtls_port: 15008,
    };
    let mut server = workload("b", "server", "10.0.0.2");
    server
        .services
        .insert("b/web.b.svc.cluster.local".into(), [(80, 8080)].into());
    let mut db = workload("b", "db", "10.0.0.3");
    db.waypoint = Some(wp_addr);
    db.services
        .insert("b/dbsvc.b.svc.cluster.local".into(), [(5432, 5432)].into());
    let mut wp = workload("b", "wp", "10.0.0.9");
    wp.services
        .insert("b/wp.b.svc.cluster.local".into(), [(15008, 15008)].into());
    let mut web = service("web", "10.96.0.1", (80, 8080));
    web.waypoint = Some(wp_host);
    writer.apply(
        Update::default()
            .upsert(workload("a", "client", "10.0.0.1"))
            .upsert(server)
            .upsert(db)
            .upsert(wp)
            .upsert(web)
            .upsert(service("wp", "10.96.0.9", (15008, 15008)))
            .upsert(service("dbsvc", "10.96.0.3", (5432, 5432))),
    );
    support::inputs(view, local_ns, local_name, Default::default())
}

#[test]
fn service_with_a_waypoint_goes_to_it_with_the_vip_as_authority() {
    let pi = inputs("a", "client");
    assert_eq!(
        route(&pi, "10.96.0.1:80".parse().unwrap()).unwrap(),
        Route::Hbone {
            hbone: "10.0.0.9:15008".parse().unwrap(),
            target: "10.96.0.1:80".parse().unwrap(),
            expected: vec![id("b", "wp")],
        }
    );
}

#[test]
fn workload_with_a_waypoint_goes_to_it_with_its_address_as_authority() {
    let pi = inputs("a", "client");
    assert_eq!(
        route(&pi, "10.0.0.3:5432".parse().unwrap()).unwrap(),
        Route::Hbone {
            hbone: "10.0.0.9:15008".parse().unwrap(),
            target: "10.0.0.3:5432".parse().unwrap(),
            expected: vec![id("b", "wp")],
        }
    );
}

#[test]
fn a_service_without_a_waypoint_goes_to_its_endpoint_directly_even_if_it_has_one() {
    // ztunnel: a workload's waypoint is for traffic addressed to the workload only.
    let pi = inputs("a", "client");
    for _ in 0..5 {
        assert_eq!(
            route(&pi, "10.96.0.3:5432".parse().unwrap()).unwrap(),
            Route::Hbone {
                hbone: "10.0.0.3:15008".parse().unwrap(),
                target: "10.0.0.3:5432".parse().unwrap(),
                expected: vec![id("b", "db")],
            }
        );
    }
    // Addressed to the workload itself: through its waypoint.
    assert_eq!(
        route(&pi, "10.0.0.3:5432".parse().unwrap()).unwrap(),
        Route::Hbone {
            hbone: "10.0.0.9:15008".parse().unwrap(),
            target: "10.0.0.3:5432".parse().unwrap(),
            expected: vec![id("b", "wp")],
        }
    );
}

#[test]
fn the_waypoints_own_traffic_is_not_sent_back_to_it() {
    let pi = inputs("b", "wp");
    assert_eq!(
        route(&pi, "10.96.0.1:80".parse().unwrap()).unwrap(),
        Route::Hbone {
            hbone: "10.0.0.2:15008".parse().unwrap(),
            target: "10.0.0.2:8080".parse().unwrap(),
            expected: vec![id("b", "server")],
        }
    );
    assert_eq!(
        route(&pi, "10.0.0.3:5432".parse().unwrap()).unwrap(),
        Route::Hbone {
            hbone: "10.0.0.3:15008".parse().unwrap(),
            target: "10.0.0.3:5432".parse().unwrap(),
            expected: vec![id("b", "db")],
        }
    );
}

#[test]
fn a_waypoint_that_cannot_be_identified_is_an_error() {
    let pi = inputs("a", "client");
    // Remove the waypoint's instance: its service has no backend left.
    let (writer, view) = StateWriter::new();
    writer.apply(Update {
        replace_all: true,
        upserts: pi
            .state
            .snapshot()
            .workloads()
            .filter(|w| w.name != "wp")
            .map(|w| crate::state::Resource::Workload(w.clone()))
            .chain(
                pi.state
                    .snapshot()
                    .services()
                    .map(|s| crate::state::Resource::Service(s.clone())),
            )
            .collect(),
        removals: vec![],
    });
    let pi = ProxyInputs { state: view, ..pi };
    assert_eq!(
        route(&pi, "10.96.0.1:80".parse().unwrap())
            .unwrap_err()
            .to_string(),
        "waypoint service b/wp.b.svc.cluster.local has no healthy instance"
    );
    assert_eq!(
        route(&pi, "10.0.0.3:5432".parse().unwrap())
            .unwrap_err()
            .to_string(),
        "waypoint /10.0.0.9 is not a known workload"
    );
}

#[test]
fn inbound_on_a_waypoint_accepts_what_it_serves() {
    let pi = inputs("b", "wp");
    let snap = pi.state.snapshot();
    let dest = |t: &str| {
        local_destination(&pi, &snap, t.parse().unwrap()).map(|(w, a)| (w.name.clone(), a))
    };
    // Its own address, a VIP it is the waypoint of, a workload it is the waypoint of.
    for (t, up) in [
        ("10.0.0.9:15021", "10.0.0.9:15021"),
        ("10.96.0.1:80", "10.0.0.9:80"),
        ("10.0.0.3:5432", "10.0.0.9:5432"),
    ] {
        assert_eq!(dest(t), Some(("wp".into(), up.parse().unwrap())), "{t}");
    }
    // Another workload it does not serve.
    assert_eq!(dest("10.0.0.2:8080"), None);
    // A plain workload accepts only its own address.
    let pi = inputs("b", "server");
    let snap = pi.state.snapshot();
    assert!(local_destination(&pi, &snap, "10.96.0.1:80".parse().unwrap()).is_none());
    assert!(local_destination(&pi, &snap, "10.0.0.2:8080".parse().unwrap()).is_some());
}

#[test]
fn a_workload_with_an_application_tunnel_accepts_any_target() {
    // As ztunnel: the target goes to the app in the PROXY header; the app decides.
    let (writer, view) = StateWriter::new();
    let mut tunneled = workload("b", "tunneled", "10.0.0.5");
    tunneled.application_tunnel = Some(crate::state::ApplicationTunnel {
        protocol: crate::state::AppTunnelProtocol::Proxy,
        port: Some(15088),
    });
    writer.apply(
        Update::default()
            .upsert(tunneled)
            .upsert(workload("b", "other", "10.0.0.6")),
    );
    let pi = support::inputs(view, "b", "tunneled", Default::default());
    let snap = pi.state.snapshot();
    for t in ["10.0.0.6:80", "192.0.2.1:443", "10.0.0.5:8080"] {
        let (local, up) = local_destination(&pi, &snap, t.parse().unwrap()).unwrap();
        assert_eq!(local.name, "tunneled", "{t}");
        assert_eq!(up.ip().to_string(), "10.0.0.5", "{t}");
    }
}

#[test]
fn application_tunnels_redirect_to_loopback_with_a_proxy_header() {
    use crate::proxy::inbound::{Delivery, delivery};
    use crate::state::{AppTunnelProtocol, ApplicationTunnel};
    let up: SocketAddr = "10.0.0.9:80".parse().unwrap();
    let target: SocketAddr = "10.96.0.1:80".parse().unwrap();
    assert_eq!(
        delivery(up, target, None, true),
        Delivery {
            upstream: up,
            proxy_dst: None
        }
    );
    let proxy = ApplicationTunnel {
        protocol: AppTunnelProtocol::Proxy,
        port: Some(15088),
    };
    assert_eq!(
        delivery(up, target, Some(&proxy), true),
        Delivery {
            upstream: "127.0.0.1:15088".parse().unwrap(),
            proxy_dst: Some(target),
        }
    );
    // LOCALHOST_APP_TUNNEL=false: the pod's own address, still with the header.
    assert_eq!(
        delivery(up, target, Some(&proxy), false),
        Delivery {
            upstream: "10.0.0.9:15088".parse().unwrap(),
            proxy_dst: Some(target),
        }
    );
    let v6 = delivery(
        "[fd00::9]:80".parse().unwrap(),
        "[fd00::3]:80".parse().unwrap(),
        Some(&ApplicationTunnel {
            protocol: AppTunnelProtocol::Proxy,
            port: None,
        }),
        true,
    );
    assert_eq!(v6.upstream, "[::1]:80".parse().unwrap());
    let port_only = ApplicationTunnel {
        protocol: AppTunnelProtocol::None,
        port: Some(9090),
    };
    assert_eq!(
        delivery(up, target, Some(&port_only), true),
        Delivery {
            upstream: "10.0.0.9:9090".parse().unwrap(),
            proxy_dst: None
        }
    );
}

#[tokio::test]
async fn proxy_header_reaches_an_app_over_a_real_socket() {
    use tokio::io::AsyncReadExt;
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = app.local_addr().unwrap();
    let id = id("a", "client");
    let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let dst: SocketAddr = "10.96.0.1:80".parse().unwrap();
    let sender = {
        let id = id.clone();
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            proxyproto::write(&mut s, src, dst, Some(&id))
                .await
                .unwrap();
            use tokio::io::AsyncWriteExt;
            s.write_all(b"hello").await.unwrap();
        })
    };
    let (mut conn, _) = tokio::time::timeout(std::time::Duration::from_secs(5), app.accept())
        .await
        .unwrap()
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        conn.read_to_end(&mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    sender.await.unwrap();
    // The app parses the header, then sees its payload right after it.
    let h = ppp::v2::Header::try_from(buf.as_slice()).unwrap();
    let len = h.len();
    match h.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            assert_eq!(a.source_port, 40000);
            assert_eq!(a.destination_port, 80);
            assert_eq!(a.destination_address.to_string(), "10.96.0.1");
        }
        other => panic!("{other:?}"),
    }
    let tlv = h.tlvs().next().unwrap().unwrap();
    assert_eq!(tlv.kind, proxyproto::SOURCE_IDENTITY_TLV);
    assert_eq!(tlv.value.as_ref(), id.to_string().as_bytes());
    assert_eq!(&buf[len..], b"hello");
}

/// `web` with weighted waypoints: b/wp (10.0.0.9) weight 1 and b/wp2 (10.0.0.8) weight 3.
fn weighted_inputs(local_ns: &str, local_name: &str) -> ProxyInputs {
    let (writer, view) = StateWriter::new();
    let at = |ip: &str| GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress {
            network: String::new(),
            address: ip.parse().unwrap(),
        }),
        hbone_mtls_port: 15008,
    };
    let mut server = workload("b", "server", "10.0.0.2");
    server
        .services
        .insert("b/web.b.svc.cluster.local".into(), [(80, 8080)].into());
    let mut web = service("web", "10.96.0.1", (80, 8080));
    web.weighted_waypoints = vec![
        crate::state::WeightedWaypoint {
            destination: at("10.0.0.9"),
            weight: 1,
        },
        crate::state::WeightedWaypoint {
            destination: at("10.0.0.8"),
            weight: 3,
        },
    ];
    writer.apply(
        Update::default()
            .upsert(workload("a", "client", "10.0.0.1"))
            .upsert(server)
            .upsert(workload("b", "wp", "10.0.0.9"))
            .upsert(workload("b", "wp2", "10.0.0.8"))
            .upsert(web),
    );
    support::inputs(view, local_ns, local_name, Default::default())
}

#[test]
fn weighted_waypoints_split_connections_and_none_of_them_is_looped() {
    let pi = weighted_inputs("a", "client");
    let (mut wp, mut wp2) = (0, 0);
    for _ in 0..400 {
        match route(&pi, "10.96.0.1:80".parse().unwrap()).unwrap() {
            Route::Hbone { hbone, target, .. } => {
                assert_eq!(target, "10.96.0.1:80".parse().unwrap());
                match hbone.to_string().as_str() {
                    "10.0.0.9:15008" => wp += 1,
                    "10.0.0.8:15008" => wp2 += 1,
                    other => panic!("not a waypoint: {other}"),
                }
            }
            other => panic!("{other:?}"),
        }
    }
    // 1:3 over 400 (expect 100 : 300; sd ≈ 8.7): wide bounds, no flakes.
    assert!((50..=150).contains(&wp), "{wp} vs {wp2}");
    assert_eq!(wp + wp2, 400);

    // Either waypoint's own connection goes to the endpoint, never to a waypoint.
    for me in ["wp", "wp2"] {
        let pi = weighted_inputs("b", me);
        for _ in 0..20 {
            assert_eq!(
                route(&pi, "10.96.0.1:80".parse().unwrap()).unwrap(),
                Route::Hbone {
                    hbone: "10.0.0.2:15008".parse().unwrap(),
                    target: "10.0.0.2:8080".parse().unwrap(),
                    expected: vec![id("b", "server")],
                },
                "from {me}"
            );
        }
        // And each accepts the VIP inbound, as a waypoint of the service.
        let snap = pi.state.snapshot();
        let (local, upstream) =
            local_destination(&pi, &snap, "10.96.0.1:80".parse().unwrap()).unwrap();
        assert_eq!(local.name, me);
        assert_eq!(upstream.port(), 80);
    }
}
