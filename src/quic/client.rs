//! The client side of HBONE over QUIC: one QUIC connection per [`QuicKey`], each outbound
//! connection an HTTP/3 CONNECT stream on it.
//!
//! Invariants:
//! - Opening a connection for a key happens under that key's async mutex, so a burst of first
//!   requests opens one connection, not one each.
//! - A stream slot is reserved when a connection is checked out (a compare-and-increment against
//!   the stream limit), not when the stream is opened: otherwise a burst of checkouts all see
//!   room on the same connection, overshoot the peer's limit and wait for stream credit that a
//!   set of long-lived tunnels never gives back. The reservation ([`StreamGuard`]) is released
//!   when the request fails or when both halves of its stream are dropped.
//! - Each connection takes the source identity's current certificate when it is opened, so a
//!   rotation reaches the next connection; a closed connection is never handed out again.
//! - A connection with no streams for a whole `pool_idle_timeout` is closed by its reaper.
//! - No lock is held across an `.await` except the per-key async connect mutex.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};

use crate::core::Identity;
use crate::tls::{CertProvider, PeerRole, Revoked, chain_identity};

use super::endpoint::{client_config, peer_chain};
use super::handshake::handshake_error;
use super::stream::{H3Recv, H3Send, client_halves};
use super::{QuicConfig, QuicError};

/// What makes two requests able to share a QUIC connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QuicKey {
    pub src_id: Identity,
    pub dst: SocketAddr,
    /// Identities the peer may present; sorted and deduplicated.
    pub expected: Vec<Identity>,
}

/// The pool. Clones share it.
#[derive(Clone)]
pub struct QuicPool {
    inner: Arc<PoolInner>,
}

/// Told about every pooled connection closed because a CRL reload revoked its server.
/// Arguments: the revocation, the server's address, and the identity it presented.
pub type RevokedHook = Arc<dyn Fn(&Revoked, SocketAddr, Option<&Identity>) + Send + Sync>;

struct PoolInner {
    cfg: QuicConfig,
    endpoint: quinn::Endpoint,
    certs: Arc<dyn CertProvider>,
    revoked: Option<RevokedHook>,
    keys: Mutex<HashMap<QuicKey, Arc<KeyEntry>>>,
    opened: AtomicU64,
    shut: AtomicBool,
}

#[derive(Default)]
struct KeyEntry {
    /// Held while opening a connection; guards `attempts` and `last_failure`.
    connect: tokio::sync::Mutex<Attempts>,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Connections replaced at their stream limit, kept until their last stream ends: dropping
    /// the last request handle of an HTTP/3 connection closes it.
    full: Mutex<Vec<Arc<Conn>>>,
}

/// Handshake attempts of one key. A request that waited for someone else's handshake and saw it
/// fail gets that failure at once instead of waiting out its own timeout: towards a peer whose
/// UDP is dropped, a burst of requests costs one timeout, not one each.
#[derive(Default)]
struct Attempts {
    count: u64,
    last_failure: Option<String>,
}

struct Conn {
    quic: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    usage: Arc<Usage>,
    /// Set when the peer stopped taking new requests (GOAWAY) or the connection failed; the
    /// streams already on it run to their end, new requests go to a new connection.
    retired: AtomicBool,
}

#[derive(Default)]
struct Usage {
    streams: AtomicUsize,
    /// Set when a stream is opened; the reaper clears it each period.
    used: AtomicBool,
    /// Why the connection was closed for a revoked server, set before it is closed.
    cut: std::sync::OnceLock<String>,
}

/// Reads why a stream's connection was closed for a revoked server, if it was.
#[derive(Clone)]
pub struct CutProbe(Arc<Usage>);

impl CutProbe {
    pub fn reason(&self) -> Option<&str> {
        self.0.cut.get().map(String::as_str)
    }
}

impl StreamGuard {
    pub(crate) fn cut_probe(&self) -> CutProbe {
        CutProbe(self.usage.clone())
    }
}

/// A live stream's share of its connection; dropping it gives the share back.
pub(crate) struct StreamGuard {
    usage: Arc<Usage>,
}

// === impl QuicKey ===

impl QuicKey {
    /// Builds a key; `expected` is sorted and deduplicated so equal sets make equal keys.
    pub fn new(src_id: Identity, dst: SocketAddr, mut expected: Vec<Identity>) -> Self {
        expected.sort();
        expected.dedup();
        QuicKey {
            src_id,
            dst,
            expected,
        }
    }
}

// === impl QuicPool ===

impl QuicPool {
    /// A pool opening its connections from `endpoint` with certificates from `certs`.
    pub fn new(cfg: QuicConfig, endpoint: quinn::Endpoint, certs: Arc<dyn CertProvider>) -> Self {
        QuicPool {
            inner: Arc::new(PoolInner {
                cfg,
                endpoint,
                certs,
                revoked: None,
                keys: Mutex::new(HashMap::new()),
                opened: AtomicU64::new(0),
                shut: AtomicBool::new(false),
            }),
        }
    }

    /// Calls `hook` for each connection closed because its server was revoked (to count and
    /// log it). Set before the pool is shared.
    pub fn with_revoked_hook(mut self, hook: RevokedHook) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.revoked = Some(hook);
        }
        self
    }

    /// Sends `request` (a CONNECT) on the key's connection, opening it if needed; on `200`
    /// returns the tunnel's halves and the response headers.
    pub async fn send(
        &self,
        key: &QuicKey,
        request: Request<()>,
    ) -> Result<(H3Recv, H3Send, HeaderMap), QuicError> {
        let (conn, slot, fresh) = self.checkout(key).await?;
        match conn.request(request.clone(), slot).await {
            // A reused connection may have died before we noticed; nothing reached the peer's
            // application, so one retry on a new connection is safe.
            Err(e) if !fresh && conn.refused_new_work(&e) => {
                tracing::debug!(error = %e, dst = %key.dst, "pooled QUIC connection refused a request, retrying");
                conn.retired.store(true, Ordering::Release);
                let (conn, slot, _) = self.checkout(key).await?;
                conn.request(request, slot).await
            }
            r => r,
        }
    }

    /// Opens (or reuses) the key's connection without sending a request: the handshake probe
    /// `auto` uses to learn whether a peer speaks QUIC.
    pub async fn warm(&self, key: &QuicKey) -> Result<(), QuicError> {
        self.checkout(key).await.map(|_| ())
    }

    /// Whether the key has an open connection with room for another stream right now, so a
    /// request would not wait for a handshake.
    pub fn is_ready(&self, key: &QuicKey) -> bool {
        let Some(entry) = lock(&self.inner.keys).get(key).cloned() else {
            return false;
        };
        let max_streams = self.inner.cfg.max_concurrent_streams.max(1) as usize;
        lock(&entry.conn)
            .as_ref()
            .is_some_and(|c| c.is_open() && c.usage.streams.load(Ordering::Acquire) < max_streams)
    }

    /// Connections ever opened (completed handshakes).
    pub fn connections_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// Pooled connections still open.
    pub fn connections_open(&self) -> usize {
        let keys = lock(&self.inner.keys);
        keys.values()
            .filter(|e| lock(&e.conn).as_ref().is_some_and(|c| c.is_open()))
            .count()
    }

    /// Closes every connection (CONNECTION_CLOSE); later `send`s fail with
    /// [`QuicError::PoolClosed`].
    pub fn shutdown(&self) {
        self.inner.shut.store(true, Ordering::Release);
        let keys = std::mem::take(&mut *lock(&self.inner.keys));
        for entry in keys.values() {
            if let Some(c) = lock(&entry.conn).take() {
                c.quic.close(0u32.into(), b"shutdown");
            }
            for c in lock(&entry.full).drain(..) {
                c.quic.close(0u32.into(), b"shutdown");
            }
        }
    }

    /// The key's connection with one stream slot reserved on it, and whether it was opened for
    /// this call.
    async fn checkout(&self, key: &QuicKey) -> Result<(Arc<Conn>, StreamGuard, bool), QuicError> {
        if self.inner.shut.load(Ordering::Acquire) {
            return Err(QuicError::PoolClosed);
        }
        let entry = lock(&self.inner.keys)
            .entry(key.clone())
            .or_default()
            .clone();
        let max_streams = self.inner.cfg.max_concurrent_streams.max(1) as usize;
        if let Some((c, slot)) = entry.reserve(max_streams) {
            return Ok((c, slot, false));
        }
        let seen = entry.connect.try_lock().map(|a| a.count).ok();
        let mut attempts = entry.connect.lock().await;
        // Someone else may have opened it while we waited.
        if let Some((c, slot)) = entry.reserve(max_streams) {
            return Ok((c, slot, false));
        }
        if seen.is_none_or(|n| n != attempts.count)
            && let Some(reason) = &attempts.last_failure
        {
            return Err(QuicError::Handshake {
                dst: key.dst,
                reason: reason.clone(),
            });
        }
        attempts.count += 1;
        let conn = match self.open(key).await {
            Ok(c) => Arc::new(c),
            Err(e) => {
                attempts.last_failure = Some(e.to_string());
                return Err(e);
            }
        };
        attempts.last_failure = None;
        // Reserved before the connection is published, so the requests that waited on this
        // handshake cannot take the slot this one opened it for.
        let slot = StreamGuard::first(&conn.usage);
        if let Some(old) = lock(&entry.conn).replace(conn.clone()) {
            let mut full = lock(&entry.full);
            full.retain(|c| c.is_open() && c.usage.streams.load(Ordering::Acquire) > 0);
            if old.is_open() {
                full.push(old);
            }
        }
        self.inner.opened.fetch_add(1, Ordering::Relaxed);
        spawn_reaper(conn.clone(), self.inner.cfg.pool_idle_timeout);
        Ok((conn, slot, true))
    }

    async fn open(&self, key: &QuicKey) -> Result<Conn, QuicError> {
        let inner = &self.inner;
        let cert = inner
            .certs
            .fetch(&key.src_id)
            .await
            .map_err(|e| QuicError::Certificate {
                identity: key.src_id.clone(),
                reason: e.to_string(),
            })?;
        let tls = cert
            .client_config_h3(&key.expected)
            .map_err(|e| QuicError::Config(e.to_string()))?;
        let config = client_config(tls, &inner.cfg)?;
        let handshake_failed = |reason: String| QuicError::Handshake {
            dst: key.dst,
            reason,
        };
        // The name is only for rustls' API: SNI is off and the verifier checks SPIFFE ids.
        let connecting = inner
            .endpoint
            .connect_with(config, key.dst, &key.dst.ip().to_string())
            .map_err(|e| handshake_failed(e.to_string()))?;
        let timeout = inner.cfg.handshake_timeout;
        let quic = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(handshake_error(key.dst, &e)),
            Err(_) => {
                return Err(QuicError::HandshakeTimeout {
                    dst: key.dst,
                    after: timeout,
                });
            }
        };
        // With TLS 1.3 our side of the handshake completes before the server has checked our
        // certificate; its refusal then closes the connection while HTTP/3 starts.
        let (mut driver, send) = match h3::client::builder()
            .send_grease(false)
            .build::<_, _, Bytes>(h3_quinn::Connection::new(quic.clone()))
            .await
        {
            Ok(ok) => ok,
            Err(e) => {
                return Err(match quic.close_reason() {
                    Some(reason) => match handshake_error(key.dst, &reason) {
                        tls @ QuicError::Tls { .. } => tls,
                        _ => e.into(),
                    },
                    None => e.into(),
                });
            }
        };
        let dst = key.dst;
        // Closed at once, streams and all, when a CRL reload revokes the server.
        let usage: Arc<Usage> = Arc::default();
        let chain = peer_chain(&quic);
        let server = chain.as_deref().and_then(|c| chain_identity(c).ok());
        if let Some(mut watch) = chain.and_then(|c| cert.watch_revocation(&c, PeerRole::Server)) {
            let (conn, hook, cut) = (quic.clone(), inner.revoked.clone(), usage.clone());
            tokio::spawn(async move {
                tokio::select! {
                    revoked = watch.revoked() => {
                        if let Some(hook) = hook {
                            hook(&revoked, dst, server.as_ref());
                        }
                        let _ = cut.cut.set(revoked.to_string());
                        conn.close(0u32.into(), b"peer certificate revoked");
                    }
                    _ = conn.closed() => {}
                }
            });
        }
        tokio::spawn(async move {
            let e = poll_fn(|cx| driver.poll_close(cx)).await;
            if !e.is_h3_no_error() {
                tracing::debug!(%dst, error = %e, "QUIC client connection ended");
            }
        });
        Ok(Conn {
            quic,
            send,
            usage,
            retired: AtomicBool::new(false),
        })
    }
}

/// Closes `conn` once a whole period passes with no stream on it and none opened.
fn spawn_reaper(conn: Arc<Conn>, period: std::time::Duration) {
    let weak = Arc::downgrade(&conn);
    drop(conn);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(conn) = weak.upgrade() else { return };
            if conn.quic.close_reason().is_some() {
                return;
            }
            let used = conn.usage.used.swap(false, Ordering::AcqRel);
            if !used && conn.usage.streams.load(Ordering::Acquire) == 0 {
                conn.quic.close(0u32.into(), b"idle");
                return;
            }
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl KeyEntry ===

impl KeyEntry {
    /// The key's current connection with a stream slot reserved on it, if it is open and has
    /// room. A full connection stays open for its streams (its reaper closes it once idle)
    /// while a new one takes its place, as the h2 pool opens another connection at the peer's
    /// stream limit.
    fn reserve(&self, max_streams: usize) -> Option<(Arc<Conn>, StreamGuard)> {
        let mut current = lock(&self.conn);
        match current.as_ref() {
            Some(c) if c.is_open() => {
                StreamGuard::reserve(&c.usage, max_streams).map(|slot| (c.clone(), slot))
            }
            Some(_) => {
                *current = None;
                None
            }
            None => None,
        }
    }
}

// === impl Conn ===

impl Conn {
    fn is_open(&self) -> bool {
        self.quic.close_reason().is_none() && !self.retired.load(Ordering::Acquire)
    }

    /// Whether a failed request says the connection (not the request) is the problem.
    fn refused_new_work(&self, e: &QuicError) -> bool {
        match e {
            QuicError::Connection(_) => true,
            QuicError::Stream(s) => {
                self.quic.close_reason().is_some()
                    || matches!(s, h3::error::StreamError::RemoteClosing { .. })
                    || matches!(s, h3::error::StreamError::RemoteTerminate { code, .. }
                        if *code == h3::error::Code::H3_REQUEST_REJECTED)
            }
            _ => false,
        }
    }

    /// `e`, or the TLS refusal that closed the connection under it (a server refusing our
    /// certificate after our side of the handshake completed).
    fn typed(&self, e: QuicError) -> QuicError {
        match self.quic.close_reason() {
            Some(reason) => match handshake_error(self.quic.remote_address(), &reason) {
                tls @ QuicError::Tls { .. } => tls,
                _ => e,
            },
            None => e,
        }
    }

    /// Sends `request` on a stream whose slot `guard` reserved.
    async fn request(
        &self,
        request: Request<()>,
        guard: StreamGuard,
    ) -> Result<(H3Recv, H3Send, HeaderMap), QuicError> {
        let mut send = self.send.clone();
        let mut stream = send
            .send_request(request)
            .await
            .map_err(|e| self.typed(e.into()))?;
        let response = stream
            .recv_response()
            .await
            .map_err(|e| self.typed(e.into()))?;
        if response.status() != StatusCode::OK {
            return Err(QuicError::Status(response.status()));
        }
        let (recv, send) = client_halves(stream, guard);
        Ok((recv, send, response.into_parts().0.headers))
    }
}

// === impl StreamGuard ===

impl StreamGuard {
    /// The first stream slot of a connection nobody else has seen yet.
    fn first(usage: &Arc<Usage>) -> Self {
        usage.streams.fetch_add(1, Ordering::AcqRel);
        usage.used.store(true, Ordering::Release);
        StreamGuard {
            usage: usage.clone(),
        }
    }

    /// Takes one of `max` stream slots, or `None` when all are taken.
    fn reserve(usage: &Arc<Usage>, max: usize) -> Option<Self> {
        usage
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        usage.used.store(true, Ordering::Release);
        Some(StreamGuard {
            usage: usage.clone(),
        })
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.usage.streams.fetch_sub(1, Ordering::AcqRel);
    }
}
