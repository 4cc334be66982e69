//! The seam where node proxies get their workloads, services, policies and certificates.
//!
//! Today: [`LocalFiles`] writes one local config file (ztunnel's `LOCAL_XDS_PATH` format, wire.md
//! §3) from the topology and points every node proxy at it, with the built-in CA sharing one root
//! directory (`FAKE_CA=true`, `AMBIT_CA_DIR`). The control-plane issue replaces it with an
//! implementation of [`ControlPlane`] that serves xDS and the CA and hands out `XDS_ADDRESS` /
//! `CA_ADDRESS`; nothing else in the lab changes.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use crate::LabError;
use crate::topology::waypoint::{WAYPOINT_HBONE_PORT, waypoint_ip};
use crate::topology::{AppTunnel, LoadBalancing, Locality, PodStatus, TRUST_DOMAIN, Topology};

/// Where node proxies get their configuration from.
pub trait ControlPlane: Send + Sync + std::fmt::Debug {
    /// The environment that points the node proxy of `node` at this control plane.
    fn proxy_env(&self, node: &str) -> Vec<(String, String)>;
}

/// A local config file plus the built-in CA's shared root directory.
#[derive(Debug, Clone)]
pub struct LocalFiles {
    pub config: PathBuf,
    pub ca_dir: PathBuf,
}

// === impl LocalFiles ===

impl LocalFiles {
    /// Writes `<dir>/local-config.yaml` from `topology`; the CA root lives in `<dir>/ca`.
    pub fn write(topology: &Topology, dir: &Path) -> Result<LocalFiles, LabError> {
        let config = dir.join("local-config.yaml");
        let text = local_config(topology);
        std::fs::write(&config, text).map_err(|source| LabError::File {
            path: config.display().to_string(),
            source,
        })?;
        Ok(LocalFiles {
            config,
            ca_dir: dir.join("ca"),
        })
    }
}

impl LocalFiles {
    /// Puts a given root (certificate and PKCS#8 key, PEM) in the CA directory before any proxy
    /// starts, so the built-in CA issues from it.
    pub fn seed_ca(&self, cert: &Path, key: &Path) -> Result<(), LabError> {
        std::fs::create_dir_all(&self.ca_dir).map_err(|source| LabError::File {
            path: self.ca_dir.display().to_string(),
            source,
        })?;
        for (from, name) in [(cert, "root-cert.pem"), (key, "root-key.pem")] {
            let to = self.ca_dir.join(name);
            std::fs::copy(from, &to).map_err(|source| LabError::File {
                path: format!("{} -> {}", from.display(), to.display()),
                source,
            })?;
        }
        Ok(())
    }
}

impl ControlPlane for LocalFiles {
    fn proxy_env(&self, _node: &str) -> Vec<(String, String)> {
        [
            ("FAKE_CA", "true".to_string()),
            ("CA_ADDRESS", String::new()),
            ("XDS_ADDRESS", String::new()),
            ("LOCAL_XDS_PATH", self.config.display().to_string()),
            ("AMBIT_CA_DIR", self.ca_dir.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The local config (YAML) for `topology`: every pod as a workload (HBONE when captured, TCP when
/// not), with the services it backs; every service with its VIPs and ports; the policies as given.
pub fn local_config(topology: &Topology) -> String {
    let workloads: Vec<Value> = topology
        .pods
        .iter()
        .map(|p| {
            let mut services = Mapping::new();
            for s in topology
                .services
                .iter()
                .filter(|s| s.namespace == p.namespace && s.endpoints.contains(&p.name))
            {
                services.insert(
                    format!("{}/{}", s.namespace, s.hostname).into(),
                    ports(&s.ports),
                );
            }
            let mut w = map([
                ("uid", p.uid().into()),
                ("name", p.name.clone().into()),
                ("namespace", p.namespace.clone().into()),
                ("serviceAccount", p.service_account.clone().into()),
                // ztunnel's loader leaves an absent trust domain empty (istiod always sends one).
                ("trustDomain", TRUST_DOMAIN.into()),
                (
                    "workloadIps",
                    Value::Sequence(vec![p.ip.to_string().into()]),
                ),
                ("protocol", if p.captured { "HBONE" } else { "TCP" }.into()),
                ("node", p.node.clone().into()),
                ("services", Value::Mapping(services)),
            ]);
            // Health and locality only when set, so a plain topology's config stays as it was.
            if let Value::Mapping(m) = &mut w {
                if p.status() != PodStatus::Healthy {
                    m.insert("status".into(), p.status().as_str().into());
                }
                let l = p.locality();
                if !l.is_empty() {
                    m.insert("locality".into(), locality(&l));
                }
                crate::multinet::local_workload(m, p, topology);
                if let Some(t) = p.app_tunnel() {
                    m.insert("applicationTunnel".into(), app_tunnel(&t));
                }
                if let Some(gw) = p.waypoint().and_then(|wp| waypoint(topology, wp)) {
                    m.insert("waypoint".into(), gw);
                }
            }
            w
        })
        .chain(crate::multinet::local_gateways(topology))
        .collect();
    let services: Vec<Value> = topology
        .services
        .iter()
        .map(|s| {
            let mut svc = map([
                ("name", s.name.clone().into()),
                ("namespace", s.namespace.clone().into()),
                ("hostname", s.hostname.clone().into()),
                (
                    "vips",
                    Value::Sequence(s.vips.iter().map(|v| format!("/{v}").into()).collect()),
                ),
                ("ports", ports(&s.ports)),
            ]);
            if let (Value::Mapping(m), Some(lb)) = (&mut svc, &s.load_balancing) {
                m.insert("loadBalancer".into(), load_balancer(lb));
            }
            if let Value::Mapping(m) = &mut svc {
                crate::multinet::local_service(m, s, topology);
                if let Some(gw) = s.waypoint.as_deref().and_then(|wp| waypoint(topology, wp)) {
                    m.insert("waypoint".into(), gw);
                }
            }
            svc
        })
        .collect();
    let doc = map([
        ("workloads", Value::Sequence(workloads)),
        ("services", Value::Sequence(services)),
        ("policies", Value::Sequence(topology.policies.clone())),
    ]);
    // Serialising a plain mapping of strings, numbers and lists does not fail.
    serde_yaml_ng::to_string(&doc).unwrap_or_default()
}

/// Port maps keep numeric keys (`80: 8080`), as the local config format has them.
fn ports(ports: &BTreeMap<u16, u16>) -> Value {
    Value::Mapping(
        ports
            .iter()
            .map(|(p, t)| (Value::from(*p), Value::from(*t)))
            .collect(),
    )
}

fn locality(l: &Locality) -> Value {
    map([
        ("region", l.region.clone().into()),
        ("zone", l.zone.clone().into()),
        ("subzone", l.subzone.clone().into()),
    ])
}

/// The local config's `loadBalancer` block (ztunnel's spellings; all three keys required).
fn load_balancer(lb: &LoadBalancing) -> Value {
    map([
        (
            "routingPreferences",
            Value::Sequence(
                lb.routing_preference
                    .iter()
                    .map(|s| s.as_str().into())
                    .collect(),
            ),
        ),
        ("mode", lb.mode.as_str().into()),
        ("healthPolicy", lb.health_policy.as_str().into()),
    ])
}

/// The local config's `applicationTunnel` block.
fn app_tunnel(t: &AppTunnel) -> Value {
    let mut v = map([("protocol", t.protocol.as_str().into())]);
    if let (Value::Mapping(m), Some(p)) = (&mut v, t.port) {
        m.insert("port".into(), p.into());
    }
    v
}

/// The waypoint pod `name` as the local config's gateway: `namespace/hostname` when a service
/// describes it ([`crate::control_resources::waypoint_service`]), else `network/IP`.
fn waypoint(topology: &Topology, name: &str) -> Option<Value> {
    if let Some(svc) = crate::control_resources::waypoint_service(topology, name) {
        return Some(map([
            (
                "destination",
                format!("{}/{}", svc.namespace, svc.hostname).into(),
            ),
            ("hboneMtlsPort", WAYPOINT_HBONE_PORT.into()),
        ]));
    }
    let ip = waypoint_ip(&topology.pods, name)?;
    let network = topology
        .pod(name)
        .map(|p| topology.network_of(p))
        .unwrap_or("");
    Some(map([
        ("destination", format!("{network}/{ip}").into()),
        ("hboneMtlsPort", WAYPOINT_HBONE_PORT.into()),
    ]))
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_services_and_policies() {
        let t = Topology::from_yaml(
            "nodes: [{name: n1}]
pods:
  - {name: a, node: n1, serviceAccount: sa, labels: {app: x}}
  - {name: b, node: n1, captured: false}
services: [{name: s, ports: {80: 8080}, selector: {app: x}, vips: [10.96.0.1]}]
policies: [{name: p, namespace: default, scope: Namespace, action: Allow}]
",
        )
        .unwrap();
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&local_config(&t)).unwrap();
        let a = &v["workloads"][0];
        assert_eq!(a["uid"], "Kubernetes//Pod/default/a");
        assert_eq!(a["protocol"], "HBONE");
        assert_eq!(a["workloadIps"][0], "10.244.1.2");
        assert_eq!(
            a["services"]["default/s.default.svc.cluster.local"][80],
            8080
        );
        assert_eq!(v["workloads"][1]["protocol"], "TCP");
        assert_eq!(v["services"][0]["vips"][0], "/10.96.0.1");
        assert_eq!(v["policies"][0]["name"], "p");
        // Nothing about health or locality unless the topology says so.
        assert!(a.get("status").is_none() && a.get("locality").is_none());
        assert!(v["services"][0].get("loadBalancer").is_none());
    }

    #[test]
    fn health_locality_and_load_balancing_pass_through() {
        let t = Topology::from_yaml(
            "nodes: [{name: n1}]
pods:
  - {name: a, node: n1, labels: {app: x}, locality: {region: r1, zone: z1}}
  - {name: b, node: n1, labels: {app: x}, status: Unhealthy}
services:
  - name: s
    ports: {80: 8080}
    selector: {app: x}
    loadBalancing: {routingPreference: [Region, Zone], mode: Failover}
",
        )
        .unwrap();
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&local_config(&t)).unwrap();
        let (a, b) = (&v["workloads"][0], &v["workloads"][1]);
        assert_eq!(a["locality"]["region"], "r1");
        assert_eq!(a["locality"]["zone"], "z1");
        assert_eq!(a["locality"]["subzone"], "");
        assert!(a.get("status").is_none());
        assert_eq!(b["status"], "Unhealthy");
        assert!(b.get("locality").is_none());
        let lb = &v["services"][0]["loadBalancer"];
        assert_eq!(lb["routingPreferences"][0], "Region");
        assert_eq!(lb["routingPreferences"][1], "Zone");
        assert_eq!(lb["mode"], "Failover");
        assert_eq!(lb["healthPolicy"], "OnlyHealthy");
    }
}
