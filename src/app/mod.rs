//! The composition root: builds the runtimes and every component from the configuration, in
//! startup order, and runs until a shutdown signal, then drains.
//!
//! Two runtimes (design.md §4): a current-thread control runtime on its own OS thread
//! (certificates, metrics) and a multi-thread data runtime (listeners, connections, readiness),
//! so control work never stalls traffic.
//!
//! [`run`] reads as its steps, in start-up order: the state's sources, the serving mode, the
//! runtimes, metrics and drains, the control-plane clients, the servers' listeners, the proxies
//! (`proxies.rs`), then the two runtimes' work until shutdown and the drain (`serve.rs`).

mod control_plane;
mod proxies;
mod serve;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tracing::{info, warn};

use crate::admin::{DumpSources, StaticConfig};
use crate::config::{Config, LocalConfigSource, ProxyMode};
use crate::core::Identity;
use crate::identity::{CrlReloader, SecretManager, SecretManagerConfig};
use crate::inpod::{CertificateSource, HostNetns};
use crate::lifecycle::{self, Readiness};
use crate::metrics::Metrics;
use crate::proxy::{self, LocalWorkload};
use crate::state::{StateView, StateWriter};
use crate::telemetry::LogHandle;
use crate::tls::{CertProvider, TlsPolicy};
use crate::xds::{self, XdsClient};

/// Runs the node proxy until SIGTERM/SIGINT, then drains. Returns an error for anything that
/// stops it from starting.
pub fn run(config: Config, log: LogHandle) -> anyhow::Result<()> {
    // Configuration first: a bad file must stop us before anything listens.
    let (writer, view, static_config) = load_state(&config)?;
    info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting ambit");
    raise_open_files_limit();
    let (reloader, xds_writer) = state_writer_owner(&config, writer);
    let (local, host_netns) = serving_mode(&config, &view)?;
    let (control, data) = runtimes(&config)?;

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

    let clients = control_plane_clients(&config, &control, xds_writer, &readiness, &metrics)?;
    let secrets = clients.secrets.clone();
    let mut dump_sources = dump_sources(&config, &view, &secrets, static_config);
    let certs: Arc<dyn CertProvider> = secrets.clone();
    let listeners = bind_servers(&config, &control, &data)?;
    let admin_ops = crate::admin::AdminOps {
        initial_filter: log.current(),
        log,
        shutdown,
    };

    let started = proxies::start(proxies::Inputs {
        config: &config,
        local,
        host_netns,
        dns_metrics,
        view,
        certs: certs.clone(),
        secrets: secrets.clone(),
        metrics: &metrics,
        readiness: &readiness,
        data: &data,
        dump_sources: &mut dump_sources,
    })?;
    drop(proxy_ready);

    let control_thread = serve::spawn_control(
        control,
        serve::ControlWork {
            metrics_listener: listeners.metrics,
            admin_listener: listeners.admin,
            metrics,
            dump_sources,
            admin_ops,
            admin_drain,
            drain: drain.clone(),
            xds: clients.xds,
            manager: started.manager,
            reloader,
            crl_reloader: clients.crl_reloader,
            identity: started.identity,
            certs,
            certs_ready,
        },
    )?;
    let outcome = data.block_on(serve::until_shutdown(serve::DataWork {
        readiness_listener: listeners.readiness,
        readiness,
        proxy: started.proxy,
        deadline: config.connection_termination_deadline,
        drain,
        drain_trigger,
        readiness_drain,
        readiness_trigger,
        admin_trigger,
        shutdown_requested,
    }));
    let _ = control_thread.join();
    drop(secrets);
    info!(?outcome, "ambit stopped");
    Ok(())
}

/// Loads the local configuration, if any, into a new state (refusing to start without any
/// source of configuration); with what `/config_dump` shows as the static configuration.
fn load_state(config: &Config) -> anyhow::Result<(StateWriter, StateView, Option<StaticConfig>)> {
    let (writer, view) = StateWriter::new();
    let local_config = match &config.local_config {
        Some(LocalConfigSource::File(path)) => Some(xds::local::load_file(path)?),
        Some(LocalConfigSource::Inline(text)) => Some(xds::local::parse(text, "LOCAL_XDS")?),
        None => None,
    };
    let static_config = match (&config.local_config, &local_config) {
        (Some(LocalConfigSource::File(path)), _) => Some(StaticConfig::File(path.clone())),
        (_, Some(lc)) => Some(StaticConfig::Records(Arc::new(
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
    Ok((writer, view, static_config))
}

/// Who writes the state from now on: the xDS client when there is a control plane; otherwise a
/// local config file is watched for changes and reloaded on the control runtime.
fn state_writer_owner(
    config: &Config,
    writer: StateWriter,
) -> (Option<xds::local::Reloader>, Option<StateWriter>) {
    match (&config.xds_address, &config.local_config) {
        (Some(_), _) => (None, Some(writer)),
        (None, Some(LocalConfigSource::File(path))) => (
            Some(xds::local::Reloader::new(path.clone(), Arc::new(writer))),
            None,
        ),
        (None, _) => (None, None),
    }
}

/// Dedicated: one proxy for the configured workload, in our own namespace. Shared: proxies per
/// pod, inside each pod's namespace, driven by the node agent over ZDS (from the host network
/// namespace, captured here).
fn serving_mode(
    config: &Config,
    view: &StateView,
) -> anyhow::Result<(Option<LocalWorkload>, Option<Arc<HostNetns>>)> {
    let local = match config.proxy_mode {
        ProxyMode::Dedicated => Some(dedicated_workload(config)?),
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
    Ok((local, host_netns))
}

/// The control runtime (current thread) and the data runtime (`worker_threads` workers).
fn runtimes(config: &Config) -> anyhow::Result<(Runtime, Runtime)> {
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
    Ok((control, data))
}

/// The control-plane clients and the certificate manager.
struct Clients {
    secrets: Arc<SecretManager>,
    xds: Option<XdsClient>,
    crl_reloader: Option<CrlReloader>,
}

/// Control-plane clients (control_plane.rs) and certificates live on the control runtime: xDS,
/// issuance and refresh never run on data workers.
fn control_plane_clients(
    config: &Config,
    control: &Runtime,
    xds_writer: Option<StateWriter>,
    readiness: &Readiness,
    metrics: &Metrics,
) -> anyhow::Result<Clients> {
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
    let _enter = control.enter();
    let ca = control_plane::ca_client(config)?;
    let xds = xds_writer
        .and_then(|w| control_plane::xds_client(config, w, readiness))
        .map(|c| c.with_metrics(metrics.xds.clone()));
    Ok(Clients {
        secrets: SecretManager::with_tls_policy(ca, SecretManagerConfig::default(), tls_policy),
        xds,
        crl_reloader,
    })
}

/// What `/config_dump` and the debug endpoints read; the proxies add theirs when they start.
fn dump_sources(
    config: &Config,
    view: &StateView,
    secrets: &Arc<SecretManager>,
    static_config: Option<StaticConfig>,
) -> DumpSources {
    DumpSources {
        state: view.clone(),
        certificates: Some(secrets.clone()),
        config: serde_json::to_value(config).unwrap_or_default(),
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
    }
}

/// The listeners of the metrics, admin and readiness servers.
struct ServerListeners {
    metrics: TcpListener,
    admin: TcpListener,
    readiness: TcpListener,
}

/// Binds the servers' listeners, each on the runtime that will serve it.
fn bind_servers(
    config: &Config,
    control: &Runtime,
    data: &Runtime,
) -> anyhow::Result<ServerListeners> {
    Ok(ServerListeners {
        metrics: control.block_on(crate::admin::bind("metrics", config.listeners.stats))?,
        admin: control.block_on(crate::admin::bind_admin(config.listeners.admin))?,
        readiness: data.block_on(crate::admin::bind("readiness", config.listeners.readiness))?,
    })
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
pub(super) const HBONE_PORT: u16 = 15008;

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
