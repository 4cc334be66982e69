//! The xDS boundary: protobuf resources (`istio.workload.Address`, `istio.security.Authorization`)
//! → the state's and rbac's domain types, with `TryFrom` conversions.
//!
//! Invariants: no generated proto type leaves this module's callers in `xds`; every value that
//! the domain types constrain is checked here (IP byte lengths, CIDR prefixes, ports, enum
//! values, required names, SPIFFE identity parts), and every failure is a [`ConvertError`] naming
//! the resource and the field path inside it, so a NACK can say exactly what was wrong.
//! Conversion never panics on any input (fuzzed by `fuzz/fuzz_targets/xds_convert.rs`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ambit_proto::istio::security as ps;
use ambit_proto::istio::workload as pw;

use crate::core::Identity;
use crate::rbac::{self, Authorization, IpNet, ServiceAccountMatch, StringMatch};
use crate::state::{
    AppTunnelProtocol, ApplicationTunnel, CidrVip, DEFAULT_HBONE_MTLS_PORT, GatewayAddress,
    GatewayDestination, HealthPolicy, HealthStatus, IpFamilies, LoadBalancer, LoadBalancerMode,
    Locality, LocalityScope, NetworkAddress, NetworkMode, Service, TunnelProtocol, Visibility,
    WeightedWaypoint, Workload,
};

pub use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

/// Defaults Istio applies when a workload leaves these out.
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// A resource that cannot be turned into a domain value. Displays as
/// `<resource>: <field>: <problem>` (the field is omitted for the resource as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {}{problem}", field_prefix(field))]
pub struct ConvertError {
    /// e.g. `workload "uid-1"`, `service "ns/host"`, `authorization "ns/name"`.
    pub resource: String,
    /// Path inside the resource, e.g. `addresses[1]`; empty for the resource itself.
    pub field: String,
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("required field is missing or empty")]
    Missing,
    #[error("IP address must be 4 or 16 bytes, got {0}")]
    IpLength(usize),
    #[error("{0}")]
    BadCidr(rbac::RbacError),
    #[error("unknown enum value {0}")]
    UnknownEnum(i32),
    #[error("port {0} out of range (1-65535)")]
    Port(u32),
    #[error("invalid key {key:?}: expected \"{shape}\"")]
    BadKey { key: String, shape: &'static str },
    #[error("invalid identity: {0}")]
    Identity(String),
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    #[error("cannot decode protobuf: {0}")]
    Decode(String),
    #[error("resource has type {got:?}, expected {want:?}")]
    WrongType { got: String, want: &'static str },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// A problem at a field path, before the resource label is known.
struct FieldError(String, Problem);

type Res<T> = Result<T, FieldError>;

impl FieldError {
    /// This error seen from the enclosing field `outer` (`outer.field`, or `outer` alone).
    /// Callers build `outer` in `map_err`, so a resource that converts formats no paths.
    fn within(self, outer: String) -> FieldError {
        let FieldError(field, problem) = self;
        if field.is_empty() {
            FieldError(outer, problem)
        } else {
            FieldError(format!("{outer}.{field}"), problem)
        }
    }
}

fn err<T>(field: impl Into<String>, problem: Problem) -> Res<T> {
    Err(FieldError(field.into(), problem))
}

fn labelled(kind: &str, name: &str) -> impl Fn(FieldError) -> ConvertError + use<> {
    let resource = format!("{kind} {name:?}");
    move |FieldError(field, problem)| ConvertError {
        resource: resource.clone(),
        field,
        problem,
    }
}

// === Workload ===

impl TryFrom<pw::Workload> for Workload {
    type Error = ConvertError;

    fn try_from(p: pw::Workload) -> Result<Self, ConvertError> {
        let name = if p.uid.is_empty() {
            format!("{}/{}", p.namespace, p.name)
        } else {
            p.uid.clone()
        };
        workload(p).map_err(|e| labelled("workload", &name)(e))
    }
}

fn workload(p: pw::Workload) -> Res<Workload> {
    // The uid keys the store and the namespace is part of the identity; a name is only shown
    // (ztunnel accepts a workload without one too).
    for (field, value) in [("uid", &p.uid), ("namespace", &p.namespace)] {
        if value.is_empty() {
            return err(field, Problem::Missing);
        }
    }
    let sa = or_default(&p.service_account, DEFAULT_SERVICE_ACCOUNT);
    let td = or_default(&p.trust_domain, DEFAULT_TRUST_DOMAIN);
    let identity = Identity::new(td, &p.namespace, sa)
        .map_err(|e| FieldError("namespace".into(), Problem::Identity(e.to_string())))?;
    let mut w = Workload::new(p.uid, p.name, identity);
    w.workload_ips = p
        .addresses
        .iter()
        .enumerate()
        .map(|(i, b)| ip("", b).map_err(|e| e.within(format!("addresses[{i}]"))))
        .collect::<Res<_>>()?;
    w.protocol = match pw::TunnelProtocol::try_from(p.tunnel_protocol) {
        Ok(pw::TunnelProtocol::None) => TunnelProtocol::None,
        Ok(pw::TunnelProtocol::Hbone) => TunnelProtocol::Hbone,
        Ok(pw::TunnelProtocol::LegacyIstioMtls) => {
            return err("tunnelProtocol", Problem::Unsupported("LEGACY_ISTIO_MTLS"));
        }
        Err(_) => return err("tunnelProtocol", Problem::UnknownEnum(p.tunnel_protocol)),
    };
    w.network_mode = match pw::NetworkMode::try_from(p.network_mode) {
        Ok(pw::NetworkMode::Standard) => NetworkMode::Standard,
        Ok(pw::NetworkMode::HostNetwork) => NetworkMode::HostNetwork,
        Err(_) => return err("networkMode", Problem::UnknownEnum(p.network_mode)),
    };
    w.network = p.network;
    w.node = p.node;
    w.hostname = p.hostname;
    w.waypoint = p.waypoint.map(|g| gateway("waypoint", g)).transpose()?;
    w.network_gateway = p
        .network_gateway
        .map(|g| gateway("networkGateway", g))
        .transpose()?;
    w.native_tunnel = p.native_tunnel;
    w.application_tunnel = p
        .application_tunnel
        .map(|t| {
            let protocol = match pw::application_tunnel::Protocol::try_from(t.protocol) {
                Ok(pw::application_tunnel::Protocol::None) => AppTunnelProtocol::None,
                Ok(pw::application_tunnel::Protocol::Proxy) => AppTunnelProtocol::Proxy,
                Err(_) => {
                    return err(
                        "applicationTunnel.protocol",
                        Problem::UnknownEnum(t.protocol),
                    );
                }
            };
            let port = match t.port {
                0 => None,
                p => Some(port("applicationTunnel.port", p)?),
            };
            Ok(ApplicationTunnel { protocol, port })
        })
        .transpose()?;
    w.authorization_policies = p.authorization_policies;
    w.status = match pw::WorkloadStatus::try_from(p.status) {
        Ok(pw::WorkloadStatus::Healthy) => HealthStatus::Healthy,
        Ok(pw::WorkloadStatus::Unhealthy) => HealthStatus::Unhealthy,
        Err(_) => return err("status", Problem::UnknownEnum(p.status)),
    };
    w.cluster_id = p.cluster_id;
    if let Some(l) = p.locality {
        w.locality = Locality {
            region: l.region,
            zone: l.zone,
            subzone: l.subzone,
        };
    }
    w.canonical_name = p.canonical_name;
    w.canonical_revision = p.canonical_revision;
    w.workload_name = p.workload_name;
    w.workload_type = match pw::WorkloadType::try_from(p.workload_type) {
        Ok(t) => t.as_str_name().to_ascii_lowercase(),
        Err(_) => return err("workloadType", Problem::UnknownEnum(p.workload_type)),
    };
    w.capacity = p.capacity.unwrap_or(1);
    for (key, ports) in p.services {
        let field = || format!("services[{key:?}]");
        check_key("", &key, "namespace/hostname").map_err(|e| e.within(field()))?;
        let mut map = BTreeMap::new();
        for (i, pt) in ports.ports.iter().enumerate() {
            let (svc, target) =
                port_pair(pt).map_err(|e| e.within(format!("ports[{i}]")).within(field()))?;
            map.insert(svc, target);
        }
        w.services.insert(key, map);
    }
    Ok(w)
}

// === Service ===

impl TryFrom<pw::Service> for Service {
    type Error = ConvertError;

    fn try_from(p: pw::Service) -> Result<Self, ConvertError> {
        let label = labelled("service", &format!("{}/{}", p.namespace, p.hostname));
        service(p).map_err(label)
    }
}

fn service(p: pw::Service) -> Res<Service> {
    for (field, value) in [
        ("name", &p.name),
        ("namespace", &p.namespace),
        ("hostname", &p.hostname),
    ] {
        if value.is_empty() {
            return err(field, Problem::Missing);
        }
    }
    // A prefix shorter than a host makes the address a CIDR VIP (a range of VIPs).
    let mut vips = Vec::with_capacity(p.addresses.len());
    let mut cidr_vips = Vec::new();
    for (i, a) in p.addresses.iter().enumerate() {
        let field = format!("addresses[{i}]");
        let na = network_address(&field, a)?;
        let host_len = if na.address.is_ipv4() { 32 } else { 128 };
        match a.length.map(|l| u8::try_from(l).unwrap_or(u8::MAX)) {
            Some(len) if len < host_len => {
                let net = IpNet::new(na.address, len)
                    .map_err(|e| FieldError(format!("{field}.length"), Problem::BadCidr(e)))?;
                cidr_vips.push(CidrVip {
                    network: na.network,
                    net,
                });
            }
            _ => vips.push(na),
        }
    }
    let mut ports = BTreeMap::new();
    for (i, pt) in p.ports.iter().enumerate() {
        let (svc, target) = port_pair(pt).map_err(|e| e.within(format!("ports[{i}]")))?;
        ports.insert(svc, target);
    }
    let load_balancer = p.load_balancing.map(load_balancer).transpose()?;
    let ip_families = match pw::IpFamilies::try_from(p.ip_families) {
        Ok(pw::IpFamilies::Automatic) => IpFamilies::Automatic,
        Ok(pw::IpFamilies::Ipv4Only) => IpFamilies::Ipv4Only,
        Ok(pw::IpFamilies::Ipv6Only) => IpFamilies::Ipv6Only,
        Ok(pw::IpFamilies::Dual) => IpFamilies::Dual,
        Err(_) => return err("ipFamilies", Problem::UnknownEnum(p.ip_families)),
    };
    let visibility = match pw::ServiceVisibility::try_from(p.visibility) {
        Ok(pw::ServiceVisibility::Public) => Visibility::Public,
        Ok(pw::ServiceVisibility::Namespace) => Visibility::Namespace,
        Err(_) => return err("visibility", Problem::UnknownEnum(p.visibility)),
    };
    let weighted_waypoints = p
        .weighted_waypoints
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let field = format!("weightedWaypoints[{i}].destination");
            let Some(g) = w.destination else {
                return err(field, Problem::Missing);
            };
            Ok(WeightedWaypoint {
                destination: gateway(&field, g)?,
                weight: w.weight,
            })
        })
        .collect::<Res<Vec<_>>>()?;
    Ok(Service {
        waypoint: p.waypoint.map(|g| gateway("waypoint", g)).transpose()?,
        weighted_waypoints,
        name: p.name,
        namespace: p.namespace,
        hostname: p.hostname,
        vips,
        cidr_vips,
        ports,
        subject_alt_names: p.subject_alt_names,
        load_balancer,
        ip_families,
        canonical: p.canonical,
        visibility,
    })
}

fn load_balancer(lb: pw::LoadBalancing) -> Res<LoadBalancer> {
    use pw::load_balancing::{HealthPolicy as PH, Mode as PM, Scope as PS};
    let mut routing_preference = Vec::with_capacity(lb.routing_preference.len());
    for (i, s) in lb.routing_preference.iter().enumerate() {
        let scope = match PS::try_from(*s) {
            // Unspecified carries no preference; skipping it keeps the others meaningful.
            Ok(PS::UnspecifiedScope) => continue,
            Ok(PS::Region) => LocalityScope::Region,
            Ok(PS::Zone) => LocalityScope::Zone,
            Ok(PS::Subzone) => LocalityScope::Subzone,
            Ok(PS::Node) => LocalityScope::Node,
            Ok(PS::Cluster) => LocalityScope::Cluster,
            Ok(PS::Network) => LocalityScope::Network,
            Err(_) => {
                return err(
                    format!("loadBalancing.routingPreference[{i}]"),
                    Problem::UnknownEnum(*s),
                );
            }
        };
        routing_preference.push(scope);
    }
    let mode = match PM::try_from(lb.mode) {
        Ok(PM::UnspecifiedMode) => LoadBalancerMode::Standard,
        Ok(PM::Strict) => LoadBalancerMode::Strict,
        Ok(PM::Failover) => LoadBalancerMode::Failover,
        Ok(PM::Passthrough) => LoadBalancerMode::Passthrough,
        Err(_) => return err("loadBalancing.mode", Problem::UnknownEnum(lb.mode)),
    };
    let health_policy = match PH::try_from(lb.health_policy) {
        Ok(PH::OnlyHealthy) => HealthPolicy::OnlyHealthy,
        Ok(PH::AllowAll) => HealthPolicy::AllowAll,
        Err(_) => {
            return err(
                "loadBalancing.healthPolicy",
                Problem::UnknownEnum(lb.health_policy),
            );
        }
    };
    Ok(LoadBalancer {
        routing_preference,
        mode,
        health_policy,
    })
}

// === Authorization ===

impl TryFrom<ps::Authorization> for Authorization {
    type Error = ConvertError;

    fn try_from(p: ps::Authorization) -> Result<Self, ConvertError> {
        let label = labelled("authorization", &rbac::policy_key(&p.namespace, &p.name));
        policy(p).map_err(label)
    }
}

fn policy(p: ps::Authorization) -> Res<Authorization> {
    for (field, value) in [("name", &p.name), ("namespace", &p.namespace)] {
        if value.is_empty() {
            return err(field, Problem::Missing);
        }
    }
    let scope = match ps::Scope::try_from(p.scope) {
        Ok(ps::Scope::Global) => rbac::Scope::Global,
        Ok(ps::Scope::Namespace) => rbac::Scope::Namespace,
        Ok(ps::Scope::WorkloadSelector) => rbac::Scope::WorkloadSelector,
        Err(_) => return err("scope", Problem::UnknownEnum(p.scope)),
    };
    let action = match ps::Action::try_from(p.action) {
        Ok(ps::Action::Allow) => rbac::Action::Allow,
        Ok(ps::Action::Deny) => rbac::Action::Deny,
        Err(_) => return err("action", Problem::UnknownEnum(p.action)),
    };
    let mut rules = Vec::with_capacity(p.rules.len());
    for (r, rule) in p.rules.into_iter().enumerate() {
        let mut out = rbac::Rule::default();
        for (c, clause) in rule.clauses.into_iter().enumerate() {
            let mut matches = Vec::with_capacity(clause.matches.len());
            for (m, raw) in clause.matches.into_iter().enumerate() {
                matches.push(rbac_match(
                    &format!("rules[{r}].clauses[{c}].matches[{m}]"),
                    raw,
                )?);
            }
            out.clauses.push(rbac::Clause { matches });
        }
        rules.push(out);
    }
    Ok(Authorization {
        name: p.name,
        namespace: p.namespace,
        scope,
        action,
        dry_run: p.dry_run,
        rules,
    })
}

fn rbac_match(at: &str, p: ps::Match) -> Res<rbac::Match> {
    let strings = |name: &str, v: Vec<ps::StringMatch>| -> Res<Vec<StringMatch>> {
        v.into_iter()
            .enumerate()
            .map(|(i, s)| string_match(&format!("{at}.{name}[{i}]"), s))
            .collect()
    };
    let nets = |name: &str, v: &[ps::Address]| -> Res<Vec<IpNet>> {
        v.iter()
            .enumerate()
            .map(|(i, a)| {
                let field = format!("{at}.{name}[{i}]");
                let addr = ip(&field, &a.address)?;
                let len = u8::try_from(a.length).unwrap_or(u8::MAX);
                IpNet::new(addr, len).map_err(|e| FieldError(field, Problem::BadCidr(e)))
            })
            .collect()
    };
    // Port 0 names no connection, so it matches none; ztunnel accepts it too.
    let ports = |name: &str, v: &[u32]| -> Res<Vec<u16>> {
        v.iter()
            .enumerate()
            .map(|(i, p)| {
                u16::try_from(*p)
                    .map_err(|_| FieldError(format!("{at}.{name}[{i}]"), Problem::Port(*p)))
            })
            .collect()
    };
    let accounts = |v: Vec<ps::ServiceAccountMatch>| {
        v.into_iter()
            .map(|a| ServiceAccountMatch {
                namespace: a.namespace,
                service_account: a.service_account,
            })
            .collect()
    };
    Ok(rbac::Match {
        source_ips: nets("sourceIps", &p.source_ips)?,
        not_source_ips: nets("notSourceIps", &p.not_source_ips)?,
        destination_ips: nets("destinationIps", &p.destination_ips)?,
        not_destination_ips: nets("notDestinationIps", &p.not_destination_ips)?,
        destination_ports: ports("destinationPorts", &p.destination_ports)?,
        not_destination_ports: ports("notDestinationPorts", &p.not_destination_ports)?,
        namespaces: strings("namespaces", p.namespaces)?,
        not_namespaces: strings("notNamespaces", p.not_namespaces)?,
        principals: strings("principals", p.principals)?,
        not_principals: strings("notPrincipals", p.not_principals)?,
        service_accounts: accounts(p.service_accounts),
        not_service_accounts: accounts(p.not_service_accounts),
    })
}

fn string_match(field: &str, s: ps::StringMatch) -> Res<StringMatch> {
    use ps::string_match::MatchType;
    match s.match_type {
        Some(MatchType::Exact(v)) => Ok(StringMatch::Exact(v)),
        Some(MatchType::Prefix(v)) => Ok(StringMatch::Prefix(v)),
        Some(MatchType::Suffix(v)) => Ok(StringMatch::Suffix(v)),
        Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
        None => err(field, Problem::Missing),
    }
}

// === shared parts ===

fn gateway(field: &str, g: pw::GatewayAddress) -> Res<GatewayAddress> {
    use pw::gateway_address::Destination;
    let destination = match g.destination {
        Some(Destination::Address(a)) => {
            GatewayDestination::Address(network_address(&format!("{field}.address"), &a)?)
        }
        Some(Destination::Hostname(h)) => {
            if h.namespace.is_empty() || h.hostname.is_empty() {
                return err(format!("{field}.hostname"), Problem::Missing);
            }
            GatewayDestination::Hostname {
                namespace: h.namespace,
                hostname: h.hostname,
            }
        }
        None => return err(format!("{field}.destination"), Problem::Missing),
    };
    let hbone_mtls_port = match g.hbone_mtls_port {
        0 => DEFAULT_HBONE_MTLS_PORT,
        p => port(&format!("{field}.hboneMtlsPort"), p)?,
    };
    Ok(GatewayAddress {
        destination,
        hbone_mtls_port,
    })
}

fn network_address(field: &str, a: &pw::NetworkAddress) -> Res<NetworkAddress> {
    let address = ip(&format!("{field}.address"), &a.address)?;
    if let Some(len) = a.length {
        // A VIP is a single address; a range must at least be a valid prefix for its family.
        let len = u8::try_from(len).unwrap_or(u8::MAX);
        IpNet::new(address, len)
            .map_err(|e| FieldError(format!("{field}.length"), Problem::BadCidr(e)))?;
    }
    Ok(NetworkAddress {
        network: a.network.clone(),
        address,
    })
}

fn ip(field: &str, b: &[u8]) -> Res<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        return Ok(Ipv4Addr::from(v4).into());
    }
    if let Ok(v6) = <[u8; 16]>::try_from(b) {
        return Ok(Ipv6Addr::from(v6).into());
    }
    err(field, Problem::IpLength(b.len()))
}

/// A port in 1–65535.
fn port(field: &str, p: u32) -> Res<u16> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Ok(p),
        _ => err(field, Problem::Port(p)),
    }
}

/// (service port 1–65535, target port 0–65535; 0 ⇒ same as the service port).
/// Errors name the port's own field (`servicePort`, `targetPort`).
fn port_pair(p: &pw::Port) -> Res<(u16, u16)> {
    let svc = port("servicePort", p.service_port)?;
    let target = match p.target_port {
        0 => 0,
        t => port("targetPort", t)?,
    };
    Ok((svc, target))
}

/// `a/b`, both parts non-empty.
fn check_key(field: &str, key: &str, shape: &'static str) -> Res<()> {
    match key.split_once('/') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains('/') => Ok(()),
        _ => err(
            field,
            Problem::BadKey {
                key: key.to_string(),
                shape,
            },
        ),
    }
}

fn or_default<'a>(v: &'a str, default: &'a str) -> &'a str {
    if v.is_empty() { default } else { v }
}

#[cfg(test)]
pub(crate) mod tests;
