//! The live inbound connections of one proxy, and their re-authorization when the state changes.
//!
//! Every inbound connection (HBONE stream or plaintext) registers before it is authorized and
//! stays registered until its task ends ([`Registration`] unregisters on drop). On every state
//! version, [`watch_policies`] checks each registered connection again against the new snapshot
//! and tells the ones now denied to close, through a one-shot channel the connection task
//! `select!`s on; the task then logs and counts the closure.
//!
//! Outbound connections register too ([`ConnectionTracker::track_outbound`]), so that
//! `/config_dump` can list them ([`ConnectionTracker::inbound`], [`ConnectionTracker::outbound`]:
//! read-only copies); policy changes never close them.
//!
//! The same channel carries the drain deadline: [`close_at_drain_deadline`] tells every
//! registered connection, inbound and outbound, to close when the drain is forced, and one
//! registered later is told at once. So an idle connection waits on one channel, not on a
//! policy change and a drain each (every open connection pays for what its task waits on).
//!
//! Invariants: the registry lock is a plain mutex held only for map operations and pure policy
//! evaluation, never across `.await`; a connection is told to close at most once; registering
//! before the first check means a state change can never slip between a connection's first
//! decision and its tracking.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::oneshot;
use tracing::debug;

use crate::core::Identity;
use crate::lifecycle::{DrainDeadline, DrainWatcher};
use crate::metrics::ResponseFlag;
use crate::rbac::{ConnFacts, Decision};
use crate::state::StateView;

use super::accesslog::ConnectionLog;
use super::authz;
use super::copy::CopyStats;
use super::revocation::RevokedSignal;

/// The registry of live connections, inbound and outbound. Cloning shares it.
#[derive(Clone, Default)]
pub struct ConnectionTracker {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    conns: HashMap<u64, Tracked>,
    outbound: HashMap<u64, TrackedOutbound>,
    /// The drain deadline passed: every connection registered from now on is told at once.
    forced: bool,
}

/// Why the tracker tells a connection to close.
#[derive(Debug)]
pub enum Close {
    /// A state change denies it (inbound only).
    Denied(Decision),
    /// The drain deadline passed.
    DrainDeadline,
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::Denied(d) => d.fmt(f),
            Close::DrainDeadline => f.write_str("closed at the drain deadline"),
        }
    }
}

struct TrackedOutbound {
    conn: LiveOutbound,
    live: Live,
    /// Taken when the connection is told to close.
    close: Option<oneshot::Sender<Close>>,
}

/// When a connection was opened and its running byte counts (the copy's own counters).
#[derive(Clone)]
struct Live {
    opened: SystemTime,
    stats: Arc<CopyStats>,
}

impl Live {
    fn now(stats: Arc<CopyStats>) -> Live {
        Live {
            opened: SystemTime::now(),
            stats,
        }
    }
}

/// A live connection with its age and bytes (`/debug/connections`).
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    pub src: SocketAddr,
    /// Outbound: where the app was connecting; inbound: where it was delivered.
    pub dst: SocketAddr,
    /// Outbound: where the proxy connected (the peer proxy, gateway or endpoint).
    pub actual_dst: Option<SocketAddr>,
    /// `TCP`, `HBONE` or `DOUBLEHBONE`.
    pub protocol: &'static str,
    /// Inbound over mTLS: the client's identity.
    pub identity: Option<String>,
    /// Seconds since the Unix epoch.
    pub opened: f64,
    /// From the source to the destination.
    pub bytes_sent: u64,
    /// From the destination back to the source.
    pub bytes_received: u64,
}

/// A live inbound connection, as `/config_dump` lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LiveInbound {
    pub src: SocketAddr,
    /// Where the connection was delivered (the app's address).
    pub dst: SocketAddr,
    /// Whether it arrived over mutual TLS (HBONE) rather than plaintext.
    pub mtls: bool,
}

/// How an outbound connection leaves the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OutboundProtocol {
    Tcp,
    Hbone,
    /// HBONE inside HBONE, through a remote network's gateway.
    DoubleHbone,
}

/// A live outbound connection, as `/config_dump` lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LiveOutbound {
    pub src: SocketAddr,
    /// Where the app was connecting.
    pub original_dst: SocketAddr,
    /// Where the proxy connected: the endpoint (TCP), its proxy or the gateway (HBONE).
    pub actual_dst: SocketAddr,
    pub protocol: OutboundProtocol,
}

/// An outbound connection's entry in the registry; dropping it removes the entry.
pub struct OutboundRegistration {
    id: u64,
    tracker: ConnectionTracker,
    close: oneshot::Receiver<Close>,
}

/// What a connection was authorized on, kept to authorize it again.
struct Tracked {
    src: SocketAddr,
    dst: SocketAddr,
    identity: Option<Identity>,
    /// Taken when the connection is told to close, so it is told once.
    close: Option<oneshot::Sender<Close>>,
    live: Live,
}

/// A connection's membership in the registry; dropping it unregisters the connection.
pub struct Registration {
    id: u64,
    tracker: ConnectionTracker,
    close: oneshot::Receiver<Close>,
}

impl OutboundProtocol {
    /// As `/config_dump` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundProtocol::Tcp => "TCP",
            OutboundProtocol::Hbone => "HBONE",
            OutboundProtocol::DoubleHbone => "DOUBLEHBONE",
        }
    }
}

// === impl ConnectionTracker ===

impl ConnectionTracker {
    /// Tracks a connection from `src` (with `identity`, if mTLS) to the resolved `dst`.
    pub fn register(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        identity: Option<&Identity>,
        stats: Arc<CopyStats>,
    ) -> Registration {
        let mut reg = self.lock();
        let (id, close, rx) = reg.enrol();
        reg.conns.insert(
            id,
            Tracked {
                src,
                dst,
                identity: identity.cloned(),
                close,
                live: Live::now(stats),
            },
        );
        Registration {
            id,
            tracker: self.clone(),
            close: rx,
        }
    }

    /// Lists an outbound connection until the returned registration is dropped; `stats` are
    /// its copy's byte counts.
    pub fn track_outbound(
        &self,
        conn: LiveOutbound,
        stats: Arc<CopyStats>,
    ) -> OutboundRegistration {
        let mut reg = self.lock();
        let (id, close, rx) = reg.enrol();
        reg.outbound.insert(
            id,
            TrackedOutbound {
                conn,
                live: Live::now(stats),
                close,
            },
        );
        OutboundRegistration {
            id,
            tracker: self.clone(),
            close: rx,
        }
    }

    /// Tells every connection to close for the drain deadline, and every one registered later.
    /// Returns how many were told.
    pub fn close_all_for_drain(&self) -> usize {
        let mut guard = self.lock();
        let reg = &mut *guard;
        reg.forced = true;
        let inbound = reg.conns.values_mut().map(|t| &mut t.close);
        let outbound = reg.outbound.values_mut().map(|t| &mut t.close);
        inbound
            .chain(outbound)
            .filter_map(Option::take)
            // The task may have just ended; then there is nothing left to close.
            .map(|tx| usize::from(tx.send(Close::DrainDeadline).is_ok()))
            .sum()
    }

    /// The live inbound connections, sorted (a copy: the registry is not held).
    pub fn inbound(&self) -> Vec<LiveInbound> {
        let mut out: Vec<LiveInbound> = self
            .lock()
            .conns
            .values()
            .map(|t| LiveInbound {
                src: t.src,
                dst: t.dst,
                mtls: t.identity.is_some(),
            })
            .collect();
        out.sort();
        out
    }

    /// The live outbound connections, sorted (a copy).
    pub fn outbound(&self) -> Vec<LiveOutbound> {
        let mut out: Vec<LiveOutbound> = self
            .lock()
            .outbound
            .values()
            .map(|t| t.conn.clone())
            .collect();
        out.sort();
        out
    }

    /// Every live connection with its age and bytes, oldest first (a copy).
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let since = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let reg = self.lock();
        let inbound = reg.conns.values().map(|t| {
            let (sent, received) = t.live.stats.totals();
            ConnectionInfo {
                direction: "inbound",
                src: t.src,
                dst: t.dst,
                actual_dst: None,
                protocol: if t.identity.is_some() { "HBONE" } else { "TCP" },
                identity: t.identity.as_ref().map(|i| i.to_string()),
                opened: since(t.live.opened),
                bytes_sent: sent,
                bytes_received: received,
            }
        });
        let outbound = reg.outbound.values().map(|t| {
            let (c, live) = (&t.conn, &t.live);
            let (sent, received) = live.stats.totals();
            ConnectionInfo {
                direction: "outbound",
                src: c.src,
                dst: c.original_dst,
                actual_dst: Some(c.actual_dst),
                protocol: c.protocol.as_str(),
                identity: None,
                opened: since(live.opened),
                bytes_sent: sent,
                bytes_received: received,
            }
        });
        let mut out: Vec<ConnectionInfo> = inbound.chain(outbound).collect();
        drop(reg);
        out.sort_by(|a, b| a.opened.total_cmp(&b.opened).then(a.src.cmp(&b.src)));
        out
    }

    /// How many inbound connections are tracked.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides every tracked connection again with `decide` and tells the denied ones to
    /// close. Returns how many were told.
    pub fn recheck(&self, mut decide: impl FnMut(&ConnFacts<'_>) -> Decision) -> usize {
        let mut reg = self.lock();
        let mut told = 0;
        for t in reg.conns.values_mut() {
            if t.close.is_none() {
                continue;
            }
            let facts = ConnFacts {
                src: t.src,
                dst: t.dst,
                identity: t.identity.as_ref(),
            };
            let decision = decide(&facts);
            if decision.is_allow() {
                continue;
            }
            if let Some(tx) = t.close.take() {
                // The task may have just ended; then there is nothing left to close.
                if tx.send(Close::Denied(decision)).is_ok() {
                    told += 1;
                }
            }
        }
        told
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry stays consistent even if a holder panicked: every operation on it is a
        // single map insert/remove or a field take.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Registry {
    /// A new connection's id, the sender its entry keeps (none once the drain deadline has
    /// passed: it is told at once) and the receiver its task waits on.
    fn enrol(
        &mut self,
    ) -> (
        u64,
        Option<oneshot::Sender<Close>>,
        oneshot::Receiver<Close>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = oneshot::channel();
        if !self.forced {
            return (id, Some(tx), rx);
        }
        let _ = tx.send(Close::DrainDeadline);
        (id, None, rx)
    }
}

// === impl Registration ===

impl Registration {
    /// Resolves when the connection must close: a state change denies it, or the drain
    /// deadline passed; pending forever otherwise.
    pub async fn closed(&mut self) -> Close {
        closed(&mut self.close).await
    }
}

impl OutboundRegistration {
    /// Resolves when the drain deadline passed; pending forever otherwise.
    pub async fn closed(&mut self) -> Close {
        closed(&mut self.close).await
    }
}

async fn closed(rx: &mut oneshot::Receiver<Close>) -> Close {
    match rx.await {
        Ok(c) => c,
        // The registry dropped the sender without telling: nothing will ask any more.
        Err(_) => std::future::pending().await,
    }
}

/// Tells every connection of `tracker` to close once the drain is forced. Holds no
/// [`DrainWatcher`], so it never keeps a drain waiting.
pub async fn close_at_drain_deadline(tracker: ConnectionTracker, deadline: DrainDeadline) {
    if deadline.forced().await {
        let told = tracker.close_all_for_drain();
        debug!(told, "connections told to close at the drain deadline");
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.tracker.lock().conns.remove(&self.id);
    }
}

impl Drop for OutboundRegistration {
    fn drop(&mut self) {
        self.tracker.lock().outbound.remove(&self.id);
    }
}

/// An authorized inbound connection, copying: all it keeps for its life. Small on purpose
/// (every open connection holds one in its task), and run in place by [`Authorized::run`]
/// rather than handed on by value, so nothing in it is stored twice.
pub(crate) struct Authorized<C> {
    pub pi: Arc<super::ProxyInputs>,
    /// The copy, boxed (see `copy::copy_bidirectional`).
    pub copy: C,
    pub registration: Registration,
    pub cert_revoked: RevokedSignal,
    pub log: ConnectionLog,
}

/// Runs `copy` until it ends, or `closed` resolves first (then `Err` with why).
pub async fn copy_until<F: std::future::Future>(
    copy: F,
    closed: impl std::future::Future<Output = Close>,
) -> Result<F::Output, Close> {
    tokio::select! {
        r = copy => Ok(r),
        c = closed => Err(c),
    }
}

impl<C> Authorized<C>
where
    C: std::future::Future<Output = std::io::Result<()>> + Unpin + Send,
{
    /// Runs the copy until it ends, the drain deadline passes, a state change revokes the
    /// connection, or its HBONE connection is closed for a revoked peer certificate; then
    /// writes its access-log line (and counts a revocation). `_drain` is held, not waited on:
    /// the tracker delivers the deadline.
    // Not `async fn`: its lowering moves `self` into a second slot of the state machine, and
    // this one lives as long as the connection.
    #[allow(clippy::manual_async_fn)]
    pub fn run(mut self, _drain: DrainWatcher) -> impl std::future::Future<Output = ()> + Send {
        async move {
            tokio::select! {
                // First: the signal is raised before the connection is dropped, so a copy that
                // fails because of that drop is still put down to the revocation.
                biased;
                revoked = self.cert_revoked.fired() => self.log.fail_revoked(&revoked),
                // Dropping the copy closes both sides (the HBONE stream is reset, the app's
                // socket closed).
                done = copy_until(&mut self.copy, self.registration.closed()) => match done {
                    Ok(Ok(())) => self.log.complete(),
                    // The copy can see the closed connection in the same wake-up as the
                    // signal: the revocation is still the reason.
                    Ok(Err(_)) if let Some(revoked) = self.cert_revoked.now() => {
                        self.log.fail_revoked(&revoked)
                    }
                    Ok(Err(e)) => {
                        self.log.response_flags = Some(ResponseFlag::Connect);
                        self.log.fail(&e)
                    }
                    Err(Close::DrainDeadline) => self.log.fail(&Close::DrainDeadline),
                    Err(Close::Denied(decision)) => {
                        self.pi.metrics.connections_closed_by_policy.inc();
                        self.log.response_flags = Some(ResponseFlag::Deny);
                        self.log.fail(&format_args!("{decision} (closed after a policy change)"));
                    }
                },
            }
        }
    }
}

/// Re-authorizes every tracked connection of the proxy serving `network` on each state version,
/// until the drain starts (or the state's writer is gone: then nothing can change any more).
///
/// The change receiver is taken when this is called, not when the future first runs, so a
/// version published in between is still seen. An extra wake-up only costs a recheck.
pub fn watch_policies(
    tracker: ConnectionTracker,
    state: StateView,
    network: String,
    local: super::LocalWorkload,
    drain: DrainWatcher,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut changes = state.changes();
    async move {
        loop {
            tokio::select! {
                biased;
                _ = drain.draining() => return,
                r = changes.changed() => if r.is_err() { return },
            }
            let snapshot = state.snapshot();
            let told =
                tracker.recheck(|facts| authz::decide_tracked(&snapshot, &network, &local, facts));
            debug!(
                version = snapshot.version(),
                tracked = tracker.len(),
                closing = told,
                "inbound connections re-authorized"
            );
        }
    }
}

#[cfg(test)]
mod tests;
