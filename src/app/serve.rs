//! The two runtimes' work once everything is bound: the control thread (servers, control-plane
//! clients, the first certificate) and the data runtime (proxies, readiness) until a shutdown
//! signal, then the drain in its order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tracing::{info, warn};

use crate::admin::{AdminOps, DumpSources};
use crate::core::Identity;
use crate::identity::{CRL_POLL_INTERVAL, CrlReloader};
use crate::inpod::{BoundExtras, WorkloadManager};
use crate::lifecycle::{
    self, BlockReady, DrainOutcome, DrainTrigger, DrainWatcher, Readiness, ShutdownRequested,
};
use crate::metrics::Metrics;
use crate::proxy::{LocalWorkload, Proxy};
use crate::state::StateView;
use crate::tls::CertProvider;
use crate::xds::{self, XdsClient};

use super::proxies::PendingIdentity;

/// How long the admin server may take to answer its last requests once the proxies drained.
const ADMIN_DRAIN: Duration = Duration::from_secs(2);

/// What the control runtime runs.
pub(super) struct ControlWork {
    pub metrics_listener: TcpListener,
    pub admin_listener: TcpListener,
    pub metrics: Arc<Metrics>,
    pub dump_sources: DumpSources,
    pub admin_ops: AdminOps,
    pub admin_drain: DrainWatcher,
    pub drain: DrainWatcher,
    pub xds: Option<XdsClient>,
    pub manager: Option<WorkloadManager>,
    pub reloader: Option<xds::local::Reloader>,
    pub crl_reloader: Option<CrlReloader>,
    pub identity: Option<PendingIdentity>,
    pub certs: Arc<dyn CertProvider>,
    pub certs_ready: BlockReady,
}

/// Control runtime, on its own thread: metrics and admin servers, the workload manager (shared)
/// or the first certificate (dedicated), then idle until shutdown.
pub(super) fn spawn_control(
    control: Runtime,
    work: ControlWork,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ambit-control".into())
        .spawn(move || control.block_on(run_control(work)))
        .context("control thread")
}

async fn run_control(w: ControlWork) {
    let control_drain = w.drain;
    let server = tokio::spawn(crate::admin::serve_metrics(
        w.metrics_listener,
        w.metrics,
        control_drain.clone(),
    ));
    let admin = tokio::spawn(crate::admin::serve_admin(
        w.admin_listener,
        w.dump_sources,
        w.admin_ops,
        w.admin_drain,
    ));
    let xds = w.xds.map(|c| tokio::spawn(c.run(control_drain.clone())));
    let manager = w
        .manager
        .map(|m| tokio::spawn(m.run(control_drain.clone())));
    if let Some(r) = w.reloader {
        tokio::spawn(r.run(xds::local::DEFAULT_POLL_INTERVAL, control_drain.clone()));
    }
    if let Some(r) = w.crl_reloader {
        tokio::spawn(r.run(CRL_POLL_INTERVAL, control_drain.clone()));
    }
    match w.identity {
        Some(identity) => first_certificate(identity, w.certs.as_ref(), w.certs_ready).await,
        // Shared mode: the workload manager blocks readiness per pod identity until its
        // certificate is served.
        None => drop(w.certs_ready),
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
}

/// Dedicated mode: fetches the workload's certificate once its identity is settled; readiness
/// waits for it (a failure leaves it blocked: the certificate manager keeps trying).
async fn first_certificate(
    (local, view, from_xds): PendingIdentity,
    certs: &dyn CertProvider,
    certs_ready: BlockReady,
) {
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

/// What the data runtime runs, and the drains it triggers.
pub(super) struct DataWork {
    pub readiness_listener: TcpListener,
    pub readiness: Readiness,
    /// The dedicated proxy (shared mode: the workload manager runs per-pod proxies).
    pub proxy: Option<(Proxy, BoundExtras)>,
    /// `CONNECTION_TERMINATION_DEADLINE`.
    pub deadline: Duration,
    pub drain: DrainWatcher,
    pub drain_trigger: DrainTrigger,
    pub readiness_drain: DrainWatcher,
    pub readiness_trigger: DrainTrigger,
    pub admin_trigger: DrainTrigger,
    pub shutdown_requested: ShutdownRequested,
}

/// Serves until a signal or `/quitquitquit`, then drains: the proxies (with the deadline), then
/// the admin server, then readiness.
pub(super) async fn until_shutdown(w: DataWork) -> DrainOutcome {
    let readiness_server = tokio::spawn(crate::admin::serve_readiness(
        w.readiness_listener,
        w.readiness.clone(),
        w.readiness_drain,
    ));
    let proxy_task = w.proxy.map(|(p, extras)| {
        tokio::spawn(async move {
            tokio::join!(p.run(w.drain.clone()), extras.run(w.drain));
        })
    });
    info!("ambit is running");
    tokio::select! {
        signal = lifecycle::shutdown_signal() => match signal {
            Ok(name) => info!(signal = name, deadline = ?w.deadline, "draining"),
            Err(e) => warn!(error = %e, "cannot wait for signals; draining now"),
        },
        _ = w.shutdown_requested.wait() => {
            info!(deadline = ?w.deadline, "draining: requested through the admin server");
        }
    }
    // Not ready from the first moment of the drain until the process is gone.
    let _draining = w.readiness.block("draining");
    let outcome = w.drain_trigger.drain(w.deadline).await;
    if let Some(task) = proxy_task {
        let _ = task.await;
    }
    // Answer pending `/quitquitquit` requests, then stop the admin server.
    w.shutdown_requested.drained();
    w.admin_trigger.drain(ADMIN_DRAIN).await;
    w.readiness_trigger.drain_immediately().await;
    let _ = readiness_server.await;
    outcome
}
