//! A real Prometheus (Debian package `prometheus`) scraping every node proxy of a lab
//! (`ambit-lab up --prometheus`, and the dashboards' test).
//!
//! It runs in the lab's underlay namespace, which reaches every node on its underlay address,
//! listens on `127.0.0.1:9090` there, scrapes each node proxy's `:15020/stats/prometheus` every
//! second (shared mode: one per node; dedicated mode: one per captured pod, on the pod's
//! address) and keeps its data in the run directory. The process is killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::http::{http_get, wait_http_ok};
use crate::{Lab, LabError, Process, ProcessSpec, ProxyMode};

/// Where Prometheus answers, inside the underlay namespace.
pub const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";
/// The node proxies' metrics port.
const METRICS_PORT: u16 = 15020;

/// A running Prometheus for one lab.
#[derive(Debug)]
pub struct LabPrometheus {
    process: Process,
    dir: PathBuf,
}

impl LabPrometheus {
    /// Writes the scrape config, starts Prometheus and waits (bounded) until it is ready.
    pub async fn start(lab: &Lab) -> Result<LabPrometheus, LabError> {
        let dir = lab.run_dir().join("prometheus");
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(|source| LabError::File {
            path: data.display().to_string(),
            source,
        })?;
        let targets: Vec<String> = match lab.mode() {
            ProxyMode::Shared => lab
                .topology()
                .nodes
                .iter()
                .map(|n| format!("'{}:{METRICS_PORT}'", n.underlay_ip))
                .collect(),
            ProxyMode::Dedicated => lab
                .topology()
                .pods
                .iter()
                .filter(|p| p.captured)
                .map(|p| format!("'{}:{METRICS_PORT}'", p.ip))
                .collect(),
        };
        let config = dir.join("prometheus.yml");
        let text = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n- job_name: ztunnel\n  metrics_path: /stats/prometheus\n  \
             static_configs:\n  - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(&config, text).map_err(|source| LabError::File {
            path: config.display().to_string(),
            source,
        })?;
        let spec = ProcessSpec::new("prometheus", "prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"));
        let mut process = Process::spawn(Some(lab.underlay()), &spec, &dir)?;
        wait_http_ok(
            lab.underlay(),
            addr(),
            "/-/ready",
            100,
            Duration::from_secs(1),
            Some(&mut process),
        )
        .await?;
        Ok(LabPrometheus { process, dir })
    }

    /// Where its data, config and log are.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The last lines of its log.
    pub fn tail(&self, n: usize) -> String {
        self.process.tail(n)
    }

    /// An instant PromQL query through the HTTP API: the `data.result` array. An answer that
    /// is not `success` (a query Prometheus cannot parse or evaluate) is an error.
    pub async fn query(&self, lab: &Lab, promql: &str) -> Result<Vec<Value>, LabError> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        let resp = http_get(lab.underlay(), addr(), &path, Duration::from_secs(10)).await?;
        let bad = |detail: String| LabError::NotReady {
            what: format!("prometheus query {promql:?}"),
            attempts: 1,
            last: detail,
        };
        let v: Value =
            serde_json::from_str(&resp.body).map_err(|e| bad(format!("{e}: {}", resp.body)))?;
        if v["status"] != "success" {
            return Err(bad(resp.body));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

fn addr() -> SocketAddr {
    // A constant that parses.
    PROMETHEUS_ADDR
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9090)))
}

/// Percent-encodes a query value.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
