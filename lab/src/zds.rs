//! ZDS building blocks (wire.md §2.2): an `AF_UNIX` `SOCK_SEQPACKET` listener and connection,
//! packets with an optional file descriptor passed by `SCM_RIGHTS`, and the protobuf messages on
//! top. The node agent uses the server side; tests use both sides, also to send deliberately bad
//! packets (raw bytes, stray fds).
//!
//! Invariants: one packet is one message, never a length prefix; a received packet that the
//! kernel truncated (data or control) is an error, not a short message; received descriptors are
//! owned (closed on drop). Every call is non-blocking underneath (`AsyncFd`), so one agent task
//! can serve a socket without a thread per connection.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_proto::istio::workload::zds::{
    Ack, AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo,
    WorkloadRequest, WorkloadResponse, ZdsHello, workload_request, workload_response,
};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use prost::Message;
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The ZDS protobuf types, for callers that build or inspect messages themselves.
pub use ambit_proto::istio::workload::zds as proto;

/// The largest packet either side reads (ztunnel reads with a 1024-byte buffer).
pub const MAX_PACKET: usize = 1024;

/// What can go wrong on a ZDS socket.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("zds socket {path}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("zds: peer closed the connection")]
    Closed,
    #[error("zds: packet truncated (data or control over {MAX_PACKET} bytes)")]
    Truncated,
    #[error("zds: undecodable {what}: {source}")]
    Decode {
        what: &'static str,
        source: prost::DecodeError,
    },
    #[error("zds: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("zds: {what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("zds: node proxy refused {what}: {error}")]
    Nack { what: String, error: String },
}

/// A received packet: its bytes and any descriptors that came with it.
#[derive(Debug)]
pub struct Packet {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// A listening ZDS socket (the agent's side). Removes its path on drop.
#[derive(Debug)]
pub struct SeqpacketListener {
    inner: AsyncFd<Socket>,
    path: PathBuf,
    /// The socket file's inode: on drop the path is removed only if it is still ours (a
    /// successor may have bound the same path already).
    inode: Option<u64>,
}

/// One connected ZDS socket (either side).
#[derive(Debug)]
pub struct SeqpacketConn {
    inner: AsyncFd<Socket>,
    path: String,
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> ZdsError {
    let path = path.display().to_string();
    move |source| ZdsError::Io { path, op, source }
}

// === impl SeqpacketListener ===

impl SeqpacketListener {
    /// Binds `path` (replacing a stale socket file) and listens. Needs a tokio runtime.
    pub fn bind(path: &Path) -> Result<Self, ZdsError> {
        let _ = std::fs::remove_file(path);
        let sock =
            Socket::new(Domain::UNIX, Type::SEQPACKET, None).map_err(io_err(path, "socket"))?;
        let addr = SockAddr::unix(path).map_err(io_err(path, "address"))?;
        sock.bind(&addr).map_err(io_err(path, "bind"))?;
        sock.listen(16).map_err(io_err(path, "listen"))?;
        sock.set_nonblocking(true)
            .map_err(io_err(path, "O_NONBLOCK"))?;
        let inner = register(sock).map_err(io_err(path, "register"))?;
        let inode = std::fs::metadata(path).ok().map(|m| m.ino());
        Ok(SeqpacketListener {
            inner,
            path: path.to_path_buf(),
            inode,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the next connection.
    pub async fn accept(&self) -> Result<SeqpacketConn, ZdsError> {
        let (sock, _) = self
            .inner
            .async_io(Interest::READABLE, |s| s.accept())
            .await
            .map_err(io_err(&self.path, "accept"))?;
        SeqpacketConn::from_socket(sock, &self.path)
    }
}

impl Drop for SeqpacketListener {
    fn drop(&mut self) {
        let current = std::fs::metadata(&self.path).ok().map(|m| m.ino());
        if current.is_some() && current == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

// === impl SeqpacketConn ===

impl SeqpacketConn {
    /// Connects to a listening ZDS socket (the node proxy's side; tests use it).
    pub fn connect(path: &Path) -> Result<Self, ZdsError> {
        let sock =
            Socket::new(Domain::UNIX, Type::SEQPACKET, None).map_err(io_err(path, "socket"))?;
        let addr = SockAddr::unix(path).map_err(io_err(path, "address"))?;
        // A Unix-socket connect completes (or fails) at once; no need to wait for writability.
        sock.connect(&addr).map_err(io_err(path, "connect"))?;
        SeqpacketConn::from_socket(sock, path)
    }

    fn from_socket(sock: Socket, path: &Path) -> Result<Self, ZdsError> {
        sock.set_nonblocking(true)
            .map_err(io_err(path, "O_NONBLOCK"))?;
        let inner = register(sock).map_err(io_err(path, "register"))?;
        Ok(SeqpacketConn {
            inner,
            path: path.display().to_string(),
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> ZdsError {
        let path = self.path.clone();
        move |source| ZdsError::Io { path, op, source }
    }

    /// Sends one packet, with `fd` attached by `SCM_RIGHTS` when given.
    pub async fn send(&self, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<(), ZdsError> {
        let raw = fd.map(|f| [f.as_raw_fd()]);
        self.inner
            .async_io(Interest::WRITABLE, |s| {
                let iov = [IoSlice::new(bytes)];
                let cmsg: Vec<ControlMessage<'_>> = raw
                    .as_ref()
                    .map(|r| ControlMessage::ScmRights(r))
                    .into_iter()
                    .collect();
                sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(std::io::Error::from)
            })
            .await
            .map(drop)
            .map_err(self.err("sendmsg"))
    }

    /// Receives one packet. A zero-length read is the peer closing ([`ZdsError::Closed`]).
    pub async fn recv(&self) -> Result<Packet, ZdsError> {
        let mut buf = vec![0u8; MAX_PACKET];
        let res = self
            .inner
            .async_io(Interest::READABLE, |s| recv_packet(s, &mut buf))
            .await;
        let (n, fds) = match res {
            // A peer that closed with our packets unread resets the connection: closed all the same.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(ZdsError::Closed);
            }
            other => other.map_err(self.err("recvmsg"))??,
        };
        if n == 0 && fds.is_empty() {
            return Err(ZdsError::Closed);
        }
        buf.truncate(n);
        Ok(Packet { bytes: buf, fds })
    }

    /// Waits up to `after` for readability, then reads; used where a reply must come in time.
    pub async fn recv_within(&self, after: Duration, what: &str) -> Result<Packet, ZdsError> {
        tokio::time::timeout(after, self.recv())
            .await
            .map_err(|_| ZdsError::Timeout {
                what: what.to_string(),
                after,
            })?
    }

    // --- the proxy's side (tests) ---

    /// Sends `ZdsHello{V1}` (what a node proxy does first).
    pub async fn send_hello(&self) -> Result<(), ZdsError> {
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        self.send(&hello.encode_to_vec(), None).await
    }

    /// Receives one agent request with the descriptors that came with it.
    pub async fn recv_request(&self) -> Result<(WorkloadRequest, Vec<OwnedFd>), ZdsError> {
        let p = self.recv().await?;
        let req =
            WorkloadRequest::decode(p.bytes.as_slice()).map_err(|source| ZdsError::Decode {
                what: "WorkloadRequest",
                source,
            })?;
        Ok((req, p.fds))
    }

    /// Answers with an ack (`error` empty) or a NACK.
    pub async fn send_ack(&self, error: &str) -> Result<(), ZdsError> {
        let resp = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: error.to_string(),
            })),
        };
        self.send(&resp.encode_to_vec(), None).await
    }

    // --- the agent's side ---

    /// Receives the proxy's hello and checks its version.
    pub async fn recv_hello(&self, within: Duration) -> Result<(), ZdsError> {
        let p = self.recv_within(within, "hello").await?;
        let hello = ZdsHello::decode(p.bytes.as_slice()).map_err(|source| ZdsError::Decode {
            what: "ZdsHello",
            source,
        })?;
        if hello.version != Version::V1 as i32 || !p.fds.is_empty() {
            return Err(ZdsError::Unexpected {
                expected: "ZdsHello{V1} without fds",
                got: format!("version {} with {} fd(s)", hello.version, p.fds.len()),
            });
        }
        Ok(())
    }

    /// Sends a request (with the pod's netns for `AddWorkload`) and waits up to `within` for the
    /// ack; a NACK is [`ZdsError::Nack`].
    pub async fn request(
        &self,
        req: &WorkloadRequest,
        fd: Option<BorrowedFd<'_>>,
        within: Duration,
    ) -> Result<(), ZdsError> {
        let what = describe(req);
        self.send(&req.encode_to_vec(), fd).await?;
        let p = self.recv_within(within, &format!("ack of {what}")).await?;
        let resp =
            WorkloadResponse::decode(p.bytes.as_slice()).map_err(|source| ZdsError::Decode {
                what: "WorkloadResponse",
                source,
            })?;
        match resp.payload {
            Some(workload_response::Payload::Ack(Ack { error })) if error.is_empty() => Ok(()),
            Some(workload_response::Payload::Ack(Ack { error })) => {
                Err(ZdsError::Nack { what, error })
            }
            None => Err(ZdsError::Unexpected {
                expected: "WorkloadResponse{ack}",
                got: "an empty response".into(),
            }),
        }
    }
}

/// Registers a socket with the runtime's reactor.
#[allow(unsafe_code)]
fn register(sock: Socket) -> std::io::Result<AsyncFd<Socket>> {
    // SAFETY: a `socket2::Socket` owns its descriptor for its whole life and `as_raw_fd` always
    // returns that one descriptor; the `AsyncFd` owns the socket, so the fd outlives the
    // registration.
    unsafe { AsyncFd::register(sock) }.map_err(|e| e.into_parts().1)
}

// The only other unsafe in the lab: taking ownership of descriptors the kernel just installed for us.
#[allow(unsafe_code)]
fn recv_packet(
    s: &Socket,
    buf: &mut [u8],
) -> std::io::Result<Result<(usize, Vec<OwnedFd>), ZdsError>> {
    use std::os::fd::FromRawFd;
    let mut cmsg_buf = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg_buf),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: SCM_RIGHTS descriptors are new entries in our fd table that nothing else
                // refers to; wrapping each exactly once makes it closed exactly once.
                fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
    }
    if msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
    {
        return Ok(Err(ZdsError::Truncated));
    }
    Ok(Ok((msg.bytes, fds)))
}

/// A short description of a request for errors and logs.
pub fn describe(req: &WorkloadRequest) -> String {
    match &req.payload {
        Some(workload_request::Payload::Add(a)) => format!("AddWorkload {}", a.uid),
        Some(workload_request::Payload::Del(d)) => format!("DelWorkload {}", d.uid),
        Some(workload_request::Payload::Keep(k)) => format!("KeepWorkload {}", k.uid),
        Some(workload_request::Payload::SnapshotSent(_)) => "SnapshotSent".into(),
        None => "an empty request".into(),
    }
}

/// `AddWorkload` for a pod.
pub fn add_request(
    uid: &str,
    name: &str,
    namespace: &str,
    service_account: &str,
) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(workload_request::Payload::Add(AddWorkload {
            uid: uid.to_string(),
            workload_info: Some(WorkloadInfo {
                name: name.to_string(),
                namespace: namespace.to_string(),
                service_account: service_account.to_string(),
            }),
        })),
    }
}

/// `DelWorkload` for a pod.
pub fn del_request(uid: &str) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(workload_request::Payload::Del(DelWorkload {
            uid: uid.to_string(),
        })),
    }
}

/// `KeepWorkload` for a pod.
pub fn keep_request(uid: &str) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(workload_request::Payload::Keep(KeepWorkload {
            uid: uid.to_string(),
        })),
    }
}

/// `SnapshotSent`.
pub fn snapshot_sent() -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(workload_request::Payload::SnapshotSent(SnapshotSent {})),
    }
}
