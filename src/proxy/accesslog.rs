//! One access-log line per connection, on the `access` tracing target.
//!
//! The record is written exactly once: by `complete`/`fail`, or on drop if the task was
//! cancelled (a forced drain), so no connection goes unlogged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::copy::CopyStats;
use crate::core::Identity;
use crate::metrics::HboneTransportLabel;

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
            done: false,
        }
    }

    pub fn complete(mut self) {
        self.emit(None);
    }

    pub fn fail(mut self, error: &dyn std::fmt::Display) {
        self.emit(Some(error.to_string()));
    }

    fn emit(&mut self, error: Option<String>) {
        self.done = true;
        // Sent: from the source toward the destination; received: the way back.
        let (sent, recv) = self.stats.totals();
        let src = self.src;
        let direction = self.direction.as_str();
        let duration = format!("{}ms", self.start.elapsed().as_millis());
        let src_identity = self.src_identity.as_ref().map(tracing::field::display);
        let dst_identity = self.dst_identity.as_ref().map(tracing::field::display);
        let dst = self.dst.map(tracing::field::display);
        let hbone = self.hbone_addr.map(tracing::field::display);
        let flags = self.response_flags;
        let transport = self.transport.map(tracing::field::debug);
        match error {
            None => tracing::event!(
                target: "access",
                tracing::Level::INFO,
                src.addr = %src,
                src.identity = src_identity,
                dst.addr = dst,
                dst.hbone_addr = hbone,
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
                src.identity = src_identity,
                dst.addr = dst,
                dst.hbone_addr = hbone,
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
