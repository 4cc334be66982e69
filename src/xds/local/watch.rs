//! Reloading the local config file at run time: the file is watched as a
//! [`SettledFile`] (polled; a changed text is handed over once two reads agree), and each
//! settled text is validated: a valid version replaces the whole state, an invalid one
//! (garbage, an empty or truncated file) is rejected with its one-line error while the last
//! good state keeps serving. Invariant: a rejected version never touches the state.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{LocalConfigError, parse};
use crate::lifecycle::{DrainWatcher, FilePoll, SettledFile};
use crate::state::{Applied, StateWriter};

/// The poll period ztunnel-compatible setups expect changes to be picked up within.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Watches one local config file and applies its new versions to the state.
pub struct Reloader {
    file: SettledFile,
    writer: Arc<StateWriter>,
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
        Reloader {
            file: SettledFile::new(path),
            writer,
        }
    }

    /// Checks the file once; applies or rejects a changed text once it has settled.
    pub fn poll_once(&mut self) -> Reload {
        let origin = self.file.path().display().to_string();
        let data = match self.file.poll() {
            FilePoll::Unchanged => return Reload::Unchanged,
            FilePoll::Settling => return Reload::Settling,
            FilePoll::Unreadable(source) => {
                return Reload::Rejected(LocalConfigError::Read { origin, source });
            }
            FilePoll::Settled(data) => data,
        };
        let text = match String::from_utf8(data) {
            Ok(text) => text,
            Err(e) => {
                let source = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
                return Reload::Rejected(LocalConfigError::Read { origin, source });
            }
        };
        match parse(&text, &origin) {
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
                Reload::Unchanged | Reload::Settling => {}
                Reload::Applied(a) => info!(
                    path = %self.file.path().display(),
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
