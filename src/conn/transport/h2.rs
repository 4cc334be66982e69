//! Opens outbound HBONE connections for the pool: TCP with the proxy's socket options, then
//! mutual TLS with the source workload's certificate, verifying the destination's identity.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::hbone::{BoxedIo, ConnectStage, Connected, Connector, CutWhen, HboneError, PoolKey};
use crate::metrics::{DirectionLabel, HboneTransportLabel, Reporter, TransportLabels};
use crate::tls::{self, PeerRole};

use super::revocation::watch_peer;
use super::{ProxyInputs, socket};

pub(super) struct TlsConnector {
    inputs: Arc<ProxyInputs>,
}

impl TlsConnector {
    pub(super) fn new(inputs: Arc<ProxyInputs>) -> Self {
        TlsConnector { inputs }
    }
}

impl Connector for TlsConnector {
    fn connect(
        &self,
        key: &PoolKey,
    ) -> Pin<Box<dyn Future<Output = Result<Connected, HboneError>> + Send + '_>> {
        let key = key.clone();
        Box::pin(async move {
            let pi = &self.inputs;
            let cert = pi.certs.fetch(&key.src_id).await.map_err(|e| {
                let msg = format!("certificate for {}: {e}", key.src_id);
                HboneError::connect_at(key.dst, ConnectStage::Identity, msg)
            })?;
            let config = cert
                .client_config(&key.expected)
                .map_err(|e| HboneError::connect_at(key.dst, ConnectStage::Tls, e))?;
            let tcp = socket::connect(key.dst, None, &pi.cfg.socket)
                .await
                .map_err(|e| {
                    // A dropped SYN (what a network policy does) ends in a timeout, ours or
                    // the kernel's.
                    let stage = match &e {
                        socket::ConnectError::Timeout { .. } => ConnectStage::TcpTimeout,
                        socket::ConnectError::Io { source, .. }
                            if source.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            ConnectStage::TcpTimeout
                        }
                        _ => ConnectStage::Tcp,
                    };
                    HboneError::connect_at(key.dst, stage, e)
                })?;
            let tls = tls::connect(config, tcp).await.map_err(|e| {
                if e.is_revoked() {
                    pi.metrics.crl_rejected(Reporter::Source);
                }
                HboneError::connect_at(key.dst, ConnectStage::Tls, format!("TLS: {e}"))
            })?;
            // The pooled connection is cut when a CRL reload revokes the server (revocation.rs).
            let cut_when: Option<CutWhen> = cert.policy().crl.as_ref().and_then(|_| {
                let conn = tls.get_ref().1;
                let server = tls::peer_identity(conn).ok()?;
                let (revoked, _) = watch_peer(
                    &pi.metrics,
                    &cert,
                    conn.peer_certificates(),
                    PeerRole::Server,
                    (key.dst, &server),
                );
                Some(Box::pin(async move { revoked.await.to_string() }) as CutWhen)
            });
            pi.metrics.hbone_connections_opened.inc();
            pi.metrics
                .hbone_connections
                .get_or_create(&TransportLabels {
                    transport: HboneTransportLabel::h2,
                    direction: DirectionLabel::outbound,
                })
                .inc();
            Ok(Connected {
                io: Box::new(tls) as BoxedIo,
                cut_when,
            })
        })
    }
}
