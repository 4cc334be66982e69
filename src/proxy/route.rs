//! Where an outbound connection goes: a service VIP goes to its waypoint if it has one, else
//! to one of its endpoints (never through the endpoint's own waypoint, as in ztunnel); a
//! workload address is tunneled when the workload speaks HBONE, through its waypoint if it has
//! one; anything else passes through. One decision, [`route_traced`], serves the data
//! path (with [`NoTrace`], which builds nothing) and `/debug/explain` (which records each step).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::core::Identity;
use crate::state::{
    ClientLocality, GatewayAddress, LoadBalancerMode, Service, StateView, TunnelProtocol, Workload,
};

use super::explain::{NoTrace, RouteTrace};
use super::gateway::{self, GatewayError, GatewayRoute};
use super::waypoint::{self, WaypointError};
use crate::conn::{ILLEGAL_PORTS, LocalWorkload, ProxyInputs, same_family_ip};

/// Where an outbound connection goes.
#[derive(Debug, PartialEq)]
pub(super) enum Route {
    /// Over HBONE to `hbone` (the peer proxy), asking it for `target`.
    Hbone {
        hbone: SocketAddr,
        target: SocketAddr,
        expected: Vec<Identity>,
    },
    /// Plain TCP: the destination is outside the mesh or does not speak HBONE.
    Plain(SocketAddr),
    /// Double HBONE through the endpoint's network gateway; `target` is the endpoint.
    Gateway {
        via: Box<GatewayRoute>,
        target: Option<SocketAddr>,
    },
}

#[derive(Debug)]
pub(super) enum RouteError {
    SelfCall(SocketAddr),
    NoEndpoint {
        service: String,
        port: u16,
    },
    NoAddress(String),
    Waypoint(WaypointError),
    Gateway(GatewayError),
    /// The endpoint picked is known by host name only: the caller resolves it and routes
    /// again with the answer in [`RouteFrom::resolved`].
    Unresolved(Arc<Workload>),
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::SelfCall(a) => write!(
                f,
                "refusing a connection to {a}: it would loop into the proxy"
            ),
            RouteError::NoEndpoint { service, port } => {
                write!(
                    f,
                    "service {service} has no healthy endpoint for port {port}"
                )
            }
            RouteError::NoAddress(wl) => write!(f, "workload {wl} has no address"),
            RouteError::Waypoint(e) => e.fmt(f),
            RouteError::Gateway(e) => e.fmt(f),
            RouteError::Unresolved(wl) => write!(
                f,
                "workload {}/{} is known by host name {} only and was not resolved",
                wl.namespace(),
                wl.name,
                wl.hostname
            ),
        }
    }
}

/// A route, and the service endpoint it was picked as (`ip:target port`), if it was.
#[derive(Debug, PartialEq)]
pub(super) struct Routed {
    pub route: Route,
    pub endpoint: Option<SocketAddr>,
    /// The service `orig` addressed, when it was a VIP: resolved once, here, for the labels and
    /// the `forwarded` `host=` as well.
    pub service: Option<Arc<Service>>,
}

/// Decides where `orig` goes: a service VIP picks one of its endpoints; a workload address is
/// tunneled when the workload speaks HBONE; anything else passes through.
#[cfg(test)]
pub(super) fn route(pi: &ProxyInputs, orig: SocketAddr) -> Result<Route, RouteError> {
    route_avoiding(pi, orig, &|_| false, &[]).map(|r| r.route)
}

/// [`route`], choosing among a service's endpoints only those `avoid` does not name (unless
/// it names them all).
pub(super) fn route_avoiding(
    pi: &ProxyInputs,
    orig: SocketAddr,
    avoid: &dyn Fn(SocketAddr) -> bool,
    resolved: &[(Arc<Workload>, IpAddr)],
) -> Result<Routed, RouteError> {
    let from = RouteFrom {
        state: &pi.state,
        network: &pi.cfg.network,
        local: &pi.local,
        hbone_port: pi.cfg.hbone_port,
        resolved,
    };
    route_traced(&from, orig, avoid, &mut NoTrace)
}

/// Whose connection is routed, and with what: the proxy's inputs, or (for `/debug/explain`)
/// any workload of the state.
pub(super) struct RouteFrom<'a> {
    pub state: &'a StateView,
    pub network: &'a str,
    pub local: &'a LocalWorkload,
    pub hbone_port: u16,
    /// Host names already resolved for this connection, and the address picked from each.
    pub resolved: &'a [(Arc<Workload>, IpAddr)],
}

/// The routing decision itself, telling `trace` each step (nothing is built for a
/// [`NoTrace`]: the data path's case).
pub(super) fn route_traced<T: RouteTrace>(
    from: &RouteFrom<'_>,
    orig: SocketAddr,
    avoid: &dyn Fn(SocketAddr) -> bool,
    trace: &mut T,
) -> Result<Routed, RouteError> {
    if ILLEGAL_PORTS.contains(&orig.port()) {
        return Err(RouteError::SelfCall(orig));
    }
    let state = from.state;
    let network = from.network;
    let me = state.workload_by_name(&from.local.namespace, &from.local.name);
    let client = match &me {
        Some(wl) => ClientLocality::of(wl),
        None => ClientLocality::on_network(network),
    };
    let svc = state.service_by_vip_for(network, orig.ip(), &from.local.namespace);
    let from_service = svc.is_some();
    if T::ON {
        trace.step(match &svc {
            Some(s) => format!(
                "{} is a VIP of service {}/{} ({})",
                orig.ip(),
                s.namespace,
                s.name,
                s.hostname
            ),
            None => format!("{} is not a service VIP on network {network:?}", orig.ip()),
        });
    }
    // A waypoint's own traffic is not sent back to it: that is the waypoint forwarding.
    let is_waypoint =
        |gw: &GatewayAddress| me.as_deref().is_some_and(|m| waypoint::is_instance(m, gw));
    // Any of the service's waypoints counts (with weighted waypoints, the one picked for
    // this connection need not be the one forwarding it).
    if let Some(s) = svc.as_ref() {
        let own = s.waypoints().any(is_waypoint);
        if T::ON && own {
            trace.step("the source is this service's waypoint: it forwards to an endpoint itself, not back to the waypoint".into());
        }
        if !own && let Some(gw) = s.pick_waypoint(&mut rand::rng()) {
            let hop =
                waypoint::resolve(state, network, gw, orig.ip()).map_err(RouteError::Waypoint)?;
            // A waypoint instance on another network is reached as a remote endpoint is:
            // double HBONE through its network's gateway, asking for the service.
            if hop.instance.network != *network {
                let via = gateway::via_gateway_to_waypoint(
                    state,
                    network,
                    s,
                    &hop,
                    orig.port(),
                    orig.ip(),
                )
                .map_err(RouteError::Gateway)?;
                if T::ON {
                    trace.step(format!(
                        "service {}/{} has waypoint {}, whose instance {}/{} is on network {:?}, not {network:?} ⇒ double HBONE through that network's gateway",
                        s.namespace,
                        s.name,
                        gw.destination,
                        hop.instance.namespace(),
                        hop.instance.name,
                        hop.instance.network
                    ));
                    trace.waypoint(hop.hbone);
                }
                return Ok(Routed {
                    route: Route::Gateway {
                        via: Box::new(via),
                        target: None,
                    },
                    endpoint: None,
                    service: svc.clone(),
                });
            }
            if T::ON {
                trace.step(format!(
                    "service {}/{} has waypoint {} ⇒ HBONE to the waypoint at {}, asking for {orig}",
                    s.namespace, s.name, gw.destination, hop.hbone
                ));
                trace.waypoint(hop.hbone);
            }
            return Ok(Routed {
                route: Route::Hbone {
                    hbone: hop.hbone,
                    target: orig,
                    expected: hop.expected,
                },
                endpoint: None,
                service: svc.clone(),
            });
        }
    }
    // A `PASSTHROUGH` service picks no endpoint: the connection goes, as plain TCP, where the
    // client sent it, and is not labelled with the service (ztunnel's "original destination").
    if let Some(s) = svc.as_ref().filter(|s| is_passthrough(s)) {
        if T::ON {
            trace.step(format!(
                "service {}/{} balances as PASSTHROUGH ⇒ plain TCP to the original destination {orig}",
                s.namespace, s.name
            ));
        }
        return Ok(Routed {
            route: Route::Plain(orig),
            endpoint: None,
            service: None,
        });
    }
    let (wl, port, mut expected) = if let Some(svc) = &svc {
        let skip = |w: &Workload, port: u16| {
            same_family_ip(w, orig.ip()).is_some_and(|ip| avoid(SocketAddr::new(ip, port)))
        };
        if T::ON {
            trace.odds(state.endpoint_odds(svc, orig.port(), &client, skip));
        }
        let (wl, port) = state
            .pick_endpoint_for(svc, orig.port(), &client, skip)
            .ok_or_else(|| RouteError::NoEndpoint {
                service: format!("{}/{}", svc.namespace, svc.hostname),
                port: orig.port(),
            })?;
        if T::ON {
            trace.step(format!(
                "endpoint {}/{} (node {:?}, network {:?}), target port {port}",
                wl.namespace(),
                wl.name,
                wl.node,
                wl.network
            ));
        }
        // An endpoint on another network is reached through that network's gateway.
        if wl.network != *network {
            let via = gateway::via_gateway(state, network, svc, &wl, orig.port(), orig.ip())
                .map_err(RouteError::Gateway)?;
            let target = same_family_ip(&wl, orig.ip()).map(|ip| SocketAddr::new(ip, port));
            if T::ON {
                trace.step(format!(
                    "the endpoint is on network {:?}, not {network:?} ⇒ double HBONE through that network's gateway",
                    wl.network
                ));
            }
            return Ok(Routed {
                route: Route::Gateway {
                    via: Box::new(via),
                    target,
                },
                endpoint: target,
                service: Some(svc.clone()),
            });
        }
        let sans: Vec<Identity> = svc
            .subject_alt_names
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        (wl, port, sans)
    } else if let Some(wl) = state.workload_by_addr(network, orig.ip()) {
        if T::ON {
            trace.step(format!(
                "{} is an address of workload {}/{} (node {:?})",
                orig.ip(),
                wl.namespace(),
                wl.name,
                wl.node
            ));
        }
        (wl, orig.port(), Vec::new())
    } else {
        if T::ON {
            trace.step(format!(
                "{} is no workload's address either: outside the mesh ⇒ plain TCP passthrough",
                orig.ip()
            ));
        }
        return Ok(Routed {
            route: Route::Plain(orig),
            endpoint: None,
            service: svc.clone(),
        });
    };
    let ip = match same_family_ip(&wl, orig.ip()) {
        Some(ip) => ip,
        None => by_name(from, &wl)?,
    };
    let target = SocketAddr::new(ip, port);
    let endpoint = from_service.then_some(target);
    // A workload's own waypoint applies only to traffic addressed to the workload: a service's
    // traffic was given to the service's waypoint above, or goes straight to the endpoint.
    if let Some(gw) = wl.waypoint.as_ref() {
        if from_service {
            if T::ON {
                trace.step(format!(
                    "workload {}/{} has waypoint {}, but the connection is addressed to a service without one ⇒ not through it",
                    wl.namespace(),
                    wl.name,
                    gw.destination
                ));
            }
        } else if is_waypoint(gw) {
            if T::ON {
                trace.step("the source is the workload's waypoint: not sent back to it".into());
            }
        } else {
            let hop = waypoint::resolve(state, network, gw, ip).map_err(RouteError::Waypoint)?;
            if T::ON {
                trace.step(format!(
                    "workload {}/{} has waypoint {} ⇒ HBONE to the waypoint at {}, asking for {target}",
                    wl.namespace(),
                    wl.name,
                    gw.destination,
                    hop.hbone
                ));
                trace.waypoint(hop.hbone);
            }
            return Ok(Routed {
                route: Route::Hbone {
                    hbone: hop.hbone,
                    target,
                    expected: hop.expected,
                },
                endpoint,
                service: svc.clone(),
            });
        }
    }
    if wl.protocol != TunnelProtocol::Hbone {
        if T::ON {
            trace.step(format!(
                "workload {}/{} does not speak HBONE (not captured) ⇒ plain TCP to {target}",
                wl.namespace(),
                wl.name
            ));
        }
        return Ok(Routed {
            route: Route::Plain(target),
            endpoint,
            service: svc.clone(),
        });
    }
    expected.insert(0, wl.identity());
    if T::ON {
        trace.step(format!(
            "workload {}/{} speaks HBONE ⇒ HBONE to its node proxy at {}:{}, asking for {target}",
            wl.namespace(),
            wl.name,
            ip,
            from.hbone_port
        ));
    }
    Ok(Routed {
        route: Route::Hbone {
            hbone: SocketAddr::new(ip, from.hbone_port),
            target,
            expected,
        },
        endpoint,
        service: svc.clone(),
    })
}

fn is_passthrough(svc: &Service) -> bool {
    svc.load_balancer
        .as_ref()
        .is_some_and(|lb| lb.mode == LoadBalancerMode::Passthrough)
}

/// The address of a workload known by host name only (no address at all), once the caller
/// has resolved that name; until then [`RouteError::Unresolved`] asks it to.
fn by_name(from: &RouteFrom<'_>, wl: &Arc<Workload>) -> Result<IpAddr, RouteError> {
    if wl.hostname.is_empty() || !wl.workload_ips.is_empty() {
        return Err(RouteError::NoAddress(format!(
            "{}/{}",
            wl.namespace(),
            wl.name
        )));
    }
    match from
        .resolved
        .iter()
        .find(|(w, _)| w.hostname == wl.hostname)
    {
        Some((_, ip)) => Ok(*ip),
        None => Err(RouteError::Unresolved(wl.clone())),
    }
}
