//! Routing decisions of the outbound path, on a state loaded from a local config.

use std::sync::Arc;
use std::time::Duration;

use super::outbound::{Route, baggage, route};
use super::*;
use crate::hbone::WorkloadType;
use crate::identity::{BuiltinCa, SecretManager, SecretManagerConfig};
use crate::state::StateWriter;
use crate::xds::local;

const CONFIG: &str = r#"
workloads:
  - uid: c
    name: client
    namespace: a
    serviceAccount: client
    workloadIps: ["10.0.0.1"]
    protocol: HBONE
    canonicalName: client-app
    canonicalRevision: v2
    clusterId: east
    locality: {region: r1, zone: z1}
  - uid: s
    name: server
    namespace: b
    serviceAccount: server
    workloadIps: ["10.0.0.2", "fd00::2"]
    protocol: HBONE
    services:
      b/web.b.svc.cluster.local: {80: 8080}
  - uid: legacy
    name: legacy
    namespace: b
    workloadIps: ["10.0.0.3"]
    protocol: TCP
services:
  - name: web
    namespace: b
    hostname: web.b.svc.cluster.local
    vips: ["/10.96.0.1"]
    ports: {80: 8080}
    subjectAltNames: ["spiffe://cluster.local/ns/b/sa/web-extra"]
  - name: empty
    namespace: b
    hostname: empty.b.svc.cluster.local
    vips: ["/10.96.0.2"]
    ports: {80: 8080}
"#;

fn inputs() -> ProxyInputs {
    let (writer, view) = StateWriter::new();
    writer.apply(local::parse(CONFIG, "test").unwrap().into_update());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let ca = BuiltinCa::in_memory(Duration::from_secs(3600)).unwrap();
    let certs = SecretManager::new(Arc::new(ca), SecretManagerConfig::default());
    ProxyInputs {
        cfg: Arc::new(ProxyConfig {
            outbound_addr: "[::]:15001".parse().unwrap(),
            inbound_addr: "[::]:15008".parse().unwrap(),
            inbound_plaintext_addr: "[::]:15006".parse().unwrap(),
            network: String::new(),
            socket: SocketOptions::default(),
            orig_src: false,
            reuse_port: false,
            h2: Default::default(),
            hbone_port: 15008,
        }),
        local: LocalWorkload {
            namespace: "a".into(),
            name: "client".into(),
            identity: Identity::new("cluster.local", "a", "client").unwrap(),
        },
        state: view,
        certs,
        metrics: Default::default(),
    }
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
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
