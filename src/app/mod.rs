//! The composition root: builds the runtimes and every component from the configuration, in
//! startup order, and runs until a shutdown signal, then drains.
//!
//! Two runtimes (design.md §4): a current-thread control runtime on its own OS thread
//! (certificates, metrics) and a multi-thread data runtime (listeners, connections, readiness),
//! so control work never stalls traffic.

mod control_plane;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tracing::{info, warn};

use crate::config::{Config, LocalConfigSource, ProxyMode};
use crate::core::Identity;
use crate::identity::{CRL_POLL_INTERVAL, CrlReloader, SecretManager, SecretManagerConfig};
use crate::inpod::{
    CertificateSource, DnsSettings, HostNetns, InpodConfig, PodExtras, WorkloadManager,
    WorkloadManagerInputs,
};
use crate::lifecycle::{self, Readiness};
use crate::metrics::Metrics;
use crate::proxy::{self, LocalWorkload, Proxy, ProxyConfig, ProxyInputs};
use crate::state::{StateView, StateWriter};
use crate::telemetry::LogHandle;
use crate::tls::{CertProvider, TlsPolicy};
use crate::xds;

/// Runs the node proxy until SIGTERM/SIGINT, then drains. Returns an error for anything that
/// stops it from starting.
pub fn run(config: Config, log: LogHandle) -> anyhow::Result<()> {
    // Configuration first: a bad file must stop us before anything listens.
    let (writer, view) = StateWriter::new();
    let local_config = match &config.local_config {
        Some(LocalConfigSource::File(path)) => Some(xds::local::load_file(path)?),
        Some(LocalConfigSource::Inline(text)) => Some(xds::local::parse(text, "LOCAL_XDS")?),
        None => None,
    };
    let static_config = match (&config.local_config, &local_config) {
        (Some(LocalConfigSource::File(path)), _) => {
            Some(crate::admin::StaticConfig::File(path.clone()))
        }
        (_, Some(lc)) => Some(crate::admin::StaticConfig::Records(Arc::new(
            crate::admin::StaticRecords {
                workloads: lc.workloads.clone(),
                services: lc.services.clone(),
                policies: lc.policies.clone(),
            },
        ))),
        _ => None,
    };
    match local_config {
        Some(lc) => {
            writer.apply(lc.into_update());
        }
        None if config.xds_address.is_some() => {}
        None => bail!("no configuration source: set XDS_ADDRESS, LOCAL_XDS_PATH or LOCAL_XDS"),
    };
    info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting ambit");
    raise_open_files_limit();
    // The writer goes to the xDS client when there is a control plane; otherwise a local config
    // file is watched for changes and reloaded on the control runtime.
    let (reloader, xds_writer) = match (&config.xds_address, &config.local_config) {
        (Some(_), _) => (None, Some(writer)),
        (None, Some(LocalConfigSource::File(path))) => (
            Some(xds::local::Reloader::new(path.clone(), Arc::new(writer))),
            None,
        ),
        (None, _) => (None, None),
    };

    // Dedicated: one proxy for the configured workload, in our own namespace. Shared: proxies
    // per pod, inside each pod's namespace, driven by the node agent over ZDS.
    let local = match config.proxy_mode {
        ProxyMode::Dedicated => Some(dedicated_workload(&config)?),
        ProxyMode::Shared => None,
    };
    // With a control plane the state fills in after start-up; only a local config is final.
    if let Some(local) = local.as_ref().filter(|_| config.xds_address.is_none())
        && view
            .workload_by_name(&local.namespace, &local.name)
            .is_none()
    {
        warn!(
            namespace = %local.namespace,
            name = %local.name,
            "the local workload is not in the configuration: inbound connections will be refused"
        );
    }
    // Captured before any thread enters a pod's namespace, so there is always a way back.
    let host_netns = match config.proxy_mode {
        ProxyMode::Shared => Some(HostNetns::capture().context("in-pod mode")?),
        ProxyMode::Dedicated => None,
    };

    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("ambit-control")
        .build()
        .context("control runtime")?;
    let data = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(config.worker_threads)
        .thread_name("ambit-data")
        .build()
        .context("data runtime")?;

    let readiness = Readiness::new();
    let certs_ready = readiness.block("certificates");
    let proxy_ready = readiness.block("proxy");
    // In shared mode the workload manager blocks readiness until the node agent's snapshot.
    let dns_metrics = crate::dns::DnsMetrics::default();
    let metrics = {
        let mut m = Metrics::with_build_tag(&istio_version(&config));
        dns_metrics.register(m.registry_mut());
        m.register_tokio_runtime(data.handle().clone());
        Arc::new(m)
    };
    let (drain_trigger, drain) = lifecycle::drain_channel();
    // The readiness server outlives the proxies' drain, so it can answer "draining" meanwhile.
    let (readiness_trigger, readiness_drain) = lifecycle::drain_channel();
    // So does the admin server: `/quitquitquit` answers once the proxies' drain is over.
    let (admin_trigger, admin_drain) = lifecycle::drain_channel();
    let (shutdown, shutdown_requested) = lifecycle::shutdown_channel();

    // Control-plane clients (control_plane.rs) and certificates live on the control runtime:
    // xDS, issuance and refresh never run on data workers.
    // A CRL file that exists but does not parse stops the start: serving without the
    // revocations it was meant to carry would fail open.
    let crl_reloader = match &config.crl_path {
        Some(path) => Some(CrlReloader::load(path.clone()).context("CRL_PATH")?),
        None => None,
    };
    let tls_policy = TlsPolicy {
        tls12: config.tls12_enabled,
        pqc: config.pqc,
        crl: crl_reloader.as_ref().map(CrlReloader::handle),
    };
    let (secrets, xds_client) = {
        let _enter = control.enter();
        let ca = control_plane::ca_client(&config)?;
        let xds_client = xds_writer
            .and_then(|w| control_plane::xds_client(&config, w, &readiness))
            .map(|c| c.with_metrics(metrics.xds.clone()));
        (
            SecretManager::with_tls_policy(ca, SecretManagerConfig::default(), tls_policy),
            xds_client,
        )
    };
    let mut dump_sources = crate::admin::DumpSources {
        state: view.clone(),
        certificates: Some(secrets.clone()),
        config: serde_json::to_value(&config).unwrap_or_default(),
        static_config,
        workload_state: None,
        // Shown as ztunnel shows it (`version.istioVersion`).
        istio_version: std::env::var("ISTIO_META_ISTIO_VERSION")
            .unwrap_or_else(|_| "unknown".to_string()),
        debug: Some(crate::admin::DebugSources {
            explain: proxy::explain::ExplainInputs {
                state: view.clone(),
                network: config.network.clone(),
                hbone_port: HBONE_PORT,
            },
            connections: None,
            local: None,
        }),
    };
    let certs: Arc<dyn CertProvider> = secrets.clone();

    let metrics_listener =
        control.block_on(crate::admin::bind("metrics", config.listeners.stats))?;
    let admin_listener = control.block_on(crate::admin::bind_admin(config.listeners.admin))?;
    let readiness_listener =
        data.block_on(crate::admin::bind("readiness", config.listeners.readiness))?;
    let admin_ops = crate::admin::AdminOps {
        initial_filter: log.current(),
        log,
        shutdown,
    };

    let proxy_cfg = ProxyConfig {
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
        on_demand_dns: on_demand_dns(&config),
    };
    let extras = pod_extras(&config, dns_metrics);
    // Dedicated: bind now, in our own namespace. Shared: the workload manager binds per pod.
    let (proxy, identity, manager) = match (local, host_netns) {
        (Some(local), _) => {
            let identity = (local.clone(), view.clone(), config.xds_address.is_some());
            let (ns, name) = (local.namespace.clone(), local.name.clone());
            let proxy_cfg = Arc::new(proxy_cfg);
            let proxy = {
                let _enter = data.enter();
                let proxy = Proxy::bind(ProxyInputs {
                    cfg: proxy_cfg.clone(),
                    local,
                    state: view.clone(),
                    certs: certs.clone(),
                    metrics: metrics.proxy.clone(),
                })?;
                if let Some(d) = dump_sources.debug.as_mut() {
                    d.connections = Some(proxy.tracker().clone());
                    d.local = Some(format!("{ns}/{name}"));
                }
                let bound = extras.bind(&proxy, &proxy_cfg, &view, &ns, &name)?;
                (proxy, bound)
            };
            (Some(proxy), Some(identity), None)
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
                state: view,
                certs: certs.clone(),
                pod_certs: secrets.clone(),
                proxy_metrics: metrics.proxy.clone(),
                metrics: metrics.workload_manager.clone(),
                readiness: readiness.clone(),
                data: data.handle().clone(),
                host,
            });
            dump_sources.workload_state = Some(manager.pod_states());
            (None, None, Some(manager))
        }
        (None, None) => bail!("shared mode without the host network namespace"),
    };
    drop(proxy_ready);

    // Control runtime: metrics server, the workload manager (shared) or the first certificate
    // (dedicated), then idle until shutdown.
    let control_drain = drain.clone();
    let control_metrics = metrics.clone();
    let control_thread = std::thread::Builder::new()
        .name("ambit-control".into())
        .spawn(move || {
            control.block_on(async move {
                let server = tokio::spawn(crate::admin::serve_metrics(
                    metrics_listener,
                    control_metrics,
                    control_drain.clone(),
                ));
                let admin = tokio::spawn(crate::admin::serve_admin(
                    admin_listener,
                    dump_sources,
                    admin_ops,
                    admin_drain,
                ));
                let xds = xds_client.map(|c| tokio::spawn(c.run(control_drain.clone())));
                let manager = manager.map(|m| tokio::spawn(m.run(control_drain.clone())));
                if let Some(r) = reloader {
                    tokio::spawn(r.run(xds::local::DEFAULT_POLL_INTERVAL, control_drain.clone()));
                }
                if let Some(r) = crl_reloader {
                    tokio::spawn(r.run(CRL_POLL_INTERVAL, control_drain.clone()));
                }
                match identity {
                    Some((local, view, from_xds)) => {
                        let identity = settled_identity(&local, &view, from_xds).await;
                        match certs.fetch(&identity).await {
                        Ok(cert) => {
                            info!(identity = %identity, serial = %cert.serial_hex(), "certificate ready");
                            drop(certs_ready);
                        }
                        Err(e) => {
                            warn!(identity = %identity, error = %e, "certificate not available yet");
                        }
                    }
                    }
                    // Shared mode: the workload manager blocks readiness per pod identity
                    // until its certificate is served.
                    None => drop(certs_ready),
                }
                control_drain.draining().await;
                if let Some(m) = manager {
                    let _ = m.await;
                }
                let _ = server.await;
                if let Some(xds) = xds {
                    let _ = xds.await;
                }
                // Our part of the proxies' drain is done; the admin server ends after it.
                drop(control_drain);
                let _ = admin.await;
            })
        })
        .context("control thread")?;

    let deadline = config.connection_termination_deadline;
    let outcome = data.block_on(async move {
        let readiness_server = tokio::spawn(crate::admin::serve_readiness(
            readiness_listener,
            readiness.clone(),
            readiness_drain,
        ));
        let proxy_task = proxy.map(|(p, extras)| {
            tokio::spawn(async move {
                tokio::join!(p.run(drain.clone()), extras.run(drain));
            })
        });
        info!("ambit is running");
        tokio::select! {
            signal = lifecycle::shutdown_signal() => match signal {
                Ok(name) => info!(signal = name, deadline = ?deadline, "draining"),
                Err(e) => warn!(error = %e, "cannot wait for signals; draining now"),
            },
            _ = shutdown_requested.wait() => {
                info!(deadline = ?deadline, "draining: requested through the admin server");
            }
        }
        // Not ready from the first moment of the drain until the process is gone.
        let _draining = readiness.block("draining");
        let outcome = drain_trigger.drain(deadline).await;
        if let Some(task) = proxy_task {
            let _ = task.await;
        }
        // Answer pending `/quitquitquit` requests, then stop the admin server.
        shutdown_requested.drained();
        admin_trigger.drain(ADMIN_DRAIN).await;
        readiness_trigger.drain_immediately().await;
        let _ = readiness_server.await;
        outcome
    });
    let _ = control_thread.join();
    drop(secrets);
    info!(?outcome, "ambit stopped");
    Ok(())
}

/// Raises the open-file soft limit to the hard limit and logs both, as ztunnel does: every
/// proxied connection holds two descriptors, so a 1024 soft limit stops a busy node at ~500.
/// After the configuration is known good, so a bad one is still the only line on stderr.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            // ztunnel's wording, so log searches find both.
            Ok(()) => info!("set file descriptor limits from {soft} to {hard}"),
            Err(e) => warn!("failed to set file descriptor limits: {e}"),
        },
        Err(e) => warn!("failed to get file descriptor limits: {e}"),
    }
}

/// The HBONE port of every node proxy (ztunnel's, fixed).
const HBONE_PORT: u16 = 15008;
/// How long the admin server may take to answer its last requests once the proxies drained.
const ADMIN_DRAIN: Duration = Duration::from_secs(2);

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
        socks5: config
            .enable_socks5
            .then_some(crate::proxy::socks5::SOCKS5_ADDR),
    }
}

/// In shared mode the workload manager prefetches and forgets pod certificates through this
/// seam (it cannot name the certificate manager: both sit on one module level).
impl CertificateSource for SecretManager {
    fn wait_available(
        &self,
        id: &Identity,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let id = id.clone();
        Box::pin(async move {
            self.wait_available(&id)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn forget(&self, id: &Identity) {
        SecretManager::forget(self, id);
    }
}

/// How long a dedicated proxy waits for the control plane to describe its workload before it
/// fetches its certificate with the default trust domain (ztunnel waits as long for a record).
const RECORD_WAIT: Duration = Duration::from_secs(5);

/// The dedicated workload's identity once its record is known (its trust domain is the
/// record's), or after [`RECORD_WAIT`] without one; at once without a control plane.
async fn settled_identity(local: &LocalWorkload, view: &StateView, from_xds: bool) -> Identity {
    if from_xds {
        let mut changes = view.changes();
        let known = || {
            view.workload_by_name(&local.namespace, &local.name)
                .is_some()
        };
        let _ = tokio::time::timeout(RECORD_WAIT, async {
            while !known() {
                if changes.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
    local.identity(view)
}

/// The workload a dedicated-mode proxy serves, from `PROXY_WORKLOAD_INFO`; its trust domain
/// comes from its record once the control plane (or local config) describes it.
fn dedicated_workload(config: &Config) -> anyhow::Result<LocalWorkload> {
    let info = config
        .proxy_workload_info
        .as_ref()
        .context("PROXY_MODE=dedicated needs PROXY_WORKLOAD_INFO")?;
    let identity = Identity::new(&config.trust_domain, &info.namespace, &info.service_account)
        .context("PROXY_WORKLOAD_INFO")?;
    Ok(LocalWorkload {
        namespace: info.namespace.clone(),
        name: info.name.clone(),
        default_identity: identity,
    })
}

/// The Istio version this proxy is deployed as (`ISTIO_META_ISTIO_VERSION`), the `tag` of
/// `istio_build`; `unknown` when not set, as ztunnel reports it.
fn istio_version(config: &Config) -> String {
    config
        .proxy_metadata
        .iter()
        .find(|(k, _)| k == "ISTIO_VERSION")
        .and_then(|(_, v)| v.as_str())
        .unwrap_or(crate::metrics::UNKNOWN_TAG)
        .to_string()
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
