//! The write path: the next [`Snapshot`] from this one and an [`Update`], changing only what
//! the update touches.
//!
//! Each index entry is added as its resource is upserted and marked for removal (by pointer)
//! as its resource is removed or replaced; the touched keys are then settled once per batch:
//! entries of removed resources dropped, the rest sorted into the order that breaks ties. So a
//! batch costs O(touched entries), and a key touched many times in one batch (a service whose
//! 10,000 workloads arrive in one push) is sorted once, not once per entry.

use std::cmp::Ordering;
use std::collections::HashSet as StdHashSet;
use std::hash::Hash;
use std::iter::once;
use std::sync::{Arc, OnceLock};

use foldhash::fast::RandomState;

use super::shards::Shards;
use super::snapshot::{HashMap, Snapshot};
use super::types::{NetworkMode, Service, Workload};
use super::{Resource, ResourceKey, Update};
use crate::rbac::{Authorization, Scope};

type HashSet<K> = StdHashSet<K, RandomState>;

/// What a batch has touched, to settle at its end.
#[derive(Default)]
struct Pending {
    /// Addresses of the workloads and services this batch removed or replaced: their index
    /// entries are dropped when the keys are settled.
    gone: HashSet<usize>,
    /// Holds the removed values until then, so no address in `gone` can be reused meanwhile.
    removed_workloads: Vec<Arc<Workload>>,
    removed_services: Vec<Arc<Service>>,
    by_addr: HashSet<u64>,
    by_name: HashSet<u64>,
    by_vip: HashSet<u64>,
    by_cidr: HashSet<String>,
    by_hostname: HashSet<String>,
    service_workloads: HashSet<String>,
    policies: bool,
}

fn addr<T>(v: &Arc<T>) -> usize {
    Arc::as_ptr(v) as usize
}

/// Marks `k` touched, allocating its owned form only the first time.
fn touch(set: &mut HashSet<String>, k: &str) {
    if !set.contains(k) {
        set.insert(k.to_owned());
    }
}

/// Service key order (`namespace/hostname`), without building the keys.
fn key_order(a: &Service, b: &Service) -> Ordering {
    // Equal namespaces (the usual case) compare by hostname alone.
    if a.namespace == b.namespace {
        return a.hostname.cmp(&b.hostname);
    }
    fn key(s: &Service) -> impl Iterator<Item = u8> + '_ {
        let (ns, host) = (s.namespace.bytes(), s.hostname.bytes());
        ns.chain(once(b'/')).chain(host)
    }
    key(a).cmp(key(b))
}

fn uid_order(a: &Arc<Workload>, b: &Arc<Workload>) -> Ordering {
    a.uid.cmp(&b.uid)
}

/// Settles the touched keys of one index: drops the entries of removed values, sorts the rest,
/// drops duplicates (a value re-added in the same batch) and empty lists.
fn settle<K, E>(
    index: &mut Shards<K, Vec<E>>,
    touched: HashSet<K>,
    gone: &HashSet<usize>,
    value: impl Fn(&E) -> usize,
    order: impl Fn(&E, &E) -> Ordering,
) where
    K: Hash + Eq + Clone,
    E: Clone + PartialEq,
{
    for k in touched {
        let Some(list) = index.get_mut(&k) else {
            continue;
        };
        if !gone.is_empty() {
            list.retain(|e| !gone.contains(&value(e)));
        }
        list.sort_by(&order);
        list.dedup();
        if list.is_empty() {
            index.remove(&k);
        }
    }
}

impl Snapshot {
    /// The next snapshot: this one with `update` applied (removals first, then upserts), as
    /// `version`. Also returns the removals that named nothing.
    pub(super) fn with_update(&self, update: Update, version: u64) -> (Snapshot, Vec<ResourceKey>) {
        let mut next = if update.replace_all {
            Snapshot::default()
        } else {
            self.clone()
        };
        next.version = version;
        let mut p = Pending::default();
        let mut unknown = Vec::new();
        for key in update.removals {
            let found = match &key {
                ResourceKey::Workload(uid) => next.remove_workload(uid, &mut p),
                ResourceKey::Service(k) => next.remove_service(k, &mut p),
                ResourceKey::Policy(k) => next.remove_policy(k, &mut p),
                ResourceKey::Address(name) => {
                    next.remove_workload(name, &mut p) || next.remove_service(name, &mut p)
                }
            };
            if !found {
                unknown.push(key);
            }
        }
        for r in update.upserts {
            match r {
                Resource::Workload(w) => {
                    if let Some(old) = next.workloads.insert(w.uid.clone(), w.clone()) {
                        next.unindex_workload(old, &mut p);
                    }
                    next.index_workload(&w, &mut p);
                }
                Resource::Service(s) => {
                    if let Some(old) = next.services.insert(s.key(), s.clone()) {
                        next.unindex_service(old, &mut p);
                    }
                    next.index_service(&s, &mut p);
                }
                Resource::Policy(pol) => {
                    next.policies.insert(pol.key(), pol);
                    p.policies = true;
                }
            }
        }
        next.settle(p);
        (next, unknown)
    }

    fn remove_workload(&mut self, uid: &str, p: &mut Pending) -> bool {
        match self.workloads.remove(uid) {
            Some(old) => {
                self.unindex_workload(old, p);
                true
            }
            None => false,
        }
    }

    fn remove_service(&mut self, key: &str, p: &mut Pending) -> bool {
        match self.services.remove(key) {
            Some(old) => {
                self.unindex_service(old, p);
                true
            }
            None => false,
        }
    }

    fn remove_policy(&mut self, key: &str, p: &mut Pending) -> bool {
        let found = self.policies.remove(key).is_some();
        p.policies |= found;
        found
    }

    fn index_workload(&mut self, w: &Arc<Workload>, p: &mut Pending) {
        // Re-added in the same batch (the same value upserted twice): keep it.
        p.gone.remove(&addr(w));
        if w.network_mode == NetworkMode::Standard {
            for ip in &w.workload_ips {
                let k = self.addr_key(&w.network, *ip);
                self.workloads_by_addr.slot(&k, || k).push(w.clone());
                p.by_addr.insert(k);
            }
        }
        let k = self.name_key(w.namespace(), &w.name);
        self.workloads_by_name.slot(&k, || k).push(w.clone());
        p.by_name.insert(k);
        for key in w.services.keys() {
            self.service_workloads
                .slot(key.as_str(), || key.clone())
                .push(w.clone());
            touch(&mut p.service_workloads, key);
        }
    }

    fn unindex_workload(&mut self, old: Arc<Workload>, p: &mut Pending) {
        if old.network_mode == NetworkMode::Standard {
            for ip in &old.workload_ips {
                p.by_addr.insert(self.addr_key(&old.network, *ip));
            }
        }
        p.by_name.insert(self.name_key(old.namespace(), &old.name));
        for key in old.services.keys() {
            touch(&mut p.service_workloads, key);
        }
        p.gone.insert(addr(&old));
        p.removed_workloads.push(old);
    }

    fn index_service(&mut self, s: &Arc<Service>, p: &mut Pending) {
        p.gone.remove(&addr(s));
        for vip in &s.vips {
            let k = self.addr_key(&vip.network, vip.address);
            self.services_by_vip.slot(&k, || k).push(s.clone());
            p.by_vip.insert(k);
        }
        for c in &s.cidr_vips {
            self.services_by_cidr
                .slot(c.network.as_str(), || c.network.clone())
                .push((c.net, s.clone()));
            touch(&mut p.by_cidr, &c.network);
        }
        let host = s.hostname.to_ascii_lowercase();
        self.services_by_hostname
            .slot(host.as_str(), || host.clone())
            .push(s.clone());
        touch(&mut p.by_hostname, &host);
        self.fresh_tables(s);
    }

    fn unindex_service(&mut self, old: Arc<Service>, p: &mut Pending) {
        for vip in &old.vips {
            p.by_vip.insert(self.addr_key(&vip.network, vip.address));
        }
        for c in &old.cidr_vips {
            touch(&mut p.by_cidr, &c.network);
        }
        touch(&mut p.by_hostname, &old.hostname.to_ascii_lowercase());
        let k = self.name_key(&old.namespace, &old.hostname);
        if let Some(list) = self.endpoint_tables.get_mut(&k) {
            list.retain(|(s, _)| !(s.namespace == old.namespace && s.hostname == old.hostname));
            if list.is_empty() {
                self.endpoint_tables.remove(&k);
            }
        }
        p.gone.insert(addr(&old));
        p.removed_services.push(old);
    }

    /// Empty endpoint tables for `s`, replacing any it had: they are filled on the next pick.
    fn fresh_tables(&mut self, s: &Arc<Service>) {
        let k = self.name_key(&s.namespace, &s.hostname);
        let list = self.endpoint_tables.slot(&k, || k);
        list.retain(|(o, _)| !(o.namespace == s.namespace && o.hostname == s.hostname));
        list.push((s.clone(), Arc::new(OnceLock::new())));
    }

    fn settle(&mut self, p: Pending) {
        let gone = &p.gone;
        let ptr = |w: &Arc<Workload>| addr(w);
        settle(&mut self.workloads_by_addr, p.by_addr, gone, ptr, uid_order);
        settle(&mut self.workloads_by_name, p.by_name, gone, ptr, uid_order);
        // A service's tables depend on its workloads: a touched list means fresh tables.
        for key in &p.service_workloads {
            if let Some(s) = self.services.get(key.as_str()) {
                let s = s.clone();
                self.fresh_tables(&s);
            }
        }
        settle(
            &mut self.service_workloads,
            p.service_workloads,
            gone,
            ptr,
            uid_order,
        );
        let sptr = |s: &Arc<Service>| addr(s);
        let by_key = |a: &Arc<Service>, b: &Arc<Service>| key_order(a, b);
        settle(&mut self.services_by_vip, p.by_vip, gone, sptr, by_key);
        settle(
            &mut self.services_by_hostname,
            p.by_hostname,
            gone,
            sptr,
            by_key,
        );
        settle(
            &mut self.services_by_cidr,
            p.by_cidr,
            gone,
            |(_, s)| addr(s),
            |(an, a), (bn, b)| {
                bn.prefix_len()
                    .cmp(&an.prefix_len())
                    .then_with(|| key_order(a, b))
            },
        );
        if p.policies {
            self.index_policies();
        }
    }

    /// The policy indexes, rebuilt from the policies (a batch that changes any policy).
    fn index_policies(&mut self) {
        let mut global = Vec::new();
        let mut by_ns: HashMap<String, Vec<Arc<Authorization>>> = HashMap::default();
        for pol in self.policies.values() {
            match pol.scope {
                Scope::Global => global.push(pol.clone()),
                Scope::Namespace => by_ns
                    .entry(pol.namespace.clone())
                    .or_default()
                    .push(pol.clone()),
                Scope::WorkloadSelector => {}
            }
        }
        self.global_policies = Arc::new(global);
        self.namespace_policies = Arc::new(by_ns);
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
