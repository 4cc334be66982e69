//! Istio's L4 traffic families (wire.md §4): connections opened, closed and failed, and bytes
//! each way, labelled with the full traffic label set from either reporter; and the sockets
//! open, by reporter.
//!
//! Invariants: a [`ConnectionMetrics`] counts its connection as opened exactly once (when it is
//! created) and as closed exactly once (by [`ConnectionMetrics::close`] or on drop), so opened
//! and closed balance even when a task is cancelled. Byte counters are resolved once per
//! connection, so the copy loop increments plain atomics: no lock and no allocation per chunk.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// The value Istio encodes for a label it knows nothing about.
pub const UNKNOWN: &str = "unknown";

/// Which side of the connection recorded it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let v = match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        };
        EncodeLabelValue::encode(&v, encoder)
    }
}

/// Whether the connection was carried over mutual TLS (HBONE).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    MutualTls,
    Unknown,
}

impl EncodeLabelValue for SecurityPolicy {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        let v = match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::Unknown => UNKNOWN,
        };
        EncodeLabelValue::encode(&v, encoder)
    }
}

/// Why a connection failed, as Istio's `response_flags` label names it (ztunnel's set).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ResponseFlag {
    /// Refused or closed by an authorization policy.
    Deny,
    /// The upstream (or the peer proxy) could not be reached, or the connection broke.
    Connect,
    /// The TLS handshake with the peer proxy failed.
    TlsFailure,
    /// The HTTP/2 handshake or CONNECT exchange with the peer proxy failed.
    H2HandshakeFailure,
    /// The TCP connect to the peer proxy's HBONE port timed out, as a network policy dropping
    /// the SYN would make it.
    NetworkPolicy,
    /// No certificate for the local workload.
    IdentityError,
    /// The peer's certificate was revoked.
    CertRevoked,
}

impl ResponseFlag {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::Deny => "DENY",
            ResponseFlag::Connect => "CONNECT",
            ResponseFlag::TlsFailure => "TLS_FAILURE",
            ResponseFlag::H2HandshakeFailure => "H2_HANDSHAKE_FAILURE",
            ResponseFlag::NetworkPolicy => "NETWORK_POLICY",
            ResponseFlag::IdentityError => "IDENTITY_ERROR",
            ResponseFlag::CertRevoked => "CERT_REVOKED",
        }
    }
}

/// The traffic labels of every `istio_tcp_*` family. Empty strings are never stored: the
/// constructors of the proxy fill [`UNKNOWN`] for anything they do not know.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: Reporter,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: SecurityPolicy,
    /// The workloads' localities come last, in ztunnel's label order.
    pub source_region: String,
    pub source_zone: String,
    pub destination_region: String,
    pub destination_zone: String,
}

impl TrafficLabels {
    /// Labels with every workload field `unknown`, protocol `tcp` and no response flag.
    pub fn unknown(reporter: Reporter) -> Self {
        let u = || UNKNOWN.to_string();
        TrafficLabels {
            reporter,
            source_workload: u(),
            source_canonical_service: u(),
            source_canonical_revision: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            source_app: u(),
            source_version: u(),
            source_cluster: u(),
            source_region: u(),
            source_zone: u(),
            destination_service: u(),
            destination_service_namespace: u(),
            destination_service_name: u(),
            destination_workload: u(),
            destination_canonical_service: u(),
            destination_canonical_revision: u(),
            destination_workload_namespace: u(),
            destination_principal: u(),
            destination_app: u(),
            destination_version: u(),
            destination_cluster: u(),
            destination_region: u(),
            destination_zone: u(),
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: SecurityPolicy::Unknown,
        }
    }
}

/// `value` unless it is empty, then `unknown`.
pub fn or_unknown(value: &str) -> String {
    if value.is_empty() {
        UNKNOWN.to_string()
    } else {
        value.to_string()
    }
}

/// The label of `istio_tcp_sockets_open`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SocketLabels {
    pub reporter: Reporter,
}

/// `istio_tcp_sockets_open`: accepted TCP sockets whose task is still running, by reporter
/// (`source` on the outbound and SOCKS5 listeners, `destination` on the inbound HBONE and
/// plaintext ones). Cloning shares the family.
#[derive(Clone, Default, Debug)]
pub struct SocketsOpen(pub Family<SocketLabels, Gauge>);

/// One open socket in [`SocketsOpen`]; dropping it counts the socket as closed, so a task
/// that is cancelled still balances the gauge.
#[derive(Debug)]
pub struct OpenSocket(Gauge);

impl SocketsOpen {
    /// Counts a socket as open until the returned guard is dropped.
    pub fn open(&self, reporter: Reporter) -> OpenSocket {
        let g = self.0.get_or_create(&SocketLabels { reporter }).clone();
        g.inc();
        OpenSocket(g)
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `istio_tcp_*` families. Cloning shares them.
#[derive(Clone, Default, Debug)]
pub struct TrafficMetrics {
    pub sockets_open: SocketsOpen,
    pub opened: Family<TrafficLabels, Counter>,
    pub closed: Family<TrafficLabels, Counter>,
    pub failed: Family<TrafficLabels, Counter>,
    /// Bytes from the destination back to the source (Istio: "sent during response").
    pub sent_bytes: Family<TrafficLabels, Counter>,
    /// Bytes from the source toward the destination (Istio: "received during request").
    pub received_bytes: Family<TrafficLabels, Counter>,
    /// One shared copy of every label set a connection was opened with, so a live connection
    /// holds a pointer instead of ~25 strings of its own. It grows like the families' own key
    /// sets (which keep every label set for the life of the process), never beyond them.
    interned: Arc<Mutex<HashSet<Arc<TrafficLabels>>>>,
}

impl TrafficMetrics {
    fn intern(&self, labels: TrafficLabels) -> Arc<TrafficLabels> {
        let mut set = self.interned.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(shared) = set.get(&labels) {
            return shared.clone();
        }
        let shared = Arc::new(labels);
        set.insert(shared.clone());
        shared
    }
}

/// One connection's record in the traffic families. Small on purpose: every open connection
/// keeps one for its whole life.
#[derive(Debug)]
pub struct ConnectionMetrics {
    traffic: Arc<TrafficMetrics>,
    labels: Arc<TrafficLabels>,
    request_bytes: Counter,
    response_bytes: Counter,
    closed: bool,
}

impl ConnectionMetrics {
    /// Counts the connection as opened and resolves its byte counters.
    pub fn open(traffic: &Arc<TrafficMetrics>, labels: TrafficLabels) -> Self {
        traffic.opened.get_or_create(&labels).inc();
        let request_bytes = traffic.received_bytes.get_or_create(&labels).clone();
        let response_bytes = traffic.sent_bytes.get_or_create(&labels).clone();
        ConnectionMetrics {
            traffic: traffic.clone(),
            labels: traffic.intern(labels),
            request_bytes,
            response_bytes,
            closed: false,
        }
    }

    pub fn labels(&self) -> &TrafficLabels {
        &self.labels
    }

    /// The counters the copy loop moves: (source → destination, destination → source).
    pub fn byte_counters(&self) -> (Counter, Counter) {
        (self.request_bytes.clone(), self.response_bytes.clone())
    }

    /// Counts the connection as closed; with a response flag (`DENY`, `CONNECT`, …) also as
    /// failed, the flag being part of both series' labels.
    pub fn close(&mut self, response_flags: Option<ResponseFlag>) {
        if self.closed {
            return;
        }
        self.closed = true;
        match response_flags {
            Some(flag) => {
                // A failure is the rarer path: the flagged copy is not interned.
                let flagged = TrafficLabels {
                    response_flags: flag.as_str(),
                    ..TrafficLabels::clone(&self.labels)
                };
                self.traffic.failed.get_or_create(&flagged).inc();
                self.traffic.closed.get_or_create(&flagged).inc();
                self.labels = Arc::new(flagged);
            }
            None => {
                self.traffic.closed.get_or_create(&self.labels).inc();
            }
        }
    }
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        self.close(None);
    }
}
