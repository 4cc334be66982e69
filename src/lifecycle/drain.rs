//! Drain: stop accepting, let live work finish until a deadline, then force it to close.
//!
//! One [`DrainTrigger`] and any number of cloned [`DrainWatcher`]s. The trigger learns that all
//! work is done when every watcher has been dropped, so a task must keep its watcher for as long
//! as it owns work (an accept loop, a connection).

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The phase a drain is in; watchers observe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// Stop accepting; let established work finish.
    Draining,
    /// The deadline passed: close everything now.
    Forced,
}

/// Starts a drain. Held by whoever owns the lifetime of the watched work.
pub struct DrainTrigger {
    phase: watch::Sender<Phase>,
    done: mpsc::Receiver<()>,
}

/// Observes a drain. Cloned into each task that owns work; dropping it signals that work is done.
#[derive(Clone)]
pub struct DrainWatcher {
    phase: watch::Receiver<Phase>,
    _alive: mpsc::Sender<()>,
}

/// Observes only the drain deadline, without counting as live work: for a task that acts on
/// the deadline on behalf of others and must not keep the drain waiting itself.
pub struct DrainDeadline {
    phase: watch::Receiver<Phase>,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every watcher was dropped before the deadline.
    Graceful,
    /// The deadline passed and the remaining work was told to close.
    Forced,
}

/// Creates a trigger and its first watcher.
pub fn channel() -> (DrainTrigger, DrainWatcher) {
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (alive_tx, alive_rx) = mpsc::channel(1);
    (
        DrainTrigger {
            phase: phase_tx,
            done: alive_rx,
        },
        DrainWatcher {
            phase: phase_rx,
            _alive: alive_tx,
        },
    )
}

// === impl DrainTrigger ===

impl DrainTrigger {
    /// Drains: watchers see [`DrainWatcher::draining`] at once; if work is still alive after
    /// `deadline`, they see [`DrainWatcher::forced`]. Returns once every watcher is gone (after a
    /// forced drain, at most `deadline` more is waited so a stuck task cannot hang shutdown).
    pub async fn drain(mut self, deadline: Duration) -> DrainOutcome {
        self.phase.send_replace(Phase::Draining);
        if tokio::time::timeout(deadline, self.done.recv())
            .await
            .is_ok()
        {
            return DrainOutcome::Graceful;
        }
        self.phase.send_replace(Phase::Forced);
        if tokio::time::timeout(deadline, self.done.recv())
            .await
            .is_err()
        {
            tracing::warn!("drain: some tasks did not stop after being forced to close");
        }
        DrainOutcome::Forced
    }

    /// Forces at once, without a graceful phase (a pod that was deleted), and waits for the work.
    pub async fn drain_immediately(self) -> DrainOutcome {
        self.phase.send_replace(Phase::Forced);
        let mut done = self.done;
        let _ = tokio::time::timeout(Duration::from_secs(5), done.recv()).await;
        DrainOutcome::Forced
    }
}

// === impl DrainWatcher ===

impl DrainWatcher {
    /// Resolves when a drain starts (graceful or forced).
    pub async fn draining(&self) {
        self.wait_for(Phase::Draining).await
    }

    /// Resolves when live work must close now.
    pub async fn forced(&self) {
        self.wait_for(Phase::Forced).await
    }

    /// The deadline alone, for a task that must not hold the drain open.
    pub fn deadline(&self) -> DrainDeadline {
        DrainDeadline {
            phase: self.phase.clone(),
        }
    }

    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Draining
    }

    async fn wait_for(&self, phase: Phase) {
        let mut rx = self.phase.clone();
        // An error means the trigger is gone without draining: nothing will ever ask us to stop
        // through this channel, so wait forever rather than spuriously stopping.
        if rx.wait_for(|p| *p >= phase).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl DrainDeadline {
    /// Resolves `true` when live work must close now, `false` if the trigger went away
    /// without a drain (nothing will be forced then).
    pub async fn forced(mut self) -> bool {
        self.phase.wait_for(|p| *p >= Phase::Forced).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn graceful_when_work_ends_before_deadline() {
        let (trigger, watcher) = channel();
        let w = watcher.clone();
        drop(watcher);
        let work = tokio::spawn(async move {
            w.draining().await;
            assert!(w.is_draining());
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(w);
        });
        assert_eq!(
            trigger.drain(Duration::from_secs(5)).await,
            DrainOutcome::Graceful
        );
        work.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn forced_after_deadline() {
        let (trigger, watcher) = channel();
        let start = tokio::time::Instant::now();
        let work = tokio::spawn(async move {
            watcher.draining().await;
            watcher.forced().await;
            tokio::time::Instant::now()
        });
        assert_eq!(
            trigger.drain(Duration::from_secs(5)).await,
            DrainOutcome::Forced
        );
        let forced_at = work.await.unwrap();
        assert_eq!(forced_at - start, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn immediate_skips_the_graceful_phase() {
        let (trigger, watcher) = channel();
        let work = tokio::spawn(async move { watcher.forced().await });
        assert_eq!(trigger.drain_immediately().await, DrainOutcome::Forced);
        work.await.unwrap();
    }
}
