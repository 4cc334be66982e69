//! HBONE: HTTP/2 CONNECT tunnels (wire.md §2.1), on the `h2` crate.
//!
//! # Layout
//!
//! | file | owns |
//! |---|---|
//! | `headers.rs` | the CONNECT request headers: `baggage`, `forwarded`, `traceparent` (build and parse) |
//! | `stream.rs` | [`H2Stream`], a tunnelled byte stream, and its zero-copy halves [`H2Recv`] / [`H2Send`] |
//! | `client.rs` | one client HTTP/2 connection ([`H2Client`]) with its driver and PING keepalive |
//! | `pool.rs` | [`Pool`]: client connections shared per [`PoolKey`], opened through a [`Connector`] |
//! | `server.rs` | [`serve`]: the server side of one connection; every CONNECT stream goes to a handler |
//!
//! # Invariants
//!
//! - This module is generic over the transport: TLS (or nothing, in tests) is put under it by the
//!   caller, so it never imports `tls`.
//! - Requests are classic CONNECT: `:method CONNECT` and `:authority`, no `:scheme` / `:path`.
//! - A connector may hand over a cut signal with its transport ([`Connected::cut_when`]): the
//!   pooled connection closes, streams and all, when it resolves, and each stream can read
//!   the reason ([`H2Stream::cut_probe`]). The proxy uses it for a server a CRL revokes.
//! - A stream is a raw byte pipe after a `200`; END_STREAM is a half-close, and a peer's
//!   `RST_STREAM` with `NO_ERROR` or `CANCEL` reads as end of stream.

use std::time::Duration;

use http::StatusCode;

mod client;
mod headers;
mod pool;
mod server;
mod stream;

#[cfg(test)]
mod tests;

pub use client::{CutWhen, H2Client, connect_once, handshake, handshake_until};
pub use headers::{
    Baggage, ConnectHeaders, ConnectRequest, Forwarded, HeaderError, TraceParent, WorkloadType,
};
pub use pool::{AsyncReadWrite, BoxedIo, Connected, Connector, Pool, PoolKey};
pub use server::{InboundRequest, serve};
pub use stream::{CutProbe, H2Recv, H2Send, H2Stream};

/// HTTP/2 settings for both sides of an HBONE connection, plus the pool's limits.
///
/// The defaults are ztunnel's (wire.md §2.1 "HTTP/2 settings").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Config {
    /// Initial flow-control window of each stream (both sides).
    pub stream_window: u32,
    /// Initial flow-control window of the connection (both sides); larger than one stream's
    /// window so one stalled stream cannot starve the others.
    pub connection_window: u32,
    /// Largest DATA frame we accept.
    pub frame_size: u32,
    /// Largest header list the client accepts (response headers).
    pub client_max_header_list: u32,
    /// Largest header list the server accepts (request headers).
    pub server_max_header_list: u32,
    /// How much the server buffers per stream before making writers wait.
    pub server_max_send_buffer: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS the server advertises.
    pub server_max_concurrent_streams: u32,
    /// Streams the pool puts on one connection before it opens another (also capped by the
    /// peer's SETTINGS_MAX_CONCURRENT_STREAMS).
    pub pool_max_streams_per_conn: u32,
    /// A pooled connection with no streams for this long is closed.
    pub pool_idle_timeout: Duration,
    /// How often each side sends an HTTP/2 PING.
    pub ping_interval: Duration,
    /// A PING not answered within this long closes the connection.
    pub ping_timeout: Duration,
}

/// Everything that can go wrong in an HBONE tunnel.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("hbone i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("http/2: {0}")]
    H2(#[from] h2::Error),
    #[error("http/2 handshake failed: {0}")]
    Handshake(#[source] h2::Error),
    /// The peer answered the CONNECT with something other than `200`.
    #[error("peer answered CONNECT with status {0}")]
    Status(StatusCode),
    /// The connector could not open the transport (TCP or TLS) to `dst`.
    #[error("cannot connect to {dst}: {message}")]
    Connect {
        dst: std::net::SocketAddr,
        stage: ConnectStage,
        message: String,
    },
    /// A request or response could not be built (for example a header value with a control
    /// character).
    #[error("cannot build HTTP message: {0}")]
    Http(#[from] http::Error),
    #[error("keepalive PING not answered within {0:?}")]
    PingTimeout(Duration),
    /// The HTTP/2 connection ended (or was closed by the pool) before the request was sent.
    #[error("http/2 connection closed")]
    ConnectionClosed,
    /// The stream can no longer send (the peer reset it or it was already finished).
    #[error("stream is closed for sending")]
    StreamClosed,
    #[error("connection pool is shut down")]
    PoolClosed,
}

// === impl H2Config ===

impl Default for H2Config {
    fn default() -> Self {
        const MIB: u32 = 1024 * 1024;
        H2Config {
            stream_window: 4 * MIB,
            connection_window: 16 * MIB,
            frame_size: MIB,
            client_max_header_list: 16 * 1024,
            server_max_header_list: 64 * 1024,
            server_max_send_buffer: 400 * 1024,
            server_max_concurrent_streams: 200,
            pool_max_streams_per_conn: 100,
            pool_idle_timeout: Duration::from_secs(5 * 60),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(20),
        }
    }
}

// === impl HboneError ===

/// The step of opening a transport to a peer proxy that failed (it decides the response flag
/// a failed connection is counted under).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectStage {
    /// No certificate for the local workload.
    Identity,
    /// The TCP connect failed.
    Tcp,
    /// The TCP connect timed out (what a network policy dropping packets looks like).
    TcpTimeout,
    /// The TLS handshake failed.
    Tls,
}

impl HboneError {
    /// A connector failure at the TCP step, keeping the connector's own message.
    pub fn connect(dst: std::net::SocketAddr, err: impl std::fmt::Display) -> Self {
        Self::connect_at(dst, ConnectStage::Tcp, err)
    }

    /// A connector failure at `stage`, keeping the connector's own message.
    pub fn connect_at(
        dst: std::net::SocketAddr,
        stage: ConnectStage,
        err: impl std::fmt::Display,
    ) -> Self {
        HboneError::Connect {
            dst,
            stage,
            message: err.to_string(),
        }
    }
}

/// Sends a PING every `interval` and fails when one is not answered within `timeout`.
///
/// It must be polled together with the connection it belongs to (the PONG is read by the
/// connection's driver); it never returns `Ok`.
async fn keepalive(
    ping_pong: Option<h2::PingPong>,
    interval: Duration,
    timeout: Duration,
) -> HboneError {
    let Some(mut ping_pong) = ping_pong else {
        // h2 hands the PingPong out only once; without it there is nothing to do.
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return HboneError::H2(e),
            Err(_) => return HboneError::PingTimeout(timeout),
        }
    }
}
