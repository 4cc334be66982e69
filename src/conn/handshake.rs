//! Limits on inbound HBONE connections that have not finished their TLS handshake.
//!
//! Before the handshake a connection has proven nothing, yet it holds a descriptor and the
//! handshake's buffers (~25 KB). Without limits, a client that opens connections and sends
//! nothing (or a few bytes of a ClientHello) holds them for as long as it likes and can exhaust
//! the proxy's descriptors. So each such connection gets a deadline, and one source address may
//! hold only so many at once: beyond that, new ones are closed at once.
//!
//! ztunnel has neither limit; a node proxy's legitimate peers (other node proxies, gateways,
//! waypoints) pool their connections, so they open few at a time and finish them in
//! milliseconds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The limits (`AMBIT_HANDSHAKE_TIMEOUT`, `AMBIT_MAX_PENDING_HANDSHAKES_PER_SOURCE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// From accept to a finished TLS handshake.
    pub timeout: Duration,
    /// Connections one source address may have before their handshake finishes.
    pub max_pending_per_source: u32,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            timeout: Duration::from_secs(10),
            max_pending_per_source: 128,
        }
    }
}

/// Counts, per source address, the connections whose handshake is under way. Cloning shares
/// the counts.
#[derive(Clone, Debug, Default)]
pub struct PendingHandshakes {
    max_per_source: u32,
    counts: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// Holds one pending slot of a source until dropped (the handshake finished or failed).
#[derive(Debug)]
pub struct PendingSlot {
    source: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl PendingHandshakes {
    pub fn new(max_per_source: u32) -> Self {
        PendingHandshakes {
            max_per_source,
            counts: Arc::default(),
        }
    }

    /// A slot for a new connection from `source`, or `None` when that source already has
    /// the maximum number of handshakes under way.
    pub fn admit(&self, source: IpAddr) -> Option<PendingSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(source).or_insert(0);
        if *n >= self.max_per_source {
            return None;
        }
        *n += 1;
        Some(PendingSlot {
            source,
            counts: self.counts.clone(),
        })
    }

    /// Handshakes under way from `source`.
    pub fn pending(&self, source: IpAddr) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&source).copied().unwrap_or(0)
    }

    /// Source addresses with a handshake under way (the map holds no others).
    pub fn sources(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_capped_and_its_slots_come_back_on_drop() {
        let gate = PendingHandshakes::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = gate.admit(a).expect("first slot");
        let second = gate.admit(a).expect("second slot");
        assert!(
            gate.admit(a).is_none(),
            "a third concurrent handshake is refused"
        );
        assert!(gate.admit(b).is_some(), "another source is not affected");
        drop(first);
        let third = gate.admit(a).expect("a slot came back");
        drop((second, third));
        assert_eq!(gate.pending(a), 0);
        assert_eq!(gate.sources(), 0, "no entry is kept for an idle source");
    }
}
