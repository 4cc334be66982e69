//! A file that is replaced while the process runs (the local config, the CRL), watched by
//! polling: its size, modification time and inode tell whether it changed without reading it;
//! a changed content is handed over only once two reads one poll apart agree.
//!
//! Polling needs no extra dependency and follows every way a file gets replaced (an in-place
//! write, a rename over it, a Kubernetes ConfigMap symlink swap: metadata follows links).
//! Invariants: a content is handed over only after it read the same on two polls, so a file
//! caught half-written is never judged; each settled content is handed over once.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What one poll found.
#[derive(Debug)]
pub enum FilePoll {
    Unchanged,
    /// The file changed (or still was changing) since the last poll; its content is handed
    /// over once it reads the same on the next one.
    Settling,
    /// A new content, read the same twice.
    Settled(Vec<u8>),
    /// The file could not be read (it may have gone); nothing is handed over.
    Unreadable(std::io::Error),
}

/// One watched file.
#[derive(Debug)]
pub struct SettledFile {
    path: PathBuf,
    seen: Option<Fingerprint>,
    /// A content read once and not handed over yet: it must read the same on the next poll.
    settling: Option<Vec<u8>>,
}

/// What identifies a version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl SettledFile {
    /// Starts from the file as it is now (the version the caller loaded already).
    pub fn new(path: PathBuf) -> SettledFile {
        let seen = fingerprint(&path);
        SettledFile {
            path,
            seen,
            settling: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the file once.
    pub fn poll(&mut self) -> FilePoll {
        let now = fingerprint(&self.path);
        if now == self.seen && self.settling.is_none() {
            return FilePoll::Unchanged;
        }
        // Taken before the read, so a write racing the read is seen again on the next poll.
        self.seen = now;
        let data = match std::fs::read(&self.path) {
            Ok(data) => data,
            Err(e) => {
                self.settling = None;
                return FilePoll::Unreadable(e);
            }
        };
        match self.settling.take() {
            Some(before) if before == data => FilePoll::Settled(data),
            _ => {
                self.settling = Some(data);
                FilePoll::Settling
            }
        }
    }
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
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

    #[test]
    fn a_change_is_handed_over_once_it_reads_the_same_twice() {
        let dir = std::env::temp_dir().join(format!("ambit-settled-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, "one").unwrap();
        let mut f = SettledFile::new(path.clone());
        assert!(matches!(f.poll(), FilePoll::Unchanged));
        std::fs::write(&path, "two, half").unwrap();
        assert!(matches!(f.poll(), FilePoll::Settling));
        // Still being written: the next read differs, so it keeps settling.
        std::fs::write(&path, "two, whole").unwrap();
        assert!(matches!(f.poll(), FilePoll::Settling));
        match f.poll() {
            FilePoll::Settled(d) => assert_eq!(d, b"two, whole"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(f.poll(), FilePoll::Unchanged), "handed over once");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(f.poll(), FilePoll::Unreadable(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
