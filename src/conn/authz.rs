//! Authorization of inbound connections against a state snapshot: the bridge between the
//! proxy's view of a connection and the pure [`crate::rbac::check`].
//!
//! Invariants: only the policies that apply to the destination workload are evaluated (the
//! snapshot's scope indexes), nothing is allocated for an allowed connection unless a dry-run
//! policy applies, and a dry-run outcome is logged, never enforced.

use crate::rbac::{self, ConnFacts, Decision};
use crate::state::{Snapshot, Workload};

use super::LocalWorkload;

/// Logs an authorization-policy decision at `debug`, or `info` with
/// `AUTHZ_POLICY_INFO_LOGGING` (see [`crate::telemetry::authz_policy_level`]).
macro_rules! policy_log {
    ($($arg:tt)+) => {
        if crate::telemetry::authz_policy_level() == tracing::Level::INFO {
            tracing::info!($($arg)+);
        } else {
            tracing::debug!($($arg)+);
        }
    };
}

/// Decides a connection to `wl` with the policies that apply to it in `snapshot`.
pub(crate) fn decide(snapshot: &Snapshot, wl: &Workload, facts: &ConnFacts<'_>) -> Decision {
    let verdict = rbac::check(facts, snapshot.applicable_policies(wl));
    match &verdict.decision {
        Decision::Deny {
            policy: Some(key), ..
        } => policy_log!(policy = key.as_str(), "deny policy match"),
        Decision::Deny { policy: None, .. } => policy_log!("no allow policies matched"),
        Decision::Allow => policy_log!("allow"),
    }
    if let Some(dry) = &verdict.dry_run {
        tracing::event!(
            target: "rbac",
            tracing::Level::INFO,
            src.addr = %facts.src,
            dst.addr = %facts.dst,
            src.identity = facts.identity.map(tracing::field::display),
            enforced = %verdict.decision,
            dry_run = %dry,
            "dry-run authorization decision (not enforced)"
        );
    }
    verdict.decision
}

/// Decides a tracked connection again. When its destination is no longer the local workload's
/// address (the workload was removed or renumbered) there is no policy to apply, so the
/// connection is left alone: closing it is the lifecycle's job, not authorization's.
pub(crate) fn decide_tracked(
    snapshot: &Snapshot,
    network: &str,
    local: &LocalWorkload,
    facts: &ConnFacts<'_>,
) -> Decision {
    match snapshot
        .workload_by_addr(network, facts.dst.ip())
        .filter(|wl| local.is(wl))
    {
        Some(wl) => decide(snapshot, wl, facts),
        None => Decision::Allow,
    }
}

/// How one policy fared for a connection (`/debug/explain`).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTrace {
    pub policy: String,
    pub action: &'static str,
    pub dry_run: bool,
    pub matched: bool,
    /// Per rule (ORed): whether it matched, and per clause (ANDed) whether it did.
    pub rules: Vec<RuleTrace>,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleTrace {
    pub matched: bool,
    pub clauses: Vec<bool>,
}

/// [`decide`] without logging, with each applicable policy's rules matched or missed. The
/// decision is [`rbac::check`]'s over the same policies as the data path's.
pub(crate) fn explain(
    snapshot: &Snapshot,
    wl: &Workload,
    facts: &ConnFacts<'_>,
) -> (Decision, Vec<PolicyTrace>) {
    let verdict = rbac::check(facts, snapshot.applicable_policies(wl));
    let mut seen = std::collections::BTreeSet::new();
    let traces = snapshot
        .applicable_policies(wl)
        .filter(|p| seen.insert(p.key()))
        .map(|p| PolicyTrace {
            policy: p.key(),
            action: match p.action {
                rbac::Action::Allow => "ALLOW",
                rbac::Action::Deny => "DENY",
            },
            dry_run: p.dry_run,
            matched: rbac::policy_matches(p, facts),
            rules: p
                .rules
                .iter()
                .map(|r| RuleTrace {
                    matched: rbac::rule_matches(r, facts),
                    clauses: r
                        .clauses
                        .iter()
                        .map(|c| rbac::clause_matches(c, facts))
                        .collect(),
                })
                .collect(),
        })
        .collect();
    (verdict.decision, traces)
}

#[cfg(test)]
mod tests;
