//! Double HBONE: reaching a service endpoint on another network through that network's
//! east-west gateway (wire.md §2.1 "Double HBONE").
//!
//! Owns the route to a remote-network endpoint ([`via_gateway`]) and the two nested tunnels
//! ([`connect`]):
//! - outer: a pooled HBONE CONNECT to the gateway (`hbone_mtls_port`, verifying the gateway's
//!   own identity) with authority `<service hostname>:<service port>`;
//! - inner, inside that stream: a fresh TLS 1.3 handshake with the source workload's
//!   certificate, verifying the final server against the service's `subject_alt_names` only,
//!   then an HTTP/2 CONNECT with the same authority and `x-forwarded-network: <our network>`.
//!
//! Invariants: both layers always verify a non-empty set of identities (a service without
//! `subject_alt_names` is refused before anything is dialled, a gateway we cannot identify is an
//! error); inner connections are never pooled (one per downstream connection, closed with it);
//! the outer tunnel is h2 (what Istio's gateways speak), whatever transport the node prefers.
//!
//! Closing: when the inner connection ends, h2 sends GOAWAY and TLS its `close_notify`, then the
//! outer stream is finished. Dropping the outer stream right away would reset it (`RST_STREAM`
//! while the peer's side is open), and a gateway may then drop the inner bytes it had not
//! forwarded yet, so the final server sees the connection cut short. [`OuterStream`] therefore
//! waits, bounded by [`OUTER_DRAIN`], for the far end to finish its side too.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::core::{Authority, Identity};
use crate::hbone::{self, ConnectHeaders, ConnectRequest, H2Stream, HboneError, Pool, PoolKey};
use crate::metrics::ResponseFlag;
use crate::state::{
    ClientLocality, GatewayAddress, GatewayDestination, Service, StateView, Workload, service_key,
};
use crate::tls::{self, TlsError};

use crate::conn::{ProxyInputs, same_family_ip};

/// How long a closed inner connection waits for the far end to finish the outer stream before
/// the stream is dropped (and so reset).
const OUTER_DRAIN: Duration = Duration::from_secs(5);

/// How to reach a remote-network endpoint: the gateway hop and what the final server must be.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct GatewayRoute {
    /// The gateway's HBONE address.
    pub gateway: SocketAddr,
    /// Identities the gateway may present (its workload's, plus its service's SANs).
    pub gateway_expected: Vec<Identity>,
    /// `<service hostname>:<service port>`, the authority of both CONNECTs.
    pub authority: Authority,
    /// Identities the final server may present: the service's `subject_alt_names`.
    pub final_expected: Vec<Identity>,
    /// The network the endpoint is on (for logs and errors).
    pub network: String,
}

/// Why a remote-network endpoint cannot be reached.
#[derive(Debug, thiserror::Error)]
pub(super) enum GatewayError {
    #[error(
        "endpoint {workload} of service {service} is on network {network:?}, which publishes no \
         network gateway (workload field network_gateway) to reach it through"
    )]
    NoGateway {
        service: String,
        workload: String,
        network: String,
    },
    #[error(
        "service {service} has no subject_alt_names: the inner TLS of double HBONE to its \
         endpoint on network {network:?} could not verify the destination, refusing"
    )]
    NoSubjectAltNames { service: String, network: String },
    #[error("network gateway {gateway} of network {network:?} is not a known workload")]
    UnknownGatewayAddress { gateway: String, network: String },
    #[error("network gateway service {gateway} of network {network:?} is unknown")]
    UnknownGatewayService { gateway: String, network: String },
    #[error("network gateway service {gateway} of network {network:?} has no healthy instance")]
    NoGatewayInstance { gateway: String, network: String },
    #[error("outer tunnel to network gateway {gateway} for {authority}: {source}")]
    Outer {
        gateway: SocketAddr,
        authority: Authority,
        #[source]
        source: Box<HboneError>,
    },
    #[error("certificate for {identity}: {source}")]
    Certificate {
        identity: Identity,
        #[source]
        source: Box<TlsError>,
    },
    #[error("inner TLS to {authority} through gateway {gateway}: {source}")]
    InnerTls {
        gateway: SocketAddr,
        authority: Authority,
        #[source]
        source: Box<TlsError>,
    },
    #[error("inner CONNECT to {authority} through gateway {gateway}: {source}")]
    Inner {
        gateway: SocketAddr,
        authority: Authority,
        #[source]
        source: Box<HboneError>,
    },
}

// === impl GatewayError ===

impl GatewayError {
    /// The response flag a connection that failed this way is counted under.
    pub(super) fn response_flag(&self) -> ResponseFlag {
        match self {
            GatewayError::Outer { source, .. } | GatewayError::Inner { source, .. } => {
                crate::conn::accesslog::hbone_flag(source)
            }
            GatewayError::Certificate { .. } => ResponseFlag::IdentityError,
            GatewayError::InnerTls { .. } => ResponseFlag::TlsFailure,
            _ => ResponseFlag::Connect,
        }
    }

    /// Whether the endpoint behind the gateway failed (its proxy refused or could not reach the
    /// app), as opposed to the gateway, a policy or a local problem: what outlier ejection and
    /// the connect retry act on.
    pub(super) fn is_endpoint_failure(&self) -> bool {
        match self {
            GatewayError::Inner { source, .. } => match &**source {
                HboneError::Status(s) => {
                    *s == StatusCode::SERVICE_UNAVAILABLE
                        || *s == StatusCode::BAD_GATEWAY
                        || *s == StatusCode::GATEWAY_TIMEOUT
                }
                HboneError::Io(_) | HboneError::Handshake(_) | HboneError::ConnectionClosed => true,
                _ => false,
            },
            // The gateway could not reach the endpoint's proxy: it answers the outer CONNECT
            // with a 503, or cuts the stream during the inner handshake.
            GatewayError::Outer { source, .. } => {
                matches!(&**source, HboneError::Status(s) if *s == StatusCode::SERVICE_UNAVAILABLE)
            }
            GatewayError::InnerTls { source, .. } => matches!(&**source, TlsError::Io(_)),
            _ => false,
        }
    }
}

/// The route to `wl`, an endpoint of `svc` on another network than ours (`network`), for a
/// connection to service port `svc_port`: through the gateway `wl` names, with the service's
/// `hostname:svc_port` as authority. `like` picks the gateway address family.
pub(super) fn via_gateway(
    state: &StateView,
    network: &str,
    svc: &Service,
    wl: &Workload,
    svc_port: u16,
    like: IpAddr,
) -> Result<GatewayRoute, GatewayError> {
    let final_expected: Vec<Identity> = svc
        .subject_alt_names
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    if final_expected.is_empty() {
        return Err(GatewayError::NoSubjectAltNames {
            service: svc.key(),
            network: wl.network.clone(),
        });
    }
    through(state, network, svc, wl, final_expected, svc_port, like)
}

/// The route to `waypoint`, an instance of the waypoint of `svc` on another network, for a
/// connection to service port `svc_port`. As ztunnel does it: through the gateway the instance
/// names, with the *service's* `hostname:svc_port` as authority (the gateway hands it to the
/// service's waypoint on its network); the final server is verified against the waypoint
/// service's `subject_alt_names` and the instance's own identity.
pub(super) fn via_gateway_to_waypoint(
    state: &StateView,
    network: &str,
    svc: &Service,
    hop: &super::waypoint::Hop,
    svc_port: u16,
    like: IpAddr,
) -> Result<GatewayRoute, GatewayError> {
    let mut final_expected = vec![hop.instance.identity()];
    final_expected.extend(hop.service_sans.iter().cloned());
    through(
        state,
        network,
        svc,
        &hop.instance,
        final_expected,
        svc_port,
        like,
    )
}

fn through(
    state: &StateView,
    network: &str,
    svc: &Service,
    wl: &Workload,
    final_expected: Vec<Identity>,
    svc_port: u16,
    like: IpAddr,
) -> Result<GatewayRoute, GatewayError> {
    let gw = wl
        .network_gateway
        .as_ref()
        .ok_or_else(|| GatewayError::NoGateway {
            service: svc.key(),
            workload: format!("{}/{}", wl.namespace(), wl.name),
            network: wl.network.clone(),
        })?;
    let (gateway, gateway_expected) = resolve(state, network, gw, &wl.network, like)?;
    Ok(GatewayRoute {
        gateway,
        gateway_expected,
        authority: Authority::Host(svc.hostname.clone(), svc_port),
        final_expected,
        network: wl.network.clone(),
    })
}

/// Resolves a network gateway to one HBONE address and the identities it must present.
fn resolve(
    state: &StateView,
    network: &str,
    gw: &GatewayAddress,
    remote: &str,
    like: IpAddr,
) -> Result<(SocketAddr, Vec<Identity>), GatewayError> {
    match &gw.destination {
        GatewayDestination::Address(a) => {
            // The gateway must be known (as a workload on its network) to be verified.
            let wl = state
                .workload_by_addr(&a.network, a.address)
                .ok_or_else(|| GatewayError::UnknownGatewayAddress {
                    gateway: a.to_string(),
                    network: remote.to_string(),
                })?;
            Ok((
                SocketAddr::new(a.address, gw.hbone_mtls_port),
                vec![wl.identity()],
            ))
        }
        GatewayDestination::Hostname {
            namespace,
            hostname,
        } => {
            let key = service_key(namespace, hostname);
            let svc = state.service_by_host(namespace, hostname).ok_or_else(|| {
                GatewayError::UnknownGatewayService {
                    gateway: key.clone(),
                    network: remote.to_string(),
                }
            })?;
            let candidates = state
                .service_workloads(&svc)
                .into_iter()
                .filter_map(|w| same_family_ip(&w, like).map(|_| (w, gw.hbone_mtls_port)))
                .collect();
            let (inst, port) = crate::state::select_endpoint(
                &svc,
                candidates,
                &ClientLocality::on_network(network),
                |_, _| false,
                &mut rand::rng(),
            )
            .ok_or_else(|| GatewayError::NoGatewayInstance {
                gateway: key,
                network: remote.to_string(),
            })?;
            let ip = same_family_ip(&inst, like).unwrap_or(like);
            let mut expected = vec![inst.identity()];
            expected.extend(
                svc.subject_alt_names
                    .iter()
                    .filter_map(|s| s.parse::<Identity>().ok()),
            );
            Ok((SocketAddr::new(ip, port), expected))
        }
    }
}

/// Opens both tunnels of `via` for the app at `peer` and returns the inner stream, a plain byte
/// pipe to the final destination's app. `headers` are sent on both CONNECTs; the inner one
/// adds `x-forwarded-network`.
pub(super) async fn connect(
    pi: &ProxyInputs,
    pool: &Pool,
    peer: SocketAddr,
    via: &GatewayRoute,
    headers: ConnectHeaders,
) -> Result<H2Stream, GatewayError> {
    let src = pi.local.identity(&pi.state);
    let key = PoolKey::new(
        src.clone(),
        peer.ip(),
        via.gateway,
        via.gateway_expected.clone(),
    );
    let mut req = ConnectRequest {
        authority: via.authority.clone(),
        headers: ConnectHeaders {
            forwarded_network: None,
            ..headers
        },
    };
    let outer = pool
        .send(&key, &req)
        .await
        .map_err(|source| GatewayError::Outer {
            gateway: via.gateway,
            authority: via.authority.clone(),
            source: Box::new(source),
        })?;
    let cert = pi
        .certs
        .fetch(&src)
        .await
        .map_err(|source| GatewayError::Certificate {
            identity: src,
            source: Box::new(source),
        })?;
    let inner_tls = |source| GatewayError::InnerTls {
        gateway: via.gateway,
        authority: via.authority.clone(),
        source: Box::new(source),
    };
    let config = cert.client_config(&via.final_expected).map_err(inner_tls)?;
    let outer = OuterStream {
        inner: outer,
        drain: None,
    };
    let tls = tls::connect(config, outer).await.map_err(|e| {
        if e.is_revoked() {
            pi.metrics.crl_rejected(crate::metrics::Reporter::Source);
        }
        inner_tls(e)
    })?;
    req.headers.forwarded_network = Some(pi.cfg.network.clone());
    hbone::connect_once(tls, &pi.cfg.h2, &req)
        .await
        .map_err(|source| GatewayError::Inner {
            gateway: via.gateway,
            authority: via.authority.clone(),
            source: Box::new(source),
        })
}

/// The outer tunnel under the inner TLS: a plain [`H2Stream`] whose shutdown, after finishing
/// our side, reads (and discards) until the far end finishes its side or [`OUTER_DRAIN`]
/// passes, so the stream ends cleanly instead of being reset (see the module doc).
struct OuterStream {
    inner: H2Stream,
    /// Set on the first shutdown poll.
    drain: Option<Pin<Box<Sleep>>>,
}

impl AsyncRead for OuterStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for OuterStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
        let drain = this
            .drain
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(OUTER_DRAIN)));
        if drain.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        let mut scratch = [0u8; 1024];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                // End of stream (or the peer reset it): nothing left to wait for.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
