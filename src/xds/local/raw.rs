//! The local config file as ztunnel's loader reads it: the same field names, the same required
//! fields and defaults, the same enum spellings and the same unknown-field rules, so a file is
//! accepted or refused by serde here exactly when ztunnel's loader accepts or refuses it.
//!
//! The shapes follow ztunnel's schema (facts of its file format, recorded against the real
//! binary in `tests/data/local/verdicts.yaml`), including its quirks:
//! - a workload entry requires `workloadIps`, `namespace` and a `services` map (may be `{}`);
//! - string matches are YAML tags (`!Exact "a"`, `!Prefix "a"`, `!Suffix "a"`, `!Presence []`);
//! - a match, a service-account match and a locality ignore fields they do not know;
//! - every policy field, `hboneMtlsPort` and the three `loadBalancer` fields are required.
//!
//! The YAML reader is `serde_yaml_ng` (a maintained fork of the deprecated `serde_yaml` 0.9 that
//! ztunnel uses): on every fixture it gives ztunnel's verdict and the same error text.
//!
//! Values are only decoded here; what a domain type constrains further is checked once, by the
//! xDS conversion, after `records` turns these into the xDS records.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub workloads: Vec<RawLocalWorkload>,
    #[serde(default)]
    pub policies: Vec<RawPolicy>,
    #[serde(default)]
    pub services: Vec<RawService>,
}

/// One `workloads` entry: the workload plus the services it backs
/// (`namespace/hostname` → service port → target port).
///
/// ztunnel builds this by flattening its workload struct into an entry struct; one flat struct
/// accepts the same keys and values and keeps serde's error path down to the field.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawLocalWorkload {
    pub services: BTreeMap<String, BTreeMap<u16, u16>>,
    pub workload_ips: Vec<IpAddr>,
    #[serde(default)]
    pub waypoint: Option<RawGateway>,
    #[serde(default)]
    pub network_gateway: Option<RawGateway>,
    #[serde(default)]
    pub protocol: RawProtocol,
    #[serde(default)]
    pub network_mode: RawNetworkMode,
    #[serde(default, deserialize_with = "text")]
    pub uid: String,
    #[serde(default, deserialize_with = "text")]
    pub name: String,
    #[serde(deserialize_with = "text")]
    pub namespace: String,
    #[serde(default, deserialize_with = "text")]
    pub trust_domain: String,
    #[serde(default, deserialize_with = "text")]
    pub service_account: String,
    #[serde(default, deserialize_with = "text")]
    pub network: String,
    #[serde(default, deserialize_with = "text")]
    pub workload_name: String,
    #[serde(default, deserialize_with = "text")]
    pub workload_type: String,
    #[serde(default, deserialize_with = "text")]
    pub canonical_name: String,
    #[serde(default, deserialize_with = "text")]
    pub canonical_revision: String,
    #[serde(default, deserialize_with = "text")]
    pub hostname: String,
    #[serde(default, deserialize_with = "text")]
    pub node: String,
    #[serde(default)]
    pub native_tunnel: bool,
    #[serde(default)]
    pub application_tunnel: Option<RawAppTunnel>,
    #[serde(default, deserialize_with = "texts")]
    pub authorization_policies: Vec<String>,
    #[serde(default)]
    pub status: RawStatus,
    #[serde(default, deserialize_with = "text")]
    pub cluster_id: String,
    #[serde(default)]
    pub locality: RawLocality,
    #[serde(default = "one")]
    pub capacity: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
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

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(super) enum RawStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// All three parts are required when `locality` is given; other keys are ignored.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawLocality {
    #[serde(deserialize_with = "text")]
    pub region: String,
    #[serde(deserialize_with = "text")]
    pub zone: String,
    #[serde(deserialize_with = "text")]
    pub subzone: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawGateway {
    pub destination: RawDestination,
    pub hbone_mtls_port: u16,
}

/// `network/IP` when the part after the first `/` is an IP address, else `namespace/hostname`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawDestination {
    Address(NetAddr),
    Hostname(NsHost),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawAppTunnel {
    pub protocol: RawAppTunnelProtocol,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(super) enum RawAppTunnelProtocol {
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "PROXY")]
    Proxy,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawService {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<NetAddr>,
    #[serde(default)]
    pub cidr_vips: Vec<RawNetworkCidr>,
    pub ports: BTreeMap<u16, u16>,
    /// Endpoint key (any string) → endpoint.
    #[serde(default)]
    pub endpoints: BTreeMap<String, RawEndpoint>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub waypoint: Option<RawGateway>,
    #[serde(default)]
    pub weighted_waypoints: Vec<RawWeightedWaypoint>,
    #[serde(default)]
    pub load_balancer: Option<RawLoadBalancer>,
    #[serde(default)]
    pub ip_families: Option<RawIpFamily>,
    #[serde(default)]
    pub canonical: bool,
    #[serde(default)]
    pub visibility: RawVisibility,
}

/// `{network: n, cidr: "10.0.0.0/16"}`; other keys are ignored.
#[derive(Debug, Deserialize)]
pub(super) struct RawNetworkCidr {
    pub network: String,
    pub cidr: ipnet::IpNet,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawEndpoint {
    pub workload_uid: String,
    pub port: BTreeMap<u16, u16>,
    /// Decoded so a file is judged as ztunnel judges it; ambit takes an endpoint's health from
    /// its workload.
    #[allow(dead_code)]
    pub status: RawStatus,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawWeightedWaypoint {
    pub destination: RawGateway,
    pub weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawLoadBalancer {
    pub routing_preferences: Vec<RawLocalityScope>,
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

#[derive(Debug, Clone, Copy, Deserialize)]
pub(super) enum RawLbMode {
    Standard,
    Strict,
    Failover,
    Passthrough,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(super) enum RawHealthPolicy {
    OnlyHealthy,
    AllowAll,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(super) enum RawIpFamily {
    Dual,
    IPv4,
    IPv6,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(super) enum RawVisibility {
    #[default]
    Public,
    Namespace,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub name: String,
    pub namespace: String,
    pub scope: RawScope,
    pub action: RawAction,
    /// rules → clauses → matches.
    pub rules: Vec<Vec<Vec<RawMatch>>>,
    pub dry_run: bool,
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

/// Every list is optional; keys it does not know are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct RawMatch {
    pub namespaces: Vec<RawStringMatch>,
    pub not_namespaces: Vec<RawStringMatch>,
    pub service_accounts: Vec<RawServiceAccount>,
    pub not_service_accounts: Vec<RawServiceAccount>,
    pub principals: Vec<RawStringMatch>,
    pub not_principals: Vec<RawStringMatch>,
    pub source_ips: Vec<ipnet::IpNet>,
    pub not_source_ips: Vec<ipnet::IpNet>,
    pub destination_ips: Vec<ipnet::IpNet>,
    pub not_destination_ips: Vec<ipnet::IpNet>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

/// A YAML-tagged string match. `Presence` is a variant with an empty tuple, written
/// `!Presence []`.
#[derive(Debug, Clone, Deserialize)]
pub(super) enum RawStringMatch {
    Prefix(String),
    Suffix(String),
    Exact(String),
    Presence(),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawServiceAccount {
    pub namespace: String,
    pub service_account: String,
}

/// A string written as one: ztunnel reads a workload's fields through serde's buffered
/// (flattened) path, where a number or boolean scalar is not text, so `name: 123` is refused
/// there although a service's `name: 123` is read as "123".
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Text::deserialize(d).map(|t| t.0)
}

fn texts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<Text>::deserialize(d).map(|v| v.into_iter().map(|t| t.0).collect())
}

struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        // `any` lets the YAML scalar say what it is; only text is accepted.
        d.deserialize_any(TextVisitor)
    }
}

/// `network/IP`; the network may be empty (`/10.0.0.1`).
#[derive(Debug, Clone)]
pub(super) struct NetAddr {
    pub network: String,
    pub address: IpAddr,
}

/// `namespace/hostname`, split at the first `/`.
#[derive(Debug, Clone)]
pub(super) struct NsHost {
    pub namespace: String,
    pub hostname: String,
}

/// Deserializes a string-only value through `parse`, reporting a bad value with `expecting`.
fn from_str<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct StrVisitor<T> {
        expecting: &'static str,
        parse: fn(&str) -> Option<T>,
    }
    impl<T> Visitor<'_> for StrVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.parse)(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
    d.deserialize_str(StrVisitor { expecting, parse })
}

impl<'de> Deserialize<'de> for NetAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a string \"network/IP\"", |s| {
            let (network, ip) = s.split_once('/')?;
            Some(NetAddr {
                network: network.to_string(),
                address: ip.parse().ok()?,
            })
        })
    }
}

impl<'de> Deserialize<'de> for NsHost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d, "a string \"namespace/hostname\"", |s| {
            let (namespace, hostname) = s.split_once('/')?;
            Some(NsHost {
                namespace: namespace.to_string(),
                hostname: hostname.to_string(),
            })
        })
    }
}
