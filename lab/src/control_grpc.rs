//! The control plane's gRPC services, over TLS for the lab's istiod:
//! `AggregatedDiscoveryService/DeltaAggregatedResources` (delta xDS, both WDS types) and
//! `IstioCertificateService/CreateCertificate`.
//!
//! Invariants: a stream starts only with a known bearer token; each type is served from the
//! first subscription of that type on the stream: a full response (whatever differs from the
//! node's `initial_resource_versions`, even when empty, so the node's readiness can follow its
//! first ACK), then every later delta of that type in order. Every response has a fresh nonce.
//! A stream that falls behind the push buffer, or whose control plane is stopped, ends with
//! `Unavailable` (the node reconnects and resyncs). Every request and response is recorded.
//!
//! The same services and server also run scripted by a test ([`crate::control_scripted`]).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use ambit_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use ambit_proto::istio::v1::auth::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use ambit_proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use futures_util::Stream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::LabError;
use crate::control_ca::{Issued, LabCa, impersonated_identity};
use crate::control_plane::{
    CaRecord, Delta, RecordedRequest, RecordedResponse, Shared, known_type, lock,
};
use crate::control_resources::{CpResource, identities_by_node};
use crate::control_scripted::{ScriptedCa, ScriptedConn};

type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;
type SotwStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

/// Serves `ads` and `ca` (whichever are given) on `listener`, over TLS with `tls` when given,
/// until `shutdown` fires.
pub(crate) fn spawn_server(
    listener: tokio::net::TcpListener,
    tls: Option<Identity>,
    ads: Option<Ads>,
    ca: Option<Ca>,
    shutdown: oneshot::Receiver<()>,
) -> Result<JoinHandle<()>, LabError> {
    let mut builder = Server::builder();
    if let Some(identity) = tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| LabError::ControlPlane {
                what: "TLS".into(),
                detail: e.to_string(),
            })?;
    }
    let router = builder
        .add_optional_service(ads.map(|ads| {
            AggregatedDiscoveryServiceServer::new(ads).max_decoding_message_size(64 << 20)
        }))
        .add_optional_service(ca.map(IstioCertificateServiceServer::new));
    Ok(tokio::spawn(async move {
        let served = router
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = shutdown.await;
            })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "lab control plane server ended");
        }
    }))
}

/// The ADS service: answers built from the lab's store (the lab's istiod), or every stream
/// handed to a test that scripts it ([`crate::control_scripted::ScriptedAds`]).
pub(crate) enum Ads {
    Topology(Arc<Shared>),
    Scripted(mpsc::UnboundedSender<ScriptedConn>),
}

/// The CA service: the lab's CA deciding by the store, or a scripted one for client tests
/// ([`crate::control_scripted::ScriptedCa`]).
pub(crate) enum Ca {
    Topology(Arc<Shared>),
    Scripted(Arc<ScriptedCa>),
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        Err(Status::unimplemented(
            "the lab control plane serves delta xDS only",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        let shared = match self {
            Ads::Topology(shared) => shared,
            Ads::Scripted(conns) => return Ok(Response::new(scripted_stream(conns, request))),
        };
        let Some(node) = shared.node_of(request.metadata()) else {
            warn!("xDS stream refused: missing or unknown bearer token");
            return Err(Status::unauthenticated(
                "lab control plane: missing or unknown bearer token",
            ));
        };
        let conn = {
            let mut store = lock(&shared.store);
            store.next_conn += 1;
            store.next_conn
        };
        info!(%node, conn, "xDS stream opened");
        let (tx, rx) = mpsc::channel(64);
        let stream = NodeStream {
            shared: shared.clone(),
            node,
            conn,
            pushes: shared.pushes.subscribe(),
            generation: shared.generation.subscribe(),
            tx,
            subscribed: BTreeMap::new(),
        };
        tokio::spawn(stream.run(request.into_inner()));
        let out =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        Ok(Response::new(Box::pin(out)))
    }
}

/// Hands a stream to the test scripting it: its headers, its requests as they arrive, and the
/// sender of what the server answers.
fn scripted_stream(
    conns: &mpsc::UnboundedSender<ScriptedConn>,
    request: Request<Streaming<DeltaDiscoveryRequest>>,
) -> DeltaStream {
    let headers = request.metadata().clone();
    let mut inbound = request.into_inner();
    let (req_tx, requests) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(r)) = inbound.message().await {
            if req_tx.send(r).is_err() {
                break;
            }
        }
    });
    let (responses, resp_rx) = mpsc::unbounded_channel();
    // A test no longer taking streams gets none: this one then ends at once.
    let _ = conns.send(ScriptedConn {
        headers,
        requests,
        responses,
    });
    Box::pin(futures_util::stream::unfold(resp_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    }))
}

/// One node's stream.
struct NodeStream {
    shared: Arc<Shared>,
    node: String,
    conn: u64,
    pushes: broadcast::Receiver<Arc<Delta>>,
    generation: watch::Receiver<u64>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    /// Type → the store version its snapshot was taken at (later deltas follow it).
    subscribed: BTreeMap<&'static str, u64>,
}

impl NodeStream {
    async fn run(mut self, mut inbound: Streaming<DeltaDiscoveryRequest>) {
        loop {
            tokio::select! {
                _ = self.generation.changed() => {
                    let _ = self.tx.send(Err(Status::unavailable("lab control plane stopped"))).await;
                    return;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if !self.on_request(req).await {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        info!(node = %self.node, conn = self.conn, error = %e, "xDS stream ended");
                        return;
                    }
                },
                push = self.pushes.recv() => match push {
                    Ok(delta) => {
                        let wanted = self.subscribed.get(delta.type_url).is_some_and(|s| delta.seq > *s);
                        if wanted {
                            let resp = self.response(delta.type_url, delta.resources.clone(), delta.removed.clone());
                            if self.tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(node = %self.node, missed = n, "xDS stream fell behind; ending it so the node resyncs");
                        let _ = self.tx.send(Err(Status::unavailable("fell behind the push buffer"))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Records a request; answers a first subscription with a snapshot. False when the stream is gone.
    async fn on_request(&mut self, req: DeltaDiscoveryRequest) -> bool {
        let error_detail = req.error_detail.as_ref().map(|s| s.message.clone());
        if let Some(detail) = &error_detail {
            warn!(node = %self.node, type_url = %req.type_url, nonce = %req.response_nonce, %detail, "xDS NACK");
        }
        self.shared.record_request(RecordedRequest {
            conn: self.conn,
            node: self.node.clone(),
            type_url: req.type_url.clone(),
            response_nonce: req.response_nonce.clone(),
            error_detail,
            initial_resource_versions: req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            subscribe: req.resource_names_subscribe.clone(),
            at: std::time::Instant::now(),
        });
        let Some(t) = known_type(&req.type_url) else {
            return true;
        };
        if !req.response_nonce.is_empty() || self.subscribed.contains_key(t) {
            return true;
        }
        let (seq, resources, removed) = {
            let store = lock(&self.shared.store);
            let empty = BTreeMap::new();
            let stored = store.resources.get(t).unwrap_or(&empty);
            let known = &req.initial_resource_versions;
            let resources: Vec<Resource> = stored
                .iter()
                .filter(|(name, s)| known.get(*name) != Some(&s.version))
                .map(|(name, s)| Resource {
                    name: name.clone(),
                    version: s.version.clone(),
                    resource: Some(s.resource.to_any()),
                    ..Default::default()
                })
                .collect();
            let removed: Vec<String> = known
                .keys()
                .filter(|k| !stored.contains_key(*k))
                .cloned()
                .collect();
            (store.version, resources, removed)
        };
        self.subscribed.insert(t, seq);
        let resp = self.response(t, resources, removed);
        self.tx.send(Ok(resp)).await.is_ok()
    }

    fn response(
        &self,
        type_url: &str,
        resources: Vec<Resource>,
        removed: Vec<String>,
    ) -> DeltaDiscoveryResponse {
        let nonce = {
            let mut store = lock(&self.shared.store);
            store.nonce += 1;
            format!("n{}", store.nonce)
        };
        self.shared.record_response(RecordedResponse {
            conn: self.conn,
            node: self.node.clone(),
            type_url: type_url.to_string(),
            nonce: nonce.clone(),
            resources: resources.iter().map(|r| r.name.clone()).collect(),
            removed: removed.clone(),
            at: std::time::Instant::now(),
        });
        DeltaDiscoveryResponse {
            type_url: type_url.to_string(),
            nonce,
            resources,
            removed_resources: removed,
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for Ca {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let shared = match self {
            Ca::Topology(shared) => shared,
            Ca::Scripted(ca) => return ca.create_certificate(request),
        };
        let node = shared.node_of(request.metadata());
        let req = request.into_inner();
        let impersonated = impersonated_identity(&req);
        let csr = LabCa::csr_identity(&req.csr);
        let identity = impersonated
            .clone()
            .or_else(|| csr.as_ref().ok().map(|(id, _)| id.clone()))
            .unwrap_or_default();
        let decided = decide(
            shared,
            node.as_deref(),
            impersonated,
            csr,
            req.validity_duration,
        );
        let outcome = match &decided {
            Ok(issued) => {
                info!(node = ?node, %identity, serial = %issued.serial, "lab CA issued a certificate");
                Ok(issued.serial.clone())
            }
            Err(status) => {
                warn!(node = ?node, %identity, code = ?status.code(), error = %status.message(), "lab CA refused a certificate");
                Err(format!("{:?}: {}", status.code(), status.message()))
            }
        };
        shared.record_ca(CaRecord {
            node,
            identity,
            outcome,
        });
        decided.map(|issued| {
            Response::new(IstioCertificateResponse {
                cert_chain: issued.chain,
            })
        })
    }
}

fn decide(
    shared: &Shared,
    node: Option<&str>,
    impersonated: Option<String>,
    csr: Result<(String, rcgen::CertificateSigningRequestParams), String>,
    validity_secs: i64,
) -> Result<Issued, Status> {
    let Some(node) = node else {
        return Err(Status::unauthenticated(
            "lab CA: missing or unknown bearer token",
        ));
    };
    let (allowed, refusing) = {
        let store = lock(&shared.store);
        let addresses = store
            .resources
            .get(ambit_proto::ADDRESS_TYPE_URL)
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|s| match &s.resource {
                CpResource::Address { address, .. } => Some(address),
                CpResource::Policy { .. } => None,
            });
        let mut by_node = identities_by_node(addresses);
        (by_node.remove(node).unwrap_or_default(), store.ca_refusing)
    };
    if refusing {
        return Err(Status::unavailable(
            "lab CA is refusing requests (switched off by the lab)",
        ));
    }
    let (csr_id, csr) = csr.map_err(Status::invalid_argument)?;
    let want = impersonated.unwrap_or_else(|| csr_id.clone());
    if want != csr_id {
        return Err(Status::invalid_argument(format!(
            "CSR asks for {csr_id} but ImpersonatedIdentity is {want}"
        )));
    }
    if !allowed.contains(&want) {
        return Err(Status::permission_denied(format!(
            "node {node} has no pod with identity {want}"
        )));
    }
    let ttl = Duration::from_secs(u64::try_from(validity_secs).unwrap_or(0).max(1));
    shared.ca.sign(&want, &csr, ttl).map_err(Status::internal)
}
