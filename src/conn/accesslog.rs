//! One access-log line and one Istio metrics record per connection, on the `access` tracing
//! target and in the `istio_tcp_*` families, with ztunnel's fields and meanings.
//!
//! A connection whose peers are known is opened ([`ConnectionLog::open`]): it is counted, a
//! `debug` "connection opened" line is written, and on close one "connection complete" line
//! (`info`, or `error` with `error="..."` when it failed). A connection refused before that
//! (no certificate, TLS handshake, a target that is not ours, no route) gets one `warn`
//! "connection failed" line with only the addresses, the direction and the error, and no
//! metrics, as in ztunnel.
//!
//! Fields, in order: `src.addr src.workload src.namespace src.identity src.cluster dst.addr
//! dst.hbone_addr dst.service dst.workload dst.namespace dst.identity dst.cluster direction
//! bytes_sent bytes_recv duration [error]`; unknown values are left out. `dst.addr` is where
//! the bytes went on the wire (the peer proxy's HBONE address for a tunnel, on either side),
//! `dst.hbone_addr` the CONNECT target. Bytes are from the client's point of view on the
//! outbound side (sent = what the client sent) and from the server's on the inbound side
//! (sent = what went back to the client). Identities are logged for mutual TLS only. ambit
//! adds `transport="h3"` last for HBONE over QUIC, which ztunnel does not carry.
//!
//! The record is written exactly once: by `complete`/`fail`, or on drop if the task was
//! cancelled (a forced drain), so no opened connection goes unlogged and opened/closed counts
//! balance.

mod labels;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ProxyInputs;
use super::copy::CopyStats;
use crate::core::{Authority, Identity};
use crate::hbone::{ConnectStage, HboneError};
use crate::metrics::{
    ConnectionMetrics, HboneTransportLabel, ResponseFlag, SecurityPolicy, TrafficLabels, UNKNOWN,
};

pub(crate) use labels::{OpenLabels, inbound_labels, outbound_labels};

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
    /// The client's identity: the TLS peer's (inbound HBONE) or the local workload's (outbound).
    pub src_identity: Option<Identity>,
    /// `dst.addr`: where the connection went on the wire.
    pub dst: Option<SocketAddr>,
    /// `dst.hbone_addr`: the CONNECT target of a tunnelled connection.
    pub hbone_addr: Option<Authority>,
    pub dst_identity: Option<Identity>,
    /// Istio's response flag, e.g. `DENY` when authorization refused or closed the connection.
    pub response_flags: Option<ResponseFlag>,
    /// The HBONE transport (`h2` or `h3`), for tunnelled connections.
    pub transport: Option<HboneTransportLabel>,
    pub stats: Arc<CopyStats>,
    /// Set once the connection's labels are known (see [`ConnectionLog::open`]).
    metrics: Option<ConnectionMetrics>,
    src_workload: Option<String>,
    dst_workload: Option<String>,
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
            src_workload: None,
            dst_workload: None,
            done: false,
        }
    }

    /// Counts the connection as opened under `labels` and writes the `debug` "connection
    /// opened" line; from now on the copy (which must start after this call) moves the byte
    /// counters live. Called at most once.
    pub fn open(&mut self, pi: &ProxyInputs, labels: OpenLabels) {
        if self.metrics.is_some() {
            return;
        }
        let m = ConnectionMetrics::open(&pi.metrics.traffic, labels.traffic);
        let (request, response) = m.byte_counters();
        // On the stats the connection already has (the tracker may share them already).
        self.stats.set_counters(request, response);
        self.metrics = Some(m);
        self.src_workload = labels.src_workload;
        self.dst_workload = labels.dst_workload;
        if tracing::enabled!(target: "access", tracing::Level::DEBUG) {
            self.record(None).write_opened();
        }
    }

    pub fn complete(mut self) {
        self.emit(None);
    }

    /// Writes the line of a connection cut because a CRL revoked its peer (`CERT_REVOKED`).
    pub fn fail_revoked(mut self, reason: &dyn std::fmt::Display) {
        self.response_flags = Some(ResponseFlag::CertRevoked);
        self.fail(&format_args!("{reason} (HBONE connection closed)"));
    }

    /// Writes the line of a failed connection: the full "connection complete" line at `error`
    /// once opened, else the short "connection failed" one.
    pub fn fail(mut self, error: &dyn std::fmt::Display) {
        self.emit(Some(error.to_string()));
    }

    fn emit(&mut self, error: Option<String>) {
        self.done = true;
        let Some(m) = &mut self.metrics else {
            if let Some(e) = error {
                let h3 = self.transport == Some(HboneTransportLabel::h3);
                early_deny(self.src, self.dst, self.direction, &e, h3);
            }
            return;
        };
        m.close(self.response_flags);
        let duration = self.start.elapsed();
        let mut rec = self.record(error.as_deref());
        rec.duration = duration;
        rec.write_complete();
    }

    /// The fields of this connection's line; bytes as counted so far.
    fn record<'a>(&'a self, error: Option<&'a str>) -> AccessRecord<'a> {
        let l = self.metrics.as_ref().map(ConnectionMetrics::labels);
        let known = |f: fn(&TrafficLabels) -> &str| l.map(f).filter(|v| *v != UNKNOWN);
        let mtls = l.is_some_and(|l| l.connection_security_policy == SecurityPolicy::MutualTls);
        // Source → destination and back, as copied.
        let (up, down) = self.stats.totals();
        let (bytes_sent, bytes_recv) = match self.direction {
            Direction::Outbound => (up, down),
            Direction::Inbound => (down, up),
        };
        AccessRecord {
            src_addr: self.src,
            src_workload: self.src_workload.as_deref(),
            src_namespace: known(|l| &l.source_workload_namespace),
            src_identity: self.src_identity.as_ref().filter(|_| mtls),
            src_cluster: known(|l| &l.source_cluster),
            dst_addr: self.dst,
            dst_hbone_addr: self.hbone_addr.as_ref(),
            dst_service: known(|l| &l.destination_service),
            dst_workload: self.dst_workload.as_deref(),
            dst_namespace: known(|l| &l.destination_workload_namespace),
            dst_identity: self.dst_identity.as_ref().filter(|_| mtls),
            dst_cluster: known(|l| &l.destination_cluster),
            direction: self.direction,
            bytes_sent,
            bytes_recv,
            duration: Duration::ZERO,
            error,
            transport: self.transport.filter(|t| *t == HboneTransportLabel::h3),
        }
    }
}

impl Drop for ConnectionLog {
    fn drop(&mut self) {
        if !self.done && self.metrics.is_some() {
            self.emit(Some("connection closed by drain".into()));
        }
    }
}

/// The short line of a connection refused before its peers were known (`transport="h3"` last
/// for HBONE over QUIC, as on the full line).
fn early_deny(
    src: SocketAddr,
    dst: Option<SocketAddr>,
    direction: Direction,
    error: &str,
    h3: bool,
) {
    tracing::event!(
        target: "access",
        tracing::Level::WARN,
        src.addr = %src,
        dst.addr = dst.map(tracing::field::display),
        direction = direction.as_str(),
        error = error,
        transport = h3.then_some("h3"),
        "connection failed"
    );
}

/// Everything one access-log line says.
#[derive(Debug)]
pub(crate) struct AccessRecord<'a> {
    pub src_addr: SocketAddr,
    pub src_workload: Option<&'a str>,
    pub src_namespace: Option<&'a str>,
    pub src_identity: Option<&'a Identity>,
    pub src_cluster: Option<&'a str>,
    pub dst_addr: Option<SocketAddr>,
    pub dst_hbone_addr: Option<&'a Authority>,
    pub dst_service: Option<&'a str>,
    pub dst_workload: Option<&'a str>,
    pub dst_namespace: Option<&'a str>,
    pub dst_identity: Option<&'a Identity>,
    pub dst_cluster: Option<&'a str>,
    pub direction: Direction,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub duration: Duration,
    pub error: Option<&'a str>,
    pub transport: Option<HboneTransportLabel>,
}

// Strings are recorded as `str` (quoted in text), addresses with `Display` (bare), counts as
// numbers: the types ztunnel records each field with.
macro_rules! access_event {
    ($level:expr, $rec:expr, $msg:literal $(, $extra:ident = $val:expr)*) => {{
        let r = $rec;
        let id = |i: Option<&Identity>| i.map(ToString::to_string);
        tracing::event!(
            target: "access",
            $level,
            src.addr = %r.src_addr,
            src.workload = r.src_workload,
            src.namespace = r.src_namespace,
            src.identity = id(r.src_identity),
            src.cluster = r.src_cluster,
            dst.addr = r.dst_addr.map(tracing::field::display),
            dst.hbone_addr = r.dst_hbone_addr.map(tracing::field::display),
            dst.service = r.dst_service,
            dst.workload = r.dst_workload,
            dst.namespace = r.dst_namespace,
            dst.identity = id(r.dst_identity),
            dst.cluster = r.dst_cluster,
            direction = r.direction.as_str(),
            $($extra = $val,)*
            $msg
        )
    }};
}

impl AccessRecord<'_> {
    /// The `debug` line written when the connection is opened.
    fn write_opened(&self) {
        access_event!(tracing::Level::DEBUG, self, "connection opened");
    }

    /// The line written when the connection closes.
    pub(crate) fn write_complete(&self) {
        let duration = format!("{}ms", self.duration.as_millis());
        let transport = self.transport.map(|t| match t {
            HboneTransportLabel::h2 => "h2",
            HboneTransportLabel::h3 => "h3",
        });
        match self.error {
            None => access_event!(
                tracing::Level::INFO,
                self,
                "connection complete",
                bytes_sent = self.bytes_sent,
                bytes_recv = self.bytes_recv,
                duration = duration.as_str(),
                transport = transport
            ),
            Some(error) => access_event!(
                tracing::Level::ERROR,
                self,
                "connection complete",
                bytes_sent = self.bytes_sent,
                bytes_recv = self.bytes_recv,
                duration = duration.as_str(),
                error = error,
                transport = transport
            ),
        }
    }
}

/// The response flag of a failed HBONE exchange with a peer proxy (ztunnel's classes).
pub(crate) fn hbone_flag(e: &HboneError) -> ResponseFlag {
    match e {
        HboneError::Connect { stage, .. } => match stage {
            ConnectStage::Identity => ResponseFlag::IdentityError,
            ConnectStage::Tcp => ResponseFlag::Connect,
            ConnectStage::TcpTimeout => ResponseFlag::NetworkPolicy,
            ConnectStage::Tls => ResponseFlag::TlsFailure,
        },
        HboneError::Handshake(_) | HboneError::H2(_) => ResponseFlag::H2HandshakeFailure,
        _ => ResponseFlag::Connect,
    }
}

#[cfg(test)]
mod tests;
