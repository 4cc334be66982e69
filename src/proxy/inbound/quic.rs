//! Inbound HBONE over QUIC (UDP 15008, next to the TCP listener): each incoming QUIC connection
//! is accepted with the local workload's current certificate (ALPN `h3`), and its HTTP/3 CONNECT
//! streams go to `inbound::serve_stream`, the h2 path's own handling.
//!
//! Drain: on drain the endpoint stops taking connections and each connection sends GOAWAY; at
//! the forced deadline every connection still open is closed (CONNECTION_CLOSE).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::lifecycle::DrainWatcher;
use crate::metrics::{HboneTransportLabel, Reporter};
use crate::quic;
use crate::tls::PeerRole;

use super::{count_connection, serve_stream};
use crate::conn::accesslog::{ConnectionLog, Direction};
use crate::conn::connections::ConnectionTracker;
use crate::conn::revocation::watch_peer;
use crate::conn::{ProxyInputs, socket};

/// How long to wait before asking again for the certificate the endpoint starts with.
const CERT_RETRY: Duration = Duration::from_millis(500);

/// Serves the QUIC endpoint until the drain is forced.
pub(in crate::proxy) async fn run(
    pi: Arc<ProxyInputs>,
    tracker: ConnectionTracker,
    endpoint: quinn::Endpoint,
    drain: DrainWatcher,
) {
    let qcfg = &pi.cfg.transport.quic;
    // The endpoint drops connection attempts until it has a server configuration; each accepted
    // connection then takes the current certificate itself.
    loop {
        let started = match pi.certs.fetch(&pi.local.identity(&pi.state)).await {
            Ok(cert) => quic::enable_server(&endpoint, Some(cert.server_config_h3()), qcfg)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match started {
            Ok(()) => break,
            Err(e) => {
                warn!(error = %e, "HBONE over QUIC not serving yet");
                tokio::select! {
                    _ = drain.draining() => return,
                    () = tokio::time::sleep(CERT_RETRY) => {}
                }
            }
        }
    }
    loop {
        let incoming = tokio::select! {
            biased;
            _ = drain.draining() => break,
            i = endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { break };
        tokio::spawn(handle(pi.clone(), tracker.clone(), incoming, drain.clone()));
    }
    info!(listener = "inbound QUIC", "stopped accepting: draining");
    if let Err(e) = quic::enable_server(&endpoint, None, qcfg) {
        warn!(error = %e, "cannot stop the QUIC endpoint");
    }
    drain.forced().await;
    endpoint.close(0u32.into(), b"drain deadline");
}

async fn handle(
    pi: Arc<ProxyInputs>,
    tracker: ConnectionTracker,
    incoming: quinn::Incoming,
    drain: DrainWatcher,
) {
    let peer: SocketAddr = socket::canonical(incoming.remote_address());
    // The address the client dialled (`dst.addr` of the log lines): the endpoint's port on the
    // local address the packets came to.
    let local = incoming.local_ip().map_or(pi.cfg.inbound_addr, |ip| {
        socket::canonical(SocketAddr::new(ip, pi.cfg.inbound_addr.port()))
    });
    let identity = pi.local.identity(&pi.state);
    let cert = match pi.certs.fetch(&identity).await {
        Ok(c) => c,
        Err(e) => {
            incoming.refuse();
            let mut log = ConnectionLog::new(Direction::Inbound, peer);
            log.dst = Some(local);
            return log.fail(&format_args!("no certificate for {identity}: {e}"));
        }
    };
    let (conn, peer_id) =
        match quic::accept(incoming, cert.server_config_h3(), &pi.cfg.transport.quic).await {
            Ok(ok) => ok,
            Err(e) => {
                pi.metrics.inbound_handshake_failures.inc();
                if matches!(&e, quic::QuicError::Tls { error, .. } if error.is_revoked()) {
                    pi.metrics.crl_rejected(Reporter::Destination);
                }
                let mut log = ConnectionLog::new(Direction::Inbound, peer);
                log.dst = Some(local);
                log.transport = Some(HboneTransportLabel::h3);
                // A TLS refusal is logged in the h2 listener's words, so one search finds it
                // on either transport.
                return match e {
                    quic::QuicError::Tls { error, .. } => {
                        log.fail(&format_args!("TLS handshake: {error}"))
                    }
                    e => log.fail(&e),
                };
            }
        };
    pi.metrics.inbound_handshakes.inc();
    count_connection(&pi, HboneTransportLabel::h3);
    let chain = quic::peer_chain(&conn);
    let (revoked, signal) = watch_peer(
        &pi.metrics,
        &cert,
        chain.as_deref().map(Vec::as_slice),
        PeerRole::Client,
        (peer, &peer_id),
    );
    let shutdown = {
        let d = drain.clone();
        async move { d.draining().await }
    };
    let handler = {
        let (pi, drain) = (pi.clone(), drain.clone());
        move |req| {
            serve_stream(
                pi.clone(),
                tracker.clone(),
                (peer, local),
                peer_id.clone(),
                req,
                drain.clone(),
                signal.clone(),
            )
        }
    };
    tokio::select! {
        r = quic::serve(conn.clone(), shutdown, handler) => {
            if let Err(e) = r {
                tracing::debug!(src = %peer, error = %e, "QUIC HBONE connection ended with an error");
            }
        }
        _ = drain.forced() => conn.close(0u32.into(), b"drain deadline"),
        // Closed at once, every stream with it (see conn/revocation.rs).
        _ = revoked => conn.close(0u32.into(), b"peer certificate revoked"),
    }
}
