//! The mesh a case runs in, the watchers on it, and the judgement of what they saw.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::cases::{Case, Scale};
use super::instruments::{FlowOutcome, LongFlow, Probe, Prober, RssSampler, recovery};
use super::{ChaosOptions, Row, TOPOLOGY};
use crate::traffic::{Server, ServerKind};
use crate::{ControlMode, Lab, LabError, LabOptions, Netns, ProxyMode, Topology};

/// The echo app on `server`, and the sink for bulk transfers.
pub const ECHO_PORT: u16 = 8080;
pub const SINK_PORT: u16 = 8081;
/// Long flows per case.
pub const FLOWS: usize = 2;
const PROBE_EVERY: Duration = Duration::from_millis(200);
const INTRUDE_EVERY: Duration = Duration::from_millis(500);
/// Longest a case waits for new connections to work again after its fault.
pub const RECOVER_WITHIN: Duration = Duration::from_secs(30);
pub const STEP: Duration = Duration::from_secs(20);

/// The mesh with its apps, ready for a case.
pub struct Scene {
    pub lab: Lab,
    _echo: Server,
    _sink: Server,
    pub echo: SocketAddr,
    pub sink: SocketAddr,
}

impl Scene {
    pub async fn start(opts: &ChaosOptions, env: &[(&str, &str)]) -> Result<Scene, LabError> {
        let topology = Topology::from_yaml(TOPOLOGY)?;
        let lab_opts = LabOptions {
            proxy: Some(opts.proxy.clone()),
            mode: ProxyMode::Shared,
            control: ControlMode::ControlPlane,
            proxy_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..LabOptions::default()
        };
        let lab = Lab::start(topology, lab_opts).await?;
        let server_ns = lab.pod_ns("server")?;
        let echo_srv = Server::start(server_ns, ServerKind::Echo, ECHO_PORT)?;
        let sink_srv = Server::start(server_ns, ServerKind::Sink, SINK_PORT)?;
        let ip = lab
            .topology()
            .pod("server")
            .map(|p| p.ip)
            .ok_or_else(|| LabError::Usage("the chaos topology has no server pod".into()))?;
        let scene = Scene {
            _echo: echo_srv,
            _sink: sink_srv,
            echo: SocketAddr::from((ip, ECHO_PORT)),
            sink: SocketAddr::from((ip, SINK_PORT)),
            lab,
        };
        // The mesh must work before anything is done to it.
        crate::traffic::echo(scene.ns("client")?, scene.echo, b"ready\n", STEP).await?;
        Ok(scene)
    }

    pub fn ns(&self, pod: &str) -> Result<&Netns, LabError> {
        self.lab.pod_ns(pod)
    }

    pub fn node(&self, node: &str) -> Result<&Netns, LabError> {
        self.lab
            .node_ns(node)
            .ok_or_else(|| LabError::Usage(format!("no node {node}")))
    }

    /// Handles to the namespaces of both node proxies (for memory readings).
    pub fn proxy_nodes(&self) -> Result<[Netns; 2], LabError> {
        Ok([self.node("node-1")?.handle(), self.node("node-2")?.handle()])
    }

    /// Starts every watcher.
    pub fn watch(&self) -> Result<Watchers, LabError> {
        let client = self.ns("client")?;
        let flows = (0..FLOWS)
            .map(|_| LongFlow::start(client, self.echo))
            .collect();
        let nodes = self.proxy_nodes()?.into();
        Ok(Watchers {
            flows,
            prober: Prober::start(client, self.echo, PROBE_EVERY),
            intruder: Prober::start(self.ns("intruder")?, self.echo, INTRUDE_EVERY),
            rss: RssSampler::start(nodes, Duration::from_millis(250)),
        })
    }
}

pub struct Watchers {
    flows: Vec<LongFlow>,
    prober: Prober,
    intruder: Prober,
    rss: RssSampler,
}

/// What the watchers saw.
pub struct Seen {
    pub flows: Vec<FlowOutcome>,
    pub probes: Vec<Probe>,
    pub intrusions: u64,
    pub peak_rss_kib: u64,
}

impl Watchers {
    pub async fn finish(self) -> Seen {
        let mut flows = Vec::new();
        for f in self.flows {
            flows.push(f.finish(STEP).await);
        }
        let probes = self.prober.finish().await;
        let intrusions = self.intruder.finish().await;
        Seen {
            flows,
            probes,
            intrusions: intrusions.iter().filter(|(_, ok)| *ok).count() as u64,
            peak_rss_kib: self.rss.finish().await,
        }
    }
}

/// Waits (bounded) until a fresh connection client → server works.
pub async fn wait_recovered(scene: &Scene) -> bool {
    let deadline = Instant::now() + RECOVER_WITHIN;
    while Instant::now() < deadline {
        if let Ok(client) = scene.ns("client")
            && crate::traffic::echo(client, scene.echo, b"back\n", Duration::from_secs(2))
                .await
                .is_ok_and(|b| b == b"back\n")
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The row from what was seen, with the case's own expectations: whether flows must survive,
/// and whether every probe during the fault must succeed.
pub struct Expect {
    pub flows_survive: bool,
    pub probes_never_fail: bool,
}

impl Expect {
    /// Every flow survives and every new connection succeeds.
    pub const NOTHING_FAILS: Expect = Expect {
        flows_survive: true,
        probes_never_fail: true,
    };
}

pub fn judge(
    case: Case,
    scale: Scale,
    seen: &Seen,
    fault_start: Instant,
    expect: Expect,
    mut problems: Vec<String>,
    mut observed: Vec<String>,
) -> Row {
    let cut: Vec<&str> = seen
        .flows
        .iter()
        .filter_map(|f| f.error.as_deref())
        .collect();
    if expect.flows_survive && !cut.is_empty() {
        problems.push(format!(
            "{} long flow(s) cut: {}",
            cut.len(),
            cut.join("; ")
        ));
    } else if !cut.is_empty() {
        observed.push(format!(
            "{} of {FLOWS} long flows cut, as expected",
            cut.len()
        ));
    }
    let lost: u64 = seen.flows.iter().map(FlowOutcome::lost).sum();
    if lost > 0 {
        problems.push(format!("{lost} bytes lost"));
    }
    let moved: u64 = seen
        .flows
        .iter()
        .filter(|f| f.error.is_none())
        .map(|f| f.verified)
        .sum();
    if moved > 0 {
        observed.push(format!("{:.1} MB echoed intact", moved as f64 / 1e6));
    }
    let failed = seen.probes.iter().filter(|(_, ok)| !ok).count();
    observed.push(format!(
        "{} of {} new connections failed",
        failed,
        seen.probes.len()
    ));
    if expect.probes_never_fail && failed > 0 {
        problems.push(format!("{failed} new connections failed"));
    }
    if seen.intrusions > 0 {
        problems.push(format!("{} denied connections admitted", seen.intrusions));
    }
    let rec = recovery(&seen.probes, fault_start);
    if rec.is_none() {
        problems.push("new connections still failing at the end".into());
    }
    Row {
        case,
        action: case.describe(scale),
        failure: (!problems.is_empty()).then(|| problems.join("; ")),
        observed: observed.join("; "),
        bytes_lost: lost,
        wrongly_admitted: seen.intrusions,
        peak_rss_kib: seen.peak_rss_kib,
        recovery: rec,
    }
}
