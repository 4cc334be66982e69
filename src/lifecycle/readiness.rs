//! Readiness as a set of named blockers: the process is ready when none is left.
//!
//! Each startup task registers a [`BlockReady`] and drops it when done; the guard form means a
//! task that fails or panics keeps readiness false rather than silently releasing it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The readiness of the process. Cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    pending: BTreeMap<u64, String>,
}

/// Blocks readiness until dropped.
#[must_use = "readiness is released when this guard is dropped"]
pub struct BlockReady {
    id: u64,
    readiness: Readiness,
}

// === impl Readiness ===

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a named blocker.
    pub fn block(&self, name: impl Into<String>) -> BlockReady {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.pending.insert(id, name.into());
        BlockReady {
            id,
            readiness: self.clone(),
        }
    }

    /// Names of what is still pending, sorted; empty when ready.
    pub fn pending(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().pending.values().cloned().collect();
        names.sort();
        names
    }

    pub fn is_ready(&self) -> bool {
        self.lock().pending.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this short lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        self.readiness.lock().pending.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_blocker_is_dropped() {
        let r = Readiness::new();
        assert!(r.is_ready());
        let a = r.block("certificates");
        let b = r.block("listeners");
        assert_eq!(r.pending(), vec!["certificates", "listeners"]);
        drop(b);
        assert_eq!(r.pending(), vec!["certificates"]);
        assert!(!r.is_ready());
        drop(a);
        assert!(r.is_ready());
    }
}
