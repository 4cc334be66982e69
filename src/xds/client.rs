//! The delta ADS client: one gRPC stream to istiod carrying every type registered in
//! [`super::types`] (`istio.workload.Address`, `istio.security.Authorization`), applied to the
//! state store. The client is type-agnostic: each type's handler decodes its resources and names
//! the state key of a removal the client never saw.
//!
//! Invariants:
//! - Every response is answered: an ACK (`type_url` + `response_nonce`), or a NACK whose
//!   `error_detail.message` names each rejected resource (`<name>: <why>`, joined by `; `).
//!   The good resources of a partly bad response are applied in one batch; a rejected resource
//!   keeps its previous state (and version), so the last good state keeps serving.
//! - `known` (type → resource name → version and state key) survives reconnects and is sent as
//!   `initial_resource_versions`, so the server only resends what changed.
//! - Readiness: one [`BlockReady`] per type, dropped on the first ACK of that type.
//! - Reconnects back off exponentially (10 ms → 15 s) unless the server merely closed the stream
//!   (then at once); a response received resets the backoff. The token file is re-read on every
//!   connect. The client stops as soon as a drain starts.
//! - Metrics ([`XdsMetrics`]): every response counts once in `istio_xds_message_total` and its
//!   encoded size in `istio_xds_message_bytes_total`, by type URL, before it is applied; every
//!   ended stream counts once in `istio_xds_connection_terminations_total` by reason (a drain
//!   cancels the stream and is not counted).

use std::collections::{HashMap, HashSet};

/// The names of accepted resources, one entry per workload of the mesh: hashed with foldhash
/// (as the state's maps) rather than SipHash, which showed in the profile of a 10,000-workload push.
type KnownMap = HashMap<String, Known, foldhash::fast::RandomState>;
use std::time::Duration;

use ambit_proto::envoy::config::core::v3::Node;
use ambit_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use ambit_proto::google::rpc::Status as RpcStatus;
use prost::Message;
use prost_types::value::Kind;
use tokio::sync::mpsc;
use tonic::Code;
use tracing::{debug, info, warn};

use super::convert::{ConvertError, Problem};
use super::types::{self, REGISTERED};
use crate::grpc::{GrpcError, GrpcTarget};
use crate::lifecycle::{BlockReady, DrainWatcher, Readiness};
use crate::metrics::{TerminationReason, XdsMetrics};
use crate::state::{Resource, ResourceKey, StateWriter, Update};

/// Largest response accepted (a full push of a big mesh).
const MAX_DECODE_BYTES: usize = 200 << 20;
/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// What the client needs to know.
#[derive(Clone, Debug)]
pub struct XdsConfig {
    pub target: GrpcTarget,
    pub node: NodeInfo,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// The `Node` sent on the first request of each type, in ztunnel's format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// `ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
    pub id: String,
    /// String-valued metadata (`NAME`, `NAMESPACE`, `INSTANCE_IPS`, `NODE_NAME`, …).
    pub metadata: Vec<(String, String)>,
    /// Proxy metadata from the environment, sent as typed protobuf values.
    pub json_metadata: Vec<(String, serde_json::Value)>,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error(transparent)]
    Setup(#[from] GrpcError),
    #[error("connecting to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("xDS stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("xDS stream closed by the server")]
    Closed,
}

/// The delta ADS client. Run it with [`XdsClient::run`] on the control runtime.
pub struct XdsClient {
    cfg: XdsConfig,
    writer: StateWriter,
    known: HashMap<&'static str, KnownMap>,
    /// Types not yet acknowledged once; readiness (`state manager`, ztunnel's name for it) is
    /// held until every one has been.
    not_ready: HashSet<&'static str>,
    state_manager: Option<BlockReady>,
    metrics: XdsMetrics,
}

/// What the client remembers about one accepted resource.
struct Known {
    version: String,
    /// Where the state keeps it (an Address name may be a workload or a service).
    key: ResourceKey,
}

/// How a session ended, for the reconnect policy.
struct SessionEnd {
    /// At least one response arrived: the server was healthy, so the backoff starts over.
    got_response: bool,
    error: XdsError,
}

// === impl NodeInfo ===

impl NodeInfo {
    /// ztunnel's node id and metadata. An empty `instance_ip` becomes `1.1.1.1`, as in ztunnel.
    pub fn ztunnel(
        instance_ip: &str,
        pod_name: &str,
        pod_namespace: &str,
        node_name: &str,
    ) -> Self {
        let ip = if instance_ip.is_empty() {
            "1.1.1.1"
        } else {
            instance_ip
        };
        NodeInfo {
            id: format!(
                "ztunnel~{ip}~{pod_name}.{pod_namespace}~{pod_namespace}.svc.cluster.local"
            ),
            metadata: vec![
                ("NAME".into(), pod_name.into()),
                ("NAMESPACE".into(), pod_namespace.into()),
                ("INSTANCE_IPS".into(), instance_ip.into()),
                ("NODE_NAME".into(), node_name.into()),
            ],
            json_metadata: Vec::new(),
        }
    }

    /// Adds proxy metadata (`ISTIO_META_*`, `ISTIO_METAJSON_*`). ztunnel's own four keys keep
    /// their values: they name this node to the control plane.
    pub fn with_proxy_metadata(mut self, extra: &[(String, serde_json::Value)]) -> Self {
        for (k, v) in extra {
            if !self.metadata.iter().any(|(own, _)| own == k) {
                self.json_metadata.push((k.clone(), v.clone()));
            }
        }
        self
    }

    fn to_proto(&self) -> Node {
        let strings = self.metadata.iter().map(|(k, v)| {
            let value = prost_types::Value {
                kind: Some(Kind::StringValue(v.clone())),
            };
            (k.clone(), value)
        });
        let json = self
            .json_metadata
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)));
        let fields = json.chain(strings).collect();
        Node {
            id: self.id.clone(),
            metadata: Some(prost_types::Struct { fields }),
            ..Default::default()
        }
    }
}

/// JSON as a protobuf `Value` (what `google.protobuf.Struct` holds).
fn json_value(v: &serde_json::Value) -> prost_types::Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

// === impl XdsClient ===

impl XdsClient {
    /// A client that will write into `writer`; registers one readiness blocker per type.
    pub fn new(cfg: XdsConfig, writer: StateWriter, readiness: &Readiness) -> Self {
        XdsClient {
            cfg,
            writer,
            known: REGISTERED
                .iter()
                .map(|t| (t.type_url, KnownMap::default()))
                .collect(),
            not_ready: REGISTERED.iter().map(|t| t.type_url).collect(),
            state_manager: Some(readiness.block("state manager")),
            metrics: XdsMetrics::default(),
        }
    }

    /// Records into `metrics` (normally the registry's [`crate::metrics::Metrics::xds`]); without
    /// it the client counts into a handle nobody scrapes.
    pub fn with_metrics(mut self, metrics: XdsMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Connects, streams, reconnects with backoff, until a drain starts.
    pub async fn run(mut self, drain: DrainWatcher) {
        let mut backoff = self.cfg.initial_backoff;
        loop {
            let end = tokio::select! {
                _ = drain.draining() => return,
                end = self.session() => end,
            };
            self.metrics
                .record_termination(termination_reason(&end.error));
            if end.got_response {
                backoff = self.cfg.initial_backoff;
            }
            let delay = if reconnect_at_once(&end.error) {
                Duration::ZERO
            } else {
                let d = backoff;
                backoff = (backoff * 2).min(self.cfg.max_backoff);
                d
            };
            warn!(error = %end.error, retry_in = ?delay, "xDS stream ended; reconnecting");
            tokio::select! {
                _ = drain.draining() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One stream: subscribe to every type, then answer each response until the stream ends.
    async fn session(&mut self) -> SessionEnd {
        let mut got_response = false;
        let error = match self.stream(&mut got_response).await {
            Ok(()) => XdsError::Closed,
            Err(e) => e,
        };
        SessionEnd {
            got_response,
            error,
        }
    }

    async fn stream(&mut self, got_response: &mut bool) -> Result<(), XdsError> {
        let target = &self.cfg.target;
        let channel = target
            .endpoint()?
            .connect()
            .await
            .map_err(|e| XdsError::Connect {
                address: target.address.clone(),
                reason: error_chain(&e),
            })?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_DECODE_BYTES);

        // Requests go out through a channel the response loop feeds; the initial subscriptions
        // are queued before the call so they lead the stream.
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(REGISTERED.len() + 4);
        for t in REGISTERED {
            let initial = self.initial_request(t.type_url);
            // The receiver is alive (held below) and the buffer fits every initial request.
            let _ = tx.try_send(initial);
        }
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|req| (req, rx))
        });
        let mut request = tonic::Request::new(outbound);
        target.add_metadata(request.metadata_mut())?;
        let mut inbound = client
            .delta_aggregated_resources(request)
            .await?
            .into_inner();
        info!(address = %target.address, "xDS stream established");

        while let Some(response) = inbound.message().await? {
            *got_response = true;
            let bytes = u64::try_from(response.encoded_len()).unwrap_or(u64::MAX);
            self.metrics.record_message(&response.type_url, bytes);
            let answer = self.handle(response);
            if tx.send(answer).await.is_err() {
                // The request stream is gone: tonic ended the call; its status follows.
                break;
            }
        }
        Ok(())
    }

    fn initial_request(&self, type_url: &'static str) -> DeltaDiscoveryRequest {
        let initial_resource_versions = self
            .known
            .get(type_url)
            .map(|m| {
                m.iter()
                    .map(|(name, k)| (name.clone(), k.version.clone()))
                    .collect()
            })
            .unwrap_or_default();
        DeltaDiscoveryRequest {
            node: Some(self.cfg.node.to_proto()),
            type_url: type_url.to_string(),
            resource_names_subscribe: vec!["*".to_string()],
            initial_resource_versions,
            ..Default::default()
        }
    }

    /// Applies one response and builds its ACK or NACK.
    fn handle(&mut self, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let DeltaDiscoveryResponse {
            type_url,
            nonce,
            resources,
            removed_resources,
            ..
        } = response;
        let Some(handler) = types::find(&type_url) else {
            warn!(%type_url, "xDS response of an unknown type; acknowledging and ignoring it");
            return ack(type_url, nonce, Vec::new());
        };
        let type_url = handler.type_url;
        let known = self.known.entry(type_url).or_default();
        known.reserve(resources.len());
        let mut update = Update::default();
        let mut accepted = Vec::with_capacity(resources.len());
        let mut errors = Vec::new();

        for removed in removed_resources {
            let key = match known.remove(&removed) {
                Some(k) => k.key,
                None => handler.unseen_removal(removed),
            };
            update.removals.push(key);
        }
        for r in resources {
            let name = r.name;
            let converted = match r.resource {
                None => Err(ConvertError {
                    resource: format!("resource {name:?}"),
                    field: "resource".into(),
                    problem: Problem::Missing,
                }),
                Some(any) if any.type_url != type_url => Err(ConvertError {
                    resource: format!("resource {name:?}"),
                    field: "resource.typeUrl".into(),
                    problem: Problem::WrongType {
                        got: any.type_url,
                        want: type_url,
                    },
                }),
                Some(any) => handler.decode(&name, &any.value),
            };
            match converted {
                Ok(resource) => {
                    let key = state_key(&resource);
                    // Same name, different identity (e.g. a changed uid): drop the old entry.
                    if let Some(old) = known.get(&name).filter(|k| k.key != key) {
                        update.removals.push(old.key.clone());
                    }
                    update.upserts.push(resource);
                    accepted.push((name, r.version, key));
                }
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }

        let (upserts, removals) = (update.upserts.len(), update.removals.len());
        if !update.is_empty() {
            let applied = self.writer.apply(update);
            debug!(
                type_url,
                upserts,
                removals,
                version = applied.version,
                "xDS update applied"
            );
        }
        for (name, version, key) in accepted {
            known.insert(name, Known { version, key });
        }

        if errors.is_empty() {
            if self.not_ready.remove(type_url) {
                info!(type_url, "first xDS response of this type acknowledged");
                if self.not_ready.is_empty() {
                    self.state_manager = None;
                }
            }
            ack(type_url.to_string(), nonce, Vec::new())
        } else {
            warn!(type_url, rejected = errors.len(), errors = %errors.join("; "), "NACKing xDS response");
            ack(type_url.to_string(), nonce, errors)
        }
    }
}

/// An ACK, or a NACK when `errors` is non-empty.
fn ack(type_url: String, nonce: String, errors: Vec<String>) -> DeltaDiscoveryRequest {
    let error_detail = (!errors.is_empty()).then(|| RpcStatus {
        code: INVALID_ARGUMENT,
        message: errors.join("; "),
        details: Vec::new(),
    });
    DeltaDiscoveryRequest {
        type_url,
        response_nonce: nonce,
        error_detail,
        ..Default::default()
    }
}

/// The key the state stores a resource under.
fn state_key(r: &Resource) -> ResourceKey {
    match r {
        Resource::Workload(w) => ResourceKey::Workload(w.uid.clone()),
        Resource::Service(s) => ResourceKey::Service(s.key()),
        Resource::Policy(p) => ResourceKey::Policy(p.key()),
    }
}

/// The `reason` label of a stream ending: setup failures are `ConnectionError`, routine server
/// housekeeping `Reconnect`, a clean close by the server `Complete`, any other status `Error`.
fn termination_reason(e: &XdsError) -> TerminationReason {
    match e {
        XdsError::Setup(_) | XdsError::Connect { .. } => TerminationReason::ConnectionError,
        XdsError::Closed => TerminationReason::Complete,
        XdsError::Stream(_) if reconnect_at_once(e) => TerminationReason::Reconnect,
        XdsError::Stream(_) => TerminationReason::Error,
    }
}

/// Stream endings that are the server's normal housekeeping (restart, GOAWAY, idle timeout):
/// reconnect without waiting.
fn reconnect_at_once(e: &XdsError) -> bool {
    match e {
        XdsError::Stream(s) => match s.code() {
            Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
            Code::Unavailable => {
                let m = s.message();
                m.contains("transport is closing") || m.contains("received prior goaway")
            }
            _ => false,
        },
        _ => false,
    }
}

/// `e: cause: cause…`, since tonic's transport errors hide the useful part in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
