//! [`Lab`]: a topology built as network namespaces, with a node agent per node and (optionally)
//! the node proxies running. Layout, for run id `R` (`<pid>-<rand>-<n>`):
//! - `ambit-lab-R-u`: the underlay, with bridge `br0`; node `i` joins it through veth `n<i>`;
//! - `ambit-lab-R-n-<node>`: a node; `eth0` on the underlay, forwarding on, a route to every
//!   other node's pod CIDR via that node's underlay address, and per pod a veth `p<k>` carrying
//!   the pods' gateway address (/32) and a /32 route to the pod;
//! - `ambit-lab-R-p-<pod>`: a pod; `eth0` with its /32 address, default route via the gateway;
//! - `ambit-lab-R-g-<gateway>`: an east-west gateway (several networks only, [`crate::multinet`]):
//!   `eth0` on the underlay, routes to every pod network; nodes route only to their own
//!   network's pods.
//!
//! Invariants: everything is removed when the `Lab` is dropped (also on error part-way through a
//! build, and on panic), in reverse order of creation (proxies, agents, pods, nodes, underlay);
//! nothing is created outside these namespaces except the run directory (logs, config, sockets,
//! the state file that lets `ambit-lab exec` find the lab; the state file goes on drop, the logs
//! stay).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent::{NodeAgent, PodAnnounce};
use crate::control::{ControlPlane, LocalFiles};
use crate::control_plane::{CP_PORT, LabControlPlane};
use crate::control_resources::{self, CpResource};
use crate::eastwest::{self, GatewayServer};
use crate::topology::{Pod, Topology, UNDERLAY_PREFIX};
use crate::{LabError, Netns, Process, link, multinet, sys};

mod handover;
mod proxies;

/// Where run directories go unless the options say otherwise.
pub const RUNS_DIR: &str = "/tmp/ambit-lab";

/// How the node proxies run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// One node proxy per node, in the node's namespace, told about pods over ZDS (`PROXY_MODE=shared`).
    Shared,
    /// One proxy per captured pod, inside the pod (`PROXY_MODE=dedicated`); no ZDS client.
    Dedicated,
}

/// Where node proxies get their configuration and certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlMode {
    /// A local config file and the built-in CA ([`LocalFiles`]): no control plane.
    #[default]
    LocalFiles,
    /// The lab's control plane ([`LabControlPlane`]): delta xDS and the CA over TLS.
    ControlPlane,
}

/// How to run a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The node proxy binary; `None` builds only the network and the agents.
    pub proxy: Option<PathBuf>,
    pub mode: ProxyMode,
    /// The run directory; default `/tmp/ambit-lab/<run id>`.
    pub run_dir: Option<PathBuf>,
    /// `RUST_LOG` of the node proxies (access log lines are at `info`).
    pub rust_log: String,
    pub control: ControlMode,
    /// Extra environment for every node proxy (e.g. `SECRET_TTL`), after the lab's own.
    pub proxy_env: Vec<(String, String)>,
    /// Per-node proxy binaries (node name → binary) that replace `proxy` on those nodes: a mixed
    /// mesh of ambit and another ztunnel-compatible proxy.
    pub node_proxies: BTreeMap<String, PathBuf>,
    /// Local-files mode: the root certificate and key (PEM) the built-in CA issues from, instead of
    /// a fresh one; a mixed mesh trusts one root when both proxies are given the same.
    pub ca_root: Option<(PathBuf, PathBuf)>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            proxy: None,
            mode: ProxyMode::Shared,
            run_dir: None,
            rust_log: "info".into(),
            control: ControlMode::LocalFiles,
            proxy_env: Vec::new(),
            node_proxies: BTreeMap::new(),
            ca_root: None,
        }
    }
}

/// What `ambit-lab exec` reads to find a running lab's namespaces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub run_id: String,
    pub pid: u32,
    pub underlay: String,
    pub nodes: BTreeMap<String, String>,
    pub pods: BTreeMap<String, String>,
}

/// A running lab. Field order is drop order.
#[derive(Debug)]
pub struct Lab {
    /// Node proxies: by node name (shared) or pod name (dedicated).
    proxies: BTreeMap<String, Process>,
    /// Namespaces of proxies that took over a node ([`Lab::hand_over_proxy`]).
    handover_ns: Vec<Netns>,
    /// East-west gateways, by the network they lead into.
    gateways: BTreeMap<String, GatewayServer>,
    agents: BTreeMap<String, NodeAgent>,
    pods: BTreeMap<String, Netns>,
    nodes: BTreeMap<String, Netns>,
    underlay: Netns,
    topology: Topology,
    run_id: String,
    run_dir: PathBuf,
    control: Box<dyn ControlPlane>,
    /// The control plane, in [`ControlMode::ControlPlane`].
    cp: Option<LabControlPlane>,
    opts: LabOptions,
    /// Proxy restarts so far (names the new logs).
    restarts: u32,
}

// === impl Lab ===

impl Lab {
    /// Builds `topology`, starts the agents and, when configured, the node proxies (waiting for
    /// their readiness). Needs a tokio runtime.
    pub async fn start(topology: Topology, opts: LabOptions) -> Result<Lab, LabError> {
        sys::preflight()?;
        for p in opts.proxy.iter().chain(opts.node_proxies.values()) {
            if !p.is_file() {
                return Err(LabError::ProxyMissing {
                    path: p.display().to_string(),
                });
            }
        }
        let run_id = sys::unique_suffix();
        let run_dir = opts
            .run_dir
            .clone()
            .unwrap_or_else(|| Path::new(RUNS_DIR).join(&run_id));
        std::fs::create_dir_all(&run_dir).map_err(|source| LabError::File {
            path: run_dir.display().to_string(),
            source,
        })?;
        let control = Box::new(LocalFiles::write(&topology, &run_dir)?);
        if let Some((cert, key)) = &opts.ca_root {
            control.seed_ca(cert, key)?;
        }
        let underlay = Netns::with_name(format!("{}{run_id}-u", sys::NAME_PREFIX))?;
        let mut lab = Lab {
            proxies: BTreeMap::new(),
            handover_ns: Vec::new(),
            gateways: BTreeMap::new(),
            agents: BTreeMap::new(),
            pods: BTreeMap::new(),
            nodes: BTreeMap::new(),
            underlay,
            topology,
            run_id,
            run_dir,
            control,
            cp: None,
            opts,
            restarts: 0,
        };
        lab.build_network()?;
        if lab.opts.control == ControlMode::ControlPlane {
            lab.start_control_plane().await?;
        }
        lab.start_gateways()?;
        lab.start_agents()?;
        lab.write_state()?;
        if lab.opts.proxy.is_some() {
            lab.start_proxies().await?;
        }
        Ok(lab)
    }

    /// The control plane's address on the underlay: `br0` gets the underlay's first address, and
    /// routes to every node's pods (so proxies inside pods reach it too, in dedicated mode).
    async fn start_control_plane(&mut self) -> Result<(), LabError> {
        let ip = Ipv4Addr::from(u32::from(crate::topology::UNDERLAY_NET) + 1);
        self.underlay
            .add_addr("br0", &format!("{ip}/{UNDERLAY_PREFIX}"))?;
        for node in &self.topology.nodes {
            let (cidr, via) = (node.pod_cidr.to_string(), node.underlay_ip.to_string());
            self.underlay.route(&[&cidr, "via", &via])?;
        }
        let resources =
            control_resources::topology_resources(&self.topology).map_err(|detail| {
                LabError::ControlPlane {
                    what: "topology".into(),
                    detail,
                }
            })?;
        let nodes: Vec<String> = self.topology.nodes.iter().map(|n| n.name.clone()).collect();
        let cp = LabControlPlane::start(
            &self.underlay,
            SocketAddr::from((ip, CP_PORT)),
            &nodes,
            resources,
            &self.run_dir.join("control-plane"),
        )
        .await?;
        self.control = Box::new(cp.clone());
        self.cp = Some(cp);
        Ok(())
    }

    /// The control plane, when the lab runs one ([`ControlMode::ControlPlane`]).
    pub fn control_plane(&self) -> Option<&LabControlPlane> {
        self.cp.as_ref()
    }

    /// Kills the control plane (streams end, the listener closes); true if one was running.
    pub async fn stop_control_plane(&self) -> bool {
        match &self.cp {
            Some(cp) if cp.is_serving() => {
                cp.stop().await;
                true
            }
            _ => false,
        }
    }

    /// Brings the control plane back on the same address, with the same state.
    pub fn restart_control_plane(&self) -> Result<(), LabError> {
        match &self.cp {
            Some(cp) => cp.restart(&self.underlay),
            None => Err(LabError::ControlPlane {
                what: "restart".into(),
                detail: "this lab runs without a control plane".into(),
            }),
        }
    }

    fn ns_name(&self, kind: &str, name: &str) -> String {
        format!("{}{}-{kind}-{name}", sys::NAME_PREFIX, self.run_id)
    }

    fn build_network(&mut self) -> Result<(), LabError> {
        let u = &self.underlay;
        u.ip(&["link", "add", "br0", "type", "bridge"])?;
        u.link_up("br0")?;
        // Bridge netfilter would hand bridged frames to the nodes' tables; keep the underlay a plain
        // switch (the keys exist only where br_netfilter is built in).
        let _ = u.sysctl("net.bridge.bridge-nf-call-iptables", "0");
        let _ = u.sysctl("net.bridge.bridge-nf-call-ip6tables", "0");
        for (i, node) in self.topology.nodes.clone().iter().enumerate() {
            let ns = Netns::with_name(self.ns_name("n", &node.name))?;
            let port = format!("n{i}");
            link::veth(&self.underlay, &port, &ns, "eth0")?;
            self.underlay.ip(&["link", "set", &port, "master", "br0"])?;
            ns.add_addr("eth0", &format!("{}/{UNDERLAY_PREFIX}", node.underlay_ip))?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            self.nodes.insert(node.name.clone(), ns);
        }
        for node in &self.topology.nodes {
            multinet::node_routes(&self.nodes[&node.name], &node.name, &self.topology)?;
        }
        for pod in self.topology.pods.clone() {
            self.plug_pod(&pod)?;
        }
        Ok(())
    }

    /// Plugs each east-west gateway into the underlay and starts it (certificate from the
    /// control plane's CA, or the built-in CA's directory the node proxies share).
    fn start_gateways(&mut self) -> Result<(), LabError> {
        for (i, gw) in self.topology.east_west_gateways.iter().enumerate() {
            let name = self.ns_name("g", &gw.name);
            let ns =
                multinet::plug_gateway(&self.underlay, name, &format!("g{i}"), gw, &self.topology)?;
            let cert =
                eastwest::gateway_certificate(gw, self.cp.as_ref(), &self.run_dir.join("ca"))?;
            let routes = eastwest::routes(&self.topology, &gw.network);
            let server = GatewayServer::start(ns, gw.clone(), cert, routes, &self.run_dir)?;
            self.gateways.insert(gw.network.clone(), server);
        }
        Ok(())
    }

    /// The east-west gateway into `network`, when the topology has one.
    pub fn eastwest_gateway(&self, network: &str) -> Option<&GatewayServer> {
        self.gateways.get(network)
    }

    /// Creates a pod's namespace and wires it to its node.
    fn plug_pod(&mut self, pod: &Pod) -> Result<(), LabError> {
        let Some(node) = self.topology.node(&pod.node).cloned() else {
            return Err(LabError::NoSuchPod {
                pod: pod.name.clone(),
                hint: format!(": its node {:?} does not exist", pod.node),
            });
        };
        let ns = Netns::with_name(self.ns_name("p", &pod.name))?;
        let node_ns = &self.nodes[&node.name];
        // The pod's index on its node: a stable, short interface name.
        let k = self.pods.len();
        let port = format!("p{k}");
        link::veth(node_ns, &port, &ns, "eth0")?;
        let gw = node.pod_cidr.gateway().to_string();
        let ip = pod.ip.to_string();
        node_ns.add_addr(&port, &format!("{gw}/32"))?;
        node_ns.route(&[&format!("{ip}/32"), "dev", &port])?;
        ns.add_addr("eth0", &format!("{ip}/32"))?;
        ns.route(&[&gw, "dev", "eth0", "scope", "link"])?;
        ns.route(&["default", "via", &gw, "dev", "eth0"])?;
        self.pods.insert(pod.name.clone(), ns);
        Ok(())
    }

    fn announce(&self, pod: &Pod) -> PodAnnounce {
        PodAnnounce {
            uid: pod.uid(),
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
            netns: self.pods[&pod.name].name().to_string(),
        }
    }

    fn start_agents(&mut self) -> Result<(), LabError> {
        for node in self.topology.nodes.clone() {
            let dir = self.run_dir.join(&node.name);
            std::fs::create_dir_all(&dir).map_err(|source| LabError::File {
                path: dir.display().to_string(),
                source,
            })?;
            let pods: Vec<(&Netns, PodAnnounce)> = self
                .topology
                .pods_on(&node.name)
                .filter(|p| p.captured)
                .map(|p| (&self.pods[&p.name], self.announce(p)))
                .collect();
            let agent = NodeAgent::start(
                &node.name,
                &dir.join("ztunnel.sock"),
                pods,
                self.topology.dns_capture,
            )?;
            self.agents.insert(node.name.clone(), agent);
        }
        Ok(())
    }

    /// Replaces a node's agent with a fresh one (same socket path, same pods): a connected node
    /// proxy loses its ZDS connection, reconnects and gets a new snapshot.
    pub async fn restart_agent(&mut self, node: &str) -> Result<(), LabError> {
        let Some(old) = self.agents.remove(node) else {
            return Err(LabError::Agent {
                node: node.to_string(),
                detail: "no such node".into(),
            });
        };
        let socket = old.socket().to_path_buf();
        old.stop().await;
        let pods: Vec<(&Netns, PodAnnounce)> = self
            .topology
            .pods_on(node)
            .filter(|p| p.captured)
            .map(|p| (&self.pods[&p.name], self.announce(p)))
            .collect();
        let agent = NodeAgent::resume(node, &socket, pods, self.topology.dns_capture)?;
        self.agents.insert(node.to_string(), agent);
        Ok(())
    }

    fn netns_by_name(&self, name: &str) -> Option<&Netns> {
        self.nodes
            .values()
            .chain(self.pods.values())
            .find(|n| n.name() == name)
    }

    fn write_state(&self) -> Result<(), LabError> {
        let state = self.state();
        let path = self.run_dir.join("state.json");
        let text = serde_json::to_string_pretty(&state).unwrap_or_default();
        std::fs::write(&path, text).map_err(|source| LabError::File {
            path: path.display().to_string(),
            source,
        })
    }

    /// The names a second `ambit-lab` process needs.
    pub fn state(&self) -> LabState {
        LabState {
            run_id: self.run_id.clone(),
            pid: std::process::id(),
            underlay: self.underlay.name().to_string(),
            nodes: self
                .nodes
                .iter()
                .map(|(k, v)| (k.clone(), v.name().to_string()))
                .collect(),
            pods: self
                .pods
                .iter()
                .map(|(k, v)| (k.clone(), v.name().to_string()))
                .collect(),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// How the node proxies run.
    pub fn mode(&self) -> ProxyMode {
        self.opts.mode
    }

    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// A pod's namespace by pod name.
    pub fn pod_ns(&self, pod: &str) -> Result<&Netns, LabError> {
        self.pods.get(pod).ok_or_else(|| LabError::NoSuchPod {
            pod: pod.to_string(),
            hint: format!(" in lab {}", self.run_id),
        })
    }

    /// A node's namespace by node name.
    pub fn node_ns(&self, node: &str) -> Option<&Netns> {
        self.nodes.get(node)
    }

    /// The node agent of a node.
    pub fn agent(&self, node: &str) -> Option<&NodeAgent> {
        self.agents.get(node)
    }

    /// The proxy that serves `pod` (its node's in shared mode, its own in dedicated mode), if any.
    pub fn proxy_for(&self, pod: &str) -> Option<&Process> {
        let p = self.topology.pod(pod)?;
        match self.opts.mode {
            ProxyMode::Shared => self.proxies.get(&p.node),
            ProxyMode::Dedicated => self.proxies.get(&p.name),
        }
    }

    /// Adds a pod while the lab runs: namespace, links and routes; its workload pushed by the
    /// control plane to every node (when there is one); then (when captured) the node agent's
    /// rules and its ZDS announcement. Without a control plane the local config file is rewritten,
    /// but node proxies read it only at start: they learn of the new workload when restarted.
    pub async fn add_pod(&mut self, pod: Pod) -> Result<(), LabError> {
        if self.pods.contains_key(&pod.name) {
            return Err(LabError::Agent {
                node: pod.node.clone(),
                detail: format!("pod {:?} exists already", pod.name),
            });
        }
        self.plug_pod(&pod)?;
        self.topology.pods.push(pod.clone());
        match &self.cp {
            Some(cp) => cp.upsert(vec![CpResource::workload(control_resources::workload(
                &pod,
                &self.topology,
            ))]),
            None => self.control = Box::new(LocalFiles::write(&self.topology, &self.run_dir)?),
        }
        self.write_state()?;
        if pod.captured
            && let Some(agent) = self.agents.get(&pod.node)
        {
            agent
                .add_pod(&self.pods[&pod.name], self.announce(&pod))
                .await?;
        }
        Ok(())
    }

    /// Deletes a pod: the node agent announces it gone first, then its namespace is removed.
    pub async fn del_pod(&mut self, name: &str) -> Result<(), LabError> {
        let pod = self
            .topology
            .pod(name)
            .cloned()
            .ok_or_else(|| LabError::NoSuchPod {
                pod: name.to_string(),
                hint: String::new(),
            })?;
        if pod.captured
            && let Some(agent) = self.agents.get(&pod.node)
        {
            agent.del_pod(&pod.uid()).await?;
        }
        if let Some(cp) = &self.cp {
            cp.remove(ambit_proto::ADDRESS_TYPE_URL, &[&pod.uid()]);
        }
        self.proxies.remove(&pod.name);
        self.pods.remove(&pod.name);
        self.topology.pods.retain(|p| p.name != pod.name);
        self.write_state()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(cp) = &self.cp {
            cp.abort();
        }
        let _ = std::fs::remove_file(self.run_dir.join("state.json"));
    }
}

/// Finds the running lab that has `pod` (or the one with run id `run`), by the state files in
/// [`RUNS_DIR`] whose writer is still alive.
pub fn find_running(pod: &str, run: Option<&str>) -> Result<LabState, LabError> {
    let mut found = Vec::new();
    if let Ok(dirs) = std::fs::read_dir(RUNS_DIR) {
        for d in dirs.flatten() {
            let Ok(text) = std::fs::read_to_string(d.path().join("state.json")) else {
                continue;
            };
            let Ok(state) = serde_json::from_str::<LabState>(&text) else {
                continue;
            };
            let alive = Path::new(&format!("/proc/{}", state.pid)).exists();
            let wanted = run.is_none_or(|r| r == state.run_id);
            if alive && wanted && state.pods.contains_key(pod) {
                found.push(state);
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(LabError::NoSuchPod {
            pod: pod.to_string(),
            hint: " (start one with `ambit-lab up <topology>` or `ambit-lab demo --keep`)".into(),
        }),
        count => Err(LabError::AmbiguousPod {
            pod: pod.to_string(),
            count,
            runs: found
                .iter()
                .map(|s| s.run_id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}
