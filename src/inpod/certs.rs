//! The certificates of the local pods: prefetched as soon as the node agent announces a pod, so
//! its first connection does not wait for issuance, and forgotten when the last pod with that
//! identity leaves the node.
//!
//! Invariants:
//! - every identity of an announced pod (running or pending) has exactly one prefetch; until its
//!   certificate is served, a readiness blocker named after the identity is held. The blocker is
//!   registered synchronously in [`PodCertificates::sync`], so it is in place before the request
//!   that announced the pod is acknowledged;
//! - a failed issuance keeps the blocker: the certificate source retries on its own backoff and
//!   the prefetch resolves on its first success;
//! - an identity no pod uses any more is forgotten by the source (its refresh stops) and its
//!   prefetch, if still waiting, is cancelled with its blocker.
//!
//! The source is a seam ([`CertificateSource`]): the certificate manager lives on the same
//! module level as this one, so the composition root wires it in.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::task::AbortHandle;
use tracing::{debug, info};

use crate::core::Identity;
use crate::lifecycle::Readiness;

/// Where pod certificates come from (the certificate manager).
pub trait CertificateSource: Send + Sync + 'static {
    /// Resolves once a certificate for `id` is served, starting its issuance if needed and
    /// outlasting failed issuances (the source retries them). Fails only when `id` is forgotten
    /// meanwhile; the error is its reason, for the log.
    fn wait_available(
        &self,
        id: &Identity,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;

    /// Stops refreshing `id` and drops its certificate.
    fn forget(&self, id: &Identity);
}

/// The identities of the local pods and their prefetches.
pub(super) struct PodCertificates {
    source: Arc<dyn CertificateSource>,
    readiness: Readiness,
    /// Every identity in use, with its prefetch task (finished or not: aborting a finished task
    /// does nothing).
    prefetches: HashMap<Identity, AbortHandle>,
}

// === impl PodCertificates ===

impl PodCertificates {
    pub(super) fn new(source: Arc<dyn CertificateSource>, readiness: Readiness) -> Self {
        PodCertificates {
            source,
            readiness,
            prefetches: HashMap::new(),
        }
    }

    /// Makes the prefetched identities exactly `wanted`: starts a prefetch for each new one,
    /// forgets each one no pod uses any more. Must run inside a tokio runtime.
    pub(super) fn sync(&mut self, wanted: &BTreeSet<Identity>) {
        let gone: Vec<Identity> = self
            .prefetches
            .keys()
            .filter(|id| !wanted.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(task) = self.prefetches.remove(&id) {
                task.abort();
            }
            self.source.forget(&id);
            info!(identity = %id, "no local pod uses this identity any more: certificate forgotten");
        }
        for id in wanted {
            if !self.prefetches.contains_key(id) {
                let task = self.prefetch(id.clone());
                self.prefetches.insert(id.clone(), task);
            }
        }
    }

    fn prefetch(&self, id: Identity) -> AbortHandle {
        // Registered here, not in the task, so readiness is blocked before the caller replies.
        let blocker = self.readiness.block(format!("inpod: certificate {id}"));
        let source = self.source.clone();
        tokio::spawn(async move {
            match source.wait_available(&id).await {
                Ok(()) => info!(identity = %id, "pod certificate ready"),
                // Forgotten meanwhile: nothing waits for it any more.
                Err(e) => debug!(identity = %id, error = %e, "pod certificate prefetch ended"),
            }
            drop(blocker);
        })
        .abort_handle()
    }
}

#[cfg(test)]
mod tests;
