//! Closing live mTLS connections whose peer a CRL reload revokes (`CRL_PATH`).
//!
//! Each HBONE connection (inbound h2 or h3, pooled outbound h2 or h3) gets a [`PeerWatch`]
//! right after its handshake: a future that resolves when the CRLs in force revoke the peer's
//! chain. The connection's task selects on it and drops the connection when it fires, so every
//! stream on it ends at once. Before resolving, the watch counts the closure
//! (`istio_crl_policy_rejections_total`), logs it with the revoked serial, and raises the
//! connection's [`RevokedSignal`], so each stream's access-log line says `CERT_REVOKED` rather
//! than the transport error the drop causes.
//!
//! Bound: a rewritten CRL file is in force within two polls of the control side's reloader
//! (`identity::CRL_POLL_INTERVAL`); every watch re-checks on the reload itself.

use std::future::Future;
use std::net::SocketAddr;

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tracing::warn;

use crate::core::Identity;
use crate::metrics::{ProxyMetrics, Reporter};
use crate::tls::{PeerRole, Revoked, WorkloadCertificate};

/// Raised once when the connection a stream rides on was closed for a revoked peer.
#[derive(Clone)]
pub(crate) struct RevokedSignal(Option<watch::Receiver<Option<Revoked>>>);

impl RevokedSignal {
    /// A signal that never fires (plaintext, or no CRL configured).
    pub(crate) fn never() -> RevokedSignal {
        RevokedSignal(None)
    }

    /// The revocation, if the connection was closed for one already.
    pub(crate) fn now(&self) -> Option<Revoked> {
        self.0.as_ref().and_then(|rx| rx.borrow().clone())
    }

    /// Resolves with the revocation once the connection was closed for it; pending otherwise.
    /// The wait is boxed, and only when a CRL is in force: every open stream holds this future,
    /// and without a CRL (the default) it is a pointer rather than a channel wait.
    pub(crate) fn fired(&mut self) -> impl Future<Output = Revoked> + Send + '_ {
        let armed = self.0.as_mut().map(|rx| {
            Box::pin(async move {
                match rx.wait_for(Option::is_some).await {
                    Ok(r) => r.clone(),
                    Err(_) => None,
                }
            })
        });
        async move {
            if let Some(wait) = armed
                && let Some(r) = wait.await
            {
                return r;
            }
            std::future::pending().await
        }
    }
}

/// Why an outbound stream's pooled connection was cut for a revoked server, on either transport.
pub(crate) enum Cut {
    H2(crate::hbone::CutProbe),
    H3(crate::quic::CutProbe),
}

impl Cut {
    pub(crate) fn reason(&self) -> Option<&str> {
        match self {
            Cut::H2(p) => p.reason(),
            Cut::H3(p) => p.reason(),
        }
    }
}

/// Builds the watch for one connection: `cert` is the local certificate it was accepted or
/// opened with (its policy holds the CRLs), `chain` the peer's verified chain. Without a CRL
/// the future never resolves and the signal never fires.
pub(crate) fn watch_peer(
    metrics: &ProxyMetrics,
    cert: &WorkloadCertificate,
    chain: Option<&[CertificateDer<'_>]>,
    role: PeerRole,
    peer: (SocketAddr, &Identity),
) -> (
    impl Future<Output = Revoked> + Send + 'static,
    RevokedSignal,
) {
    let reporter = match role {
        PeerRole::Client => Reporter::Destination,
        PeerRole::Server => Reporter::Source,
    };
    let watch = match chain {
        Some(chain) if !chain.is_empty() => cert.watch_revocation(chain, role),
        _ => {
            if cert.policy().crl.is_some() {
                metrics
                    .crl_untracked_connections
                    .get_or_create(&crate::metrics::CrlLabels { reporter })
                    .inc();
            }
            None
        }
    };
    let (tx, rx) = watch::channel(None);
    let signal = RevokedSignal(watch.is_some().then_some(rx));
    let metrics = metrics.clone();
    let (addr, identity) = (peer.0, peer.1.clone());
    let fut = async move {
        let Some(mut watch) = watch else {
            return std::future::pending().await;
        };
        let revoked = watch.revoked().await;
        metrics.crl_rejected(reporter);
        let direction = match role {
            PeerRole::Client => "inbound",
            PeerRole::Server => "outbound",
        };
        warn!(
            direction,
            peer = %addr,
            peer_identity = %identity,
            serial = %revoked.serial,
            leaf = revoked.leaf,
            "closing HBONE connection: {revoked}"
        );
        // Raised before the caller drops the connection, so its streams see why they end.
        tx.send_replace(Some(revoked.clone()));
        revoked
    };
    (fut, signal)
}

/// Counts and logs a pooled QUIC connection closed because its server was revoked (the QUIC
/// pool closes it itself).
pub(crate) fn quic_hook(metrics: ProxyMetrics) -> crate::quic::RevokedHook {
    std::sync::Arc::new(
        move |revoked: &Revoked, peer: SocketAddr, identity: Option<&Identity>| {
            metrics.crl_rejected(Reporter::Source);
            warn!(
                direction = "outbound",
                %peer,
                peer_identity = identity.map(tracing::field::display),
                serial = %revoked.serial,
                leaf = revoked.leaf,
                "closing HBONE connection over QUIC: {revoked}"
            );
        },
    )
}
