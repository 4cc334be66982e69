//! Passive outlier ejection: the L4 form of circuit breaking for service endpoints.
//!
//! Owns, per proxy, the recent connect outcomes of each endpoint (`ip:target port`). An
//! endpoint whose connects fail `consecutive_failures` times in a row is ejected: endpoint
//! choice skips it until its back-off passes (`base_ejection`, doubled on each further
//! ejection up to `max_ejection`). After the back-off it is eligible again, so the next
//! connection to pick it probes it: one more failure ejects it again at once, one success
//! forgets its history.
//!
//! Invariants: the table only holds endpoints that failed at least once since their last
//! success (a healthy mesh keeps it empty, and lookups then take no lock); the lock is a
//! plain mutex never held across `.await`; time is tokio's clock, so tests can pause it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Tuning of passive outlier ejection (on by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    pub enabled: bool,
    /// Connect failures in a row that eject an endpoint (at least 1).
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; each further one doubles it.
    pub base_ejection: Duration,
    /// Upper bound of the doubling.
    pub max_ejection: Duration,
    /// Endpoints one connection may try when connects fail before any byte was sent
    /// (at least 1).
    pub max_connect_attempts: u32,
}

/// The per-proxy table of failing endpoints.
#[derive(Debug, Default)]
pub struct Outliers {
    cfg: OutlierConfig,
    table: Mutex<HashMap<SocketAddr, Entry>>,
    /// `table.len()`, readable without the lock: 0 is the common, lock-free case.
    tracked: AtomicUsize,
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    consecutive: u32,
    /// Ejections since the last success: the exponent of the back-off.
    ejections: u32,
    ejected_until: Option<Instant>,
}

// === impl OutlierConfig ===

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            enabled: true,
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_connect_attempts: 3,
        }
    }
}

// === impl Outliers ===

impl Outliers {
    pub fn new(cfg: OutlierConfig) -> Self {
        Outliers {
            cfg,
            ..Default::default()
        }
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.cfg
    }

    /// Whether `endpoint` is ejected now.
    pub fn is_ejected(&self, endpoint: SocketAddr) -> bool {
        if !self.cfg.enabled || self.tracked.load(Ordering::Acquire) == 0 {
            return false;
        }
        let now = Instant::now();
        self.lock()
            .get(&endpoint)
            .and_then(|e| e.ejected_until)
            .is_some_and(|until| now < until)
    }

    /// Records a failed connect to `endpoint`; returns the back-off if this failure ejects it.
    pub fn failure(&self, endpoint: SocketAddr) -> Option<Duration> {
        if !self.cfg.enabled {
            return None;
        }
        let now = Instant::now();
        let mut table = self.lock();
        let entry = table.entry(endpoint).or_default();
        entry.consecutive = entry.consecutive.saturating_add(1);
        let still_ejected = entry.ejected_until.is_some_and(|u| now < u);
        let ejected = if entry.consecutive >= self.cfg.consecutive_failures.max(1) && !still_ejected
        {
            let factor = 1u32
                .checked_shl(entry.ejections.min(16))
                .unwrap_or(u32::MAX);
            let backoff = self
                .cfg
                .base_ejection
                .saturating_mul(factor)
                .min(self.cfg.max_ejection);
            entry.ejections = entry.ejections.saturating_add(1);
            entry.ejected_until = Some(now + backoff);
            Some(backoff)
        } else {
            None
        };
        self.tracked.store(table.len(), Ordering::Release);
        ejected
    }

    /// Records a successful connect: the endpoint's history is forgotten.
    pub fn success(&self, endpoint: SocketAddr) {
        if !self.cfg.enabled || self.tracked.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut table = self.lock();
        table.remove(&endpoint);
        self.tracked.store(table.len(), Ordering::Release);
    }

    /// Endpoints with a failure history (ejected or not), for tests and debugging.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Entry>> {
        // Poisoning only means a panic elsewhere; the table stays consistent (plain values).
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn outliers() -> Outliers {
        Outliers::new(OutlierConfig {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_and_backs_off_exponentially() {
        let o = outliers();
        let a = ep("10.0.0.1:80");
        assert_eq!(o.failure(a), None);
        assert!(!o.is_ejected(a));
        assert_eq!(o.failure(a), Some(Duration::from_secs(10)));
        assert!(o.is_ejected(a));
        assert!(!o.is_ejected(ep("10.0.0.2:80")));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!o.is_ejected(a), "eligible again after the back-off");
        // The probe fails: ejected again at once, for twice as long.
        assert_eq!(o.failure(a), Some(Duration::from_secs(20)));
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(o.is_ejected(a));
        tokio::time::advance(Duration::from_secs(1)).await;
        // Capped by max_ejection.
        assert_eq!(o.failure(a), Some(Duration::from_secs(25)));
    }

    #[tokio::test(start_paused = true)]
    async fn success_forgets_history() {
        let o = outliers();
        let a = ep("[fd00::1]:80");
        o.failure(a);
        o.success(a);
        assert_eq!(o.tracked(), 0);
        assert_eq!(o.failure(a), None, "the count restarted");
        assert_eq!(o.failure(a), Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        o.success(a);
        assert!(!o.is_ejected(a));
        assert_eq!(o.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_never_ejects() {
        let o = Outliers::new(OutlierConfig {
            enabled: false,
            consecutive_failures: 1,
            ..Default::default()
        });
        let a = ep("10.0.0.1:80");
        assert_eq!(o.failure(a), None);
        assert!(!o.is_ejected(a));
        assert_eq!(o.tracked(), 0);
    }
}
