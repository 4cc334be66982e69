//! The HBONE transport choice: HTTP/2 over TLS/TCP (the default, what ztunnel speaks) or
//! HTTP/3 over QUIC, per node (`AMBIT_HBONE_TRANSPORT=h2|h3|auto`).
//!
//! Outbound, [`Transports::open`] picks the transport for a peer. In `auto` it tries QUIC first;
//! when no QUIC handshake completes (UDP dropped, or a peer without QUIC such as ztunnel) it
//! remembers the peer for `fallback_ttl`, logs that once and counts it, and uses h2; while
//! remembered, the peer gets h2 straight away. A `200`-less answer (401, 503...) is the peer's
//! answer and is never retried on the other transport.
//!
//! The first connection to a peer in `auto` does not wait for the QUIC handshake timeout: the
//! handshake runs as a probe task of its own (one per QUIC pool key, shared by every connection
//! that arrives while it runs), gets `quic_head_start` alone, and then races an h2 connection
//! handshake; the CONNECT goes on whichever is ready first, QUIC when both are (the race is
//! between connections, so the loser never reaches the destination app). The probe outlives the
//! connection that started it, so its outcome (a pooled QUIC connection, or the remembered
//! fallback, logged and counted once per failed probe) serves the connections after it.
//!
//! Inbound, both transports' CONNECT requests are [`InboundTunnel`]s, so the proxy's
//! `inbound::serve_stream` (authority checks, authorization, tracking, the app connection) is one
//! code path for both.
//!
//! The whole abstraction is here: this file holds the vocabulary ([`HboneTransport`],
//! [`Tunnel`], [`InboundTunnel`]) and the outbound choice; `h2.rs` and `h3.rs` adapt each
//! transport to it (the h2 pool's TLS connector, each inbound request type, each transport's
//! stream halves as the copy's chunk source and sink). The wire protocols themselves are
//! [`crate::hbone`] and [`crate::quic`].

pub(crate) mod h2;
mod h3;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::core::Authority;
use crate::hbone::{Baggage, ConnectRequest, H2Stream, HboneError, Pool, PoolKey};
use crate::metrics::{DirectionLabel, HboneTransportLabel, ProxyMetrics, TransportLabels};
use crate::quic::{self, H3Recv, H3Send, QuicConfig, QuicError, QuicKey, QuicPool};

use h3::h3_request;

use super::copy::{ChunkSink, ChunkSource};

/// Which transport a node uses for outbound HBONE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HboneTransport {
    /// HTTP/2 over TLS/TCP only (ztunnel's wire protocol).
    #[default]
    H2,
    /// HTTP/3 over QUIC only.
    H3,
    /// QUIC first, h2 when no QUIC handshake completes.
    Auto,
}

/// The proxy's transport settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    pub mode: HboneTransport,
    /// How long a peer that did not complete a QUIC handshake gets h2 without another try.
    pub fallback_ttl: Duration,
    /// In `auto`, how long a first connection to a peer waits for the QUIC handshake alone
    /// before it also tries h2 (and takes whichever is ready first).
    pub quic_head_start: Duration,
    pub quic: QuicConfig,
}

/// A value of `AMBIT_HBONE_TRANSPORT` that is none of `h2`, `h3`, `auto`.
#[derive(Debug, thiserror::Error)]
#[error("unknown HBONE transport {0:?} (expected h2, h3 or auto)")]
pub struct UnknownTransport(pub String);

/// Why an outbound tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    H2(#[from] HboneError),
    #[error(transparent)]
    H3(#[from] QuicError),
}

/// An open outbound tunnel on either transport. Lives on the connection task's stack only until
/// it is split into the copy, so the size difference between variants costs nothing lasting.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Tunnel {
    H2(H2Stream),
    H3(H3Recv, H3Send),
}

/// Outbound transport selection: the two pools and the peers `auto` fell back for.
pub(crate) struct Transports {
    h2: Pool,
    h3: Option<QuicPool>,
    mode: HboneTransport,
    quic_head_start: Duration,
    fallbacks: Arc<Fallbacks>,
    /// QUIC handshakes `auto` runs in the background, per QUIC pool key; an entry lives until
    /// its outcome is recorded (a pooled connection or a remembered fallback).
    probes: Arc<Mutex<HashMap<QuicKey, watch::Receiver<Probe>>>>,
    /// The QUIC pool's opened-connection count already added to the metrics.
    h3_opened_counted: AtomicU64,
    metrics: ProxyMetrics,
}

/// The peers (their HBONE address) `auto` sends over h2, each until the instant stored.
struct Fallbacks {
    /// Locked only for map operations.
    until: Mutex<HashMap<SocketAddr, Instant>>,
    ttl: Duration,
    metrics: ProxyMetrics,
}

/// Where an `auto` QUIC handshake probe stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Pending,
    /// The pool holds a connection to the peer.
    Up,
    /// No handshake: the peer is remembered for h2.
    Down,
    /// Failed for a reason that says nothing about the peer's QUIC (no certificate...); the
    /// connection tries QUIC itself and reports what it gets.
    Failed,
}

/// A CONNECT request received on either transport, as `inbound::serve_stream` handles it.
pub(crate) trait InboundTunnel: Send + 'static {
    type Recv: ChunkSource + 'static;
    type Send: ChunkSink + 'static;
    const TRANSPORT: HboneTransportLabel;
    fn authority(&self) -> &Authority;
    /// The `host=` of the request's `forwarded` header: the service a client addressed.
    fn forwarded_host(&self) -> Option<String>;
    /// The request's `x-forwarded-network`: the source's network on double HBONE's inner CONNECT.
    fn forwarded_network(&self) -> Option<String>;
    /// The request's `baggage`: what the source says about itself.
    fn baggage(&self) -> Option<Baggage>;
    fn reject(self, status: StatusCode) -> impl Future<Output = ()> + Send;
    /// Answers `200`, with `baggage` (the destination's) when given.
    fn accept(
        self,
        baggage: Option<&Baggage>,
    ) -> impl Future<Output = Result<(Self::Recv, Self::Send), String>> + Send;
}

// === impl HboneTransport ===

impl FromStr for HboneTransport {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "h2" | "" => Ok(HboneTransport::H2),
            "h3" | "quic" => Ok(HboneTransport::H3),
            "auto" => Ok(HboneTransport::Auto),
            _ => Err(UnknownTransport(s.to_string())),
        }
    }
}

impl HboneTransport {
    /// Whether this node runs QUIC at all (client and the UDP 15008 server).
    pub fn quic_enabled(self) -> bool {
        self != HboneTransport::H2
    }
}

// === impl TransportConfig ===

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            mode: HboneTransport::H2,
            fallback_ttl: Duration::from_secs(60),
            // A few LAN round trips: a QUIC peer completes its handshake well inside it, so h2
            // is only tried for peers that are slow or not speaking QUIC.
            quic_head_start: Duration::from_millis(75),
            quic: QuicConfig::default(),
        }
    }
}

// === impl Transports ===

impl Transports {
    pub(crate) fn new(
        h2: Pool,
        h3: Option<QuicPool>,
        cfg: &TransportConfig,
        metrics: ProxyMetrics,
    ) -> Self {
        Transports {
            h2,
            h3,
            mode: cfg.mode,
            quic_head_start: cfg.quic_head_start,
            fallbacks: Arc::new(Fallbacks {
                until: Mutex::new(HashMap::new()),
                ttl: cfg.fallback_ttl,
                metrics: metrics.clone(),
            }),
            probes: Arc::default(),
            h3_opened_counted: AtomicU64::new(0),
            metrics,
        }
    }

    pub(crate) fn h2_pool(&self) -> &Pool {
        &self.h2
    }

    /// Opens a tunnel for `req` to the peer of `key` on the transport chosen for it.
    pub(crate) async fn open(
        &self,
        key: &PoolKey,
        req: &ConnectRequest,
    ) -> Result<Tunnel, TransportError> {
        let quic = match (&self.h3, self.mode) {
            (Some(q), HboneTransport::H3) => q,
            (Some(q), HboneTransport::Auto) if !self.fallbacks.remembered(key.dst) => q,
            _ => return self.open_h2(key, req).await,
        };
        // Built once per connection: every QUIC step below takes it by reference.
        let qkey = QuicKey::new(key.src_id.clone(), key.dst, key.expected.clone());
        match self.mode {
            HboneTransport::Auto => self.open_auto(quic, &qkey, key, req).await,
            _ => self.open_h3(quic, &qkey, key, req).await,
        }
    }

    /// `auto` towards a peer not remembered for h2: QUIC at once when the pool has a connection,
    /// else the probe's head start and then the race (see the module doc).
    async fn open_auto(
        &self,
        quic: &QuicPool,
        qkey: &QuicKey,
        key: &PoolKey,
        req: &ConnectRequest,
    ) -> Result<Tunnel, TransportError> {
        if quic.is_ready(qkey) {
            return self.open_h3(quic, qkey, key, req).await;
        }
        let mut probe = self.probe(quic, qkey);
        if let Ok(outcome) = tokio::time::timeout(self.quic_head_start, settled(&mut probe)).await {
            return match outcome {
                Probe::Down => self.open_h2(key, req).await,
                _ => self.open_h3(quic, qkey, key, req).await,
            };
        }
        // h2 races at the connection level: the CONNECT is sent only on the winner, so a lost
        // race never opens (and resets) a connection to the destination app.
        let h2_ready = self.h2.warm(key);
        tokio::pin!(h2_ready);
        tokio::select! {
            // Polled first, so QUIC wins a tie. Dropping an h2 handshake still under way
            // abandons it; one that completed stays pooled.
            biased;
            outcome = settled(&mut probe) => match outcome {
                Probe::Down => {
                    (&mut h2_ready).await?;
                    self.open_h2(key, req).await
                }
                _ => self.open_h3(quic, qkey, key, req).await,
            },
            ready = &mut h2_ready => match ready {
                Ok(()) => self.open_h2(key, req).await,
                // h2 failing (say a QUIC-only peer refusing TCP) says nothing about QUIC: the
                // probe decides.
                Err(e) => match settled(&mut probe).await {
                    Probe::Down => Err(e.into()),
                    _ => self.open_h3(quic, qkey, key, req).await,
                },
            },
        }
    }

    /// The running handshake probe for `qkey`, started if there is none.
    fn probe(&self, quic: &QuicPool, qkey: &QuicKey) -> watch::Receiver<Probe> {
        let mut probes = lock(&self.probes);
        if let Some(rx) = probes.get(qkey) {
            return rx.clone();
        }
        let qkey = qkey.clone();
        let (tx, rx) = watch::channel(Probe::Pending);
        probes.insert(qkey.clone(), rx.clone());
        drop(probes);
        let (quic, probes, fallbacks) = (quic.clone(), self.probes.clone(), self.fallbacks.clone());
        tokio::spawn(async move {
            let outcome = match quic.warm(&qkey).await {
                Ok(()) => Probe::Up,
                Err(e) if e.is_handshake_failure() => {
                    fallbacks.fall_back(qkey.dst, &e);
                    Probe::Down
                }
                Err(e) => {
                    tracing::debug!(peer = %qkey.dst, error = %e, "QUIC probe failed");
                    Probe::Failed
                }
            };
            // The outcome is recorded (pool or fallback) before the entry goes, so a connection
            // arriving in between neither starts a second handshake nor misses the result.
            lock(&probes).remove(&qkey);
            let _ = tx.send(outcome);
        });
        rx
    }

    /// A tunnel over QUIC; in `auto`, a handshake failure (a pooled connection that died and
    /// could not be replaced) falls back to h2 as a failed probe does.
    async fn open_h3(
        &self,
        quic: &QuicPool,
        qkey: &QuicKey,
        key: &PoolKey,
        req: &ConnectRequest,
    ) -> Result<Tunnel, TransportError> {
        let request = h3_request(req).map_err(QuicError::from)?;
        let sent = quic.send(qkey, request).await;
        self.count_h3_connections(quic);
        if let Err(QuicError::Tls {
            by: quic::RefusedBy::Local,
            error,
            ..
        }) = &sent
            && error.is_revoked()
        {
            self.metrics.crl_rejected(crate::metrics::Reporter::Source);
        }
        match sent {
            Ok((recv, send, _headers)) => {
                self.count_stream(HboneTransportLabel::h3);
                Ok(Tunnel::H3(recv, send))
            }
            Err(e) if self.mode == HboneTransport::Auto && e.is_handshake_failure() => {
                self.fallbacks.fall_back(key.dst, &e);
                self.open_h2(key, req).await
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn open_h2(&self, key: &PoolKey, req: &ConnectRequest) -> Result<Tunnel, TransportError> {
        let stream = self.h2.send(key, req).await?;
        self.count_stream(HboneTransportLabel::h2);
        Ok(Tunnel::H2(stream))
    }

    /// Adds the QUIC connections opened since the last call (exact over time, whichever
    /// request's call sees them).
    fn count_h3_connections(&self, quic: &QuicPool) {
        let now = quic.connections_opened();
        let before = self.h3_opened_counted.fetch_max(now, Ordering::AcqRel);
        if now > before {
            self.metrics
                .hbone_connections
                .get_or_create(&TransportLabels {
                    transport: HboneTransportLabel::h3,
                    direction: DirectionLabel::outbound,
                })
                .inc_by(now - before);
        }
    }

    pub(crate) fn count_stream(&self, transport: HboneTransportLabel) {
        self.metrics
            .hbone_streams
            .get_or_create(&TransportLabels {
                transport,
                direction: DirectionLabel::outbound,
            })
            .inc();
    }
}

/// The probe's outcome once it has one; a probe task gone without one (runtime shutdown) counts
/// as `Failed`.
async fn settled(probe: &mut watch::Receiver<Probe>) -> Probe {
    match probe.wait_for(|p| *p != Probe::Pending).await {
        Ok(p) => *p,
        Err(_) => Probe::Failed,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Fallbacks ===

impl Fallbacks {
    fn remembered(&self, peer: SocketAddr) -> bool {
        let mut map = lock(&self.until);
        match map.get(&peer) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(&peer);
                tracing::info!(%peer, "trying HBONE over QUIC again");
                false
            }
            None => false,
        }
    }

    /// Remembers `peer` for h2 and counts it; logs only when the peer was not already
    /// remembered, so connections that all saw the same failed handshake log once.
    fn fall_back(&self, peer: SocketAddr, e: &QuicError) {
        let until = Instant::now() + self.ttl;
        let fresh = lock(&self.until)
            .insert(peer, until)
            .is_none_or(|old| old <= Instant::now());
        self.metrics.hbone_transport_fallbacks.inc();
        if fresh {
            tracing::warn!(
                %peer,
                error = %e,
                remember = ?self.ttl,
                "no QUIC handshake with peer, falling back to HBONE over h2"
            );
        }
    }
}

// === impl Tunnel ===

impl Tunnel {
    /// The `baggage` of the peer's `200` (h2; QUIC responses are not read for it).
    pub(crate) fn response_baggage(&self) -> Option<&Baggage> {
        match self {
            Tunnel::H2(s) => s.response_baggage(),
            Tunnel::H3(..) => None,
        }
    }
}

// === impl InboundTunnel ===

#[cfg(test)]
mod tests;
