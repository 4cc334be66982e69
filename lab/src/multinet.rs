//! A lab of several networks: what the control side publishes about them (both as xDS resources
//! and in the local config file) and how the namespaces are wired so that only the east-west
//! gateways join them.
//!
//! Published (wire.md §2.1 "Double HBONE"):
//! - every workload carries its node's `network`; a workload on a network with a gateway names
//!   it as its `network_gateway` (`<network>/<gateway ip>`, HBONE port 15008);
//! - every service VIP is published on every network (a client looks VIPs up on its own);
//! - when the topology has gateways, every service carries `subject_alt_names` = its endpoints'
//!   identities: the inner handshake of double HBONE verifies only these;
//! - each gateway is a workload itself (its own network and address, the gateway identity), so
//!   the outer handshake can verify it.
//!
//! A one-network topology (no `network` given, no gateway) publishes exactly what it did before.
//!
//! Wiring: a node routes only to the pod networks of its own network's nodes; the others get an
//! `unreachable` route (a connection fails at once, with "no route to host"). A gateway gets its
//! own namespace on the underlay bridge, with routes to every pod network via its node.

use ambit_proto::istio::workload as pw;
use serde_yaml_ng::{Mapping, Value};

use crate::topology::networks::{GATEWAY_HBONE_PORT, GATEWAY_NAMESPACE, GATEWAY_SERVICE_ACCOUNT};
use crate::topology::{EastWestGateway, Pod, Service, TRUST_DOMAIN, Topology, UNDERLAY_PREFIX};
use crate::{LabError, Netns, link};

/// Adds `network` and `network_gateway` to a pod's workload resource.
pub fn xds_workload(w: &mut pw::Workload, pod: &Pod, topology: &Topology) {
    let network = topology.network_of(pod);
    w.network = network.to_string();
    w.network_gateway = topology.gateway_into(network).map(xds_gateway_address);
}

fn xds_gateway_address(gw: &EastWestGateway) -> pw::GatewayAddress {
    pw::GatewayAddress {
        destination: Some(pw::gateway_address::Destination::Address(
            pw::NetworkAddress {
                network: gw.network.clone(),
                address: gw.ip.octets().to_vec(),
                length: None,
            },
        )),
        hbone_mtls_port: u32::from(GATEWAY_HBONE_PORT),
    }
}

/// Publishes a service's VIPs on every network and, with gateways, its `subject_alt_names`.
pub fn xds_service(s: &mut pw::Service, svc: &Service, topology: &Topology) {
    s.addresses = topology
        .networks()
        .into_iter()
        .flat_map(|network| {
            svc.vips.iter().map(move |v| pw::NetworkAddress {
                network: network.to_string(),
                address: v.octets().to_vec(),
                length: None,
            })
        })
        .collect();
    if !topology.east_west_gateways.is_empty() {
        s.subject_alt_names = topology.service_sans(svc);
    }
}

/// The gateways as workload resources.
pub fn xds_gateways(topology: &Topology) -> Vec<pw::Workload> {
    topology
        .east_west_gateways
        .iter()
        .map(|gw| pw::Workload {
            uid: gw.uid(),
            name: gw.name.clone(),
            namespace: GATEWAY_NAMESPACE.into(),
            addresses: vec![gw.ip.octets().to_vec()],
            network: gw.network.clone(),
            tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
            trust_domain: TRUST_DOMAIN.into(),
            service_account: GATEWAY_SERVICE_ACCOUNT.into(),
            canonical_name: gw.name.clone(),
            workload_name: gw.name.clone(),
            workload_type: pw::WorkloadType::Pod as i32,
            cluster_id: crate::control_resources::CLUSTER_ID.into(),
            ..Default::default()
        })
        .collect()
}

/// Adds `network` and `networkGateway` to a pod's local-config workload (only when set, so a
/// one-network config stays as it was).
pub fn local_workload(m: &mut Mapping, pod: &Pod, topology: &Topology) {
    let network = topology.network_of(pod);
    if !network.is_empty() {
        m.insert("network".into(), network.into());
    }
    if let Some(gw) = topology.gateway_into(network) {
        m.insert("networkGateway".into(), local_gateway_address(gw));
    }
}

fn local_gateway_address(gw: &EastWestGateway) -> Value {
    let mut m = Mapping::new();
    m.insert(
        "destination".into(),
        format!("{}/{}", gw.network, gw.ip).into(),
    );
    m.insert("hboneMtlsPort".into(), GATEWAY_HBONE_PORT.into());
    Value::Mapping(m)
}

/// A service's local-config VIPs (`network/IP`, on every network) and, with gateways, its
/// `subjectAltNames`.
pub fn local_service(m: &mut Mapping, svc: &Service, topology: &Topology) {
    let vips: Vec<Value> = topology
        .networks()
        .into_iter()
        .flat_map(|network| {
            svc.vips
                .iter()
                .map(move |v| format!("{network}/{v}").into())
        })
        .collect();
    m.insert("vips".into(), Value::Sequence(vips));
    if !topology.east_west_gateways.is_empty() {
        let sans = topology.service_sans(svc).into_iter().map(Value::from);
        m.insert("subjectAltNames".into(), Value::Sequence(sans.collect()));
    }
}

/// The gateways as local-config workloads.
pub fn local_gateways(topology: &Topology) -> Vec<Value> {
    topology
        .east_west_gateways
        .iter()
        .map(|gw| {
            let mut m = Mapping::new();
            for (k, v) in [
                ("uid", gw.uid()),
                ("name", gw.name.clone()),
                ("namespace", GATEWAY_NAMESPACE.into()),
                ("serviceAccount", GATEWAY_SERVICE_ACCOUNT.into()),
                ("trustDomain", TRUST_DOMAIN.into()),
                ("protocol", "HBONE".into()),
            ] {
                m.insert(k.into(), v.into());
            }
            if !gw.network.is_empty() {
                m.insert("network".into(), gw.network.clone().into());
            }
            m.insert(
                "workloadIps".into(),
                Value::Sequence(vec![gw.ip.to_string().into()]),
            );
            m.insert("services".into(), Value::Mapping(Mapping::new()));
            Value::Mapping(m)
        })
        .collect()
}

/// Routes from `ns` (node `node`'s namespace) to the other nodes' pod networks: via their node
/// on the same network, `unreachable` on another.
pub fn node_routes(ns: &Netns, node: &str, topology: &Topology) -> Result<(), LabError> {
    let own = topology.network_of_node(node);
    for other in topology.nodes.iter().filter(|o| o.name != node) {
        let cidr = other.pod_cidr.to_string();
        if other.network == own {
            ns.route(&[&cidr, "via", &other.underlay_ip.to_string()])?;
        } else {
            ns.route(&["unreachable", &cidr])?;
        }
    }
    Ok(())
}

/// Creates a gateway's namespace (`name`) on the underlay bridge `br0` with its address and a
/// route to every pod network via that network's node; `port` names its veth on the bridge.
pub fn plug_gateway(
    underlay: &Netns,
    name: String,
    port: &str,
    gw: &EastWestGateway,
    topology: &Topology,
) -> Result<Netns, LabError> {
    let ns = Netns::with_name(name)?;
    link::veth(underlay, port, &ns, "eth0")?;
    underlay.ip(&["link", "set", port, "master", "br0"])?;
    ns.add_addr("eth0", &format!("{}/{UNDERLAY_PREFIX}", gw.ip))?;
    for node in &topology.nodes {
        let cidr = node.pod_cidr.to_string();
        ns.route(&[&cidr, "via", &node.underlay_ip.to_string()])?;
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::control::local_config;
    use crate::control_resources::{self, CpResource};

    const TWO_NETWORKS: &str = "
nodes:
  - {name: n1, network: net1}
  - {name: n2, network: net2}
  - {name: n3}
eastWestGateways: [{network: net2}]
pods:
  - {name: client, node: n1, serviceAccount: client}
  - {name: web, node: n2, serviceAccount: web, labels: {app: web}}
services: [{name: web, ports: {80: 8080}, selector: {app: web}, vips: [10.96.0.10]}]
";

    #[test]
    fn nodes_default_to_the_first_network_and_gateways_get_the_top_addresses() {
        let t = Topology::from_yaml(TWO_NETWORKS).unwrap();
        assert_eq!(t.network_of_node("n3"), "net1");
        assert_eq!(t.network_of(t.pod("web").unwrap()), "net2");
        let gw = t.gateway_into("net2").unwrap();
        assert_eq!(gw.ip, Ipv4Addr::new(172, 30, 0, 254));
        assert_eq!(gw.name, "eastwest-net2");
        assert_eq!(
            gw.spiffe(),
            "spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway"
        );
        assert!(t.gateway_into("net1").is_none());
        let err =
            Topology::from_yaml("nodes: [{name: n1}]\neastWestGateways: [{network: elsewhere}]")
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "topology: eastWestGateways[0] (\"elsewhere\"): field `network`: no node is on \
             network \"elsewhere\""
        );
    }

    #[test]
    fn the_example_topology_is_valid() {
        let t = Topology::from_yaml(include_str!("../../examples/multinet.yaml")).unwrap();
        assert_eq!(
            t.networks().into_iter().collect::<Vec<_>>(),
            ["net1", "net2"]
        );
        assert_eq!(t.gateway_into("net2").unwrap().name, "eastwest-net2");
    }

    #[test]
    fn xds_resources_carry_networks_gateways_and_sans() {
        let t = Topology::from_yaml(TWO_NETWORKS).unwrap();
        let web = control_resources::workload(t.pod("web").unwrap(), &t);
        assert_eq!(web.network, "net2");
        let gw = web.network_gateway.unwrap();
        assert_eq!(gw.hbone_mtls_port, 15008);
        assert_eq!(
            gw.destination,
            Some(pw::gateway_address::Destination::Address(
                pw::NetworkAddress {
                    network: "net2".into(),
                    address: vec![172, 30, 0, 254],
                    length: None,
                }
            ))
        );
        let client = control_resources::workload(t.pod("client").unwrap(), &t);
        assert_eq!(client.network, "net1");
        assert!(client.network_gateway.is_none());
        let all = control_resources::topology_resources(&t).unwrap();
        let svc = all
            .iter()
            .find_map(|r| match r {
                CpResource::Address {
                    address:
                        pw::Address {
                            r#type: Some(pw::address::Type::Service(s)),
                        },
                    ..
                } => Some(s.clone()),
                _ => None,
            })
            .unwrap();
        let vips: Vec<&str> = svc.addresses.iter().map(|a| a.network.as_str()).collect();
        assert_eq!(vips, ["net1", "net2"]);
        assert_eq!(
            svc.subject_alt_names,
            ["spiffe://cluster.local/ns/default/sa/web"]
        );
        assert!(
            all.iter()
                .any(|r| r.name() == "Kubernetes//Pod/istio-system/eastwest-net2")
        );
    }

    #[test]
    fn local_config_carries_the_same_and_one_network_stays_as_it_was() {
        let t = Topology::from_yaml(TWO_NETWORKS).unwrap();
        let v: Value = serde_yaml_ng::from_str(&local_config(&t)).unwrap();
        let web = &v["workloads"][1];
        assert_eq!(web["network"], "net2");
        assert_eq!(web["networkGateway"]["destination"], "net2/172.30.0.254");
        assert_eq!(v["workloads"][2]["name"], "eastwest-net2");
        assert_eq!(v["services"][0]["vips"][1], "net2/10.96.0.10");
        assert_eq!(
            v["services"][0]["subjectAltNames"][0],
            "spiffe://cluster.local/ns/default/sa/web"
        );

        let one = Topology::from_yaml(
            "nodes: [{name: n1}]\npods: [{name: a, node: n1, labels: {app: a}}]\n\
             services: [{name: a, ports: {80: 80}, selector: {app: a}, vips: [10.96.0.1]}]",
        )
        .unwrap();
        let v: Value = serde_yaml_ng::from_str(&local_config(&one)).unwrap();
        assert!(v["workloads"][0].get("network").is_none());
        assert!(v["workloads"][0].get("networkGateway").is_none());
        assert_eq!(
            v["services"][0]["vips"],
            Value::Sequence(vec!["/10.96.0.1".into()])
        );
        assert!(v["services"][0].get("subjectAltNames").is_none());
    }
}
