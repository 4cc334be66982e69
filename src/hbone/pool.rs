//! The HBONE client connection pool (wire.md §2.1 "Connection pooling").
//!
//! Connections are shared per [`PoolKey`] (source identity and IP, destination, expected peer
//! identities). Invariants:
//! - Opening a connection for a key happens under that key's async mutex, so a burst of first
//!   requests opens one connection, not one each.
//! - A connection carries at most `min(pool_max_streams_per_conn, peer's
//!   SETTINGS_MAX_CONCURRENT_STREAMS)` streams; a stream slot is taken under the key's
//!   connection-list lock, so concurrent requests never overshoot.
//! - A connection with no streams for `pool_idle_timeout` is closed by its reaper task, and
//!   closed or broken connections are evicted and never handed out.
//! - No lock is held across an `.await` except the per-key async connect mutex.
//!
//! Lock order: the key map, then a key's connection list.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::core::Identity;

use super::client::{CutWhen, H2Client, StreamSlot, handshake_until};
use super::headers::ConnectRequest;
use super::stream::H2Stream;
use super::{H2Config, HboneError};

/// What makes two requests able to share a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src_id: Identity,
    pub src_ip: IpAddr,
    pub dst: SocketAddr,
    /// Identities the peer may present; sorted and deduplicated, so order does not matter.
    pub expected: Vec<Identity>,
}

/// A transport the pool can run HTTP/2 over.
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

/// A boxed transport (TCP + TLS in production).
pub type BoxedIo = Box<dyn AsyncReadWrite>;

/// An opened transport, and optionally the signal that must close the connection over it.
pub struct Connected {
    pub io: BoxedIo,
    pub cut_when: Option<CutWhen>,
}

impl From<BoxedIo> for Connected {
    fn from(io: BoxedIo) -> Self {
        Connected { io, cut_when: None }
    }
}

/// Opens the transport (TCP + TLS, verifying `key.expected`) for a key. Implemented by the
/// caller so this module stays independent of TLS.
pub trait Connector: Send + Sync + 'static {
    fn connect(
        &self,
        key: &PoolKey,
    ) -> Pin<Box<dyn Future<Output = Result<Connected, HboneError>> + Send + '_>>;
}

/// The pool. Clones share it.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    cfg: H2Config,
    connector: Arc<dyn Connector>,
    keys: Mutex<HashMap<PoolKey, Arc<KeyEntry>>>,
    opened: AtomicU64,
    shut: AtomicBool,
}

/// One key's connections.
#[derive(Default)]
struct KeyEntry {
    /// Held while opening a connection for this key.
    connect: tokio::sync::Mutex<()>,
    conns: Mutex<Vec<H2Client>>,
}

// === impl PoolKey ===

impl PoolKey {
    /// Builds a key; `expected` is sorted and deduplicated so equal sets make equal keys.
    pub fn new(
        src_id: Identity,
        src_ip: IpAddr,
        dst: SocketAddr,
        mut expected: Vec<Identity>,
    ) -> Self {
        expected.sort();
        expected.dedup();
        PoolKey {
            src_id,
            src_ip,
            dst,
            expected,
        }
    }
}

// === impl Pool ===

impl Pool {
    pub fn new(cfg: H2Config, connector: Arc<dyn Connector>) -> Pool {
        Pool {
            inner: Arc::new(PoolInner {
                cfg,
                connector,
                keys: Mutex::new(HashMap::new()),
                opened: AtomicU64::new(0),
                shut: AtomicBool::new(false),
            }),
        }
    }

    /// Sends a CONNECT for `key` on a pooled connection, opening one if none has room.
    pub async fn send(&self, key: &PoolKey, req: &ConnectRequest) -> Result<H2Stream, HboneError> {
        let (client, slot, fresh) = self.checkout(key).await?;
        match client.connect_with(req, slot).await {
            // A reused connection may have died (or started draining) before its driver noticed;
            // the request never reached a peer that acted on it, so one retry on a new
            // connection is safe. The old connection keeps serving the streams it has.
            Err(e) if !fresh && is_connection_failure(&e) => {
                tracing::debug!(error = %e, dst = %key.dst, "pooled connection failed, retrying");
                client.stop_reuse();
                let (client, slot, _) = self.checkout(key).await?;
                client.connect_with(req, slot).await
            }
            r => r,
        }
    }

    /// Makes sure `key` has a connection with room for a stream, opening one if needed, and
    /// sends nothing on it. A caller racing transports warms first and sends its CONNECT only
    /// on the winner, so the loser never reaches the destination app.
    pub async fn warm(&self, key: &PoolKey) -> Result<(), HboneError> {
        // The reserved slot is released on drop; the connection stays pooled.
        self.checkout(key).await.map(drop)
    }

    /// Connections ever opened (successful handshakes).
    pub fn connections_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    /// Connections in the pool that are still open.
    pub fn connections_open(&self) -> usize {
        let keys = lock(&self.inner.keys);
        keys.values()
            .map(|e| lock(&e.conns).iter().filter(|c| !c.is_closed()).count())
            .sum()
    }

    /// Keys the pool currently tracks (tests check that finished keys are dropped).
    #[cfg(test)]
    pub(crate) fn keys_tracked(&self) -> usize {
        lock(&self.inner.keys).len()
    }

    /// Closes every pooled connection; later `send`s fail with [`HboneError::PoolClosed`].
    pub fn shutdown(&self) {
        self.inner.shut.store(true, Ordering::Release);
        let keys = std::mem::take(&mut *lock(&self.inner.keys));
        for entry in keys.values() {
            for c in lock(&entry.conns).drain(..) {
                c.close();
            }
        }
    }

    /// A connection with a stream slot taken; `fresh` when it was opened for this call.
    async fn checkout(&self, key: &PoolKey) -> Result<(H2Client, StreamSlot, bool), HboneError> {
        if self.inner.shut.load(Ordering::Acquire) {
            return Err(HboneError::PoolClosed);
        }
        // Keys built without `PoolKey::new` may list identities in any order.
        let normalized;
        let key = if key.expected.windows(2).all(|w| w[0] < w[1]) {
            key
        } else {
            normalized = PoolKey::new(
                key.src_id.clone(),
                key.src_ip,
                key.dst,
                key.expected.clone(),
            );
            &normalized
        };
        let entry = {
            let mut keys = lock(&self.inner.keys);
            match keys.get(key) {
                Some(e) => e.clone(),
                None => keys.entry(key.clone()).or_default().clone(),
            }
        };
        if let Some((c, slot)) = entry.try_reserve() {
            return Ok((c, slot, false));
        }
        let _opening = entry.connect.lock().await;
        // Someone may have opened a connection while we waited for the mutex.
        if let Some((c, slot)) = entry.try_reserve() {
            return Ok((c, slot, false));
        }
        // Boxed: the handshake's state is large and needed once per connection, not in the
        // task of every stream that goes through here.
        let opened = Box::pin(async {
            let c = self.inner.connector.connect(key).await?;
            handshake_until(c.io, &self.inner.cfg, c.cut_when).await
        });
        let client = match opened.await {
            Ok(c) => c,
            Err(e) => {
                drop(_opening);
                self.inner.forget_if_unused(key, &entry);
                return Err(e);
            }
        };
        self.inner.opened.fetch_add(1, Ordering::Relaxed);
        let slot = client
            .try_reserve(client.stream_limit())
            .ok_or(HboneError::ConnectionClosed)?;
        if self.inner.shut.load(Ordering::Acquire) {
            client.close();
            return Err(HboneError::PoolClosed);
        }
        lock(&entry.conns).push(client.clone());
        tokio::spawn(reap(
            Arc::downgrade(&self.inner),
            key.clone(),
            entry.clone(),
            client.clone(),
        ));
        Ok((client, slot, true))
    }
}

fn is_connection_failure(e: &HboneError) -> bool {
    match e {
        HboneError::ConnectionClosed | HboneError::Io(_) => true,
        HboneError::H2(e) => {
            // REFUSED_STREAM promises the peer did not process the request (RFC 9113 §8.7).
            e.is_io() || e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM)
        }
        _ => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data inconsistent (each
    // critical section is a single push/retain/lookup), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// === impl KeyEntry ===

impl KeyEntry {
    /// Takes a stream slot on a live connection with room, evicting closed ones on the way.
    fn try_reserve(&self) -> Option<(H2Client, StreamSlot)> {
        let mut conns = lock(&self.conns);
        conns.retain(|c| !c.is_closed());
        conns
            .iter()
            .find_map(|c| c.try_reserve(c.stream_limit()).map(|s| (c.clone(), s)))
    }
}

/// Watches one pooled connection: closes it after `pool_idle_timeout` without streams, and
/// removes it from the pool once closed (and the key, when that was its last connection).
async fn reap(pool: Weak<PoolInner>, key: PoolKey, entry: Arc<KeyEntry>, client: H2Client) {
    let Some(idle_timeout) = pool.upgrade().map(|p| p.cfg.pool_idle_timeout) else {
        return;
    };
    let mut state = client.subscribe();
    loop {
        let (idle, draining) = match state.wait_for(|s| s.closed || s.streams == 0).await {
            Ok(s) => (!s.closed, s.draining),
            Err(_) => (false, false),
        };
        if !idle {
            break;
        }
        if draining {
            // It will never be handed out again: close it as soon as its last stream ends.
            let _conns = lock(&entry.conns);
            if client.close_if_idle() {
                break;
            }
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(idle_timeout) => {
                // Under the list lock, so no request can take a slot in between.
                let _conns = lock(&entry.conns);
                if client.close_if_idle() {
                    break;
                }
            }
            changed = state.changed() => if changed.is_err() { break },
        }
    }
    client.close();
    if let Some(pool) = pool.upgrade() {
        pool.forget_if_unused(&key, &entry);
    }
}

// === impl PoolInner ===

impl PoolInner {
    /// Drops `key` from the map when it has no open connection and nobody but the map and the
    /// caller holds its entry, so unreachable or finished destinations do not pile up.
    fn forget_if_unused(&self, key: &PoolKey, entry: &Arc<KeyEntry>) {
        let mut keys = lock(&self.keys);
        let now_empty = {
            let mut conns = lock(&entry.conns);
            conns.retain(|c| !c.is_closed());
            conns.is_empty()
        };
        // Entries are cloned out of the map only under the map lock, so this count is stable.
        if now_empty
            && Arc::strong_count(entry) == 2
            && keys.get(key).is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            keys.remove(key);
        }
    }
}
