//! Waypoints and application tunnels in the topology: a pod's `applicationTunnel` and
//! `waypoint`, a service's `waypoint`, as written in the YAML and as the lab keeps them.
//!
//! A waypoint is a captured pod that some service or pod names in its `waypoint` field; the lab
//! describes it to the node proxies by address (`GatewayAddress` `/IP`, HBONE port
//! [`WAYPOINT_HBONE_PORT`]). The waypoint pod's own `applicationTunnel` (normally
//! `{protocol: PROXY, port: <its app port>}`) says how its node proxy hands it the streams it
//! receives for the destinations it serves ("sandwich" mode).
//!
//! Invariants:
//! - a pod's tunnel and waypoint live in its labels under [`APP_TUNNEL_LABEL`] and
//!   [`WAYPOINT_LABEL`], for the same reason as locality and status (see [`super::balancing`]):
//!   pods built in code carry them without new fields;
//! - every waypoint named (by a pod or a service) is an existing, captured pod other than the
//!   one naming it, and a waypoint pod does not itself use a waypoint (no chains).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Deserialize;

use super::{Pod, Service, TopologyError, invalid};

/// Pod label holding the name of the pod that is this pod's (workload) waypoint.
pub const WAYPOINT_LABEL: &str = "lab.ambit/waypoint";
/// Pod label holding the pod's application tunnel: `PROXY`, `PROXY:<port>`, `NONE:<port>`.
pub const APP_TUNNEL_LABEL: &str = "lab.ambit/app-tunnel";
/// The HBONE port waypoints listen on (their node proxy's inbound).
pub const WAYPOINT_HBONE_PORT: u16 = 15008;

/// How a pod's node proxy hands it the streams it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppTunnel {
    pub protocol: AppTunnelProtocol,
    /// The app port streams are delivered to instead of the one the CONNECT named.
    #[serde(default)]
    pub port: Option<u16>,
}

/// What a stream starts with on an application tunnel (the local config's spellings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AppTunnelProtocol {
    /// Nothing: plain bytes (only the port may differ).
    #[serde(rename = "NONE")]
    None,
    /// A PROXY protocol v2 header naming the original addresses and the source identity.
    #[serde(rename = "PROXY")]
    Proxy,
}

// === impl AppTunnel ===

impl AppTunnel {
    /// The tunnel a pod's labels describe, if any (an unreadable label reads as none).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<AppTunnel> {
        let v = labels.get(APP_TUNNEL_LABEL)?;
        let (proto, port) = match v.split_once(':') {
            Some((p, port)) => (p, Some(port.parse().ok()?)),
            None => (v.as_str(), None),
        };
        let protocol = match proto {
            "PROXY" => AppTunnelProtocol::Proxy,
            "NONE" => AppTunnelProtocol::None,
            _ => return None,
        };
        Some(AppTunnel { protocol, port })
    }

    /// Writes the tunnel into `labels`.
    pub fn write_labels(&self, labels: &mut BTreeMap<String, String>) {
        let mut v = self.protocol.as_str().to_string();
        if let Some(p) = self.port {
            v.push_str(&format!(":{p}"));
        }
        labels.insert(APP_TUNNEL_LABEL.into(), v);
    }
}

impl AppTunnelProtocol {
    /// The spelling of the local config (and of the YAML).
    pub fn as_str(&self) -> &'static str {
        match self {
            AppTunnelProtocol::None => "NONE",
            AppTunnelProtocol::Proxy => "PROXY",
        }
    }
}

// === impl Pod ===

impl Pod {
    /// The pod's application tunnel (from its labels).
    pub fn app_tunnel(&self) -> Option<AppTunnel> {
        AppTunnel::from_labels(&self.labels)
    }

    /// The name of the pod that is this pod's waypoint (from its labels).
    pub fn waypoint(&self) -> Option<&str> {
        self.labels.get(WAYPOINT_LABEL).map(String::as_str)
    }
}

/// The address of the waypoint pod `name` among `pods`.
pub fn waypoint_ip(pods: &[Pod], name: &str) -> Option<Ipv4Addr> {
    pods.iter().find(|p| p.name == name).map(|p| p.ip)
}

/// Checks every waypoint reference (see the module invariants).
pub(super) fn check(pods: &[Pod], services: &[Service]) -> Result<(), TopologyError> {
    let check_one = |entry: String, wp: &str, naming: Option<&str>| {
        let Some(p) = pods.iter().find(|p| p.name == wp) else {
            return Err(invalid(entry, "waypoint", format!("no pod named {wp:?}")));
        };
        if !p.captured {
            return Err(invalid(
                entry,
                "waypoint",
                format!("pod {wp:?} is not captured (a waypoint speaks HBONE)"),
            ));
        }
        if naming == Some(wp) {
            return Err(invalid(entry, "waypoint", "a pod cannot be its own waypoint"));
        }
        if let Some(next) = p.waypoint() {
            return Err(invalid(
                entry,
                "waypoint",
                format!("waypoint {wp:?} has a waypoint itself ({next:?})"),
            ));
        }
        Ok(())
    };
    for p in pods {
        if let Some(wp) = p.waypoint() {
            check_one(format!("pod {:?}", p.name), wp, Some(&p.name))?;
        }
    }
    for s in services {
        if let Some(wp) = &s.waypoint {
            check_one(format!("service {:?}", s.name), wp, None)?;
        }
    }
    Ok(())
}
