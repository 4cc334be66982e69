//! Istio's `ProxyConfig` as ztunnel reads it: the mesh config file's `defaultConfig`
//! (`./etc/istio/config/mesh`, relative to the working directory, `/` in a container) overlaid
//! with the `PROXY_CONFIG` variable (inline YAML or JSON). Only the fields ztunnel uses are read;
//! the rest of a mesh config is ignored.
//!
//! Invariant: fields set in `PROXY_CONFIG` win over the file's, `proxyMetadata` maps are merged
//! key by key, and `ISTIO_META_` is stripped from metadata keys (the environment's
//! `ISTIO_META_*` variables are merged on top by the caller).

use std::collections::BTreeMap;

use serde::Deserialize;

/// ztunnel's mesh config path.
pub const MESH_CONFIG_PATH: &str = "./etc/istio/config/mesh";

/// The `ProxyConfig` fields ztunnel honours.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Used as `XDS_ADDRESS` when that variable is unset.
    pub discovery_address: Option<String>,
    /// The admin listener's port (default 15000).
    pub proxy_admin_port: Option<u16>,
    /// The metrics listener's port (default 15020).
    pub stats_port: Option<u16>,
    /// Worker threads: `0` = one per CPU; overridden by `ZTUNNEL_WORKER_THREADS`.
    pub concurrency: Option<u16>,
    /// Node metadata (`DNS_CAPTURE`, `DNS_PROXY_ADDR`, ...), keys without `ISTIO_META_`.
    #[serde(default)]
    pub proxy_metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshConfig {
    default_config: Option<ProxyConfig>,
}

/// Why the proxy config cannot be read. One line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    #[error("mesh config {path}: {reason}")]
    File { path: String, reason: String },
    #[error("PROXY_CONFIG: {reason}")]
    Env { reason: String },
}

impl ProxyConfig {
    /// `file`: the mesh config file's text, if it exists; `env`: `PROXY_CONFIG`, if set.
    pub fn read(file: Option<&str>, env: Option<&str>) -> Result<ProxyConfig, MeshError> {
        let from_file = match file {
            Some(text) => parse_yaml::<Option<MeshConfig>>(text)
                .map_err(|reason| MeshError::File {
                    path: MESH_CONFIG_PATH.to_string(),
                    reason,
                })?
                .and_then(|m| m.default_config),
            None => None,
        };
        let from_env = match env.filter(|e| !e.trim().is_empty()) {
            Some(text) => parse_yaml::<Option<ProxyConfig>>(text)
                .map_err(|reason| MeshError::Env { reason })?,
            None => None,
        };
        let mut pc = [from_file, from_env]
            .into_iter()
            .flatten()
            .fold(ProxyConfig::default(), ProxyConfig::overlay);
        pc.proxy_metadata = pc
            .proxy_metadata
            .into_iter()
            .map(|(k, v)| match k.strip_prefix("ISTIO_META_") {
                Some(stripped) => (stripped.to_string(), v),
                None => (k, v),
            })
            .collect();
        Ok(pc)
    }

    /// `self` with the fields `top` sets replaced.
    fn overlay(mut self, top: ProxyConfig) -> ProxyConfig {
        self.discovery_address = top.discovery_address.or(self.discovery_address);
        self.proxy_admin_port = top.proxy_admin_port.or(self.proxy_admin_port);
        self.stats_port = top.stats_port.or(self.stats_port);
        self.concurrency = top.concurrency.or(self.concurrency);
        self.proxy_metadata.extend(top.proxy_metadata);
        self
    }
}

/// serde_yaml's message, on one line.
fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_yaml_ng::from_str(text).map_err(|e| e.to_string().replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_wins_over_the_file_and_metadata_merges() {
        let file = "defaultConfig:\n  discoveryAddress: istiod.file:15012\n  statsPort: 25020\n  \
                    concurrency: 4\n  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: \"false\"\n    A: file\n\
                    trustDomain: example.org\nenableTracing: true\n";
        let env = r#"{"concurrency": 1, "proxyAdminPort": 25000, "proxyMetadata": {"A": "env"}}"#;
        let pc = ProxyConfig::read(Some(file), Some(env)).unwrap();
        assert_eq!(pc.discovery_address.as_deref(), Some("istiod.file:15012"));
        assert_eq!(pc.stats_port, Some(25020));
        assert_eq!(pc.proxy_admin_port, Some(25000));
        assert_eq!(pc.concurrency, Some(1));
        assert_eq!(
            pc.proxy_metadata,
            BTreeMap::from([
                ("A".to_string(), "env".to_string()),
                ("DNS_CAPTURE".to_string(), "false".to_string()),
            ])
        );
    }

    #[test]
    fn absent_or_empty_sources_give_defaults() {
        assert_eq!(
            ProxyConfig::read(None, None).unwrap(),
            ProxyConfig::default()
        );
        assert_eq!(
            ProxyConfig::read(Some(""), Some("")).unwrap(),
            ProxyConfig::default()
        );
        assert_eq!(
            ProxyConfig::read(Some("meshMTLS: {}\n"), None).unwrap(),
            ProxyConfig::default()
        );
    }

    #[test]
    fn malformed_sources_are_one_line_errors() {
        let e = ProxyConfig::read(None, Some("concurrency: lots")).unwrap_err();
        assert!(e.to_string().starts_with("PROXY_CONFIG: "), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
        let e = ProxyConfig::read(Some("defaultConfig:\n  statsPort: 99999\n"), None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("mesh config ./etc/istio/config/mesh: "),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
