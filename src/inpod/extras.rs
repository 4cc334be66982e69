//! The optional per-pod listeners beside a pod's proxy: the DNS proxy (15053, UDP and TCP)
//! and SOCKS5 (15080). Used for in-pod proxies and for the dedicated-mode proxy alike.
//!
//! Invariants: the sockets are created through the proxy's socket factory, so they live where
//! the proxy's listeners live (the pod's namespace in in-pod mode) and carry its mark; the
//! upstream resolvers are reached from ambit's own namespace (the node's resolvers). The
//! extras serve until the same drain as the proxy.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tracing::warn;

use crate::dns::{DnsInputs, DnsMetrics, DnsServer, Forwarder, LookupScope, Resolver};
use crate::lifecycle::DrainWatcher;
use crate::proxy::{self, HostResolver, Proxy, ProxyConfig, ProxyError, ResolveFuture, Socks5};
use crate::state::StateView;

/// Which extras every pod gets.
#[derive(Clone, Debug, Default)]
pub struct PodExtras {
    pub dns: Option<DnsSettings>,
    /// The SOCKS5 listener address, when enabled.
    pub socks5: Option<SocketAddr>,
}

/// The DNS proxy's settings, shared by every pod.
#[derive(Clone, Debug)]
pub struct DnsSettings {
    /// Where to listen; `127.0.0.1:p` also listens on `[::1]:p` when `ipv6` is on.
    pub addr: SocketAddr,
    pub cluster_domain: String,
    /// `PREFERED_SERVICE_NAMESPACE`.
    pub preferred_namespace: Option<String>,
    pub ipv6: bool,
    pub forwarder: Arc<Forwarder>,
    pub metrics: DnsMetrics,
}

/// Bound extras of one pod.
#[derive(Default)]
pub struct BoundExtras {
    pub dns: Option<DnsServer>,
    pub socks5: Option<Socks5>,
}

impl PodExtras {
    /// Binds the enabled extras next to `proxy` (call on the runtime that will serve them).
    /// `namespace`/`name` are the pod's.
    pub fn bind(
        &self,
        proxy: &Proxy,
        cfg: &ProxyConfig,
        state: &StateView,
        namespace: &str,
        name: &str,
    ) -> Result<BoundExtras, ProxyError> {
        let resolver = self.dns.as_ref().map(|d| {
            let scope = LookupScope {
                namespace: namespace.to_string(),
                network: cfg.network.clone(),
                cluster_domain: d.cluster_domain.clone(),
                preferred_namespace: d.preferred_namespace.clone(),
            };
            Resolver::new(state.clone(), scope, d.ipv6, d.forwarder.clone())
        });
        let dns = match (&self.dns, &resolver) {
            (Some(settings), Some(resolver)) => {
                let (udp, tcp) = bind_dns(settings, cfg)?;
                let inputs = DnsInputs {
                    resolver: resolver.clone(),
                    pod_name: name.to_string(),
                    metrics: settings.metrics.clone(),
                };
                Some(DnsServer::new(inputs, udp, tcp))
            }
            _ => None,
        };
        let socks5 = match self.socks5 {
            Some(addr) => {
                let host_resolver: Arc<dyn HostResolver> = match resolver {
                    Some(r) => Arc::new(move |host: String| -> ResolveFuture {
                        let r = r.clone();
                        Box::pin(async move { r.lookup_ip(&host).await.map_err(|e| e.to_string()) })
                    }),
                    None => Arc::new(proxy::SystemResolver),
                };
                Some(proxy.socks5(addr, host_resolver)?)
            }
            None => None,
        };
        Ok(BoundExtras { dns, socks5 })
    }
}

impl BoundExtras {
    /// Serves until `drain` starts.
    pub async fn run(self, drain: DrainWatcher) {
        let dns = async {
            if let Some(d) = self.dns {
                d.run(drain.clone()).await;
            }
        };
        let socks5 = async {
            if let Some(s) = self.socks5 {
                s.run(drain.clone()).await;
            }
        };
        tokio::join!(dns, socks5);
    }
}

/// The DNS sockets: the configured address, plus `[::1]` beside a `127.0.0.1` address when
/// IPv6 is on (a pod without IPv6 loopback only loses that half, with a warning).
fn bind_dns(
    settings: &DnsSettings,
    cfg: &ProxyConfig,
) -> Result<(Vec<UdpSocket>, Vec<TcpListener>), ProxyError> {
    let mut addrs = vec![settings.addr];
    if settings.ipv6 && settings.addr.ip() == IpAddr::from([127, 0, 0, 1]) {
        addrs.push(SocketAddr::new(
            Ipv6Addr::LOCALHOST.into(),
            settings.addr.port(),
        ));
    }
    let (mut udp, mut tcp) = (Vec::new(), Vec::new());
    for (i, addr) in addrs.into_iter().enumerate() {
        let bound = proxy::socket::bind_udp(addr, &cfg.socket, cfg.reuse_port)
            .map_err(|source| ProxyError::Bind {
                what: "dns udp",
                addr,
                source,
            })
            .and_then(|u| {
                proxy::socket::listen(addr, &cfg.socket, false, cfg.reuse_port)
                    .map(|t| (u, t))
                    .map_err(|source| ProxyError::Bind {
                        what: "dns tcp",
                        addr,
                        source,
                    })
            });
        match bound {
            Ok((u, t)) => {
                udp.push(u);
                tcp.push(t);
            }
            // The configured address must work; the extra IPv6 loopback is best effort.
            Err(e) if i > 0 => warn!(error = %e, "dns proxy: no IPv6 loopback listener"),
            Err(e) => return Err(e),
        }
    }
    Ok((udp, tcp))
}
