//! Endpoint selection for a service: locality preference, outlier skipping, capacity weights.
//!
//! Owns the pure choice of one endpoint among a service's candidates (health and port mapping
//! are already applied by [`super::Snapshot::endpoints`]). Order of the filters, and why:
//! 1. `STRICT` routing keeps only endpoints matching the client on every preferred scope except
//!    `NETWORK` (which is preferred, never required, as in Istio); nothing left ⇒ no endpoint.
//! 2. The caller's `skip` predicate (passive outlier ejection) removes endpoints, unless that
//!    would remove them all: then every candidate is tried again (an ejected endpoint beats none).
//! 3. Endpoints are ranked by how many leading scopes of `routing_preference` they share with the
//!    client (no preference ⇒ rank by network only); only the best rank is kept, so `FAILOVER`
//!    moves to the next locality level only when the closer one has nothing usable.
//! 4. A weighted random pick by `capacity` (all zero ⇒ uniform).
//!
//! Invariant: no allocation beyond one rank per candidate; the candidate list is consumed.

use std::sync::Arc;

use rand::Rng;

use super::types::{LoadBalancerMode, Locality, LocalityScope, Service, Workload};

/// Where the client of a connection sits, for locality-aware endpoint choice.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientLocality<'a> {
    pub network: &'a str,
    pub node: &'a str,
    pub cluster: &'a str,
    pub region: &'a str,
    pub zone: &'a str,
    pub subzone: &'a str,
}

// === impl ClientLocality ===

impl<'a> ClientLocality<'a> {
    /// The locality of a workload acting as client.
    pub fn of(wl: &'a Workload) -> Self {
        ClientLocality::at(wl, &wl.locality)
    }

    /// Only a network is known (e.g. the client workload is not in the state).
    pub fn on_network(network: &'a str) -> Self {
        ClientLocality {
            network,
            ..Default::default()
        }
    }

    fn at(wl: &'a Workload, l: &'a Locality) -> Self {
        ClientLocality {
            network: &wl.network,
            node: &wl.node,
            cluster: &wl.cluster_id,
            region: &l.region,
            zone: &l.zone,
            subzone: &l.subzone,
        }
    }

    /// Whether `wl` is in the same `scope` as this client. Nested scopes compare all their
    /// parents too (a zone name is only meaningful inside its region).
    pub fn matches(&self, scope: LocalityScope, wl: &Workload) -> bool {
        let l = &wl.locality;
        match scope {
            LocalityScope::Region => l.region == self.region,
            LocalityScope::Zone => l.region == self.region && l.zone == self.zone,
            LocalityScope::Subzone => {
                l.region == self.region && l.zone == self.zone && l.subzone == self.subzone
            }
            LocalityScope::Node => wl.node == self.node,
            LocalityScope::Cluster => wl.cluster_id == self.cluster,
            LocalityScope::Network => wl.network == self.network,
        }
    }
}

/// Picks one endpoint of `svc` from `candidates` for `client`; see the module doc for the
/// rules. `skip` says which endpoints to avoid (ejected outliers, already tried ones).
pub fn select<R: Rng + ?Sized>(
    svc: &Service,
    mut candidates: Vec<(Arc<Workload>, u16)>,
    client: &ClientLocality<'_>,
    skip: impl Fn(&Workload, u16) -> bool,
    rng: &mut R,
) -> Option<(Arc<Workload>, u16)> {
    let (mode, prefs): (LoadBalancerMode, &[LocalityScope]) = match &svc.load_balancer {
        Some(lb) => (lb.mode, &lb.routing_preference),
        None => (LoadBalancerMode::Standard, &[]),
    };
    if mode == LoadBalancerMode::Strict {
        candidates.retain(|(w, _)| {
            prefs
                .iter()
                .filter(|s| **s != LocalityScope::Network)
                .all(|s| client.matches(*s, w))
        });
    }
    if candidates.iter().any(|(w, p)| !skip(w, *p)) {
        candidates.retain(|(w, p)| !skip(w, *p));
    }
    if candidates.is_empty() {
        return None;
    }
    let ranks: Vec<usize> = candidates
        .iter()
        .map(|(w, _)| rank(prefs, client, w))
        .collect();
    let best = ranks.iter().copied().max().unwrap_or(0);
    let total: u64 = candidates
        .iter()
        .zip(&ranks)
        .filter(|(_, r)| **r == best)
        .map(|((w, _), _)| u64::from(w.capacity))
        .sum();
    let chosen = if total == 0 {
        let n = ranks.iter().filter(|r| **r == best).count();
        let k = rng.random_range(0..n);
        ranks
            .iter()
            .enumerate()
            .filter(|(_, r)| **r == best)
            .nth(k)
            .map(|(i, _)| i)
    } else {
        let mut point = rng.random_range(0..total);
        let mut found = None;
        for (i, ((w, _), r)) in candidates.iter().zip(&ranks).enumerate() {
            if *r != best {
                continue;
            }
            let weight = u64::from(w.capacity);
            if point < weight {
                found = Some(i);
                break;
            }
            point -= weight;
        }
        found
    };
    chosen.map(|i| candidates.swap_remove(i))
}

/// How many leading scopes of `prefs` the endpoint shares with the client; with no
/// preference, 1 for the client's own network (cross-network hops cost a gateway).
fn rank(prefs: &[LocalityScope], client: &ClientLocality<'_>, wl: &Workload) -> usize {
    if prefs.is_empty() {
        return usize::from(client.matches(LocalityScope::Network, wl));
    }
    prefs.iter().take_while(|s| client.matches(**s, wl)).count()
}
