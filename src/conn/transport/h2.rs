//! The h2 half of the transport abstraction. Outbound, [`TlsConnector`] opens connections for
//! the h2 pool: TCP with the proxy's socket options, then mutual TLS with the source workload's
//! certificate, verifying the destination's identity. Inbound, the h2 CONNECT request is an
//! [`InboundTunnel`]; its stream halves are the copy's chunk source and sink.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::StatusCode;

use crate::core::Authority;
use crate::hbone::{
    self, Baggage, BoxedIo, ConnectStage, Connected, Connector, CutWhen, H2Recv, H2Send, H2Stream,
    HboneError, PoolKey,
};
use crate::metrics::{DirectionLabel, HboneTransportLabel, Reporter, TransportLabels};
use crate::tls::{self, PeerRole};

use super::InboundTunnel;
use crate::conn::copy::{ChunkSink, ChunkSource};
use crate::conn::revocation::watch_peer;
use crate::conn::{ProxyInputs, socket};

pub(crate) struct TlsConnector {
    inputs: Arc<ProxyInputs>,
}

impl TlsConnector {
    pub(crate) fn new(inputs: Arc<ProxyInputs>) -> Self {
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
            // The pooled connection is cut when a CRL reload revokes the server (conn/revocation.rs).
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

// === inbound: the h2 CONNECT request ===

impl InboundTunnel for hbone::InboundRequest {
    type Recv = H2Recv;
    type Send = H2Send;
    const TRANSPORT: HboneTransportLabel = HboneTransportLabel::h2;

    fn authority(&self) -> &Authority {
        &self.authority
    }

    fn forwarded_host(&self) -> Option<String> {
        self.headers.forwarded.as_ref().and_then(|f| f.host.clone())
    }

    fn forwarded_network(&self) -> Option<String> {
        self.headers.forwarded_network.clone()
    }

    fn baggage(&self) -> Option<Baggage> {
        self.headers.baggage.clone()
    }

    async fn reject(self, status: StatusCode) {
        hbone::InboundRequest::reject(self, status)
    }

    async fn accept(self, baggage: Option<&Baggage>) -> Result<(H2Recv, H2Send), String> {
        hbone::InboundRequest::accept(self, baggage)
            .map(H2Stream::split)
            .map_err(|e| e.to_string())
    }
}

// === copy: h2 halves ===

impl ChunkSource for H2Recv {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        self.poll_recv(cx)
            .map(|r| r.transpose().map_err(io::Error::other))
    }
}

impl ChunkSink for H2Send {
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        self.poll_send(cx, chunk).map_err(io::Error::other)
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(H2Send::finish(self).map_err(io::Error::other))
    }
}
