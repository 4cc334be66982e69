//! The control-plane clients, built from the configuration: the delta-xDS client (when
//! `XDS_ADDRESS` is set) and the certificate issuer (the Istio CA at `CA_ADDRESS`, or the
//! built-in CA with `FAKE_CA=true` or `CA_ADDRESS=""`).
//!
//! Kept apart from the startup sequence in `mod.rs` so the composition root only decides *when*
//! these run; *what* they are is here. Both must be built inside the control runtime.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Config, ProxyMode};
use crate::grpc::GrpcTarget;
use crate::identity::{BuiltinCa, CaClient, CaClientConfig, IstioCaClient};
use crate::lifecycle::Readiness;
use crate::state::StateWriter;
use crate::xds::{NodeInfo, XdsClient, XdsConfig};

/// The xDS client, or `None` when `XDS_ADDRESS=""` (local config only).
pub fn xds_client(
    config: &Config,
    writer: StateWriter,
    readiness: &Readiness,
) -> Option<XdsClient> {
    let address = config.xds_address.clone()?;
    let cfg = XdsConfig {
        target: GrpcTarget {
            address,
            root_cert: config.xds_root_ca.clone(),
            alt_hostname: config.alt_xds_hostname.clone(),
            auth_token: config.auth_token.clone(),
            cluster_id: config.cluster_id.clone(),
            headers: config.xds_headers.clone(),
        },
        node: NodeInfo::ztunnel(
            &config.instance_ip,
            &config.pod_name,
            &config.pod_namespace,
            &config.node_name,
        )
        .with_proxy_metadata(&config.proxy_metadata),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_secs(15),
    };
    Some(XdsClient::new(cfg, writer, readiness))
}

/// The certificate issuer for the `SecretManager`.
pub fn ca_client(config: &Config) -> anyhow::Result<Arc<dyn CaClient>> {
    match (&config.ca_address, config.fake_ca) {
        (Some(address), false) => {
            let client = IstioCaClient::new(CaClientConfig {
                target: GrpcTarget {
                    address: address.clone(),
                    root_cert: config.ca_root_ca.clone(),
                    alt_hostname: config.alt_ca_hostname.clone(),
                    auth_token: config.auth_token.clone(),
                    cluster_id: config.cluster_id.clone(),
                    headers: config.ca_headers.clone(),
                },
                secret_ttl: config.secret_ttl,
                impersonate: config.proxy_mode == ProxyMode::Shared,
            })
            .with_context(|| format!("CA client for {address}"))?;
            Ok(Arc::new(client))
        }
        _ => {
            let ca = BuiltinCa::load_or_create(&config.ca_dir, config.secret_ttl)
                .with_context(|| format!("built-in CA in {}", config.ca_dir.display()))?;
            Ok(Arc::new(ca))
        }
    }
}
