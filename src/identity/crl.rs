//! The CRL file (`CRL_PATH`) on the control side: loaded at start, then polled and reloaded
//! into the [`CrlHandle`] the data path reads.
//!
//! The file is watched as a [`SettledFile`], as the local config is: polled, and a changed
//! content is judged only once it reads the same on two polls (a half-written file is never
//! judged).
//!
//! Invariants (never fail open):
//! - A text that cannot be read or parsed is an error, logged with its reason; the set in force
//!   stays as it was. Only a fully parsed file replaces it.
//! - At start, a file that exists but does not parse stops the proxy ([`CrlReloader::load`]
//!   fails); a missing file is accepted with a warning (ztunnel's behaviour: the volume may be
//!   mounted later) and picked up as soon as it appears.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::lifecycle::{DrainWatcher, FilePoll, SettledFile};
use crate::tls::{CrlError, CrlHandle, CrlSet};

/// How often the file is looked at; a change is in force within two polls.
pub const CRL_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Watches one CRL file and keeps a [`CrlHandle`] on its last good version.
pub struct CrlReloader {
    file: SettledFile,
    handle: CrlHandle,
}

/// What one poll found.
#[derive(Debug, PartialEq, Eq)]
pub enum CrlReload {
    Unchanged,
    /// The file changed since the last poll; it is judged once it reads the same again.
    Settling,
    /// A new version is in force: how many CRLs and revoked entries it holds.
    Applied {
        crls: usize,
        entries: usize,
    },
    /// A new version that cannot be used; the last good one stays in force.
    Rejected(CrlError),
}

impl CrlReloader {
    /// Loads the file as it is now into a new handle. A missing file is no CRL (yet); one that
    /// exists and cannot be read or parsed is an error.
    pub fn load(path: PathBuf) -> Result<CrlReloader, CrlError> {
        let handle = CrlHandle::new();
        // Taken before the read: a write racing it is seen on the first poll.
        let file = SettledFile::new(path.clone());
        match std::fs::read(&path) {
            Ok(data) => {
                let set = CrlSet::parse(&data, &path.display().to_string())?;
                info!(
                    path = %path.display(),
                    crls = set.len(),
                    revoked = set.revoked_entries(),
                    "CRL loaded"
                );
                handle.replace(set);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warn!(path = %path.display(), "CRL file not found; no certificate is revoked until it appears");
            }
            Err(e) => return Err(read_error(&path, &e)),
        }
        Ok(CrlReloader { file, handle })
    }

    /// The handle the data path reads.
    pub fn handle(&self) -> CrlHandle {
        self.handle.clone()
    }

    /// Checks the file once; puts a changed text in force once it has settled and parses.
    pub fn poll_once(&mut self) -> CrlReload {
        let data = match self.file.poll() {
            FilePoll::Unchanged => return CrlReload::Unchanged,
            FilePoll::Settling => return CrlReload::Settling,
            FilePoll::Unreadable(e) => {
                return CrlReload::Rejected(read_error(self.file.path(), &e));
            }
            FilePoll::Settled(data) => data,
        };
        match CrlSet::parse(&data, &self.file.path().display().to_string()) {
            Ok(set) => {
                let (crls, entries) = (set.len(), set.revoked_entries());
                self.handle.replace(set);
                CrlReload::Applied { crls, entries }
            }
            Err(e) => CrlReload::Rejected(e),
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
                CrlReload::Unchanged | CrlReload::Settling => {}
                CrlReload::Applied { crls, entries } => info!(
                    path = %self.file.path().display(),
                    crls,
                    revoked = entries,
                    "CRL reloaded"
                ),
                CrlReload::Rejected(e) => error!(
                    error = %e,
                    "CRL file change rejected; the last good CRL stays in force"
                ),
            }
        }
    }
}

fn read_error(path: &Path, e: &std::io::Error) -> CrlError {
    CrlError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::BuiltinCa;

    fn replace(path: &Path, data: &[u8]) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Polls until the change is judged (a settled text takes two polls).
    fn judged(r: &mut CrlReloader) -> CrlReload {
        assert_eq!(r.poll_once(), CrlReload::Settling, "first read of a change");
        r.poll_once()
    }

    fn dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ambit-crl-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn garbage_keeps_the_last_good_crl_in_force() {
        let ca = BuiltinCa::in_memory(Duration::from_secs(3600)).unwrap();
        let dir = dir("garbage");
        let path = dir.join("crl.pem");
        replace(&path, ca.crl_pem(&[]).unwrap().as_bytes());
        let mut r = CrlReloader::load(path.clone()).unwrap();
        let handle = r.handle();
        let first = handle.current();
        assert_eq!((first.len(), first.revoked_entries()), (1, 0));
        assert_eq!(r.poll_once(), CrlReload::Unchanged);

        let two = format!(
            "{}{}",
            ca.crl_pem(&[vec![0x11], vec![0x12]]).unwrap(),
            ca.crl_pem(&[vec![0x13]]).unwrap()
        );
        replace(&path, two.as_bytes());
        assert_eq!(
            judged(&mut r),
            CrlReload::Applied {
                crls: 2,
                entries: 3
            }
        );
        let generation = handle.generation();

        for bad in [
            &b"garbage\x00\x01"[..],
            b"-----BEGIN X509 CRL-----\nnot base64!\n",
        ] {
            replace(&path, bad);
            let CrlReload::Rejected(e) = judged(&mut r) else {
                panic!("{bad:?} must be rejected")
            };
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            assert_eq!(handle.generation(), generation, "nothing replaced");
            assert_eq!(handle.current().revoked_entries(), 3, "last good in force");
        }
        // Removed: an error too, and still the last good set.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            r.poll_once(),
            CrlReload::Rejected(CrlError::Read { .. })
        ));
        assert_eq!(handle.current().revoked_entries(), 3);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_missing_file_is_no_crl_until_it_appears_and_a_bad_one_stops_the_start() {
        let ca = BuiltinCa::in_memory(Duration::from_secs(3600)).unwrap();
        let dir = dir("start");
        let path = dir.join("crl.pem");
        let mut r = CrlReloader::load(path.clone()).unwrap();
        assert!(r.handle().current().is_empty());
        replace(&path, ca.crl_pem(&[vec![5]]).unwrap().as_bytes());
        assert_eq!(
            judged(&mut r),
            CrlReload::Applied {
                crls: 1,
                entries: 1
            }
        );

        replace(&path, b"garbage");
        let Err(e) = CrlReloader::load(path.clone()) else {
            panic!("a bad file at start is an error")
        };
        assert!(matches!(e, CrlError::Parse { index: 1, .. }), "{e:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
