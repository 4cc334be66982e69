//! Inbound HBONE (15008): mutual TLS with the local workload's certificate, then HTTP/2 CONNECT
//! streams, each delivered to the local app. HBONE over QUIC (UDP 15008, `inbound_quic.rs`)
//! hands its HTTP/3 CONNECT streams to the same [`serve_stream`].
//!
//! Statuses: `400` when the target is not a local workload address (or not an address at all),
//! `401` when authorization denies the stream (decided before the app is dialled, so a denied
//! client never reaches it), `503` when the app cannot be reached or the target would loop into
//! the proxy; `200` only once the app's connection is open, so a client learns of a failure
//! before sending data. Every stream is tracked while it lives and closed if a later state
//! change denies it.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpStream;

use crate::core::{Authority, Identity};
use crate::hbone;
use crate::lifecycle::DrainWatcher;
use crate::metrics::{DirectionLabel, HboneTransportLabel, TransportLabels};
use crate::rbac::ConnFacts;
use crate::tls;

use super::accesslog::{ConnectionLog, Direction, inbound_labels};
use super::connections::ConnectionTracker;
use super::copy::{copy_bidirectional, tcp_halves};
use super::transport::InboundTunnel;
use super::{ILLEGAL_PORTS, ProxyInputs, authz, run_authorized, socket};

pub(super) async fn handle(
    pi: Arc<ProxyInputs>,
    tracker: ConnectionTracker,
    stream: TcpStream,
    peer: SocketAddr,
    drain: DrainWatcher,
) {
    if let Err(e) = socket::tune(&stream, &pi.cfg.socket) {
        return ConnectionLog::new(Direction::Inbound, peer)
            .fail(&format_args!("socket options: {e}"));
    }
    let cert = match pi.certs.fetch(&pi.local.identity).await {
        Ok(c) => c,
        Err(e) => {
            return ConnectionLog::new(Direction::Inbound, peer).fail(&format_args!(
                "no certificate for {}: {e}",
                pi.local.identity
            ));
        }
    };
    let (tls, peer_id) = match tls::accept(cert.server_config(), stream).await {
        Ok(ok) => ok,
        Err(e) => {
            pi.metrics.inbound_handshake_failures.inc();
            return ConnectionLog::new(Direction::Inbound, peer)
                .fail(&format_args!("TLS handshake: {e}"));
        }
    };
    pi.metrics.inbound_handshakes.inc();
    count_connection(&pi, HboneTransportLabel::h2);
    let shutdown = {
        let d = drain.clone();
        async move { d.draining().await }
    };
    let handler = {
        let pi = pi.clone();
        move |req| {
            serve_stream(
                pi.clone(),
                tracker.clone(),
                peer,
                peer_id.clone(),
                req,
                drain.clone(),
            )
        }
    };
    if let Err(e) = hbone::serve(tls, &pi.cfg.h2, shutdown, handler).await {
        tracing::debug!(src = %peer, error = %e, "HBONE connection ended with an error");
    }
}

/// Counts an accepted HBONE connection (after its handshake) under its transport.
pub(super) fn count_connection(pi: &ProxyInputs, transport: HboneTransportLabel) {
    pi.metrics
        .hbone_connections
        .get_or_create(&TransportLabels {
            transport,
            direction: DirectionLabel::inbound,
        })
        .inc();
}

/// Serves one CONNECT stream of either transport (h2 or h3): the same checks, statuses,
/// authorization, tracking and logs.
pub(super) async fn serve_stream<R: InboundTunnel>(
    pi: Arc<ProxyInputs>,
    tracker: ConnectionTracker,
    peer: SocketAddr,
    peer_id: Identity,
    req: R,
    drain: DrainWatcher,
) {
    let mut log = ConnectionLog::new(Direction::Inbound, peer);
    log.src_identity = Some(peer_id);
    log.dst_identity = Some(pi.local.identity.clone());
    log.transport = Some(R::TRANSPORT);
    let target = match req.authority() {
        Authority::Addr(a) => socket::canonical(*a),
        authority @ Authority::Host(..) => {
            let msg = format!("CONNECT to {authority}: host name targets are not supported");
            req.reject(StatusCode::BAD_REQUEST).await;
            return log.fail(&msg);
        }
    };
    log.dst = Some(target);
    if ILLEGAL_PORTS.contains(&target.port()) {
        req.reject(StatusCode::SERVICE_UNAVAILABLE).await;
        return log.fail(&format_args!(
            "CONNECT to {target}: refusing a target that would loop into the proxy"
        ));
    }
    // Tracked before the first decision, so no state change can fall between the two.
    let mut registration = tracker.register(peer, target, log.src_identity.as_ref());
    let forwarded_host = req.forwarded_host();
    // Decided without holding the snapshot across an `.await` (rejecting is async on h3).
    let decision = {
        let snapshot = pi.state.snapshot();
        snapshot
            .workload_by_addr(&pi.cfg.network, target.ip())
            .filter(|wl| pi.local.is(wl))
            .map(|local| {
                log.open(
                    &pi,
                    inbound_labels(
                        &pi,
                        local,
                        peer,
                        log.src_identity.as_ref(),
                        forwarded_host.as_deref(),
                    ),
                );
                let facts = ConnFacts {
                    src: peer,
                    dst: target,
                    identity: log.src_identity.as_ref(),
                };
                authz::decide(&snapshot, local, &facts)
            })
    };
    let Some(decision) = decision else {
        req.reject(StatusCode::BAD_REQUEST).await;
        return log.fail(&format_args!(
            "CONNECT to {target}: not an address of the local workload {}/{}",
            pi.local.namespace, pi.local.name
        ));
    };
    if !decision.is_allow() {
        pi.metrics.connections_denied.inc();
        req.reject(StatusCode::UNAUTHORIZED).await;
        log.response_flags = Some("DENY");
        return log.fail(&decision);
    }
    // Keep the client's address as the source when the families match and we may.
    let src = (pi.cfg.orig_src && peer.is_ipv4() == target.is_ipv4()).then(|| peer.ip());
    let upstream = match socket::connect(target, src, &pi.cfg.socket).await {
        Ok(s) => s,
        Err(e) => {
            req.reject(StatusCode::SERVICE_UNAVAILABLE).await;
            log.response_flags = Some("CONNECT");
            return log.fail(&e);
        }
    };
    let tunnel = match req.accept().await {
        Ok(t) => t,
        Err(e) => return log.fail(&e),
    };
    pi.metrics
        .hbone_streams
        .get_or_create(&TransportLabels {
            transport: R::TRANSPORT,
            direction: DirectionLabel::inbound,
        })
        .inc();
    let copy = copy_bidirectional(tunnel, tcp_halves(upstream), log.stats.clone());
    run_authorized(&pi, copy, &drain, &mut registration, log).await;
}
