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
//!
//! [`EndpointTable`] is the same choice prepared once per snapshot for one service port (on the
//! first pick for the service, see [`super::Snapshot::pick_endpoint`]): the
//! endpoints grouped by the locality fields the service's routing preference reads, each group
//! with running capacity totals. A pick ranks the groups (a handful), picks a group by its
//! capacity and a member by binary search: O(groups + log n), no allocation. When the pick lands
//! on an endpoint `skip` names, it draws again a few times and then falls back to [`select`] on
//! the whole list; conditioned on landing on an endpoint that is not skipped, a draw has exactly
//! the distribution [`select`] has, so the table changes the cost, never the outcome's odds.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;

use super::types::{LoadBalancerMode, Locality, LocalityScope, Service, Workload};

/// Draws a table makes before falling back to [`select`] (skipped endpoints are rare: ejected
/// outliers and endpoints already tried for this connection).
const TABLE_DRAWS: usize = 8;

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
    candidates: Vec<(Arc<Workload>, u16)>,
    client: &ClientLocality<'_>,
    skip: impl Fn(&Workload, u16) -> bool,
    rng: &mut R,
) -> Option<(Arc<Workload>, u16)> {
    let Eligible {
        mut candidates,
        ranks,
        best,
    } = eligible(svc, candidates, client, skip)?;
    let in_best = |i: usize| ranks[i] == best;
    let total: u64 = candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| in_best(*i))
        .map(|(_, (w, _))| u64::from(w.capacity))
        .sum();
    let chosen = if total == 0 {
        let n = ranks.iter().filter(|r| **r == best).count();
        let k = rng.random_range(0..n);
        (0..candidates.len()).filter(|i| in_best(*i)).nth(k)
    } else {
        let mut point = rng.random_range(0..total);
        let mut found = None;
        for (i, (w, _)) in candidates.iter().enumerate() {
            if !in_best(i) {
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

/// The odds [`select`] gives each endpoint of `candidates` (the ones it can pick, each with
/// its probability; the others are left out): for operators (`/debug/explain`), computed by
/// the same filters as the pick itself.
pub fn odds(
    svc: &Service,
    candidates: Vec<(Arc<Workload>, u16)>,
    client: &ClientLocality<'_>,
    skip: impl Fn(&Workload, u16) -> bool,
) -> EndpointOdds {
    let Some(e) = eligible(svc, candidates, client, skip) else {
        return Vec::new();
    };
    let best: Vec<(Arc<Workload>, u16)> = e
        .candidates
        .into_iter()
        .zip(e.ranks)
        .filter(|(_, r)| *r == e.best)
        .map(|(c, _)| c)
        .collect();
    let total: u64 = best.iter().map(|(w, _)| u64::from(w.capacity)).sum();
    let n = best.len() as f64;
    best.into_iter()
        .map(|(w, p)| {
            let chance = if total == 0 {
                1.0 / n
            } else {
                f64::from(w.capacity) / total as f64
            };
            (w, p, chance)
        })
        .collect()
}

/// Endpoints (with their target port) and the chance a pick lands on each.
pub type EndpointOdds = Vec<(Arc<Workload>, u16, f64)>;

/// What a pick chooses among: the candidates left by steps 1-2 of the module doc, each one's
/// rank (step 3), and the best rank (only those are picked, by capacity).
struct Eligible {
    candidates: Vec<(Arc<Workload>, u16)>,
    ranks: Vec<usize>,
    best: usize,
}

/// Steps 1-3 of the module doc; `None` when nothing is left.
fn eligible(
    svc: &Service,
    mut candidates: Vec<(Arc<Workload>, u16)>,
    client: &ClientLocality<'_>,
    skip: impl Fn(&Workload, u16) -> bool,
) -> Option<Eligible> {
    let (mode, prefs) = mode_and_prefs(svc);
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
    Some(Eligible {
        candidates,
        ranks,
        best,
    })
}

/// How many leading scopes of `prefs` the endpoint shares with the client; with no
/// preference, 1 for the client's own network (cross-network hops cost a gateway).
fn rank(prefs: &[LocalityScope], client: &ClientLocality<'_>, wl: &Workload) -> usize {
    if prefs.is_empty() {
        return usize::from(client.matches(LocalityScope::Network, wl));
    }
    prefs.iter().take_while(|s| client.matches(**s, wl)).count()
}

fn mode_and_prefs(svc: &Service) -> (LoadBalancerMode, &[LocalityScope]) {
    match &svc.load_balancer {
        Some(lb) => (lb.mode, &lb.routing_preference),
        None => (LoadBalancerMode::Standard, &[]),
    }
}

/// One service port's endpoints, prepared for picks (see the module doc).
#[derive(Debug)]
pub(super) struct EndpointTable {
    /// The service the table was built for: a pick for any other value of it is not served
    /// from the table.
    svc: Arc<Service>,
    /// Every endpoint with its target port, in the order [`super::Snapshot::endpoints`] lists
    /// them.
    all: Vec<(Arc<Workload>, u16)>,
    groups: Vec<Group>,
}

/// Endpoints that agree on every locality field the routing preference reads.
#[derive(Debug, Default)]
struct Group {
    /// Indexes into `all`, ascending.
    members: Vec<usize>,
    /// `running[i]`: the capacity of `members[..=i]`.
    running: Vec<u64>,
}

impl Group {
    fn capacity(&self) -> u64 {
        self.running.last().copied().unwrap_or(0)
    }
}

/// The locality fields of `wl` that `prefs` reads (`None` for the others): endpoints with equal
/// keys rank equally and pass or fail a `STRICT` filter together, for any client.
fn locality_key<'a>(prefs: &[LocalityScope], wl: &'a Workload) -> [Option<&'a str>; 6] {
    let l = &wl.locality;
    let mut key = [None; 6];
    let mut read = |slot: usize, v: &'a str| key[slot] = Some(v);
    if prefs.is_empty() {
        read(0, &wl.network);
    }
    for s in prefs {
        match s {
            LocalityScope::Network => read(0, &wl.network),
            LocalityScope::Region => read(1, &l.region),
            LocalityScope::Zone => {
                read(1, &l.region);
                read(2, &l.zone);
            }
            LocalityScope::Subzone => {
                read(1, &l.region);
                read(2, &l.zone);
                read(3, &l.subzone);
            }
            LocalityScope::Node => read(4, &wl.node),
            LocalityScope::Cluster => read(5, &wl.cluster_id),
        }
    }
    key
}

// === impl EndpointTable ===

impl EndpointTable {
    /// Prepares `all` (the endpoints of one port of `svc`, health and ports applied).
    pub(super) fn new(svc: Arc<Service>, all: Vec<(Arc<Workload>, u16)>) -> EndpointTable {
        let (_, prefs) = mode_and_prefs(&svc);
        let mut groups: Vec<Group> = Vec::new();
        {
            let mut by_key: HashMap<[Option<&str>; 6], usize> = HashMap::new();
            for (i, (w, _)) in all.iter().enumerate() {
                let g = *by_key.entry(locality_key(prefs, w)).or_insert_with(|| {
                    groups.push(Group::default());
                    groups.len() - 1
                });
                let group = &mut groups[g];
                let before = group.capacity();
                group.members.push(i);
                group.running.push(before + u64::from(w.capacity));
            }
        }
        EndpointTable { svc, all, groups }
    }

    /// Whether this table was built for exactly `svc` (the same shared value).
    pub(super) fn is_for(&self, svc: &Service) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.svc), svc)
    }

    /// A group's first member: it stands for the whole group in locality decisions.
    fn rep(&self, g: &Group) -> Option<&Workload> {
        g.members.first().map(|i| self.all[*i].0.as_ref())
    }

    /// [`select`] over this table's endpoints, with the same outcome odds.
    pub(super) fn pick<R: Rng + ?Sized>(
        &self,
        client: &ClientLocality<'_>,
        skip: impl Fn(&Workload, u16) -> bool,
        rng: &mut R,
    ) -> Option<(Arc<Workload>, u16)> {
        let (mode, prefs) = mode_and_prefs(&self.svc);
        let strict = mode == LoadBalancerMode::Strict;
        // The rank of a group for this client, or `None` when STRICT rules it out.
        let rank_of = |g: &Group| -> Option<usize> {
            let w = self.rep(g)?;
            let allowed = !strict
                || prefs
                    .iter()
                    .filter(|s| **s != LocalityScope::Network)
                    .all(|s| client.matches(*s, w));
            allowed.then(|| rank(prefs, client, w))
        };
        let best = self.groups.iter().filter_map(rank_of).max()?;
        let in_best = |g: &&Group| rank_of(g) == Some(best);
        let total: u64 = self
            .groups
            .iter()
            .filter(in_best)
            .map(Group::capacity)
            .sum();
        let count: usize = self
            .groups
            .iter()
            .filter(in_best)
            .map(|g| g.members.len())
            .sum();
        for _ in 0..TABLE_DRAWS {
            // Weighted by capacity; all zero ⇒ uniform, as `select` does.
            let (mut point, weigh) = if total > 0 {
                (rng.random_range(0..total), true)
            } else {
                (rng.random_range(0..count as u64), false)
            };
            let mut chosen = None;
            for g in self.groups.iter().filter(in_best) {
                let size = if weigh {
                    g.capacity()
                } else {
                    g.members.len() as u64
                };
                if point < size {
                    let at = if weigh {
                        g.running.partition_point(|r| *r <= point)
                    } else {
                        point as usize
                    };
                    chosen = g.members.get(at).copied();
                    break;
                }
                point -= size;
            }
            let Some((w, port)) = chosen.and_then(|i| self.all.get(i)) else {
                break;
            };
            if !skip(w, *port) {
                return Some((w.clone(), *port));
            }
        }
        select(&self.svc, self.all.clone(), client, skip, rng)
    }
}

#[cfg(test)]
mod tests;
