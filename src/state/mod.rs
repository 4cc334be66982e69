//! The read model: workloads, services and authorization policies, indexed for the data path.
//!
//! Owns the store. The control side holds the single [`StateWriter`]; the data path holds
//! cheap [`StateView`] clones. Every [`StateWriter::apply`] builds a complete new [`Snapshot`]
//! (primary maps plus every index) and swaps it in atomically, so a reader sees either the
//! whole old state or the whole new one, never a half-applied batch, and never blocks.
//! Invariants: indexes are derived only from the primary maps (workloads by uid, services by
//! `namespace/hostname`, policies by `namespace/name`), and the `changes()` version is bumped
//! after the swap, so a woken watcher always reads the new snapshot.

mod apply;
mod lb;
mod shards;
mod snapshot;
mod types;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::rbac::Authorization;

pub use lb::{ClientLocality, EndpointOdds, odds as endpoint_odds, select as select_endpoint};
pub use snapshot::Snapshot;
pub use types::{
    AppTunnelProtocol, ApplicationTunnel, CidrVip, DEFAULT_HBONE_MTLS_PORT, GatewayAddress,
    GatewayDestination, HealthPolicy, HealthStatus, IpFamilies, LoadBalancer, LoadBalancerMode,
    Locality, LocalityScope, NetworkAddress, NetworkMode, Service, TunnelProtocol, Visibility,
    WeightedWaypoint, Workload, service_key,
};

/// A batch of changes, applied atomically. Shaped like a delta-xDS response: upserts of whole
/// resources and removals by resource name.
#[derive(Clone, Debug, Default)]
pub struct Update {
    /// Start from an empty state instead of the current one (a full replacement, e.g. a
    /// reloaded local config).
    pub replace_all: bool,
    pub upserts: Vec<Resource>,
    pub removals: Vec<ResourceKey>,
}

/// One resource to insert or replace. Already shared, because the store keeps it as is.
#[derive(Clone, Debug)]
pub enum Resource {
    Workload(Arc<Workload>),
    Service(Arc<Service>),
    Policy(Arc<Authorization>),
}

/// The name of a resource to remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceKey {
    /// A workload uid.
    Workload(String),
    /// A service `namespace/hostname`.
    Service(String),
    /// A policy `namespace/name`.
    Policy(String),
    /// An `istio.workload.Address` resource name: a workload uid or a service key, whichever
    /// exists (delta xDS removals do not say which).
    Address(String),
}

/// What [`StateWriter::apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The new version, as `changes()` now reports it.
    pub version: u64,
    /// Removals naming nothing that exists (harmless, reported for logging).
    pub unknown_removals: Vec<ResourceKey>,
}

/// The control side's handle: the only way to change the state.
pub struct StateWriter {
    shared: Arc<ArcSwap<Snapshot>>,
    /// Serializes writers so two batches never build from the same base and lose one.
    write_lock: Mutex<()>,
    version: watch::Sender<u64>,
}

/// The data path's handle: lock-free reads of the current snapshot.
#[derive(Clone)]
pub struct StateView {
    shared: Arc<ArcSwap<Snapshot>>,
    version: watch::Receiver<u64>,
}

// === impl Update ===

impl Update {
    pub fn upsert(mut self, r: impl Into<Resource>) -> Self {
        self.upserts.push(r.into());
        self
    }

    pub fn remove(mut self, key: ResourceKey) -> Self {
        self.removals.push(key);
        self
    }

    pub fn is_empty(&self) -> bool {
        !self.replace_all && self.upserts.is_empty() && self.removals.is_empty()
    }
}

impl From<Workload> for Resource {
    fn from(w: Workload) -> Self {
        Resource::Workload(Arc::new(w))
    }
}

impl From<Service> for Resource {
    fn from(s: Service) -> Self {
        Resource::Service(Arc::new(s))
    }
}

impl From<Authorization> for Resource {
    fn from(p: Authorization) -> Self {
        Resource::Policy(Arc::new(p))
    }
}

// === impl StateWriter ===

impl StateWriter {
    /// An empty store (version 0) and its first view.
    pub fn new() -> (StateWriter, StateView) {
        let shared = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let (tx, rx) = watch::channel(0);
        let writer = StateWriter {
            shared: shared.clone(),
            write_lock: Mutex::new(()),
            version: tx,
        };
        (
            writer,
            StateView {
                shared,
                version: rx,
            },
        )
    }

    /// Applies a batch: removals first, then upserts (so a batch can replace a resource by
    /// removing and re-adding it), then rebuilds the indexes, swaps, and bumps the version.
    pub fn apply(&self, update: Update) -> Applied {
        // A poisoned lock only means another writer panicked; the snapshot it guards is
        // immutable and was never half-written, so carrying on is safe.
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.shared.load_full();
        let version = current.version() + 1;
        let (next, unknown_removals) = current.with_update(update, version);
        self.shared.store(Arc::new(next));
        self.version.send_replace(version);
        Applied {
            version,
            unknown_removals,
        }
    }

    /// Another read handle on this store.
    pub fn view(&self) -> StateView {
        StateView {
            shared: self.shared.clone(),
            version: self.version.subscribe(),
        }
    }
}

// === impl StateView ===

impl StateView {
    /// The whole current state, for config dumps and iteration.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.load_full()
    }

    pub fn workload_by_addr(&self, network: &str, ip: IpAddr) -> Option<Arc<Workload>> {
        self.shared.load().workload_by_addr(network, ip).cloned()
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<Arc<Workload>> {
        self.shared.load().workload_by_uid(uid).cloned()
    }

    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<Arc<Workload>> {
        self.shared
            .load()
            .workload_by_name(namespace, name)
            .cloned()
    }

    pub fn service_by_vip(&self, network: &str, ip: IpAddr) -> Option<Arc<Service>> {
        self.shared.load().service_by_vip(network, ip).cloned()
    }

    /// The service `ip` means to a client in `client_ns` (visibility, namespace preference,
    /// exact then longest-prefix CIDR VIPs): see [`Snapshot::service_by_vip_for`].
    pub fn service_by_vip_for(
        &self,
        network: &str,
        ip: IpAddr,
        client_ns: &str,
    ) -> Option<Arc<Service>> {
        self.shared
            .load()
            .service_by_vip_for(network, ip, Some(client_ns))
            .cloned()
    }

    pub fn service_by_host(&self, namespace: &str, hostname: &str) -> Option<Arc<Service>> {
        self.shared
            .load()
            .service_by_host(namespace, hostname)
            .cloned()
    }

    /// Services named `hostname` in any namespace (case-insensitive), in `namespace/hostname`
    /// order: the DNS view of the mesh.
    pub fn services_by_hostname(&self, hostname: &str) -> Vec<Arc<Service>> {
        let snap = self.shared.load();
        if hostname.bytes().any(|b| b.is_ascii_uppercase()) {
            snap.services_by_hostname(&hostname.to_ascii_lowercase())
                .to_vec()
        } else {
            snap.services_by_hostname(hostname).to_vec()
        }
    }

    /// The workloads backing `svc` on any port, healthy ones only unless the service allows
    /// all: what a headless service's name resolves to.
    pub fn service_workloads(&self, svc: &Service) -> Vec<Arc<Workload>> {
        let allow_unhealthy = svc.allows_unhealthy();
        self.shared
            .load()
            .service_workloads(svc)
            .iter()
            .filter(|w| allow_unhealthy || w.status == HealthStatus::Healthy)
            .cloned()
            .collect()
    }

    /// Endpoints of a service for a service port: (workload, target port) pairs. The target
    /// port is the workload's own mapping, else the service's (0 ⇒ the service port); a
    /// workload with neither mapping for this port is not an endpoint. Unhealthy workloads
    /// are excluded unless the service's health policy allows them.
    pub fn endpoints(&self, svc: &Service, svc_port: u16) -> Vec<(Arc<Workload>, u16)> {
        self.shared.load().endpoints(svc, svc_port)
    }

    /// One endpoint at random, weighted by capacity, among those on `network` if there are
    /// any, else among all (the service's routing preference still applies).
    pub fn pick_endpoint(
        &self,
        svc: &Service,
        svc_port: u16,
        network: &str,
    ) -> Option<(Arc<Workload>, u16)> {
        self.pick_endpoint_for(
            svc,
            svc_port,
            &ClientLocality::on_network(network),
            |_, _| false,
        )
    }

    /// One endpoint of `svc` for `svc_port`, chosen for `client` (routing preference, then
    /// capacity), avoiding those `skip` names unless that leaves none: see [`lb`].
    pub fn pick_endpoint_for(
        &self,
        svc: &Service,
        svc_port: u16,
        client: &ClientLocality<'_>,
        skip: impl Fn(&Workload, u16) -> bool,
    ) -> Option<(Arc<Workload>, u16)> {
        self.shared
            .load()
            .pick_endpoint(svc, svc_port, client, skip, &mut rand::rng())
    }

    /// Every endpoint [`StateView::pick_endpoint_for`] may choose, with its odds.
    pub fn endpoint_odds(
        &self,
        svc: &Service,
        svc_port: u16,
        client: &ClientLocality<'_>,
        skip: impl Fn(&Workload, u16) -> bool,
    ) -> EndpointOdds {
        lb::odds(svc, self.endpoints(svc, svc_port), client, skip)
    }

    /// Policies that apply to `workload`: global ones, its namespace's, and the ones it names
    /// (unknown names are skipped). Each at most once, in key order.
    pub fn policies_for(&self, workload: &Workload) -> Vec<Arc<Authorization>> {
        self.shared.load().policies_for(workload)
    }

    /// A receiver of the state version, bumped on every applied update.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.clone()
    }
}

#[cfg(test)]
mod tests;
