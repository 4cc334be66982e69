//! The scenarios, run on labs of two nodes (one lab per node-proxy binary under test, all up at
//! once; their namespaces are disjoint). Each node has a captured and an uncaptured pod:
//! - *direct*: `cli-direct` → `srv-direct` (no proxy anywhere: the machine's limit);
//! - *hbone*: `cli` → `srv` (both captured: two node proxies, mTLS HTTP/2 tunnel between them);
//! - *plain*: `cli` → `srv-direct` (destination outside the mesh: the client's node proxy only).
//!
//! Invariants: every external program runs with a deadline; servers are [`Process`]es killed
//! when their lab drops; a failed measurement is an error naming the scenario, never a made-up
//! number.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ambit_lab::{Lab, LabOptions, Process, ProcessSpec, ProxyMode, Topology};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::procfs;
use crate::subjects::ProxySpec;
use crate::workload::{ConnRateOut, LatencyOut};

pub const RR_PORT: u16 = 7001;
pub const CONN_PORT: u16 = 7002;
pub const HOLD_PORT: u16 = 7003;
const IPERF_PORT: u16 = 5201;

const TOPOLOGY: &str = "
nodes:
  - name: node-1
  - name: node-2
pods:
  - {name: cli, serviceAccount: cli, node: node-1}
  - {name: cli-direct, serviceAccount: cli, node: node-1, captured: false}
  - {name: srv, serviceAccount: srv, node: node-2}
  - {name: srv-direct, serviceAccount: srv, node: node-2, captured: false}
";

/// Which way traffic goes (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Direct,
    Hbone,
    Plain,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Hbone => "ambit HBONE",
            PathKind::Plain => "ambit plain",
        }
    }
}

/// A proxy binary under test and the lab it runs in.
pub struct Subject {
    pub label: String,
    pub lab: Lab,
    _servers: Vec<Process>,
}

/// Starts a lab for `spec` (its binary, with its environment in every node proxy) with the
/// servers in both server pods, ready for traffic.
pub async fn start(spec: &ProxySpec, exe: &Path, rust_log: &str) -> Result<Subject> {
    let (label, binary) = (spec.label.as_str(), spec.binary.as_path());
    let opts = LabOptions {
        proxy: Some(binary.to_path_buf()),
        mode: ProxyMode::Shared,
        rust_log: rust_log.into(),
        proxy_env: spec.env.clone(),
        ..LabOptions::default()
    };
    let topology = Topology::from_yaml(TOPOLOGY).context("bench topology")?;
    let lab = Lab::start(topology, opts)
        .await
        .with_context(|| format!("lab for {label} ({})", binary.display()))?;
    // Room for many short connections: a wide port range, and TIME_WAIT reuse on the clients.
    for pod in ["cli", "cli-direct", "srv", "srv-direct"] {
        let ns = lab.pod_ns(pod)?;
        let _ = ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        let _ = ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
        let _ = ns.sysctl("net.core.somaxconn", "4096");
    }
    let mut servers = Vec::new();
    for pod in ["srv", "srv-direct"] {
        let ns = lab.pod_ns(pod)?;
        let iperf = ProcessSpec::new(format!("iperf3-{pod}"), "iperf3")
            .arg("-s")
            .arg("-p")
            .arg(IPERF_PORT.to_string());
        servers.push(Process::spawn(Some(ns), &iperf, lab.run_dir())?);
        let spec = ProcessSpec::new(format!("bench-server-{pod}"), exe)
            .arg("pod")
            .arg("serve");
        let server = Process::spawn(Some(ns), &spec, lab.run_dir())?;
        wait_for(|| server.log().contains("ready"), "bench server ready").await?;
        servers.push(server);
        let filter = format!("sport = :{IPERF_PORT}");
        wait_for(
            || {
                ns.run(&["ss", "-Hltn", &filter])
                    .is_ok_and(|o| !o.trim().is_empty())
            },
            "iperf3 listening",
        )
        .await?;
    }
    let subject = Subject {
        label: label.into(),
        lab,
        _servers: servers,
    };
    // One exchange on every path proves them up (certificates issued, pods announced).
    for kind in [PathKind::Direct, PathKind::Hbone, PathKind::Plain] {
        let mut last = None;
        for _ in 0..50 {
            match subject.latency(exe, kind, 1, 10, 0.1, false).await {
                Ok(out) if out.errors == 0 => {
                    last = None;
                    break;
                }
                Ok(out) => last = Some(anyhow::anyhow!("{} errors", out.errors)),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(e) = last {
            bail!("{label}: {} path never worked: {e:#}", kind.name());
        }
    }
    Ok(subject)
}

/// Polls `ready` every 50 ms for up to 10 s.
async fn wait_for(mut ready: impl FnMut() -> bool, what: &str) -> Result<()> {
    for _ in 0..200 {
        if ready() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what}: not within 10 s")
}

/// One iperf3 result.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Throughput {
    pub gbps: f64,
    /// CPU seconds the node proxies spent per GB received (none on the direct path).
    pub cpu_s_per_gb: Option<f64>,
}

impl Subject {
    fn ip(&self, pod: &str) -> Result<Ipv4Addr> {
        Ok(self
            .lab
            .topology()
            .pod(pod)
            .with_context(|| format!("no pod {pod}"))?
            .ip)
    }

    /// The client pod and the server address of a path.
    fn route(&self, kind: PathKind, port: u16) -> Result<(&'static str, SocketAddr)> {
        let (cli, srv) = match kind {
            PathKind::Direct => ("cli-direct", "srv-direct"),
            PathKind::Hbone => ("cli", "srv"),
            PathKind::Plain => ("cli", "srv-direct"),
        };
        Ok((cli, SocketAddr::from((self.ip(srv)?, port))))
    }

    fn proxy_pids(&self) -> Vec<u32> {
        ["node-1", "node-2"]
            .iter()
            .filter_map(|n| self.lab.proxy(n).map(Process::pid))
            .collect()
    }

    /// Saves `/debug/pprof/heap` of the node-1 and node-2 proxies (admin port, node's netns).
    async fn save_heap_profiles(&self, dir: &Path, count: u32) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        for node in ["node-1", "node-2"] {
            let ns = self.lab.node_ns(node).context("node netns")?;
            let label = self.label.replace(['/', ' '], "-");
            let file = dir.join(format!("heap-{label}-{count}-{node}.pb.gz"));
            let path = file.display().to_string();
            let url = "http://127.0.0.1:15000/debug/pprof/heap";
            let out = ns
                .exec(&["curl", "-sSf", "-o", &path, url], Duration::from_secs(60))
                .await?;
            if !out.status.success() {
                bail!(
                    "heap profile of {node}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            eprintln!("ambit-bench: saved {}", file.display());
        }
        Ok(())
    }

    /// RSS (KiB) of the node-1 and node-2 proxies.
    pub fn proxy_rss(&self) -> Vec<u64> {
        self.proxy_pids()
            .into_iter()
            .map(|p| procfs::rss_kib(p).unwrap_or(0))
            .collect()
    }

    fn proxy_cpu(&self) -> f64 {
        self.proxy_pids()
            .into_iter()
            .filter_map(procfs::cpu_seconds)
            .sum()
    }

    /// `iperf3 -c` from the path's client pod, `streams` parallel streams for `secs`.
    pub async fn iperf(&self, kind: PathKind, streams: u32, secs: u32) -> Result<Throughput> {
        let (cli, addr) = self.route(kind, IPERF_PORT)?;
        let ns = self.lab.pod_ns(cli)?;
        let ip = addr.ip().to_string();
        let (t, p) = (secs.to_string(), streams.to_string());
        let args = ["iperf3", "-c", &ip, "-p", "5201", "-t", &t, "-P", &p, "-J"];
        let mut last = String::new();
        // The server takes one test at a time; a retry covers the previous one's teardown.
        for _ in 0..3 {
            let cpu0 = self.proxy_cpu();
            let out = ns
                .exec(&args, Duration::from_secs(u64::from(secs) + 30))
                .await?;
            let cpu = self.proxy_cpu() - cpu0;
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let recv = &json["end"]["sum_received"];
            if let (true, Some(bps), Some(bytes)) = (
                out.status.success(),
                recv["bits_per_second"].as_f64(),
                recv["bytes"].as_f64(),
            ) && bytes > 0.0
            {
                let cpu_s_per_gb = (kind != PathKind::Direct).then(|| cpu / (bytes / 1e9));
                return Ok(Throughput {
                    gbps: bps / 1e9,
                    cpu_s_per_gb,
                });
            }
            last = json["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!("{}: iperf3 {} x{streams}: {last}", self.label, kind.name())
    }

    /// Runs `ambit-bench pod <args>` in the path's client pod and parses its last stdout line.
    async fn pod_client<T: serde::de::DeserializeOwned>(
        &self,
        exe: &Path,
        cli: &str,
        args: &[String],
        limit: Duration,
    ) -> Result<T> {
        let ns = self.lab.pod_ns(cli)?;
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", ns.name()])
            .arg(exe)
            .arg("pod")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(limit, cmd.output())
            .await
            .with_context(|| format!("pod client {args:?}: no result within {limit:?}"))??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| {
            format!(
                "pod client {args:?} ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }

    /// A fixed-rate latency run (see [`crate::workload::latency`]).
    pub async fn latency(
        &self,
        exe: &Path,
        kind: PathKind,
        size: u32,
        rate: u32,
        secs: f64,
        newconn: bool,
    ) -> Result<LatencyOut> {
        let port = if newconn { CONN_PORT } else { RR_PORT };
        let (cli, addr) = self.route(kind, port)?;
        let mut args = vec![
            "latency".to_string(),
            addr.to_string(),
            size.to_string(),
            rate.to_string(),
            secs.to_string(),
        ];
        if newconn {
            args.push("--newconn".into());
        }
        let limit = Duration::from_secs_f64(secs * 3.0 + 30.0);
        self.pod_client(exe, cli, &args, limit).await
    }

    /// A connection-rate run (see [`crate::workload::connrate`]).
    pub async fn connrate(
        &self,
        exe: &Path,
        kind: PathKind,
        secs: f64,
        workers: u32,
    ) -> Result<ConnRateOut> {
        let (cli, addr) = self.route(kind, CONN_PORT)?;
        let args = vec![
            "connrate".to_string(),
            addr.to_string(),
            secs.to_string(),
            workers.to_string(),
        ];
        let limit = Duration::from_secs_f64(secs + 30.0);
        self.pod_client(exe, cli, &args, limit).await
    }

    /// Holds `count` idle HBONE connections open and measures the proxies' RSS (KiB) meanwhile.
    /// Returns (connections held, errors, RSS per proxy).
    /// Holds `count` idle HBONE connections and reads the proxies' RSS; with `heap`, also saves
    /// each node proxy's heap profile into that directory while they are held.
    pub async fn hold(
        &self,
        exe: &Path,
        count: u32,
        heap: Option<(&Path, u32)>,
    ) -> Result<(u64, u64, Vec<u64>)> {
        let (cli, addr) = self.route(PathKind::Hbone, HOLD_PORT)?;
        let ns = self.lab.pod_ns(cli)?;
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(exe)
            .args(["pod", "hold", &addr.to_string(), &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawn hold client")?;
        let stdout = child.stdout.take().context("hold client stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(180), lines.next_line())
            .await
            .context("hold: connections not open within 180 s")??
            .unwrap_or_default();
        let mut it = line.split_whitespace().skip(1).map(|v| v.parse::<u64>());
        let (Some(Ok(held)), Some(Ok(errors))) = (it.next(), it.next()) else {
            bail!("hold client said {line:?}");
        };
        // Let the proxies finish their per-connection set-up before looking.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = self.proxy_rss();
        if let Some((dir, count)) = heap {
            self.save_heap_profiles(dir, count).await?;
        }
        // Closing stdin releases the connections; wait for the client, then for the proxies.
        drop(child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok((held, errors, rss))
    }
}
