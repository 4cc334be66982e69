//! The topology as xDS resources: pods become `istio.workload.Workload`s, services
//! `istio.workload.Service`s (both wrapped in `istio.workload.Address`), and the topology's policies
//! (written in the local-config YAML shape, wire.md §3) `istio.security.Authorization`s.
//!
//! Invariants: resource names are what istiod uses and ambit removes by (wire.md §2.3): a
//! workload's `uid`, a service's `namespace/hostname`, a policy's `namespace/name`. A pod's
//! `services` map lists every topology service that selects it, with its port map, so service
//! endpoints need no separate resource. Nothing here does I/O.

use std::collections::BTreeMap;

use ambit_proto::istio::security as ps;
use ambit_proto::istio::workload as pw;
use serde_yaml_ng::Value;

use crate::topology::waypoint::{WAYPOINT_HBONE_PORT, waypoint_ip};
use crate::topology::{
    AppTunnelProtocol, HealthPolicy, LbMode, LoadBalancing, LocalityScope, Pod, PodStatus, Service,
    TRUST_DOMAIN, Topology,
};

/// The cluster id the lab's workloads and node proxies share.
pub const CLUSTER_ID: &str = "Kubernetes";

/// A named resource of one xDS type, ready to store and send.
// A control plane holds a few hundred of these in a lab; boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CpResource {
    Address {
        name: String,
        address: pw::Address,
    },
    Policy {
        name: String,
        policy: ps::Authorization,
    },
}

// === impl CpResource ===

impl CpResource {
    pub fn name(&self) -> &str {
        match self {
            CpResource::Address { name, .. } | CpResource::Policy { name, .. } => name,
        }
    }

    pub fn type_url(&self) -> &'static str {
        match self {
            CpResource::Address { .. } => ambit_proto::ADDRESS_TYPE_URL,
            CpResource::Policy { .. } => ambit_proto::AUTHORIZATION_TYPE_URL,
        }
    }

    /// The resource packed as `google.protobuf.Any` with its type URL.
    pub fn to_any(&self) -> prost_types::Any {
        use prost::Message;
        let value = match self {
            CpResource::Address { address, .. } => address.encode_to_vec(),
            CpResource::Policy { policy, .. } => policy.encode_to_vec(),
        };
        prost_types::Any {
            type_url: self.type_url().to_string(),
            value,
        }
    }

    /// A workload resource (named by its uid).
    pub fn workload(w: pw::Workload) -> CpResource {
        CpResource::Address {
            name: w.uid.clone(),
            address: pw::Address {
                r#type: Some(pw::address::Type::Workload(w)),
            },
        }
    }

    /// A service resource (named `namespace/hostname`).
    pub fn service(s: pw::Service) -> CpResource {
        CpResource::Address {
            name: format!("{}/{}", s.namespace, s.hostname),
            address: pw::Address {
                r#type: Some(pw::address::Type::Service(s)),
            },
        }
    }

    /// A policy resource (named `namespace/name`).
    pub fn policy(p: ps::Authorization) -> CpResource {
        CpResource::Policy {
            name: format!("{}/{}", p.namespace, p.name),
            policy: p,
        }
    }
}

/// Every resource of `topology`: workloads, then services, then policies. A policy that does
/// not convert is an error naming it.
pub fn topology_resources(topology: &Topology) -> Result<Vec<CpResource>, String> {
    let mut out: Vec<CpResource> = topology
        .pods
        .iter()
        .map(|p| CpResource::workload(workload(p, topology)))
        .collect();
    out.extend(
        crate::multinet::xds_gateways(topology)
            .into_iter()
            .map(CpResource::workload),
    );
    out.extend(topology.services.iter().map(|s| {
        let mut svc = service_in(s, topology);
        crate::multinet::xds_service(&mut svc, s, topology);
        CpResource::service(svc)
    }));
    for (i, p) in topology.policies.iter().enumerate() {
        let policy = policy(p).map_err(|e| format!("policies[{i}]: {e}"))?;
        out.push(CpResource::policy(policy));
    }
    Ok(out)
}

/// A pod as a workload: HBONE when captured, plain TCP when not, with the services that select it.
pub fn workload(pod: &Pod, topology: &Topology) -> pw::Workload {
    let services = topology
        .services
        .iter()
        .filter(|s| s.namespace == pod.namespace && s.endpoints.contains(&pod.name))
        .map(|s| {
            let ports = s
                .ports
                .iter()
                .map(|(p, t)| pw::Port {
                    service_port: u32::from(*p),
                    target_port: u32::from(*t),
                    app_protocol: 0,
                })
                .collect();
            (
                format!("{}/{}", s.namespace, s.hostname),
                pw::PortList { ports },
            )
        })
        .collect();
    let protocol = if pod.captured {
        pw::TunnelProtocol::Hbone
    } else {
        pw::TunnelProtocol::None
    };
    let mut w = pw::Workload {
        uid: pod.uid(),
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        addresses: vec![pod.ip.octets().to_vec()],
        tunnel_protocol: protocol as i32,
        trust_domain: TRUST_DOMAIN.to_string(),
        service_account: pod.service_account.clone(),
        node: pod.node.clone(),
        canonical_name: pod.labels.get("app").cloned().unwrap_or_default(),
        workload_name: pod.name.clone(),
        workload_type: pw::WorkloadType::Pod as i32,
        services,
        cluster_id: CLUSTER_ID.to_string(),
        status: match pod.status() {
            PodStatus::Healthy => pw::WorkloadStatus::Healthy,
            PodStatus::Unhealthy => pw::WorkloadStatus::Unhealthy,
        } as i32,
        locality: Some(pod.locality())
            .filter(|l| !l.is_empty())
            .map(|l| pw::Locality {
                region: l.region,
                zone: l.zone,
                subzone: l.subzone,
            }),
        waypoint: pod.waypoint().and_then(|wp| waypoint(topology, wp)),
        application_tunnel: pod.app_tunnel().map(|t| pw::ApplicationTunnel {
            protocol: match t.protocol {
                AppTunnelProtocol::None => pw::application_tunnel::Protocol::None,
                AppTunnelProtocol::Proxy => pw::application_tunnel::Protocol::Proxy,
            } as i32,
            port: t.port.map(u32::from).unwrap_or(0),
        }),
        ..Default::default()
    };
    crate::multinet::xds_workload(&mut w, pod, topology);
    w
}

/// The waypoint pod `name` as a gateway address: its pod address on its network and the HBONE
/// port (the topology checked that the pod exists).
pub fn waypoint(topology: &Topology, name: &str) -> Option<pw::GatewayAddress> {
    if let Some(svc) = waypoint_service(topology, name) {
        return Some(pw::GatewayAddress {
            destination: Some(pw::gateway_address::Destination::Hostname(
                pw::NamespacedHostname {
                    namespace: svc.namespace.clone(),
                    hostname: svc.hostname.clone(),
                },
            )),
            hbone_mtls_port: u32::from(WAYPOINT_HBONE_PORT),
        });
    }
    let ip = waypoint_ip(&topology.pods, name)?;
    let network = topology
        .pod(name)
        .map(|p| topology.network_of(p).to_string())
        .unwrap_or_default();
    Some(pw::GatewayAddress {
        destination: Some(pw::gateway_address::Destination::Address(
            pw::NetworkAddress {
                network,
                address: ip.octets().to_vec(),
                length: None,
            },
        )),
        hbone_mtls_port: u32::from(WAYPOINT_HBONE_PORT),
    })
}

/// The service named like the waypoint pod `name` that selects it, if the topology has one:
/// then the waypoint is described by that service's host name, as istiod describes waypoints
/// (`GatewayAddress` `hostname`); otherwise by the pod's address.
pub fn waypoint_service<'t>(topology: &'t Topology, name: &str) -> Option<&'t Service> {
    let pod = topology.pod(name)?;
    topology
        .services
        .iter()
        .find(|s| s.name == name && s.namespace == pod.namespace && s.endpoints.contains(&pod.name))
}

/// A topology service with its waypoint (which names a pod of `topology`).
pub fn service_in(s: &Service, topology: &Topology) -> pw::Service {
    pw::Service {
        waypoint: s.waypoint.as_deref().and_then(|wp| waypoint(topology, wp)),
        ..service(s)
    }
}

/// A topology service: its VIPs (default network) and ports.
pub fn service(s: &Service) -> pw::Service {
    pw::Service {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        hostname: s.hostname.clone(),
        addresses: s
            .vips
            .iter()
            .map(|v| pw::NetworkAddress {
                network: String::new(),
                address: v.octets().to_vec(),
                length: None,
            })
            .collect(),
        ports: s
            .ports
            .iter()
            .map(|(p, t)| pw::Port {
                service_port: u32::from(*p),
                target_port: u32::from(*t),
                app_protocol: 0,
            })
            .collect(),
        load_balancing: s.load_balancing.as_ref().map(load_balancing),
        ..Default::default()
    }
}

/// A topology `loadBalancing` block as istiod sends it.
fn load_balancing(lb: &LoadBalancing) -> pw::LoadBalancing {
    use pw::load_balancing::{HealthPolicy as PH, Mode as PM, Scope as PS};
    let scope = |s: &LocalityScope| match s {
        LocalityScope::Region => PS::Region,
        LocalityScope::Zone => PS::Zone,
        LocalityScope::Subzone => PS::Subzone,
        LocalityScope::Node => PS::Node,
        LocalityScope::Cluster => PS::Cluster,
        LocalityScope::Network => PS::Network,
    } as i32;
    pw::LoadBalancing {
        routing_preference: lb.routing_preference.iter().map(scope).collect(),
        mode: match lb.mode {
            LbMode::Standard => PM::UnspecifiedMode,
            LbMode::Strict => PM::Strict,
            LbMode::Failover => PM::Failover,
        } as i32,
        health_policy: match lb.health_policy {
            HealthPolicy::OnlyHealthy => PH::OnlyHealthy,
            HealthPolicy::AllowAll => PH::AllowAll,
        } as i32,
    }
}

/// A policy written in the local-config shape (`name, namespace, scope, action, dryRun, rules`,
/// rules → clauses → matches) as an `Authorization`. Errors name the field.
pub fn policy(v: &Value) -> Result<ps::Authorization, String> {
    let map = v.as_mapping().ok_or("a policy must be a mapping")?;
    let text = |k: &str| -> Result<String, String> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("`{k}` must be a string")),
        }
    };
    for k in map.keys() {
        let known = ["name", "namespace", "scope", "action", "dryRun", "rules"];
        if !k.as_str().is_some_and(|k| known.contains(&k)) {
            return Err(format!("unknown field {k:?}"));
        }
    }
    let scope = match text("scope")?.as_str() {
        "Global" => ps::Scope::Global,
        "Namespace" => ps::Scope::Namespace,
        "WorkloadSelector" => ps::Scope::WorkloadSelector,
        other => {
            return Err(format!(
                "`scope`: {other:?} is not Global|Namespace|WorkloadSelector"
            ));
        }
    };
    let action = match text("action")?.as_str() {
        "Allow" => ps::Action::Allow,
        "Deny" => ps::Action::Deny,
        other => return Err(format!("`action`: {other:?} is not Allow|Deny")),
    };
    let mut rules = Vec::new();
    for (r, rule) in seq(map.get("rules"), "rules")?.iter().enumerate() {
        let mut clauses = Vec::new();
        for (c, clause) in seq(Some(rule), &format!("rules[{r}]"))?.iter().enumerate() {
            let at = format!("rules[{r}][{c}]");
            let matches = seq(Some(clause), &at)?
                .iter()
                .enumerate()
                .map(|(m, v)| rbac_match(v).map_err(|e| format!("{at}[{m}]: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            clauses.push(ps::Clause { matches });
        }
        rules.push(ps::Rule { clauses });
    }
    Ok(ps::Authorization {
        name: text("name")?,
        namespace: text("namespace")?,
        scope: scope as i32,
        action: action as i32,
        dry_run: map.get("dryRun").and_then(Value::as_bool).unwrap_or(false),
        rules,
        ..Default::default()
    })
}

fn seq<'a>(v: Option<&'a Value>, at: &str) -> Result<&'a [Value], String> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Sequence(s)) => Ok(s),
        Some(_) => Err(format!("`{at}` must be a list")),
    }
}

fn rbac_match(v: &Value) -> Result<ps::Match, String> {
    let map = v.as_mapping().ok_or("a match must be a mapping")?;
    let mut m = ps::Match::default();
    for (k, val) in map {
        let key = k.as_str().unwrap_or_default();
        let list = seq(Some(val), key)?;
        match key {
            "namespaces" => m.namespaces = strings(list, key)?,
            "notNamespaces" => m.not_namespaces = strings(list, key)?,
            "principals" => m.principals = strings(list, key)?,
            "notPrincipals" => m.not_principals = strings(list, key)?,
            "sourceIps" => m.source_ips = addresses(list, key)?,
            "notSourceIps" => m.not_source_ips = addresses(list, key)?,
            "destinationIps" => m.destination_ips = addresses(list, key)?,
            "notDestinationIps" => m.not_destination_ips = addresses(list, key)?,
            "destinationPorts" => m.destination_ports = ports(list, key)?,
            "notDestinationPorts" => m.not_destination_ports = ports(list, key)?,
            "serviceAccounts" => m.service_accounts = accounts(list, key)?,
            "notServiceAccounts" => m.not_service_accounts = accounts(list, key)?,
            other => return Err(format!("unknown match field {other:?}")),
        }
    }
    Ok(m)
}

/// ztunnel's tags (`!Exact s`, `!Prefix s`, `!Suffix s`, `!Presence []`), as the node proxies'
/// local config has them; also a plain string (exact) or `{Exact|Prefix|Suffix: s}` /
/// `{Presence: {}}`.
fn strings(list: &[Value], at: &str) -> Result<Vec<ps::StringMatch>, String> {
    use ps::string_match::MatchType;
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let kind = match v {
                Value::String(s) => MatchType::Exact(s.clone()),
                Value::Tagged(t) => {
                    let s = t.value.as_str().unwrap_or_default().to_string();
                    match t.tag.to_string().trim_start_matches('!') {
                        "Exact" => MatchType::Exact(s),
                        "Prefix" => MatchType::Prefix(s),
                        "Suffix" => MatchType::Suffix(s),
                        "Presence" => MatchType::Presence(()),
                        other => return Err(format!("{at}[{i}]: unknown string match !{other}")),
                    }
                }
                Value::Mapping(m) if m.len() == 1 => {
                    let (k, val) = m.iter().next().ok_or("empty match")?;
                    let s = val.as_str().unwrap_or_default().to_string();
                    match k.as_str().unwrap_or_default() {
                        "Exact" => MatchType::Exact(s),
                        "Prefix" => MatchType::Prefix(s),
                        "Suffix" => MatchType::Suffix(s),
                        "Presence" => MatchType::Presence(()),
                        other => return Err(format!("{at}[{i}]: unknown string match {other:?}")),
                    }
                }
                _ => return Err(format!("{at}[{i}]: expected a string or a one-key mapping")),
            };
            Ok(ps::StringMatch {
                match_type: Some(kind),
            })
        })
        .collect()
}

/// `1.2.3.4` or `10.0.0.0/8` (IPv4 or IPv6).
fn addresses(list: &[Value], at: &str) -> Result<Vec<ps::Address>, String> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let s = v.as_str().ok_or(format!("{at}[{i}]: expected a string"))?;
            let (ip, len) = match s.split_once('/') {
                Some((ip, len)) => (ip, Some(len)),
                None => (s, None),
            };
            let ip: std::net::IpAddr = ip
                .parse()
                .map_err(|_| format!("{at}[{i}]: {ip:?} is not an IP address"))?;
            let (bytes, full) = match ip {
                std::net::IpAddr::V4(a) => (a.octets().to_vec(), 32),
                std::net::IpAddr::V6(a) => (a.octets().to_vec(), 128),
            };
            let length = match len {
                Some(l) => l
                    .parse::<u32>()
                    .map_err(|_| format!("{at}[{i}]: {l:?} is not a prefix length"))?,
                None => full,
            };
            Ok(ps::Address {
                address: bytes,
                length,
            })
        })
        .collect()
}

fn ports(list: &[Value], at: &str) -> Result<Vec<u32>, String> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .ok_or(format!("{at}[{i}]: expected a port number"))
        })
        .collect()
}

fn accounts(list: &[Value], at: &str) -> Result<Vec<ps::ServiceAccountMatch>, String> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let get = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or(format!("{at}[{i}]: `{k}` is required"))
            };
            Ok(ps::ServiceAccountMatch {
                namespace: get("namespace")?,
                service_account: get("serviceAccount")?,
            })
        })
        .collect()
}

/// Which node each workload identity may ask certificates for: node → SPIFFE ids of the
/// workloads scheduled there (from the Address resources a control plane holds).
pub fn identities_by_node<'a>(
    addresses: impl Iterator<Item = &'a pw::Address>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in addresses {
        if let Some(pw::address::Type::Workload(w)) = &a.r#type {
            let td = if w.trust_domain.is_empty() {
                TRUST_DOMAIN
            } else {
                &w.trust_domain
            };
            let sa = if w.service_account.is_empty() {
                "default"
            } else {
                &w.service_account
            };
            out.entry(w.node.clone())
                .or_default()
                .push(format!("spiffe://{td}/ns/{}/sa/{sa}", w.namespace));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_as_resources() {
        let t = Topology::from_yaml(
            "nodes: [{name: n1}]
pods:
  - {name: a, node: n1, serviceAccount: sa, labels: {app: x}}
  - {name: b, node: n1, captured: false}
services: [{name: s, ports: {80: 8080}, selector: {app: x}, vips: [10.96.0.1]}]
policies:
  - name: p
    namespace: default
    scope: Namespace
    action: Deny
    rules: [[[{principals: [{Prefix: spiffe://x}, !Suffix /sa/y, !Presence []], sourceIps: [10.0.0.0/8], destinationPorts: [80]}]]]
",
        )
        .unwrap();
        let rs = topology_resources(&t).unwrap();
        let names: Vec<&str> = rs.iter().map(CpResource::name).collect();
        assert_eq!(
            names,
            [
                "Kubernetes//Pod/default/a",
                "Kubernetes//Pod/default/b",
                "default/s.default.svc.cluster.local",
                "default/p"
            ]
        );
        let CpResource::Address { address, .. } = &rs[0] else {
            panic!()
        };
        let Some(pw::address::Type::Workload(w)) = &address.r#type else {
            panic!()
        };
        assert_eq!(w.addresses, vec![vec![10, 244, 1, 2]]);
        assert_eq!(w.tunnel_protocol, pw::TunnelProtocol::Hbone as i32);
        assert_eq!(
            w.services["default/s.default.svc.cluster.local"].ports[0].target_port,
            8080
        );
        let CpResource::Policy { policy, .. } = &rs[3] else {
            panic!()
        };
        assert_eq!(policy.action, ps::Action::Deny as i32);
        let m = &policy.rules[0].clauses[0].matches[0];
        use ps::string_match::MatchType;
        let kinds: Vec<_> = m.principals.iter().map(|p| p.match_type.clone()).collect();
        assert_eq!(
            kinds,
            [
                Some(MatchType::Prefix("spiffe://x".into())),
                Some(MatchType::Suffix("/sa/y".into())),
                Some(MatchType::Presence(())),
            ]
        );
        assert_eq!(m.source_ips[0].length, 8);
        assert_eq!(m.destination_ports, vec![80]);
        let ids = identities_by_node(rs.iter().filter_map(|r| match r {
            CpResource::Address { address, .. } => Some(address),
            _ => None,
        }));
        assert_eq!(
            ids["n1"],
            [
                "spiffe://cluster.local/ns/default/sa/sa",
                "spiffe://cluster.local/ns/default/sa/default"
            ]
        );
        assert!(policy_err("{scope: Nope, action: Allow}").contains("scope"));
    }

    #[test]
    fn health_locality_and_load_balancing_as_resources() {
        let t = Topology::from_yaml(
            "nodes: [{name: n1}]
pods:
  - {name: a, node: n1, labels: {app: x}, locality: {region: r1, zone: z1, subzone: s1}}
  - {name: b, node: n1, labels: {app: x}, status: Unhealthy}
services:
  - name: s
    ports: {80: 8080}
    selector: {app: x}
    loadBalancing: {routingPreference: [Zone, Network], mode: Strict}
",
        )
        .unwrap();
        let a = workload(t.pod("a").unwrap(), &t);
        let l = a.locality.unwrap();
        assert_eq!((&*l.region, &*l.zone, &*l.subzone), ("r1", "z1", "s1"));
        assert_eq!(a.status, pw::WorkloadStatus::Healthy as i32);
        let b = workload(t.pod("b").unwrap(), &t);
        assert_eq!(b.status, pw::WorkloadStatus::Unhealthy as i32);
        assert!(b.locality.is_none());
        use pw::load_balancing::{HealthPolicy as PH, Mode as PM, Scope as PS};
        let lb = service(t.service("s").unwrap()).load_balancing.unwrap();
        assert_eq!(lb.routing_preference, [PS::Zone as i32, PS::Network as i32]);
        assert_eq!(lb.mode, PM::Strict as i32);
        assert_eq!(lb.health_policy, PH::OnlyHealthy as i32);
    }

    fn policy_err(y: &str) -> String {
        policy(&serde_yaml_ng::from_str(y).unwrap()).unwrap_err()
    }
}
