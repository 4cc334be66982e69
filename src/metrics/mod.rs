//! The metric registry and the data path's counters.
//!
//! The registry is filled once at startup and then only read (scrapes encode it); counters are
//! atomics, so the data path records without locks. Istio's L4 families live in [`traffic`];
//! the xDS client's in [`xds`]; the data runtime's scheduler families are read at scrape time
//! ([`Metrics::register_tokio_runtime`]); the two exposition formats (OpenMetrics and
//! Prometheus text) in [`exposition`].

pub mod exposition;
mod process;
mod tokio_runtime;
pub mod traffic;
pub mod xds;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use traffic::{
    ConnectionMetrics, OpenSocket, Reporter, ResponseFlag, SecurityPolicy, SocketLabels,
    SocketsOpen, TrafficLabels, TrafficMetrics, UNKNOWN, or_unknown,
};
pub use xds::{TerminationReason, XdsMetrics};

/// Labels of `istio_build`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    component: &'static str,
    tag: String,
}

/// Labels of `ambit_build`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AmbitBuildLabels {
    version: &'static str,
}

/// The `component` of `istio_build`: Istio's dashboards select the node proxy by it.
pub const BUILD_COMPONENT: &str = "ztunnel";
/// The `tag` of `istio_build` when the Istio version is not known.
pub const UNKNOWN_TAG: &str = "unknown";

/// Counters the proxy records. Cloning shares the underlying counters.
#[derive(Clone, Default, Debug)]
pub struct ProxyMetrics {
    /// Outbound HBONE connections (TCP + TLS + HTTP/2) opened by the connection pool.
    pub hbone_connections_opened: Counter,
    /// TLS handshakes completed on the inbound HBONE listener.
    pub inbound_handshakes: Counter,
    /// TLS handshakes that failed on the inbound HBONE listener.
    pub inbound_handshake_failures: Counter,
    /// Inbound HBONE connections closed because their TLS handshake missed its deadline.
    pub inbound_handshake_timeouts: Counter,
    /// Inbound HBONE connections closed on arrival because their source already had the
    /// maximum number of handshakes under way.
    pub inbound_handshakes_shed: Counter,
    /// Failed `accept` calls (descriptors exhausted and the like), by listener.
    pub accept_failures: Family<ListenerLabels, Counter>,
    /// Inbound connections refused by authorization when they arrived.
    pub connections_denied: Counter,
    /// Live inbound connections closed because a state change made authorization deny them.
    pub connections_closed_by_policy: Counter,
    /// Service endpoints ejected by passive outlier detection (each ejection counts).
    pub outlier_ejections: Counter,
    /// Outbound connects retried on another endpoint after one failed before any byte was sent.
    pub connect_retries: Counter,
    /// HBONE connections opened (outbound) or accepted (inbound), by transport (h2 or h3).
    pub hbone_connections: Family<TransportLabels, Counter>,
    /// HBONE streams (tunnelled connections) set up, by transport and direction.
    pub hbone_streams: Family<TransportLabels, Counter>,
    /// Outbound connections that `auto` moved from QUIC to h2 because no QUIC handshake
    /// completed with the peer.
    pub hbone_transport_fallbacks: Counter,
    /// Istio's `istio_tcp_*` families.
    /// Shared by pointer: every live connection holds one.
    pub traffic: std::sync::Arc<TrafficMetrics>,
    /// `istio_crl_policy_rejections_total{reporter}`: handshakes refused and live connections
    /// closed because a CRL revokes the peer (ztunnel's family).
    pub crl_policy_rejections: Family<CrlLabels, Counter>,
    /// `istio_crl_untracked_connections_total{reporter}`: connections a CRL reload could not
    /// re-check (ztunnel's family; ambit tracks every mTLS connection, so it stays at zero
    /// unless a peer chain cannot be read).
    pub crl_untracked_connections: Family<CrlLabels, Counter>,
    /// `istio_on_demand_dns_total`: outbound connections whose endpoint, a workload known by
    /// host name only, was resolved on demand (ztunnel's family and labels).
    pub on_demand_dns: Family<OnDemandDnsLabels, Counter>,
}

/// Labels of `istio_on_demand_dns_total`: the client workload (as the traffic families name
/// it) and the host name looked up; an unknown field is `unknown`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OnDemandDnsLabels {
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub hostname: String,
}

/// Labels of the `istio_crl_*` families: `source` for outbound, `destination` for inbound.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CrlLabels {
    pub reporter: Reporter,
}

impl ProxyMetrics {
    /// Counts one CRL refusal or closure on the `reporter` side.
    pub fn crl_rejected(&self, reporter: Reporter) {
        self.crl_policy_rejections
            .get_or_create(&CrlLabels { reporter })
            .inc();
    }
}

/// The label of `ambit_accept_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

impl ProxyMetrics {
    /// The accept-failure counter of `listener` (shared with every clone).
    pub fn accept_failures(&self, listener: &'static str) -> Counter {
        self.accept_failures
            .get_or_create(&ListenerLabels { listener })
            .clone()
    }
}

/// The labels that tell HBONE over TCP (h2) and over QUIC (h3) apart.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: HboneTransportLabel,
    pub direction: DirectionLabel,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum HboneTransportLabel {
    h2,
    h3,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DirectionLabel {
    inbound,
    outbound,
}

/// The in-pod workload manager's view of its per-pod proxies (shared mode).
#[derive(Clone, Default, Debug)]
pub struct WorkloadManagerMetrics {
    /// Pods with a running proxy.
    pub active_proxies: Gauge,
    /// Pods whose proxy failed to start and is being retried.
    pub pending_proxies: Gauge,
    pub proxies_started: Counter,
    pub proxies_stopped: Counter,
}

/// Everything that is scraped.
pub struct Metrics {
    registry: Registry,
    pub proxy: ProxyMetrics,
    pub workload_manager: WorkloadManagerMetrics,
    /// The delta ADS client's `istio_xds_*` families.
    pub xds: XdsMetrics,
    process: process::ProcessMetrics,
}

// === impl Metrics ===

impl Metrics {
    /// The registry, with `istio_build` tagged `unknown`.
    pub fn new() -> Self {
        Self::with_build_tag(UNKNOWN_TAG)
    }

    /// The registry with `istio_build{component="ztunnel",tag=<tag>}`, where `tag` is the Istio
    /// version the proxy is deployed as (`ISTIO_META_ISTIO_VERSION`, as ztunnel reports it);
    /// ambit's own version is `ambit_build{version=...}`.
    pub fn with_build_tag(tag: &str) -> Self {
        let mut registry = Registry::default();
        let proxy = ProxyMetrics::default();
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                component: BUILD_COMPONENT,
                tag: tag.to_string(),
            })
            .set(1);
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register("build", "Istio component build info", build);
        let t = &proxy.traffic;
        istio.register(
            "tcp_sockets_open",
            "Accepted TCP sockets currently being served",
            t.sockets_open.0.clone(),
        );
        istio.register(
            "tcp_connections_opened",
            "The total number of TCP connections opened",
            t.opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "The total number of TCP connections closed",
            t.closed.clone(),
        );
        istio.register(
            "tcp_connections_failed",
            "The total number of TCP connections that failed, by response flag",
            t.failed.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            t.sent_bytes.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            t.received_bytes.clone(),
        );
        istio.register(
            "crl_policy_rejections",
            "The total number of connections rejected due to CRL certificate revocation",
            proxy.crl_policy_rejections.clone(),
        );
        istio.register(
            "crl_untracked_connections",
            "The total number of connections not tracked for CRL enforcement",
            proxy.crl_untracked_connections.clone(),
        );
        istio.register(
            "on_demand_dns",
            "The total number of requests that used on-demand DNS (unstable)",
            proxy.on_demand_dns.clone(),
        );
        let xds = XdsMetrics::default();
        xds.register(istio);
        let process = process::ProcessMetrics::register(&mut registry);
        let ambit = registry.sub_registry_with_prefix("ambit");
        let ambit_build: Family<AmbitBuildLabels, Gauge> = Family::default();
        ambit_build
            .get_or_create(&AmbitBuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        ambit.register("build", "ambit build info", ambit_build);
        ambit.register(
            "hbone_connections_opened",
            "Outbound HBONE connections opened by the connection pool",
            proxy.hbone_connections_opened.clone(),
        );
        ambit.register(
            "hbone_inbound_handshakes",
            "TLS handshakes accepted on the inbound HBONE listener",
            proxy.inbound_handshakes.clone(),
        );
        ambit.register(
            "hbone_inbound_handshake_failures",
            "TLS handshakes refused on the inbound HBONE listener",
            proxy.inbound_handshake_failures.clone(),
        );
        ambit.register(
            "hbone_inbound_handshake_timeouts",
            "Inbound HBONE connections closed because their TLS handshake missed its deadline",
            proxy.inbound_handshake_timeouts.clone(),
        );
        ambit.register(
            "hbone_inbound_handshakes_shed",
            "Inbound HBONE connections closed on arrival: too many handshakes under way from their source",
            proxy.inbound_handshakes_shed.clone(),
        );
        ambit.register(
            "accept_failures",
            "Failed accepts (descriptors exhausted and the like), by listener",
            proxy.accept_failures.clone(),
        );
        ambit.register(
            "connections_denied",
            "Inbound connections refused by an authorization policy",
            proxy.connections_denied.clone(),
        );
        ambit.register(
            "connections_closed_by_policy",
            "Live inbound connections closed because a policy change denied them",
            proxy.connections_closed_by_policy.clone(),
        );
        ambit.register(
            "outlier_ejections",
            "Service endpoints ejected after consecutive connect failures",
            proxy.outlier_ejections.clone(),
        );
        ambit.register(
            "connect_retries",
            "Outbound connects retried on another endpoint after a connect failure",
            proxy.connect_retries.clone(),
        );
        ambit.register(
            "hbone_transport_connections",
            "HBONE connections opened or accepted, by transport (h2: TCP, h3: QUIC)",
            proxy.hbone_connections.clone(),
        );
        ambit.register(
            "hbone_transport_streams",
            "HBONE streams set up, by transport (h2: TCP, h3: QUIC) and direction",
            proxy.hbone_streams.clone(),
        );
        ambit.register(
            "hbone_transport_fallbacks",
            "Outbound connections moved from QUIC to h2 because no QUIC handshake completed",
            proxy.hbone_transport_fallbacks.clone(),
        );
        let workload_manager = WorkloadManagerMetrics::default();
        // ztunnel's names (wire.md §4): `workload_manager_active_proxy_count` and friends.
        let wm = registry.sub_registry_with_prefix("workload_manager");
        wm.register(
            "active_proxy_count",
            "Pods with a running proxy",
            workload_manager.active_proxies.clone(),
        );
        wm.register(
            "pending_proxy_count",
            "Pods whose proxy failed to start and is retried",
            workload_manager.pending_proxies.clone(),
        );
        wm.register(
            "proxies_started",
            "Per-pod proxies started",
            workload_manager.proxies_started.clone(),
        );
        wm.register(
            "proxies_stopped",
            "Per-pod proxies stopped",
            workload_manager.proxies_stopped.clone(),
        );
        Metrics {
            registry,
            proxy,
            workload_manager,
            xds,
            process,
        }
    }

    /// Adds the `tokio_*` scheduler families of the runtime behind `handle` (the data runtime),
    /// read from it on every scrape. Register one runtime only: the families carry no runtime
    /// label, so a second would repeat their names.
    pub fn register_tokio_runtime(&mut self, handle: tokio::runtime::Handle) {
        self.registry
            .register_collector(Box::new(tokio_runtime::RuntimeCollector::new(handle)));
    }

    /// The registry, for components above this level that register their own families at
    /// startup (the DNS proxy's `istio_dns_*`).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The OpenMetrics 1.0 exposition of every registered metric (what prometheus-client
    /// writes). Process gauges are sampled first, so they are as fresh as the scrape.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.process.sample();
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The exposition in the format a scraper asked for.
    pub fn encode_as(&self, format: exposition::Format) -> Result<String, std::fmt::Error> {
        let open = self.encode()?;
        Ok(match format {
            exposition::Format::OpenMetrics => open,
            exposition::Format::Text => exposition::to_prometheus_text(&open),
        })
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
