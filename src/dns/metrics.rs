//! The DNS proxy's metrics, under Istio's names (wire.md §4): requests, upstream requests,
//! upstream failures (counters) and upstream latency (histogram), labelled by query type,
//! transport and the client's canonical service and revision.
//!
//! Invariant: the families are created once and registered once ([`DnsMetrics::register`]);
//! clones share them, so every pod's DNS server counts into the same series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the upstream latency buckets, in seconds (Istio's).
const DURATION_BUCKETS: [f64; 6] = [0.0005, 0.001, 0.01, 0.1, 1.0, 5.0];

/// The labels of every DNS series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// `A`, `AAAA`, `MX`, ...
    pub request_query_type: String,
    /// `udp` or `tcp`.
    pub request_protocol: &'static str,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
}

fn new_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

type HistogramFamily = Family<DnsLabels, Histogram, fn() -> Histogram>;

/// The DNS counters. Cloning shares the underlying families.
#[derive(Clone, Debug)]
pub struct DnsMetrics {
    pub requests: Family<DnsLabels, Counter>,
    pub upstream_requests: Family<DnsLabels, Counter>,
    pub upstream_failures: Family<DnsLabels, Counter>,
    pub upstream_duration: HistogramFamily,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        DnsMetrics {
            requests: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
            upstream_duration: Family::new_with_constructor(new_histogram),
        }
    }
}

impl DnsMetrics {
    /// Registers the families as `istio_dns_*` (counters get `_total`, the histogram
    /// `_seconds` from its unit).
    pub fn register(&self, registry: &mut Registry) {
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "dns_requests",
            "DNS requests received by the DNS proxy",
            self.requests.clone(),
        );
        istio.register(
            "dns_upstream_requests",
            "DNS requests forwarded to an upstream resolver",
            self.upstream_requests.clone(),
        );
        istio.register(
            "dns_upstream_failures",
            "DNS requests the upstream resolvers failed to answer",
            self.upstream_failures.clone(),
        );
        istio.register_with_unit(
            "dns_upstream_request_duration",
            "Time taken by upstream resolvers to answer",
            prometheus_client::registry::Unit::Seconds,
            self.upstream_duration.clone(),
        );
    }
}
