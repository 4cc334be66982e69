//! The control plane scripted by a test, for client tests that play istiod's side themselves:
//! [`ScriptedAds`] hands every delta ADS stream to the test (headers, requests as they arrive,
//! responses or a failure when the test says), [`ScriptedCa`] signs CSRs with a lab root under
//! rules the test sets, and [`response`], [`resource`], [`workload`], [`service`] build WDS
//! resources. They are modes of the lab control plane's own gRPC services and server
//! (`control_grpc`), in-process on loopback: no root, no namespaces; plain or TLS.
//!
//! Invariants: every wait is bounded by [`WAIT`]; dropping a server aborts it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ambit_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use ambit_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use ambit_proto::istio::workload as pw;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::metadata::MetadataMap;
use tonic::transport::Identity;
use tonic::{Request, Response, Status};

use crate::LabError;
use crate::control_ca::{LabCa, impersonated_identity};
use crate::control_grpc::{Ads, Ca, spawn_server};

/// The bound on every wait here (a connection, a request).
pub const WAIT: Duration = Duration::from_secs(10);

/// A running scripted server; dropping it aborts it.
pub struct Serving {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Serving {
    async fn start(
        addr: SocketAddr,
        tls: Option<Identity>,
        ads: Option<Ads>,
        ca: Option<Ca>,
    ) -> Result<Serving, LabError> {
        let err = |detail: std::io::Error| LabError::ControlPlane {
            what: format!("scripted server on {addr}"),
            detail: detail.to_string(),
        };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        let (stop, shutdown) = oneshot::channel();
        let task = spawn_server(listener, tls, ads, ca, shutdown)?;
        Ok(Serving {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// Stops accepting and waits (bounded) for the server to end; a stream still open keeps it
    /// up, so close those first.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
        self.task.abort();
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === ADS ===

/// A delta ADS server whose every stream the test answers itself.
pub struct ScriptedAds {
    pub addr: SocketAddr,
    server: Serving,
    conns: mpsc::UnboundedReceiver<ScriptedConn>,
}

/// One client stream as the server sees it; dropping it ends the stream cleanly.
pub struct ScriptedConn {
    pub headers: MetadataMap,
    pub(crate) requests: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    pub(crate) responses: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
}

impl ScriptedAds {
    /// Serves plain HTTP/2 on `addr` (port 0 picks one).
    pub async fn start(addr: SocketAddr) -> Result<ScriptedAds, LabError> {
        ScriptedAds::start_with(addr, None).await
    }

    /// Serves over TLS with `ca`'s server certificate (for [`crate::control_ca::SERVER_NAME`]).
    pub async fn start_tls(addr: SocketAddr, ca: &LabCa) -> Result<ScriptedAds, LabError> {
        ScriptedAds::start_with(addr, Some(ca.server_identity())).await
    }

    async fn start_with(addr: SocketAddr, tls: Option<Identity>) -> Result<ScriptedAds, LabError> {
        let (tx, conns) = mpsc::unbounded_channel();
        let server = Serving::start(addr, tls, Some(Ads::Scripted(tx)), None).await?;
        Ok(ScriptedAds {
            addr: server.addr,
            server,
            conns,
        })
    }

    /// The next stream a client opens.
    pub async fn next_conn(&mut self) -> Result<ScriptedConn, LabError> {
        match tokio::time::timeout(WAIT, self.conns.recv()).await {
            Ok(Some(conn)) => Ok(conn),
            Ok(None) => Err(scripted("the server is gone")),
            Err(_) => Err(late("an xDS stream")),
        }
    }

    /// Stops accepting and waits for the server to end (drop the streams first).
    pub async fn stop(self) {
        self.server.stop().await;
    }
}

impl ScriptedConn {
    pub async fn next_request(&mut self) -> Result<DeltaDiscoveryRequest, LabError> {
        match tokio::time::timeout(WAIT, self.requests.recv()).await {
            Ok(Some(req)) => Ok(req),
            Ok(None) => Err(scripted("the client ended the stream")),
            Err(_) => Err(late("an xDS request")),
        }
    }

    /// The client's first two requests (its subscriptions), in order of arrival.
    pub async fn initial_requests(&mut self) -> Result<Vec<DeltaDiscoveryRequest>, LabError> {
        Ok(vec![self.next_request().await?, self.next_request().await?])
    }

    pub fn push(&self, response: DeltaDiscoveryResponse) -> Result<(), LabError> {
        self.send(Ok(response))
    }

    /// Ends the stream with `status`.
    pub fn fail(&self, status: Status) -> Result<(), LabError> {
        self.send(Err(status))
    }

    fn send(&self, item: Result<DeltaDiscoveryResponse, Status>) -> Result<(), LabError> {
        self.responses
            .send(item)
            .map_err(|_| scripted("the stream is closed"))
    }
}

fn scripted(detail: &str) -> LabError {
    LabError::ControlPlane {
        what: "scripted stream".into(),
        detail: detail.into(),
    }
}

fn late(what: &str) -> LabError {
    LabError::NotReady {
        what: what.into(),
        attempts: 1,
        last: format!("nothing within {WAIT:?}"),
    }
}

// === CA ===

/// What a [`ScriptedCa`] was asked: the request's metadata and body.
pub type CaRequest = (MetadataMap, IstioCertificateRequest);

/// A CA for client tests: signs the CSR's identity (when `ImpersonatedIdentity` names the same)
/// with a lab root, for a lifetime the test picks, whoever asks; reports every request.
pub struct ScriptedCa {
    ca: LabCa,
    lifetime: Duration,
    wrong_identity: AtomicBool,
    seen: mpsc::UnboundedSender<CaRequest>,
}

impl ScriptedCa {
    /// A fresh root; certificates live `lifetime` (plus a second of backdating).
    pub fn new(
        lifetime: Duration,
    ) -> Result<(Arc<ScriptedCa>, mpsc::UnboundedReceiver<CaRequest>), LabError> {
        let ca = LabCa::new([127, 0, 0, 1].into()).map_err(|detail| LabError::ControlPlane {
            what: "root CA".into(),
            detail,
        })?;
        let (seen, rx) = mpsc::unbounded_channel();
        let ca = ScriptedCa {
            ca,
            lifetime,
            wrong_identity: AtomicBool::new(false),
            seen,
        };
        Ok((Arc::new(ca), rx))
    }

    /// From now on, signs for service account `not-<sa>` instead of the one asked for.
    pub fn sign_wrong_identity(&self, on: bool) {
        self.wrong_identity.store(on, Ordering::SeqCst);
    }

    /// Serves `IstioCertificateService` on `addr`, plain HTTP/2; again after a stop, same root.
    pub async fn serve(self: &Arc<Self>, addr: SocketAddr) -> Result<Serving, LabError> {
        Serving::start(addr, None, None, Some(Ca::Scripted(self.clone()))).await
    }

    pub(crate) fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let headers = request.metadata().clone();
        let req = request.into_inner();
        let _ = self.seen.send((headers, req.clone()));
        let (san, csr) = LabCa::csr_identity(&req.csr).map_err(Status::invalid_argument)?;
        if impersonated_identity(&req).as_deref() != Some(san.as_str()) {
            return Err(Status::permission_denied("identity mismatch"));
        }
        let identity = if self.wrong_identity.load(Ordering::SeqCst) {
            san.replace("/sa/", "/sa/not-")
        } else {
            san
        };
        let issued = self
            .ca
            .sign(&identity, &csr, self.lifetime)
            .map_err(Status::internal)?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: issued.chain,
        }))
    }
}

// === WDS builders ===

pub fn response(
    type_url: &str,
    nonce: &str,
    resources: Vec<Resource>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn resource<M: prost::Name>(name: &str, version: &str, msg: &M) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        // Encoding into a growable buffer does not fail.
        resource: prost_types::Any::from_msg(msg).ok(),
        ..Default::default()
    }
}

/// A workload `uid` (pod `<uid>-pod`, `default/sa`, HBONE) at `ip`, optionally in one service:
/// `(service key, service port, target port)`.
pub fn workload(uid: &str, ip: [u8; 4], service: Option<(&str, u32, u32)>) -> pw::Address {
    let services = service
        .map(|(key, svc, target)| {
            (
                key.to_string(),
                pw::PortList {
                    ports: vec![pw::Port {
                        service_port: svc,
                        target_port: target,
                        app_protocol: 0,
                    }],
                },
            )
        })
        .into_iter()
        .collect();
    pw::Address {
        r#type: Some(pw::address::Type::Workload(pw::Workload {
            uid: uid.into(),
            name: format!("{uid}-pod"),
            namespace: "default".into(),
            service_account: "sa".into(),
            addresses: vec![ip.to_vec()],
            tunnel_protocol: pw::TunnelProtocol::Hbone as i32,
            services,
            ..Default::default()
        })),
    }
}

/// A service `name.namespace.svc.cluster.local` at `vip`, one port.
pub fn service(namespace: &str, name: &str, vip: [u8; 4], port: u32) -> pw::Address {
    pw::Address {
        r#type: Some(pw::address::Type::Service(pw::Service {
            name: name.into(),
            namespace: namespace.into(),
            hostname: format!("{name}.{namespace}.svc.cluster.local"),
            addresses: vec![pw::NetworkAddress {
                network: String::new(),
                address: vip.to_vec(),
                length: None,
            }],
            ports: vec![pw::Port {
                service_port: port,
                target_port: 0,
                app_protocol: 0,
            }],
            ..Default::default()
        })),
    }
}
