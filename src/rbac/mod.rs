//! Istio L4 authorization policies: the domain model (`istio.security.Authorization` without
//! protobuf types).
//!
//! This module owns the *shape* of a policy and its evaluation ([`check`], in `eval`), which is
//! pure (no I/O). Invariants: ports are `u16`, IP networks carry a prefix length valid for their
//! family (checked by [`IpNet::new`]), and a policy is keyed by `namespace/name`.

mod eval;

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

pub use eval::{
    ConnFacts, Decision, DenyReason, Verdict, check, clause_matches, policy_matches, rule_matches,
};

/// One authorization policy, as pushed by the control plane or written in a local config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    /// A dry-run policy is evaluated and logged but never enforced.
    pub dry_run: bool,
    /// Rules are ORed; a policy without rules never matches.
    pub rules: Vec<Rule>,
}

/// Which workloads a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Scope {
    /// Every workload in the mesh.
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Only workloads that name the policy in their `authorization_policies`.
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Action {
    Allow,
    Deny,
}

/// Clauses of a rule are ANDed; an empty rule matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub clauses: Vec<Clause>,
}

/// Matches of a clause are ORed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Clause {
    pub matches: Vec<Match>,
}

/// One match: every populated field must pass (positive lists: any entry; negative lists: none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub source_ips: Vec<IpNet>,
    pub not_source_ips: Vec<IpNet>,
    pub destination_ips: Vec<IpNet>,
    pub not_destination_ips: Vec<IpNet>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
    pub service_accounts: Vec<ServiceAccountMatch>,
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

/// How a string field (namespace, principal) is compared.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// The field is present (non-empty), whatever its value.
    Presence,
}

/// A service account in a namespace (`ServiceAccountMatch`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// An IP network: an address and a prefix length valid for its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

/// Why an address and prefix length are not an IP network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RbacError {
    #[error("prefix length {prefix_len} is too long for {addr} (max {max})")]
    PrefixTooLong {
        addr: IpAddr,
        prefix_len: u8,
        max: u8,
    },
    #[error("invalid CIDR {0:?}")]
    BadCidr(String),
}

// === impl Authorization ===

impl Authorization {
    /// The key the store and workloads use for a policy: `namespace/name`.
    pub fn key(&self) -> String {
        policy_key(&self.namespace, &self.name)
    }
}

/// `namespace/name`, the key of a policy.
pub fn policy_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

// === impl StringMatch ===

impl StringMatch {
    /// Whether `value` passes this match.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

// === impl IpNet ===

impl IpNet {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, RbacError> {
        let max = max_prefix(addr);
        if prefix_len > max {
            return Err(RbacError::PrefixTooLong {
                addr,
                prefix_len,
                max,
            });
        }
        Ok(IpNet { addr, prefix_len })
    }

    /// A single host: `/32` or `/128`.
    pub fn host(addr: IpAddr) -> Self {
        IpNet {
            addr,
            prefix_len: max_prefix(addr),
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` lies in this network (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl std::str::FromStr for IpNet {
    type Err = RbacError;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a host network).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RbacError::BadCidr(s.to_string());
        match s.split_once('/') {
            None => s.parse().map(IpNet::host).map_err(|_| bad()),
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| bad())?;
                if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let len: u8 = len.parse().map_err(|_| bad())?;
                IpNet::new(addr, len)
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests;
