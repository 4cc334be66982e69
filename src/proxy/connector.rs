//! Opens outbound HBONE connections for the pool: TCP with the proxy's socket options, then
//! mutual TLS with the source workload's certificate, verifying the destination's identity.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::hbone::{BoxedIo, ConnectStage, Connector, HboneError, PoolKey};
use crate::metrics::{DirectionLabel, HboneTransportLabel, TransportLabels};
use crate::tls;

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
    ) -> Pin<Box<dyn Future<Output = Result<BoxedIo, HboneError>> + Send + '_>> {
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
                HboneError::connect_at(key.dst, ConnectStage::Tls, format!("TLS: {e}"))
            })?;
            pi.metrics.hbone_connections_opened.inc();
            pi.metrics
                .hbone_connections
                .get_or_create(&TransportLabels {
                    transport: HboneTransportLabel::h2,
                    direction: DirectionLabel::outbound,
                })
                .inc();
            Ok(Box::new(tls) as BoxedIo)
        })
    }
}
