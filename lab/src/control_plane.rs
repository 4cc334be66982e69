//! [`LabControlPlane`]: the lab's istiod. One per lab, a tokio task in the lab process listening
//! on the underlay (every node reaches it), serving delta ADS and the Istio CA over TLS with the
//! lab's own root ([`crate::control_ca`]); the gRPC services themselves are in
//! [`crate::control_grpc`].
//!
//! Invariants:
//! - The store holds, per type URL, every resource by name with the version it was last set at;
//!   every change gets a fresh version (a global counter) and is broadcast, in order, as one
//!   delta to every connected node. A node that connects (or reconnects) gets the resources
//!   whose version differs from its `initial_resource_versions`, and removals for names it
//!   knows that are gone.
//! - Each node has its own bearer token (a file, `AUTH_TOKEN`); a request without a known token
//!   is refused `Unauthenticated`. The CA signs only identities of workloads whose `node` is the
//!   caller's (`PermissionDenied` otherwise).
//! - Every request a node sends on a stream (subscriptions, ACKs, NACKs) and every CA decision is
//!   recorded, in arrival order, for tests to assert on; [`LabControlPlane::wait_request`] and
//!   [`LabControlPlane::wait_ca`] wait for one (bounded).
//! - [`LabControlPlane::stop`] ends every stream and closes the listener; [`LabControlPlane::restart`]
//!   serves again on the same address with the same store, root and tokens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ambit_proto::envoy::service::discovery::v3::Resource;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::info;

use crate::control::ControlPlane;
use crate::control_ca::{LabCa, SERVER_NAME};
use crate::control_grpc::{Ads, Ca};
use crate::control_resources::{CLUSTER_ID, CpResource};
use crate::{LabError, Netns};

/// The port the control plane listens on (istiod's).
pub const CP_PORT: u16 = 15012;
/// How many deltas a slow node may fall behind before its stream is cut (it then resyncs).
const PUSH_BUFFER: usize = 4096;

/// The lab's control plane. Cheap to clone: every clone is the same control plane.
#[derive(Clone, Debug)]
pub struct LabControlPlane {
    pub(crate) shared: Arc<Shared>,
    server: Arc<Mutex<Option<ServerHandle>>>,
    netns: String,
}

#[derive(Debug)]
struct ServerHandle {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// What the gRPC services share with the API.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) ca: LabCa,
    pub(crate) addr: SocketAddr,
    dir: PathBuf,
    pub(crate) store: Mutex<Store>,
    pub(crate) pushes: broadcast::Sender<Arc<Delta>>,
    /// Bumped by `stop`: open streams end when it changes.
    pub(crate) generation: watch::Sender<u64>,
    records: Mutex<Records>,
    /// Bumped on every record, so waiters wake.
    recorded: watch::Sender<u64>,
}

/// The resources and settings; locked briefly, never across an await.
#[derive(Debug, Default)]
pub(crate) struct Store {
    /// Type URL → name → stored resource.
    pub(crate) resources: BTreeMap<&'static str, BTreeMap<String, Stored>>,
    /// The last version handed out (versions and delta sequence numbers).
    pub(crate) version: u64,
    pub(crate) nonce: u64,
    /// Bearer token → node name.
    pub(crate) tokens: BTreeMap<String, String>,
    pub(crate) ca_refusing: bool,
    pub(crate) next_conn: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) version: String,
    pub(crate) resource: CpResource,
}

/// One change, as sent to every node subscribed to its type.
#[derive(Debug)]
pub(crate) struct Delta {
    pub(crate) seq: u64,
    pub(crate) type_url: &'static str,
    pub(crate) resources: Vec<Resource>,
    pub(crate) removed: Vec<String>,
}

#[derive(Debug, Default)]
struct Records {
    requests: Vec<RecordedRequest>,
    responses: Vec<RecordedResponse>,
    ca: Vec<CaRecord>,
}

/// A `DeltaDiscoveryRequest` a node sent.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The stream it came on (numbered from 1 in order of connection).
    pub conn: u64,
    pub node: String,
    pub type_url: String,
    /// Empty on a subscription; the answered response's nonce on an ACK/NACK.
    pub response_nonce: String,
    /// The NACK's `error_detail.message`; `None` on an ACK or a subscription.
    pub error_detail: Option<String>,
    pub initial_resource_versions: BTreeMap<String, String>,
    pub subscribe: Vec<String>,
    /// When it arrived (the benchmark times push → ACK with it).
    pub at: std::time::Instant,
}

/// A `DeltaDiscoveryResponse` the control plane sent.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedResponse {
    pub conn: u64,
    pub node: String,
    pub type_url: String,
    pub nonce: String,
    pub resources: Vec<String>,
    pub removed: Vec<String>,
    /// When it was handed to the stream (before encoding).
    pub at: std::time::Instant,
}

/// One `CreateCertificate` decision.
#[derive(Debug, Clone, PartialEq)]
pub struct CaRecord {
    /// The caller's node (by token); `None` when the token was not recognised.
    pub node: Option<String>,
    /// The identity asked for (`ImpersonatedIdentity`, else the CSR's).
    pub identity: String,
    /// The issued leaf's serial (hex), or the gRPC error sent back.
    pub outcome: Result<String, String>,
}

impl RecordedRequest {
    pub fn is_nack(&self) -> bool {
        self.error_detail.is_some()
    }
}

// === impl LabControlPlane ===

impl LabControlPlane {
    /// Starts serving on `addr` inside `netns` (the underlay), with `resources` in the store and a
    /// token per node in `nodes`. Root and tokens are written under `dir`.
    pub async fn start(
        netns: &Netns,
        addr: SocketAddr,
        nodes: &[String],
        resources: Vec<CpResource>,
        dir: &Path,
    ) -> Result<LabControlPlane, LabError> {
        let err = |what: &str| {
            let what = what.to_string();
            move |detail: String| LabError::ControlPlane { what, detail }
        };
        std::fs::create_dir_all(dir).map_err(|source| LabError::File {
            path: dir.display().to_string(),
            source,
        })?;
        let ca = LabCa::new(addr.ip()).map_err(err("root CA"))?;
        write(&dir.join("root-cert.pem"), ca.root_pem())?;
        let mut store = Store::default();
        for node in nodes {
            let token: String = (0..16)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            write(&token_path(dir, node), &token)?;
            store.tokens.insert(token, node.clone());
        }
        for r in resources {
            store.version += 1;
            let version = store.version.to_string();
            store.resources.entry(r.type_url()).or_default().insert(
                r.name().to_string(),
                Stored {
                    version,
                    resource: r,
                },
            );
        }
        let shared = Arc::new(Shared {
            ca,
            addr,
            dir: dir.to_path_buf(),
            store: Mutex::new(store),
            pushes: broadcast::channel(PUSH_BUFFER).0,
            generation: watch::channel(0).0,
            records: Mutex::new(Records::default()),
            recorded: watch::channel(0).0,
        });
        let cp = LabControlPlane {
            shared,
            server: Arc::new(Mutex::new(None)),
            netns: netns.name().to_string(),
        };
        cp.serve(netns)?;
        Ok(cp)
    }

    fn serve(&self, netns: &Netns) -> Result<(), LabError> {
        let listener = netns.tcp_listener(self.shared.addr)?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| LabError::Socket {
                netns: netns.name().to_string(),
                op: format!("listen {}", self.shared.addr),
                source: e,
            })?;
        let (shutdown, rx) = oneshot::channel();
        let shared = &self.shared;
        let task = crate::control_grpc::spawn_server(
            listener,
            Some(shared.ca.server_identity()),
            Some(Ads::Topology(shared.clone())),
            Some(Ca::Topology(shared.clone())),
            rx,
        )?;
        *lock(&self.server) = Some(ServerHandle { shutdown, task });
        info!(addr = %self.shared.addr, "lab control plane serving delta ADS and the CA");
        Ok(())
    }

    /// `https://<addr>`: `XDS_ADDRESS` and `CA_ADDRESS`.
    pub fn url(&self) -> String {
        format!("https://{}", self.shared.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The root certificate file (`XDS_ROOT_CA`, `CA_ROOT_CA`).
    pub fn root_cert_path(&self) -> PathBuf {
        self.shared.dir.join("root-cert.pem")
    }

    /// A certificate from the lab CA for a lab process with an identity of its own (the
    /// east-west gateway), valid for a day.
    pub fn issue_with_key(&self, identity: &str) -> Result<crate::control_ca::KeyedCert, LabError> {
        self.shared
            .ca
            .issue_with_key(identity, std::time::Duration::from_secs(24 * 3600))
            .map_err(|detail| LabError::ControlPlane {
                what: "CA".into(),
                detail,
            })
    }

    /// The token file of `node` (`AUTH_TOKEN`).
    pub fn token_path(&self, node: &str) -> PathBuf {
        token_path(&self.shared.dir, node)
    }

    /// Whether the server is running (not [`stop`](Self::stop)ped).
    pub fn is_serving(&self) -> bool {
        lock(&self.server).is_some()
    }

    /// Kills the control plane: every stream ends with `Unavailable`, the listener closes.
    pub async fn stop(&self) {
        let handle = lock(&self.server).take();
        self.shared.generation.send_modify(|g| *g += 1);
        if let Some(mut h) = handle {
            let _ = h.shutdown.send(());
            if tokio::time::timeout(Duration::from_secs(5), &mut h.task)
                .await
                .is_err()
            {
                h.task.abort();
            }
        }
        info!(addr = %self.shared.addr, "lab control plane stopped");
    }

    /// Stops at once without waiting (for `Drop`): streams end, the server task is aborted.
    pub fn abort(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
        if let Some(h) = lock(&self.server).take() {
            let _ = h.shutdown.send(());
            h.task.abort();
        }
    }

    /// Serves again on the same address (inside `netns`, the underlay it was started in), with
    /// the same store, root and tokens.
    pub fn restart(&self, netns: &Netns) -> Result<(), LabError> {
        if self.is_serving() {
            return Ok(());
        }
        if netns.name() != self.netns {
            return Err(LabError::ControlPlane {
                what: "restart".into(),
                detail: format!("started in {}, not {}", self.netns, netns.name()),
            });
        }
        self.serve(netns)
    }

    /// Makes the CA refuse (`Unavailable`) every request until called with `false`.
    pub fn set_ca_refusing(&self, refusing: bool) {
        lock(&self.shared.store).ca_refusing = refusing;
        info!(refusing, "lab CA availability changed");
    }

    /// Adds or replaces resources (workloads, services, policies) and pushes them to every node.
    pub fn upsert(&self, resources: Vec<CpResource>) {
        self.change(resources, Vec::new(), Vec::new());
    }

    /// Removes resources of `type_url` by name and pushes the removal to every node.
    pub fn remove(&self, type_url: &str, names: &[&str]) {
        let Some(t) = known_type(type_url) else {
            return;
        };
        let names = names.iter().map(|n| (t, n.to_string())).collect();
        self.change(Vec::new(), names, Vec::new());
    }

    /// Pushes `good` (stored as usual) together with one malformed Address resource `bad_name`
    /// (bytes that do not decode), in one response. The malformed one is not stored, so a node
    /// that reconnects never sees it again.
    pub fn push_with_malformed(&self, good: Vec<CpResource>, bad_name: &str) {
        let bad = Resource {
            name: bad_name.to_string(),
            version: "malformed".into(),
            resource: Some(prost_types::Any {
                type_url: ambit_proto::ADDRESS_TYPE_URL.into(),
                // Field 1 (workload), length-delimited, claiming more bytes than follow.
                value: vec![0x0a, 0x7f, 0x01],
            }),
            ..Default::default()
        };
        self.change(good, Vec::new(), vec![bad]);
    }

    fn change(
        &self,
        upserts: Vec<CpResource>,
        removals: Vec<(&'static str, String)>,
        raw_addresses: Vec<Resource>,
    ) {
        let mut store = lock(&self.shared.store);
        let mut by_type: BTreeMap<&'static str, (Vec<Resource>, Vec<String>)> = BTreeMap::new();
        for r in upserts {
            store.version += 1;
            let version = store.version.to_string();
            by_type.entry(r.type_url()).or_default().0.push(Resource {
                name: r.name().to_string(),
                version: version.clone(),
                resource: Some(r.to_any()),
                ..Default::default()
            });
            store.resources.entry(r.type_url()).or_default().insert(
                r.name().to_string(),
                Stored {
                    version,
                    resource: r,
                },
            );
        }
        for (t, name) in removals {
            if let Some(m) = store.resources.get_mut(t)
                && m.remove(&name).is_some()
            {
                by_type.entry(t).or_default().1.push(name);
            }
        }
        if !raw_addresses.is_empty() {
            by_type
                .entry(ambit_proto::ADDRESS_TYPE_URL)
                .or_default()
                .0
                .extend(raw_addresses);
        }
        for (type_url, (resources, removed)) in by_type {
            store.version += 1;
            let delta = Delta {
                seq: store.version,
                type_url,
                resources,
                removed,
            };
            // No receiver (no node connected) is fine: they get the store when they connect.
            let _ = self.shared.pushes.send(Arc::new(delta));
        }
    }

    /// Every stored resource of `type_url`, by name, with its version.
    pub fn versions(&self, type_url: &str) -> BTreeMap<String, String> {
        lock(&self.shared.store)
            .resources
            .get(type_url)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.version.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every request recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.records).requests.clone()
    }

    /// Every response sent so far, in order.
    pub fn responses(&self) -> Vec<RecordedResponse> {
        lock(&self.shared.records).responses.clone()
    }

    /// Every CA decision so far, in order.
    pub fn ca_records(&self) -> Vec<CaRecord> {
        lock(&self.shared.records).ca.clone()
    }

    /// Waits (at most `within`) for a recorded request, after the first `skip`, matching `pred`.
    pub async fn wait_request(
        &self,
        skip: usize,
        within: Duration,
        pred: impl Fn(&RecordedRequest) -> bool,
    ) -> Result<RecordedRequest, LabError> {
        self.wait(within, "a matching xDS request", |r| {
            r.requests.iter().skip(skip).find(|x| pred(x)).cloned()
        })
        .await
    }

    /// Waits (at most `within`) for a sent response, after the first `skip`, matching `pred`.
    pub async fn wait_response(
        &self,
        skip: usize,
        within: Duration,
        pred: impl Fn(&RecordedResponse) -> bool,
    ) -> Result<RecordedResponse, LabError> {
        self.wait(within, "a matching xDS response", |r| {
            r.responses.iter().skip(skip).find(|x| pred(x)).cloned()
        })
        .await
    }

    /// Waits (at most `within`) for a CA decision, after the first `skip`, matching `pred`.
    pub async fn wait_ca(
        &self,
        skip: usize,
        within: Duration,
        pred: impl Fn(&CaRecord) -> bool,
    ) -> Result<CaRecord, LabError> {
        self.wait(within, "a matching CA decision", |r| {
            r.ca.iter().skip(skip).find(|x| pred(x)).cloned()
        })
        .await
    }

    async fn wait<T>(
        &self,
        within: Duration,
        what: &str,
        find: impl Fn(&Records) -> Option<T>,
    ) -> Result<T, LabError> {
        let mut changes = self.shared.recorded.subscribe();
        let found = tokio::time::timeout(within, async {
            loop {
                if let Some(t) = find(&lock(&self.shared.records)) {
                    return Some(t);
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match found {
            Ok(Some(t)) => Ok(t),
            _ => Err(LabError::NotReady {
                what: what.to_string(),
                attempts: 1,
                last: format!("nothing within {within:?}"),
            }),
        }
    }
}

impl ControlPlane for LabControlPlane {
    fn proxy_env(&self, node: &str) -> Vec<(String, String)> {
        let root = self.root_cert_path().display().to_string();
        [
            ("XDS_ADDRESS", self.url()),
            ("CA_ADDRESS", self.url()),
            ("XDS_ROOT_CA", root.clone()),
            ("CA_ROOT_CA", root),
            ("ALT_XDS_HOSTNAME", SERVER_NAME.to_string()),
            ("ALT_CA_HOSTNAME", SERVER_NAME.to_string()),
            ("AUTH_TOKEN", self.token_path(node).display().to_string()),
            ("CLUSTER_ID", CLUSTER_ID.to_string()),
            ("FAKE_CA", "false".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

// === impl Shared ===

impl Shared {
    /// The node a request's bearer token belongs to.
    pub(crate) fn node_of(&self, metadata: &tonic::metadata::MetadataMap) -> Option<String> {
        let value = metadata.get("authorization")?.to_str().ok()?;
        let token = value.strip_prefix("Bearer ")?.trim();
        lock(&self.store).tokens.get(token).cloned()
    }

    pub(crate) fn record_request(&self, r: RecordedRequest) {
        lock(&self.records).requests.push(r);
        self.recorded.send_modify(|n| *n += 1);
    }

    pub(crate) fn record_response(&self, r: RecordedResponse) {
        lock(&self.records).responses.push(r);
        self.recorded.send_modify(|n| *n += 1);
    }

    pub(crate) fn record_ca(&self, r: CaRecord) {
        lock(&self.records).ca.push(r);
        self.recorded.send_modify(|n| *n += 1);
    }
}

/// The store's type key for a type URL this control plane serves.
pub(crate) fn known_type(type_url: &str) -> Option<&'static str> {
    [
        ambit_proto::ADDRESS_TYPE_URL,
        ambit_proto::AUTHORIZATION_TYPE_URL,
    ]
    .into_iter()
    .find(|t| *t == type_url)
}

/// Locks, recovering from a poisoned lock: the data is plain and stays consistent per change.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn token_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("token-{node}"))
}

fn write(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|source| LabError::File {
        path: path.display().to_string(),
        source,
    })
}
