//! The pods' proxies as `/config_dump` shows them (`workloadState`): a copy the workload
//! manager publishes after every change, read by the admin server without touching the
//! manager's own state.
//!
//! Invariant: the published map holds exactly the pods the state machine holds (running or
//! pending), keyed by uid; a running pod carries its proxy's live connection registry.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::proxy::ConnectionTracker;

use super::statemanager::WorkloadInfo;

/// Where a pod's proxy stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    /// Announced by the node agent; its proxy is not up (not started yet, or its start
    /// failed and is retried).
    Pending,
    /// Its proxy serves.
    Up,
}

/// One pod's entry.
#[derive(Clone)]
pub struct PodState {
    pub info: WorkloadInfo,
    pub phase: PodPhase,
    /// The proxy's live connections, while it is up.
    pub connections: Option<ConnectionTracker>,
}

/// The published pod states. Cloning shares them.
#[derive(Clone, Default)]
pub struct PodStates {
    inner: Arc<RwLock<BTreeMap<String, PodState>>>,
}

impl PodStates {
    /// Every pod, by uid.
    pub fn snapshot(&self) -> BTreeMap<String, PodState> {
        // A writer that panicked left a whole map behind (it only ever swaps the map).
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces every entry (the workload manager, after each change).
    pub fn publish(&self, pods: BTreeMap<String, PodState>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = pods;
    }
}
