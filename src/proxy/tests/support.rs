//! Fixtures shared by the proxy's unit tests: proxy inputs over a given state, with a
//! certificate provider that is never asked (these tests route or connect plain TCP).

use std::sync::Arc;

use crate::core::Identity;
use crate::proxy::*;
use crate::state::StateView;
use crate::tls::CertProvider;
use crate::tls::{TlsError, WorkloadCertificate};

/// Refuses every certificate request.
pub(super) struct NoCerts;

impl CertProvider for NoCerts {
    fn fetch(
        &self,
        id: &Identity,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Arc<WorkloadCertificate>, TlsError>>
                + Send
                + '_,
        >,
    > {
        let id = id.clone();
        Box::pin(async move {
            Err(TlsError::CertificateUnavailable {
                identity: id,
                reason: "no certificates in this test".into(),
            })
        })
    }
}

pub(super) fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

/// Inputs of a proxy serving `ns/name` (service account = name) over `state`.
pub(super) fn inputs(
    state: StateView,
    ns: &str,
    name: &str,
    outlier: OutlierConfig,
) -> ProxyInputs {
    ProxyInputs {
        cfg: Arc::new(ProxyConfig {
            outbound_addr: "127.0.0.1:0".parse().unwrap(),
            inbound_addr: "127.0.0.1:0".parse().unwrap(),
            inbound_plaintext_addr: "127.0.0.1:0".parse().unwrap(),
            network: String::new(),
            socket: SocketOptions::default(),
            orig_src: false,
            reuse_port: false,
            h2: Default::default(),
            transport: Default::default(),
            hbone_port: 15008,
            outlier,
            localhost_app_tunnel: true,
            response_baggage: true,
            handshake: Default::default(),
            on_demand_dns: Default::default(),
        }),
        local: LocalWorkload {
            namespace: ns.into(),
            name: name.into(),
            default_identity: id(ns, name),
        },
        state,
        certs: Arc::new(NoCerts),
        metrics: Default::default(),
    }
}
