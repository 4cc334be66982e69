//! Raw local-config entries → state domain types, checking every value that serde let through
//! as text (IPs, CIDRs, `network/IP`, names) or as a wide integer (ports).
//!
//! Each check fails with a [`FieldError`] naming the field path inside the entry; the caller
//! prefixes the file and the entry, so every error is one line that points at the culprit.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::raw::*;
use crate::core::Identity;
use crate::rbac::{self, Authorization, IpNet, ServiceAccountMatch, StringMatch};
use crate::state::{
    AppTunnelProtocol, ApplicationTunnel, DEFAULT_HBONE_MTLS_PORT, GatewayAddress,
    GatewayDestination, HealthPolicy, HealthStatus, IpFamilies, LoadBalancer, LoadBalancerMode,
    Locality, LocalityScope, NetworkAddress, NetworkMode, Service, TunnelProtocol, Visibility,
    WeightedWaypoint, Workload,
};

/// Defaults Istio applies when a workload leaves these out.
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
const DEFAULT_SERVICE_ACCOUNT: &str = "default";
const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// A bad value inside one entry: the field path (e.g. `workloadIps[0]`; empty for the entry
/// as a whole) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FieldError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Reported at the entry itself (empty field path), naming the absent field.
fn missing(field: &str) -> FieldError {
    bad("", format!("missing required field {field:?}"))
}

pub(super) fn workload(raw: RawWorkload) -> Result<Workload, FieldError> {
    for (field, value) in [("name", &raw.name), ("namespace", &raw.namespace)] {
        if value.is_empty() {
            return Err(missing(field));
        }
    }
    let sa = or_default(&raw.service_account, DEFAULT_SERVICE_ACCOUNT);
    let td = or_default(&raw.trust_domain, DEFAULT_TRUST_DOMAIN);
    check_name("namespace", &raw.namespace)?;
    check_name("serviceAccount", sa)?;
    check_name("trustDomain", td)?;
    let identity =
        Identity::new(td, &raw.namespace, sa).map_err(|e| bad("namespace", e.to_string()))?;
    let cluster_id = or_default(&raw.cluster_id, DEFAULT_CLUSTER_ID).to_string();
    // Istio's workload uid shape, so a config that omits uids still gets stable, unique keys.
    let uid = if raw.uid.is_empty() {
        format!("{cluster_id}//Pod/{}/{}", raw.namespace, raw.name)
    } else {
        raw.uid
    };
    let mut w = Workload::new(uid, raw.name, identity);
    w.workload_ips = raw
        .workload_ips
        .iter()
        .enumerate()
        .map(|(i, s)| parse_ip(&format!("workloadIps[{i}]"), s))
        .collect::<Result<_, _>>()?;
    w.protocol = match raw.protocol {
        RawProtocol::Tcp => TunnelProtocol::None,
        RawProtocol::Hbone => TunnelProtocol::Hbone,
    };
    w.network_mode = match raw.network_mode {
        RawNetworkMode::Standard => NetworkMode::Standard,
        RawNetworkMode::HostNetwork => NetworkMode::HostNetwork,
    };
    w.network = raw.network;
    w.node = raw.node;
    w.hostname = raw.hostname;
    w.waypoint = raw.waypoint.map(|g| gateway("waypoint", g)).transpose()?;
    w.network_gateway = raw
        .network_gateway
        .map(|g| gateway("networkGateway", g))
        .transpose()?;
    w.native_tunnel = raw.native_tunnel;
    w.application_tunnel = raw
        .application_tunnel
        .map(|t| {
            Ok::<_, FieldError>(ApplicationTunnel {
                protocol: match t.protocol {
                    RawAppTunnelProtocol::None => AppTunnelProtocol::None,
                    RawAppTunnelProtocol::Proxy => AppTunnelProtocol::Proxy,
                },
                port: t
                    .port
                    .map(|p| port("applicationTunnel.port", p))
                    .transpose()?,
            })
        })
        .transpose()?;
    for (i, key) in raw.authorization_policies.iter().enumerate() {
        check_key(
            &format!("authorizationPolicies[{i}]"),
            key,
            "namespace/name",
        )?;
    }
    w.authorization_policies = raw.authorization_policies;
    w.status = match raw.status {
        RawStatus::Healthy => HealthStatus::Healthy,
        RawStatus::Unhealthy => HealthStatus::Unhealthy,
    };
    w.cluster_id = cluster_id;
    w.locality = Locality {
        region: raw.locality.region,
        zone: raw.locality.zone,
        subzone: raw.locality.subzone,
    };
    w.canonical_name = raw.canonical_name;
    w.canonical_revision = raw.canonical_revision;
    w.workload_name = raw.workload_name;
    w.workload_type = raw.workload_type;
    if let Some(c) = raw.capacity {
        w.capacity = u32::try_from(c).map_err(|_| {
            bad(
                "capacity",
                format!("capacity {c} out of range (0-{})", u32::MAX),
            )
        })?;
    }
    for (key, ports) in raw.services {
        let field = format!("services[{key:?}]");
        check_key(&field, &key, "namespace/hostname")?;
        let ports = port_map(&field, ports)?;
        w.services.insert(key, ports);
    }
    Ok(w)
}

pub(super) fn service(raw: RawService) -> Result<Service, FieldError> {
    for (field, value) in [
        ("name", &raw.name),
        ("namespace", &raw.namespace),
        ("hostname", &raw.hostname),
    ] {
        if value.is_empty() {
            return Err(missing(field));
        }
    }
    check_name("namespace", &raw.namespace)?;
    check_name("hostname", &raw.hostname)?;
    let vips = raw
        .vips
        .iter()
        .enumerate()
        .map(|(i, s)| network_address(&format!("vips[{i}]"), s))
        .collect::<Result<_, _>>()?;
    let load_balancer = raw.load_balancer.map(|lb| LoadBalancer {
        routing_preference: lb
            .routing_preference
            .into_iter()
            .map(|s| match s {
                RawLocalityScope::Region => LocalityScope::Region,
                RawLocalityScope::Zone => LocalityScope::Zone,
                RawLocalityScope::Subzone => LocalityScope::Subzone,
                RawLocalityScope::Node => LocalityScope::Node,
                RawLocalityScope::Cluster => LocalityScope::Cluster,
                RawLocalityScope::Network => LocalityScope::Network,
            })
            .collect(),
        mode: match lb.mode {
            RawLbMode::Standard => LoadBalancerMode::Standard,
            RawLbMode::Strict => LoadBalancerMode::Strict,
            RawLbMode::Failover => LoadBalancerMode::Failover,
            RawLbMode::Passthrough => LoadBalancerMode::Passthrough,
        },
        health_policy: match lb.health_policy {
            RawHealthPolicy::OnlyHealthy => HealthPolicy::OnlyHealthy,
            RawHealthPolicy::AllowAll => HealthPolicy::AllowAll,
        },
    });
    let weighted_waypoints = raw
        .weighted_waypoints
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let g = RawGateway {
                destination: w.destination,
                hbone_mtls_port: w.hbone_mtls_port,
            };
            Ok(WeightedWaypoint {
                destination: gateway(&format!("weightedWaypoints[{i}]"), g)?,
                weight: w.weight,
            })
        })
        .collect::<Result<Vec<_>, FieldError>>()?;
    Ok(Service {
        ports: port_map("ports", raw.ports)?,
        waypoint: raw.waypoint.map(|g| gateway("waypoint", g)).transpose()?,
        weighted_waypoints,
        name: raw.name,
        namespace: raw.namespace,
        hostname: raw.hostname,
        vips,
        // The local config lists exact VIPs only.
        cidr_vips: Vec::new(),
        subject_alt_names: raw.subject_alt_names,
        load_balancer,
        ip_families: match raw.ip_families {
            RawIpFamilies::Automatic => IpFamilies::Automatic,
            RawIpFamilies::Ipv4Only => IpFamilies::Ipv4Only,
            RawIpFamilies::Ipv6Only => IpFamilies::Ipv6Only,
            RawIpFamilies::Dual => IpFamilies::Dual,
        },
        canonical: raw.canonical,
        visibility: match raw.visibility {
            RawVisibility::Public => Visibility::Public,
            RawVisibility::Namespace => Visibility::Namespace,
        },
    })
}

pub(super) fn policy(raw: RawPolicy) -> Result<Authorization, FieldError> {
    for (field, value) in [("name", &raw.name), ("namespace", &raw.namespace)] {
        if value.is_empty() {
            return Err(missing(field));
        }
    }
    check_name("name", &raw.name)?;
    check_name("namespace", &raw.namespace)?;
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (r, clauses) in raw.rules.into_iter().enumerate() {
        let mut rule = rbac::Rule::default();
        for (c, matches) in clauses.into_iter().enumerate() {
            let mut clause = rbac::Clause::default();
            for (m, raw_match) in matches.into_iter().enumerate() {
                clause
                    .matches
                    .push(rbac_match(&format!("rules[{r}][{c}][{m}]"), raw_match)?);
            }
            rule.clauses.push(clause);
        }
        rules.push(rule);
    }
    Ok(Authorization {
        name: raw.name,
        namespace: raw.namespace,
        scope: match raw.scope {
            RawScope::Global => rbac::Scope::Global,
            RawScope::Namespace => rbac::Scope::Namespace,
            RawScope::WorkloadSelector => rbac::Scope::WorkloadSelector,
        },
        action: match raw.action {
            RawAction::Allow => rbac::Action::Allow,
            RawAction::Deny => rbac::Action::Deny,
        },
        dry_run: raw.dry_run,
        rules,
    })
}

fn rbac_match(at: &str, raw: RawMatch) -> Result<rbac::Match, FieldError> {
    let strings =
        |name: &str, vals: &[serde_yaml::Value]| -> Result<Vec<StringMatch>, FieldError> {
            vals.iter()
                .enumerate()
                .map(|(i, v)| string_match(&format!("{at}.{name}[{i}]"), v))
                .collect()
        };
    let nets = |name: &str, vals: &[String]| -> Result<Vec<IpNet>, FieldError> {
        vals.iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<IpNet>()
                    .map_err(|e| bad(format!("{at}.{name}[{i}]"), e.to_string()))
            })
            .collect()
    };
    let ports = |name: &str, vals: &[u64]| -> Result<Vec<u16>, FieldError> {
        vals.iter()
            .enumerate()
            .map(|(i, p)| port(&format!("{at}.{name}[{i}]"), *p))
            .collect()
    };
    let accounts = |vals: Vec<RawServiceAccount>| {
        vals.into_iter()
            .map(|a| ServiceAccountMatch {
                namespace: a.namespace,
                service_account: a.service_account,
            })
            .collect()
    };
    Ok(rbac::Match {
        namespaces: strings("namespaces", &raw.namespaces)?,
        not_namespaces: strings("notNamespaces", &raw.not_namespaces)?,
        principals: strings("principals", &raw.principals)?,
        not_principals: strings("notPrincipals", &raw.not_principals)?,
        source_ips: nets("sourceIps", &raw.source_ips)?,
        not_source_ips: nets("notSourceIps", &raw.not_source_ips)?,
        destination_ips: nets("destinationIps", &raw.destination_ips)?,
        not_destination_ips: nets("notDestinationIps", &raw.not_destination_ips)?,
        destination_ports: ports("destinationPorts", &raw.destination_ports)?,
        not_destination_ports: ports("notDestinationPorts", &raw.not_destination_ports)?,
        service_accounts: accounts(raw.service_accounts),
        not_service_accounts: accounts(raw.not_service_accounts),
    })
}

/// A plain string is an exact match; otherwise a one-key map `{Exact|Prefix|Suffix: s}` or
/// `{Presence: ~}`.
fn string_match(field: &str, v: &serde_yaml::Value) -> Result<StringMatch, FieldError> {
    use serde_yaml::Value;
    let shape = || {
        bad(
            field,
            "expected a string or one of {Exact: s}, {Prefix: s}, {Suffix: s}, {Presence: {}}",
        )
    };
    match v {
        Value::String(s) => Ok(StringMatch::Exact(s.clone())),
        Value::Mapping(m) if m.len() == 1 => {
            let (k, val) = m.iter().next().ok_or_else(shape)?;
            let text = || val.as_str().map(str::to_string).ok_or_else(shape);
            match k.as_str() {
                Some("Exact" | "exact") => Ok(StringMatch::Exact(text()?)),
                Some("Prefix" | "prefix") => Ok(StringMatch::Prefix(text()?)),
                Some("Suffix" | "suffix") => Ok(StringMatch::Suffix(text()?)),
                Some("Presence" | "presence") => Ok(StringMatch::Presence),
                _ => Err(shape()),
            }
        }
        _ => Err(shape()),
    }
}

fn gateway(field: &str, raw: RawGateway) -> Result<GatewayAddress, FieldError> {
    let at = format!("{field}.destination");
    let d = raw.destination.as_str();
    let shape = || {
        bad(
            &at,
            format!("invalid destination {d:?}: expected \"network/IP\" or \"namespace/hostname\""),
        )
    };
    let (first, rest) = d.split_once('/').ok_or_else(shape)?;
    let destination = match rest.parse::<IpAddr>() {
        Ok(address) => GatewayDestination::Address(NetworkAddress {
            network: first.to_string(),
            address,
        }),
        Err(_) => {
            if first.is_empty() || !valid_hostname(rest) {
                return Err(shape());
            }
            GatewayDestination::Hostname {
                namespace: first.to_string(),
                hostname: rest.to_string(),
            }
        }
    };
    let hbone_mtls_port = match raw.hbone_mtls_port {
        None => DEFAULT_HBONE_MTLS_PORT,
        Some(p) => port(&format!("{field}.hboneMtlsPort"), p)?,
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port,
    })
}

fn network_address(field: &str, s: &str) -> Result<NetworkAddress, FieldError> {
    let shape = || {
        bad(
            field,
            format!("invalid address {s:?}: expected \"network/IP\""),
        )
    };
    let (network, ip) = s.split_once('/').ok_or_else(shape)?;
    let address = ip
        .parse()
        .map_err(|_| bad(field, format!("invalid IP address {ip:?} in {s:?}")))?;
    Ok(NetworkAddress {
        network: network.to_string(),
        address,
    })
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr, FieldError> {
    s.parse()
        .map_err(|_| bad(field, format!("invalid IP address {s:?}")))
}

/// A service or target port: 1–65535.
fn port(field: &str, p: u64) -> Result<u16, FieldError> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(bad(field, format!("port {p} out of range (1-65535)"))),
    }
}

/// Service port → target port; a target port of 0 means "same as the service port".
fn port_map(field: &str, raw: BTreeMap<u64, u64>) -> Result<BTreeMap<u16, u16>, FieldError> {
    let mut out = BTreeMap::new();
    for (svc, target) in raw {
        let svc_port = port(&format!("{field}[{svc}]"), svc)?;
        let target_port = if target == 0 {
            0
        } else {
            port(&format!("{field}[{svc}]"), target)?
        };
        out.insert(svc_port, target_port);
    }
    Ok(out)
}

/// Names that end up inside SPIFFE ids or resource keys: no separators, spaces or controls.
fn check_name(field: &str, value: &str) -> Result<(), FieldError> {
    if value
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(bad(
            field,
            format!(
                "invalid name {value:?}: must not contain '/', '?', '#', whitespace or control characters"
            ),
        ));
    }
    Ok(())
}

/// `a/b` with both parts non-empty valid names.
fn check_key(field: &str, key: &str, shape: &str) -> Result<(), FieldError> {
    let ok = key.split_once('/').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && check_name("", a).is_ok() && check_name("", b).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("invalid key {key:?}: expected \"{shape}\""),
        ))
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*')
        })
}

fn or_default<'a>(v: &'a str, default: &'a str) -> &'a str {
    if v.is_empty() { default } else { v }
}
