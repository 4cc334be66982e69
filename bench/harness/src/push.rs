//! The control-plane push scenario: each proxy binary on a two-node lab run by the lab's own
//! control plane (delta ADS and the CA, the same server for every binary), which pushes N
//! workloads and N/10 services in one response and then removes them all in another. The
//! figure is the time from the control plane handing a response to the node's stream to that
//! node's ACK of its nonce, the span in which the proxy decodes, validates and applies the
//! push; both nodes are measured, so each round gives two samples per binary.
//!
//! Invariants: a NACK, or a response or ACK not seen within the deadline, is an error naming
//! the binary and the node, never a number; the pushed workloads live on no node of the lab
//! and their addresses (100.64.0.0/10, shared address space) are never routed, so the push
//! changes state only.

use std::net::Ipv4Addr;
use std::time::Duration;

use ambit_lab::control_resources::CpResource;
use ambit_lab::{ControlMode, Lab, LabControlPlane, LabOptions, Process, ProxyMode, Topology};
use ambit_proto::istio::workload as pw;
use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::procfs;
use crate::subjects::ProxySpec;

const TOPOLOGY: &str = "
nodes:
  - name: node-1
  - name: node-2
pods:
  - {name: cli, serviceAccount: cli, node: node-1}
  - {name: srv, serviceAccount: srv, node: node-2}
";
const NODES: [&str; 2] = ["node-1", "node-2"];
/// Generous: a debug build on a loaded machine applies 10,000 workloads in seconds.
const DEADLINE: Duration = Duration::from_secs(120);

/// What one binary measured over every round (milliseconds, one sample per node per round).
#[derive(Debug, Serialize)]
pub struct PushRow {
    pub proxy: String,
    pub workloads: u32,
    pub services: u32,
    pub push_ms: Vec<f64>,
    pub remove_ms: Vec<f64>,
    /// RSS (KiB) of both node proxies before the first push and while holding it.
    pub rss_before_kib: Vec<u64>,
    pub rss_loaded_kib: Vec<u64>,
}

/// A proxy binary's lab, up and synced with the control plane.
pub struct PushLab {
    label: String,
    lab: Lab,
}

impl PushLab {
    pub async fn start(spec: &ProxySpec, rust_log: &str) -> Result<PushLab> {
        let opts = LabOptions {
            proxy: Some(spec.binary.clone()),
            mode: ProxyMode::Shared,
            control: ControlMode::ControlPlane,
            rust_log: rust_log.into(),
            proxy_env: spec.env.clone(),
            ..LabOptions::default()
        };
        let topology = Topology::from_yaml(TOPOLOGY).context("push topology")?;
        let lab = Lab::start(topology, opts)
            .await
            .with_context(|| format!("push lab for {}", spec.label))?;
        let cp = control(&lab)?;
        for node in NODES {
            cp.wait_request(0, DEADLINE, |r| {
                r.node == node
                    && r.type_url == ambit_proto::ADDRESS_TYPE_URL
                    && !r.response_nonce.is_empty()
            })
            .await
            .with_context(|| format!("{}: {node} never ACKed its first snapshot", spec.label))?;
        }
        Ok(PushLab {
            label: spec.label.clone(),
            lab,
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn proxy_rss(&self) -> Vec<u64> {
        NODES
            .iter()
            .filter_map(|n| self.lab.proxy(n).map(Process::pid))
            .map(|p| procfs::rss_kib(p).unwrap_or(0))
            .collect()
    }

    /// Pushes `resources` (upserts) and returns each node's push → ACK time in ms.
    pub async fn push(&self, resources: Vec<CpResource>) -> Result<Vec<f64>> {
        let cp = control(&self.lab)?;
        let expect = resources.len();
        let (resp_skip, req_skip) = (cp.responses().len(), cp.requests().len());
        cp.upsert(resources);
        self.acks(cp, resp_skip, req_skip, |r| r.resources.len() == expect)
            .await
    }

    /// Removes the workloads and services named in `names` and times each node's ACK.
    pub async fn remove(&self, names: &[String]) -> Result<Vec<f64>> {
        let cp = control(&self.lab)?;
        let expect = names.len();
        let (resp_skip, req_skip) = (cp.responses().len(), cp.requests().len());
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        cp.remove(ambit_proto::ADDRESS_TYPE_URL, &refs);
        self.acks(cp, resp_skip, req_skip, |r| r.removed.len() == expect)
            .await
    }

    async fn acks(
        &self,
        cp: &LabControlPlane,
        resp_skip: usize,
        req_skip: usize,
        is_ours: impl Fn(&ambit_lab::control_plane::RecordedResponse) -> bool,
    ) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        for node in NODES {
            let sent = cp
                .wait_response(resp_skip, DEADLINE, |r| {
                    r.node == node && r.type_url == ambit_proto::ADDRESS_TYPE_URL && is_ours(r)
                })
                .await
                .with_context(|| format!("{}: no push sent to {node}", self.label))?;
            let ack = cp
                .wait_request(req_skip, DEADLINE, |r| {
                    r.node == node && r.response_nonce == sent.nonce
                })
                .await
                .with_context(|| format!("{}: {node} never answered the push", self.label))?;
            if let Some(detail) = &ack.error_detail {
                bail!("{}: {node} NACKed the push: {detail}", self.label);
            }
            out.push(ack.at.duration_since(sent.at).as_secs_f64() * 1000.0);
        }
        Ok(out)
    }
}

fn control(lab: &Lab) -> Result<&LabControlPlane> {
    lab.control_plane()
        .context("the push lab runs without its control plane")
}

/// `workloads` workloads (HBONE pods on a node outside the lab) spread over `workloads / 10`
/// services, as istiod would send them: services first, then workloads naming their service.
pub fn resources(workloads: u32) -> Vec<CpResource> {
    let services = (workloads / 10).max(1);
    let addr = |base: u32, i: u32| Ipv4Addr::from(base + i).octets().to_vec();
    let shared_space = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    let vips = u32::from(Ipv4Addr::new(100, 100, 0, 0));
    let mut out = Vec::with_capacity((workloads + services) as usize);
    for s in 0..services {
        out.push(CpResource::service(pw::Service {
            name: format!("svc-{s}"),
            namespace: "bench".into(),
            hostname: format!("svc-{s}.bench.svc.cluster.local"),
            addresses: vec![pw::NetworkAddress {
                network: String::new(),
                address: addr(vips, s + 1),
                length: None,
            }],
            ports: vec![pw::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
            ..Default::default()
        }));
    }
    for w in 0..workloads {
        let s = w % services;
        let ports = pw::PortList {
            ports: vec![pw::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
        };
        out.push(CpResource::workload(pw::Workload {
            uid: format!(
                "{}//Pod/bench/w-{w}",
                ambit_lab::control_resources::CLUSTER_ID
            ),
            name: format!("w-{w}"),
            namespace: "bench".into(),
            addresses: vec![addr(shared_space, w + 1)],
            tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
            trust_domain: "cluster.local".into(),
            service_account: format!("sa-{s}"),
            node: "node-elsewhere".into(),
            canonical_name: format!("svc-{s}"),
            workload_name: format!("w-{w}"),
            workload_type: pw::WorkloadType::Pod as i32,
            services: [(format!("bench/svc-{s}.bench.svc.cluster.local"), ports)].into(),
            cluster_id: ambit_lab::control_resources::CLUSTER_ID.into(),
            status: pw::WorkloadStatus::Healthy as i32,
            ..Default::default()
        }));
    }
    out
}

/// The mean of `v`, `None` when empty.
pub fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_services_then_workloads_with_unique_names() {
        let r = resources(1000);
        assert_eq!(r.len(), 1100);
        let names: std::collections::BTreeSet<&str> = r.iter().map(CpResource::name).collect();
        assert_eq!(names.len(), 1100, "resource names are unique");
        assert_eq!(r[0].name(), "bench/svc-0.bench.svc.cluster.local");
        assert_eq!(r[100].name(), "Kubernetes//Pod/bench/w-0");
    }
}
