//! HBONE over QUIC: HTTP/3 CONNECT tunnels on quinn (`h3` + `h3-quinn`), an opt-in alternative to
//! the HTTP/2 transport of [`crate::hbone`].
//!
//! # Layout
//!
//! | file | owns |
//! |---|---|
//! | `stream.rs` | [`H3Recv`] / [`H3Send`]: the two halves of one tunnelled CONNECT stream |
//! | `server.rs` | [`serve`]: the server side of one QUIC connection; CONNECT streams go to a handler |
//! | `client.rs` | [`QuicPool`]: client connections per [`QuicKey`], CONNECT streams over them |
//! | `endpoint.rs` | UDP sockets sized for bulk traffic, quinn endpoints and transport settings |
//! | `handshake.rs` | quinn's handshake failures as typed [`TlsError`]s ([`RefusedBy`]) |
//!
//! # Invariants
//!
//! - TLS is the h2 path's: the same rustls configurations (TLS 1.3, the same suites, SPIFFE
//!   verification both ways) with ALPN `h3` instead of `h2`, taken per connection from the
//!   certificate provider, so a rotated certificate is used by the next connection.
//! - This module sits beside `hbone` and does not import it: it speaks `http` types (requests,
//!   header maps, statuses); the proxy turns HBONE headers into them and back.
//! - A stream is a raw byte pipe after a `200`; a finished stream is a half-close, and a peer's
//!   reset with `H3_NO_ERROR` or `H3_REQUEST_CANCELLED` reads as end of stream (as `CANCEL` does
//!   on h2).

use std::time::Duration;

use http::StatusCode;

use crate::tls::TlsError;

mod client;
mod endpoint;
mod handshake;
mod server;
mod stream;

#[cfg(test)]
mod tests;

pub use client::{CutProbe, QuicKey, QuicPool, RevokedHook};
pub use endpoint::{
    accept, bind_udp, client_endpoint, enable_server, peer_chain, peer_identity, server_endpoint,
};
pub use handshake::RefusedBy;
pub use server::{InboundRequest, serve};
pub use stream::{H3Recv, H3Send};

/// Flow control, limits and timers of QUIC connections (both sides).
///
/// Sized like the h2 path: a stream window that lets one bulk stream fill a fast link at a LAN
/// round trip, a larger connection window so one stalled stream cannot starve the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicConfig {
    /// Receive window of each stream.
    pub stream_window: u32,
    /// Receive window of the whole connection.
    pub connection_window: u32,
    /// Bytes we may have in flight per connection (quinn's send window).
    pub send_window: u64,
    /// Concurrent CONNECT streams a peer may open to us.
    pub max_concurrent_streams: u32,
    /// A connection silent for this long is gone (keep-alives keep a healthy one alive).
    pub idle_timeout: Duration,
    /// How often a connection with nothing to send pings.
    pub keepalive_interval: Duration,
    /// A client handshake not complete within this long fails (the fallback trigger in `auto`).
    pub handshake_timeout: Duration,
    /// A pooled connection without streams for this long is closed.
    pub pool_idle_timeout: Duration,
    /// Requested `SO_RCVBUF` / `SO_SNDBUF` of each UDP socket (see [`bind_udp`]).
    pub udp_buffer: usize,
}

/// Everything that can go wrong in a QUIC tunnel.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("udp socket: {0}")]
    Io(#[from] std::io::Error),
    /// The rustls configuration cannot carry QUIC (a suite or version QUIC needs is missing).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Config(String),
    #[error("no certificate for {identity}: {reason}")]
    Certificate {
        identity: crate::core::Identity,
        reason: String,
    },
    /// TLS refused the handshake with `peer`: `error` is what the h2 path reports for the same
    /// refusal (a received alert, an unknown issuer, an unexpected server identity...). Boxed:
    /// rustls' error is large and every `Result` of this module would carry its size.
    #[error("TLS handshake with {peer} refused by {by}: {error}")]
    Tls {
        peer: std::net::SocketAddr,
        by: RefusedBy,
        error: Box<TlsError>,
    },
    /// The handshake to `dst` failed below TLS (no common version, reset, endpoint closed...).
    #[error("QUIC handshake with {dst} failed: {reason}")]
    Handshake {
        dst: std::net::SocketAddr,
        reason: String,
    },
    /// No handshake answer from `dst` within the timeout (UDP dropped, or no QUIC there).
    #[error("QUIC handshake with {dst} timed out after {after:?}")]
    HandshakeTimeout {
        dst: std::net::SocketAddr,
        after: Duration,
    },
    #[error("http/3 connection: {0}")]
    Connection(#[from] h3::error::ConnectionError),
    #[error("http/3 stream: {0}")]
    Stream(#[from] h3::error::StreamError),
    /// The peer answered the CONNECT with something other than `200`.
    #[error("peer answered CONNECT with status {0}")]
    Status(StatusCode),
    #[error("cannot build HTTP message: {0}")]
    Http(#[from] http::Error),
    #[error("stream is closed for sending")]
    StreamClosed,
    #[error("QUIC connection pool is shut down")]
    PoolClosed,
}

// === impl QuicConfig ===

impl Default for QuicConfig {
    fn default() -> Self {
        const MIB: u32 = 1024 * 1024;
        QuicConfig {
            stream_window: 4 * MIB,
            connection_window: 16 * MIB,
            send_window: 16 * MIB as u64,
            max_concurrent_streams: 200,
            // A peer is declared gone after 5 s of silence (1 s keep-alives keep a healthy
            // connection well inside that); `auto` then notices a path that started dropping
            // UDP within seconds and moves new connections to h2.
            idle_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            handshake_timeout: Duration::from_millis(1500),
            pool_idle_timeout: Duration::from_secs(5 * 60),
            udp_buffer: 8 * MIB as usize,
        }
    }
}

// === impl QuicError ===

impl QuicError {
    /// True when the failure says nothing about this peer's QUIC support beyond "no handshake":
    /// the cases `auto` answers by falling back to h2.
    pub fn is_handshake_failure(&self) -> bool {
        matches!(
            self,
            QuicError::HandshakeTimeout { .. }
                | QuicError::Handshake { .. }
                | QuicError::Tls { .. }
        )
    }
}
