//! Inbound HBONE (15008): mutual TLS with the local workload's certificate, then HTTP/2 CONNECT
//! streams, each delivered to the local app. HBONE over QUIC (UDP 15008, [`quic`])
//! hands its HTTP/3 CONNECT streams to the same [`serve_stream`].
//!
//! Targets: `IP:port` (an address of the local workload, or of a destination it is the waypoint
//! of) or, from double HBONE through a network gateway, `hostname:service port`: the service by
//! host name (the local namespace's first), delivered to the local workload if it backs that
//! service, on its port mapping for the service port. A request whose `x-forwarded-network`
//! names another network came through a gateway: its source address is the gateway's, so the
//! source workload is never looked up by it (the peer identity still authorizes).
//!
//! Statuses: `400` when the target is not a local workload address nor a service it backs,
//! `401` when authorization denies the stream (decided before the app is dialled, so a denied
//! client never reaches it), `503` when the app cannot be reached, the target would loop into
//! the proxy or a host name target has no port mapping; `200` only once the app's connection
//! is open, so a client learns of a failure before sending data. Every stream is tracked while
//! it lives and closed if a later state change denies it.

pub(super) mod quic;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use http::StatusCode;
use tokio::net::TcpStream;

use crate::core::{Authority, Identity};
use crate::hbone;
use crate::lifecycle::DrainWatcher;
use crate::metrics::{
    DirectionLabel, HboneTransportLabel, Reporter, ResponseFlag, TransportLabels,
};
use crate::rbac::ConnFacts;
use crate::tls::{self, PeerRole};

use super::waypoint;
use crate::conn::accesslog::{ConnectionLog, Direction, inbound_labels};
use crate::conn::connections::{Authorized, ConnectionTracker};
use crate::conn::copy::{copy_bidirectional, tcp_halves};
use crate::conn::handshake::PendingHandshakes;
use crate::conn::revocation::{RevokedSignal, watch_peer};
use crate::conn::transport::InboundTunnel;
use crate::conn::{
    ILLEGAL_PORTS, LocalWorkload, ProxyInputs, authz, baggage, proxyproto, same_family_ip, socket,
};
use crate::state::{
    AppTunnelProtocol, ApplicationTunnel, GatewayAddress, Service, Snapshot, Workload,
};

pub(super) async fn handle(
    pi: Arc<ProxyInputs>,
    (tracker, pending): (ConnectionTracker, PendingHandshakes),
    stream: TcpStream,
    peer: SocketAddr,
    drain: DrainWatcher,
) {
    // No `tune`: the listener is tuned (`socket::listen_tuned`), accepted sockets inherit it.
    // The address the client dialled (`dst.addr` of every stream's log line).
    let local = stream
        .local_addr()
        .map(socket::canonical)
        .unwrap_or(pi.cfg.inbound_addr);
    let early = |error: &dyn std::fmt::Display| {
        let mut log = ConnectionLog::new(Direction::Inbound, peer);
        log.dst = Some(local);
        log.fail(error)
    };
    // Held until the handshake is over: a source with too many under way is turned away
    // before it costs a handshake (see `handshake`). Not access-logged: a flood would flood
    // the log too; the counter tells.
    let Some(slot) = pending.admit(peer.ip()) else {
        pi.metrics.inbound_handshakes_shed.inc();
        tracing::debug!(src = %peer, "closed: too many TLS handshakes under way from this source");
        return;
    };
    let identity = pi.local.identity(&pi.state);
    let cert = match pi.certs.fetch(&identity).await {
        Ok(c) => c,
        Err(e) => {
            return early(&format_args!("no certificate for {identity}: {e}"));
        }
    };
    let deadline = pi.cfg.handshake.timeout;
    let handshake = tokio::time::timeout(deadline, tls::accept(cert.server_config(), stream));
    let (tls, peer_id) = match handshake.await {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            pi.metrics.inbound_handshake_failures.inc();
            if e.is_revoked() {
                pi.metrics.crl_rejected(Reporter::Destination);
            }
            return early(&format_args!("TLS handshake: {e}"));
        }
        Err(_) => {
            pi.metrics.inbound_handshake_timeouts.inc();
            return early(&format_args!(
                "TLS handshake: not finished within {deadline:?}"
            ));
        }
    };
    drop(slot);
    pi.metrics.inbound_handshakes.inc();
    count_connection(&pi, HboneTransportLabel::h2);
    let (revoked, signal) = watch_peer(
        &pi.metrics,
        &cert,
        tls.get_ref().1.peer_certificates(),
        PeerRole::Client,
        (peer, &peer_id),
    );
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
                (peer, local),
                peer_id.clone(),
                req,
                drain.clone(),
                signal.clone(),
            )
        }
    };
    // A revoked peer's connection is dropped whole: every stream on it ends (see conn/revocation.rs).
    tokio::select! {
        r = hbone::serve(tls, &pi.cfg.h2, shutdown, handler) => if let Err(e) = r {
            tracing::debug!(src = %peer, error = %e, "HBONE connection ended with an error");
        },
        _ = revoked => {}
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
/// authorization, tracking and logs. `peer` is the client's address, `local` the HBONE address
/// it connected to.
pub(super) fn serve_stream<R: InboundTunnel>(
    pi: Arc<ProxyInputs>,
    tracker: ConnectionTracker,
    addrs: (SocketAddr, SocketAddr),
    peer_id: Identity,
    req: R,
    drain: DrainWatcher,
    revoked: RevokedSignal,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    // The set-up (request, routing, authorization, upstream connect, PROXY header) is boxed and
    // freed when done; the task of an established stream keeps only [`Authorized`]'s run.
    // Chained with `then` rather than written as an `async` block, which would keep the
    // set-up's result and the future made from it in two slots for the stream's whole life.
    let set_up = Box::pin(set_up(pi, tracker, addrs, peer_id, req, revoked));
    FutureExt::then(set_up, move |authorized| {
        OptionFuture::from(authorized.map(|a| a.run(drain)))
    })
    .map(|_: Option<()>| ())
}

async fn set_up<R: InboundTunnel>(
    pi: Arc<ProxyInputs>,
    tracker: ConnectionTracker,
    (peer, local): (SocketAddr, SocketAddr),
    peer_id: Identity,
    req: R,
    revoked: RevokedSignal,
) -> Option<
    Authorized<impl std::future::Future<Output = std::io::Result<()>> + Unpin + Send + use<R>>,
> {
    let mut log = ConnectionLog::new(Direction::Inbound, peer);
    log.src_identity = Some(peer_id);
    log.dst_identity = Some(pi.local.identity(&pi.state));
    log.transport = Some(R::TRANSPORT);
    log.dst = Some(local);
    log.hbone_addr = Some(req.authority().clone());
    let mut forwarded_host = req.forwarded_host();
    // ztunnel reads the source's baggage only when it sends its own (ENABLE_RESPONSE_BAGGAGE).
    let src_baggage = if pi.cfg.response_baggage {
        req.baggage()
    } else {
        None
    };
    // For a host-name CONNECT, what a PROXY header names instead of the target.
    let mut host_dst = None;
    let target = match req.authority() {
        Authority::Addr(a) => socket::canonical(*a),
        Authority::Host(host, port) => {
            let resolved = {
                let snapshot = pi.state.snapshot();
                host_dst = host_proxy_dst(&pi, &snapshot, host, *port);
                host_target(&pi, &snapshot, host, *port)
            };
            match resolved {
                Ok(t) => {
                    forwarded_host.get_or_insert_with(|| host.clone());
                    t
                }
                Err(e) => {
                    req.reject(e.status()).await;
                    return fail(log, &e);
                }
            }
        }
    };
    // Through a network gateway the TCP peer is the gateway, not the source workload.
    let from_gateway = req.forwarded_network().is_some_and(|n| n != pi.cfg.network);
    if ILLEGAL_PORTS.contains(&target.port()) {
        req.reject(StatusCode::SERVICE_UNAVAILABLE).await;
        return fail(
            log,
            &format_args!("CONNECT to {target}: refusing a target that would loop into the proxy"),
        );
    }
    // Tracked before the first decision, so no state change can fall between the two.
    let registration = tracker.register(peer, target, log.src_identity.as_ref(), log.stats.clone());
    // Decided without holding the snapshot across an `.await` (rejecting is async on h3).
    let decided = {
        let snapshot = pi.state.snapshot();
        local_destination(&pi, &snapshot, target).map(|(local, upstream)| {
            log.open(
                &pi,
                inbound_labels(
                    &pi,
                    local,
                    ((!from_gateway).then_some(peer), src_baggage.as_ref()),
                    log.src_identity.as_ref(),
                    (forwarded_host.as_deref(), upstream.port()),
                ),
            );
            let facts = ConnFacts {
                src: peer,
                dst: upstream,
                identity: log.src_identity.as_ref(),
            };
            let delivery = delivery(
                upstream,
                host_dst.unwrap_or(target),
                local.application_tunnel.as_ref(),
                pi.cfg.localhost_app_tunnel,
            );
            let decision = authz::decide(&snapshot, local, &facts);
            let baggage = pi.cfg.response_baggage.then(|| baggage(local));
            (decision, delivery, baggage)
        })
    };
    let Some((decision, delivery, baggage)) = decided else {
        req.reject(StatusCode::BAD_REQUEST).await;
        return fail(
            log,
            &format_args!(
                "CONNECT to {target}: not an address of the local workload {}/{} nor a destination \
             it is the waypoint of",
                pi.local.namespace, pi.local.name
            ),
        );
    };
    if !decision.is_allow() {
        pi.metrics.connections_denied.inc();
        req.reject(StatusCode::UNAUTHORIZED).await;
        log.response_flags = Some(ResponseFlag::Deny);
        return fail(log, &decision);
    }
    // Keep the client's address as the source when the families match and we may; never
    // over loopback (an application tunnel names the client in its header).
    let src = (pi.cfg.orig_src
        && !delivery.upstream.ip().is_loopback()
        && peer.is_ipv4() == delivery.upstream.is_ipv4())
    .then(|| peer.ip());
    let mut upstream = match socket::connect(delivery.upstream, src, &pi.cfg.socket).await {
        Ok(s) => s,
        Err(e) => {
            req.reject(StatusCode::SERVICE_UNAVAILABLE).await;
            log.response_flags = Some(ResponseFlag::Connect);
            return fail(log, &e);
        }
    };
    if let Some(dst) = delivery.proxy_dst {
        // Before the 200, so an app that cannot take the header fails the CONNECT.
        if let Err(e) = proxyproto::write(&mut upstream, peer, dst, log.src_identity.as_ref()).await
        {
            req.reject(StatusCode::SERVICE_UNAVAILABLE).await;
            log.response_flags = Some(ResponseFlag::Connect);
            return fail(log, &e);
        }
    }
    let tunnel = match req.accept(baggage.as_ref()).await {
        Ok(t) => t,
        Err(e) => {
            log.response_flags = Some(ResponseFlag::Connect);
            return fail(log, &e);
        }
    };
    pi.metrics
        .hbone_streams
        .get_or_create(&TransportLabels {
            transport: R::TRANSPORT,
            direction: DirectionLabel::inbound,
        })
        .inc();
    let copy = copy_bidirectional(tunnel, tcp_halves(upstream), log.stats.clone());
    Some(Authorized {
        pi,
        copy,
        registration,
        cert_revoked: revoked,
        log,
    })
}

/// Logs a stream that ended during its set-up.
fn fail<T>(log: ConnectionLog, error: &dyn std::fmt::Display) -> Option<T> {
    log.fail(error);
    None
}

/// Where a CONNECT to `target` is delivered on this pod, and the local workload it is for
/// (wire.md §2.1): an address of the local workload as is; or, when the local workload is the
/// waypoint of the service VIP or workload address `target` names (sandwich mode), or has an
/// application tunnel (any target: the header names it), the local workload's address with the
/// same port.
pub(super) fn local_destination<'s>(
    pi: &ProxyInputs,
    snapshot: &'s Snapshot,
    target: SocketAddr,
) -> Option<(&'s Arc<Workload>, SocketAddr)> {
    local_destination_of(&pi.cfg.network, &pi.local, snapshot, target)
}

/// [`local_destination`] for the proxy of `local` on `network` (any workload's, for
/// `/debug/explain`).
pub(super) fn local_destination_of<'s>(
    network: &str,
    local: &LocalWorkload,
    snapshot: &'s Snapshot,
    target: SocketAddr,
) -> Option<(&'s Arc<Workload>, SocketAddr)> {
    if let Some(wl) = snapshot
        .workload_by_addr(network, target.ip())
        .filter(|wl| local.is(wl))
    {
        return Some((wl, target));
    }
    let local = snapshot.workload_by_name(&local.namespace, &local.name)?;
    let served =
        |gw: Option<&GatewayAddress>| gw.is_some_and(|gw| waypoint::is_instance(local, gw));
    // An application tunnel hands the target to the app in its header: the app decides what
    // to do with it (a waypoint whose state lags still receives), as ztunnel accepts it.
    let for_us = local.application_tunnel.is_some()
        || snapshot
            .service_by_vip(network, target.ip())
            .is_some_and(|s| s.waypoints().any(|gw| waypoint::is_instance(local, gw)))
        || served(
            snapshot
                .workload_by_addr(network, target.ip())
                .and_then(|w| w.waypoint.as_ref()),
        );
    if !for_us {
        return None;
    }
    let ip = same_family_ip(local, target.ip())?;
    Some((local, SocketAddr::new(ip, target.port())))
}

/// Why a `hostname:port` target has no local destination.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum HostTargetError {
    #[error("CONNECT to {host}:{port}: no service has host name {host}")]
    UnknownService { host: String, port: u16 },
    #[error(
        "CONNECT to {host}:{port}: the local workload {workload} does not back service {service}"
    )]
    NotAnEndpoint {
        host: String,
        port: u16,
        service: String,
        workload: String,
    },
    #[error("CONNECT to {host}:{port}: service {service} has no mapping for port {port}")]
    NoPortMapping {
        host: String,
        port: u16,
        service: String,
    },
    #[error("CONNECT to {host}:{port}: the local workload {workload} has no address")]
    NoAddress {
        host: String,
        port: u16,
        workload: String,
    },
}

impl HostTargetError {
    /// The CONNECT answer (wire.md §2.1): a target that is not ours is a bad request; one that
    /// is ours but cannot be delivered is unavailable.
    pub(super) fn status(&self) -> StatusCode {
        match self {
            HostTargetError::UnknownService { .. } | HostTargetError::NotAnEndpoint { .. } => {
                StatusCode::BAD_REQUEST
            }
            HostTargetError::NoPortMapping { .. } | HostTargetError::NoAddress { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// Resolves a `hostname:svc_port` target (double HBONE) to the local workload's address and
/// target port: the service by host name (the local namespace's, else the first in key order
/// visible to it), which the local workload must back; port = the workload's own mapping for
/// `svc_port`, else the service's (0 ⇒ the service port).
pub(super) fn host_target(
    pi: &ProxyInputs,
    snapshot: &Snapshot,
    host: &str,
    svc_port: u16,
) -> Result<SocketAddr, HostTargetError> {
    let ns = &pi.local.namespace;
    let svc = host_service(pi, snapshot, host).ok_or_else(|| HostTargetError::UnknownService {
        host: host.to_string(),
        port: svc_port,
    })?;
    let key = svc.key();
    let me = snapshot.workload_by_name(ns, &pi.local.name);
    // The service's waypoint, reached through a network gateway (double HBONE to a waypoint):
    // handled as a sandwich CONNECT to the service's VIP on this network, so the waypoint is
    // told the service address it serves (a PROXY header cannot name a host).
    if let Some(me) = me
        && !me.services.contains_key(&key)
        && svc.waypoints().any(|gw| waypoint::is_instance(me, gw))
        && let Some(vip) = service_vip(&pi.cfg.network, svc, svc_port, false)
    {
        return Ok(vip);
    }
    let local = me
        .filter(|wl| wl.services.contains_key(&key))
        .ok_or_else(|| HostTargetError::NotAnEndpoint {
            host: host.to_string(),
            port: svc_port,
            service: key.clone(),
            workload: format!("{ns}/{}", pi.local.name),
        })?;
    let own = local
        .services
        .get(&key)
        .and_then(|ports| ports.get(&svc_port))
        .copied()
        .filter(|p| *p != 0);
    let port = match own {
        Some(p) => p,
        None => match svc.ports.get(&svc_port) {
            Some(0) => svc_port,
            Some(p) => *p,
            None => {
                return Err(HostTargetError::NoPortMapping {
                    host: host.to_string(),
                    port: svc_port,
                    service: key,
                });
            }
        },
    };
    // IPv4 first, as the PROXY header's service address is (wire.md §2.1).
    let ip = local
        .workload_ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| local.workload_ips.first())
        .copied()
        .ok_or_else(|| HostTargetError::NoAddress {
            host: host.to_string(),
            port: svc_port,
            workload: format!("{ns}/{}", pi.local.name),
        })?;
    Ok(SocketAddr::new(ip, port))
}

/// The service a `hostname` target names: the local namespace's, else the first in key order
/// visible to it.
fn host_service<'s>(
    pi: &ProxyInputs,
    snapshot: &'s Snapshot,
    host: &str,
) -> Option<&'s Arc<Service>> {
    let ns = &pi.local.namespace;
    let lower = host.to_ascii_lowercase();
    snapshot.service_by_host(ns, &lower).or_else(|| {
        snapshot
            .services_by_hostname(&lower)
            .iter()
            .find(|s| s.visible_to(ns))
    })
}

/// `svc`'s VIP with `port`: on `network` first (only there unless `elsewhere`), IPv4 first.
fn service_vip(network: &str, svc: &Service, port: u16, elsewhere: bool) -> Option<SocketAddr> {
    svc.vips
        .iter()
        .filter(|v| elsewhere || v.network == network)
        .max_by_key(|v| (v.network == network, v.address.is_ipv4()))
        .map(|v| SocketAddr::new(v.address, port))
}

/// The destination a PROXY header names for a `hostname:svc_port` CONNECT: the header cannot
/// carry a host name, so, as ztunnel, a VIP of the service (this network's first) with the
/// service port. `None` for a service without VIPs: the header then names the local target.
pub(super) fn host_proxy_dst(
    pi: &ProxyInputs,
    snapshot: &Snapshot,
    host: &str,
    svc_port: u16,
) -> Option<SocketAddr> {
    let svc = host_service(pi, snapshot, host)?;
    service_vip(&pi.cfg.network, svc, svc_port, true)
}

/// How a stream reaches the app.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Delivery {
    /// Where to connect.
    pub upstream: SocketAddr,
    /// For a PROXY application tunnel: the destination the header names (the CONNECT target).
    pub proxy_dst: Option<SocketAddr>,
}

/// Applies the local workload's application tunnel to a resolved `upstream`: a port override,
/// and for `PROXY` a connection that starts with a header naming `target`, over loopback when
/// `localhost` (so the app's tunnel port need not be reachable from outside the pod).
pub(super) fn delivery(
    upstream: SocketAddr,
    target: SocketAddr,
    tunnel: Option<&ApplicationTunnel>,
    localhost: bool,
) -> Delivery {
    let Some(t) = tunnel else {
        return Delivery {
            upstream,
            proxy_dst: None,
        };
    };
    let port = t.port.unwrap_or(upstream.port());
    match t.protocol {
        AppTunnelProtocol::Proxy if !localhost => Delivery {
            upstream: SocketAddr::new(upstream.ip(), port),
            proxy_dst: Some(target),
        },
        AppTunnelProtocol::Proxy => {
            let lo: IpAddr = if upstream.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            };
            Delivery {
                upstream: SocketAddr::new(lo, port),
                proxy_dst: Some(target),
            }
        }
        AppTunnelProtocol::None => Delivery {
            upstream: SocketAddr::new(upstream.ip(), port),
            proxy_dst: None,
        },
    }
}
