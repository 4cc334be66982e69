//! One immutable version of the state: primary maps plus the indexes derived from them.
//!
//! Invariant: a `Snapshot` is never mutated after construction; [`Snapshot::with_update`]
//! (in `apply.rs`) builds the next one from a clone of this one, changing only what the
//! update touches. Every map is a [`Shards`]: the clone copies one pointer per shard and a
//! change copies the shards it touches, so a small delta on a large state costs a few shard
//! copies, and a push of N resources costs O(N) index work, not a rebuild of every index.
//! The indexes hold exactly what a rebuild from the primary maps would: the `state` tests
//! compare them after arbitrary batches.
//! Each service port's endpoints are also prepared for picking ([`EndpointTable`]), once per
//! service value and endpoint list, on the first pick for that service: choosing an endpoint
//! per connection does not rebuild the list, an update keeps the prepared tables of the
//! services it does not touch, and nobody pays for services nobody connects to.

use std::collections::BTreeSet;

/// The state's maps hash with foldhash (seeded per process) instead of SipHash: their keys come
/// from the control plane, and SipHash showed in both the profile of applying a push and every
/// connection's lookups.
pub(super) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use foldhash::fast::RandomState;
use serde::Serialize;
use serde::ser::SerializeStruct;

use super::lb::{ClientLocality, EndpointTable};
use super::shards::Shards;
use super::types::{HealthStatus, Service, Workload, service_key};
use crate::rbac::{Authorization, IpNet};

/// A service's prepared endpoint tables (service port → table), filled on the first pick.
pub(super) type Tables = Arc<OnceLock<HashMap<u16, EndpointTable>>>;

/// An immutable state version. Read it through [`super::StateView`].
///
/// The candidate indexes are keyed by a hash of a composite key (network and IP, namespace and
/// name), so a lookup borrows its parts and allocates nothing; each holds every entry whose key
/// hashes there, in the order that decides ties, and a lookup takes the first that matches.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub(super) version: u64,
    /// Seeds the composite keys; carried from snapshot to snapshot with the indexes.
    pub(super) keys: RandomState,
    pub(super) workloads: Shards<String, Arc<Workload>>,
    pub(super) services: Shards<String, Arc<Service>>,
    pub(super) policies: Shards<String, Arc<Authorization>>,
    /// (network, IP) → workloads there (standard network mode only), in uid order: the
    /// smallest uid wins.
    pub(super) workloads_by_addr: Shards<u64, Vec<Arc<Workload>>>,
    /// (namespace, name) → workloads, in uid order.
    pub(super) workloads_by_name: Shards<u64, Vec<Arc<Workload>>>,
    /// (network, VIP) → services with that VIP, in key order (a VIP may be shared, e.g. by
    /// services in different namespaces; the client's namespace decides).
    pub(super) services_by_vip: Shards<u64, Vec<Arc<Service>>>,
    /// network → VIP ranges, longest prefix first, then in service key order.
    pub(super) services_by_cidr: Shards<String, Vec<(IpNet, Arc<Service>)>>,
    /// lowercase hostname → services of that name (one per namespace that defines it), in key
    /// order. DNS answers by name, without knowing the namespace.
    pub(super) services_by_hostname: Shards<String, Vec<Arc<Service>>>,
    /// service key → workloads whose `services` name it, in uid order.
    pub(super) service_workloads: Shards<String, Vec<Arc<Workload>>>,
    /// Global policies, and namespace-scoped policies per namespace (rebuilt when a batch
    /// changes any policy: there are few).
    pub(super) global_policies: Arc<Vec<Arc<Authorization>>>,
    pub(super) namespace_policies: Arc<HashMap<String, Vec<Arc<Authorization>>>>,
    /// (namespace, hostname) → each existing service there with its endpoint tables; a change
    /// to the service or to its workloads gives it fresh (empty) tables.
    pub(super) endpoint_tables: Shards<u64, Vec<(Arc<Service>, Tables)>>,
}

// === impl Snapshot ===

impl Snapshot {
    /// The version this snapshot was published as (0 = empty initial state).
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Authorization>> {
        self.policies.values()
    }

    pub fn policy(&self, key: &str) -> Option<&Arc<Authorization>> {
        self.policies.get(key)
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    pub fn workload_by_addr(&self, network: &str, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads_by_addr
            .get(&self.addr_key(network, ip))?
            .iter()
            .find(|w| w.network == network && w.workload_ips.contains(&ip))
    }

    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.workloads_by_name
            .get(&self.name_key(namespace, name))?
            .iter()
            .find(|w| w.namespace() == namespace && w.name == name)
    }

    /// The key of the (network, IP) indexes.
    pub(super) fn addr_key(&self, network: &str, ip: IpAddr) -> u64 {
        self.keys.hash_one((network, ip))
    }

    /// The key of the (namespace, name) and (namespace, hostname) indexes.
    pub(super) fn name_key(&self, namespace: &str, name: &str) -> u64 {
        self.keys.hash_one((namespace, name))
    }

    /// The service a connection to `ip` on `network` means, as any client sees it: the first
    /// exact VIP match in key order, else the longest CIDR VIP containing `ip`.
    pub fn service_by_vip(&self, network: &str, ip: IpAddr) -> Option<&Arc<Service>> {
        self.service_by_vip_for(network, ip, None)
    }

    /// The service a connection to `ip` on `network` means to a client in `client_ns`
    /// (`None`: no visibility filter). Exact VIPs beat CIDR VIPs, a longer prefix beats a
    /// shorter one; among equals, services visible to the client only, preferring the
    /// client's own namespace, then `canonical` ones, then key order.
    pub fn service_by_vip_for(
        &self,
        network: &str,
        ip: IpAddr,
        client_ns: Option<&str>,
    ) -> Option<&Arc<Service>> {
        let exact = |s: &&Arc<Service>| {
            s.vips
                .iter()
                .any(|v| v.address == ip && v.network == network)
        };
        if let Some(found) = self
            .services_by_vip
            .get(&self.addr_key(network, ip))
            .and_then(|list| best_service(list.iter().filter(exact), client_ns))
        {
            return Some(found);
        }
        let ranges = self.services_by_cidr.get(network)?;
        let visible = |s: &Service| client_ns.is_none_or(|ns| s.visible_to(ns));
        // The list is longest-prefix first, so the first visible match fixes the length.
        let len = ranges
            .iter()
            .find(|(net, s)| net.contains(ip) && visible(s))?
            .0
            .prefix_len();
        best_service(
            ranges
                .iter()
                .filter(|(net, _)| net.prefix_len() == len && net.contains(ip))
                .map(|(_, s)| s),
            client_ns,
        )
    }

    pub fn service_by_host(&self, namespace: &str, hostname: &str) -> Option<&Arc<Service>> {
        self.services.get(&service_key(namespace, hostname))
    }

    /// Services named `hostname` (any namespace), in key order. `hostname` must be lowercase.
    pub fn services_by_hostname(&self, hostname: &str) -> &[Arc<Service>] {
        self.services_by_hostname
            .get(hostname)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The workloads that name `svc` among their services, in uid order, whatever their
    /// health or ports.
    pub fn service_workloads(&self, svc: &Service) -> &[Arc<Workload>] {
        self.service_workloads
            .get(&svc.key())
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// See [`super::StateView::endpoints`].
    pub fn endpoints(&self, svc: &Service, svc_port: u16) -> Vec<(Arc<Workload>, u16)> {
        let key = svc.key();
        let Some(workloads) = self.service_workloads.get(&key) else {
            return Vec::new();
        };
        endpoints_among(svc, &key, workloads, svc_port)
    }

    /// One endpoint of `svc` for `svc_port`, chosen for `client` (see [`super::lb`]): from the
    /// prepared table when `svc` is this snapshot's own value of the service, else from a
    /// freshly built list (same outcome, more work).
    pub fn pick_endpoint<R: rand::Rng + ?Sized>(
        &self,
        svc: &Service,
        svc_port: u16,
        client: &ClientLocality<'_>,
        skip: impl Fn(&Workload, u16) -> bool,
        rng: &mut R,
    ) -> Option<(Arc<Workload>, u16)> {
        let table = self
            .endpoint_tables
            .get(&self.name_key(&svc.namespace, &svc.hostname))
            .and_then(|list| {
                list.iter()
                    .find(|(s, _)| s.namespace == svc.namespace && s.hostname == svc.hostname)
            })
            .map(|(s, cell)| cell.get_or_init(|| self.build_tables(s)))
            .and_then(|m| m.get(&svc_port))
            .filter(|t| t.is_for(svc));
        match table {
            Some(t) => t.pick(client, skip, rng),
            None => super::lb::select(svc, self.endpoints(svc, svc_port), client, skip, rng),
        }
    }

    /// The policies that apply to `workload` (global, its namespace's, the ones it names), as
    /// a borrowing iterator for the data path's authorization: no allocation, and only the
    /// applicable policies are visited. A policy may appear twice (e.g. global and also named);
    /// evaluation is indifferent to that.
    pub fn applicable_policies<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a Authorization> + 'a {
        let named = workload
            .authorization_policies
            .iter()
            .filter_map(|k| self.policies.get(k));
        self.global_policies
            .iter()
            .chain(
                self.namespace_policies
                    .get(workload.namespace())
                    .into_iter()
                    .flatten(),
            )
            .chain(named)
            .map(|p| p.as_ref())
    }

    /// See [`super::StateView::policies_for`].
    pub fn policies_for(&self, workload: &Workload) -> Vec<Arc<Authorization>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let named = workload
            .authorization_policies
            .iter()
            .filter_map(|k| self.policies.get(k));
        let scoped = self.global_policies.iter().chain(
            self.namespace_policies
                .get(workload.namespace())
                .into_iter()
                .flatten(),
        );
        for p in scoped.chain(named) {
            if seen.insert(p.key()) {
                out.push(p.clone());
            }
        }
        out.sort_by_key(|p| p.key());
        out
    }

    /// The endpoint tables of `svc` (this snapshot's value of it).
    fn build_tables(&self, svc: &Arc<Service>) -> HashMap<u16, EndpointTable> {
        let key = svc.key();
        match self.service_workloads.get(&key) {
            Some(list) => endpoint_tables(svc, &key, list),
            None => HashMap::default(),
        }
    }
}

/// The endpoints of `svc` (key `key`) for `svc_port` among `workloads` (those naming it):
/// healthy ones unless the service allows all, each with its target port, the workload's own
/// mapping first.
fn endpoints_among(
    svc: &Service,
    key: &str,
    workloads: &[Arc<Workload>],
    svc_port: u16,
) -> Vec<(Arc<Workload>, u16)> {
    let allow_unhealthy = svc.allows_unhealthy();
    workloads
        .iter()
        .filter(|w| allow_unhealthy || w.status == HealthStatus::Healthy)
        .filter_map(|w| {
            let own = w
                .services
                .get(key)
                .and_then(|ports| ports.get(&svc_port))
                .copied()
                .filter(|p| *p != 0);
            let target = match own {
                Some(p) => p,
                None => match svc.ports.get(&svc_port)? {
                    0 => svc_port,
                    p => *p,
                },
            };
            Some((w.clone(), target))
        })
        .collect()
}

/// Every port of `svc` that can have endpoints (its own and any workload's override), each
/// with its prepared table; ports with no endpoint are left out.
fn endpoint_tables(
    svc: &Arc<Service>,
    key: &str,
    workloads: &[Arc<Workload>],
) -> HashMap<u16, EndpointTable> {
    let mut ports: BTreeSet<u16> = svc.ports.keys().copied().collect();
    for w in workloads {
        if let Some(own) = w.services.get(key) {
            ports.extend(own.iter().filter(|(_, t)| **t != 0).map(|(p, _)| *p));
        }
    }
    ports
        .into_iter()
        .filter_map(|port| {
            let all = endpoints_among(svc, key, workloads, port);
            (!all.is_empty()).then(|| (port, EndpointTable::new(svc.clone(), all)))
        })
        .collect()
}

/// The best of several services sharing a VIP for a client in `client_ns` (see
/// [`Snapshot::service_by_vip_for`]); `list` is in key order.
fn best_service<'a>(
    list: impl Iterator<Item = &'a Arc<Service>>,
    client_ns: Option<&str>,
) -> Option<&'a Arc<Service>> {
    let mut best: Option<(&'a Arc<Service>, (bool, bool))> = None;
    for s in list {
        if client_ns.is_some_and(|ns| !s.visible_to(ns)) {
            continue;
        }
        let score = (client_ns == Some(s.namespace.as_str()), s.canonical);
        // Strictly better only, so key order breaks ties.
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((s, score));
        }
    }
    best.map(|(s, _)| s)
}

/// `{version, workloads, services, policies}`, each list in key order, for `/config_dump`.
impl Serialize for Snapshot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn sorted<T>(m: &Shards<String, Arc<T>>) -> Vec<&T> {
            let mut v: Vec<(&String, &Arc<T>)> = m.iter().collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            v.into_iter().map(|(_, t)| t.as_ref()).collect()
        }
        let mut st = s.serialize_struct("Snapshot", 4)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("workloads", &sorted(&self.workloads))?;
        st.serialize_field("services", &sorted(&self.services))?;
        st.serialize_field("policies", &sorted(&self.policies))?;
        st.end()
    }
}
