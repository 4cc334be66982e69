//! The ZDS I/O loop: connects to the node agent (with backoff), feeds its requests to the
//! [`StateManager`], carries out the plans (per-pod proxies started and drained), answers every
//! request, and reconnects after any failure; the agent then re-sends its snapshot and the
//! state machine reconciles.
//!
//! Invariants:
//! - requests are handled one at a time, in order; each gets exactly one reply (or the
//!   connection is dropped for a protocol violation);
//! - a pod's proxy runs on the data runtime with its own drain trigger, so stopping one pod
//!   never touches another pod's flows; a deleted pod's listeners are closed before its ACK;
//! - readiness is blocked until the first snapshot has been processed, while any pod is
//!   pending, and until every announced pod's certificate is served ([`PodCertificates`]);
//!   failed starts are retried every `retry_interval`;
//! - a certificate no announced pod uses any more is forgotten;
//! - this loop runs on the control runtime; listeners are bound and served on the data runtime.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::istio::workload::zds;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::core::Identity;
use crate::lifecycle::{self, BlockReady, DrainTrigger, DrainWatcher, Readiness};
use crate::metrics::{ProxyMetrics, WorkloadManagerMetrics};
use crate::proxy::{ConnectionTracker, LocalWorkload, Proxy, ProxyConfig, ProxyInputs};
use crate::state::StateView;
use crate::tls::CertProvider;

use super::certs::{CertificateSource, PodCertificates};
use super::extras::PodExtras;
use super::netns::{HostNetns, InpodSocketFactory, PodNetns};
use super::podstates::{PodPhase, PodState, PodStates};
use super::protocol::{self, Packet, ProtocolError, ZdsConnection};
use super::statemanager::{Next, Reply, Request, Start, StateManager, Violation, WorkloadInfo};

/// How long a stopped proxy may take to close its listeners before we move on.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The workload manager's configuration.
#[derive(Clone, Debug)]
pub struct InpodConfig {
    /// The node agent's socket (`INPOD_UDS`).
    pub uds: PathBuf,
    /// Trust domain of a pod's identity until the control plane describes the pod; then its
    /// record's trust domain is used, as in ztunnel (`TRUST_DOMAIN`, default `cluster.local`).
    pub trust_domain: String,
    /// The per-pod proxy configuration; its socket factory is replaced by the pod's namespace.
    pub proxy: ProxyConfig,
    /// Retry of failed proxy starts.
    pub retry_interval: Duration,
    /// Reconnect backoff: starts at `backoff_initial`, doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Graceful drain of the pods' proxies when the process shuts down.
    pub drain_deadline: Duration,
    /// The DNS proxy and SOCKS5 listeners each pod gets beside its proxy.
    pub extras: PodExtras,
}

impl InpodConfig {
    /// ztunnel's timings: retry every 5 s, reconnect from 10 ms doubling to 15 s.
    pub fn new(uds: PathBuf, trust_domain: String, proxy: ProxyConfig) -> Self {
        InpodConfig {
            uds,
            trust_domain,
            proxy,
            retry_interval: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(15),
            drain_deadline: Duration::from_secs(5),
            extras: PodExtras::default(),
        }
    }
}

/// Everything the workload manager and its per-pod proxies need.
pub struct WorkloadManagerInputs {
    pub cfg: InpodConfig,
    pub state: StateView,
    pub certs: Arc<dyn CertProvider>,
    /// The certificate manager's control side: prefetch and forget per pod identity.
    pub pod_certs: Arc<dyn CertificateSource>,
    /// Shared by every pod proxy.
    pub proxy_metrics: ProxyMetrics,
    pub metrics: WorkloadManagerMetrics,
    pub readiness: Readiness,
    /// The data runtime: pod proxies are bound and served there.
    pub data: Handle,
    /// Where threads return after creating a socket in a pod's namespace.
    pub host: Arc<HostNetns>,
}

/// The ZDS client and the per-pod proxies it runs.
pub struct WorkloadManager {
    cfg: InpodConfig,
    state: StateView,
    certs: Arc<dyn CertProvider>,
    pod_certs: Arc<dyn CertificateSource>,
    proxy_metrics: ProxyMetrics,
    metrics: WorkloadManagerMetrics,
    readiness: Readiness,
    data: Handle,
    host: Arc<HostNetns>,
    /// What `/config_dump` shows of the pods.
    published: PodStates,
}

/// A running pod proxy.
struct PodProxy {
    trigger: DrainTrigger,
    task: JoinHandle<()>,
    /// Its live connections.
    connections: ConnectionTracker,
}

/// Why a connection to the node agent ended.
enum End {
    Drained,
    Lost(ProtocolError),
    Violation(Violation),
}

/// The loop's mutable state, kept across reconnects.
struct Pods {
    sm: StateManager<PodNetns>,
    proxies: HashMap<String, PodProxy>,
    not_ready: Option<BlockReady>,
    /// The certificates of the announced pods.
    certs: PodCertificates,
}

impl WorkloadManager {
    pub fn new(inputs: WorkloadManagerInputs) -> Self {
        let WorkloadManagerInputs {
            cfg,
            state,
            certs,
            pod_certs,
            proxy_metrics,
            metrics,
            readiness,
            data,
            host,
        } = inputs;
        WorkloadManager {
            cfg,
            state,
            certs,
            pod_certs,
            proxy_metrics,
            metrics,
            readiness,
            data,
            host,
            published: PodStates::default(),
        }
    }

    /// The pods' states as they change (`workloadState` in `/config_dump`).
    pub fn pod_states(&self) -> PodStates {
        self.published.clone()
    }

    /// Runs until `drain` starts, then drains every pod's proxy (gracefully, with the deadline).
    pub async fn run(self, drain: DrainWatcher) {
        let mut pods = Pods {
            sm: StateManager::new(),
            proxies: HashMap::new(),
            not_ready: Some(self.readiness.block("workload proxy manager")),
            certs: PodCertificates::new(self.pod_certs.clone(), self.readiness.clone()),
        };
        let mut backoff = self.cfg.backoff_initial;
        loop {
            let connected = tokio::select! {
                biased;
                _ = drain.draining() => break,
                c = ZdsConnection::connect(&self.cfg.uds) => c,
            };
            let conn = match connected {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, retry_in = ?backoff, "node agent not reachable");
                    tokio::select! {
                        biased;
                        _ = drain.draining() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                    continue;
                }
            };
            backoff = self.cfg.backoff_initial;
            info!(uds = %self.cfg.uds.display(), "connected to the node agent");
            pods.sm.connected();
            match self.serve(&conn, &mut pods, &drain).await {
                End::Drained => break,
                End::Lost(e) => warn!(error = %e, "lost the node agent; reconnecting"),
                End::Violation(v) => {
                    warn!(violation = %v, "ZDS protocol violation; dropping the connection")
                }
            }
        }
        info!(pods = pods.proxies.len(), "draining pod proxies");
        let deadline = self.cfg.drain_deadline;
        let drains: Vec<_> = pods
            .proxies
            .drain()
            .map(|(_, p)| {
                tokio::spawn(async move {
                    p.trigger.drain(deadline).await;
                    let _ = p.task.await;
                })
            })
            .collect();
        for d in drains {
            let _ = d.await;
        }
    }

    async fn serve(&self, conn: &ZdsConnection, pods: &mut Pods, drain: &DrainWatcher) -> End {
        let retry_at = tokio::time::Instant::now() + self.cfg.retry_interval;
        let mut retry = tokio::time::interval_at(retry_at, self.cfg.retry_interval);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A pod's identity follows its record's trust domain, so the prefetched certificates
        // are re-synced when the control plane's view changes.
        let mut state_changes = self.state.changes();
        loop {
            let packet = tokio::select! {
                biased;
                _ = drain.draining() => return End::Drained,
                p = conn.recv() => p,
                _ = retry.tick() => {
                    self.retry_pending(pods).await;
                    continue;
                }
                Ok(()) = state_changes.changed() => {
                    self.sync_status(pods);
                    continue;
                }
            };
            let packet = match packet {
                Ok(p) => p,
                Err(e) => return End::Lost(e),
            };
            let reply = match self.handle(packet, pods).await {
                Ok(r) => r,
                Err(v) => return End::Violation(v),
            };
            self.sync_status(pods);
            let error = match &reply {
                Reply::Ack => "",
                Reply::Nack(m) => {
                    warn!(error = %m, "NACK to the node agent");
                    m.as_str()
                }
            };
            if let Err(e) = conn.send_ack(error).await {
                return End::Lost(e);
            }
        }
    }

    /// Decodes, decides and carries out one request; returns its reply.
    async fn handle(&self, packet: Packet, pods: &mut Pods) -> Result<Reply, Violation> {
        let fds = packet.fds.len();
        let req = match protocol::decode_request(&packet.bytes) {
            Ok(r) => r,
            Err(e) => return Ok(Reply::Nack(format!("undecodable WorkloadRequest: {e}"))),
        };
        let Some(req) = self.convert(req, packet.fds) else {
            return Ok(Reply::Nack("WorkloadRequest without a payload".into()));
        };
        info!(request = %describe(&req), fds, "ZDS request");
        let plan = pods.sm.handle(req, fds)?;
        for uid in plan.stop {
            self.stop(&uid, pods).await;
        }
        Ok(match plan.next {
            Next::Reply(r) => r,
            Next::Start(start) => self.start(&start, pods).await,
        })
    }

    /// Wire request → domain request; the descriptor of an `Add` becomes a validated namespace.
    fn convert(&self, req: zds::WorkloadRequest, fds: Vec<OwnedFd>) -> Option<Request<PodNetns>> {
        protocol::to_request(req, fds, |fd| {
            PodNetns::new(fd, self.host.clone()).map_err(|e| e.to_string())
        })
    }

    /// Starts a proxy and reports the outcome to the state machine.
    async fn start(&self, start: &Start<PodNetns>, pods: &mut Pods) -> Reply {
        // Whatever ran under this uid before is replaced (the plan stopped it already).
        let result = self.spawn_proxy(start).await;
        let outcome = pods
            .sm
            .started(start, result.as_ref().map(|_| ()).map_err(Clone::clone));
        match result {
            Ok(proxy) if outcome.keep => {
                self.metrics.proxies_started.inc();
                info!(uid = %start.uid, netns = ?start.netns, "pod proxy started");
                if let Some(old) = pods.proxies.insert(start.uid.clone(), proxy) {
                    stop_proxy(old).await;
                }
            }
            Ok(proxy) => stop_proxy(proxy).await,
            Err(e) => warn!(uid = %start.uid, error = %e, "pod proxy failed to start"),
        }
        outcome.reply
    }

    async fn stop(&self, uid: &str, pods: &mut Pods) {
        if let Some(p) = pods.proxies.remove(uid) {
            stop_proxy(p).await;
            self.metrics.proxies_stopped.inc();
            info!(uid, "pod proxy stopped");
        }
    }

    async fn retry_pending(&self, pods: &mut Pods) {
        for start in pods.sm.pending() {
            debug!(uid = %start.uid, "retrying pod proxy start");
            let _ = self.start(&start, pods).await;
        }
        self.sync_status(pods);
    }

    /// Binds the pod's listeners inside its namespace (on the data runtime) and serves them.
    async fn spawn_proxy(&self, start: &Start<PodNetns>) -> Result<PodProxy, String> {
        let info = &start.info;
        let local = self
            .local_workload(info)
            .map_err(|e| format!("identity of {}/{}: {e}", info.namespace, info.name))?;
        let mut cfg = self.cfg.proxy.clone();
        cfg.socket.factory = Arc::new(InpodSocketFactory {
            netns: start.netns.clone(),
        });
        let inputs = ProxyInputs {
            cfg: Arc::new(cfg),
            local,
            state: self.state.clone(),
            certs: self.certs.clone(),
            metrics: self.proxy_metrics.clone(),
        };
        // Listeners register with the reactor of the runtime they are created on.
        let extras = self.cfg.extras.clone();
        let (ns, name) = (info.namespace.clone(), info.name.clone());
        let (proxy, extras) = self
            .data
            .spawn(async move {
                let cfg = inputs.cfg.clone();
                let state = inputs.state.clone();
                let proxy = Proxy::bind(inputs)?;
                let extras = extras.bind(&proxy, &cfg, &state, &ns, &name)?;
                Ok::<_, crate::proxy::ProxyError>((proxy, extras))
            })
            .await
            .map_err(|e| format!("bind task: {e}"))?
            .map_err(|e| e.to_string())?;
        let (trigger, watcher) = lifecycle::drain_channel();
        let connections = proxy.tracker().clone();
        let task = self.data.spawn(async move {
            tokio::join!(proxy.run(watcher.clone()), extras.run(watcher));
        });
        Ok(PodProxy {
            trigger,
            task,
            connections,
        })
    }

    /// The pod as its proxy serves it; its identity until the control plane describes it uses
    /// the configured trust domain.
    fn local_workload(
        &self,
        info: &WorkloadInfo,
    ) -> Result<LocalWorkload, crate::core::IdentityError> {
        Ok(LocalWorkload {
            namespace: info.namespace.clone(),
            name: info.name.clone(),
            default_identity: Identity::new(
                &self.cfg.trust_domain,
                &info.namespace,
                &info.service_account,
            )?,
        })
    }

    /// Publishes gauges and readiness from the state machine, and prefetches (or forgets) the
    /// certificates of the pods it holds.
    fn sync_status(&self, pods: &mut Pods) {
        let identities: BTreeSet<Identity> = pods
            .sm
            .workloads()
            .filter_map(|info| {
                // An invalid identity fails the pod's start, which reports it; nothing to fetch.
                Some(self.local_workload(info).ok()?.identity(&self.state))
            })
            .collect();
        pods.certs.sync(&identities);
        self.published.publish(
            pods.sm
                .pods()
                .map(|(uid, info, running)| {
                    let connections = pods.proxies.get(uid).map(|p| p.connections.clone());
                    let phase = if running && connections.is_some() {
                        PodPhase::Up
                    } else {
                        PodPhase::Pending
                    };
                    let state = PodState {
                        info: info.clone(),
                        phase,
                        connections,
                    };
                    (uid.to_string(), state)
                })
                .collect(),
        );
        self.metrics
            .active_proxies
            .set(pods.sm.active_count() as i64);
        self.metrics
            .pending_proxies
            .set(pods.sm.pending_count() as i64);
        if pods.sm.is_ready() {
            if pods.not_ready.take().is_some() {
                info!("in-pod workloads ready");
            }
        } else if pods.not_ready.is_none() {
            pods.not_ready = Some(self.readiness.block("workload proxy manager"));
        }
    }
}

/// Drains a pod's proxy at once (a deleted pod) and waits until its listeners are closed.
async fn stop_proxy(p: PodProxy) {
    let waiter = tokio::spawn(p.trigger.drain_immediately());
    if tokio::time::timeout(STOP_WAIT, p.task).await.is_err() {
        warn!("a pod proxy did not stop in time");
    }
    drop(waiter);
}

fn describe(req: &Request<PodNetns>) -> String {
    match req {
        Request::Add { uid, info, .. } => match info {
            Some(i) => format!("add {uid} ({}/{})", i.namespace, i.name),
            None => format!("add {uid}"),
        },
        Request::Keep { uid } => format!("keep {uid}"),
        Request::Del { uid } => format!("del {uid}"),
        Request::SnapshotSent => "snapshot sent".into(),
    }
}
