//! Domain types of the read model: workloads and services (plain Rust, no protobuf types).
//!
//! Invariants: a [`Workload`]'s namespace, service account and trust domain always form a valid
//! SPIFFE identity (they are held as an [`Identity`], so `identity()` cannot fail); ports are
//! `u16`; service keys are `namespace/hostname`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::core::Identity;
use crate::rbac::IpNet;

/// The HBONE port a gateway listens on unless told otherwise.
pub const DEFAULT_HBONE_MTLS_PORT: u16 = 15008;

/// A workload (usually a pod) as the control plane describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub uid: String,
    pub name: String,
    /// Serialized as `namespace`, `serviceAccount`, `trustDomain`.
    #[serde(flatten, serialize_with = "serialize_identity_parts")]
    identity: Identity,
    pub workload_ips: Vec<IpAddr>,
    pub protocol: TunnelProtocol,
    pub network_mode: NetworkMode,
    pub network: String,
    pub node: String,
    pub hostname: String,
    pub waypoint: Option<GatewayAddress>,
    pub network_gateway: Option<GatewayAddress>,
    pub native_tunnel: bool,
    pub application_tunnel: Option<ApplicationTunnel>,
    /// Policy keys (`namespace/name`) that select this workload.
    pub authorization_policies: Vec<String>,
    pub status: HealthStatus,
    pub cluster_id: String,
    pub locality: Locality,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_name: String,
    pub workload_type: String,
    /// Relative weight when picking among a service's endpoints.
    pub capacity: u32,
    /// Services this workload backs: `namespace/hostname` → service port → target port
    /// (0 ⇒ fall back to the service's own mapping).
    pub services: BTreeMap<String, BTreeMap<u16, u16>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TunnelProtocol {
    /// Plain TCP: the workload is not in the mesh (or is captured without HBONE).
    #[default]
    None,
    Hbone,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum NetworkMode {
    #[default]
    Standard,
    /// Shares the node's network: never indexed by IP, so node traffic is not misattributed.
    HostNetwork,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// Where a waypoint or network gateway is: an address on a network, or a service by host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    pub destination: GatewayDestination,
    pub hbone_mtls_port: u16,
}

/// One of a service's weighted waypoints: picked for a connection with probability
/// `weight / sum of weights` (weight 0: never).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedWaypoint {
    pub destination: GatewayAddress,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GatewayDestination {
    Address(NetworkAddress),
    Hostname { namespace: String, hostname: String },
}

/// An IP address on a network (`""` is the default network). Displayed as `network/IP`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    pub network: String,
    pub address: IpAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationTunnel {
    pub protocol: AppTunnelProtocol,
    /// Port to send tunnelled traffic to instead of the original one.
    pub port: Option<u16>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AppTunnelProtocol {
    #[default]
    None,
    Proxy,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

/// A service: a host name, virtual IPs and ports, backed by the workloads that name it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<NetworkAddress>,
    /// Address ranges on a network that all mean this service (a `NetworkAddress` with a
    /// prefix shorter than a host). Exact `vips` win over ranges; among ranges the longest
    /// prefix wins.
    pub cidr_vips: Vec<CidrVip>,
    /// Service port → target port (0 ⇒ same as the service port).
    pub ports: BTreeMap<u16, u16>,
    pub subject_alt_names: Vec<String>,
    pub waypoint: Option<GatewayAddress>,
    /// Waypoints to split connections over by weight; when empty, or when every weight is 0,
    /// `waypoint` is used.
    pub weighted_waypoints: Vec<WeightedWaypoint>,
    pub load_balancer: Option<LoadBalancer>,
    pub ip_families: IpFamilies,
    pub canonical: bool,
    pub visibility: Visibility,
}

/// A VIP range of a service on one network. Displayed as `network/addr/len`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CidrVip {
    pub network: String,
    pub net: IpNet,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    pub routing_preference: Vec<LocalityScope>,
    pub mode: LoadBalancerMode,
    pub health_policy: HealthPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum LocalityScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum LoadBalancerMode {
    #[default]
    Standard,
    Strict,
    Failover,
    Passthrough,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum HealthPolicy {
    #[default]
    OnlyHealthy,
    /// Unhealthy endpoints are still used.
    AllowAll,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum IpFamilies {
    #[default]
    Automatic,
    Ipv4Only,
    Ipv6Only,
    Dual,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum Visibility {
    #[default]
    Public,
    /// Hidden from other namespaces.
    Namespace,
}

// === impl Workload ===

impl Workload {
    /// A healthy, standard-network workload with everything else empty or defaulted
    /// (capacity 1, no tunnel). The identity fixes namespace, service account and trust domain.
    pub fn new(uid: impl Into<String>, name: impl Into<String>, identity: Identity) -> Self {
        Workload {
            uid: uid.into(),
            name: name.into(),
            identity,
            workload_ips: Vec::new(),
            protocol: TunnelProtocol::None,
            network_mode: NetworkMode::Standard,
            network: String::new(),
            node: String::new(),
            hostname: String::new(),
            waypoint: None,
            network_gateway: None,
            native_tunnel: false,
            application_tunnel: None,
            authorization_policies: Vec::new(),
            status: HealthStatus::Healthy,
            cluster_id: String::new(),
            locality: Locality::default(),
            canonical_name: String::new(),
            canonical_revision: String::new(),
            workload_name: String::new(),
            workload_type: String::new(),
            capacity: 1,
            services: BTreeMap::new(),
        }
    }

    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub fn identity(&self) -> Identity {
        self.identity.clone()
    }

    pub fn namespace(&self) -> &str {
        self.identity.namespace()
    }

    pub fn service_account(&self) -> &str {
        self.identity.service_account()
    }

    pub fn trust_domain(&self) -> &str {
        self.identity.trust_domain()
    }
}

fn serialize_identity_parts<S: serde::Serializer>(id: &Identity, s: S) -> Result<S::Ok, S::Error> {
    let mut st = s.serialize_struct("Identity", 3)?;
    st.serialize_field("namespace", id.namespace())?;
    st.serialize_field("serviceAccount", id.service_account())?;
    st.serialize_field("trustDomain", id.trust_domain())?;
    st.end()
}

// === impl Service ===

impl Service {
    /// `namespace/hostname`, the key of a service.
    pub fn key(&self) -> String {
        service_key(&self.namespace, &self.hostname)
    }

    /// Whether a client in `namespace` may see this service (by VIP, host name or DNS).
    pub fn visible_to(&self, namespace: &str) -> bool {
        self.visibility == Visibility::Public || self.namespace == namespace
    }

    /// Whether endpoints that report themselves unhealthy are still used.
    pub fn allows_unhealthy(&self) -> bool {
        self.load_balancer
            .as_ref()
            .is_some_and(|lb| lb.health_policy == HealthPolicy::AllowAll)
    }
}

/// `namespace/hostname`, the key of a service.
pub fn service_key(namespace: &str, hostname: &str) -> String {
    format!("{namespace}/{hostname}")
}

// === impl Service ===

impl Service {
    /// The waypoint one connection to this service goes through: a random pick among
    /// `weighted_waypoints` proportional to weight, or `waypoint` when there is nothing to
    /// pick from (no entries, or all weights 0).
    pub fn pick_waypoint<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> Option<&GatewayAddress> {
        // Summed in u64: a u32 sum could overflow with a few large weights.
        let total: u64 = self
            .weighted_waypoints
            .iter()
            .map(|w| u64::from(w.weight))
            .sum();
        if total == 0 {
            return self.waypoint.as_ref();
        }
        let mut at = rng.random_range(0..total);
        for w in &self.weighted_waypoints {
            let weight = u64::from(w.weight);
            if at < weight {
                return Some(&w.destination);
            }
            at -= weight;
        }
        // Unreachable (`at < total`); the plain waypoint is the safe answer anyway.
        self.waypoint.as_ref()
    }

    /// Every waypoint this service may send a connection through (`waypoint` and the weighted
    /// ones, weight 0 included): a connection from any of them is the waypoint forwarding.
    pub fn waypoints(&self) -> impl Iterator<Item = &GatewayAddress> {
        self.waypoint
            .iter()
            .chain(self.weighted_waypoints.iter().map(|w| &w.destination))
    }
}

// === impl GatewayAddress / NetworkAddress ===

impl fmt::Display for GatewayDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayDestination::Address(a) => write!(f, "{a}"),
            GatewayDestination::Hostname {
                namespace,
                hostname,
            } => write!(f, "{namespace}/{hostname}"),
        }
    }
}

impl Serialize for GatewayDestination {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

impl fmt::Display for CidrVip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.network,
            self.net.addr(),
            self.net.prefix_len()
        )
    }
}

impl Serialize for CidrVip {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for NetworkAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod weighted_waypoint_tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn gw(last: u8) -> GatewayAddress {
        GatewayAddress {
            destination: GatewayDestination::Address(NetworkAddress {
                network: String::new(),
                address: IpAddr::from([10, 0, 0, last]),
            }),
            hbone_mtls_port: DEFAULT_HBONE_MTLS_PORT,
        }
    }

    fn weighted(weights: &[u32]) -> Service {
        Service {
            waypoint: Some(gw(100)),
            weighted_waypoints: weights
                .iter()
                .enumerate()
                .map(|(i, w)| WeightedWaypoint {
                    destination: gw(i as u8 + 1),
                    weight: *w,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// How often each of `gw(1..)` and the plain waypoint (`gw(100)`, last) was picked.
    fn counts(svc: &Service, n: usize, seed: u64) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(seed);
        let slots = svc.weighted_waypoints.len();
        let mut out = vec![0; slots + 1];
        for _ in 0..n {
            let picked = svc.pick_waypoint(&mut rng).unwrap();
            let i = (0..slots)
                .find(|i| *picked == gw(*i as u8 + 1))
                .unwrap_or(slots);
            out[i] += 1;
        }
        out
    }

    #[test]
    fn picks_in_proportion_to_weight() {
        // Weights 1:3:0 over 40,000 picks: expect 10,000 / 30,000 / 0. Bounds at ~8 standard
        // deviations (sd ≈ 87), so no seed fails them by chance.
        let c = counts(&weighted(&[1, 3, 0]), 40_000, 7);
        assert!((9_300..=10_700).contains(&c[0]), "{c:?}");
        assert!((29_300..=30_700).contains(&c[1]), "{c:?}");
        assert_eq!(
            (c[2], c[3]),
            (0, 0),
            "weight 0 or the plain waypoint: {c:?}"
        );
    }

    #[test]
    fn empty_or_zero_sum_falls_back_to_the_plain_waypoint() {
        for svc in [weighted(&[]), weighted(&[0, 0])] {
            let c = counts(&svc, 100, 1);
            assert_eq!(c.last(), Some(&100), "{c:?}");
        }
        let none = Service::default();
        assert_eq!(none.pick_waypoint(&mut StdRng::seed_from_u64(1)), None);
        // Huge weights do not overflow the sum.
        let c = counts(&weighted(&[u32::MAX, u32::MAX]), 1_000, 3);
        assert!(c[0] > 400 && c[1] > 400, "{c:?}");
    }

    #[test]
    fn every_waypoint_is_listed_for_the_loop_check() {
        let svc = weighted(&[0, 5]);
        let all: Vec<_> = svc.waypoints().cloned().collect();
        assert_eq!(all, vec![gw(100), gw(1), gw(2)]);
    }
}
