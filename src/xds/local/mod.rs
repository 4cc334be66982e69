//! The local config source: ztunnel's local config YAML (`LOCAL_XDS_PATH` / `LOCAL_XDS`) with
//! top-level `workloads`, `services` and `policies`, and its reloading at run time ([`Reloader`]).
//!
//! Owns parsing and validation of that file. Invariants: a [`LocalConfig`] only exists when
//! every entry is valid and keys are unique (workload uid, service `namespace/hostname`,
//! policy `namespace/name`); every failure is a single [`LocalConfigError`] line naming the
//! file, the entry and the field. The original text is kept for config dumps.

mod convert;
mod raw;
mod watch;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::rbac::Authorization;
use crate::state::{Resource, Service, Update, Workload};

pub use watch::{DEFAULT_POLL_INTERVAL, Reload, Reloader};

/// A validated local config.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalConfig {
    /// Where it came from: a file path, or a label such as `LOCAL_XDS`.
    pub origin: String,
    /// The YAML exactly as read.
    pub source: String,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Authorization>,
}

/// Why a local config cannot be used. Displays as one line starting with `local config <origin>`.
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    #[error("local config {origin}: cannot read file: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax, wrong types, unknown fields or enum values (serde's message, with the path
    /// and line/column).
    #[error("local config {origin}: {message}")]
    Yaml { origin: String, message: String },
    /// A value serde accepted but that is not valid (address, port, name, missing field).
    #[error("local config {origin}: {entry}: {}{message}", field_prefix(field))]
    Invalid {
        origin: String,
        /// e.g. `workloads[1] (uid "client-1")`.
        entry: String,
        /// Path inside the entry, e.g. `workloadIps[0]`; empty for the entry itself.
        field: String,
        message: String,
    },
    #[error(
        "local config {origin}: duplicate {what} {key:?} ({section}[{first}] and {section}[{second}])"
    )]
    Duplicate {
        origin: String,
        what: &'static str,
        key: String,
        section: &'static str,
        first: usize,
        second: usize,
    },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// Reads and validates a local config file.
pub fn load_file(path: &Path) -> Result<LocalConfig, LocalConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LocalConfigError::Read {
        origin: origin.clone(),
        source,
    })?;
    parse(&text, &origin)
}

/// Validates a local config given as text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<LocalConfig, LocalConfigError> {
    // An empty document is an empty config, not an error.
    let raw: raw::RawConfig = if text.trim().is_empty() {
        raw::RawConfig::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| LocalConfigError::Yaml {
            origin: origin.to_string(),
            // serde quotes names with backticks; plain quotes read better in a log line.
            message: e.to_string().replace('`', "\""),
        })?
    };
    let invalid =
        |section: &str, i: usize, label: Option<(&str, String)>, e: convert::FieldError| {
            let entry = match label {
                Some((what, v)) if !v.is_empty() => format!("{section}[{i}] ({what} {v:?})"),
                _ => format!("{section}[{i}]"),
            };
            LocalConfigError::Invalid {
                origin: origin.to_string(),
                entry,
                field: e.field,
                message: e.message,
            }
        };

    let mut workloads = Vec::with_capacity(raw.workloads.len());
    for (i, w) in raw.workloads.into_iter().enumerate() {
        let label = if w.uid.is_empty() {
            ("name", w.name.clone())
        } else {
            ("uid", w.uid.clone())
        };
        workloads.push(convert::workload(w).map_err(|e| invalid("workloads", i, Some(label), e))?);
    }
    let mut services = Vec::with_capacity(raw.services.len());
    for (i, s) in raw.services.into_iter().enumerate() {
        let label = ("hostname", s.hostname.clone());
        services.push(convert::service(s).map_err(|e| invalid("services", i, Some(label), e))?);
    }
    let mut policies = Vec::with_capacity(raw.policies.len());
    for (i, p) in raw.policies.into_iter().enumerate() {
        let label = ("name", p.name.clone());
        policies.push(convert::policy(p).map_err(|e| invalid("policies", i, Some(label), e))?);
    }

    check_unique(
        origin,
        "workload uid",
        "workloads",
        workloads.iter().map(|w| w.uid.clone()),
    )?;
    check_unique(
        origin,
        "service",
        "services",
        services.iter().map(Service::key),
    )?;
    check_unique(
        origin,
        "policy",
        "policies",
        policies.iter().map(Authorization::key),
    )?;

    Ok(LocalConfig {
        origin: origin.to_string(),
        source: text.to_string(),
        workloads,
        services,
        policies,
    })
}

fn check_unique(
    origin: &str,
    what: &'static str,
    section: &'static str,
    keys: impl Iterator<Item = String>,
) -> Result<(), LocalConfigError> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, key) in keys.enumerate() {
        if let Some(first) = seen.get(&key) {
            return Err(LocalConfigError::Duplicate {
                origin: origin.to_string(),
                what,
                key,
                section,
                first: *first,
                second: i,
            });
        }
        seen.insert(key, i);
    }
    Ok(())
}

// === impl LocalConfig ===

impl LocalConfig {
    /// The whole config as one state update that replaces everything, so a reload drops
    /// entries that were removed from the file.
    pub fn into_update(self) -> Update {
        let mut upserts: Vec<Resource> =
            Vec::with_capacity(self.workloads.len() + self.services.len() + self.policies.len());
        upserts.extend(
            self.workloads
                .into_iter()
                .map(|w| Resource::Workload(Arc::new(w))),
        );
        upserts.extend(
            self.services
                .into_iter()
                .map(|s| Resource::Service(Arc::new(s))),
        );
        upserts.extend(
            self.policies
                .into_iter()
                .map(|p| Resource::Policy(Arc::new(p))),
        );
        Update {
            replace_all: true,
            upserts,
            removals: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
