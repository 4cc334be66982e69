//! UDP sockets and quinn endpoints for HBONE over QUIC.
//!
//! Socket buffers: a QUIC sender bursts a whole congestion window of datagrams at once, and the
//! receiver must absorb them until its task runs; Linux's defaults (`net.core.rmem_default` /
//! `wmem_default`, about 208 KiB) drop packets at a few hundred Mbit/s. We ask for
//! [`QuicConfig::udp_buffer`] with `SO_RCVBUFFORCE` / `SO_SNDBUFFORCE`, which bypass
//! `net.core.rmem_max` / `wmem_max` when the process has `CAP_NET_ADMIN` (ambit normally does);
//! without it we fall back to `SO_RCVBUF` / `SO_SNDBUF`, which the kernel caps at those sysctls
//! (raise them, e.g. `sysctl -w net.core.rmem_max=8388608 net.core.wmem_max=8388608`, to get
//! the full size). Either way the kernel doubles the value for its bookkeeping.
//!
//! GSO and GRO: quinn-udp turns on UDP segmentation offload (`UDP_SEGMENT`) and receive
//! offload (`UDP_GRO`) by default where the kernel supports them; we leave both on.

use std::net::SocketAddr;
use std::sync::Arc;

use nix::sys::socket::{setsockopt, sockopt};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, IdleTimeout, TransportConfig, VarInt};
use rustls_pki_types::CertificateDer;
use socket2::Socket;

use super::handshake::handshake_error;
use super::{QuicConfig, QuicError};
use crate::core::Identity;
use crate::tls::{TlsError, chain_identity};

/// Binds a UDP socket made by the caller (in the right network namespace, with its mark set)
/// to `addr`, sized for bulk traffic. `[::]` binds dual-stack.
pub fn bind_udp(
    socket: Socket,
    addr: SocketAddr,
    cfg: &QuicConfig,
) -> std::io::Result<std::net::UdpSocket> {
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    size_buffers(&socket, cfg.udp_buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Best effort: a smaller buffer costs throughput, not correctness.
fn size_buffers(socket: &Socket, size: usize) {
    let want = size.min(i32::MAX as usize);
    if setsockopt(socket, sockopt::RcvBufForce, &want).is_err()
        && let Err(e) = socket.set_recv_buffer_size(want)
    {
        tracing::debug!(error = %e, "cannot size UDP receive buffer");
    }
    if setsockopt(socket, sockopt::SndBufForce, &want).is_err()
        && let Err(e) = socket.set_send_buffer_size(want)
    {
        tracing::debug!(error = %e, "cannot size UDP send buffer");
    }
}

/// A server endpoint on `socket`. Its server configuration is `initial` (without one it drops
/// incoming connections until [`enable_server`]); every accepted connection gets the
/// then-current certificate through [`accept`].
pub fn server_endpoint(
    socket: std::net::UdpSocket,
    initial: Option<Arc<rustls::ServerConfig>>,
    cfg: &QuicConfig,
) -> Result<quinn::Endpoint, QuicError> {
    let server = initial.map(|tls| server_config(tls, cfg)).transpose()?;
    endpoint(socket, server)
}

/// Starts (or, with `None`, stops) taking new connections on a server endpoint.
pub fn enable_server(
    endpoint: &quinn::Endpoint,
    tls: Option<Arc<rustls::ServerConfig>>,
    cfg: &QuicConfig,
) -> Result<(), QuicError> {
    let server = tls.map(|tls| server_config(tls, cfg)).transpose()?;
    endpoint.set_server_config(server);
    Ok(())
}

/// A client-only endpoint on `socket` (never accepts connections).
pub fn client_endpoint(socket: std::net::UdpSocket) -> Result<quinn::Endpoint, QuicError> {
    endpoint(socket, None)
}

fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, QuicError> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| QuicError::Config("no async runtime for quinn".into()))?;
    Ok(quinn::Endpoint::new(
        EndpointConfig::default(),
        server,
        socket,
        runtime,
    )?)
}

/// Completes the server side of one incoming connection with `tls` (the local workload's
/// current certificate, ALPN `h3`); returns the connection and the client's SPIFFE identity.
pub async fn accept(
    incoming: quinn::Incoming,
    tls: Arc<rustls::ServerConfig>,
    cfg: &QuicConfig,
) -> Result<(quinn::Connection, Identity), QuicError> {
    let remote = incoming.remote_address();
    let handshake_failed = |reason: String| QuicError::Handshake {
        dst: remote,
        reason,
    };
    let server = Arc::new(server_config(tls, cfg)?);
    let connecting = incoming
        .accept_with(server)
        // The ClientHello is read here, so a wrong ALPN is refused at this point.
        .map_err(|e| handshake_error(remote, &e))?;
    let conn = match tokio::time::timeout(cfg.handshake_timeout * 4, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(handshake_error(remote, &e)),
        Err(_) => {
            return Err(QuicError::HandshakeTimeout {
                dst: remote,
                after: cfg.handshake_timeout * 4,
            });
        }
    };
    let id = peer_identity(&conn).map_err(|e| handshake_failed(e.to_string()))?;
    Ok((conn, id))
}

/// The SPIFFE identity of a connection's peer (first URI SAN of its verified leaf).
pub fn peer_identity(conn: &quinn::Connection) -> Result<Identity, TlsError> {
    let chain = peer_chain(conn).ok_or(TlsError::NoPeerCertificate)?;
    chain_identity(&chain)
}

/// The chain a connection's peer presented (leaf first), as its handshake verified it.
pub fn peer_chain(conn: &quinn::Connection) -> Option<Box<Vec<CertificateDer<'static>>>> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
}

/// The quinn server configuration for a rustls one (ALPN `h3`), with our transport settings.
pub(crate) fn server_config(
    tls: Arc<rustls::ServerConfig>,
    cfg: &QuicConfig,
) -> Result<quinn::ServerConfig, QuicError> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Config(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(cfg)));
    // A client that went through a stateless retry proves its address; our peers are known
    // nodes, so the extra round trip buys nothing.
    server.migration(true);
    Ok(server)
}

/// The quinn client configuration for a rustls one (ALPN `h3`), with our transport settings.
pub(crate) fn client_config(
    tls: Arc<rustls::ClientConfig>,
    cfg: &QuicConfig,
) -> Result<quinn::ClientConfig, QuicError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| QuicError::Config(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport(cfg)));
    Ok(client)
}

fn transport(cfg: &QuicConfig) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(cfg.stream_window))
        .receive_window(VarInt::from_u32(cfg.connection_window))
        .send_window(cfg.send_window)
        .max_concurrent_bidi_streams(VarInt::from_u32(cfg.max_concurrent_streams))
        // HBONE needs no server push or other unidirectional streams beyond HTTP/3's own
        // control and QPACK streams.
        .max_concurrent_uni_streams(VarInt::from_u32(8))
        .max_idle_timeout(IdleTimeout::try_from(cfg.idle_timeout).ok())
        .keep_alive_interval(Some(cfg.keepalive_interval));
    t
}
