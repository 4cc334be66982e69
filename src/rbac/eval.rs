//! Istio L4 authorization evaluation: `(connection facts, applicable policies) → decision`.
//!
//! Pure and I/O-free. Invariants:
//! - One pass over the applicable policies, with no allocation unless the answer is a denial
//!   (which names its policy) or a dry-run policy applies (whose would-be decision is reported).
//! - The caller hands in only the policies that apply to the destination workload (global, its
//!   namespace's, and the ones it names), so cost follows those, not the size of the mesh. A
//!   policy listed twice changes nothing: every step below is idempotent.
//! - Semantics: an enforced DENY that matches wins; else, when no enforced ALLOW applies the
//!   connection is allowed; else an enforced ALLOW must match. Dry-run policies never change
//!   the enforced decision; the decision they *would* produce is returned beside it.

use std::fmt;
use std::net::SocketAddr;

use super::{Action, Authorization, Clause, Match, Rule, ServiceAccountMatch, StringMatch};
use crate::core::Identity;

/// What the decision is made from. `dst` is the *resolved* destination: the workload's
/// address and the target port the app listens on (never 15008, never a service port).
#[derive(Clone, Copy, Debug)]
pub struct ConnFacts<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The peer's verified identity; `None` for plaintext, so identity matches fail.
    pub identity: Option<&'a Identity>,
}

/// The enforced outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny {
        /// The key (`namespace/name`) of the DENY policy that matched; `None` when the
        /// connection is refused because ALLOW policies apply and none matched.
        policy: Option<String>,
        reason: DenyReason,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// A DENY policy matched.
    DenyMatched,
    /// ALLOW policies apply, and none matched.
    NoAllowMatched,
}

/// The enforced decision, and what the decision would have been had the dry-run policies
/// been enforced too (`None` when no dry-run policy applies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub dry_run: Option<Decision>,
}

/// Running state of one evaluation (enforced or "as if dry-run were enforced").
#[derive(Default, Clone, Copy)]
struct Tally<'p> {
    denied_by: Option<&'p Authorization>,
    allow_applies: bool,
    allowed: bool,
}

// === impl Tally ===

impl<'p> Tally<'p> {
    fn record(&mut self, p: &'p Authorization, matched: bool) {
        match p.action {
            Action::Deny => {
                if matched && self.denied_by.is_none() {
                    self.denied_by = Some(p);
                }
            }
            Action::Allow => {
                self.allow_applies = true;
                self.allowed |= matched;
            }
        }
    }

    fn decision(&self) -> Decision {
        if let Some(p) = self.denied_by {
            Decision::Deny {
                policy: Some(p.key()),
                reason: DenyReason::DenyMatched,
            }
        } else if self.allow_applies && !self.allowed {
            Decision::Deny {
                policy: None,
                reason: DenyReason::NoAllowMatched,
            }
        } else {
            Decision::Allow
        }
    }
}

/// Decides a connection against the policies that apply to its destination workload.
pub fn check<'p, I>(conn: &ConnFacts<'_>, policies: I) -> Verdict
where
    I: IntoIterator<Item = &'p Authorization>,
{
    let mut enforced = Tally::default();
    let mut shadow = Tally::default();
    let mut any_dry_run = false;
    for p in policies {
        // Each policy is matched once and counted in both tallies: the enforced one skips
        // dry-run policies, the would-be one counts them as if enforced.
        let matched = policy_matches(p, conn);
        shadow.record(p, matched);
        if p.dry_run {
            any_dry_run = true;
        } else {
            enforced.record(p, matched);
        }
    }
    Verdict {
        decision: enforced.decision(),
        dry_run: any_dry_run.then(|| shadow.decision()),
    }
}

/// Rules are ORed; a policy without rules never matches.
pub fn policy_matches(p: &Authorization, conn: &ConnFacts<'_>) -> bool {
    p.rules.iter().any(|rule| rule_matches(rule, conn))
}

/// Clauses are ANDed (an empty rule matches). `#[inline]`: part of [`policy_matches`]'s loop,
/// as the closure it was before `/debug/explain` needed it on its own.
#[inline]
pub fn rule_matches(rule: &Rule, conn: &ConnFacts<'_>) -> bool {
    rule.clauses.iter().all(|c| clause_matches(c, conn))
}

/// Matches inside a clause are ORed.
#[inline]
pub fn clause_matches(clause: &Clause, conn: &ConnFacts<'_>) -> bool {
    clause.matches.iter().any(|m| match_matches(m, conn))
}

/// Every populated field must pass: a positive list by any entry, a negative list by none.
/// Inlined into [`clause_matches`]'s callers, as it was into [`policy_matches`] before
/// `/debug/explain` became a second caller.
#[inline]
fn match_matches(m: &Match, conn: &ConnFacts<'_>) -> bool {
    let id = conn.identity;
    let ns_ok = |s: &StringMatch| id.is_some_and(|id| s.matches(id.namespace()));
    let principal_ok = |s: &StringMatch| id.is_some_and(|id| principal_matches(s, id));
    let sa_ok = |a: &ServiceAccountMatch| {
        id.is_some_and(|id| {
            id.namespace() == a.namespace && id.service_account() == a.service_account
        })
    };
    let src = conn.src.ip();
    let dst = conn.dst.ip();
    let port = conn.dst.port();
    positive(&m.namespaces, ns_ok)
        && negative(&m.not_namespaces, ns_ok)
        && positive(&m.principals, principal_ok)
        && negative(&m.not_principals, principal_ok)
        && positive(&m.service_accounts, sa_ok)
        && negative(&m.not_service_accounts, sa_ok)
        && positive(&m.source_ips, |n| n.contains(src))
        && negative(&m.not_source_ips, |n| n.contains(src))
        && positive(&m.destination_ips, |n| n.contains(dst))
        && negative(&m.not_destination_ips, |n| n.contains(dst))
        && positive(&m.destination_ports, |p| *p == port)
        && negative(&m.not_destination_ports, |p| *p == port)
}

/// An empty positive list is not populated, so it passes.
fn positive<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}

fn negative<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    !list.iter().any(f)
}

/// Matches against the principal `td/ns/<ns>/sa/<sa>` (the SPIFFE id without `spiffe://`)
/// without building it: the parts are compared in place.
fn principal_matches(s: &StringMatch, id: &Identity) -> bool {
    let parts = [
        id.trust_domain(),
        "/ns/",
        id.namespace(),
        "/sa/",
        id.service_account(),
    ];
    match s {
        StringMatch::Exact(want) => {
            let total: usize = parts.iter().map(|p| p.len()).sum();
            total == want.len() && starts_with_parts(&parts, want)
        }
        StringMatch::Prefix(want) => starts_with_parts(&parts, want),
        StringMatch::Suffix(want) => ends_with_parts(&parts, want),
        // An identity always has a non-empty principal.
        StringMatch::Presence => true,
    }
}

/// Whether the concatenation of `parts` starts with `want`.
fn starts_with_parts(parts: &[&str], want: &str) -> bool {
    let mut rest = want.as_bytes();
    for p in parts {
        let p = p.as_bytes();
        if rest.len() <= p.len() {
            return p.starts_with(rest);
        }
        let (head, tail) = rest.split_at(p.len());
        if head != p {
            return false;
        }
        rest = tail;
    }
    rest.is_empty()
}

/// Whether the concatenation of `parts` ends with `want`.
fn ends_with_parts(parts: &[&str], want: &str) -> bool {
    let mut rest = want.as_bytes();
    for p in parts.iter().rev() {
        let p = p.as_bytes();
        if rest.len() <= p.len() {
            return p.ends_with(rest);
        }
        let (head, tail) = rest.split_at(rest.len() - p.len());
        if tail != p {
            return false;
        }
        rest = head;
    }
    rest.is_empty()
}

// === impl Decision ===

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// `allowed`, `connection denied by policy ns/name`, or
/// `connection denied: no ALLOW policy matched` (the access log's `error` text).
impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("allowed"),
            Decision::Deny {
                policy: Some(key), ..
            } => write!(f, "connection denied by policy {key}"),
            Decision::Deny { policy: None, .. } => {
                f.write_str("connection denied: no ALLOW policy matched")
            }
        }
    }
}

#[cfg(test)]
mod tests;
