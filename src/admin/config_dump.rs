//! `GET /config_dump`: everything this proxy was told and holds, as JSON in ztunnel's shape
//! (wire.md §4): `workloads`, `services`, `policies`, `stagedServices`, `staticConfig`,
//! `version`, `config`, `certificates`, and in shared mode `workloadState`. The shapes are the
//! ones `istioctl ztunnel-config` decodes (`records`, `pods`); `tests/offline/compat_config_dump.rs`
//! checks them against istioctl's structs and against real ztunnel's output.
//!
//! Invariants: built from a single state snapshot, so the lists are mutually consistent; lists
//! are in key order so two dumps of the same state are byte-identical; reading it never changes
//! anything (certificates are read, never fetched). Private keys are never included.

mod pods;
mod records;

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use serde_json::{Value, json};
use tracing::warn;

use crate::identity::{CertificateState, SecretManager};
use crate::inpod::PodStates;
use crate::rbac::Authorization;
use crate::state::{Service, StateView, Workload};

/// What the dump reads. The config arrives already serialized: `admin` sits beside `config`
/// and may not import it.
#[derive(Clone)]
pub struct DumpSources {
    pub state: StateView,
    pub certificates: Option<Arc<SecretManager>>,
    /// The process configuration, serialized (camelCase).
    pub config: Value,
    /// The local config, when one was loaded (`staticConfig`).
    pub static_config: Option<StaticConfig>,
    /// The pods' proxies, in shared (in-pod) mode (`workloadState`).
    pub workload_state: Option<PodStates>,
    /// `ISTIO_META_ISTIO_VERSION`, or `unknown` (`version.istioVersion`).
    pub istio_version: String,
    /// What `/debug/explain` and `/debug/connections` read (`None`: they answer 503 / only
    /// the pods' connections).
    pub debug: Option<super::DebugSources>,
}

/// Where `staticConfig` comes from.
#[derive(Clone)]
pub enum StaticConfig {
    /// A local config file, read again for every dump (it may have been rewritten since).
    File(PathBuf),
    /// Records parsed once (an inline config).
    Records(Arc<StaticRecords>),
}

/// The records of a local config.
#[derive(Clone, Debug, Default)]
pub struct StaticRecords {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Authorization>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CertDump {
    identity: String,
    state: String,
    cert_chain: Vec<CertEntry>,
    root_certs: Vec<CertEntry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CertEntry {
    /// Base64 of the PEM text, as ztunnel shows it.
    pem: String,
    /// In decimal, as ztunnel shows it.
    serial_number: String,
    valid_from: String,
    expiration_time: String,
}

/// The whole dump.
pub fn config_dump(src: &DumpSources) -> Value {
    let snap = src.state.snapshot();
    let mut dump = match serde_json::to_value(records::state(&snap)) {
        Ok(Value::Object(m)) => m,
        // Every field serializes to JSON (strings, numbers, maps with integer or string keys).
        _ => serde_json::Map::new(),
    };
    let certificates: Vec<CertDump> = src
        .certificates
        .as_ref()
        .map(|m| certificates(m))
        .unwrap_or_default();
    let static_records = match &src.static_config {
        Some(StaticConfig::File(path)) => match crate::xds::local::load_file(path) {
            Ok(lc) => Arc::new(StaticRecords {
                workloads: lc.workloads,
                services: lc.services,
                policies: lc.policies,
            }),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "local config for /config_dump");
                Arc::default()
            }
        },
        Some(StaticConfig::Records(r)) => r.clone(),
        None => Arc::default(),
    };
    dump.insert("staticConfig".into(), static_config(&static_records));
    dump.insert(
        "version".into(),
        version(&src.istio_version, snap.version()),
    );
    dump.insert("config".into(), src.config.clone());
    dump.insert("certificates".into(), json!(certificates));
    if let Some(pods) = &src.workload_state {
        dump.insert("workloadState".into(), pods::workload_state(pods));
    }
    Value::Object(dump)
}

/// `{workloads, policies, services}` as the local config declares them.
fn static_config(r: &StaticRecords) -> Value {
    let none: &[Arc<Workload>] = &[];
    json!({
        "workloads": r.workloads.iter().map(records::local_workload).collect::<Vec<_>>(),
        "policies": r.policies.iter().map(records::policy).collect::<Vec<_>>(),
        "services": r.services.iter().map(|s| records::service(s, none)).collect::<Vec<_>>(),
    })
}

fn version(istio_version: &str, state_version: u64) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "gitRevision": option_env!("AMBIT_GIT_REVISION").unwrap_or("unknown"),
        "rustVersion": option_env!("CARGO_PKG_RUST_VERSION").unwrap_or("unknown"),
        "buildProfile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "buildStatus": "unknown",
        "istioVersion": istio_version,
        "cryptoProvider": "aws-lc-rs",
        "stateVersion": state_version,
    })
}

fn certificates(manager: &SecretManager) -> Vec<CertDump> {
    manager
        .certificates()
        .into_iter()
        .map(|status| {
            let state = match &status.state {
                CertificateState::Initializing => "Initializing".to_string(),
                CertificateState::Available => "Available".to_string(),
                CertificateState::Unavailable(why) => format!("Unavailable: {why}"),
            };
            let cert = manager.current_certificate(&status.identity);
            let (cert_chain, root_certs) = match cert {
                Some(c) => (
                    c.chain().iter().map(cert_entry).collect(),
                    c.roots().iter().map(cert_entry).collect(),
                ),
                None => (Vec::new(), Vec::new()),
            };
            CertDump {
                identity: status.identity.to_string(),
                state,
                cert_chain,
                root_certs,
            }
        })
        .collect()
}

fn cert_entry(der: &CertificateDer<'_>) -> CertEntry {
    let (serial_number, valid_from, expiration_time) =
        match x509_parser::parse_x509_certificate(der) {
            Ok((_, c)) => (
                c.tbs_certificate.serial.to_string(),
                rfc3339(c.validity().not_before.timestamp()),
                rfc3339(c.validity().not_after.timestamp()),
            ),
            Err(_) => Default::default(),
        };
    CertEntry {
        pem: base64(pem(der).as_bytes()),
        serial_number,
        valid_from,
        expiration_time,
    }
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A certificate as PEM text: 64-column lines, `\n` endings, as ztunnel shows it.
fn pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn pem_wraps_at_64_columns_with_lf_endings() {
        let text = pem(&[0xfb; 60]);
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1], "+/v7".repeat(16));
        assert_eq!(lines[2], "+/v7".repeat(4));
        assert_eq!(lines[3], "-----END CERTIFICATE-----");
        assert_eq!(lines[4], "");
        assert!(!text.contains('\r'));
    }
}
