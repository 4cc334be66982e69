//! The metric registry and the data path's counters.
//!
//! The registry is filled once at startup and then only read (scrapes encode it); counters are
//! atomics, so the data path records without locks.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters the proxy records. Cloning shares the underlying counters.
#[derive(Clone, Default, Debug)]
pub struct ProxyMetrics {
    /// Outbound HBONE connections (TCP + TLS + HTTP/2) opened by the connection pool.
    pub hbone_connections_opened: Counter,
    /// TLS handshakes completed on the inbound HBONE listener.
    pub inbound_handshakes: Counter,
    /// TLS handshakes that failed on the inbound HBONE listener.
    pub inbound_handshake_failures: Counter,
    /// Inbound connections refused by authorization when they arrived.
    pub connections_denied: Counter,
    /// Live inbound connections closed because a state change made authorization deny them.
    pub connections_closed_by_policy: Counter,
    /// HBONE connections opened (outbound) or accepted (inbound), by transport (h2 or h3).
    pub hbone_connections: Family<TransportLabels, Counter>,
    /// HBONE streams (tunnelled connections) set up, by transport and direction.
    pub hbone_streams: Family<TransportLabels, Counter>,
    /// Outbound connections that `auto` moved from QUIC to h2 because no QUIC handshake
    /// completed with the peer.
    pub hbone_transport_fallbacks: Counter,
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
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let proxy = ProxyMetrics::default();
        let ambit = registry.sub_registry_with_prefix("ambit");
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
        }
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exposed_with_their_names() {
        let m = Metrics::new();
        m.proxy.hbone_connections_opened.inc();
        m.proxy.inbound_handshakes.inc_by(3);
        let text = m.encode().unwrap();
        assert!(
            text.contains("ambit_hbone_connections_opened_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ambit_hbone_inbound_handshakes_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("ambit_hbone_inbound_handshake_failures_total 0\n"),
            "{text}"
        );
        m.proxy.connections_closed_by_policy.inc();
        let text = m.encode().unwrap();
        assert!(
            text.contains("ambit_connections_closed_by_policy_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ambit_connections_denied_total 0\n"),
            "{text}"
        );
        m.workload_manager.active_proxies.set(2);
        m.workload_manager.proxies_started.inc();
        let text = m.encode().unwrap();
        for line in [
            "workload_manager_active_proxy_count 2\n",
            "workload_manager_pending_proxy_count 0\n",
            "workload_manager_proxies_started_total 1\n",
            "workload_manager_proxies_stopped_total 0\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }
}
