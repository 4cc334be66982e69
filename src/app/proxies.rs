//! The proxies: their configuration slice from the node's, and either the dedicated proxy bound
//! at start or the workload manager that binds one per pod (shared mode).

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tokio::runtime::Runtime;
use tracing::{info, warn};

use crate::admin::DumpSources;
use crate::config::{Config, ProxyMode};
use crate::identity::SecretManager;
use crate::inpod::{
    BoundExtras, DnsSettings, HostNetns, InpodConfig, PodExtras, WorkloadManager,
    WorkloadManagerInputs,
};
use crate::lifecycle::Readiness;
use crate::metrics::Metrics;
use crate::proxy::{self, LocalWorkload, Proxy, ProxyConfig, ProxyInputs};
use crate::state::StateView;
use crate::tls::CertProvider;

use super::HBONE_PORT;

/// What starting the proxies needs from the rest of the start-up.
pub(super) struct Inputs<'a> {
    pub config: &'a Config,
    /// The dedicated workload (dedicated mode).
    pub local: Option<LocalWorkload>,
    /// The host network namespace (shared mode).
    pub host_netns: Option<Arc<HostNetns>>,
    pub dns_metrics: crate::dns::DnsMetrics,
    pub view: StateView,
    pub certs: Arc<dyn CertProvider>,
    pub secrets: Arc<SecretManager>,
    pub metrics: &'a Metrics,
    pub readiness: &'a Readiness,
    pub data: &'a Runtime,
    pub dump_sources: &'a mut DumpSources,
}

/// The dedicated workload, before its certificate is fetched: the workload, the state that will
/// describe it, and whether a control plane does.
pub(super) type PendingIdentity = (LocalWorkload, StateView, bool);

/// The proxies, started.
pub(super) struct Started {
    /// Dedicated: the proxy and its DNS/SOCKS5 listeners, bound.
    pub proxy: Option<(Proxy, BoundExtras)>,
    /// Dedicated: the identity whose certificate gates readiness.
    pub identity: Option<PendingIdentity>,
    /// Shared: the workload manager, to run on the control runtime.
    pub manager: Option<WorkloadManager>,
}

/// Dedicated: binds the proxy now, in our own namespace. Shared: builds the workload manager,
/// which binds one per pod.
pub(super) fn start(i: Inputs<'_>) -> anyhow::Result<Started> {
    let config = i.config;
    let proxy_cfg = proxy_config(config);
    let extras = pod_extras(config, i.dns_metrics);
    match (i.local, i.host_netns) {
        (Some(local), _) => {
            let identity = (local.clone(), i.view.clone(), config.xds_address.is_some());
            let (ns, name) = (local.namespace.clone(), local.name.clone());
            let proxy_cfg = Arc::new(proxy_cfg);
            let _enter = i.data.enter();
            let proxy = Proxy::bind(ProxyInputs {
                cfg: proxy_cfg.clone(),
                local,
                state: i.view.clone(),
                certs: i.certs,
                metrics: i.metrics.proxy.clone(),
            })?;
            if let Some(d) = i.dump_sources.debug.as_mut() {
                d.connections = Some(proxy.tracker().clone());
                d.local = Some(format!("{ns}/{name}"));
            }
            let bound = extras.bind(&proxy, &proxy_cfg, &i.view, &ns, &name)?;
            Ok(Started {
                proxy: Some((proxy, bound)),
                identity: Some(identity),
                manager: None,
            })
        }
        (None, Some(host)) => {
            let mut inpod = InpodConfig::new(
                config.inpod_uds.clone(),
                config.trust_domain.clone(),
                proxy_cfg,
            );
            inpod.drain_deadline = config.connection_termination_deadline;
            inpod.extras = extras;
            let manager = WorkloadManager::new(WorkloadManagerInputs {
                cfg: inpod,
                state: i.view,
                certs: i.certs,
                pod_certs: i.secrets,
                proxy_metrics: i.metrics.proxy.clone(),
                metrics: i.metrics.workload_manager.clone(),
                readiness: i.readiness.clone(),
                data: i.data.handle().clone(),
                host,
            });
            i.dump_sources.workload_state = Some(manager.pod_states());
            Ok(Started {
                proxy: None,
                identity: None,
                manager: Some(manager),
            })
        }
        (None, None) => bail!("shared mode without the host network namespace"),
    }
}

/// The proxy's slice of the node's configuration.
fn proxy_config(config: &Config) -> ProxyConfig {
    ProxyConfig {
        outbound_addr: config.listeners.outbound,
        inbound_addr: config.listeners.inbound_hbone,
        inbound_plaintext_addr: config.listeners.inbound_plaintext,
        network: config.network.clone(),
        socket: proxy::SocketOptions {
            mark: config.packet_mark,
            keepalive: config.keepalive.enabled.then_some(proxy::Keepalive {
                time: config.keepalive.time,
                interval: config.keepalive.interval,
                retries: config.keepalive.retries,
            }),
            user_timeout: config.keepalive.user_timeout(),
            connect_timeout: Duration::from_secs(10),
            ..Default::default()
        },
        orig_src: config
            .enable_orig_src
            .unwrap_or_else(proxy::socket::transparent_supported),
        reuse_port: config.proxy_mode == ProxyMode::Shared && config.inpod_port_reuse,
        h2: crate::hbone::H2Config {
            stream_window: config.http2_stream_window_size,
            connection_window: config.http2_connection_window_size,
            frame_size: config.http2_frame_size,
            pool_max_streams_per_conn: config.pool_max_streams_per_connection,
            pool_idle_timeout: config.pool_unused_release_timeout,
            ..Default::default()
        },
        transport: proxy::TransportConfig {
            mode: config.hbone_transport,
            fallback_ttl: config.hbone_quic_fallback,
            quic_head_start: config.hbone_quic_head_start,
            ..Default::default()
        },
        hbone_port: HBONE_PORT,
        outlier: proxy::OutlierConfig {
            enabled: config.outlier.enabled,
            consecutive_failures: config.outlier.consecutive_failures,
            base_ejection: config.outlier.base_ejection,
            max_ejection: config.outlier.max_ejection,
            max_connect_attempts: config.outlier.connect_attempts,
        },
        localhost_app_tunnel: config.localhost_app_tunnel,
        response_baggage: config.response_baggage,
        handshake: proxy::HandshakeLimits {
            timeout: config.handshake_timeout,
            max_pending_per_source: config.max_pending_handshakes_per_source,
        },
        on_demand_dns: on_demand_dns(config),
    }
}

/// The DNS proxy and SOCKS5 listeners each proxy gets, from the configuration. The upstream
/// resolvers are read once, from ambit's own namespace.
fn pod_extras(config: &Config, metrics: crate::dns::DnsMetrics) -> PodExtras {
    let dns = config.dns.enabled.then(|| {
        let timeout = Duration::from_secs(5);
        let forwarder = crate::dns::Forwarder::from_resolv_conf(
            &config.dns.resolv_conf,
            timeout,
            config.packet_mark,
        )
        .unwrap_or_else(|e| {
            warn!(error = %e, "dns proxy: no upstream resolvers; non-mesh names will fail");
            crate::dns::Forwarder::new(Vec::new(), timeout, config.packet_mark)
        });
        info!(upstream = ?forwarder.servers(), addr = %config.dns.addr, "dns proxy enabled");
        DnsSettings {
            addr: config.dns.addr,
            cluster_domain: config.dns.cluster_domain.clone(),
            preferred_namespace: config.prefered_service_namespace.clone(),
            ipv6: config.ipv6_enabled,
            forwarder: Arc::new(forwarder),
            metrics,
        }
    });
    PodExtras {
        dns,
        socks5: config.enable_socks5.then_some(proxy::socks5::SOCKS5_ADDR),
    }
}

/// The resolver of endpoints known by host name only: the name servers of the DNS proxy's
/// upstream `resolv.conf` (ztunnel reads the system's). Without a usable file the proxy still
/// runs; such endpoints then fail with the reason, said once here.
fn on_demand_dns(config: &Config) -> proxy::OnDemandDns {
    match proxy::SystemDns::from_resolv_conf(&config.dns.resolv_conf, config.ipv6_enabled) {
        Ok(dns) => proxy::OnDemandDns::new(Arc::new(dns)),
        Err(e) => {
            warn!(error = %e, "on-demand DNS is unavailable: endpoints known by host name only cannot be reached");
            proxy::OnDemandDns::unavailable(&e.to_string())
        }
    }
}
