//! The certificate manager: one certificate per local workload identity, issued on first use and
//! refreshed at half its lifetime.
//!
//! Invariants:
//! - Each identity has exactly one worker task, spawned on the runtime the manager was created on (the
//!   control runtime); only that task issues, so concurrent fetches share one issuance.
//! - A failed refresh keeps the old certificate in service until it expires, retrying with capped,
//!   jittered exponential backoff; a new certificate replaces the old one as soon as it arrives.
//! - At most `max_in_flight` issuances run at once, across all identities.
//! - Forgetting an identity aborts its worker; nothing refreshes it afterwards.
//! - The entry map's lock is never held across an `.await`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{CaClient, IdentityError};
use crate::core::Identity;
use crate::tls::{CertProvider, TlsError, TlsPolicy, WorkloadCertificate};

/// Tuning of the certificate manager.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretManagerConfig {
    /// Issuances allowed in flight at once, across identities.
    pub max_in_flight: usize,
    /// First retry delay after a failed issuance (before jitter).
    pub initial_backoff: Duration,
    /// Cap on the retry delay (before jitter).
    pub max_backoff: Duration,
}

impl Default for SecretManagerConfig {
    fn default() -> Self {
        SecretManagerConfig {
            max_in_flight: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(150),
        }
    }
}

/// Where an identity's certificate stands, for `/config_dump`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum CertificateState {
    /// The first issuance has not finished yet.
    Initializing,
    /// A valid certificate is being served.
    Available,
    /// No certificate can be served; the last issuance failed for this reason.
    Unavailable(String),
}

/// One identity's certificate as the manager sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateStatus {
    pub identity: Identity,
    pub state: CertificateState,
    /// Hex serial of the certificate served, if any.
    pub serial: Option<String>,
    pub valid_from: Option<SystemTime>,
    pub valid_to: Option<SystemTime>,
}

/// The certificate manager; implements [`CertProvider`] for the data path.
pub struct SecretManager {
    shared: Arc<Shared>,
    /// Where workers run: the runtime `new` was called on, whichever runtime `fetch` is called from.
    runtime: Handle,
    entries: Mutex<HashMap<Identity, Entry>>,
}

/// What workers need; kept apart from the manager so workers never keep it alive.
struct Shared {
    ca: Arc<dyn CaClient>,
    cfg: SecretManagerConfig,
    permits: Semaphore,
    issuances: AtomicU64,
    /// Applied to every issued certificate (`TLS12_ENABLED`, `COMPLIANCE_POLICY`, `CRL_PATH`).
    tls: Option<TlsPolicy>,
}

/// An identity's cache slot, published by its worker.
#[derive(Clone, Default)]
struct Slot {
    cert: Option<Arc<WorkloadCertificate>>,
    /// The last issuance's failure, cleared by the next success.
    error: Option<IdentityError>,
}

struct Entry {
    slot: watch::Receiver<Slot>,
    worker: AbortHandle,
}

// === impl SecretManager ===

impl SecretManager {
    /// Creates the manager. Must be called inside a tokio runtime: refresh workers are spawned on it.
    pub fn new(ca: Arc<dyn CaClient>, cfg: SecretManagerConfig) -> Arc<Self> {
        Self::build(ca, cfg, None)
    }

    /// [`SecretManager::new`] whose certificates serve handshakes under `policy` (the CA's
    /// certificates are used as issued when the policy is the default).
    pub fn with_tls_policy(
        ca: Arc<dyn CaClient>,
        cfg: SecretManagerConfig,
        policy: TlsPolicy,
    ) -> Arc<Self> {
        let is_default = !policy.tls12 && !policy.pqc && policy.crl.is_none();
        Self::build(ca, cfg, (!is_default).then_some(policy))
    }

    fn build(ca: Arc<dyn CaClient>, cfg: SecretManagerConfig, tls: Option<TlsPolicy>) -> Arc<Self> {
        Arc::new(SecretManager {
            shared: Arc::new(Shared {
                ca,
                permits: Semaphore::new(cfg.max_in_flight.max(1)),
                cfg,
                issuances: AtomicU64::new(0),
                tls,
            }),
            runtime: Handle::current(),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The current certificate of `id`, waiting for its first issuance if needed.
    pub async fn fetch_certificate(
        &self,
        id: &Identity,
    ) -> Result<Arc<WorkloadCertificate>, IdentityError> {
        let mut slot = self.subscribe(id);
        let ready = slot
            .wait_for(|s| s.cert.is_some() || s.error.is_some())
            .await
            .map(|s| (s.cert.clone(), s.error.clone()));
        match ready {
            Ok((Some(cert), _)) => Ok(cert),
            Ok((None, Some(e))) => Err(e),
            // The worker is gone: the identity was forgotten meanwhile.
            Ok((None, None)) | Err(_) => Err(IdentityError::Forgotten {
                identity: id.clone(),
            }),
        }
    }

    /// Waits until a certificate for `id` is being served, starting its issuance if needed.
    /// Unlike [`SecretManager::fetch_certificate`] a failed issuance does not end the wait: the
    /// worker retries with its backoff and this resolves on the first success. It fails only when
    /// `id` is forgotten meanwhile (in-pod readiness waits on this for each local pod).
    pub async fn wait_available(
        &self,
        id: &Identity,
    ) -> Result<Arc<WorkloadCertificate>, IdentityError> {
        let mut slot = self.subscribe(id);
        let cert = slot
            .wait_for(|s| s.cert.is_some())
            .await
            .map(|s| s.cert.clone());
        match cert {
            Ok(Some(cert)) => Ok(cert),
            Ok(None) | Err(_) => Err(IdentityError::Forgotten {
                identity: id.clone(),
            }),
        }
    }

    /// Stops refreshing `id` and drops its certificate.
    pub fn forget(&self, id: &Identity) {
        self.lock().remove(id);
    }

    /// Every managed identity and its certificate, sorted by identity.
    pub fn certificates(&self) -> Vec<CertificateStatus> {
        let mut out: Vec<CertificateStatus> = self
            .lock()
            .iter()
            .map(|(id, entry)| status(id, &entry.slot.borrow()))
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    /// The certificate currently served for `id`, if any. Read-only: unlike
    /// [`SecretManager::fetch_certificate`] it never starts an issuance (for `/config_dump`).
    pub fn current_certificate(&self, id: &Identity) -> Option<Arc<WorkloadCertificate>> {
        self.lock().get(id)?.slot.borrow().cert.clone()
    }

    /// Issuances started so far (successful or not), across identities.
    pub fn issuance_count(&self) -> u64 {
        self.shared.issuances.load(Ordering::Relaxed)
    }

    /// The slot of `id`, starting its worker if this is the first time it is asked for.
    fn subscribe(&self, id: &Identity) -> watch::Receiver<Slot> {
        let mut entries = self.lock();
        if let Some(entry) = entries.get(id) {
            return entry.slot.clone();
        }
        let (tx, rx) = watch::channel(Slot::default());
        let worker = self
            .runtime
            .spawn(run(self.shared.clone(), id.clone(), tx))
            .abort_handle();
        entries.insert(
            id.clone(),
            Entry {
                slot: rx.clone(),
                worker,
            },
        );
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Entry>> {
        // A panic elsewhere cannot leave the map half-updated: every change is one insert/remove.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl CertProvider for SecretManager {
    fn fetch(
        &self,
        id: &Identity,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<WorkloadCertificate>, TlsError>> + Send + '_>> {
        let id = id.clone();
        Box::pin(async move {
            self.fetch_certificate(&id)
                .await
                .map_err(|e| TlsError::CertificateUnavailable {
                    identity: id.clone(),
                    reason: e.to_string(),
                })
        })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

fn status(id: &Identity, slot: &Slot) -> CertificateStatus {
    let state = match (&slot.cert, &slot.error) {
        (Some(_), _) => CertificateState::Available,
        (None, Some(e)) => CertificateState::Unavailable(e.to_string()),
        (None, None) => CertificateState::Initializing,
    };
    CertificateStatus {
        identity: id.clone(),
        state,
        serial: slot.cert.as_ref().map(|c| c.serial_hex()),
        valid_from: slot.cert.as_ref().map(|c| c.not_before()),
        valid_to: slot.cert.as_ref().map(|c| c.not_after()),
    }
}

/// An identity's worker: issue, publish, sleep until half-life, repeat; on failure retry with
/// backoff, dropping the old certificate if it expires first.
async fn run(shared: Arc<Shared>, id: Identity, slot: watch::Sender<Slot>) {
    let mut backoff = Backoff::new(&shared.cfg);
    // When the certificate being served stops being valid, on tokio's clock.
    let mut expires: Option<Instant> = None;
    loop {
        let result = {
            let Ok(_permit) = shared.permits.acquire().await else {
                return; // The semaphore is never closed; nothing left to do if it were.
            };
            shared.issuances.fetch_add(1, Ordering::Relaxed);
            let issued = shared.ca.issue(&id).await;
            match (issued, &shared.tls) {
                (Ok(cert), Some(policy)) => {
                    cert.reconfigured(policy.clone())
                        .map_err(|source| IdentityError::Unusable {
                            identity: id.clone(),
                            source: Box::new(source),
                        })
                }
                (issued, _) => issued,
            }
        };
        match result {
            Ok(cert) => {
                backoff.reset();
                let now = Instant::now();
                let (refresh_at, expires_at) = schedule(&cert, now, SystemTime::now());
                expires = Some(expires_at);
                tracing::debug!(identity = %id, serial = %cert.serial_hex(), "certificate issued");
                slot.send_replace(Slot {
                    cert: Some(Arc::new(cert)),
                    error: None,
                });
                tokio::time::sleep_until(refresh_at).await;
            }
            Err(e) => {
                let retry_at = Instant::now() + backoff.next_delay();
                tracing::warn!(identity = %id, error = %e, "certificate issuance failed; will retry");
                slot.send_modify(|s| s.error = Some(e));
                if let Some(at) = expires.filter(|at| *at <= retry_at) {
                    tokio::time::sleep_until(at).await;
                    expires = None;
                    slot.send_modify(|s| s.cert = None);
                }
                tokio::time::sleep_until(retry_at).await;
            }
        }
    }
}

/// When to refresh (`not_before + lifetime / 2`) and when the certificate expires, as tokio
/// instants: wall-clock times are turned into delays from `wall_now`, so paused time in tests works.
fn schedule(cert: &WorkloadCertificate, now: Instant, wall_now: SystemTime) -> (Instant, Instant) {
    let lifetime = cert
        .not_after()
        .duration_since(cert.not_before())
        .unwrap_or_default();
    let until = |t: SystemTime| now + t.duration_since(wall_now).unwrap_or_default();
    (
        until(cert.not_before() + lifetime / 2),
        until(cert.not_after()),
    )
}

/// Exponential backoff, ×2 per failure up to a cap, each delay jittered by ±20% so that many
/// identities failing together do not retry in lockstep.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(cfg: &SecretManagerConfig) -> Self {
        Backoff {
            initial: cfg.initial_backoff,
            max: cfg.max_backoff.max(cfg.initial_backoff),
            next: cfg.initial_backoff,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::random_range(0.8..=1.2))
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}
