//! Pod network namespaces: a validated handle per pod, and running code (socket creation)
//! inside one.
//!
//! Invariants:
//! - a [`PodNetns`] always holds a descriptor that `fstatfs` showed to be a network namespace
//!   (nsfs); its identity is the (device, inode) pair of that file, so two descriptors for the
//!   same namespace compare equal;
//! - [`PodNetns::run_in`] switches only the calling thread (`setns(CLONE_NEWNET)`) and always
//!   switches it back to the process's own namespace, captured once at startup
//!   ([`HostNetns::capture`]), also when the closure fails or panics. A thread that cannot get
//!   back would create later sockets in a pod's namespace, so that case aborts the process.
//! - Sockets keep the namespace they were created in; binding, connecting and I/O afterwards
//!   happen on any thread.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nix::sched::{CloneFlags, setns};
use nix::sys::stat::fstat;
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};
use socket2::{Domain, Protocol, Socket, Type};

use crate::proxy::socket::SocketFactory;

/// Why a namespace handle could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("open the process's own network namespace ({path}): {source}")]
    Host {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("inspect the passed namespace descriptor: {source}")]
    Stat {
        #[source]
        source: io::Error,
    },
    #[error("the passed descriptor is not a network namespace (filesystem type {fs_type:#x})")]
    NotANamespace { fs_type: u64 },
}

/// The identity of a network namespace: device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsId {
    pub dev: u64,
    pub inode: u64,
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "netns:[{}:{}]", self.dev, self.inode)
    }
}

/// The process's own network namespace, to return to after working inside a pod's.
#[derive(Debug)]
pub struct HostNetns {
    fd: OwnedFd,
    id: NetnsId,
}

impl HostNetns {
    /// Captures the calling thread's namespace; call once at startup, before any `setns`.
    pub fn capture() -> Result<Arc<HostNetns>, NetnsError> {
        const PATH: &str = "/proc/thread-self/ns/net";
        let file = File::open(PATH).map_err(|source| NetnsError::Host { path: PATH, source })?;
        let fd = OwnedFd::from(file);
        let id = identify(&fd)?;
        Ok(Arc::new(HostNetns { fd, id }))
    }

    pub fn id(&self) -> NetnsId {
        self.id
    }
}

/// A pod's network namespace. Cheap to clone; equality is namespace identity.
#[derive(Clone)]
pub struct PodNetns {
    inner: Arc<Inner>,
}

struct Inner {
    fd: OwnedFd,
    id: NetnsId,
    host: Arc<HostNetns>,
}

impl PodNetns {
    /// Validates `fd` as a network namespace and wraps it.
    pub fn new(fd: OwnedFd, host: Arc<HostNetns>) -> Result<PodNetns, NetnsError> {
        let id = identify(&fd)?;
        Ok(PodNetns {
            inner: Arc::new(Inner { fd, id, host }),
        })
    }

    pub fn id(&self) -> NetnsId {
        self.inner.id
    }

    /// Runs `f` on this thread inside the pod's namespace, then switches back.
    pub fn run_in<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        setns(self.inner.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        // The guard switches back on every exit from here, a panic in `f` included.
        let _back = SwitchBack(&self.inner.host);
        f()
    }
}

impl PartialEq for PodNetns {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for PodNetns {}

impl fmt::Debug for PodNetns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PodNetns({})", self.inner.id)
    }
}

struct SwitchBack<'a>(&'a HostNetns);

impl Drop for SwitchBack<'_> {
    fn drop(&mut self) {
        if let Err(e) = setns(self.0.fd.as_fd(), CloneFlags::CLONE_NEWNET) {
            // This thread would keep creating sockets in a pod's namespace: stop everything.
            tracing::error!(error = %e, "cannot return to the host network namespace; aborting");
            std::process::abort();
        }
    }
}

fn identify(fd: &OwnedFd) -> Result<NetnsId, NetnsError> {
    let fs = fstatfs(fd).map_err(|e| NetnsError::Stat { source: e.into() })?;
    if fs.filesystem_type() != NSFS_MAGIC {
        return Err(NetnsError::NotANamespace {
            fs_type: fs.filesystem_type().0 as u64,
        });
    }
    let st = fstat(fd).map_err(|e| NetnsError::Stat { source: e.into() })?;
    Ok(NetnsId {
        dev: st.st_dev,
        inode: st.st_ino,
    })
}

/// Creates the proxy's sockets inside a pod's namespace.
#[derive(Clone, Debug)]
pub struct InpodSocketFactory {
    pub netns: PodNetns,
}

impl SocketFactory for InpodSocketFactory {
    fn tcp_socket(&self, domain: Domain) -> io::Result<Socket> {
        self.netns
            .run_in(|| Socket::new(domain, Type::STREAM, Some(Protocol::TCP)))
    }

    fn udp_socket(&self, domain: Domain) -> io::Result<Socket> {
        self.netns
            .run_in(|| Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_namespace_is_a_namespace_and_equal_to_itself() {
        let host = HostNetns::capture().unwrap();
        let again = File::open("/proc/self/ns/net").unwrap();
        let pod = PodNetns::new(again.into(), host.clone()).unwrap();
        assert_eq!(pod.id(), host.id());
        // Entering our own namespace and back is a no-op that must succeed.
        let v = pod.run_in(|| Ok(7)).unwrap();
        assert_eq!(v, 7);
        let err = pod
            .run_in(|| Err::<(), _>(io::Error::other("boom")))
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
    }

    #[test]
    fn a_regular_file_is_rejected() {
        let host = HostNetns::capture().unwrap();
        let f = File::open("/proc/self/status").unwrap();
        let err = PodNetns::new(f.into(), host).unwrap_err();
        assert!(matches!(err, NetnsError::NotANamespace { .. }), "{err}");
    }
}
