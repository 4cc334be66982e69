//! Waypoints: where a destination's waypoint is, and whether a workload is (part of) one.
//!
//! Owns the resolution of a [`GatewayAddress`] to one HBONE hop (the waypoint instance's
//! `ip:hbone port` and the identities it must present) and the "is this workload that
//! waypoint" test both directions need: outbound, so a waypoint's own traffic is not sent back
//! to it; inbound, so a waypoint pod accepts CONNECTs addressed to the services and workloads
//! it serves (sandwich mode).
//!
//! Invariant: a hop always names at least one expected identity (the instance's own); a
//! waypoint we cannot identify is an error, never an unverified tunnel.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::core::Identity;
use crate::state::{
    ClientLocality, GatewayAddress, GatewayDestination, StateView, Workload, service_key,
};

use crate::conn::same_family_ip;

/// One HBONE hop to a waypoint instance.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Hop {
    pub hbone: SocketAddr,
    pub expected: Vec<Identity>,
    /// The instance picked: its network decides whether the hop needs a network gateway.
    pub instance: Arc<Workload>,
    /// The waypoint service's `subject_alt_names` (none for an address-form waypoint): what
    /// the inner handshake verifies when the instance is reached through a network gateway.
    pub service_sans: Vec<Identity>,
}

/// Why a waypoint could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum WaypointError {
    #[error("waypoint {0} is not a known workload")]
    UnknownAddress(String),
    #[error("waypoint service {0} is unknown")]
    UnknownService(String),
    #[error("waypoint service {0} has no healthy instance")]
    NoInstance(String),
}

/// Resolves `gw` to one instance, preferring an address of the same family as `like`.
pub(super) fn resolve(
    state: &StateView,
    network: &str,
    gw: &GatewayAddress,
    like: IpAddr,
) -> Result<Hop, WaypointError> {
    match &gw.destination {
        GatewayDestination::Address(a) => {
            let wl = state
                .workload_by_addr(&a.network, a.address)
                .ok_or_else(|| WaypointError::UnknownAddress(a.to_string()))?;
            Ok(Hop {
                hbone: SocketAddr::new(a.address, gw.hbone_mtls_port),
                expected: vec![wl.identity()],
                instance: wl,
                service_sans: Vec::new(),
            })
        }
        GatewayDestination::Hostname {
            namespace,
            hostname,
        } => {
            let key = service_key(namespace, hostname);
            let svc = state
                .service_by_host(namespace, hostname)
                .ok_or_else(|| WaypointError::UnknownService(key.clone()))?;
            // Any healthy instance will do; the port is the gateway's HBONE port, not a
            // service port, so the choice ignores port mappings.
            let instances = state.service_workloads(&svc);
            let candidates = instances
                .into_iter()
                .filter_map(|w| same_family_ip(&w, like).map(|_| (w, gw.hbone_mtls_port)))
                .collect();
            let (wl, port) = crate::state::select_endpoint(
                &svc,
                candidates,
                &ClientLocality::on_network(network),
                |_, _| false,
                &mut rand::rng(),
            )
            .ok_or(WaypointError::NoInstance(key))?;
            let ip = same_family_ip(&wl, like).unwrap_or(like);
            let service_sans: Vec<Identity> = svc
                .subject_alt_names
                .iter()
                .filter_map(|s| s.parse::<Identity>().ok())
                .collect();
            let mut expected = vec![wl.identity()];
            expected.extend(service_sans.iter().cloned());
            Ok(Hop {
                hbone: SocketAddr::new(ip, port),
                expected,
                instance: wl,
                service_sans,
            })
        }
    }
}

/// Whether `wl` is an instance of the waypoint `gw` (its address, or a backend of its
/// service).
pub(super) fn is_instance(wl: &Workload, gw: &GatewayAddress) -> bool {
    match &gw.destination {
        GatewayDestination::Address(a) => {
            wl.network == a.network && wl.workload_ips.contains(&a.address)
        }
        GatewayDestination::Hostname {
            namespace,
            hostname,
        } => wl.services.contains_key(&service_key(namespace, hostname)),
    }
}
