//! Waypoints and application tunnels in the topology: a pod's `applicationTunnel` and
//! `waypoint`, a service's `waypoint`, as written in the YAML and as the lab keeps them.
//!
//! A waypoint is a captured pod that some service or pod names in its `waypoint` field; the lab
//! describes it to the node proxies by address (`GatewayAddress` `network/IP`, HBONE port
//! [`WAYPOINT_HBONE_PORT`]), or, when a service named like the waypoint pod selects it, by that
//! service's host name (the form istiod sends). The waypoint pod's own `applicationTunnel` (normally
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
            return Err(invalid(
                entry,
                "waypoint",
                "a pod cannot be its own waypoint",
            ));
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

#[cfg(test)]
mod tests {
    use ambit_proto::istio::workload as pw;

    use crate::control::local_config;
    use crate::control_resources::{service_in, workload};
    use crate::topology::Topology;

    const WAYPOINTED: &str = "
nodes: [{name: n1}]
pods:
  - {name: wp, node: n1, serviceAccount: waypoint, applicationTunnel: {protocol: PROXY, port: 15088}}
  - {name: web, node: n1, labels: {app: web}}
  - {name: db, node: n1, waypoint: wp}
services:
  - {name: web, ports: {80: 8080}, selector: {app: web}, waypoint: wp}
";

    #[test]
    fn waypoints_and_tunnels_as_xds_and_local_config() {
        let t = Topology::from_yaml(WAYPOINTED).unwrap();
        let wp_ip = t.pod("wp").unwrap().ip;
        let gw = pw::GatewayAddress {
            destination: Some(pw::gateway_address::Destination::Address(
                pw::NetworkAddress {
                    network: String::new(),
                    address: wp_ip.octets().to_vec(),
                    length: None,
                },
            )),
            hbone_mtls_port: 15008,
        };
        let wp = workload(t.pod("wp").unwrap(), &t);
        let tunnel = wp.application_tunnel.unwrap();
        assert_eq!(
            tunnel.protocol,
            pw::application_tunnel::Protocol::Proxy as i32
        );
        assert_eq!(tunnel.port, 15088);
        assert!(wp.waypoint.is_none());
        assert_eq!(
            workload(t.pod("db").unwrap(), &t).waypoint,
            Some(gw.clone())
        );
        assert!(workload(t.pod("web").unwrap(), &t).waypoint.is_none());
        assert_eq!(service_in(t.service("web").unwrap(), &t).waypoint, Some(gw));

        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&local_config(&t)).unwrap();
        let wl = |name: &str| {
            v["workloads"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|w| w["name"] == name)
                .unwrap()
                .clone()
        };
        assert_eq!(wl("wp")["applicationTunnel"]["protocol"], "PROXY");
        assert_eq!(wl("wp")["applicationTunnel"]["port"], 15088);
        assert_eq!(wl("db")["waypoint"]["destination"], format!("/{wp_ip}"));
        assert_eq!(wl("db")["waypoint"]["hboneMtlsPort"], 15008);
        assert!(wl("web").get("waypoint").is_none());
        assert_eq!(
            v["services"][0]["waypoint"]["destination"],
            format!("/{wp_ip}")
        );
    }

    #[test]
    fn a_service_named_like_the_waypoint_pod_makes_it_hostname_form() {
        // A service of that name that does not select the pod changes nothing.
        let t = Topology::from_yaml(&format!(
            "{WAYPOINTED}  - {{name: wp, ports: {{15008: 15008}}, selector: {{app: wp}}}}\n"
        ))
        .unwrap();
        assert!(matches!(
            workload(t.pod("db").unwrap(), &t)
                .waypoint
                .and_then(|g| g.destination),
            Some(pw::gateway_address::Destination::Address(_))
        ));
        let yaml = WAYPOINTED.replace(
            "{name: wp, node: n1, serviceAccount: waypoint,",
            "{name: wp, node: n1, serviceAccount: waypoint, labels: {app: wp},",
        ) + "  - {name: wp, ports: {15008: 15008}, selector: {app: wp}}\n";
        let t = Topology::from_yaml(&yaml).unwrap();
        let gw = pw::GatewayAddress {
            destination: Some(pw::gateway_address::Destination::Hostname(
                pw::NamespacedHostname {
                    namespace: "default".into(),
                    hostname: "wp.default.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        };
        assert_eq!(
            workload(t.pod("db").unwrap(), &t).waypoint,
            Some(gw.clone())
        );
        assert_eq!(service_in(t.service("web").unwrap(), &t).waypoint, Some(gw));
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&local_config(&t)).unwrap();
        assert_eq!(
            v["services"][0]["waypoint"]["destination"],
            "default/wp.default.svc.cluster.local"
        );
    }

    #[test]
    fn bad_waypoint_references_are_named() {
        let err = |y: &str| Topology::from_yaml(y).unwrap_err().to_string();
        let base = "nodes: [{name: n1}]\npods:\n  - {name: wp, node: n1}\n  - {name: plain, node: n1, captured: false}\n";
        let e = err(&format!(
            "{base}services: [{{name: s, ports: {{80: 80}}, waypoint: nope}}]\n"
        ));
        assert!(
            e.contains("service \"s\": field `waypoint`: no pod named \"nope\""),
            "{e}"
        );
        let e = err(&format!(
            "{base}  - {{name: a, node: n1, waypoint: plain}}\n"
        ));
        assert!(e.contains("is not captured"), "{e}");
        let e = err(&format!("{base}  - {{name: a, node: n1, waypoint: a}}\n"));
        assert!(e.contains("own waypoint"), "{e}");
        let e = err(&format!(
            "{base}  - {{name: a, node: n1, waypoint: b}}\n  - {{name: b, node: n1, waypoint: wp}}\n"
        ));
        assert!(e.contains("has a waypoint itself"), "{e}");
        let e = err(&format!(
            "{base}  - {{name: a, node: n1, applicationTunnel: {{protocol: HTTP}}}}\n"
        ));
        assert!(e.contains("HTTP"), "{e}");
    }
}
