//! The mesh's view of DNS: which query names are mesh services, and their addresses.
//!
//! A name is looked up as asked first, then with the client's search domains the way Istio
//! does it: `name`, `name.ns`, `name.ns.svc` and `name.ns.svc.<cluster domain>` all reach the
//! service `name.ns.svc.<cluster domain>`, and a name a stub resolver already suffixed with the
//! client's search domain (`name.other-ns.client-ns.svc.cluster.local`) is stripped back first.
//! A match under another name is answered with a CNAME to the service's hostname.
//!
//! Invariants: names are compared lowercase without the trailing dot; a service with
//! `Namespace` visibility is invisible to clients of other namespaces; a service with VIPs
//! answers with its VIPs on the client's network only, one without VIPs (headless) with the IPs
//! of its endpoints; a single-family service (`ip_families` IPv4 or IPv6 only) answers with that
//! family only, as ztunnel does (a headless one's dual-stack pods must not leak the other).

use std::net::IpAddr;
use std::sync::Arc;

use crate::state::{IpFamilies, Service, StateView, Visibility};

/// Where a query name led in the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshMatch {
    /// The service's hostname (lowercase). Differs from the query name when a search domain or
    /// a wildcard was applied; then the answer carries a CNAME.
    pub hostname: String,
    /// Every address of the name, both families, in a stable order.
    pub addrs: Vec<IpAddr>,
}

/// The client side of a lookup: the pod's namespace and network, and the mesh's settings.
#[derive(Clone, Debug)]
pub struct LookupScope {
    pub namespace: String,
    pub network: String,
    pub cluster_domain: String,
    /// Where a host name defined in several namespaces resolves when the client's own
    /// namespace has none (ztunnel's `PREFERED_SERVICE_NAMESPACE`).
    pub preferred_namespace: Option<String>,
}

impl LookupScope {
    /// The pod's search domains, most specific first: `ns.svc.cd`, `svc.cd`, `cd`.
    fn search_domains(&self) -> [String; 3] {
        let cd = &self.cluster_domain;
        [
            format!("{}.svc.{cd}", self.namespace),
            format!("svc.{cd}"),
            cd.clone(),
        ]
    }

    /// The names to try for `query`, in order, without duplicates.
    pub fn candidates(&self, query: &str) -> Vec<String> {
        let query = normalize(query);
        let search = self.search_domains();
        let mut bases = vec![query.clone()];
        for domain in &search {
            if let Some(base) = query
                .strip_suffix(domain.as_str())
                .and_then(|b| b.strip_suffix('.'))
                .filter(|b| !b.is_empty())
            {
                bases.push(base.to_string());
            }
        }
        let mut out: Vec<String> = Vec::with_capacity(bases.len() * 4);
        for base in &bases {
            let expanded =
                std::iter::once(base.clone()).chain(search.iter().map(|d| format!("{base}.{d}")));
            for name in expanded {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out
    }
}

/// Lowercase, without the trailing dot.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Looks `query` up in the mesh: the first candidate name (see [`LookupScope::candidates`])
/// that is a visible service, else a wildcard service covering the query name itself.
pub fn lookup(state: &StateView, scope: &LookupScope, query: &str) -> Option<MeshMatch> {
    let found = scope
        .candidates(query)
        .into_iter()
        .find_map(|name| visible_service(state, scope, &name))
        .or_else(|| wildcard(state, scope, &normalize(query)))?;
    Some(MeshMatch {
        hostname: found.hostname.to_ascii_lowercase(),
        addrs: addresses(state, scope, &found),
    })
}

/// `*.example.com` covers `a.example.com` and `a.b.example.com`; the longest suffix wins.
fn wildcard(state: &StateView, scope: &LookupScope, query: &str) -> Option<Arc<Service>> {
    let mut rest = query;
    while let Some((_, parent)) = rest.split_once('.') {
        if let Some(svc) = visible_service(state, scope, &format!("*.{parent}")) {
            return Some(svc);
        }
        rest = parent;
    }
    None
}

/// The service named `hostname` the client may see: its own namespace's first, else the
/// preferred namespace's, else the first public one.
fn visible_service(state: &StateView, scope: &LookupScope, hostname: &str) -> Option<Arc<Service>> {
    let services = state.services_by_hostname(hostname);
    let own = services.iter().find(|s| s.namespace == scope.namespace);
    let public = || {
        services
            .iter()
            .filter(|s| s.visibility == Visibility::Public)
    };
    let preferred = || {
        let ns = scope.preferred_namespace.as_deref()?;
        public().find(|s| s.namespace == ns)
    };
    own.or_else(preferred).or_else(|| public().next()).cloned()
}

fn addresses(state: &StateView, scope: &LookupScope, svc: &Service) -> Vec<IpAddr> {
    let mut ips = all_addresses(state, scope, svc);
    match svc.ip_families {
        IpFamilies::Ipv4Only => ips.retain(IpAddr::is_ipv4),
        IpFamilies::Ipv6Only => ips.retain(IpAddr::is_ipv6),
        IpFamilies::Automatic | IpFamilies::Dual => {}
    }
    ips
}

fn all_addresses(state: &StateView, scope: &LookupScope, svc: &Service) -> Vec<IpAddr> {
    if !svc.vips.is_empty() {
        return svc
            .vips
            .iter()
            .filter(|v| v.network == scope.network)
            .map(|v| v.address)
            .collect();
    }
    let mut ips: Vec<IpAddr> = state
        .service_workloads(svc)
        .iter()
        .filter(|w| w.network == scope.network)
        .flat_map(|w| w.workload_ips.iter().copied())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}
