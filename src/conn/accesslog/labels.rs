//! The traffic labels of a connection, built once from the state when its peers are known, and
//! the workload names its access-log line carries.

use std::net::SocketAddr;

use super::super::ProxyInputs;
use crate::core::Identity;
use crate::hbone::Baggage;
use crate::metrics::{Reporter, SecurityPolicy, TrafficLabels, or_unknown};
use crate::state::{Service, Workload};

/// What a connection is recorded under once its peers are known: the traffic labels, and the
/// names its access-log line gives the two workloads.
#[derive(Debug)]
pub struct OpenLabels {
    pub traffic: TrafficLabels,
    /// `src.workload` / `dst.workload`: the pod's name when the workload is known, else its
    /// canonical service (as ztunnel logs them).
    pub src_workload: Option<String>,
    pub dst_workload: Option<String>,
}

impl OpenLabels {
    fn new(traffic: TrafficLabels) -> Self {
        OpenLabels {
            traffic,
            src_workload: None,
            dst_workload: None,
        }
    }

    /// The destination is `wl`, a workload known by host name only, reached at an address it
    /// was resolved to (which may belong to another record, or to none): it, not the
    /// address's owner, is the destination, as in ztunnel.
    pub(crate) fn set_named_destination(&mut self, wl: &Workload) {
        fill_destination(&mut self.traffic, wl);
        self.dst_workload = Some(wl.name.clone());
    }
}

/// Fills the `source_*` labels from a workload.
fn fill_source(l: &mut TrafficLabels, wl: &Workload) {
    l.source_workload = or_unknown(workload_name(wl));
    l.source_canonical_service = or_unknown(canonical_service(wl));
    l.source_canonical_revision = or_unknown(&wl.canonical_revision);
    l.source_workload_namespace = or_unknown(wl.namespace());
    l.source_app = l.source_canonical_service.clone();
    l.source_version = l.source_canonical_revision.clone();
    l.source_cluster = or_unknown(&wl.cluster_id);
    l.source_region = or_unknown(&wl.locality.region);
    l.source_zone = or_unknown(&wl.locality.zone);
}

/// Fills the `destination_*` workload labels from a workload.
fn fill_destination(l: &mut TrafficLabels, wl: &Workload) {
    l.destination_workload = or_unknown(workload_name(wl));
    l.destination_canonical_service = or_unknown(canonical_service(wl));
    l.destination_canonical_revision = or_unknown(&wl.canonical_revision);
    l.destination_workload_namespace = or_unknown(wl.namespace());
    l.destination_app = l.destination_canonical_service.clone();
    l.destination_version = l.destination_canonical_revision.clone();
    l.destination_cluster = or_unknown(&wl.cluster_id);
    l.destination_region = or_unknown(&wl.locality.region);
    l.destination_zone = or_unknown(&wl.locality.zone);
}

/// Fills the `source_*` labels from a peer's `baggage` (ztunnel's "derived" source): the
/// labels of a source the local state does not know, or cannot look up (through a network
/// gateway). `source_app` is the workload name, as ztunnel has it.
fn derive_source(l: &mut TrafficLabels, b: &Baggage) {
    l.source_workload = or_unknown(&b.workload_name);
    l.source_canonical_service = or_unknown(&b.service_name);
    l.source_canonical_revision = or_unknown(&b.service_version);
    l.source_workload_namespace = or_unknown(&b.namespace);
    l.source_app = or_unknown(&b.workload_name);
    l.source_version = or_unknown(&b.service_version);
    l.source_cluster = or_unknown(&b.cluster);
    l.source_region = or_unknown(&b.region);
    l.source_zone = or_unknown(&b.zone);
}

/// Fills the `destination_*` workload labels from the `baggage` of a `200` (ztunnel's
/// "derived" destination), as [`derive_source`] does for the source.
fn derive_destination(l: &mut TrafficLabels, b: &Baggage) {
    l.destination_workload = or_unknown(&b.workload_name);
    l.destination_canonical_service = or_unknown(&b.service_name);
    l.destination_canonical_revision = or_unknown(&b.service_version);
    l.destination_workload_namespace = or_unknown(&b.namespace);
    l.destination_app = or_unknown(&b.workload_name);
    l.destination_version = or_unknown(&b.service_version);
    l.destination_cluster = or_unknown(&b.cluster);
    l.destination_region = or_unknown(&b.region);
    l.destination_zone = or_unknown(&b.zone);
}

impl OpenLabels {
    /// The destination of a double-HBONE connection, which the local state cannot name (it is
    /// on another network), as the final server's `200` describes it in `baggage`: what ztunnel
    /// does after a network gateway.
    pub(crate) fn with_response_baggage(mut self, b: &Baggage) -> Self {
        derive_destination(&mut self.traffic, b);
        self.dst_workload = Some(b.workload_name.clone())
            .filter(|n| !n.is_empty())
            .or_else(|| Some(b.service_name.clone()).filter(|n| !n.is_empty()));
        self
    }
}

/// Fills the `destination_service*` labels when the connection was addressed to a service.
fn fill_service(l: &mut TrafficLabels, svc: &Service) {
    l.destination_service = or_unknown(&svc.hostname);
    l.destination_service_name = or_unknown(&svc.name);
    l.destination_service_namespace = or_unknown(&svc.namespace);
}

/// The first service of `wl` (in key order) that delivers to `port`: by the service's target
/// port, or the workload's own mapping for it (a named port).
fn service_on_port(pi: &ProxyInputs, wl: &Workload, port: u16) -> Option<std::sync::Arc<Service>> {
    wl.services.iter().find_map(|(key, own)| {
        let (ns, host) = key.split_once('/')?;
        let svc = pi.state.service_by_host(ns, host)?;
        let delivers = svc
            .ports
            .iter()
            .any(|(sport, tport)| *tport == port || own.get(sport) == Some(&port));
        delivers.then_some(svc)
    })
}

// Istio falls back to the pod's name when the controller and canonical names are not known.
fn workload_name(wl: &Workload) -> &str {
    if wl.workload_name.is_empty() {
        &wl.name
    } else {
        &wl.workload_name
    }
}

fn canonical_service(wl: &Workload) -> &str {
    if wl.canonical_name.is_empty() {
        workload_name(wl)
    } else {
        &wl.canonical_name
    }
}

/// Labels of an outbound connection (reporter `source`): the local workload as source; the
/// service owning the VIP `orig` (if any) and the workload at `target` as destination.
pub(crate) fn outbound_labels(
    pi: &ProxyInputs,
    service: Option<&Service>,
    target: Option<SocketAddr>,
    dst_principal: Option<&Identity>,
) -> OpenLabels {
    let mut o = OpenLabels::new(TrafficLabels::unknown(Reporter::Source));
    let l = &mut o.traffic;
    let snapshot = pi.state.snapshot();
    let network = &pi.cfg.network;
    let record = snapshot.workload_by_name(&pi.local.namespace, &pi.local.name);
    if let Some(wl) = record {
        fill_source(l, wl);
        o.src_workload = Some(wl.name.clone());
    }
    l.source_principal = pi.local.identity_of(record.map(|w| &**w)).to_string();
    if let Some(svc) = service {
        fill_service(l, svc);
    }
    if let Some(wl) = target.and_then(|t| snapshot.workload_by_addr(network, t.ip())) {
        fill_destination(l, wl);
        o.dst_workload = Some(wl.name.clone());
    }
    if let Some(id) = dst_principal {
        l.destination_principal = id.to_string();
        l.connection_security_policy = SecurityPolicy::MutualTls;
    }
    o
}

/// The service of `local` whose host name is `host`: the only `forwarded` `host=` taken as a
/// label (as ztunnel: the client names a service, but only one of the destination's own
/// counts, so a forged name is never echoed).
fn own_service(pi: &ProxyInputs, local: &Workload, host: &str) -> Option<std::sync::Arc<Service>> {
    local.services.keys().find_map(|key| {
        let (ns, h) = key.split_once('/')?;
        if !h.eq_ignore_ascii_case(host) {
            return None;
        }
        pi.state.service_by_host(ns, h)
    })
}

/// Labels of an inbound connection (reporter `destination`): the local workload as
/// destination; the workload at the peer's address as source, else what the request's
/// `baggage` says of it. `peer_id` is the TLS peer's identity (HBONE), `None` for plaintext.
/// `service_host` is the `host=` of the HBONE `forwarded` header: taken only when it names a
/// service of the local workload. Without one, the service is guessed as ztunnel does: the
/// first of the local workload's services whose target port is `app_port`, the port the
/// connection is delivered to.
pub(crate) fn inbound_labels(
    pi: &ProxyInputs,
    local: &Workload,
    (source_addr, baggage): (Option<SocketAddr>, Option<&Baggage>),
    peer_id: Option<&Identity>,
    (service_host, app_port): (Option<&str>, u16),
) -> OpenLabels {
    let mut o = OpenLabels::new(TrafficLabels::unknown(Reporter::Destination));
    o.dst_workload = Some(local.name.clone());
    let l = &mut o.traffic;
    fill_destination(l, local);
    let named = service_host
        .filter(|h| !h.is_empty())
        .and_then(|h| own_service(pi, local, h));
    if let Some(svc) = named.or_else(|| service_on_port(pi, local, app_port)) {
        fill_service(l, &svc);
    }
    // `local` is this proxy's own workload record: no second lookup.
    l.destination_principal = pi.local.identity_of(Some(local)).to_string();
    // The peer's own word first; the local state, when it knows the source, wins (ztunnel's
    // order).
    if let Some(b) = baggage {
        derive_source(l, b);
        o.src_workload = Some(b.service_name.clone()).filter(|n| !n.is_empty());
    }
    // `None` when the connection came through a network gateway: the address is the
    // gateway's, so looking it up would name the wrong workload.
    if let Some(wl) = source_addr.and_then(|a| pi.state.workload_by_addr(&pi.cfg.network, a.ip())) {
        fill_source(l, &wl);
        o.src_workload = Some(wl.name.clone());
    }
    if let Some(id) = peer_id {
        l.source_principal = id.to_string();
        l.connection_security_policy = SecurityPolicy::MutualTls;
    }
    o
}
