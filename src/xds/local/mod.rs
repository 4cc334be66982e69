//! The local config source: ztunnel's local config YAML (`LOCAL_XDS_PATH` / `LOCAL_XDS`) with
//! top-level `workloads`, `services` and `policies`, and its reloading at run time ([`Reloader`]).
//!
//! Owns reading that file with ztunnel's schema; the entries are validated by the same
//! conversion as istiod's records ([`super::convert`]). Invariants: a [`LocalConfig`] only
//! exists when every entry is valid, and holds one entry per key (workload uid, service
//! `namespace/hostname`, policy `namespace/name`); every failure is a single
//! [`LocalConfigError`] line naming the file, the entry and the field. The original text is
//! kept for config dumps.

mod raw;
mod records;
mod watch;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tracing::warn;

use super::convert::ConvertError;
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
    /// No YAML document at all (empty, only comments, or `null`): what a file being written or
    /// cut short looks like, so it is never taken to mean "no workloads".
    #[error("local config {origin}: the file has no content (an empty config is written \"{{}}\")")]
    Empty { origin: String },
    /// A value the file format accepts but the state cannot hold (port 0, empty name, ...),
    /// as the xDS conversion judges it.
    #[error("local config {origin}: {entry}: {}{message}", field_prefix(field))]
    Invalid {
        origin: String,
        /// e.g. `workloads[1] (uid "client-1")`.
        entry: String,
        /// Path inside the entry, e.g. `workloadIps[0]`; empty for the entry itself.
        field: String,
        message: String,
    },
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// serde's message quotes keys and values from the file as they are, and a YAML scalar can
/// span lines: control characters are escaped so the error stays one log line.
fn one_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
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
///
/// The file is decoded with ztunnel's schema ([`raw`]), turned into the xDS records istiod
/// would send ([`records`]) and converted by the xDS conversion, so both sources share one set
/// of rules. Like ztunnel's loader, a later entry with the key of an earlier one replaces it.
pub fn parse(text: &str, origin: &str) -> Result<LocalConfig, LocalConfigError> {
    let raw: raw::RawConfig =
        serde_yaml_ng::from_str(text).map_err(|e| LocalConfigError::Yaml {
            origin: origin.to_string(),
            // serde quotes names with backticks; plain quotes read better in a log line.
            message: one_line(&e.to_string().replace('`', "\"")),
        })?;
    let nothing = raw.workloads.is_empty() && raw.services.is_empty() && raw.policies.is_empty();
    if nothing
        && matches!(
            serde_yaml_ng::from_str(text),
            Ok(serde_yaml_ng::Value::Null)
        )
    {
        return Err(LocalConfigError::Empty {
            origin: origin.to_string(),
        });
    }
    let invalid = |section: &'static str, i: usize, label: (&str, &str), e: ConvertError| {
        let (what, value) = label;
        let entry = if value.is_empty() {
            format!("{section}[{i}]")
        } else {
            format!("{section}[{i}] ({what} {value:?})")
        };
        LocalConfigError::Invalid {
            origin: origin.to_string(),
            entry,
            field: local_field(section, &e.field),
            message: e.problem.to_string(),
        }
    };

    let mut service_records = Vec::with_capacity(raw.services.len());
    let mut endpoints = Vec::new();
    for s in raw.services {
        let (record, eps) = records::service(s);
        service_records.push(record);
        endpoints.extend(eps);
    }
    let (mut workload_records, kinds): (Vec<_>, Vec<_>) =
        raw.workloads.into_iter().map(records::workload).unzip();
    records::add_endpoints(&mut workload_records, endpoints);

    let mut workloads = Vec::with_capacity(workload_records.len());
    for (i, (record, kind)) in workload_records.into_iter().zip(kinds).enumerate() {
        let uid = record.uid.clone();
        let mut w =
            Workload::try_from(record).map_err(|e| invalid("workloads", i, ("uid", &uid), e))?;
        w.workload_type = kind;
        workloads.push(w);
    }
    let mut services = Vec::with_capacity(service_records.len());
    for (i, record) in service_records.into_iter().enumerate() {
        let host = record.hostname.clone();
        services.push(
            Service::try_from(record)
                .map_err(|e| invalid("services", i, ("hostname", &host), e))?,
        );
    }
    let mut policies = Vec::with_capacity(raw.policies.len());
    for (i, p) in raw.policies.into_iter().enumerate() {
        let record = records::policy(p);
        let name = record.name.clone();
        policies.push(
            Authorization::try_from(record)
                .map_err(|e| invalid("policies", i, ("name", &name), e))?,
        );
    }

    Ok(LocalConfig {
        origin: origin.to_string(),
        source: text.to_string(),
        workloads: last_wins(origin, "workload uid", workloads, |w| w.uid.clone()),
        services: last_wins(origin, "service", services, Service::key),
        policies: last_wins(origin, "policy", policies, Authorization::key),
    })
}

/// The xDS conversion names fields as the records have them; the file names some differently.
fn local_field(section: &str, field: &str) -> String {
    let renames: &[(&str, &str)] = match section {
        "workloads" => &[
            ("addresses", "workloadIps"),
            ("tunnelProtocol", "protocol"),
            (".hostname", ".destination"),
        ],
        "services" => &[
            ("addresses", "vips"),
            ("loadBalancing", "loadBalancer"),
            (".hostname", ".destination"),
        ],
        _ => &[(".clauses[", "["), ("].matches[", "][")],
    };
    let mut out = field.to_string();
    for (from, to) in renames {
        out = out.replace(from, to);
    }
    // A port map is keyed by port in the file; the message names the port.
    match out.find("ports[") {
        Some(at) => out[..at + "ports".len()].to_string(),
        None => out,
    }
}

/// Keeps the last entry of each key, in the order of first appearance.
fn last_wins<T>(origin: &str, what: &str, items: Vec<T>, key: impl Fn(&T) -> String) -> Vec<T> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        let k = key(&item);
        match index.get(&k) {
            Some(&at) => {
                warn!(origin, key = %k, "local config: a later {what} replaces an earlier one with the same key");
                out[at] = item;
            }
            None => {
                index.insert(k, out.len());
                out.push(item);
            }
        }
    }
    out
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
