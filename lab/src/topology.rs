//! The lab's topology: what a YAML file (`examples/demo.yaml`) declares, validated and with every
//! address allocated. Invariants of a [`Topology`] returned by [`Topology::from_yaml`]:
//! - node, pod and service names are unique (pods and services per Kubernetes namespace);
//! - every pod sits on a declared node and has an IPv4 address inside that node's pod CIDR,
//!   unique in the lab; every node has a pod CIDR and an underlay address, none overlapping;
//! - every service has a hostname, at least one VIP and at least one port, and its endpoints name
//!   existing pods;
//! - policies are kept as written (they pass through to the node proxies' local config);
//! - every node is on a network (default: the first node's), and east-west gateways join
//!   networks ([`networks`] says how);
//! - a pod's `locality` and `status` are kept in its labels ([`balancing`] says why), each
//!   locality part a valid name; a service's `loadBalancing` is kept as written.
//! - a pod's `applicationTunnel` and `waypoint` are kept in its labels too; every waypoint a pod
//!   or service names is a captured pod ([`waypoint`] has the rules).
//!
//! A validation error is one line that names the entry and the field.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::Deserialize;

pub mod balancing;
pub mod networks;
pub mod waypoint;

pub use balancing::{HealthPolicy, LbMode, LoadBalancing, Locality, LocalityScope, PodStatus};
pub use networks::EastWestGateway;
pub use waypoint::{AppTunnel, AppTunnelProtocol};

/// The underlay network the nodes share (inside the lab's own namespaces only).
pub const UNDERLAY_NET: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 0);
/// Prefix length of [`UNDERLAY_NET`].
pub const UNDERLAY_PREFIX: u8 = 24;
/// Where allocated service VIPs start.
const VIP_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Trust domain of every workload in the lab (the built-in CA's).
pub const TRUST_DOMAIN: &str = "cluster.local";

/// A topology error: one line naming the entry and the field.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("topology file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("topology: {0}")]
    Yaml(String),
    #[error("topology: {entry}: field `{field}`: {problem}")]
    Invalid {
        entry: String,
        field: &'static str,
        problem: String,
    },
}

/// The file as written (serde); [`Topology`] is what the lab uses.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTopology {
    nodes: Vec<RawNode>,
    #[serde(default)]
    pods: Vec<RawPod>,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    policies: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    dns_capture: bool,
    #[serde(default)]
    east_west_gateways: Vec<networks::RawEastWestGateway>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNode {
    name: String,
    pod_cidr: Option<String>,
    network: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPod {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    service_account: Option<String>,
    node: String,
    #[serde(default = "yes")]
    captured: bool,
    ip: Option<Ipv4Addr>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    locality: Option<Locality>,
    status: Option<PodStatus>,
    application_tunnel: Option<AppTunnel>,
    /// A pod (by name) that is this pod's waypoint.
    waypoint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawService {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    hostname: Option<String>,
    #[serde(default)]
    vips: Vec<Ipv4Addr>,
    ports: BTreeMap<u16, u16>,
    selector: Option<BTreeMap<String, String>>,
    endpoints: Option<Vec<String>>,
    load_balancing: Option<LoadBalancing>,
    /// A pod (by name) that is this service's waypoint.
    waypoint: Option<String>,
}

fn default_namespace() -> String {
    "default".into()
}

fn yes() -> bool {
    true
}

/// A validated topology with every address allocated.
#[derive(Debug, Clone)]
pub struct Topology {
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub policies: Vec<serde_yaml_ng::Value>,
    /// Whether captured pods' DNS (port 53) is redirected to the node proxy's 15053.
    pub dns_capture: bool,
    /// Gateways joining the networks (none in a one-network topology).
    pub east_west_gateways: Vec<EastWestGateway>,
}

/// A node: a network namespace on the underlay that routes for its pods and runs a node proxy.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// Its address on the underlay bridge.
    pub underlay_ip: Ipv4Addr,
    /// Its pods' network (the first address is the pods' gateway).
    pub pod_cidr: Cidr,
    /// The network it and its pods are on (`""`: Istio's default network).
    pub network: String,
}

/// A pod: a network namespace behind its node.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    /// Whether the node agent captures its traffic (and announces it over ZDS).
    pub captured: bool,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
}

/// A service: VIPs and ports in front of a set of pods.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<Ipv4Addr>,
    /// Service port → target port.
    pub ports: BTreeMap<u16, u16>,
    /// Names of the pods behind it (same namespace).
    pub endpoints: Vec<String>,
    /// Locality preference and health policy; `None` is Istio's default (any healthy endpoint).
    pub load_balancing: Option<LoadBalancing>,
    /// The pod that is its waypoint ([`waypoint`] says how it is described).
    pub waypoint: Option<String>,
}

/// An IPv4 network `addr/prefix` with `addr` its first address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

// === impl Cidr ===

impl Cidr {
    /// Parses `10.244.1.0/24`; prefixes 8..=28 (room for a gateway and pods).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not addr/prefix"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{p:?} is not a prefix length"))?;
        if !(8..=28).contains(&prefix) {
            return Err(format!("prefix /{prefix} is outside /8../28"));
        }
        let c = Cidr { addr, prefix };
        if c.network() != addr {
            return Err(format!("{s} has host bits set"));
        }
        Ok(c)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// The `n`th address (0 is the network address itself).
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - u32::from(self.prefix));
        (n < size - 1).then(|| Ipv4Addr::from(u32::from(self.addr) + n))
    }

    /// The pods' gateway: the node's address facing its pods.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

// === impl Pod ===

impl Pod {
    /// The pod's uid as the node proxy sees it (Kubernetes' form).
    pub fn uid(&self) -> String {
        format!("Kubernetes//Pod/{}/{}", self.namespace, self.name)
    }

    /// Its SPIFFE identity.
    pub fn spiffe(&self) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// Where it runs (from its labels; empty parts are unknown).
    pub fn locality(&self) -> Locality {
        Locality::from_labels(&self.labels)
    }

    /// Whether its endpoint is healthy (from its labels; healthy unless marked otherwise).
    pub fn status(&self) -> PodStatus {
        PodStatus::from_labels(&self.labels)
    }
}

// === impl Topology ===

impl Topology {
    /// Reads and validates a topology file.
    pub fn from_file(path: &std::path::Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Topology::from_yaml(&text)
    }

    /// Parses and validates topology YAML, allocating what is not given.
    pub fn from_yaml(text: &str) -> Result<Topology, TopologyError> {
        let raw: RawTopology = serde_yaml_ng::from_str(text)
            .map_err(|e| TopologyError::Yaml(e.to_string().replace('\n', " ")))?;
        build(raw)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A pod by name (`name` or `namespace/name`).
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        match name.split_once('/') {
            Some((ns, n)) => self.pods.iter().find(|p| p.namespace == ns && p.name == n),
            None => self.pods.iter().find(|p| p.name == name),
        }
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The pods on `node`.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }
}

fn invalid(entry: String, field: &'static str, problem: impl Into<String>) -> TopologyError {
    TopologyError::Invalid {
        entry,
        field,
        problem: problem.into(),
    }
}

fn check_name(entry: &str, field: &'static str, name: &str) -> Result<(), TopologyError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            entry.to_string(),
            field,
            format!("{name:?} must be 1-40 of [a-z0-9-]"),
        ))
    }
}

fn build(raw: RawTopology) -> Result<Topology, TopologyError> {
    if raw.nodes.is_empty() {
        return Err(invalid(
            "nodes".into(),
            "nodes",
            "at least one node is needed",
        ));
    }
    let underlay = Cidr {
        addr: UNDERLAY_NET,
        prefix: UNDERLAY_PREFIX,
    };
    let mut nodes: Vec<Node> = Vec::new();
    for (i, n) in raw.nodes.iter().enumerate() {
        let entry = format!("nodes[{i}] ({:?})", n.name);
        check_name(&entry, "name", &n.name)?;
        if nodes.iter().any(|o| o.name == n.name) {
            return Err(invalid(entry, "name", "duplicate node name"));
        }
        let pod_cidr = match &n.pod_cidr {
            Some(s) => Cidr::parse(s).map_err(|p| invalid(entry.clone(), "podCidr", p))?,
            None => Cidr {
                addr: Ipv4Addr::new(10, 244, (i + 1) as u8, 0),
                prefix: 24,
            },
        };
        if pod_cidr.overlaps(&underlay) {
            return Err(invalid(
                entry,
                "podCidr",
                format!("overlaps the underlay {underlay}"),
            ));
        }
        if let Some(o) = nodes.iter().find(|o| o.pod_cidr.overlaps(&pod_cidr)) {
            return Err(invalid(
                entry,
                "podCidr",
                format!("overlaps node {:?}", o.name),
            ));
        }
        let underlay_ip = underlay
            .nth(i as u32 + 2)
            .ok_or_else(|| invalid(entry.clone(), "name", "too many nodes"))?;
        let first = nodes.first().map(|n| n.network.as_str());
        let network = networks::node_network(&entry, n.network.as_deref(), first)?;
        nodes.push(Node {
            name: n.name.clone(),
            underlay_ip,
            pod_cidr,
            network,
        });
    }

    // Pods: given addresses first, so allocation never hands out one that is taken.
    let mut taken: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for (i, p) in raw.pods.iter().enumerate() {
        let entry = format!("pods[{i}] ({:?})", p.name);
        check_name(&entry, "name", &p.name)?;
        check_name(&entry, "namespace", &p.namespace)?;
        let node = nodes
            .iter()
            .find(|n| n.name == p.node)
            .ok_or_else(|| invalid(entry.clone(), "node", format!("no node named {:?}", p.node)))?;
        if let Some(ip) = p.ip {
            if !node.pod_cidr.contains(ip)
                || ip == node.pod_cidr.gateway()
                || ip == node.pod_cidr.addr
            {
                return Err(invalid(
                    entry,
                    "ip",
                    format!(
                        "{ip} is not a pod address of {} ({})",
                        node.name, node.pod_cidr
                    ),
                ));
            }
            if !taken.insert(ip) {
                return Err(invalid(entry, "ip", format!("{ip} is used twice")));
            }
        }
    }
    let mut pods: Vec<Pod> = Vec::new();
    for (i, p) in raw.pods.iter().enumerate() {
        let entry = format!("pods[{i}] ({:?})", p.name);
        if pods.iter().any(|o| o.name == p.name) {
            return Err(invalid(
                entry,
                "name",
                "duplicate pod name (pod names are lab-wide)",
            ));
        }
        let Some(node) = nodes.iter().find(|n| n.name == p.node) else {
            return Err(invalid(
                entry,
                "node",
                format!("no node named {:?}", p.node),
            ));
        };
        let ip = match p.ip {
            Some(ip) => ip,
            None => {
                let free = (2..)
                    .map_while(|k| node.pod_cidr.nth(k))
                    .find(|ip| !taken.contains(ip));
                let ip =
                    free.ok_or_else(|| invalid(entry.clone(), "ip", "node's pod CIDR is full"))?;
                taken.insert(ip);
                ip
            }
        };
        let mut labels = p.labels.clone();
        if let Some(l) = &p.locality {
            for (field, v) in [
                ("locality.region", &l.region),
                ("locality.zone", &l.zone),
                ("locality.subzone", &l.subzone),
            ] {
                if !v.is_empty() {
                    check_name(&entry, field, v)?;
                }
            }
            l.write_labels(&mut labels);
        }
        if let Some(status) = p.status {
            labels.insert(balancing::STATUS_LABEL.into(), status.as_str().into());
        }
        if let Some(t) = &p.application_tunnel {
            t.write_labels(&mut labels);
        }
        if let Some(wp) = &p.waypoint {
            labels.insert(waypoint::WAYPOINT_LABEL.into(), wp.clone());
        }
        pods.push(Pod {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            service_account: p
                .service_account
                .clone()
                .unwrap_or_else(|| "default".into()),
            node: p.node.clone(),
            captured: p.captured,
            ip,
            labels,
        });
    }

    let mut services: Vec<Service> = Vec::new();
    let mut next_vip = u32::from(VIP_BASE);
    let given_vips: BTreeSet<Ipv4Addr> = raw.services.iter().flat_map(|s| s.vips.clone()).collect();
    for (i, s) in raw.services.iter().enumerate() {
        let entry = format!("services[{i}] ({:?})", s.name);
        check_name(&entry, "name", &s.name)?;
        if services
            .iter()
            .any(|o| o.name == s.name && o.namespace == s.namespace)
        {
            return Err(invalid(entry, "name", "duplicate service"));
        }
        if s.ports.is_empty() {
            return Err(invalid(entry, "ports", "at least one port is needed"));
        }
        if let Some((p, _)) = s.ports.iter().find(|(p, t)| **p == 0 || **t == 0) {
            return Err(invalid(
                entry,
                "ports",
                format!("port {p}: ports are 1-65535"),
            ));
        }
        for vip in &s.vips {
            if taken.contains(vip) || nodes.iter().any(|n| n.pod_cidr.contains(*vip)) {
                return Err(invalid(
                    entry,
                    "vips",
                    format!("{vip} is inside a pod network"),
                ));
            }
        }
        let vips = if s.vips.is_empty() {
            while given_vips.contains(&Ipv4Addr::from(next_vip)) {
                next_vip += 1;
            }
            let vip = Ipv4Addr::from(next_vip);
            next_vip += 1;
            vec![vip]
        } else {
            s.vips.clone()
        };
        let endpoints = match (&s.selector, &s.endpoints) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    entry,
                    "selector",
                    "give either selector or endpoints, not both",
                ));
            }
            (Some(sel), None) => pods
                .iter()
                .filter(|p| p.namespace == s.namespace)
                .filter(|p| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                .map(|p| p.name.clone())
                .collect(),
            (None, Some(list)) => {
                for name in list {
                    if !pods
                        .iter()
                        .any(|p| &p.name == name && p.namespace == s.namespace)
                    {
                        return Err(invalid(
                            entry,
                            "endpoints",
                            format!("no pod {name:?} in namespace {:?}", s.namespace),
                        ));
                    }
                }
                list.clone()
            }
            (None, None) => Vec::new(),
        };
        services.push(Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            hostname: s
                .hostname
                .clone()
                .unwrap_or_else(|| format!("{}.{}.svc.cluster.local", s.name, s.namespace)),
            vips,
            ports: s.ports.clone(),
            endpoints,
            load_balancing: s.load_balancing.clone(),
            waypoint: s.waypoint.clone(),
        });
    }
    waypoint::check(&pods, &services)?;

    let east_west_gateways = networks::gateways(&raw.east_west_gateways, &nodes, &underlay)?;
    Ok(Topology {
        east_west_gateways,
        nodes,
        pods,
        services,
        policies: raw.policies,
        dns_capture: raw.dns_capture,
    })
}

#[cfg(test)]
mod tests;
