//! Reloading the local config file at run time: the file is polled (size, modification time,
//! inode) and, when it changed, read and validated again; a valid version replaces the whole
//! state, an invalid one is rejected with its one-line error while the last good state keeps
//! serving.
//!
//! Polling needs no extra dependency and works for every way a file gets replaced (in-place
//! write, rename over it, a Kubernetes ConfigMap symlink swap, since metadata follows links).
//! Invariants: each change is judged once (the fingerprint is taken before the read, so a
//! write racing the read is seen again on the next poll); a rejected version never touches the
//! state.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::{LocalConfigError, load_file};
use crate::lifecycle::DrainWatcher;
use crate::state::{Applied, StateWriter};

/// The poll period ztunnel-compatible setups expect changes to be picked up within.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Watches one local config file and applies its new versions to the state.
pub struct Reloader {
    path: PathBuf,
    writer: Arc<StateWriter>,
    seen: Option<Fingerprint>,
}

/// What identifies a version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// What one poll found.
#[derive(Debug)]
pub enum Reload {
    Unchanged,
    /// A new valid version, applied as this state version.
    Applied(Applied),
    /// A new version that cannot be used; the state is untouched.
    Rejected(LocalConfigError),
}

// === impl Reloader ===

impl Reloader {
    /// Starts from the file as it is now (the version the caller loaded at startup).
    pub fn new(path: PathBuf, writer: Arc<StateWriter>) -> Reloader {
        let seen = fingerprint(&path);
        Reloader { path, writer, seen }
    }

    /// Checks the file once, and applies or rejects it if it changed.
    pub fn poll_once(&mut self) -> Reload {
        let now = fingerprint(&self.path);
        if now == self.seen {
            return Reload::Unchanged;
        }
        self.seen = now;
        match load_file(&self.path) {
            Ok(config) => Reload::Applied(self.writer.apply(config.into_update())),
            Err(e) => Reload::Rejected(e),
        }
    }

    /// Polls every `interval` until the drain starts, logging each outcome.
    pub async fn run(mut self, interval: Duration, drain: DrainWatcher) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = drain.draining() => return,
                _ = tick.tick() => {}
            }
            match self.poll_once() {
                Reload::Unchanged => {}
                Reload::Applied(a) => info!(
                    path = %self.path.display(),
                    version = a.version,
                    "local config reloaded"
                ),
                Reload::Rejected(e) => warn!(
                    error = %e,
                    "local config change rejected; the last good version stays in force"
                ),
            }
        }
    }
}

fn fingerprint(path: &std::path::Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        len: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateWriter;

    const WL: &str =
        "workloads:\n- uid: u1\n  name: server\n  namespace: b\n  workloadIps: [\"10.0.0.2\"]\n";

    /// Replaces the file by rename, as editors and config tools do.
    fn replace(path: &std::path::Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn valid_versions_apply_and_invalid_ones_keep_the_last_good_state() {
        let dir = std::env::temp_dir().join(format!("ambit-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("local.yaml");
        replace(&path, WL);
        let (writer, view) = StateWriter::new();
        writer.apply(super::super::load_file(&path).unwrap().into_update());
        let mut r = Reloader::new(path.clone(), Arc::new(writer));
        assert!(matches!(r.poll_once(), Reload::Unchanged));

        let policy = "policies:\n- name: deny\n  namespace: b\n  scope: Namespace\n  action: Deny\n  rules: [[[{destinationPorts: [80]}]]]\n";
        replace(&path, &format!("{WL}{policy}"));
        let Reload::Applied(a) = r.poll_once() else {
            panic!("a valid version applies")
        };
        assert_eq!(a.version, 2);
        assert!(view.snapshot().policy("b/deny").is_some());

        replace(&path, &format!("{WL}policies:\n- name: [unclosed\n"));
        let Reload::Rejected(e) = r.poll_once() else {
            panic!("a malformed version is rejected")
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("local config {}:", path.display())),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(matches!(r.poll_once(), Reload::Unchanged), "judged once");
        let snap = view.snapshot();
        assert_eq!(snap.version(), 2, "state untouched");
        assert!(snap.policy("b/deny").is_some(), "last good policy in force");

        replace(&path, WL);
        assert!(matches!(r.poll_once(), Reload::Applied(_)));
        assert!(
            view.snapshot().policy("b/deny").is_none(),
            "removed entries go"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
