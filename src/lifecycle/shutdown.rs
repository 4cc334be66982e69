//! A request to shut down from inside the process (`POST /quitquitquit`), next to the OS
//! signals: whoever owns the drain waits on either, and reports back once the drain is over so
//! the requester can answer then (as ztunnel does).
//!
//! Invariants: the state only moves forward (running → requested → drained); once requested, a
//! request stays requested (late waiters see it at once), and once drained, every waiter on
//! [`ShutdownHandle::drained`] resolves.

use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Running,
    Requested,
    Drained,
}

/// Asks the process to drain and exit. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: watch::Sender<State>,
}

/// Held by the owner of the drain: resolves once a shutdown has been requested, and reports
/// the end of the drain.
#[derive(Clone, Debug)]
pub struct ShutdownRequested {
    tx: watch::Sender<State>,
}

pub fn shutdown_channel() -> (ShutdownHandle, ShutdownRequested) {
    let (tx, _rx) = watch::channel(State::Running);
    (ShutdownHandle { tx: tx.clone() }, ShutdownRequested { tx })
}

/// Waits until the state reaches `at_least`.
async fn wait_for(tx: &watch::Sender<State>, at_least: State) {
    let mut rx = tx.subscribe();
    // Both ends hold the sender, so the channel cannot close while we wait.
    if rx.wait_for(|s| *s >= at_least).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl ShutdownHandle {
    /// Requests the shutdown; returns whether this call was the first.
    pub fn request(&self) -> bool {
        self.tx.send_if_modified(|s| {
            if *s == State::Running {
                *s = State::Requested;
                true
            } else {
                false
            }
        })
    }

    /// Resolves once the drain that follows a request (or a signal) is over.
    pub async fn drained(&self) {
        wait_for(&self.tx, State::Drained).await
    }
}

impl ShutdownRequested {
    pub async fn wait(&self) {
        wait_for(&self.tx, State::Requested).await
    }

    /// Reports that the drain is over (whatever started it): pending requesters may answer.
    pub fn drained(&self) {
        self.tx.send_replace(State::Drained);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn request_is_seen_by_late_waiters() {
        let (h, r) = shutdown_channel();
        assert!(h.request());
        assert!(!h.request());
        tokio::time::timeout(Duration::from_secs(1), r.wait())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn requester_learns_when_the_drain_is_over() {
        let (h, r) = shutdown_channel();
        let requester = tokio::spawn({
            let h = h.clone();
            async move {
                h.request();
                h.drained().await;
            }
        });
        tokio::time::timeout(Duration::from_secs(1), r.wait())
            .await
            .unwrap();
        assert!(!requester.is_finished());
        r.drained();
        tokio::time::timeout(Duration::from_secs(1), requester)
            .await
            .unwrap()
            .unwrap();
        // A drain that was not requested (a signal) still releases later waiters, and a
        // request after the drain changes nothing.
        assert!(!h.request());
        tokio::time::timeout(Duration::from_secs(1), h.drained())
            .await
            .unwrap();
    }
}
