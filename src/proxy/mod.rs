//! Listeners, routing and per-connection flows: outbound capture (15001), inbound HBONE (15008,
//! on h2 and QUIC), inbound plaintext (15006), SOCKS5 (15080), and the hops they route through
//! (waypoints, the east-west gateway's double HBONE).
//!
//! A [`Proxy`] serves one workload: the pod whose traffic it captures (in-pod mode) or the
//! process's own workload (dedicated mode). It is handed everything it reads: its
//! configuration slice, the state view, a certificate provider and counters; it imports no
//! control-plane code.
//!
//! What the flows share (inputs, access log, authorization, the connection tracker, copy,
//! sockets, the transport abstraction...) is [`crate::conn`], the level below, which never
//! imports a flow; this module decides where a connection goes and runs it. The vocabulary the
//! proxy's public API speaks is re-exported here, so callers name one module.

pub mod explain;
mod gateway;
mod inbound;
mod outbound;
mod passthrough;
mod route;
pub mod socks5;
mod waypoint;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::info;

use crate::conn::transport::{self, h2::TlsConnector};
use crate::conn::{connections, revocation};
use crate::hbone::Pool;
use crate::lifecycle::{AcceptBackoff, DrainWatcher};
use crate::metrics::{ProxyMetrics, Reporter};
use crate::quic::QuicPool;

// The vocabulary the proxy's API is spoken in, named from here as before the split.
pub use crate::conn::{
    ConnectionInfo, ConnectionTracker, HandshakeLimits, HboneTransport, Keepalive, LiveInbound,
    LiveOutbound, LocalWorkload, Lookup, LookupError, LookupFuture, OnDemandDns, OutboundProtocol,
    OutlierConfig, Outliers, PendingHandshakes, ProxyConfig, ProxyInputs, ResolverConfigError,
    SocketOptions, SystemDns, TransportConfig, TransportError, UnknownTransport,
};
pub use crate::conn::{copy, handshake, outlier, proxyproto, socket};
pub use socks5::{HostResolver, ResolveFuture, Socks5, SystemResolver};

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bind {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("QUIC endpoint on {addr}: {source}")]
    Quic {
        addr: SocketAddr,
        #[source]
        source: crate::quic::QuicError,
    },
}

/// Bound listeners, ready to serve.
pub struct Proxy {
    inputs: Arc<ProxyInputs>,
    /// Outbound transports: the h2 pool and, when QUIC is on, the QUIC pool.
    transports: Arc<transport::Transports>,
    /// Service endpoints whose connects keep failing (shared by outbound and SOCKS5).
    outliers: Arc<Outliers>,
    /// The UDP 15008 endpoint, when QUIC is on.
    quic_server: Option<quinn::Endpoint>,
    /// Live inbound connections, re-authorized on every state change (and the outbound ones,
    /// listed for `/config_dump`).
    tracker: ConnectionTracker,
    /// Inbound HBONE connections whose TLS handshake is under way, per source.
    pending: PendingHandshakes,
    outbound: TcpListener,
    inbound: TcpListener,
    plaintext: TcpListener,
}

/// Where a proxy's listeners ended up (ports may have been 0 in tests).
#[derive(Clone, Copy, Debug)]
pub struct ProxyAddrs {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub inbound_plaintext: SocketAddr,
}

// === impl Proxy ===

impl Proxy {
    /// Binds the three listeners in the current network namespace.
    pub fn bind(inputs: ProxyInputs) -> Result<Proxy, ProxyError> {
        let cfg = inputs.cfg.clone();
        // Tuned listeners: every accepted connection inherits the per-connection options.
        let bind = |what, addr, transparent| {
            socket::listen_tuned(addr, &cfg.socket, transparent, cfg.reuse_port)
                .map_err(|source| ProxyError::Bind { what, addr, source })
        };
        // Transparent (TPROXY capture) when the proxy keeps original sources, as ztunnel's
        // listeners are: both need the same capability.
        let tp = cfg.orig_src;
        let outbound = bind("outbound", cfg.outbound_addr, tp)?;
        let inbound = bind("inbound HBONE", cfg.inbound_addr, tp)?;
        let plaintext = bind("inbound plaintext", cfg.inbound_plaintext_addr, tp)?;
        let (quic_server, quic_client) = if cfg.transport.mode.quic_enabled() {
            let (s, c) = bind_quic(&cfg)?;
            (Some(s), Some(c))
        } else {
            (None, None)
        };
        let inputs = Arc::new(inputs);
        let connector = TlsConnector::new(inputs.clone());
        let pool = Pool::new(cfg.h2.clone(), Arc::new(connector));
        let quic_pool = quic_client.map(|endpoint| {
            QuicPool::new(cfg.transport.quic.clone(), endpoint, inputs.certs.clone())
                .with_revoked_hook(revocation::quic_hook(inputs.metrics.clone()))
        });
        let transports =
            transport::Transports::new(pool, quic_pool, &cfg.transport, inputs.metrics.clone());
        Ok(Proxy {
            inputs,
            transports: Arc::new(transports),
            outliers: Arc::new(Outliers::new(cfg.outlier.clone())),
            quic_server,
            tracker: ConnectionTracker::default(),
            pending: PendingHandshakes::new(cfg.handshake.max_pending_per_source),
            outbound,
            inbound,
            plaintext,
        })
    }

    pub fn addrs(&self) -> ProxyAddrs {
        let addr = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
        ProxyAddrs {
            outbound: addr(&self.outbound, self.inputs.cfg.outbound_addr),
            inbound: addr(&self.inbound, self.inputs.cfg.inbound_addr),
            inbound_plaintext: addr(&self.plaintext, self.inputs.cfg.inbound_plaintext_addr),
        }
    }

    /// Binds a SOCKS5 listener on `addr` (with this proxy's socket options, so inside the
    /// pod's namespace in in-pod mode) that feeds this proxy's outbound path.
    pub fn socks5(
        &self,
        addr: SocketAddr,
        resolver: Arc<dyn HostResolver>,
    ) -> Result<Socks5, ProxyError> {
        let cfg = &self.inputs.cfg;
        let listener =
            socket::listen(addr, &cfg.socket, cfg.orig_src, cfg.reuse_port).map_err(|source| {
                ProxyError::Bind {
                    what: "socks5",
                    addr,
                    source,
                }
            })?;
        Ok(Socks5 {
            inputs: self.inputs.clone(),
            transports: self.transports.clone(),
            outliers: self.outliers.clone(),
            resolver,
            listener,
        })
    }

    /// The outbound h2 connection pool (tests read its counters).
    pub fn pool(&self) -> &Pool {
        self.transports.h2_pool()
    }

    /// The UDP address of the HBONE-over-QUIC endpoint, when QUIC is on.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic_server.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// The outlier table (tests read it).
    pub fn outliers(&self) -> &Outliers {
        &self.outliers
    }

    /// The live connections (tests read their count; `/config_dump` lists them).
    pub fn tracker(&self) -> &ConnectionTracker {
        &self.tracker
    }

    /// Inbound HBONE handshakes under way, per source (tests read it).
    pub fn pending_handshakes(&self) -> &PendingHandshakes {
        &self.pending
    }

    /// Serves until `drain` starts; connections then finish until the drain forces them closed.
    pub async fn run(self, drain: DrainWatcher) {
        let addrs = self.addrs();
        info!(
            workload = %self.inputs.local.identity(&self.inputs.state),
            outbound = %addrs.outbound,
            inbound = %addrs.inbound,
            inbound_plaintext = %addrs.inbound_plaintext,
            "proxy listening"
        );
        let out = {
            let (pi, tr) = (self.inputs.clone(), self.transports.clone());
            let (outliers, tracker) = (self.outliers.clone(), self.tracker.clone());
            accept_loop(
                ("outbound", Reporter::Source),
                (self.outbound, self.inputs.metrics.clone()),
                drain.clone(),
                move |s, peer, d| {
                    let out = (tr.clone(), outliers.clone(), tracker.clone());
                    outbound::handle(pi.clone(), out, s, peer, d)
                },
            )
        };
        let quic_in = {
            let (pi, t, d) = (self.inputs.clone(), self.tracker.clone(), drain.clone());
            let server = self.quic_server;
            async move {
                if let Some(endpoint) = server {
                    info!(addr = ?endpoint.local_addr().ok(), "HBONE over QUIC listening");
                    inbound::quic::run(pi, t, endpoint, d).await;
                }
            }
        };
        let inb = {
            let (pi, t, p) = (self.inputs.clone(), self.tracker.clone(), self.pending);
            let metrics = pi.metrics.clone();
            accept_loop(
                ("inbound", Reporter::Destination),
                (self.inbound, metrics),
                drain.clone(),
                move |s, peer, d| inbound::handle(pi.clone(), (t.clone(), p.clone()), s, peer, d),
            )
        };
        let plain = {
            let (pi, t) = (self.inputs.clone(), self.tracker.clone());
            let metrics = pi.metrics.clone();
            accept_loop(
                ("inbound plaintext", Reporter::Destination),
                (self.plaintext, metrics),
                drain.clone(),
                move |s, peer, d| passthrough::handle(pi.clone(), t.clone(), s, peer, d),
            )
        };
        // Spawned, not joined: it outlives the listeners, until the drain is forced.
        tokio::spawn(connections::close_at_drain_deadline(
            self.tracker.clone(),
            drain.deadline(),
        ));
        let policies = connections::watch_policies(
            self.tracker.clone(),
            self.inputs.state.clone(),
            self.inputs.cfg.network.clone(),
            self.inputs.local.clone(),
            drain,
        );
        tokio::join!(out, inb, plain, quic_in, policies);
    }
}

/// Binds the QUIC server (UDP on the inbound HBONE address) and the client endpoint (an
/// ephemeral UDP port), both through the socket factory, with the proxy's mark.
fn bind_quic(cfg: &ProxyConfig) -> Result<(quinn::Endpoint, quinn::Endpoint), ProxyError> {
    let qcfg = &cfg.transport.quic;
    let bind = |what, addr: SocketAddr| {
        let socket = socket::udp(addr, &cfg.socket)
            .and_then(|s| crate::quic::bind_udp(s, addr, qcfg))
            .map_err(|source| ProxyError::Bind { what, addr, source })?;
        Ok::<_, ProxyError>(socket)
    };
    let server_addr = cfg.inbound_addr;
    let server = bind("inbound QUIC", server_addr)?;
    let server =
        crate::quic::server_endpoint(server, None, qcfg).map_err(|source| ProxyError::Quic {
            addr: server_addr,
            source,
        })?;
    let client_addr = SocketAddr::new(cfg.inbound_addr.ip(), 0);
    let client = bind("outbound QUIC", client_addr)?;
    let client = crate::quic::client_endpoint(client).map_err(|source| ProxyError::Quic {
        addr: client_addr,
        source,
    })?;
    Ok((server, client))
}

/// Accepts until a drain starts, spawning one task per connection; each task holds a drain
/// watcher so the drain waits for it, and counts its socket in `istio_tcp_sockets_open` under
/// `reporter` while it runs.
async fn accept_loop<F, Fut>(
    (what, reporter): (&'static str, Reporter),
    (listener, metrics): (TcpListener, ProxyMetrics),
    drain: DrainWatcher,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, DrainWatcher) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut backoff = AcceptBackoff::default();
    let sockets = metrics.traffic.sockets_open.clone();
    let failures = metrics.accept_failures(what);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.draining() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded();
                let open = sockets.open(reporter);
                let task = handle(stream, socket::canonical(peer), drain.clone());
                // `map`, not `async move { task.await; drop(open) }`: an async block keeps the
                // captured future and the one it awaits in two slots, doubling every
                // connection's task (measured: 10 KiB instead of 5 per outbound connection).
                tokio::spawn(futures_util::FutureExt::map(task, move |()| drop(open)));
            }
            // Out of file descriptors and the like: keep serving what we have, pause before the
            // next try and say so once per interval (see `lifecycle::accept_backoff`).
            Err(e) => {
                failures.inc();
                let pause = backoff.on_error(what, &e);
                tokio::select! {
                    biased;
                    _ = drain.draining() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    info!(listener = what, "stopped accepting: draining");
}

#[cfg(test)]
mod tests;
