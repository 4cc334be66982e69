//! `/debug/explain`: the decision the data path would make for a flow from the current state,
//! step by step. Nothing here decides anything itself: the route is [`route_traced`] (the
//! data path's routing, told to record its steps), the receiving proxy's acceptance is
//! [`local_destination_of`] and the authorization is [`crate::rbac::check`] over the snapshot's
//! applicable policies ([`authz::explain`]), the same calls the listeners make.
//!
//! Invariant: the data path pays nothing for this: it routes with [`NoTrace`], whose
//! `ON = false` removes every recording branch at compile time.
//!
//! Random choices (an endpoint, a weighted waypoint) are shown as odds: every endpoint the
//! pick could land on is routed again with all the others avoided, so each path is the route
//! the data path takes when the pick lands there.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;

use crate::core::Identity;
use crate::rbac::ConnFacts;
use crate::state::{EndpointOdds, Snapshot, StateView, TunnelProtocol, Workload};

use super::inbound::local_destination_of;
use super::route::{Route, RouteFrom, route_traced};
use crate::conn::authz::{self, PolicyTrace};
use crate::conn::{LocalWorkload, same_family_ip};

/// What a routing decision tells about itself. Every call site is guarded by `if T::ON`, so
/// the arguments are never built for [`NoTrace`].
pub(super) trait RouteTrace {
    const ON: bool;
    fn step(&mut self, step: String);
    /// The endpoints a service pick may land on, with their odds.
    fn odds(&mut self, odds: EndpointOdds);
    /// The route goes to a waypoint at this HBONE address.
    fn waypoint(&mut self, hbone: SocketAddr);
}

/// The data path's trace: records nothing.
pub(super) struct NoTrace;

impl RouteTrace for NoTrace {
    const ON: bool = false;
    fn step(&mut self, _: String) {}
    fn odds(&mut self, _: EndpointOdds) {}
    fn waypoint(&mut self, _: SocketAddr) {}
}

#[derive(Default)]
struct Recorder {
    steps: Vec<String>,
    /// With the number of steps recorded before them.
    odds: Option<(usize, EndpointOdds)>,
    waypoint: Option<SocketAddr>,
}

impl RouteTrace for Recorder {
    const ON: bool = true;
    fn step(&mut self, step: String) {
        self.steps.push(step);
    }
    fn odds(&mut self, odds: EndpointOdds) {
        self.odds = Some((self.steps.len(), odds));
    }
    fn waypoint(&mut self, hbone: SocketAddr) {
        self.waypoint = Some(hbone);
    }
}

/// The whole answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub source: Party,
    pub destination: SocketAddr,
    /// Steps shared by every path (before any random choice).
    pub steps: Vec<String>,
    pub paths: Vec<Path>,
    /// `allow` or `deny` when every path agrees, `depends on the endpoint` otherwise, `error`
    /// when the connection could not be routed at all.
    pub verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A workload as the explanation names it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Party {
    pub workload: String,
    pub address: Option<IpAddr>,
    pub node: String,
    pub identity: String,
    pub captured: bool,
}

/// One way the flow may go, with its chance.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Path {
    pub probability: f64,
    pub steps: Vec<String>,
    /// `hbone`, `plain`, `double-hbone` or `direct` (an uncaptured source: no proxy).
    pub route: String,
    /// Where the connection is sent: the peer's HBONE address, the gateway, or the
    /// destination itself (plain).
    pub via: Option<SocketAddr>,
    /// What is asked for (HBONE) or connected to (plain).
    pub target: Option<SocketAddr>,
    /// Identities the peer must present (the first one is the workload's own).
    pub expected_identities: Vec<String>,
    pub authorization: Option<Authorization>,
    /// Beyond a waypoint: the waypoint's own connection onwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beyond_waypoint: Option<Box<Explanation>>,
    pub verdict: String,
}

/// The receiving proxy's decision.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// The workload whose policies apply (`namespace/name`).
    pub workload: String,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub identity: Option<String>,
    pub policies: Vec<PolicyTrace>,
    /// As the access log writes it: `allowed`, `connection denied by policy ns/name`, ...
    pub decision: String,
    pub allowed: bool,
}

/// What the explanation is computed with: the proxy's state, network and peers' HBONE port.
#[derive(Clone)]
pub struct ExplainInputs {
    pub state: StateView,
    pub network: String,
    pub hbone_port: u16,
}

/// Why a name does not pick one workload or service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("unknown workload {0:?}")]
    Unknown(String),
    #[error("{name:?} is ambiguous: it names {}", candidates.join(", "))]
    Ambiguous {
        name: String,
        candidates: Vec<String>,
    },
    #[error("malformed destination {0:?}: expected <ip>:<port> or <name>:<port>")]
    BadDestination(String),
    #[error("unknown destination {0:?}: no workload or service of that name")]
    UnknownDestination(String),
    #[error("{0} has no address")]
    NoAddress(String),
}

fn key(wl: &Workload) -> String {
    format!("{}/{}", wl.namespace(), wl.name)
}

/// A workload by `namespace/name`, by name (any namespace), by uid or by address.
pub fn find_workload(
    snapshot: &Snapshot,
    network: &str,
    query: &str,
) -> Result<Arc<Workload>, LookupError> {
    if let Ok(ip) = query.parse::<IpAddr>() {
        return snapshot
            .workload_by_addr(network, ip)
            .cloned()
            .ok_or_else(|| LookupError::Unknown(query.to_string()));
    }
    if let Some((ns, name)) = query.split_once('/') {
        return snapshot
            .workload_by_name(ns, name)
            .cloned()
            .ok_or_else(|| LookupError::Unknown(query.to_string()));
    }
    let found: Vec<&Arc<Workload>> = snapshot
        .workloads()
        .filter(|w| w.name == query || w.uid == query)
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(LookupError::Unknown(query.to_string())),
        many => Err(LookupError::Ambiguous {
            name: query.to_string(),
            candidates: many.iter().map(|w| key(w)).collect(),
        }),
    }
}

/// `ip:port`, or `name:port` where the name is a workload (as [`find_workload`]) or a service
/// (`namespace/name`, name, or host name: its first VIP on `network`).
pub fn find_destination(
    snapshot: &Snapshot,
    network: &str,
    dst: &str,
) -> Result<SocketAddr, LookupError> {
    if let Ok(addr) = dst.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = || LookupError::BadDestination(dst.to_string());
    let (name, port) = dst.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if name.is_empty() || name.contains(':') {
        return Err(bad());
    }
    let (ns, short) = match name.split_once('/') {
        Some((ns, n)) => (Some(ns), n),
        None => (None, name),
    };
    let services: Vec<_> = snapshot
        .services()
        .filter(|s| {
            ns.is_none_or(|ns| s.namespace == ns) && (s.name == short || s.hostname == short)
        })
        .collect();
    let workload = match find_workload(snapshot, network, name) {
        Ok(w) => Some(w),
        Err(LookupError::Unknown(_)) => None,
        Err(e) => return Err(e),
    };
    match (services.as_slice(), workload) {
        ([], None) => Err(LookupError::UnknownDestination(name.to_string())),
        ([], Some(w)) => {
            let ip = w
                .workload_ips
                .first()
                .ok_or_else(|| LookupError::NoAddress(key(&w)))?;
            Ok(SocketAddr::new(*ip, port))
        }
        ([svc], None) => {
            let vip = svc
                .vips
                .iter()
                .find(|v| v.network == network)
                .or_else(|| svc.vips.first())
                .ok_or_else(|| {
                    LookupError::NoAddress(format!("service {}/{}", svc.namespace, svc.name))
                })?;
            Ok(SocketAddr::new(vip.address, port))
        }
        (svcs, w) => Err(LookupError::Ambiguous {
            name: name.to_string(),
            candidates: svcs
                .iter()
                .map(|s| format!("service {}/{}", s.namespace, s.name))
                .chain(w.map(|w| format!("workload {}", key(&w))))
                .collect(),
        }),
    }
}

/// The decision for a connection from `src` to `dst`.
pub fn explain(inputs: &ExplainInputs, src: &Arc<Workload>, dst: SocketAddr) -> Explanation {
    explain_at(inputs, src, dst, 0)
}

fn party(wl: &Workload, like: IpAddr) -> Party {
    Party {
        workload: key(wl),
        address: same_family_ip(wl, like),
        node: wl.node.clone(),
        identity: wl.identity().to_string(),
        captured: wl.protocol == TunnelProtocol::Hbone,
    }
}

fn local_of(wl: &Workload) -> LocalWorkload {
    LocalWorkload {
        namespace: wl.namespace().to_string(),
        name: wl.name.clone(),
        default_identity: wl.identity(),
    }
}

fn explain_at(
    inputs: &ExplainInputs,
    src: &Arc<Workload>,
    dst: SocketAddr,
    depth: u8,
) -> Explanation {
    let snapshot = inputs.state.snapshot();
    let source = party(src, dst.ip());
    let src_addr = SocketAddr::new(source.address.unwrap_or(dst.ip()), 0);
    let mut out = Explanation {
        source,
        destination: dst,
        steps: Vec::new(),
        paths: Vec::new(),
        verdict: String::new(),
        error: None,
    };
    if src.protocol != TunnelProtocol::Hbone {
        out.steps.push(format!(
            "source {} is not captured: its connection leaves without a node proxy",
            key(src)
        ));
        out.paths
            .push(direct_path(inputs, &snapshot, src_addr, dst));
        out.verdict = overall(&out.paths);
        return out;
    }
    let local = local_of(src);
    let identity = local.identity_of(Some(src));
    out.steps.push(format!(
        "source {} on node {:?}: its proxy connects as {identity}",
        key(src),
        src.node
    ));
    let from = RouteFrom {
        state: &inputs.state,
        network: &inputs.network,
        local: &local,
        hbone_port: inputs.hbone_port,
        resolved: &[],
    };
    let mut rec = Recorder::default();
    let first = route_traced(&from, dst, &|_| false, &mut rec);
    let routed = match first {
        Ok(r) => r,
        Err(e) => {
            out.steps.extend(rec.steps);
            out.error = Some(e.to_string());
            out.verdict = "error".into();
            return out;
        }
    };
    match rec.odds.take() {
        Some((before, odds)) => {
            out.steps.extend(rec.steps.drain(..before));
            out.steps.push(format!(
                "{} endpoint(s) may be picked (locality, health, capacity applied)",
                odds.len()
            ));
            for (wl, port, chance) in odds {
                let Some(ip) = same_family_ip(&wl, dst.ip()) else {
                    continue;
                };
                let ep = SocketAddr::new(ip, port);
                let mut r = Recorder::default();
                let path = match route_traced(&from, dst, &|a| a != ep, &mut r) {
                    Ok(routed) => {
                        let steps = r.steps.split_off(before.min(r.steps.len()));
                        path_for(
                            inputs,
                            &snapshot,
                            routed.route,
                            (src_addr, &identity),
                            (chance, steps, r.waypoint),
                            depth,
                        )
                    }
                    Err(e) => error_path(chance, e.to_string()),
                };
                out.paths.push(path);
            }
        }
        None => {
            out.steps.append(&mut rec.steps);
            out.paths.push(path_for(
                inputs,
                &snapshot,
                routed.route,
                (src_addr, &identity),
                (1.0, Vec::new(), rec.waypoint),
                depth,
            ));
        }
    }
    out.verdict = overall(&out.paths);
    out
}

fn overall(paths: &[Path]) -> String {
    let first = paths.first().map(|p| p.verdict.as_str()).unwrap_or("error");
    if paths.iter().all(|p| p.verdict == first) {
        first.to_string()
    } else {
        "depends on the endpoint".into()
    }
}

impl Path {
    /// A path taking `route`, to be filled in.
    fn new(probability: f64, route: &str) -> Path {
        Path {
            probability,
            steps: Vec::new(),
            route: route.into(),
            via: None,
            target: None,
            expected_identities: Vec::new(),
            authorization: None,
            beyond_waypoint: None,
            verdict: String::new(),
        }
    }
}

fn error_path(probability: f64, error: String) -> Path {
    let mut path = Path::new(probability, "none");
    path.steps.push(error);
    path.verdict = "error".into();
    path
}

/// The receiving proxy's decision for `target`, as if it were `receiver`'s.
fn authorize(
    inputs: &ExplainInputs,
    snapshot: &Snapshot,
    receiver: &Workload,
    target: SocketAddr,
    (src, identity): (SocketAddr, Option<&Identity>),
    steps: &mut Vec<String>,
) -> Option<Authorization> {
    let local = local_of(receiver);
    let Some((wl, upstream)) = local_destination_of(&inputs.network, &local, snapshot, target)
    else {
        steps.push(format!(
            "the proxy of {} refuses the CONNECT to {target} (400): not its address, nor one it \
             is the waypoint of",
            key(receiver)
        ));
        return None;
    };
    let facts = ConnFacts {
        src,
        dst: upstream,
        identity,
    };
    let (decision, policies) = authz::explain(snapshot, wl, &facts);
    steps.push(format!(
        "the proxy of {} authorizes {} → {upstream} with {} applicable polic{}: {decision}",
        key(wl),
        identity.map_or("(no identity: plaintext)".to_string(), |i| i.to_string()),
        policies.len(),
        if policies.len() == 1 { "y" } else { "ies" }
    ));
    Some(Authorization {
        workload: key(wl),
        src,
        dst: upstream,
        identity: identity.map(|i| i.to_string()),
        policies,
        allowed: decision.is_allow(),
        decision: decision.to_string(),
    })
}

fn verdict_of(a: &Option<Authorization>) -> String {
    match a {
        Some(a) if a.allowed => "allow".into(),
        _ => "deny".into(),
    }
}

fn path_for(
    inputs: &ExplainInputs,
    snapshot: &Snapshot,
    route: Route,
    (src, identity): (SocketAddr, &Identity),
    (probability, mut steps, waypoint): (f64, Vec<String>, Option<SocketAddr>),
    depth: u8,
) -> Path {
    let mut path = Path::new(probability, "");
    match route {
        Route::Hbone {
            hbone,
            target,
            expected,
        } => {
            path.route = "hbone".into();
            path.via = Some(hbone);
            path.target = Some(target);
            path.expected_identities = expected.iter().map(|i| i.to_string()).collect();
            steps.push(format!(
                "the peer at {hbone} must present {}",
                path.expected_identities.join(" or ")
            ));
            let receiver = snapshot.workload_by_addr(&inputs.network, hbone.ip());
            match receiver {
                None => {
                    steps.push(format!("no workload has address {}", hbone.ip()));
                    path.verdict = "unknown".into();
                }
                Some(receiver) => {
                    path.authorization = authorize(
                        inputs,
                        snapshot,
                        receiver,
                        target,
                        (src, Some(identity)),
                        &mut steps,
                    );
                    path.verdict = verdict_of(&path.authorization);
                    // The waypoint (an L7 proxy, whose own policies are not ambit's) then
                    // connects onwards from its own pod, through its own node proxy.
                    if waypoint == Some(hbone) && path.verdict == "allow" && depth == 0 {
                        let beyond = explain_at(inputs, receiver, target, depth + 1);
                        path.verdict = beyond.verdict.clone();
                        path.beyond_waypoint = Some(Box::new(beyond));
                    }
                }
            }
        }
        Route::Plain(target) => {
            path.route = "plain".into();
            path.via = Some(target);
            path.target = Some(target);
            steps.push(plain_note(inputs, snapshot, target));
            path.verdict = "allow".into();
        }
        Route::Gateway { via, target } => {
            path.route = "double-hbone".into();
            path.via = Some(via.gateway);
            path.target = target;
            path.expected_identities = via.final_expected.iter().map(|i| i.to_string()).collect();
            steps.push(format!(
                "through the gateway at {}; the endpoint's proxy sees the source's identity",
                via.gateway
            ));
            let receiver =
                target.and_then(|t| Some((snapshot.workload_by_addr(&via.network, t.ip())?, t)));
            match receiver {
                Some((r, t)) => {
                    let facts = ConnFacts {
                        src,
                        dst: t,
                        identity: Some(identity),
                    };
                    let (decision, policies) = authz::explain(snapshot, r, &facts);
                    steps.push(format!(
                        "the proxy of {} on network {:?} authorizes {identity} → {t}: {decision}",
                        key(r),
                        via.network
                    ));
                    path.authorization = Some(Authorization {
                        workload: key(r),
                        src,
                        dst: t,
                        identity: Some(identity.to_string()),
                        policies,
                        allowed: decision.is_allow(),
                        decision: decision.to_string(),
                    });
                    path.verdict = verdict_of(&path.authorization);
                }
                None => path.verdict = "unknown".into(),
            }
        }
    }
    path.steps = steps;
    path
}

fn plain_note(inputs: &ExplainInputs, snapshot: &Snapshot, target: SocketAddr) -> String {
    match snapshot.workload_by_addr(&inputs.network, target.ip()) {
        Some(w) => format!(
            "plain TCP to {target}: {} is not captured, so no node proxy authorizes it",
            key(w)
        ),
        None => format!("plain TCP to {target}: outside the mesh, no authorization applies"),
    }
}

/// An uncaptured source: the connection goes straight to `dst`; a captured destination's
/// proxy takes it on its plaintext port (15006) with no identity.
fn direct_path(
    inputs: &ExplainInputs,
    snapshot: &Snapshot,
    src: SocketAddr,
    dst: SocketAddr,
) -> Path {
    let mut path = Path::new(1.0, "direct");
    path.via = Some(dst);
    path.target = Some(dst);
    match snapshot.workload_by_addr(&inputs.network, dst.ip()) {
        Some(w) if w.protocol == TunnelProtocol::Hbone => {
            path.steps.push(format!(
                "{} is captured: its proxy takes the connection in plaintext",
                key(w)
            ));
            path.authorization = authorize(inputs, snapshot, w, dst, (src, None), &mut path.steps);
            path.verdict = verdict_of(&path.authorization);
        }
        _ => {
            path.steps.push(plain_note(inputs, snapshot, dst));
            path.verdict = "allow".into();
        }
    }
    path
}
