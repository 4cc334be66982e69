//! Workloads, services and policies in the JSON shape ztunnel's `/config_dump` uses, which is
//! what `istioctl ztunnel-config` decodes (wire.md §4, §9).
//!
//! The shape is the presentation's business, so it lives here rather than in the state's own
//! types: field names in camelCase, enum values as ztunnel spells them (`TCP`, `HBONE`), empty
//! optional fields left out where ztunnel leaves them out, policy rules as `[[[match]]]`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::rbac::{Action, Authorization, IpNet, Match, Scope, ServiceAccountMatch, StringMatch};
use crate::state::{
    AppTunnelProtocol, ApplicationTunnel, CidrVip, GatewayAddress, HealthPolicy, HealthStatus,
    IpFamilies, LoadBalancer, LoadBalancerMode, Locality, LocalityScope, NetworkAddress,
    NetworkMode, Service, Snapshot, TunnelProtocol, Visibility, WeightedWaypoint, Workload,
};

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_default_locality(l: &&Locality) -> bool {
    **l == Locality::default()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WorkloadDump<'a> {
    workload_ips: &'a [IpAddr],
    #[serde(skip_serializing_if = "Option::is_none")]
    waypoint: Option<GatewayDump>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network_gateway: Option<GatewayDump>,
    protocol: &'static str,
    network_mode: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    uid: &'a str,
    name: &'a str,
    namespace: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    trust_domain: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    service_account: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    network: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    workload_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    workload_type: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    canonical_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    canonical_revision: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    hostname: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    node: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    native_tunnel: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    application_tunnel: Option<AppTunnelDump>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    authorization_policies: &'a [String],
    status: &'static str,
    cluster_id: &'a str,
    #[serde(skip_serializing_if = "is_default_locality")]
    locality: &'a Locality,
    /// The services this workload backs, as `namespace/hostname`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    services: Vec<&'a str>,
    capacity: u32,
}

/// A workload as the local config file declares it: the workload, with its services as the
/// `namespace/hostname → port → target port` map the file uses (`staticConfig`).
#[derive(Serialize)]
pub(super) struct LocalWorkloadDump<'a> {
    #[serde(flatten)]
    workload: WorkloadDump<'a>,
    #[serde(rename = "services")]
    service_ports: &'a BTreeMap<String, BTreeMap<u16, u16>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GatewayDump {
    /// `network/IP` or `namespace/hostname`.
    destination: String,
    hbone_mtls_port: u16,
}

#[derive(Serialize)]
struct AppTunnelDump {
    protocol: &'static str,
    port: Option<u16>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ServiceDump<'a> {
    name: &'a str,
    namespace: &'a str,
    hostname: &'a str,
    vips: &'a [NetworkAddress],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cidr_vips: Vec<CidrDump>,
    ports: &'a BTreeMap<u16, u16>,
    /// By workload uid.
    endpoints: BTreeMap<&'a str, EndpointDump<'a>>,
    subject_alt_names: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    waypoint: Option<GatewayDump>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    weighted_waypoints: Vec<WeightedWaypointDump>,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_balancer: Option<LoadBalancerDump>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_families: Option<&'static str>,
    canonical: bool,
    visibility: &'static str,
}

#[derive(Serialize)]
struct CidrDump {
    network: String,
    cidr: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EndpointDump<'a> {
    workload_uid: &'a str,
    /// Service port → target port (0: the service's own mapping).
    port: &'a BTreeMap<u16, u16>,
    status: &'static str,
}

#[derive(Serialize)]
struct WeightedWaypointDump {
    destination: GatewayDump,
    weight: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoadBalancerDump {
    routing_preferences: Vec<&'static str>,
    mode: &'static str,
    health_policy: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PolicyDump<'a> {
    name: &'a str,
    namespace: &'a str,
    scope: &'static str,
    action: &'static str,
    /// Rules → clauses → matches: allowed if any rule holds, a rule holds if all its clauses
    /// do, a clause holds if any of its matches does.
    rules: Vec<Vec<Vec<MatchDump<'a>>>>,
    dry_run: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MatchDump<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    namespaces: Vec<StringMatchDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_namespaces: Vec<StringMatchDump<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    service_accounts: &'a [ServiceAccountMatch],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    not_service_accounts: &'a [ServiceAccountMatch],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    principals: Vec<StringMatchDump<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_principals: Vec<StringMatchDump<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    source_ips: &'a [IpNet],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    not_source_ips: &'a [IpNet],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    destination_ips: &'a [IpNet],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    not_destination_ips: &'a [IpNet],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    destination_ports: &'a [u16],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    not_destination_ports: &'a [u16],
}

/// `{"Exact": s}`, `{"Prefix": s}`, `{"Suffix": s}` or `{"Presence": []}`.
#[derive(Serialize)]
enum StringMatchDump<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
    Presence(),
}

// === conversions ===

pub(super) fn workload(w: &Workload) -> WorkloadDump<'_> {
    WorkloadDump {
        workload_ips: &w.workload_ips,
        waypoint: w.waypoint.as_ref().map(gateway),
        network_gateway: w.network_gateway.as_ref().map(gateway),
        protocol: match w.protocol {
            TunnelProtocol::None => "TCP",
            TunnelProtocol::Hbone => "HBONE",
        },
        network_mode: match w.network_mode {
            NetworkMode::Standard => "Standard",
            NetworkMode::HostNetwork => "HostNetwork",
        },
        uid: &w.uid,
        name: &w.name,
        namespace: w.namespace(),
        trust_domain: w.trust_domain(),
        service_account: w.service_account(),
        network: &w.network,
        workload_name: &w.workload_name,
        workload_type: &w.workload_type,
        canonical_name: &w.canonical_name,
        canonical_revision: &w.canonical_revision,
        hostname: &w.hostname,
        node: &w.node,
        native_tunnel: w.native_tunnel,
        application_tunnel: w.application_tunnel.as_ref().map(app_tunnel),
        authorization_policies: &w.authorization_policies,
        status: health(w.status),
        cluster_id: &w.cluster_id,
        locality: &w.locality,
        services: w.services.keys().map(String::as_str).collect(),
        capacity: w.capacity,
    }
}

pub(super) fn local_workload(w: &Workload) -> LocalWorkloadDump<'_> {
    let mut workload = workload(w);
    // The file's own `services` map replaces the list of keys.
    workload.services.clear();
    LocalWorkloadDump {
        workload,
        service_ports: &w.services,
    }
}

fn gateway(g: &GatewayAddress) -> GatewayDump {
    GatewayDump {
        destination: g.destination.to_string(),
        hbone_mtls_port: g.hbone_mtls_port,
    }
}

fn app_tunnel(t: &ApplicationTunnel) -> AppTunnelDump {
    AppTunnelDump {
        protocol: match t.protocol {
            AppTunnelProtocol::None => "NONE",
            AppTunnelProtocol::Proxy => "PROXY",
        },
        port: t.port,
    }
}

fn health(s: HealthStatus) -> &'static str {
    match s {
        HealthStatus::Healthy => "Healthy",
        HealthStatus::Unhealthy => "Unhealthy",
    }
}

/// A service with its endpoints: every workload in `backends` that names it.
pub(super) fn service<'a>(s: &'a Service, backends: &'a [impl AsRef<Workload>]) -> ServiceDump<'a> {
    let key = s.key();
    let endpoints = backends
        .iter()
        .map(AsRef::as_ref)
        .filter_map(|w| {
            let port = w.services.get(&key)?;
            Some((
                w.uid.as_str(),
                EndpointDump {
                    workload_uid: &w.uid,
                    port,
                    status: health(w.status),
                },
            ))
        })
        .collect();
    ServiceDump {
        name: &s.name,
        namespace: &s.namespace,
        hostname: &s.hostname,
        vips: &s.vips,
        cidr_vips: s.cidr_vips.iter().map(cidr).collect(),
        ports: &s.ports,
        endpoints,
        subject_alt_names: &s.subject_alt_names,
        waypoint: s.waypoint.as_ref().map(gateway),
        weighted_waypoints: s.weighted_waypoints.iter().map(weighted).collect(),
        load_balancer: s.load_balancer.as_ref().map(load_balancer),
        ip_families: match s.ip_families {
            IpFamilies::Automatic => None,
            IpFamilies::Ipv4Only => Some("IPv4"),
            IpFamilies::Ipv6Only => Some("IPv6"),
            IpFamilies::Dual => Some("Dual"),
        },
        canonical: s.canonical,
        visibility: match s.visibility {
            Visibility::Public => "Public",
            Visibility::Namespace => "Namespace",
        },
    }
}

fn cidr(c: &CidrVip) -> CidrDump {
    CidrDump {
        network: c.network.clone(),
        cidr: c.net.to_string(),
    }
}

fn weighted(w: &WeightedWaypoint) -> WeightedWaypointDump {
    WeightedWaypointDump {
        destination: gateway(&w.destination),
        weight: w.weight,
    }
}

fn load_balancer(lb: &LoadBalancer) -> LoadBalancerDump {
    LoadBalancerDump {
        routing_preferences: lb
            .routing_preference
            .iter()
            .map(|s| match s {
                LocalityScope::Region => "Region",
                LocalityScope::Zone => "Zone",
                LocalityScope::Subzone => "Subzone",
                LocalityScope::Node => "Node",
                LocalityScope::Cluster => "Cluster",
                LocalityScope::Network => "Network",
            })
            .collect(),
        mode: match lb.mode {
            LoadBalancerMode::Standard => "Standard",
            LoadBalancerMode::Strict => "Strict",
            LoadBalancerMode::Failover => "Failover",
            LoadBalancerMode::Passthrough => "Passthrough",
        },
        health_policy: match lb.health_policy {
            HealthPolicy::OnlyHealthy => "OnlyHealthy",
            HealthPolicy::AllowAll => "AllowAll",
        },
    }
}

pub(super) fn policy(p: &Authorization) -> PolicyDump<'_> {
    PolicyDump {
        name: &p.name,
        namespace: &p.namespace,
        scope: match p.scope {
            Scope::Global => "Global",
            Scope::Namespace => "Namespace",
            Scope::WorkloadSelector => "WorkloadSelector",
        },
        action: match p.action {
            Action::Allow => "Allow",
            Action::Deny => "Deny",
        },
        rules: p
            .rules
            .iter()
            .map(|r| {
                r.clauses
                    .iter()
                    .map(|c| c.matches.iter().map(match_dump).collect())
                    .collect()
            })
            .collect(),
        dry_run: p.dry_run,
    }
}

fn string_matches(v: &[StringMatch]) -> Vec<StringMatchDump<'_>> {
    v.iter()
        .map(|s| match s {
            StringMatch::Exact(x) => StringMatchDump::Exact(x),
            StringMatch::Prefix(x) => StringMatchDump::Prefix(x),
            StringMatch::Suffix(x) => StringMatchDump::Suffix(x),
            StringMatch::Presence => StringMatchDump::Presence(),
        })
        .collect()
}

fn match_dump(m: &Match) -> MatchDump<'_> {
    let strings = string_matches;
    MatchDump {
        namespaces: strings(&m.namespaces),
        not_namespaces: strings(&m.not_namespaces),
        service_accounts: &m.service_accounts,
        not_service_accounts: &m.not_service_accounts,
        principals: strings(&m.principals),
        not_principals: strings(&m.not_principals),
        source_ips: &m.source_ips,
        not_source_ips: &m.not_source_ips,
        destination_ips: &m.destination_ips,
        not_destination_ips: &m.not_destination_ips,
        destination_ports: &m.destination_ports,
        not_destination_ports: &m.not_destination_ports,
    }
}

/// `workloads`, `services`, `policies` and `stagedServices` of one snapshot, each in key
/// order (so two dumps of one state are identical).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StateDump<'a> {
    pub workloads: Vec<WorkloadDump<'a>>,
    pub services: Vec<ServiceDump<'a>>,
    pub policies: Vec<PolicyDump<'a>>,
    /// Services that workloads name but that were not received yet: `namespace/hostname` →
    /// the endpoints waiting for them, by workload uid.
    pub staged_services: BTreeMap<&'a str, BTreeMap<&'a str, EndpointDump<'a>>>,
}

pub(super) fn state(snap: &Snapshot) -> StateDump<'_> {
    let mut workloads: Vec<&Workload> = snap.workloads().map(AsRef::as_ref).collect();
    workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    let mut services: Vec<&Service> = snap.services().map(AsRef::as_ref).collect();
    // By host name first, as ztunnel orders them.
    services.sort_by(|a, b| (&a.hostname, &a.namespace).cmp(&(&b.hostname, &b.namespace)));
    let mut policies: Vec<&Authorization> = snap.policies().map(AsRef::as_ref).collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut staged: BTreeMap<&str, BTreeMap<&str, EndpointDump<'_>>> = BTreeMap::new();
    for w in &workloads {
        for (key, port) in &w.services {
            let (ns, host) = key.split_once('/').unwrap_or(("", key));
            if snap.service_by_host(ns, host).is_none() {
                staged.entry(key).or_default().insert(
                    &w.uid,
                    EndpointDump {
                        workload_uid: &w.uid,
                        port,
                        status: health(w.status),
                    },
                );
            }
        }
    }
    StateDump {
        services: services
            .into_iter()
            .map(|s| service(s, snap.service_workloads(s)))
            .collect(),
        workloads: workloads.into_iter().map(workload).collect(),
        policies: policies.into_iter().map(policy).collect(),
        staged_services: staged,
    }
}
