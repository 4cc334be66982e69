//! The node proxies of a [`Lab`]: one per node (shared mode) or per captured pod (dedicated
//! mode), each configured only through ztunnel's environment variables (plus the lab's extra
//! `proxy_env`), started in parallel and waited on through their readiness port.
//!
//! Invariant: a proxy is a [`Process`] owned by the lab, so it is killed when the lab drops; a
//! restarted proxy writes a new log (`proxy-<key>.<n>.log`) and the old one is kept.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Lab, ProxyMode};
use crate::{LabError, Netns, Process, ProcessSpec, wait_http_ok};

impl Lab {
    pub(super) async fn start_proxies(&mut self) -> Result<(), LabError> {
        let keys: Vec<String> = match self.opts.mode {
            ProxyMode::Shared => self.topology.nodes.iter().map(|n| n.name.clone()).collect(),
            ProxyMode::Dedicated => self
                .topology
                .pods
                .iter()
                .filter(|p| p.captured)
                .map(|p| p.name.clone())
                .collect(),
        };
        // Start them all, then wait: they come up in parallel.
        for key in &keys {
            self.spawn_proxy(key, "")?;
        }
        for key in &keys {
            self.wait_proxy_ready(key).await?;
        }
        Ok(())
    }

    /// The namespace a proxy runs in and its spec (name suffixed, so a restart keeps the old log).
    pub(super) fn proxy_spec(&self, key: &str, suffix: &str) -> Option<(String, ProcessSpec)> {
        let node = match self.opts.mode {
            ProxyMode::Shared => key.to_string(),
            ProxyMode::Dedicated => self.topology.pod(key)?.node.clone(),
        };
        // A node's own binary (a mixed mesh), else the lab's.
        let binary = self
            .opts
            .node_proxies
            .get(&node)
            .or(self.opts.proxy.as_ref())?;
        let name = format!("proxy-{key}{suffix}");
        let (ns, spec) = match self.opts.mode {
            ProxyMode::Shared => {
                let spec = ProcessSpec::new(name, binary)
                    .env("PROXY_MODE", "shared")
                    .env(
                        "INPOD_UDS",
                        self.agents.get(key)?.socket().display().to_string(),
                    );
                (self.nodes.get(key)?, spec)
            }
            ProxyMode::Dedicated => {
                let pod = self.topology.pod(key)?;
                let info = format!("{}/{}/{}", pod.namespace, pod.name, pod.service_account);
                let spec = ProcessSpec::new(name, binary)
                    .env("PROXY_MODE", "dedicated")
                    .env("PROXY_WORKLOAD_INFO", info)
                    .env("PACKET_MARK", "1337");
                (self.pods.get(key)?, spec)
            }
        };
        let mut spec = spec;
        for (k, v) in self.control.proxy_env(&node) {
            spec = spec.env(k, v);
        }
        // The node proxy's own pod, as a DaemonSet pod would be described (xDS node id).
        if let Some(n) = self.topology.node(&node) {
            spec = spec
                .env("POD_NAME", format!("ztunnel-{}", n.name))
                .env("POD_NAMESPACE", "istio-system")
                .env("INSTANCE_IP", n.underlay_ip.to_string());
        }
        for (k, v) in &self.opts.proxy_env {
            spec = spec.env(k.clone(), v.clone());
        }
        let network = self.topology.network_of_node(&node);
        if !network.is_empty() {
            spec = spec.env("NETWORK", network);
        }
        let spec = spec
            .env("NODE_NAME", node)
            .env("RUST_LOG", self.opts.rust_log.clone());
        Some((ns.name().to_string(), spec))
    }

    fn spawn_proxy(&mut self, key: &str, suffix: &str) -> Result<(), LabError> {
        let Some((ns_name, spec)) = self.proxy_spec(key, suffix) else {
            return Err(LabError::NoSuchPod {
                pod: key.to_string(),
                hint: " (no node proxy runs for it)".into(),
            });
        };
        let p = Process::spawn(self.netns_by_name(&ns_name), &spec, &self.run_dir)?;
        self.proxies.insert(key.to_string(), p);
        Ok(())
    }

    async fn wait_proxy_ready(&mut self, key: &str) -> Result<(), LabError> {
        let ready = SocketAddr::from(([127, 0, 0, 1], 15021));
        let ns = match self.opts.mode {
            ProxyMode::Shared => self.nodes.get(key),
            ProxyMode::Dedicated => self.pods.get(key),
        };
        let (Some(ns), Some(proc)) = (ns, self.proxies.get_mut(key)) else {
            return Ok(());
        };
        let per_try = Duration::from_secs(1);
        wait_http_ok(ns, ready, "/healthz/ready", 150, per_try, Some(proc)).await
    }

    /// The node proxy run under `key` (a node in shared mode, a pod in dedicated mode).
    pub fn proxy(&self, key: &str) -> Option<&Process> {
        self.proxies.get(key)
    }

    /// Every running node proxy's key and the namespace its ports are in.
    pub fn proxy_namespaces(&self) -> Vec<(&str, &Netns)> {
        self.proxies
            .keys()
            .filter_map(|key| {
                let ns = match self.opts.mode {
                    ProxyMode::Shared => self.nodes.get(key),
                    ProxyMode::Dedicated => self.pods.get(key),
                }?;
                Some((key.as_str(), ns))
            })
            .collect()
    }

    /// The namespace of the node proxy that serves `pod`.
    pub fn proxy_ns_for(&self, pod: &str) -> Option<&Netns> {
        let p = self.topology.pod(pod)?;
        match self.opts.mode {
            ProxyMode::Shared => self.nodes.get(&p.node),
            ProxyMode::Dedicated => self.pods.get(&p.name),
        }
    }

    /// Kills the node proxy under `key` (for failure tests); true if one was running.
    pub fn kill_proxy(&mut self, key: &str) -> bool {
        self.proxies.remove(key).is_some()
    }

    /// Kills (if running) and starts again the node proxy under `key`, waiting for readiness. Its
    /// new log is `proxy-<key>.<n>.log`; the old one is kept.
    pub async fn restart_proxy(&mut self, key: &str) -> Result<(), LabError> {
        self.proxies.remove(key);
        self.restarts += 1;
        let suffix = format!(".{}", self.restarts);
        self.spawn_proxy(key, &suffix)?;
        self.wait_proxy_ready(key).await
    }
}
