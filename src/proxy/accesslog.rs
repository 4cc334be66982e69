//! One access-log line and one Istio metrics record per connection, on the `access` tracing
//! target and in the `istio_tcp_*` families.
//!
//! The record is written exactly once: by `complete`/`fail`, or on drop if the task was
//! cancelled (a forced drain), so no connection goes unlogged and opened/closed counts balance.
//! Traffic labels are built once per connection from the state ([`outbound_labels`],
//! [`inbound_labels`]); the byte counters they resolve to are then moved by the copy loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::ProxyInputs;
use super::copy::CopyStats;
use crate::core::Identity;
use crate::metrics::{
    ConnectionMetrics, HboneTransportLabel, Reporter, SecurityPolicy, TrafficLabels, UNKNOWN,
    or_unknown,
};
use crate::state::{Service, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A connection being logged.
pub struct ConnectionLog {
    start: Instant,
    direction: Direction,
    pub src: SocketAddr,
    pub src_identity: Option<Identity>,
    pub dst: Option<SocketAddr>,
    pub hbone_addr: Option<SocketAddr>,
    pub dst_identity: Option<Identity>,
    /// Istio's response flag, e.g. `DENY` when authorization refused or closed the connection.
    pub response_flags: Option<&'static str>,
    /// The HBONE transport (`h2` or `h3`), for tunnelled connections.
    pub transport: Option<HboneTransportLabel>,
    pub stats: Arc<CopyStats>,
    /// Set once the connection's labels are known (see [`ConnectionLog::open`]).
    metrics: Option<ConnectionMetrics>,
    done: bool,
}

impl ConnectionLog {
    pub fn new(direction: Direction, src: SocketAddr) -> Self {
        ConnectionLog {
            start: Instant::now(),
            direction,
            src,
            src_identity: None,
            dst: None,
            hbone_addr: None,
            dst_identity: None,
            response_flags: None,
            transport: None,
            stats: Arc::new(CopyStats::default()),
            metrics: None,
            done: false,
        }
    }

    /// Counts the connection as opened under `labels`; from now on the copy (which must take
    /// `self.stats` after this call) moves the byte counters live. Called at most once.
    pub fn open(&mut self, pi: &ProxyInputs, labels: TrafficLabels) {
        if self.metrics.is_some() {
            return;
        }
        let m = ConnectionMetrics::open(&pi.metrics.traffic, labels);
        let (request, response) = m.byte_counters();
        self.stats = Arc::new(CopyStats::with_counters(request, response));
        self.metrics = Some(m);
    }

    pub fn complete(mut self) {
        self.emit(None);
    }

    pub fn fail(mut self, error: &dyn std::fmt::Display) {
        self.emit(Some(error.to_string()));
    }

    fn emit(&mut self, error: Option<String>) {
        self.done = true;
        let flags = self.response_flags;
        if let Some(m) = &mut self.metrics {
            m.close(flags);
        }
        // Sent: from the source toward the destination; received: the way back.
        let (sent, recv) = self.stats.totals();
        let src = self.src;
        let direction = self.direction.as_str();
        let duration = format!("{}ms", self.start.elapsed().as_millis());
        let src_identity = self.src_identity.as_ref().map(tracing::field::display);
        let dst_identity = self.dst_identity.as_ref().map(tracing::field::display);
        let dst = self.dst.map(tracing::field::display);
        let hbone = self.hbone_addr.map(tracing::field::display);
        let transport = self.transport.map(tracing::field::debug);
        let l = self.metrics.as_ref().map(ConnectionMetrics::labels);
        let known = |f: fn(&TrafficLabels) -> &str| {
            l.map(f)
                .filter(|v| *v != UNKNOWN)
                .map(tracing::field::display)
        };
        let src_workload = known(|l| &l.source_workload);
        let src_namespace = known(|l| &l.source_workload_namespace);
        let dst_service = known(|l| &l.destination_service);
        let dst_workload = known(|l| &l.destination_workload);
        let dst_namespace = known(|l| &l.destination_workload_namespace);
        match error {
            None => tracing::event!(
                target: "access",
                tracing::Level::INFO,
                src.addr = %src,
                src.workload = src_workload,
                src.namespace = src_namespace,
                src.identity = src_identity,
                dst.addr = dst,
                dst.hbone_addr = hbone,
                dst.service = dst_service,
                dst.workload = dst_workload,
                dst.namespace = dst_namespace,
                dst.identity = dst_identity,
                direction = %direction,
                response_flags = flags,
                transport = transport,
                bytes_sent = sent,
                bytes_recv = recv,
                duration = %duration,
                "connection complete"
            ),
            Some(error) => tracing::event!(
                target: "access",
                tracing::Level::WARN,
                src.addr = %src,
                src.workload = src_workload,
                src.namespace = src_namespace,
                src.identity = src_identity,
                dst.addr = dst,
                dst.hbone_addr = hbone,
                dst.service = dst_service,
                dst.workload = dst_workload,
                dst.namespace = dst_namespace,
                dst.identity = dst_identity,
                direction = %direction,
                response_flags = flags,
                transport = transport,
                bytes_sent = sent,
                bytes_recv = recv,
                duration = %duration,
                error = %error,
                "connection failed"
            ),
        }
    }
}

impl Drop for ConnectionLog {
    fn drop(&mut self) {
        if !self.done {
            self.emit(Some("connection closed by drain".into()));
        }
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

/// Fills the `destination_service*` labels when the connection was addressed to a service.
fn fill_service(l: &mut TrafficLabels, svc: &Service) {
    l.destination_service = or_unknown(&svc.hostname);
    l.destination_service_name = or_unknown(&svc.name);
    l.destination_service_namespace = or_unknown(&svc.namespace);
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
pub(super) fn outbound_labels(
    pi: &ProxyInputs,
    service: Option<&Service>,
    target: Option<SocketAddr>,
    dst_principal: Option<&Identity>,
) -> TrafficLabels {
    let mut l = TrafficLabels::unknown(Reporter::Source);
    let snapshot = pi.state.snapshot();
    let network = &pi.cfg.network;
    if let Some(wl) = snapshot.workload_by_name(&pi.local.namespace, &pi.local.name) {
        fill_source(&mut l, wl);
    }
    l.source_principal = pi.local.identity(&pi.state).to_string();
    if let Some(svc) = service {
        fill_service(&mut l, svc);
    }
    if let Some(wl) = target.and_then(|t| snapshot.workload_by_addr(network, t.ip())) {
        fill_destination(&mut l, wl);
    }
    if let Some(id) = dst_principal {
        l.destination_principal = id.to_string();
        l.connection_security_policy = SecurityPolicy::MutualTls;
    }
    l
}

/// Labels of an inbound connection (reporter `destination`): the local workload as
/// destination; the workload at the peer's address as source. `peer_id` is the TLS peer's
/// identity (HBONE), `None` for plaintext. `service_host` is the `host=` of the HBONE
/// `forwarded` header: the service the client side resolved, looked up first in the local
/// workload's namespace (the usual case), then by host name alone.
pub(super) fn inbound_labels(
    pi: &ProxyInputs,
    local: &Workload,
    source_addr: Option<SocketAddr>,
    peer_id: Option<&Identity>,
    service_host: Option<&str>,
) -> TrafficLabels {
    let mut l = TrafficLabels::unknown(Reporter::Destination);
    fill_destination(&mut l, local);
    if let Some(host) = service_host.filter(|h| !h.is_empty()) {
        let svc = pi
            .state
            .service_by_host(local.namespace(), host)
            .or_else(|| {
                let all = pi.state.services_by_hostname(host);
                // Ambiguous host names (one per namespace) name no service in particular.
                (all.len() == 1).then(|| all[0].clone())
            });
        match svc {
            Some(svc) => fill_service(&mut l, &svc),
            // Unknown to this node's state: the host name is still the best label we have.
            None => l.destination_service = host.to_string(),
        }
    }
    l.destination_principal = pi.local.identity(&pi.state).to_string();
    // `None` when the connection came through a network gateway: the address is the
    // gateway's, so looking it up would name the wrong workload.
    if let Some(wl) = source_addr.and_then(|a| pi.state.workload_by_addr(&pi.cfg.network, a.ip())) {
        fill_source(&mut l, &wl);
    }
    if let Some(id) = peer_id {
        l.source_principal = id.to_string();
        l.connection_security_policy = SecurityPolicy::MutualTls;
    }
    l
}
