//! The demo scenario (`ambit-lab demo`, and the test that runs it): on a running [`Lab`] of
//! `examples/demo.yaml`, send a sha256-checked payload along every kind of flow the mesh has
//! (pod→pod across nodes and on one node, pod→service VIP, captured→uncaptured,
//! uncaptured→captured), and report per flow the path taken (HBONE or plain, read from the wire),
//! the bytes, the source address the server saw, the peer identity the server-side proxy reported
//! in Istio's metrics, and whether all of it is what the mesh should do. Nothing is read from a
//! proxy's log, so the verdicts hold for any ztunnel-compatible proxy (see [`crate::witness`]).
//!
//! Invariant: [`DemoReport::passed`] is true only if every flow met every expectation.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::traffic::{Server, ServerKind, bulk_send};
use crate::witness::{self, Reading};
use crate::{Lab, LabError};

/// The port the demo's sink servers listen on in every pod.
pub const APP_PORT: u16 = 8080;
/// Bytes sent per flow.
pub const PAYLOAD: u64 = 1 << 20;
/// Bound on one flow, and on waiting for a proxy to count it.
const FLOW_TIMEOUT: Duration = Duration::from_secs(20);
const COUNT_WAIT: Duration = Duration::from_secs(5);
const COUNT_POLL: Duration = Duration::from_millis(50);

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
    /// Connections the node proxies counted for this flow (each side that saw it counts one).
    pub counted: usize,
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

/// Installs the wire counters and starts a sink on [`APP_PORT`] in every pod; the sinks stop
/// when the returned servers are dropped.
pub fn start_servers(lab: &Lab) -> Result<Vec<Server>, LabError> {
    witness::install(lab)?;
    let mut servers = Vec::new();
    for pod in &lab.topology().pods {
        servers.push(Server::start(
            lab.pod_ns(&pod.name)?,
            ServerKind::Sink,
            APP_PORT,
        )?);
    }
    Ok(servers)
}

/// Starts a sink on [`APP_PORT`] in every pod, runs `flows` one after another, and reports.
pub async fn run(lab: &Lab, flows: Vec<Flow>) -> Result<DemoReport, LabError> {
    let servers = start_servers(lab)?;
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

/// Runs one flow (the sink servers must be up: [`start_servers`]) and judges it.
pub async fn run_flow(lab: &Lab, flow: Flow) -> Result<FlowResult, LabError> {
    let t = lab.topology();
    let from = t
        .pod(&flow.from)
        .cloned()
        .ok_or_else(|| LabError::NoSuchPod {
            pod: flow.from.clone(),
            hint: String::new(),
        })?;
    let server_captured = flow
        .servers
        .iter()
        .any(|s| t.pod(s).is_some_and(|p| p.captured));
    let client_captured = from.captured;
    let before = witness::snapshot(lab).await?;
    let mut r = FlowResult {
        flow: flow.clone(),
        path: None,
        bytes: 0,
        peer_seen: None,
        identity_seen: None,
        counted: 0,
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
    // The proxy that must have counted the flow: the server's (inbound) when it is captured, else
    // the client's (outbound); a connection is counted when it opens, so the count may trail the
    // flow's end by a moment: poll, bounded.
    let reporter = if server_captured {
        Some("destination")
    } else if client_captured {
        Some("source")
    } else {
        None
    };
    let deadline = tokio::time::Instant::now() + COUNT_WAIT;
    let reading = loop {
        let reading = Reading::between(&before, &witness::snapshot(lab).await?);
        let seen = reporter.is_none_or(|rep| reading.by(rep).next().is_some());
        if seen || tokio::time::Instant::now() >= deadline {
            break reading;
        }
        tokio::time::sleep(COUNT_POLL).await;
    };
    r.counted = reading.counted.len();
    r.path = path_of(reading.hbone_bytes);
    if r.path.is_none() {
        r.problems.push(format!(
            "{} bytes crossed port 15008 for a {PAYLOAD}-byte flow: neither tunneled nor plain",
            reading.hbone_bytes
        ));
    }
    if let Some(rep) = reporter {
        let counted: Vec<_> = reading.by(rep).collect();
        if counted.is_empty() {
            r.problems.push(format!(
                "no node proxy counted the connection as {rep} within {COUNT_WAIT:?}"
            ));
        }
        // Only the server side knows the identity its peer proved.
        if rep == "destination" {
            r.identity_seen = counted.iter().find_map(|c| c.principal.clone());
        }
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

/// The path a flow took, from the bytes it put on port 15008: a tunneled flow carries the whole
/// payload there (plus framing), a plain one nothing but stray pool traffic.
fn path_of(hbone_bytes: u64) -> Option<PathKind> {
    if hbone_bytes >= PAYLOAD {
        Some(PathKind::Hbone)
    } else if hbone_bytes < PAYLOAD / 16 {
        Some(PathKind::Plain)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_decides_the_path() {
        assert_eq!(path_of(PAYLOAD + 4096), Some(PathKind::Hbone));
        assert_eq!(path_of(0), Some(PathKind::Plain));
        assert_eq!(path_of(600), Some(PathKind::Plain), "a pool ping");
        assert_eq!(path_of(PAYLOAD / 2), None);
    }
}
