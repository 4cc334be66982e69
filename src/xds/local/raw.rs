//! The local config file as written: serde shapes mirroring the YAML (camelCase, unknown fields
//! rejected). Everything that needs a precise, field-named error (addresses, CIDRs, ports,
//! names) is kept as text or a wide integer here and checked in `convert`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawConfig {
    #[serde(default)]
    pub workloads: Vec<RawWorkload>,
    #[serde(default)]
    pub services: Vec<RawService>,
    #[serde(default)]
    pub policies: Vec<RawPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub(super) struct RawWorkload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub workload_ips: Vec<String>,
    pub protocol: RawProtocol,
    pub network_mode: RawNetworkMode,
    pub network: String,
    pub node: String,
    pub hostname: String,
    pub waypoint: Option<RawGateway>,
    pub network_gateway: Option<RawGateway>,
    pub native_tunnel: bool,
    pub application_tunnel: Option<RawAppTunnel>,
    pub authorization_policies: Vec<String>,
    pub status: RawStatus,
    pub cluster_id: String,
    pub locality: RawLocality,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_name: String,
    pub workload_type: String,
    pub capacity: Option<u64>,
    /// `namespace/hostname` → service port → target port.
    pub services: BTreeMap<String, BTreeMap<u64, u64>>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) enum RawProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "HBONE")]
    Hbone,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) enum RawNetworkMode {
    #[default]
    Standard,
    HostNetwork,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) enum RawStatus {
    #[default]
    Healthy,
    Unhealthy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawGateway {
    /// `network/IP` or `namespace/hostname`.
    #[serde(default)]
    pub destination: String,
    pub hbone_mtls_port: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawAppTunnel {
    #[serde(default)]
    pub protocol: RawAppTunnelProtocol,
    pub port: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) enum RawAppTunnelProtocol {
    #[default]
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "PROXY")]
    Proxy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub(super) struct RawLocality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub(super) struct RawService {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    /// `network/IP`, the network possibly empty.
    pub vips: Vec<String>,
    pub ports: BTreeMap<u64, u64>,
    pub subject_alt_names: Vec<String>,
    pub waypoint: Option<RawGateway>,
    pub weighted_waypoints: Vec<RawWeightedWaypoint>,
    pub load_balancer: Option<RawLoadBalancer>,
    pub ip_families: RawIpFamilies,
    pub canonical: bool,
    pub visibility: RawVisibility,
}

/// A [`RawGateway`] with a weight (`weightedWaypoints` entries).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawWeightedWaypoint {
    #[serde(default)]
    pub destination: String,
    pub hbone_mtls_port: Option<u64>,
    pub weight: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub(super) struct RawLoadBalancer {
    pub routing_preference: Vec<RawLocalityScope>,
    pub mode: RawLbMode,
    pub health_policy: RawHealthPolicy,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(super) enum RawLocalityScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) enum RawLbMode {
    #[default]
    Standard,
    Strict,
    Failover,
    Passthrough,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) enum RawHealthPolicy {
    #[default]
    OnlyHealthy,
    AllowAll,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) enum RawIpFamilies {
    #[default]
    Automatic,
    Ipv4Only,
    Ipv6Only,
    Dual,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) enum RawVisibility {
    #[default]
    Public,
    Namespace,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawPolicy {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    pub scope: RawScope,
    pub action: RawAction,
    #[serde(default)]
    pub dry_run: bool,
    /// rules → clauses → matches.
    #[serde(default)]
    pub rules: Vec<Vec<Vec<RawMatch>>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(super) enum RawScope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(super) enum RawAction {
    Allow,
    Deny,
}

/// String matches stay as YAML values: a plain string (exact), or a one-key map
/// `{Exact|Prefix|Suffix: s}` / `{Presence: {}}`; `convert` checks the shape with a clear error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub(super) struct RawMatch {
    pub namespaces: Vec<serde_yaml::Value>,
    pub not_namespaces: Vec<serde_yaml::Value>,
    pub principals: Vec<serde_yaml::Value>,
    pub not_principals: Vec<serde_yaml::Value>,
    pub source_ips: Vec<String>,
    pub not_source_ips: Vec<String>,
    pub destination_ips: Vec<String>,
    pub not_destination_ips: Vec<String>,
    pub destination_ports: Vec<u64>,
    pub not_destination_ports: Vec<u64>,
    pub service_accounts: Vec<RawServiceAccount>,
    pub not_service_accounts: Vec<RawServiceAccount>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawServiceAccount {
    pub namespace: String,
    pub service_account: String,
}
