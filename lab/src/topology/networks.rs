//! Networks in the topology: a node's `network` (its pods inherit it) and the east-west gateways
//! that join a network to the others (`eastWestGateways`).
//!
//! Invariants of a built topology:
//! - every node has a network: its own `network`, else the first node's (else `""`, Istio's
//!   default network), so a topology that names none is one network, as before;
//! - network names are 1-40 of `[a-z0-9-]` (or empty for the default network);
//! - an east-west gateway names a network some node is on, at most one gateway per network; it
//!   gets an underlay address counted down from the top of the underlay, so it never meets the
//!   nodes' (counted up) or the control plane's (the first);
//! - pods on different networks are not routable to each other: the lab gives a node routes to
//!   the pod networks of its own network's nodes only, and unreachable routes for the others;
//!   only the gateways (on the underlay, with routes to every pod network) join them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::Deserialize;

use super::{Cidr, Node, Pod, TRUST_DOMAIN, Topology, TopologyError, check_name, invalid};

/// The namespace east-west gateways run in (Istio's).
pub const GATEWAY_NAMESPACE: &str = "istio-system";
/// The service account of east-west gateways (Istio's).
pub const GATEWAY_SERVICE_ACCOUNT: &str = "istio-eastwestgateway";
/// The HBONE port east-west gateways listen on.
pub const GATEWAY_HBONE_PORT: u16 = 15008;

/// An east-west gateway as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawEastWestGateway {
    network: String,
    name: Option<String>,
}

/// An east-west gateway: a lab process in its own namespace on the underlay, reachable from
/// every network, that terminates the outer HBONE of double-HBONE connections to its network
/// and forwards the inner bytes to the endpoint's `ip:15008`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EastWestGateway {
    pub name: String,
    /// The network it leads into.
    pub network: String,
    /// Its address on the underlay.
    pub ip: Ipv4Addr,
}

// === impl EastWestGateway ===

impl EastWestGateway {
    /// Its workload uid (Kubernetes' form).
    pub fn uid(&self) -> String {
        format!("Kubernetes//Pod/{GATEWAY_NAMESPACE}/{}", self.name)
    }

    /// Its SPIFFE identity.
    pub fn spiffe(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/{GATEWAY_NAMESPACE}/sa/{GATEWAY_SERVICE_ACCOUNT}")
    }
}

// === impl Topology (networks) ===

impl Topology {
    /// The network of a node (`""` for an unknown node).
    pub fn network_of_node(&self, node: &str) -> &str {
        self.node(node).map(|n| n.network.as_str()).unwrap_or("")
    }

    /// The network a pod is on: its node's.
    pub fn network_of(&self, pod: &Pod) -> &str {
        self.network_of_node(&pod.node)
    }

    /// Every network some node is on, in name order.
    pub fn networks(&self) -> BTreeSet<&str> {
        self.nodes.iter().map(|n| n.network.as_str()).collect()
    }

    /// The east-west gateway into `network`, if it has one.
    pub fn gateway_into(&self, network: &str) -> Option<&EastWestGateway> {
        self.east_west_gateways
            .iter()
            .find(|g| g.network == network)
    }

    /// The nodes on `network`.
    pub fn nodes_on<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes.iter().filter(move |n| n.network == network)
    }

    /// The SPIFFE identities of a service's endpoints, sorted and deduplicated: what the lab
    /// publishes as its `subject_alt_names` when the topology has gateways (the inner handshake
    /// of double HBONE verifies only these).
    pub fn service_sans(&self, svc: &super::Service) -> Vec<String> {
        let sans: BTreeSet<String> = self
            .pods
            .iter()
            .filter(|p| p.namespace == svc.namespace && svc.endpoints.contains(&p.name))
            .map(Pod::spiffe)
            .collect();
        sans.into_iter().collect()
    }
}

/// Checks a node's `network` (when given); returns it or the default for nodes after the first.
pub(super) fn node_network(
    entry: &str,
    given: Option<&str>,
    first: Option<&str>,
) -> Result<String, TopologyError> {
    match given {
        Some(n) => {
            check_name(entry, "network", n)?;
            Ok(n.to_string())
        }
        None => Ok(first.unwrap_or("").to_string()),
    }
}

/// Validates the gateways and allocates their underlay addresses.
pub(super) fn gateways(
    raw: &[RawEastWestGateway],
    nodes: &[Node],
    underlay: &Cidr,
) -> Result<Vec<EastWestGateway>, TopologyError> {
    let mut out: Vec<EastWestGateway> = Vec::new();
    // The underlay's last usable address, counting down.
    let top = (1u32 << (32 - u32::from(underlay.prefix))) - 2;
    for (i, g) in raw.iter().enumerate() {
        let entry = format!("eastWestGateways[{i}] ({:?})", g.network);
        if !nodes.iter().any(|n| n.network == g.network) {
            return Err(invalid(
                entry,
                "network",
                format!("no node is on network {:?}", g.network),
            ));
        }
        if out.iter().any(|o| o.network == g.network) {
            return Err(invalid(entry, "network", "one gateway per network"));
        }
        let name = g.name.clone().unwrap_or_else(|| {
            format!("eastwest-{}", g.network)
                .trim_end_matches('-')
                .into()
        });
        check_name(&entry, "name", &name)?;
        let ip = underlay
            .nth(top - i as u32)
            .filter(|ip| !nodes.iter().any(|n| n.underlay_ip == *ip))
            .ok_or_else(|| invalid(entry.clone(), "network", "no underlay address left"))?;
        out.push(EastWestGateway {
            name,
            network: g.network.clone(),
            ip,
        });
    }
    Ok(out)
}
