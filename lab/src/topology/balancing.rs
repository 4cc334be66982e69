//! Endpoint health and locality in the topology: a pod's `locality` and `status`, a service's
//! `loadBalancing` (routing preference and mode), as written in the YAML and as the lab keeps them.
//!
//! Invariants:
//! - a pod's locality and status live in its labels under [`REGION_LABEL`], [`ZONE_LABEL`],
//!   [`SUBZONE_LABEL`] and [`STATUS_LABEL`]. Kubernetes keeps locality on the node's labels and
//!   health in the pod's readiness; the lab has neither object, and labels are its one free-form
//!   per-pod store, so pods built in code (`Pod { .. }`) carry them without new fields;
//! - a missing label reads as empty (locality) or healthy (status), as istiod reports a pod that
//!   says nothing;
//! - the enum spellings here are those of the local config (wire.md §3), so the YAML written for
//!   node proxies passes them through unchanged.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Pod label holding the region (Kubernetes' well-known node label).
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Pod label holding the zone (Kubernetes' well-known node label).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Pod label holding the subzone (Istio's node label).
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// Pod label holding the lab's health status (`Healthy` | `Unhealthy`).
pub const STATUS_LABEL: &str = "lab.ambit/status";

/// Where a pod runs, from widest to narrowest; empty parts are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

/// Whether a pod's endpoint may receive traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum PodStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// A locality level a service prefers (or, in [`LbMode::Strict`], requires) to share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LocalityScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

/// How a service's routing preference is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum LbMode {
    /// No locality preference.
    #[default]
    Standard,
    /// Only endpoints matching every preferred scope.
    Strict,
    /// The closest endpoints first, wider ones when none is left.
    Failover,
}

/// Whether unhealthy endpoints are still used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum HealthPolicy {
    #[default]
    OnlyHealthy,
    AllowAll,
}

/// A service's `loadBalancing` block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct LoadBalancing {
    pub routing_preference: Vec<LocalityScope>,
    pub mode: LbMode,
    pub health_policy: HealthPolicy,
}

// === impl Locality ===

impl Locality {
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// The locality kept in `labels` (empty parts where a label is missing).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Locality {
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        Locality {
            region: get(REGION_LABEL),
            zone: get(ZONE_LABEL),
            subzone: get(SUBZONE_LABEL),
        }
    }

    /// Writes the non-empty parts into `labels` (an empty part leaves its label alone).
    pub fn write_labels(&self, labels: &mut BTreeMap<String, String>) {
        for (k, v) in [
            (REGION_LABEL, &self.region),
            (ZONE_LABEL, &self.zone),
            (SUBZONE_LABEL, &self.subzone),
        ] {
            if !v.is_empty() {
                labels.insert(k.to_string(), v.clone());
            }
        }
    }
}

// === impl PodStatus ===

impl PodStatus {
    /// The local config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PodStatus::Healthy => "Healthy",
            PodStatus::Unhealthy => "Unhealthy",
        }
    }

    /// The status kept in `labels`: healthy unless the label says `Unhealthy`.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> PodStatus {
        match labels.get(STATUS_LABEL).map(String::as_str) {
            Some("Unhealthy") => PodStatus::Unhealthy,
            _ => PodStatus::Healthy,
        }
    }
}

// === impl LocalityScope ===

impl LocalityScope {
    /// The local config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LocalityScope::Region => "Region",
            LocalityScope::Zone => "Zone",
            LocalityScope::Subzone => "Subzone",
            LocalityScope::Node => "Node",
            LocalityScope::Cluster => "Cluster",
            LocalityScope::Network => "Network",
        }
    }
}

// === impl LbMode ===

impl LbMode {
    /// The local config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LbMode::Standard => "Standard",
            LbMode::Strict => "Strict",
            LbMode::Failover => "Failover",
        }
    }
}

// === impl HealthPolicy ===

impl HealthPolicy {
    /// The local config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthPolicy::OnlyHealthy => "OnlyHealthy",
            HealthPolicy::AllowAll => "AllowAll",
        }
    }
}
