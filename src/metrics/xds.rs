//! The xDS client's families: `istio_xds_connection_terminations_total{reason}`,
//! `istio_xds_message_total{url}` and `istio_xds_message_bytes_total{url}` (wire.md §4).
//!
//! [`XdsMetrics`] is a cheap handle (clones share the counters) that the delta ADS client
//! records into; it knows nothing about xDS itself, so `xds` depends on `metrics` and not the
//! other way round. A handle that was never registered still counts, it is just not scraped.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Why an xDS stream ended, with ztunnel's label values.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum TerminationReason {
    /// No stream was set up: the connection (TCP, TLS, HTTP/2) or the call setup failed.
    ConnectionError,
    /// The stream failed with a gRPC status that is not routine housekeeping.
    Error,
    /// The server ended the stream in a routine way (restart, GOAWAY, idle timeout).
    Reconnect,
    /// The server closed the stream cleanly.
    Complete,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: TerminationReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UrlLabels {
    url: String,
}

/// What the delta ADS client records. Cloning shares the underlying counters.
#[derive(Clone, Debug, Default)]
pub struct XdsMetrics {
    terminations: Family<ReasonLabels, Counter>,
    messages: Family<UrlLabels, Counter>,
    message_bytes: Family<UrlLabels, Counter>,
}

impl XdsMetrics {
    /// Registers the families under `istio_xds_*`.
    pub(super) fn register(&self, istio: &mut Registry) {
        istio.register(
            "xds_connection_terminations",
            "The total number of completed connections to xds server (unstable)",
            self.terminations.clone(),
        );
        istio.register(
            "xds_message",
            "Total number of messages received (unstable)",
            self.messages.clone(),
        );
        istio.register(
            "xds_message_bytes",
            "Total number of bytes received (unstable)",
            self.message_bytes.clone(),
        );
    }

    /// Counts one ended stream.
    pub fn record_termination(&self, reason: TerminationReason) {
        self.terminations
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts one response of `type_url` whose encoded size is `bytes`.
    pub fn record_message(&self, type_url: &str, bytes: u64) {
        // One label allocation per response: xDS responses are rare next to the data path.
        let labels = UrlLabels {
            url: type_url.to_string(),
        };
        self.messages.get_or_create(&labels).inc();
        self.message_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// Streams ended for `reason` so far.
    pub fn terminations(&self, reason: TerminationReason) -> u64 {
        self.terminations
            .get_or_create(&ReasonLabels { reason })
            .get()
    }

    /// Responses of `type_url` received so far, and their total encoded size.
    pub fn messages(&self, type_url: &str) -> (u64, u64) {
        let labels = UrlLabels {
            url: type_url.to_string(),
        };
        (
            self.messages.get_or_create(&labels).get(),
            self.message_bytes.get_or_create(&labels).get(),
        )
    }
}
