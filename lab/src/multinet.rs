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
use serde_yaml::{Mapping, Value};

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
        .flat_map(|network| svc.vips.iter().map(move |v| format!("{network}/{v}").into()))
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
