//! A request to shut down from inside the process (`POST /quitquitquit`), next to the OS
//! signals: whoever owns the drain waits on either.
//!
//! Invariant: once requested, a request stays requested (late waiters see it at once).

use tokio::sync::watch;

/// Asks the process to drain and exit. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: watch::Sender<bool>,
}

/// Resolves once a shutdown has been requested.
#[derive(Clone, Debug)]
pub struct ShutdownRequested {
    rx: watch::Receiver<bool>,
}

pub fn shutdown_channel() -> (ShutdownHandle, ShutdownRequested) {
    let (tx, rx) = watch::channel(false);
    (ShutdownHandle { tx }, ShutdownRequested { rx })
}

impl ShutdownHandle {
    /// Requests the shutdown; returns whether this call was the first.
    pub fn request(&self) -> bool {
        !self.tx.send_replace(true)
    }
}

impl ShutdownRequested {
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // The handle lives as long as the admin server; if it is gone, no request can come.
        if rx.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
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
}
