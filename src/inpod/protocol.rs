//! ZDS framing: one protobuf message per `SOCK_SEQPACKET` packet, no length prefix.
//!
//! The node agent is the server; [`ZdsConnection::connect`] dials its Unix socket and sends the
//! bare `ZdsHello{V1}`. Each [`ZdsConnection::recv`] reads one packet into a 1024-byte buffer,
//! with control space for one passed file descriptor (alignment padding admits a second, which
//! the state machine NACKs: only `AddWorkload` may carry one, and exactly one); a packet or its
//! control data that did not fit (`MSG_TRUNC` / `MSG_CTRUNC`) is an error that ends the
//! connection, never a partial message. Every descriptor the
//! kernel handed us is owned (`OwnedFd`) from the moment `recvmsg` returns, so none leaks, also
//! on the error paths.
//!
//! Decoding is left to the caller ([`decode_request`]): an undecodable packet is answered, not
//! fatal to the connection.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use ambit_proto::istio::workload::zds;
use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use prost::Message;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::statemanager::{Request, WorkloadInfo};

/// The receive buffer: ZDS requests are small, and a larger one is a protocol violation.
pub const MAX_PACKET: usize = 1024;

/// Why the connection to the node agent failed or must be dropped.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connect to the node agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{op} on the ZDS socket: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the node agent closed the connection")]
    Closed,
    #[error("a ZDS packet of more than {MAX_PACKET} bytes was truncated")]
    Truncated,
    #[error("a ZDS packet carried more control data than one file descriptor")]
    ControlTruncated,
    #[error("short send on the ZDS socket: {sent} of {len} bytes")]
    ShortSend { sent: usize, len: usize },
}

/// One received packet: the raw message and the descriptors passed with it (at most one).
#[derive(Debug)]
pub struct Packet {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// A connected ZDS session (client side).
pub struct ZdsConnection {
    fd: AsyncFd<OwnedFd>,
}

impl ZdsConnection {
    /// Connects to the node agent's socket at `path` and sends `ZdsHello{V1}`. Must be called
    /// inside a tokio runtime (the socket registers with its reactor).
    pub async fn connect(path: &Path) -> Result<ZdsConnection, ProtocolError> {
        let connect_err = |e: Errno| ProtocolError::Connect {
            path: path.to_path_buf(),
            source: e.into(),
        };
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(connect_err)?;
        let addr = UnixAddr::new(path).map_err(connect_err)?;
        // A blocking connect on a Unix socket completes at once (or fails at once): there is no
        // handshake to wait for. The socket turns non-blocking only afterwards.
        socket::connect(fd.as_raw_fd(), &addr).map_err(connect_err)?;
        set_nonblocking(&fd).map_err(|source| ProtocolError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let fd = register(fd).map_err(|source| ProtocolError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let conn = ZdsConnection { fd };
        let hello = zds::ZdsHello {
            version: zds::Version::V1 as i32,
        };
        conn.send_bytes(&hello.encode_to_vec()).await?;
        Ok(conn)
    }

    /// Receives one packet. A zero-length read is the peer closing the connection.
    pub async fn recv(&self) -> Result<Packet, ProtocolError> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|source| ProtocolError::Io { op: "poll", source })?;
            match guard.try_io(|fd| recv_packet(fd.get_ref().as_raw_fd())) {
                Ok(Ok(res)) => return res,
                Ok(Err(source)) => {
                    return Err(ProtocolError::Io {
                        op: "recvmsg",
                        source,
                    });
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends a `WorkloadResponse{ack{error}}`; an empty `error` is an ACK, anything else a NACK.
    pub async fn send_ack(&self, error: &str) -> Result<(), ProtocolError> {
        let resp = zds::WorkloadResponse {
            payload: Some(zds::workload_response::Payload::Ack(zds::Ack {
                error: error.to_string(),
            })),
        };
        self.send_bytes(&resp.encode_to_vec()).await
    }

    async fn send_bytes(&self, bytes: &[u8]) -> Result<(), ProtocolError> {
        let sent = self
            .fd
            .async_io(Interest::WRITABLE, |fd| {
                socket::send(fd.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
            })
            .await
            .map_err(|source| ProtocolError::Io { op: "send", source })?;
        if sent != bytes.len() {
            return Err(ProtocolError::ShortSend {
                sent,
                len: bytes.len(),
            });
        }
        Ok(())
    }
}

/// Decodes a `WorkloadRequest`.
pub fn decode_request(bytes: &[u8]) -> Result<zds::WorkloadRequest, prost::DecodeError> {
    zds::WorkloadRequest::decode(bytes)
}

/// Wire request → domain request; `None` without a payload. Only an `AddWorkload` with exactly
/// one descriptor gets a namespace (`netns` validates it); every other descriptor is dropped
/// (closed) here. Generic over the descriptor so the fuzz target can run it without any.
pub fn to_request<F, N>(
    req: zds::WorkloadRequest,
    mut fds: Vec<F>,
    netns: impl FnOnce(F) -> Result<N, String>,
) -> Option<Request<N>> {
    use zds::workload_request::Payload;
    Some(match req.payload? {
        Payload::Add(add) => {
            let netns = match (fds.pop(), fds.is_empty()) {
                (Some(fd), true) => Some(netns(fd)),
                _ => None,
            };
            Request::Add {
                uid: add.uid,
                info: add.workload_info.map(|i| WorkloadInfo {
                    name: i.name,
                    namespace: i.namespace,
                    service_account: i.service_account,
                }),
                netns,
            }
        }
        Payload::Keep(k) => Request::Keep { uid: k.uid },
        Payload::Del(d) => Request::Del { uid: d.uid },
        Payload::SnapshotSent(_) => Request::SnapshotSent,
    })
}

/// One `recvmsg`; `WouldBlock` goes back to the reactor, other errors are final.
fn recv_packet(fd: RawFd) -> io::Result<Result<Packet, ProtocolError>> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = match socket::recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
    {
        Ok(m) => m,
        Err(Errno::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
        Err(Errno::EINTR) => return Err(io::ErrorKind::WouldBlock.into()),
        Err(e) => {
            return Ok(Err(ProtocolError::Io {
                op: "recvmsg",
                source: e.into(),
            }));
        }
    };
    let len = msg.bytes;
    let flags = msg.flags;
    let mut fds = Vec::new();
    if !flags.contains(MsgFlags::MSG_CTRUNC) {
        let cmsgs = match msg.cmsgs() {
            Ok(c) => c,
            Err(e) => {
                return Ok(Err(ProtocolError::Io {
                    op: "read control messages",
                    source: e.into(),
                }));
            }
        };
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                fds.extend(raw.into_iter().map(adopt));
            }
        }
    } else {
        // nix refuses to walk a truncated control buffer, but the kernel did install the
        // descriptors that fit: take them from the (single) header so they get closed.
        fds = truncated_rights(&cmsg);
    }
    // Checked after adopting the descriptors, so a rejected packet still closes them.
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Ok(Err(ProtocolError::Truncated));
    }
    if flags.contains(MsgFlags::MSG_CTRUNC) {
        return Ok(Err(ProtocolError::ControlTruncated));
    }
    if len == 0 && fds.is_empty() {
        return Ok(Err(ProtocolError::Closed));
    }
    buf.truncate(len);
    Ok(Ok(Packet { bytes: buf, fds }))
}

/// The descriptors of an `SCM_RIGHTS` header at the start of a truncated control buffer.
fn truncated_rights(buf: &[u8]) -> Vec<OwnedFd> {
    const LEN: usize = std::mem::size_of::<libc::cmsghdr>();
    const WORD: usize = std::mem::size_of::<usize>();
    let int = |at: usize| -> Option<i32> {
        let bytes = buf.get(at..at + 4)?;
        Some(i32::from_ne_bytes(bytes.try_into().ok()?))
    };
    let Some(cmsg_len) = buf
        .get(..WORD)
        .and_then(|b| b.try_into().ok())
        .map(usize::from_ne_bytes)
    else {
        return Vec::new();
    };
    if int(WORD) != Some(libc::SOL_SOCKET) || int(WORD + 4) != Some(libc::SCM_RIGHTS) {
        return Vec::new();
    }
    let end = cmsg_len.min(buf.len());
    (LEN..end)
        .step_by(4)
        .filter_map(|at| int(at).filter(|fd| *fd >= 0))
        .map(adopt)
        .collect()
}

/// Takes ownership of a descriptor the kernel installed for us through `SCM_RIGHTS`.
#[allow(unsafe_code)]
fn adopt(raw: RawFd) -> OwnedFd {
    // SAFETY: `raw` was just created in this process by recvmsg(SCM_RIGHTS) (with CLOEXEC);
    // nothing else knows of it, so this is its only owner and it is closed exactly once.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Registers the socket with the current runtime's reactor.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor, owned by the `AsyncFd` for its whole
    // life, and `as_raw_fd` always returns that same descriptor.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::ControlMessage;
    use std::fs::File;

    /// A listening node-agent socket in a fresh temp path, and ambit's connection to it.
    async fn pair(tag: &str) -> (ZdsConnection, OwnedFd, PathBuf) {
        let path =
            std::env::temp_dir().join(format!("ambit-zds-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let l = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        socket::bind(l.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        socket::listen(&l, socket::Backlog::new(1).unwrap()).unwrap();
        let conn = ZdsConnection::connect(&path).await.unwrap();
        let peer = adopt(socket::accept(l.as_raw_fd()).unwrap());
        // The hello comes first, bare.
        let mut buf = [0u8; 64];
        let n = socket::recv(peer.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        let hello = zds::ZdsHello::decode(&buf[..n]).unwrap();
        assert_eq!(hello.version, zds::Version::V1 as i32);
        (conn, peer, path)
    }

    fn send_with_fds(peer: &OwnedFd, bytes: &[u8], fds: &[RawFd]) {
        let iov = [std::io::IoSlice::new(bytes)];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        socket::sendmsg::<()>(peer.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).unwrap();
    }

    #[tokio::test]
    async fn one_packet_one_message_with_its_descriptor() {
        let (conn, peer, path) = pair("ok").await;
        let f = File::open("/proc/self/ns/net").unwrap();
        send_with_fds(&peer, b"\x1a\x00", &[f.as_raw_fd()]);
        let p = conn.recv().await.unwrap();
        assert_eq!(p.bytes, b"\x1a\x00");
        assert_eq!(p.fds.len(), 1);
        let req = decode_request(&p.bytes).unwrap();
        assert!(matches!(
            req.payload,
            Some(zds::workload_request::Payload::SnapshotSent(_))
        ));
        conn.send_ack("nope").await.unwrap();
        let mut buf = [0u8; 64];
        let n = socket::recv(peer.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        let resp = zds::WorkloadResponse::decode(&buf[..n]).unwrap();
        assert_eq!(
            resp.payload,
            Some(zds::workload_response::Payload::Ack(zds::Ack {
                error: "nope".into()
            }))
        );
        drop(peer);
        assert!(matches!(conn.recv().await, Err(ProtocolError::Closed)));
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn oversized_packets_and_extra_descriptors_are_rejected() {
        let (conn, peer, path) = pair("trunc").await;
        send_with_fds(&peer, &[0u8; MAX_PACKET + 1], &[]);
        assert!(matches!(conn.recv().await, Err(ProtocolError::Truncated)));
        // Alignment padding leaves room for a second descriptor (the state machine NACKs that);
        // a third does not fit.
        let f: Vec<File> = (0..3)
            .map(|_| File::open("/proc/self/ns/net").unwrap())
            .collect();
        let raw: Vec<RawFd> = f.iter().map(|f| f.as_raw_fd()).collect();
        send_with_fds(&peer, b"\x1a\x00", &raw[..2]);
        assert_eq!(conn.recv().await.unwrap().fds.len(), 2);
        send_with_fds(&peer, b"\x1a\x00", &raw);
        let r = conn.recv().await;
        assert!(matches!(r, Err(ProtocolError::ControlTruncated)), "{r:?}");
        let _ = std::fs::remove_file(path);
    }
}
