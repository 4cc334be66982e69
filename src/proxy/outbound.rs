//! Outbound: a connection the app made, redirected to 15001. Resolve where it was going, then
//! tunnel it over HBONE to the destination's proxy (through the remote network's gateway, by
//! double HBONE, when the endpoint is on another network: `gateway.rs`), or pass it through as
//! plain TCP when the destination is not in the mesh.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::OptionFuture;
use http::StatusCode;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::core::Authority;
use crate::hbone::{ConnectHeaders, ConnectRequest, Forwarded, HboneError, PoolKey, TraceParent};
use crate::lifecycle::DrainWatcher;
use crate::metrics::{HboneTransportLabel, OnDemandDnsLabels, ResponseFlag, TrafficLabels};
use crate::quic::QuicError;
use crate::state::Workload;

use super::gateway::{self, GatewayError};
#[cfg(test)]
pub(super) use super::route::route;
pub(super) use super::route::{Route, RouteError, Routed, route_avoiding};
use crate::conn::accesslog::{ConnectionLog, Direction, hbone_flag, outbound_labels};
use crate::conn::connections::{
    Close, ConnectionTracker, LiveOutbound, OutboundProtocol, OutboundRegistration, copy_until,
};
use crate::conn::copy::{copy_bidirectional, tcp_halves};
use crate::conn::ondemand::LookupError;
use crate::conn::outlier::Outliers;
use crate::conn::revocation::Cut;
use crate::conn::transport::{TransportError, Transports, Tunnel};
use crate::conn::{ProxyInputs, baggage, socket};

pub(super) fn handle(
    pi: Arc<ProxyInputs>,
    deps: (Arc<Transports>, Arc<Outliers>, ConnectionTracker),
    stream: TcpStream,
    peer: SocketAddr,
    drain: DrainWatcher,
) -> impl Future<Output = ()> + Send + 'static {
    // The set-up (routing, pool, handshakes: several KiB) is boxed and freed once connected;
    // the task of an established connection keeps only the relay. Chained with `then` rather
    // than written as an `async` block, which would keep the set-up's result and the relay
    // made from it in two slots for the connection's whole life.
    let set_up = Box::pin(set_up(pi, deps, stream, peer));
    FutureExt::then(set_up, move |connected| {
        OptionFuture::from(connected.map(|(stream, upstream, log, listed)| {
            // `listed` stays on the tracker's list until the relay ends; it also delivers the
            // drain deadline, so `drain` is only held.
            relay(stream, upstream, log, Until::Listed(listed)).map(move |()| drop(drain))
        }))
    })
    .map(|_: Option<()>| ())
}

async fn set_up(
    pi: Arc<ProxyInputs>,
    (transports, outliers, tracker): (Arc<Transports>, Arc<Outliers>, ConnectionTracker),
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(TcpStream, Upstream, ConnectionLog, OutboundRegistration)> {
    let mut log = ConnectionLog::new(Direction::Outbound, peer);
    log.src_identity = Some(pi.local.identity(&pi.state));
    let orig = match socket::orig_dst(&stream, peer) {
        Ok(a) => a,
        Err(e) => {
            log.fail(&format_args!("original destination: {e}"));
            return None;
        }
    };
    log.dst = Some(orig);
    // No `tune`: the listener is tuned (`socket::listen_tuned`), accepted sockets inherit it.
    let upstream = match connect(&pi, &transports, &outliers, peer, orig, &mut log).await {
        Ok(u) => u,
        Err(e) => {
            log.fail(&e);
            return None;
        }
    };
    let (protocol, actual_dst) = match &upstream {
        Upstream::Plain(s) => (OutboundProtocol::Tcp, s.peer_addr().unwrap_or(orig)),
        Upstream::Hbone(_, via) => (OutboundProtocol::Hbone, *via),
        Upstream::DoubleHbone(_, via) => (OutboundProtocol::DoubleHbone, *via),
    };
    let listed = tracker.track_outbound(
        LiveOutbound {
            src: peer,
            original_dst: orig,
            actual_dst,
            protocol,
        },
        log.stats.clone(),
    );
    Some((stream, upstream, log, listed))
}

/// The far side of an outbound connection, connected and ready for bytes.
pub(super) enum Upstream {
    Plain(TcpStream),
    /// A tunnel to the proxy at the address. Boxed: a tunnel (h2 or h3) is several times the
    /// size of a socket.
    Hbone(Box<Tunnel>, SocketAddr),
    /// A tunnel inside a tunnel to the network gateway at the address.
    DoubleHbone(Box<Tunnel>, SocketAddr),
}

/// Why an outbound connection could not be set up.
#[derive(Debug)]
pub(super) enum OutboundError {
    Route(RouteError),
    Connect(socket::ConnectError),
    Hbone(TransportError),
    Gateway(GatewayError),
    /// The endpoint is known by host name only and the name gave no address.
    Dns {
        hostname: String,
        workload: String,
        source: LookupError,
    },
}

impl OutboundError {
    /// Whether the endpoint itself failed (it did not accept a connection, or its proxy could
    /// not reach the app), as opposed to a policy refusal or a local problem.
    fn is_endpoint_failure(&self) -> bool {
        match self {
            OutboundError::Connect(_) => true,
            OutboundError::Hbone(TransportError::H3(_)) => true,
            OutboundError::Hbone(TransportError::H2(e)) => match e {
                HboneError::Connect { .. }
                | HboneError::Io(_)
                | HboneError::Handshake(_)
                | HboneError::ConnectionClosed => true,
                HboneError::Status(s) => {
                    *s == StatusCode::SERVICE_UNAVAILABLE
                        || *s == StatusCode::BAD_GATEWAY
                        || *s == StatusCode::GATEWAY_TIMEOUT
                }
                _ => false,
            },
            OutboundError::Gateway(e) => e.is_endpoint_failure(),
            OutboundError::Route(_) | OutboundError::Dns { .. } => false,
        }
    }
}

impl OutboundError {
    /// The response flag a connection that failed this way is counted under.
    pub(super) fn response_flag(&self) -> ResponseFlag {
        match self {
            OutboundError::Hbone(TransportError::H2(e)) => hbone_flag(e),
            OutboundError::Hbone(TransportError::H3(e)) => match e {
                QuicError::Certificate { .. } => ResponseFlag::IdentityError,
                QuicError::Tls { .. } => ResponseFlag::TlsFailure,
                _ => ResponseFlag::Connect,
            },
            OutboundError::Gateway(e) => e.response_flag(),
            OutboundError::Route(_) | OutboundError::Connect(_) | OutboundError::Dns { .. } => {
                ResponseFlag::Connect
            }
        }
    }
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboundError::Route(e) => e.fmt(f),
            OutboundError::Connect(e) => e.fmt(f),
            OutboundError::Hbone(e) => e.fmt(f),
            OutboundError::Gateway(e) => e.fmt(f),
            OutboundError::Dns {
                hostname,
                workload,
                source,
            } => write!(
                f,
                "on-demand DNS lookup of {hostname} (endpoint {workload}) failed: {source}"
            ),
        }
    }
}

/// Routes `orig` (where the app at `peer` wants to go) and connects: plain TCP or an HBONE
/// tunnel from the pool. Fills in what the access log learns on the way.
///
/// A service endpoint whose connect fails is reported to `outliers`, and, since no byte of
/// the app's has been sent yet (the copy starts only after this returns), the connection is
/// retried on another endpoint, up to the configured number of attempts.
pub(super) async fn connect(
    pi: &ProxyInputs,
    transports: &Transports,
    outliers: &Outliers,
    peer: SocketAddr,
    orig: SocketAddr,
    log: &mut ConnectionLog,
) -> Result<Upstream, OutboundError> {
    let max_attempts = outliers.config().max_connect_attempts.max(1);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_err: Option<OutboundError> = None;
    // Endpoints known by name only, resolved for this connection (one lookup per name).
    let mut resolved: Vec<(Arc<Workload>, IpAddr)> = Vec::new();
    loop {
        let routed = route_avoiding(
            pi,
            orig,
            &|ep| tried.contains(&ep) || outliers.is_ejected(ep),
            &resolved,
        );
        let mut labels = match &routed {
            // The workload at the HBONE address: the endpoint itself, or the waypoint a
            // connection goes through (ztunnel's destination labels name the waypoint too).
            Ok(Routed {
                route: Route::Hbone {
                    hbone, expected, ..
                },
                service,
                ..
            }) => outbound_labels(pi, service.as_deref(), Some(*hbone), expected.first()),
            Ok(Routed {
                route: Route::Plain(target),
                service,
                ..
            }) => outbound_labels(pi, service.as_deref(), Some(*target), None),
            Ok(Routed {
                route: Route::Gateway { via, target },
                service,
                ..
            }) => outbound_labels(pi, service.as_deref(), *target, via.final_expected.first()),
            Err(_) => outbound_labels(pi, None, None, None),
        };
        if let Ok(Routed {
            endpoint: Some(ep), ..
        }) = &routed
            && let Some((wl, _)) = resolved.iter().find(|(_, ip)| *ip == ep.ip())
        {
            labels.set_named_destination(wl);
        }
        if let Err(RouteError::Unresolved(wl)) = &routed
            && resolved.iter().all(|(w, _)| w.hostname != wl.hostname)
        {
            let hostname = &wl.hostname;
            pi.metrics
                .on_demand_dns
                .get_or_create(&on_demand_labels(&labels.traffic, hostname))
                .inc();
            match pi.cfg.on_demand_dns.resolve(hostname, orig.ip()).await {
                Ok(ip) => {
                    debug!(%hostname, %ip, "resolved an endpoint known by host name only");
                    resolved.push((wl.clone(), ip));
                    continue;
                }
                Err(source) => {
                    warn!(%hostname, error = %source, "on-demand DNS lookup failed");
                    return Err(OutboundError::Dns {
                        hostname: hostname.clone(),
                        workload: format!("{}/{}", wl.namespace(), wl.name),
                        source,
                    });
                }
            }
        }
        // No route: refused before the connection is opened, with no metrics (ztunnel's
        // early deny).
        let routed = routed.map_err(OutboundError::Route)?;
        // Every endpoint tried already (the choice fell back to one of them): report the
        // last failure rather than hammer an endpoint twice for one connection.
        if let Some(e) = last_err.take()
            && routed.endpoint.is_none_or(|ep| tried.contains(&ep))
        {
            log.open(pi, labels);
            log.response_flags = Some(e.response_flag());
            return Err(e);
        }
        if !tried.is_empty() {
            pi.metrics.connect_retries.inc();
        }
        let endpoint = routed.endpoint;
        // A service-addressed tunnel names the service in `forwarded` `host=` (wire.md §2.1):
        // the peer takes its `destination_service` label from it.
        let service_host = match &routed.route {
            Route::Hbone { .. } | Route::Gateway { .. } => {
                routed.service.as_ref().map(|svc| svc.hostname.clone())
            }
            Route::Plain(_) => None,
        };
        let result = connect_route(pi, transports, peer, routed.route, service_host, log).await;
        let err = match (result, endpoint) {
            (Ok(up), ep) => {
                if let Some(ep) = ep {
                    outliers.success(ep);
                }
                // Past a network gateway the final server is not in our state: its `200`
                // says who it is (ztunnel does the same, for double HBONE only).
                let labels = match &up {
                    Upstream::DoubleHbone(tunnel, _) if pi.cfg.response_baggage => {
                        match tunnel.response_baggage() {
                            Some(b) => labels.with_response_baggage(b),
                            None => labels,
                        }
                    }
                    _ => labels,
                };
                log.open(pi, labels);
                return Ok(up);
            }
            (Err(e), Some(ep)) if e.is_endpoint_failure() => {
                if let Some(backoff) = outliers.failure(ep) {
                    pi.metrics.outlier_ejections.inc();
                    warn!(endpoint = %ep, ?backoff, error = %e, "endpoint ejected after repeated connect failures");
                }
                tried.push(ep);
                if tried.len() < max_attempts as usize {
                    debug!(endpoint = %ep, error = %e, "connect failed before any byte was sent; trying another endpoint");
                    last_err = Some(e);
                    continue;
                }
                e
            }
            (Err(e), _) => e,
        };
        log.open(pi, labels);
        log.response_flags = Some(err.response_flag());
        return Err(err);
    }
}

async fn connect_route(
    pi: &ProxyInputs,
    transports: &Transports,
    peer: SocketAddr,
    route: Route,
    service_host: Option<String>,
    log: &mut ConnectionLog,
) -> Result<Upstream, OutboundError> {
    match route {
        Route::Plain(dst) => {
            log.dst = Some(dst);
            log.hbone_addr = None;
            log.dst_identity = None;
            socket::connect(dst, None, &pi.cfg.socket)
                .await
                .map(Upstream::Plain)
                .map_err(OutboundError::Connect)
        }
        Route::Hbone {
            hbone,
            target,
            expected,
        } => {
            log.dst = Some(hbone);
            log.hbone_addr = Some(Authority::Addr(target));
            log.dst_identity = expected.first().cloned();
            // The identity the connection started with (the log's): one lookup per connection,
            // not one per connect attempt.
            let me = match &log.src_identity {
                Some(id) => id.clone(),
                None => pi.local.identity(&pi.state),
            };
            let key = PoolKey::new(me, peer.ip(), hbone, expected);
            let req = ConnectRequest {
                authority: Authority::Addr(target),
                headers: connect_headers(pi, peer, service_host),
            };
            let tunnel = transports
                .open(&key, &req)
                .await
                .map_err(OutboundError::Hbone)?;
            log.transport = Some(match tunnel {
                Tunnel::H2(_) => HboneTransportLabel::h2,
                Tunnel::H3(..) => HboneTransportLabel::h3,
            });
            Ok(Upstream::Hbone(Box::new(tunnel), hbone))
        }
        Route::Gateway { via, .. } => {
            log.dst = Some(via.gateway);
            log.hbone_addr = Some(via.authority.clone());
            log.dst_identity = via.final_expected.first().cloned();
            let headers = connect_headers(pi, peer, service_host);
            let inner = gateway::connect(pi, transports.h2_pool(), peer, &via, headers)
                .await
                .map_err(OutboundError::Gateway)?;
            // One stream on a pooled connection (the outer one); the inner connection is ours.
            transports.count_stream(HboneTransportLabel::h2);
            log.transport = Some(HboneTransportLabel::h2);
            Ok(Upstream::DoubleHbone(
                Box::new(Tunnel::H2(inner)),
                via.gateway,
            ))
        }
    }
}

/// The metadata headers of an outbound CONNECT from the app at `peer` (wire.md §2.1).
fn connect_headers(
    pi: &ProxyInputs,
    peer: SocketAddr,
    service_host: Option<String>,
) -> ConnectHeaders {
    ConnectHeaders {
        baggage: pi
            .state
            .workload_by_name(&pi.local.namespace, &pi.local.name)
            .map(|wl| baggage(&wl)),
        forwarded: Some(Forwarded {
            for_addr: peer,
            host: service_host,
        }),
        traceparent: Some(TraceParent::random()),
        forwarded_network: None,
    }
}

/// What ends a relay early: the tracker's word (a listed connection), or the drain's.
pub(super) enum Until {
    Listed(OutboundRegistration),
    Drain(DrainWatcher),
}

impl Until {
    async fn closed(&mut self) -> Close {
        match self {
            Until::Listed(listed) => listed.closed().await,
            // Boxed: the drain's wait is several times the size of the tracker's, and only
            // the rare unlisted relay needs it.
            Until::Drain(drain) => {
                Box::pin(drain.forced()).await;
                Close::DrainDeadline
            }
        }
    }
}

/// Copies both ways between the app and `upstream` until both sides finish or the drain
/// deadline passes, then writes the access log. The copy is set up (boxed) before the returned
/// future exists, which keeps only it, the log and the wait for `until`.
pub(super) fn relay(
    stream: TcpStream,
    upstream: Upstream,
    mut log: ConnectionLog,
    mut until: Until,
) -> impl Future<Output = ()> + Send + 'static {
    let stats = log.stats.clone();
    let (copy, cut): (CopyFuture, Option<Cut>) = match upstream {
        Upstream::Plain(upstream) => (
            Box::pin(copy_bidirectional(
                tcp_halves(stream),
                tcp_halves(upstream),
                stats,
            )),
            None,
        ),
        Upstream::Hbone(tunnel, _) | Upstream::DoubleHbone(tunnel, _) => match *tunnel {
            Tunnel::H2(h2) => {
                let cut = h2.cut_probe().map(Cut::H2);
                (
                    Box::pin(copy_bidirectional(tcp_halves(stream), h2.split(), stats)),
                    cut,
                )
            }
            Tunnel::H3(recv, send) => {
                let cut = recv.cut_probe().map(Cut::H3);
                (
                    Box::pin(copy_bidirectional(tcp_halves(stream), (recv, send), stats)),
                    cut,
                )
            }
        },
    };
    async move {
        let copied = copy_until(copy, until.closed()).await;
        // A connection cut because a CRL revoked the peer fails its streams; say so.
        let cut = cut.as_ref().and_then(Cut::reason);
        match (copied, cut) {
            (Ok(Err(_)), Some(reason)) => log.fail_revoked(&reason),
            (copied, _) => match copied {
                Ok(Ok(())) => log.complete(),
                Ok(Err(e)) => {
                    log.response_flags = Some(ResponseFlag::Connect);
                    log.fail(&e)
                }
                Err(close) => log.fail(&close),
            },
        }
    }
}

/// A copy of any pair of halves, boxed: one small allocation per connection buys one code path
/// for every kind of upstream.
type CopyFuture = std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// The labels of `istio_on_demand_dns_total`: the connection's source, and the name looked up.
fn on_demand_labels(l: &TrafficLabels, hostname: &str) -> OnDemandDnsLabels {
    OnDemandDnsLabels {
        source_workload: l.source_workload.clone(),
        source_canonical_service: l.source_canonical_service.clone(),
        source_canonical_revision: l.source_canonical_revision.clone(),
        source_workload_namespace: l.source_workload_namespace.clone(),
        source_principal: l.source_principal.clone(),
        source_app: l.source_app.clone(),
        source_version: l.source_version.clone(),
        source_cluster: l.source_cluster.clone(),
        hostname: hostname.to_string(),
    }
}
