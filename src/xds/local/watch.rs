//! Reloading the local config file at run time: the file is polled (size, modification time,
//! inode) and, when it changed, read; once two reads one poll apart agree, that text is
//! validated; a valid version replaces the whole state, an invalid one (garbage, an empty or
//! truncated file) is rejected with its one-line error while the last good state keeps serving.
//!
//! Polling needs no extra dependency and works for every way a file gets replaced (in-place
//! write, rename over it, a Kubernetes ConfigMap symlink swap, since metadata follows links).
//! Invariants: a text is judged only after it was read unchanged on two polls, so a file caught
//! half-written by an in-place writer is never applied; each settled text is judged once; a
//! rejected version never touches the state.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::{LocalConfigError, parse};
use crate::lifecycle::DrainWatcher;
use crate::state::{Applied, StateWriter};

/// The poll period ztunnel-compatible setups expect changes to be picked up within.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Watches one local config file and applies its new versions to the state.
pub struct Reloader {
    path: PathBuf,
    writer: Arc<StateWriter>,
    seen: Option<Fingerprint>,
    /// A text read once and not judged yet: it must read the same on the next poll.
    settling: Option<String>,
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
    /// The file changed (or still was changing) since the last poll; it is judged once it
    /// reads the same on the next one.
    Settling,
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
        Reloader {
            path,
            writer,
            seen,
            settling: None,
        }
    }

    /// Checks the file once; applies or rejects a changed text once it has settled.
    pub fn poll_once(&mut self) -> Reload {
        let now = fingerprint(&self.path);
        if now == self.seen && self.settling.is_none() {
            return Reload::Unchanged;
        }
        // Taken before the read, so a write racing the read is seen again on the next poll.
        self.seen = now;
        let origin = self.path.display().to_string();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(source) => {
                self.settling = None;
                return Reload::Rejected(LocalConfigError::Read { origin, source });
            }
        };
        match self.settling.take() {
            Some(before) if before == text => match parse(&text, &origin) {
                Ok(config) => Reload::Applied(self.writer.apply(config.into_update())),
                Err(e) => Reload::Rejected(e),
            },
            _ => {
                self.settling = Some(text);
                Reload::Settling
            }
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
                Reload::Unchanged | Reload::Settling => {}
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

    const WL: &str = "workloads:\n- uid: u1\n  name: server\n  namespace: b\n  workloadIps: [\"10.0.0.2\"]\n  services: {}\n";
    const DENY: &str = "policies:\n- name: deny\n  namespace: b\n  scope: Namespace\n  action: Deny\n  dryRun: false\n  rules: [[[{destinationPorts: [80]}]]]\n";

    /// Replaces the file by rename, as editors and config tools do.
    fn replace(path: &std::path::Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn setup(test: &str) -> (std::path::PathBuf, Reloader, crate::state::StateView) {
        let dir = std::env::temp_dir().join(format!("ambit-reload-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("local.yaml");
        replace(&path, &format!("{WL}{DENY}"));
        let (writer, view) = StateWriter::new();
        writer.apply(super::super::load_file(&path).unwrap().into_update());
        let r = Reloader::new(path.clone(), Arc::new(writer));
        (path, r, view)
    }

    /// Polls until the change is judged (a settled text takes two polls).
    fn judged(r: &mut Reloader) -> Reload {
        assert!(
            matches!(r.poll_once(), Reload::Settling),
            "first read of a change"
        );
        r.poll_once()
    }

    fn rejected(r: &mut Reloader) -> String {
        match judged(r) {
            Reload::Rejected(e) => e.to_string(),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn valid_versions_apply_and_bad_ones_keep_the_last_good_state() {
        let (path, mut r, view) = setup("versions");
        assert!(matches!(r.poll_once(), Reload::Unchanged));

        replace(&path, WL);
        let Reload::Applied(a) = judged(&mut r) else {
            panic!("a valid version applies")
        };
        assert_eq!(a.version, 2);
        assert!(
            view.snapshot().policy("b/deny").is_none(),
            "removed entries go"
        );
        assert!(matches!(r.poll_once(), Reload::Unchanged), "judged once");

        replace(&path, &format!("{WL}{DENY}"));
        assert!(matches!(judged(&mut r), Reload::Applied(_)));
        let origin = format!("local config {}:", path.display());
        for (bad, why) in [
            ("", "the file has no content"),
            ("# emptied\n", "the file has no content"),
            (&WL[..WL.len() - 15], "missing field \"services\""),
            (
                "\u{1}\u{2}garbage: [[[",
                "control characters are not allowed",
            ),
        ] {
            replace(&path, bad);
            let msg = rejected(&mut r);
            assert!(
                msg.starts_with(&origin) && msg.contains(why),
                "{bad:?}: {msg}"
            );
            assert_eq!(msg.lines().count(), 1, "{msg}");
            let snap = view.snapshot();
            assert_eq!(snap.version(), 3, "state untouched by {bad:?}");
            assert!(snap.policy("b/deny").is_some(), "last good policy in force");
            assert!(
                snap.workload_by_uid("u1").is_some(),
                "last good workload in force"
            );
            replace(&path, &format!("{WL}{DENY}"));
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// An in-place writer caught half-way: the truncated text is read once, the next poll reads
    /// the finished file, and only that is judged.
    #[test]
    fn a_file_caught_half_written_is_not_judged_until_it_settles() {
        let (path, mut r, view) = setup("settle");
        std::fs::write(&path, &WL[..30]).unwrap();
        assert!(matches!(r.poll_once(), Reload::Settling));
        std::fs::write(&path, WL).unwrap();
        assert!(
            matches!(r.poll_once(), Reload::Settling),
            "changed again: read anew"
        );
        assert_eq!(view.snapshot().version(), 1, "nothing judged yet");
        let Reload::Applied(a) = r.poll_once() else {
            panic!("the settled text applies")
        };
        assert_eq!(a.version, 2);
        assert!(view.snapshot().policy("b/deny").is_none());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
