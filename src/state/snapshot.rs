//! One immutable version of the state: primary maps plus the indexes derived from them.
//!
//! Invariant: a `Snapshot` is never mutated after construction; [`Snapshot::with_update`]
//! builds the next one. Indexes are rebuilt from the primary maps on every update, which
//! keeps them trivially consistent; values are `Arc`s, so a rebuild copies pointers, not
//! workloads. (An incremental rebuild is a later optimisation for very large meshes.)
//! Each service port's endpoints are also prepared for picking ([`EndpointTable`]), once per
//! snapshot, on the first pick for that service: choosing an endpoint per connection does not
//! rebuild the list, and an update does not pay for services nobody connects to.

use std::collections::BTreeSet;

/// The state's maps hash with foldhash (seeded per process) instead of SipHash: their keys come
/// from the control plane, and SipHash showed in both the profile of applying a push and every
/// connection's lookups.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde::ser::SerializeStruct;

use super::lb::{ClientLocality, EndpointTable};
use super::types::{HealthStatus, NetworkMode, Service, Workload, service_key};
use super::{Resource, ResourceKey, Update};
use crate::rbac::{Authorization, IpNet, Scope};

/// An immutable state version. Read it through [`super::StateView`].
#[derive(Debug, Default)]
pub struct Snapshot {
    version: u64,
    workloads: HashMap<String, Arc<Workload>>,
    services: HashMap<String, Arc<Service>>,
    policies: HashMap<String, Arc<Authorization>>,
    /// network → IP → workload. Nested so a lookup borrows `&str` and allocates nothing.
    workloads_by_addr: HashMap<String, HashMap<IpAddr, Arc<Workload>>>,
    /// namespace → name → workload.
    workloads_by_name: HashMap<String, HashMap<String, Arc<Workload>>>,
    /// network → VIP → services with that VIP, in key order (a VIP may be shared, e.g. by
    /// services in different namespaces; the client's namespace decides).
    services_by_vip: HashMap<String, HashMap<IpAddr, Vec<Arc<Service>>>>,
    /// network → VIP ranges, longest prefix first, then in service key order.
    services_by_cidr: HashMap<String, Vec<(IpNet, Arc<Service>)>>,
    /// lowercase hostname → services of that name (one per namespace that defines it), in key
    /// order. DNS answers by name, without knowing the namespace.
    services_by_hostname: HashMap<String, Vec<Arc<Service>>>,
    /// service key → workloads whose `services` name it, in uid order.
    service_workloads: HashMap<String, Vec<Arc<Workload>>>,
    /// Keys of global policies, and of namespace-scoped policies per namespace.
    global_policies: Vec<Arc<Authorization>>,
    namespace_policies: HashMap<String, Vec<Arc<Authorization>>>,
    /// namespace → hostname → service port → its endpoints prepared for picks, filled on the
    /// first pick. Nested so a lookup borrows the service's names and allocates nothing.
    endpoint_tables: HashMap<String, HashMap<String, OnceLock<HashMap<u16, EndpointTable>>>>,
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
        self.workloads_by_addr.get(network)?.get(&ip)
    }

    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.workloads_by_name.get(namespace)?.get(name)
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
        if let Some(found) = self
            .services_by_vip
            .get(network)
            .and_then(|m| m.get(&ip))
            .and_then(|list| best_service(list.iter(), client_ns))
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
            .get(&svc.namespace)
            .and_then(|m| m.get(&svc.hostname))
            .map(|cell| cell.get_or_init(|| self.build_tables(&svc.namespace, &svc.hostname)))
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

    /// The endpoint tables of the service `namespace/hostname` (this snapshot's value of it).
    fn build_tables(&self, namespace: &str, hostname: &str) -> HashMap<u16, EndpointTable> {
        let key = service_key(namespace, hostname);
        match (self.services.get(&key), self.service_workloads.get(&key)) {
            (Some(svc), Some(list)) => endpoint_tables(svc, &key, list),
            _ => HashMap::default(),
        }
    }

    /// The next snapshot: this one with `update` applied, as `version`. Also returns the
    /// removals that named nothing.
    pub(super) fn with_update(&self, update: Update, version: u64) -> (Snapshot, Vec<ResourceKey>) {
        let (mut workloads, mut services, mut policies) = if update.replace_all {
            Default::default()
        } else {
            (
                self.workloads.clone(),
                self.services.clone(),
                self.policies.clone(),
            )
        };
        let mut unknown = Vec::new();
        for key in update.removals {
            let found = match &key {
                ResourceKey::Workload(uid) => workloads.remove(uid).is_some(),
                ResourceKey::Service(k) => services.remove(k).is_some(),
                ResourceKey::Policy(k) => policies.remove(k).is_some(),
                ResourceKey::Address(name) => {
                    workloads.remove(name).is_some() || services.remove(name).is_some()
                }
            };
            if !found {
                unknown.push(key);
            }
        }
        for r in update.upserts {
            match r {
                Resource::Workload(w) => {
                    workloads.insert(w.uid.clone(), w);
                }
                Resource::Service(s) => {
                    services.insert(s.key(), s);
                }
                Resource::Policy(p) => {
                    policies.insert(p.key(), p);
                }
            }
        }
        (
            Snapshot::index(version, workloads, services, policies),
            unknown,
        )
    }

    fn index(
        version: u64,
        workloads: HashMap<String, Arc<Workload>>,
        services: HashMap<String, Arc<Service>>,
        policies: HashMap<String, Arc<Authorization>>,
    ) -> Snapshot {
        let mut snap = Snapshot {
            version,
            ..Default::default()
        };
        // Uid order makes every index deterministic when two entries collide (same IP or
        // same name): the smallest uid wins.
        let mut uids: Vec<&String> = workloads.keys().collect();
        uids.sort();
        for uid in uids.into_iter().rev() {
            let w = &workloads[uid];
            if w.network_mode == NetworkMode::Standard {
                let by_ip = slot(&mut snap.workloads_by_addr, &w.network);
                for ip in &w.workload_ips {
                    by_ip.insert(*ip, w.clone());
                }
            }
            slot(&mut snap.workloads_by_name, w.namespace()).insert(w.name.clone(), w.clone());
            for key in w.services.keys() {
                slot(&mut snap.service_workloads, key).push(w.clone());
            }
        }
        for list in snap.service_workloads.values_mut() {
            list.reverse();
        }
        let mut keys: Vec<&String> = services.keys().collect();
        keys.sort();
        for key in keys.into_iter().rev() {
            let s = &services[key];
            for vip in &s.vips {
                slot(&mut snap.services_by_vip, &vip.network)
                    .entry(vip.address)
                    .or_default()
                    .push(s.clone());
            }
            for c in &s.cidr_vips {
                snap.services_by_cidr
                    .entry(c.network.clone())
                    .or_default()
                    .push((c.net, s.clone()));
            }
            snap.services_by_hostname
                .entry(s.hostname.to_ascii_lowercase())
                .or_default()
                .push(s.clone());
            slot(&mut snap.endpoint_tables, &s.namespace)
                .insert(s.hostname.clone(), OnceLock::new());
        }
        for list in snap.services_by_hostname.values_mut() {
            list.reverse();
        }
        for by_ip in snap.services_by_vip.values_mut() {
            for list in by_ip.values_mut() {
                list.reverse();
            }
        }
        for list in snap.services_by_cidr.values_mut() {
            list.reverse();
            // Stable: equal prefixes keep key order.
            list.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        }
        for p in policies.values() {
            match p.scope {
                Scope::Global => snap.global_policies.push(p.clone()),
                Scope::Namespace => snap
                    .namespace_policies
                    .entry(p.namespace.clone())
                    .or_default()
                    .push(p.clone()),
                Scope::WorkloadSelector => {}
            }
        }
        snap.workloads = workloads;
        snap.services = services;
        snap.policies = policies;
        snap
    }
}

/// The value at `k` in an index, inserted empty first if missing: the key is allocated only
/// then, not once per entry added (a push of 10,000 workloads adds them in a few namespaces).
fn slot<'m, V: Default>(m: &'m mut HashMap<String, V>, k: &str) -> &'m mut V {
    if !m.contains_key(k) {
        m.insert(k.to_owned(), V::default());
    }
    m.get_mut(k)
        .unwrap_or_else(|| unreachable!("inserted just above"))
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
        fn sorted<T>(m: &HashMap<String, Arc<T>>) -> Vec<&T> {
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
