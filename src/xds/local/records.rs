//! Local config entries → the xDS records istiod would send for them (`istio.workload.Workload`,
//! `istio.workload.Service`, `istio.security.Authorization`), so the one conversion in
//! [`crate::xds::convert`] validates both sources with the same rules.
//!
//! Nothing is judged here: serde already decoded every value, and the conversion checks the
//! rest. The only local-only decisions are the ones the file format itself makes: a workload
//! without a `uid` gets Istio's uid shape, and a service's `endpoints` become entries of the
//! `services` map of the workloads they name.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_proto::istio::security as ps;
use ambit_proto::istio::workload as pw;

use super::raw::*;

/// The cluster Istio names in uids when a workload does not say.
const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn network_address(a: &NetAddr) -> pw::NetworkAddress {
    pw::NetworkAddress {
        network: a.network.clone(),
        address: ip_bytes(a.address),
        length: None,
    }
}

fn gateway(g: RawGateway) -> pw::GatewayAddress {
    use pw::gateway_address::Destination;
    let destination = match g.destination {
        RawDestination::Address(a) => Destination::Address(network_address(&a)),
        RawDestination::Hostname(h) => Destination::Hostname(pw::NamespacedHostname {
            namespace: h.namespace,
            hostname: h.hostname,
        }),
    };
    pw::GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: u32::from(g.hbone_mtls_port),
    }
}

fn port_list(ports: &BTreeMap<u16, u16>) -> Vec<pw::Port> {
    ports
        .iter()
        .map(|(svc, target)| pw::Port {
            service_port: u32::from(*svc),
            target_port: u32::from(*target),
            ..Default::default()
        })
        .collect()
}

/// The workload record, and its `workloadType` as written (the record only carries Kubernetes'
/// four kinds; the file's value is kept verbatim, as ztunnel keeps it).
pub(super) fn workload(w: RawLocalWorkload) -> (pw::Workload, String) {
    let uid = if w.uid.is_empty() {
        let cluster = if w.cluster_id.is_empty() {
            DEFAULT_CLUSTER_ID
        } else {
            &w.cluster_id
        };
        format!("{cluster}//Pod/{}/{}", w.namespace, w.name)
    } else {
        w.uid
    };
    let services = w
        .services
        .iter()
        .map(|(key, ports)| {
            let ports = pw::PortList {
                ports: port_list(ports),
            };
            (key.clone(), ports)
        })
        .collect();
    let record = pw::Workload {
        uid,
        name: w.name,
        namespace: w.namespace,
        addresses: w.workload_ips.into_iter().map(ip_bytes).collect(),
        hostname: w.hostname,
        network: w.network,
        tunnel_protocol: match w.protocol {
            RawProtocol::Tcp => pw::TunnelProtocol::None,
            RawProtocol::Hbone => pw::TunnelProtocol::Hbone,
        } as i32,
        trust_domain: w.trust_domain,
        service_account: w.service_account,
        waypoint: w.waypoint.map(gateway),
        network_gateway: w.network_gateway.map(gateway),
        node: w.node,
        canonical_name: w.canonical_name,
        canonical_revision: w.canonical_revision,
        workload_name: w.workload_name,
        native_tunnel: w.native_tunnel,
        application_tunnel: w.application_tunnel.map(|t| pw::ApplicationTunnel {
            protocol: match t.protocol {
                RawAppTunnelProtocol::None => pw::application_tunnel::Protocol::None,
                RawAppTunnelProtocol::Proxy => pw::application_tunnel::Protocol::Proxy,
            } as i32,
            port: t.port.map(u32::from).unwrap_or(0),
        }),
        services,
        authorization_policies: w.authorization_policies,
        status: match w.status {
            RawStatus::Healthy => pw::WorkloadStatus::Healthy,
            RawStatus::Unhealthy => pw::WorkloadStatus::Unhealthy,
        } as i32,
        cluster_id: w.cluster_id,
        locality: Some(pw::Locality {
            region: w.locality.region,
            zone: w.locality.zone,
            subzone: w.locality.subzone,
        }),
        network_mode: match w.network_mode {
            RawNetworkMode::Standard => pw::NetworkMode::Standard,
            RawNetworkMode::HostNetwork => pw::NetworkMode::HostNetwork,
        } as i32,
        capacity: Some(w.capacity),
        ..Default::default()
    };
    (record, w.workload_type)
}

/// The service record, and its endpoints as (workload uid, service key, ports) for
/// [`add_endpoints`].
pub(super) fn service(raw: RawService) -> (pw::Service, Vec<(String, String, Vec<pw::Port>)>) {
    use pw::load_balancing::{HealthPolicy as PH, Mode as PM, Scope as PS};
    let key = format!("{}/{}", raw.namespace, raw.hostname);
    let endpoints = raw
        .endpoints
        .values()
        .map(|e| (e.workload_uid.clone(), key.clone(), port_list(&e.port)))
        .collect();
    let addresses = raw
        .vips
        .iter()
        .map(network_address)
        .chain(raw.cidr_vips.iter().map(|c| pw::NetworkAddress {
            network: c.network.clone(),
            address: ip_bytes(c.cidr.addr()),
            length: Some(u32::from(c.cidr.prefix_len())),
        }))
        .collect();
    let load_balancing = raw.load_balancer.map(|lb| pw::LoadBalancing {
        routing_preference: lb
            .routing_preferences
            .iter()
            .map(|s| {
                let scope = match s {
                    RawLocalityScope::Region => PS::Region,
                    RawLocalityScope::Zone => PS::Zone,
                    RawLocalityScope::Subzone => PS::Subzone,
                    RawLocalityScope::Node => PS::Node,
                    RawLocalityScope::Cluster => PS::Cluster,
                    RawLocalityScope::Network => PS::Network,
                };
                scope as i32
            })
            .collect(),
        mode: match lb.mode {
            RawLbMode::Standard => PM::UnspecifiedMode,
            RawLbMode::Strict => PM::Strict,
            RawLbMode::Failover => PM::Failover,
            RawLbMode::Passthrough => PM::Passthrough,
        } as i32,
        health_policy: match lb.health_policy {
            RawHealthPolicy::OnlyHealthy => PH::OnlyHealthy,
            RawHealthPolicy::AllowAll => PH::AllowAll,
        } as i32,
    });
    let record = pw::Service {
        name: raw.name,
        namespace: raw.namespace,
        hostname: raw.hostname,
        addresses,
        ports: port_list(&raw.ports),
        subject_alt_names: raw.subject_alt_names,
        waypoint: raw.waypoint.map(gateway),
        load_balancing,
        ip_families: match raw.ip_families {
            None => pw::IpFamilies::Automatic,
            Some(RawIpFamily::IPv4) => pw::IpFamilies::Ipv4Only,
            Some(RawIpFamily::IPv6) => pw::IpFamilies::Ipv6Only,
            Some(RawIpFamily::Dual) => pw::IpFamilies::Dual,
        } as i32,
        canonical: raw.canonical,
        weighted_waypoints: raw
            .weighted_waypoints
            .into_iter()
            .map(|w| pw::WeightedWaypoint {
                destination: Some(gateway(w.destination)),
                weight: w.weight,
            })
            .collect(),
        visibility: match raw.visibility {
            RawVisibility::Public => pw::ServiceVisibility::Public,
            RawVisibility::Namespace => pw::ServiceVisibility::Namespace,
        } as i32,
        ..Default::default()
    };
    (record, endpoints)
}

/// Makes each listed endpoint an entry of its workload's `services` map (the form istiod uses),
/// unless the workload lists that service itself. Endpoints of workloads not in the file name
/// nothing ambit could route to, and are dropped.
pub(super) fn add_endpoints(
    workloads: &mut [pw::Workload],
    endpoints: Vec<(String, String, Vec<pw::Port>)>,
) {
    for (uid, key, ports) in endpoints {
        if let Some(w) = workloads.iter_mut().find(|w| w.uid == uid) {
            w.services.entry(key).or_insert(pw::PortList { ports });
        }
    }
}

pub(super) fn policy(raw: RawPolicy) -> ps::Authorization {
    ps::Authorization {
        name: raw.name,
        namespace: raw.namespace,
        scope: match raw.scope {
            RawScope::Global => ps::Scope::Global,
            RawScope::Namespace => ps::Scope::Namespace,
            RawScope::WorkloadSelector => ps::Scope::WorkloadSelector,
        } as i32,
        action: match raw.action {
            RawAction::Allow => ps::Action::Allow,
            RawAction::Deny => ps::Action::Deny,
        } as i32,
        dry_run: raw.dry_run,
        rules: raw
            .rules
            .into_iter()
            .map(|clauses| ps::Rule {
                clauses: clauses
                    .into_iter()
                    .map(|matches| ps::Clause {
                        matches: matches.into_iter().map(rbac_match).collect(),
                    })
                    .collect(),
            })
            .collect(),
        ..Default::default()
    }
}

fn rbac_match(m: RawMatch) -> ps::Match {
    let strings = |v: Vec<RawStringMatch>| -> Vec<ps::StringMatch> {
        use ps::string_match::MatchType;
        v.into_iter()
            .map(|s| ps::StringMatch {
                match_type: Some(match s {
                    RawStringMatch::Exact(s) => MatchType::Exact(s),
                    RawStringMatch::Prefix(s) => MatchType::Prefix(s),
                    RawStringMatch::Suffix(s) => MatchType::Suffix(s),
                    RawStringMatch::Presence() => MatchType::Presence(()),
                }),
            })
            .collect()
    };
    let nets = |v: Vec<ipnet::IpNet>| -> Vec<ps::Address> {
        v.into_iter()
            .map(|n| ps::Address {
                address: ip_bytes(n.addr()),
                length: u32::from(n.prefix_len()),
            })
            .collect()
    };
    let ports = |v: Vec<u16>| v.into_iter().map(u32::from).collect();
    let accounts = |v: Vec<RawServiceAccount>| {
        v.into_iter()
            .map(|a| ps::ServiceAccountMatch {
                namespace: a.namespace,
                service_account: a.service_account,
            })
            .collect()
    };
    ps::Match {
        namespaces: strings(m.namespaces),
        not_namespaces: strings(m.not_namespaces),
        principals: strings(m.principals),
        not_principals: strings(m.not_principals),
        source_ips: nets(m.source_ips),
        not_source_ips: nets(m.not_source_ips),
        destination_ips: nets(m.destination_ips),
        not_destination_ips: nets(m.not_destination_ips),
        destination_ports: ports(m.destination_ports),
        not_destination_ports: ports(m.not_destination_ports),
        service_accounts: accounts(m.service_accounts),
        not_service_accounts: accounts(m.not_service_accounts),
        ..Default::default()
    }
}
