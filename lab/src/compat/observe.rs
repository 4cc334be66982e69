//! What tools and operators read from a node proxy, observed on a running lab: the demo flows'
//! outcomes, the access-log lines each flow produced (their shape and the meaning of key
//! values), the `/config_dump` structure, `/logging` answers, metric families and label sets, the
//! HTTP statuses of good and bad CONNECTs on 15008, readiness.
//!
//! Invariant: an [`Observation`] holds no value that changes between runs (times, ports,
//! addresses, serials): two runs of the same proxy give equal observations, so any difference
//! between two proxies is a difference of behaviour.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::hbone_probe;
use super::logline::{self, Kind};
use crate::demo::{self, PAYLOAD};
use crate::{Lab, LabError, Netns, http_request, promtext};

const ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15000);
const STATS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15020);
const READY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15021);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on waiting for a flow's access-log lines (written when the connection closes).
const LOG_WAIT: Duration = Duration::from_secs(5);
const LOG_POLL: Duration = Duration::from_millis(50);

/// Everything observed of one proxy on the demo topology.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Flow label → `ok` or the problems the demo found.
    pub flows: BTreeMap<String, String>,
    /// Flow label → the access-log lines it produced, in a stable order.
    pub access_log: BTreeMap<String, Vec<LineShape>>,
    /// `path: type` of every value in `/config_dump` (arrays `[]`, keyed maps `{}`).
    pub config_dump: BTreeSet<String>,
    /// Admin and stats exchanges: `METHOD path` → status and body (normalised).
    pub http: BTreeMap<String, String>,
    /// Metric family → `type` and sorted label names.
    pub metrics: BTreeMap<String, Family>,
    /// A CONNECT (or other request) on 15008 → its outcome.
    pub hbone: BTreeMap<String, String>,
}

/// A log line's layout and the meaning of the values tools key on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LineShape {
    pub level: String,
    pub scope: String,
    pub message: String,
    /// `key: kind [= meaning]`, in written order.
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Family {
    #[serde(rename = "type")]
    pub kind: String,
    pub labels: BTreeSet<String>,
}

/// Runs the demo flows on `lab` and observes everything; the lab must run in control-plane mode
/// (the HBONE probes take their certificate from its CA).
pub async fn observe(lab: &Lab) -> Result<Observation, LabError> {
    let mut obs = Observation::default();
    let servers = demo::start_servers(lab)?;
    let client_ip = lab
        .topology()
        .pod("client")
        .map(|p| p.ip.to_string())
        .unwrap_or_default();
    for flow in demo::demo_flows(lab)? {
        let logs = proxy_logs(lab);
        let before: Vec<usize> = logs.iter().map(|l| access_lines(l).len()).collect();
        let label = flow.label.clone();
        // A service flow may land on any of its endpoints: which one is not a behaviour.
        let endpoints: Vec<String> = if flow.servers.len() > 1 {
            flow.servers.clone()
        } else {
            Vec::new()
        };
        let r = demo::run_flow(lab, flow).await?;
        obs.flows.insert(
            label.clone(),
            if r.problems.is_empty() {
                "ok".into()
            } else {
                r.problems.join("; ")
            },
        );
        // Each proxy that counted the connection writes one line when it closes.
        let deadline = tokio::time::Instant::now() + LOG_WAIT;
        let new_lines = loop {
            let new: Vec<String> = logs
                .iter()
                .zip(&before)
                .flat_map(|(l, n)| access_lines(l).into_iter().skip(*n))
                .collect();
            if new.len() >= r.counted || tokio::time::Instant::now() >= deadline {
                break new;
            }
            tokio::time::sleep(LOG_POLL).await;
        };
        let mut shapes: Vec<LineShape> = new_lines
            .iter()
            .map(|l| shape(l, &client_ip, &endpoints))
            .collect();
        shapes.sort();
        obs.access_log.insert(label, shapes);
    }

    let (node, ns) = first_proxy(lab)?;
    let dump = http_request(ns, "GET", ADMIN, "/config_dump", HTTP_TIMEOUT).await?;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&dump.body) {
        flatten("", &v, &mut obs.config_dump);
    } else {
        obs.config_dump
            .insert(format!("(not JSON: status {})", dump.status));
    }
    for (method, addr, path) in [
        ("POST", ADMIN, "/logging"),
        ("POST", ADMIN, "/logging?level=debug"),
        ("POST", ADMIN, "/logging?level=nonsense"),
        ("POST", ADMIN, "/logging?level=info"),
        ("GET", ADMIN, "/logging"),
        ("GET", ADMIN, "/no-such-page"),
        ("GET", STATS, "/stats/prometheus"),
        ("GET", READY, "/healthz/ready"),
    ] {
        let r = http_request(ns, method, addr, path, HTTP_TIMEOUT).await?;
        let body = if path.contains("prometheus") {
            String::new()
        } else {
            normalise_body(&r.body)
        };
        obs.http.insert(
            format!("{method} :{}{path}", addr.port()),
            format!("{} {body}", r.status).trim_end().to_string(),
        );
    }
    let text = http_request(ns, "GET", STATS, "/metrics", HTTP_TIMEOUT)
        .await?
        .body;
    obs.metrics = families(&text);
    obs.http.insert(
        "GET :15020/metrics: counter families are named".into(),
        counter_naming(&text).into(),
    );
    // The sinks stay up for the probes: a good CONNECT reaches a listening app.
    obs.hbone = hbone_probe::probe(lab, &node).await?;
    drop(servers);
    Ok(obs)
}

/// The first node proxy (by key) and its namespace.
fn first_proxy(lab: &Lab) -> Result<(String, &Netns), LabError> {
    lab.proxy_namespaces()
        .into_iter()
        .next()
        .map(|(k, ns)| (k.to_string(), ns))
        .ok_or_else(|| LabError::Usage("the lab runs no node proxy".into()))
}

fn proxy_logs(lab: &Lab) -> Vec<PathBuf> {
    lab.proxy_namespaces()
        .iter()
        .filter_map(|(k, _)| lab.proxy(k).map(|p| p.log_path().to_path_buf()))
        .collect()
}

/// The access lines of a log: Istio-layout lines of scope `access`, and, so that a proxy in
/// another layout shows up as a difference rather than as silence, any other line that mentions
/// a connection's direction.
fn access_lines(path: &PathBuf) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| match logline::parse(l) {
            Some(p) => p.scope == "access",
            None => l.contains("direction="),
        })
        .map(str::to_string)
        .collect()
}

fn shape(line: &str, client_ip: &str, endpoints: &[String]) -> LineShape {
    let Some(l) = logline::parse(line) else {
        return LineShape {
            level: "?".into(),
            scope: "(not in Istio's layout)".into(),
            message: String::new(),
            fields: Vec::new(),
        };
    };
    let fields = l
        .fields
        .iter()
        .map(|(k, v, kind)| {
            let kind = match kind {
                Kind::String => "string",
                Kind::Number => "number",
                Kind::Bare => "bare",
            };
            match meaning(k, v, client_ip, endpoints) {
                Some(m) => format!("{k}: {kind} = {m}"),
                None => format!("{k}: {kind}"),
            }
        })
        .collect();
    LineShape {
        level: l.level,
        scope: l.scope,
        message: l.message,
        fields,
    }
}

/// What a value means, for the keys whose meaning tools rely on; `None` for the others.
fn meaning(key: &str, value: &str, client_ip: &str, endpoints: &[String]) -> Option<String> {
    let port = |v: &str| v.rsplit(':').next().unwrap_or("").to_string();
    let ip = |v: &str| {
        v.rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']).trim_start_matches("::ffff:"))
            .unwrap_or("")
            .to_string()
    };
    Some(match key {
        "src.workload" | "dst.workload" if endpoints.iter().any(|e| e == value) => {
            "one of the service's endpoints".into()
        }
        "direction" | "src.workload" | "dst.workload" | "src.namespace" | "dst.namespace"
        | "src.identity" | "dst.identity" | "dst.service" | "src.cluster" | "dst.cluster" => {
            value.to_string()
        }
        "src.addr" => {
            if ip(value) == client_ip {
                "the client".into()
            } else {
                "another address".into()
            }
        }
        "dst.addr" | "dst.hbone_addr" => match port(value).as_str() {
            "15008" => "a tunnel endpoint (:15008)".into(),
            "8080" | "80" => "the app (:8080) or service (:80)".into(),
            p => format!("port {p}"),
        },
        "bytes_sent" | "bytes_recv" => match value.parse::<u64>() {
            Ok(n) if n == PAYLOAD => "the payload".into(),
            Ok(n) if n < PAYLOAD => "less than the payload (the reply)".into(),
            Ok(_) => "more than the payload".into(),
            Err(_) => "not a number".into(),
        },
        "duration" => {
            if value.ends_with("ms") {
                "<n>ms".into()
            } else {
                "other unit".into()
            }
        }
        _ => return None,
    })
}

/// The JSON type of a value, as JSON Schema names it.
pub fn json_type(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Flattens JSON into `path: type` lines. Arrays collapse to `[]`; objects whose keys are data
/// (uids, addresses, ports) collapse to `{}`.
pub fn flatten(path: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
    use serde_json::Value;
    let ty = json_type(v);
    if !path.is_empty() {
        out.insert(format!("{path}: {ty}"));
    }
    match v {
        Value::Array(items) => {
            for item in items {
                flatten(&format!("{path}[]"), item, out);
            }
        }
        Value::Object(map) => {
            let keyed = map.keys().any(|k| is_data_key(k));
            for (k, item) in map {
                let seg = if keyed { "{}".to_string() } else { k.clone() };
                let p = if path.is_empty() {
                    seg
                } else {
                    format!("{path}.{seg}")
                };
                flatten(&p, item, out);
            }
        }
        _ => {}
    }
}

fn is_data_key(k: &str) -> bool {
    k.contains('/') || k.contains(':') || k.parse::<u64>().is_ok() || k.contains('.')
}

/// A body's first line without run-specific values (digits become `N`): the line tools and
/// people read; what follows (usage text) is each proxy's own wording.
fn normalise_body(body: &str) -> String {
    let first = body.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let one_line: String = first.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    let mut in_digits = false;
    for c in one_line.chars().take(300) {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    out
}

/// How the `# TYPE` line names a counter family: after its samples (`x_total`, the classic text
/// format) or without the suffix (OpenMetrics).
fn counter_naming(text: &str) -> &'static str {
    let counters: Vec<String> = promtext::types(text)
        .into_iter()
        .filter(|(_, t)| t == "counter")
        .map(|(n, _)| n)
        .collect();
    match (
        counters.iter().any(|n| n.ends_with("_total")),
        counters.iter().any(|n| !n.ends_with("_total")),
    ) {
        (true, false) => "after their samples (x_total)",
        (false, true) => "without _total (OpenMetrics style)",
        (true, true) => "both ways",
        (false, false) => "(no counters)",
    }
}

/// Metric families with their type and label names. Counter families are keyed by their sample
/// name (`x_total`) whichever way the `# TYPE` line names them; [`counter_naming`] records that.
pub fn families(text: &str) -> BTreeMap<String, Family> {
    let types: BTreeMap<String, String> = promtext::types(text)
        .into_iter()
        .map(|(name, kind)| {
            if kind == "counter" && !name.ends_with("_total") {
                (format!("{name}_total"), kind)
            } else {
                (name, kind)
            }
        })
        .collect();
    let samples = promtext::samples(text);
    let mut out = BTreeMap::new();
    for (name, kind) in types {
        let mut labels = BTreeSet::new();
        for s in samples.iter().filter(|s| belongs(&s.name, &name)) {
            labels.extend(
                s.labels
                    .iter()
                    .map(|(k, _)| k.clone())
                    .filter(|k| k != "le" && k != "quantile"),
            );
        }
        out.insert(name, Family { kind, labels });
    }
    out
}

fn belongs(sample: &str, family: &str) -> bool {
    sample == family
        || family
            .strip_suffix("_total")
            .is_some_and(|base| sample == format!("{base}_created"))
        || sample.strip_prefix(family).is_some_and(|rest| {
            ["_total", "_bucket", "_sum", "_count", "_created", "_info"].contains(&rest)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_json_with_data_keys_collapsed() {
        let v: serde_json::Value = serde_json::json!({
            "workloads": [{"uid": "a", "workloadIps": ["10.0.0.1"]}],
            "workloadState": {"Kubernetes//Pod/default/client": {"state": "Up"}},
            "services": [{"ports": {"80": 8080}}],
        });
        let mut out = BTreeSet::new();
        flatten("", &v, &mut out);
        let want: BTreeSet<String> = [
            "workloads: array",
            "workloads[]: object",
            "workloads[].uid: string",
            "workloads[].workloadIps: array",
            "workloads[].workloadIps[]: string",
            "workloadState: object",
            "workloadState.{}: object",
            "workloadState.{}.state: string",
            "services: array",
            "services[]: object",
            "services[].ports: object",
            "services[].ports.{}: number",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn meanings_hide_run_specific_values() {
        assert_eq!(
            meaning("dst.addr", "10.244.2.2:15008", "10.244.1.2", &[]).as_deref(),
            Some("a tunnel endpoint (:15008)")
        );
        assert_eq!(
            meaning("src.addr", "[::ffff:10.244.1.2]:4000", "10.244.1.2", &[]).as_deref(),
            Some("the client")
        );
        assert_eq!(
            meaning("bytes_sent", "1048576", "", &[]).as_deref(),
            Some("the payload")
        );
        assert_eq!(meaning("other", "x", "", &[]), None);
        let eps = ["web-1".to_string(), "web-2".to_string()];
        assert_eq!(
            meaning("dst.workload", "web-2", "", &eps).as_deref(),
            Some("one of the service's endpoints")
        );
        assert_eq!(
            meaning("dst.workload", "web-2", "", &[]).as_deref(),
            Some("web-2")
        );
        assert_eq!(
            normalise_body("current log level is info 12\n"),
            "current log level is info N"
        );
    }

    #[test]
    fn families_collect_label_names() {
        let text = "# TYPE istio_build gauge\nistio_build{component=\"ztunnel\",tag=\"unknown\"} 1\n\
# TYPE istio_tcp_connections_opened counter\nistio_tcp_connections_opened_total{reporter=\"source\"} 1\n";
        let f = families(text);
        assert_eq!(f["istio_build"].kind, "gauge");
        assert_eq!(
            f["istio_build"].labels.iter().collect::<Vec<_>>(),
            ["component", "tag"]
        );
        assert!(
            f["istio_tcp_connections_opened_total"]
                .labels
                .contains("reporter")
        );
        assert_eq!(counter_naming(text), "without _total (OpenMetrics style)");
    }
}
