//! The demo scenario (`ambit-lab demo`, and the test that runs it): on a running [`Lab`] of
//! `examples/demo.yaml`, send a sha256-checked payload along every kind of flow the mesh has
//! (pod→pod across nodes and on one node, pod→service VIP, captured→uncaptured,
//! uncaptured→captured), and report per flow the path taken (HBONE or plain, read from the node
//! proxies' access logs), the bytes, the source address and peer identity the server side saw,
//! and whether all of it is what the mesh should do.
//!
//! Invariant: [`DemoReport::passed`] is true only if every flow met every expectation.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::accesslog::{self, LogLine};
use crate::traffic::{Server, ServerKind, bulk_send};
use crate::{Lab, LabError};

/// The port the demo's sink servers listen on in every pod.
pub const APP_PORT: u16 = 8080;
/// Bytes sent per flow.
pub const PAYLOAD: u64 = 1 << 20;
/// Bound on one flow, and on waiting for its access-log line.
const FLOW_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_WAIT: Duration = Duration::from_secs(5);
const LOG_POLL: Duration = Duration::from_millis(50);

/// How a flow crossed the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Through an HBONE tunnel (mTLS, HTTP/2 CONNECT to 15008).
    Hbone,
    /// Plain TCP (a side that is not in the mesh).
    Plain,
}

/// One flow to run.
#[derive(Debug, Clone)]
pub struct Flow {
    pub label: String,
    pub from: String,
    /// The pod the destination address belongs to (`None` for a service VIP).
    pub to_pod: Option<String>,
    /// The pods that may answer (the pod, or a service's endpoints).
    pub servers: Vec<String>,
    pub dst: SocketAddr,
    pub expect_path: PathKind,
    /// The SPIFFE identity the server side must see (HBONE flows).
    pub expect_identity: Option<String>,
}

/// What happened on one flow.
#[derive(Debug, Clone)]
pub struct FlowResult {
    pub flow: Flow,
    pub path: Option<PathKind>,
    pub bytes: u64,
    pub peer_seen: Option<String>,
    pub identity_seen: Option<String>,
    pub problems: Vec<String>,
}

/// The demo's outcome.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub run_id: String,
    pub flows: Vec<FlowResult>,
}

// === impl DemoReport ===

impl DemoReport {
    pub fn passed(&self) -> bool {
        !self.flows.is_empty() && self.flows.iter().all(|f| f.problems.is_empty())
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Hbone => "HBONE",
            PathKind::Plain => "plain",
        })
    }
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ambit-lab demo (run {})", self.run_id)?;
        writeln!(
            f,
            "{:<44} {:<6} {:>8}  {:<13} {:<45} result",
            "flow", "path", "bytes", "server saw", "peer identity"
        )?;
        for r in &self.flows {
            let path = r.path.map_or("?".to_string(), |p| p.to_string());
            let result = if r.problems.is_empty() {
                "ok".to_string()
            } else {
                format!("FAILED: {}", r.problems.join("; "))
            };
            writeln!(
                f,
                "{:<44} {:<6} {:>8}  {:<13} {:<45} {result}",
                r.flow.label,
                path,
                r.bytes,
                r.peer_seen.as_deref().unwrap_or("-"),
                r.identity_seen.as_deref().unwrap_or("(none: plain)"),
            )?;
        }
        let ok = self.flows.iter().filter(|r| r.problems.is_empty()).count();
        write!(f, "{ok}/{} flows as expected", self.flows.len())
    }
}

/// The flows of `examples/demo.yaml`: from `client`, to `web-1` (same node), `web-2` (other node),
/// service `web`, and uncaptured `legacy`; from `legacy` to `web-1`.
pub fn demo_flows(lab: &Lab) -> Result<Vec<Flow>, LabError> {
    let t = lab.topology();
    let pod = |name: &str| {
        t.pod(name).cloned().ok_or_else(|| LabError::NoSuchPod {
            pod: name.to_string(),
            hint: " in the demo topology".into(),
        })
    };
    let client = pod("client")?;
    let (web1, web2, legacy) = (pod("web-1")?, pod("web-2")?, pod("legacy")?);
    let svc = t.service("web").ok_or_else(|| LabError::NoSuchPod {
        pod: "service web".into(),
        hint: " in the demo topology".into(),
    })?;
    let (svc_port, _) = svc
        .ports
        .iter()
        .next()
        .map(|(p, t)| (*p, *t))
        .unwrap_or((80, APP_PORT));
    let vip = svc
        .vips
        .first()
        .copied()
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let to = |ip: std::net::Ipv4Addr, port| SocketAddr::new(IpAddr::V4(ip), port);
    let id = Some(client.spiffe());
    let flow = |label: &str,
                from: &str,
                to_pod: Option<&str>,
                servers: Vec<String>,
                dst,
                path,
                identity: Option<String>| Flow {
        label: label.to_string(),
        from: from.to_string(),
        to_pod: to_pod.map(str::to_string),
        servers,
        dst,
        expect_path: path,
        expect_identity: identity,
    };
    Ok(vec![
        flow(
            "client -> web-2 (pod, other node)",
            "client",
            Some("web-2"),
            vec!["web-2".into()],
            to(web2.ip, APP_PORT),
            PathKind::Hbone,
            id.clone(),
        ),
        flow(
            "client -> web-1 (pod, same node)",
            "client",
            Some("web-1"),
            vec!["web-1".into()],
            to(web1.ip, APP_PORT),
            PathKind::Hbone,
            id.clone(),
        ),
        flow(
            &format!("client -> web VIP {vip}:{svc_port}"),
            "client",
            None,
            svc.endpoints.clone(),
            SocketAddr::new(vip, svc_port),
            PathKind::Hbone,
            id,
        ),
        flow(
            "client -> legacy (uncaptured)",
            "client",
            Some("legacy"),
            vec!["legacy".into()],
            to(legacy.ip, APP_PORT),
            PathKind::Plain,
            None,
        ),
        flow(
            "legacy (uncaptured) -> web-1",
            "legacy",
            Some("web-1"),
            vec!["web-1".into()],
            to(web1.ip, APP_PORT),
            PathKind::Plain,
            None,
        ),
    ])
}

/// Starts a sink on [`APP_PORT`] in every pod, runs `flows` one after another, and reports.
pub async fn run(lab: &Lab, flows: Vec<Flow>) -> Result<DemoReport, LabError> {
    let mut servers = Vec::new();
    for pod in &lab.topology().pods {
        servers.push(Server::start(
            lab.pod_ns(&pod.name)?,
            ServerKind::Sink,
            APP_PORT,
        )?);
    }
    let mut results = Vec::new();
    for flow in flows {
        results.push(run_flow(lab, flow).await?);
    }
    drop(servers);
    Ok(DemoReport {
        run_id: lab.run_id().to_string(),
        flows: results,
    })
}

/// The logs that may record a flow: the server-side proxies (inbound) when the server is
/// captured, else the client-side proxy (outbound).
fn witness_logs(lab: &Lab, flow: &Flow) -> (Vec<PathBuf>, &'static str) {
    let t = lab.topology();
    let captured_servers: Vec<PathBuf> = flow
        .servers
        .iter()
        .filter(|s| t.pod(s).is_some_and(|p| p.captured))
        .filter_map(|s| lab.proxy_for(s).map(|p| p.log_path().to_path_buf()))
        .collect();
    if !captured_servers.is_empty() {
        let mut logs = captured_servers;
        logs.sort();
        logs.dedup();
        return (logs, "inbound");
    }
    let client = lab
        .proxy_for(&flow.from)
        .map(|p| p.log_path().to_path_buf());
    (client.into_iter().collect(), "outbound")
}

/// Access-log lines in `logs` of `direction` whose `key` address has IP `ip`.
fn matching_lines(logs: &[PathBuf], direction: &str, key: &str, ip: &str) -> Vec<String> {
    let dir = format!("direction={direction}");
    let (a, b) = (format!("{key}^={ip}:"), format!("{key}^=[::ffff:{ip}]:"));
    logs.iter()
        .filter_map(|l| std::fs::read_to_string(l).ok())
        .flat_map(|text| {
            accesslog::access_lines(&text, &[&dir])
                .into_iter()
                .filter(|l| l.has(&a) || l.has(&b))
                .map(|l| l.raw)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The value of field `key` of a log line, unquoted.
fn field(line: &str, key: &str) -> Option<String> {
    LogLine::parse(line)?.get(key).map(str::to_string)
}

async fn run_flow(lab: &Lab, flow: Flow) -> Result<FlowResult, LabError> {
    let t = lab.topology();
    let from = t
        .pod(&flow.from)
        .cloned()
        .ok_or_else(|| LabError::NoSuchPod {
            pod: flow.from.clone(),
            hint: String::new(),
        })?;
    let (logs, direction) = witness_logs(lab, &flow);
    // Inbound lines are keyed by the client's address, outbound ones by the destination's.
    let (key, ip) = if direction == "inbound" {
        ("src.addr", from.ip.to_string())
    } else {
        ("dst.addr", flow.dst.ip().to_string())
    };
    let before = matching_lines(&logs, direction, key, &ip).len();
    let mut r = FlowResult {
        flow: flow.clone(),
        path: None,
        bytes: 0,
        peer_seen: None,
        identity_seen: None,
        problems: Vec::new(),
    };
    match bulk_send(lab.pod_ns(&flow.from)?, flow.dst, PAYLOAD, FLOW_TIMEOUT).await {
        Ok(b) => {
            r.bytes = b.reply.bytes;
            r.peer_seen = Some(b.reply.peer.clone());
            if b.reply.bytes != b.sent || b.reply.sha256 != b.sha256 {
                r.problems.push(format!(
                    "sent {} bytes, server got {} (sha256 mismatch)",
                    b.sent, b.reply.bytes
                ));
            }
            if b.reply.peer != from.ip.to_string() {
                r.problems.push(format!(
                    "server saw {} instead of the client {}",
                    b.reply.peer, from.ip
                ));
            }
        }
        Err(e) => r.problems.push(e.to_string()),
    }
    // Read the proxies' verdict: the access line is written when the connection closes.
    let mut line = None;
    if !logs.is_empty() {
        let deadline = tokio::time::Instant::now() + LOG_WAIT;
        loop {
            let lines = matching_lines(&logs, direction, key, &ip);
            if lines.len() > before {
                line = lines.last().cloned();
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    }
    match (&line, direction) {
        (Some(l), "inbound") => {
            r.identity_seen = field(l, "src.identity");
            r.path = Some(if r.identity_seen.is_some() {
                PathKind::Hbone
            } else {
                PathKind::Plain
            });
        }
        (Some(l), _) => {
            r.path = Some(if field(l, "dst.hbone_addr").is_some() {
                PathKind::Hbone
            } else {
                PathKind::Plain
            });
        }
        // No proxy on either side: nothing of the mesh was involved.
        (None, _) if logs.is_empty() => r.path = Some(PathKind::Plain),
        (None, _) => r.problems.push(format!(
            "no {direction} access-log line within {LOG_WAIT:?}"
        )),
    }
    if let Some(p) = r.path
        && p != flow.expect_path
    {
        r.problems
            .push(format!("path {p}, expected {}", flow.expect_path));
    }
    if r.identity_seen != flow.expect_identity {
        r.problems.push(format!(
            "server-side identity {}, expected {}",
            r.identity_seen.as_deref().unwrap_or("none"),
            flow.expect_identity.as_deref().unwrap_or("none")
        ));
    }
    Ok(r)
}
