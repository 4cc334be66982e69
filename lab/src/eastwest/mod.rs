//! The east-west gateway stand-in: what Istio's east-west gateway does for double HBONE, in a
//! lab namespace of its own on the underlay (reachable from every network).
//!
//! It terminates the *outer* HBONE (mutual TLS with its own identity, from the lab's CA, then
//! HTTP/2 CONNECT, on `tokio-rustls` and `h2` directly: [`outer`], not ambit's own `tls` and
//! `hbone` code), resolves the `hostname:port`
//! authority to an endpoint of that service on its network, and pipes the stream's raw bytes,
//! still the client's inner TLS, never decrypted, to that endpoint's `ip:15008`.
//!
//! Invariants: one log line per CONNECT (authority, peer identity, where it went, the status
//! answered), appended to its log file and kept for tests; `200` only once the endpoint's 15008
//! accepted the TCP connection, else `503`; an authority that is not `hostname:port`, or names
//! no service with an endpoint on this network, is refused (`400` / `503`), never guessed.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ambit::core::Identity;
use ambit::tls::WorkloadCertificate;
use http::StatusCode;
use tokio::task::JoinHandle;

use crate::control_ca::KeyedCert;
use crate::topology::networks::GATEWAY_HBONE_PORT;
use crate::topology::{EastWestGateway, Topology};
use crate::{LabError, Netns};

mod outer;

/// How long the gateway waits for an endpoint's 15008 to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running gateway: its namespace and the task serving in it (aborted on drop).
#[derive(Debug)]
pub struct GatewayServer {
    spec: EastWestGateway,
    log: Arc<GatewayLog>,
    task: JoinHandle<()>,
    /// Shared with the connection tasks (they dial endpoints from inside it), so the namespace
    /// goes when the last of them ends.
    netns: Arc<Netns>,
}

/// Service endpoints on the gateway's network: `(hostname, service port)` → endpoint pod IPs.
pub type Routes = BTreeMap<(String, u16), Vec<Ipv4Addr>>;

/// The gateway's CONNECT log.
#[derive(Debug)]
struct GatewayLog {
    path: PathBuf,
    lines: Mutex<Vec<String>>,
}

// === impl GatewayServer ===

impl GatewayServer {
    /// Serves on `<gateway ip>:15008` inside `netns` with `cert`, forwarding to `routes`; logs
    /// to `<log_dir>/eastwest-<name>.log`. Needs a tokio runtime.
    pub fn start(
        netns: Netns,
        spec: EastWestGateway,
        cert: Arc<WorkloadCertificate>,
        routes: Routes,
        log_dir: &Path,
    ) -> Result<GatewayServer, LabError> {
        let addr = SocketAddr::from((spec.ip, GATEWAY_HBONE_PORT));
        let listener = netns.tcp_listener(addr)?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|source| LabError::Socket {
                netns: netns.name().to_string(),
                op: format!("listen {addr}"),
                source,
            })?;
        let log = Arc::new(GatewayLog {
            path: log_dir.join(format!("eastwest-{}.log", spec.name)),
            lines: Mutex::new(Vec::new()),
        });
        let netns = Arc::new(netns);
        let ctx = Arc::new(Context {
            netns: netns.clone(),
            routes,
            log: log.clone(),
            network: spec.network.clone(),
        });
        let acceptor = outer::acceptor(&cert).map_err(|detail| LabError::ControlPlane {
            what: "east-west gateway TLS".into(),
            detail,
        })?;
        let task = tokio::spawn(serve(listener, acceptor, ctx));
        Ok(GatewayServer {
            spec,
            log,
            task,
            netns,
        })
    }

    pub fn spec(&self) -> &EastWestGateway {
        &self.spec
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn log_path(&self) -> &Path {
        &self.log.path
    }

    /// The CONNECT lines logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lines()
    }

    /// Waits (bounded by `within`) for a logged line containing every one of `needles`.
    pub async fn wait_line(&self, needles: &[&str], within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(l) = self
                .lines()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Some(l);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for GatewayServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The endpoints of every service on `network`, from the topology: captured pods only (the
/// gateway delivers to their node proxy's 15008), or the service's waypoint pod when it is on
/// `network`.
pub fn routes(topology: &Topology, network: &str) -> Routes {
    let mut out = Routes::new();
    for svc in &topology.services {
        // A service whose waypoint is on this network is handed to the waypoint, as Istio's
        // gateway does (the client asked for the service; its waypoint must see it).
        let waypoint = svc
            .waypoint
            .as_deref()
            .and_then(|wp| topology.pod(wp))
            .filter(|wp| topology.network_of(wp) == network);
        let ips: Vec<Ipv4Addr> = match waypoint {
            Some(wp) => vec![wp.ip],
            None => topology
                .pods
                .iter()
                .filter(|p| p.namespace == svc.namespace && svc.endpoints.contains(&p.name))
                .filter(|p| p.captured && topology.network_of(p) == network)
                .map(|p| p.ip)
                .collect(),
        };
        if ips.is_empty() {
            continue;
        }
        for port in svc.ports.keys() {
            out.insert((svc.hostname.clone(), *port), ips.clone());
        }
    }
    out
}

/// A certificate for the gateway's identity from its parts (DER).
pub fn certificate(c: KeyedCert) -> Result<Arc<WorkloadCertificate>, LabError> {
    use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    WorkloadCertificate::new(
        vec![CertificateDer::from(c.leaf)],
        PrivatePkcs8KeyDer::from(c.key),
        vec![CertificateDer::from(c.root)],
    )
    .map(Arc::new)
    .map_err(|e| LabError::ControlPlane {
        what: "east-west gateway certificate".into(),
        detail: e.to_string(),
    })
}

// === the server ===

struct Context {
    netns: Arc<Netns>,
    routes: Routes,
    log: Arc<GatewayLog>,
    network: String,
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ctx: Arc<Context>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "east-west gateway: accept failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let (acceptor, ctx) = (acceptor.clone(), ctx.clone());
        tokio::spawn(async move {
            let (tls, peer_id) = match outer::handshake(&acceptor, tcp).await {
                Ok(ok) => ok,
                Err(e) => {
                    ctx.log.write(format!(
                        "eastwest network={:?} TLS handshake from {peer} failed: {e}",
                        ctx.network
                    ));
                    return;
                }
            };
            let handler = {
                let ctx = ctx.clone();
                move |req: outer::Connect| forward(ctx.clone(), peer, peer_id.clone(), req)
            };
            if let Err(e) = outer::serve(tls, handler).await {
                tracing::debug!(error = %e, %peer, "east-west gateway: connection ended");
            }
        });
    }
}

/// Answers one outer CONNECT: resolve, dial the endpoint's 15008, `200`, pipe raw bytes.
async fn forward(ctx: Arc<Context>, peer: SocketAddr, peer_id: String, req: outer::Connect) {
    let authority = match &req.target {
        Ok((host, port)) => format!("{host}:{port}"),
        Err(raw) => raw.clone(),
    };
    let line = |status: StatusCode, upstream: &dyn std::fmt::Display| {
        format!(
            "eastwest network={:?} CONNECT authority={authority} peer={peer_id} src={peer} \
             upstream={upstream} status={}",
            ctx.network,
            status.as_u16()
        )
    };
    let (host, port) = match &req.target {
        Ok((h, p)) => (h.to_ascii_lowercase(), *p),
        Err(_) => {
            ctx.log
                .write(line(StatusCode::BAD_REQUEST, &"- (not hostname:port)"));
            return req.reject(StatusCode::BAD_REQUEST);
        }
    };
    let Some(ips) = ctx.routes.get(&(host, port)).filter(|v| !v.is_empty()) else {
        ctx.log.write(line(
            StatusCode::SERVICE_UNAVAILABLE,
            &"- (no endpoint on this network)",
        ));
        return req.reject(StatusCode::SERVICE_UNAVAILABLE);
    };
    let ip = ips[rand::random_range(0..ips.len())];
    let upstream = SocketAddr::from((ip, GATEWAY_HBONE_PORT));
    let up = match ctx.netns.connect(upstream, CONNECT_TIMEOUT).await {
        Ok(s) => s,
        Err(e) => {
            ctx.log.write(format!(
                "{} error={e}",
                line(StatusCode::SERVICE_UNAVAILABLE, &upstream)
            ));
            return req.reject(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    let down = match req.accept() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "east-west gateway: client went away");
            return;
        }
    };
    ctx.log.write(line(StatusCode::OK, &upstream));
    outer::pipe(down, up).await;
}

// === impl GatewayLog ===

impl GatewayLog {
    fn write(&self, line: String) {
        tracing::info!(target: "eastwest", "{line}");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = appended {
            let path = self.path.display();
            tracing::warn!(%path, error = %e, "east-west gateway: log write failed");
        }
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The gateway's certificate for `gw`'s identity: from the lab control plane's CA when the lab
/// runs one, else from the built-in CA the node proxies share (`ca_dir`, `AMBIT_CA_DIR`).
pub fn gateway_certificate(
    gw: &EastWestGateway,
    cp: Option<&crate::LabControlPlane>,
    ca_dir: &Path,
) -> Result<Arc<WorkloadCertificate>, LabError> {
    if let Some(cp) = cp {
        return certificate(cp.issue_with_key(&gw.spiffe())?);
    }
    let err = |detail: String| LabError::ControlPlane {
        what: "east-west gateway certificate".into(),
        detail,
    };
    let id: Identity = gw.spiffe().parse().map_err(|e| err(format!("{e}")))?;
    let ca = ambit::identity::BuiltinCa::load_or_create(ca_dir, Duration::from_secs(24 * 3600))
        .map_err(|e| err(e.to_string()))?;
    ca.issue_now(&id)
        .map(Arc::new)
        .map_err(|e| err(e.to_string()))
}
