//! The report: what every scenario measured (serialised as the JSON file) and its markdown
//! rendering, with each number's ratio to *direct* and to the first proxy binary.
//! Invariant: a ratio is printed only where both sides were measured; the rendering never
//! invents a number (missing ones print as `–`).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write;

use crate::cli::Scenario;
use crate::procfs::Machine;
use crate::scenarios::PathKind;

#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub quick: bool,
    pub rounds: u32,
    pub wall_secs: f64,
    pub machine: Machine,
    pub proxies: Vec<ProxyRef>,
    pub throughput: Vec<TputRow>,
    pub latency: Vec<LatRow>,
    pub connrate: Vec<ConnRow>,
    pub memory: Vec<MemRow>,
    pub pushes: Vec<crate::push::PushRow>,
    pub control_plane: Option<ControlPlane>,
}

#[derive(Debug, Serialize)]
pub struct ProxyRef {
    pub label: String,
    pub binary: String,
    /// Extra environment of its node proxies (`--transport`, `--proxy-env`).
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct TputRow {
    pub streams: u32,
    pub path: PathKind,
    /// The proxy binary's label; `None` on the direct path.
    pub proxy: Option<String>,
    /// Mean over the rounds.
    pub gbps: f64,
    pub runs: Vec<f64>,
    pub cpu_s_per_gb: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct LatRow {
    pub scenario: String,
    pub path: PathKind,
    pub proxy: Option<String>,
    pub count: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// (percentile, µs) points of the distribution, for the chart.
    pub curve: Vec<(f64, f64)>,
}

#[derive(Debug, Serialize)]
pub struct ConnRow {
    pub path: PathKind,
    pub proxy: Option<String>,
    pub per_sec: f64,
    pub ok: u64,
    pub errors: u64,
}

#[derive(Debug, Serialize)]
pub struct MemRow {
    pub proxy: String,
    pub conns: u32,
    pub held: u64,
    pub errors: u64,
    /// RSS (KiB) of the node-1 and node-2 proxies with no connection open.
    pub idle_kib: Vec<u64>,
    /// RSS (KiB) of the node-1 and node-2 proxies while `held` connections are open.
    pub rss_kib: Vec<u64>,
    /// Growth of both proxies together per held connection.
    pub bytes_per_conn: f64,
}

#[derive(Debug, Serialize)]
pub struct ControlPlane {
    pub profile: String,
    pub full_push_ms: Option<f64>,
    pub small_delta_ms: Option<f64>,
    pub peak_mib: Option<f64>,
    pub output: String,
}

/// The percentile points of the latency chart.
const CURVE: [f64; 12] = [
    0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
];

impl LatRow {
    pub fn from_hist(
        scenario: &str,
        path: PathKind,
        proxy: Option<String>,
        h: &Histogram<u64>,
        errors: u64,
    ) -> LatRow {
        let us = |q: f64| h.value_at_quantile(q / 100.0) as f64 / 1000.0;
        LatRow {
            scenario: scenario.into(),
            path,
            proxy,
            count: h.len(),
            errors,
            p50_us: us(50.0),
            p90_us: us(90.0),
            p99_us: us(99.0),
            p999_us: us(99.9),
            max_us: h.max() as f64 / 1000.0,
            curve: CURVE.iter().map(|&q| (q, us(q))).collect(),
        }
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn who(path: PathKind, proxy: &Option<String>) -> String {
    match proxy {
        Some(p) => format!("{} ({p})", path.name()),
        None => path.name().into(),
    }
}

impl Report {
    fn first(&self) -> Option<&str> {
        self.proxies.first().map(|p| p.label.as_str())
    }

    /// The markdown tables (also what `bench/RESULTS.md` embeds).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let first = self.first().unwrap_or_default().to_string();
        let vs_first = format!("vs {first}");
        let _ = writeln!(s, "### Throughput (iperf3, node 1 → node 2)\n");
        let _ = writeln!(
            s,
            "| streams | path | Gbit/s | vs direct | {vs_first} | proxy CPU s/GB |\n|---|---|---|---|---|---|"
        );
        for r in &self.throughput {
            let direct = self
                .throughput
                .iter()
                .find(|d| d.streams == r.streams && d.path == PathKind::Direct)
                .map(|d| d.gbps);
            let base = self
                .throughput
                .iter()
                .find(|d| {
                    d.streams == r.streams
                        && d.path == r.path
                        && d.proxy.as_deref() == Some(first.as_str())
                })
                .map(|d| d.gbps);
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {} | {} | {} |",
                r.streams,
                who(r.path, &r.proxy),
                r.gbps,
                ratio(Some(r.gbps), direct),
                if r.proxy.is_some() {
                    ratio(Some(r.gbps), base)
                } else {
                    "–".into()
                },
                opt(r.cpu_s_per_gb, 2)
            );
        }
        let _ = writeln!(
            s,
            "\n### Latency (µs; fixed rate, measured from each request's scheduled time)\n"
        );
        let _ = writeln!(
            s,
            "| scenario | path | n | errors | p50 | p90 | p99 | p99.9 | max | p99 vs direct | added p50 / p99 | p99 {vs_first} |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &self.latency {
            let direct = self
                .latency
                .iter()
                .find(|d| d.scenario == r.scenario && d.path == PathKind::Direct);
            let base = self.latency.iter().find(|d| {
                d.scenario == r.scenario && d.path == r.path && d.proxy.as_deref() == Some(&first)
            });
            let added = match (direct, r.path) {
                (Some(d), p) if p != PathKind::Direct => {
                    format!("{:+.0} / {:+.0}", r.p50_us - d.p50_us, r.p99_us - d.p99_us)
                }
                _ => "–".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {added} | {} |",
                r.scenario,
                who(r.path, &r.proxy),
                r.count,
                r.errors,
                r.p50_us,
                r.p90_us,
                r.p99_us,
                r.p999_us,
                r.max_us,
                ratio(Some(r.p99_us), direct.map(|d| d.p99_us)),
                if r.proxy.is_some() {
                    ratio(Some(r.p99_us), base.map(|b| b.p99_us))
                } else {
                    "–".into()
                },
            );
        }
        let _ = writeln!(
            s,
            "\n### Connection rate (open, 1 KiB each way, close; concurrent workers)\n"
        );
        let _ = writeln!(
            s,
            "| path | conn/s | ok | errors | vs direct | {vs_first} |\n|---|---|---|---|---|---|"
        );
        for r in &self.connrate {
            let direct = self
                .connrate
                .iter()
                .find(|d| d.path == PathKind::Direct)
                .map(|d| d.per_sec);
            let base = self
                .connrate
                .iter()
                .find(|d| d.path == r.path && d.proxy.as_deref() == Some(&first))
                .map(|d| d.per_sec);
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {} | {} | {} |",
                who(r.path, &r.proxy),
                r.per_sec,
                r.ok,
                r.errors,
                ratio(Some(r.per_sec), direct),
                if r.proxy.is_some() {
                    ratio(Some(r.per_sec), base)
                } else {
                    "–".into()
                },
            );
        }
        let _ = writeln!(
            s,
            "\n### Memory (RSS of the node proxies, KiB: node 1 + node 2; idle HBONE connections)\n"
        );
        let _ = writeln!(
            s,
            "| proxy | connections held (errors) | idle RSS | RSS held | bytes / connection | {vs_first} |\n|---|---|---|---|---|---|"
        );
        for r in &self.memory {
            let base = self
                .memory
                .iter()
                .find(|d| d.conns == r.conns && d.proxy == first)
                .map(|d| d.bytes_per_conn);
            let kib = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" + ");
            let _ = writeln!(
                s,
                "| {} | {} ({}) | {} | {} | {:.0} | {} |",
                r.proxy,
                r.held,
                r.errors,
                kib(&r.idle_kib),
                kib(&r.rss_kib),
                r.bytes_per_conn,
                ratio(Some(r.bytes_per_conn), base)
            );
        }
        self.push_markdown(&mut s, &first);
        if let Some(cp) = &self.control_plane {
            let _ = writeln!(
                s,
                "\n### Control plane (`xds_apply`, {} build: 10,000 workloads + 1,000 services)\n",
                cp.profile
            );
            let _ = writeln!(
                s,
                "| full push applied + ACKed (ms) | small delta (ms) | peak memory (MiB) |\n|---|---|---|\n| {} | {} | {} |",
                opt(cp.full_push_ms, 1),
                opt(cp.small_delta_ms, 1),
                opt(cp.peak_mib, 1)
            );
        }
        s
    }

    /// Every scenario that ran (`ran`) produced numbers (the `--quick` smoke test's assertion):
    /// a list of what is missing, empty when complete.
    pub fn missing(&self, proxies: usize, ran: impl Fn(Scenario) -> bool) -> Vec<String> {
        let mut m = Vec::new();
        let want_tput = 2 * (1 + 2 * proxies);
        if ran(Scenario::Throughput)
            && (self.throughput.len() != want_tput || self.throughput.iter().any(|r| r.gbps <= 0.0))
        {
            m.push(format!(
                "throughput: {} of {want_tput} rows with numbers",
                self.throughput.len()
            ));
        }
        let want_lat = 3 * (1 + proxies);
        if ran(Scenario::Latency)
            && (self.latency.len() != want_lat || self.latency.iter().any(|r| r.count == 0))
        {
            m.push(format!(
                "latency: {} of {want_lat} rows with samples",
                self.latency.len()
            ));
        }
        if ran(Scenario::Connrate)
            && (self.connrate.len() != 1 + proxies || self.connrate.iter().any(|r| r.ok == 0))
        {
            m.push("connection rate: a path completed no connection".into());
        }
        if ran(Scenario::Push)
            && (self.pushes.len() != proxies || self.pushes.iter().any(|r| r.push_ms.is_empty()))
        {
            m.push("push: a binary has no push figure".into());
        }
        if ran(Scenario::Memory)
            && (self.memory.len() != 2 * proxies || self.memory.iter().any(|r| r.held == 0))
        {
            m.push("memory: a run held no connection".into());
        }
        match &self.control_plane {
            Some(cp) if cp.full_push_ms.is_some() && cp.small_delta_ms.is_some() => {}
            Some(cp) => m.push(format!("control plane: no figures in {:?}", cp.output)),
            None => {}
        }
        m
    }

    fn push_markdown(&self, s: &mut String, first: &str) {
        use crate::push::mean;
        let Some(p0) = self.pushes.first() else {
            return;
        };
        let _ = writeln!(
            s,
            "\n### Control-plane push through the lab's control plane ({} workloads + {} services in one delta; push → ACK, both nodes)\n",
            p0.workloads, p0.services
        );
        let _ = writeln!(
            s,
            "| proxy | push → ACK ms (mean) | samples | removal → ACK ms (mean) | RSS before push | RSS holding it | vs {first} (push) |\n|---|---|---|---|---|---|---|"
        );
        let base = self
            .pushes
            .iter()
            .find(|r| r.proxy == first)
            .and_then(|r| mean(&r.push_ms));
        let kib = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" + ");
        for r in &self.pushes {
            let samples: Vec<String> = r.push_ms.iter().map(|v| format!("{v:.0}")).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.proxy,
                opt(mean(&r.push_ms), 1),
                samples.join(", "),
                opt(mean(&r.remove_ms), 1),
                kib(&r.rss_before_kib),
                kib(&r.rss_loaded_kib),
                ratio(mean(&r.push_ms), base)
            );
        }
    }
}
