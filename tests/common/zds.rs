//! The node side of in-pod (shared) mode, played by the test: a "node" namespace where ambit
//! runs, pod namespaces joined to it by veths with the in-pod redirection rules, and a fake
//! node agent serving ZDS on a `SOCK_SEQPACKET` Unix socket, passing each pod's netns fd.
//!
//! `common::zds`: used by the in-pod tests of the `dataplane` and `ops` binaries.
//!
//! Invariants: every agent read is bounded (`SO_RCVTIMEO`); namespaces and processes are owned
//! by guards, so a failing test removes them too.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_lab::{Netns, Process, ProcessSpec, http_get, link, nft};
use ambit_proto::istio::workload::zds;
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, sockopt,
};
use nix::sys::time::TimeVal;
use prost::Message;

use crate::common::STEP;
use crate::common::mesh::AMBIT;

/// A pod: its namespace, address, workload triple (namespace, name, service account) and uid.
pub struct Pod {
    pub ns: Netns,
    pub ip: IpAddr,
    pub wl: (&'static str, &'static str, &'static str),
    pub uid: String,
}

impl Pod {
    pub fn spiffe(&self) -> String {
        crate::common::mesh::spiffe(self.wl)
    }

    /// `/var/run/netns/<name>`, opened: what the node agent passes.
    pub fn netns_file(&self) -> File {
        File::open(format!("/var/run/netns/{}", self.ns.name())).unwrap()
    }
}

/// A node namespace with pods `10.1.<i>.2/24` behind veths (`10.1.<i>.1` on the node side).
pub struct Node {
    // Drop order: pods' namespaces, then the node.
    pub pods: Vec<Pod>,
    pub ns: Netns,
}

/// The in-pod inbound capture: TCP arriving from outside the pod, except HBONE (15008), goes to
/// the proxy's plaintext inbound listener.
pub fn inbound_capture(port: u16) -> String {
    format!(
        "table inet ambit_inbound
delete table inet ambit_inbound
table inet ambit_inbound {{
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    iifname \"lo\" return
    tcp dport 15008 return
    meta l4proto tcp redirect to :{port}
  }}
}}
"
    )
}

impl Node {
    pub fn new(wls: &[(&'static str, &'static str, &'static str)]) -> Node {
        let ns = Netns::new("node").unwrap_or_else(|e| panic!("{e}"));
        ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
        let mut pods = Vec::new();
        for (i, wl) in wls.iter().enumerate() {
            let i = i + 1;
            let pod = Netns::new(&format!("pod{i}")).unwrap();
            let node_if = format!("vpod{i}");
            link::veth(&ns, &node_if, &pod, "eth0").unwrap();
            ns.add_addr(&node_if, &format!("10.1.{i}.1/24")).unwrap();
            pod.add_addr("eth0", &format!("10.1.{i}.2/24")).unwrap();
            pod.route(&["default", "via", &format!("10.1.{i}.1")])
                .unwrap();
            nft::install_outbound_capture(&pod, 15001).unwrap();
            pod.nft(&inbound_capture(15006)).unwrap();
            nft::install_return_path(&pod).unwrap();
            pods.push(Pod {
                ns: pod,
                ip: format!("10.1.{i}.2").parse().unwrap(),
                wl: *wl,
                uid: format!("uid-{}", wl.1),
            });
        }
        Node { pods, ns }
    }

    /// The local config listing every pod's workload.
    pub fn config(&self) -> String {
        let mut out = String::from("workloads:\n");
        for p in &self.pods {
            out.push_str(&crate::common::mesh::workload_yaml(p.wl, &[p.ip]));
            out.push_str("  services: {}\n");
        }
        out
    }

    /// Starts a shared-mode ambit in the node namespace (not waiting for readiness: that needs
    /// the snapshot).
    pub fn start_ambit(&self, dir: &Path, name: &str, uds: &Path) -> Process {
        let config = dir.join("local.yaml");
        std::fs::write(&config, self.config()).unwrap();
        let spec = ProcessSpec::new(name, AMBIT)
            .env("PROXY_MODE", "shared")
            .env("INPOD_UDS", uds.display().to_string())
            .env("FAKE_CA", "true")
            .env("CA_ADDRESS", "")
            .env("XDS_ADDRESS", "")
            .env("LOCAL_XDS_PATH", config.display().to_string())
            .env("AMBIT_CA_DIR", dir.join("ca").display().to_string())
            .env("RUST_LOG", "info");
        Process::spawn(Some(&self.ns), &spec, dir).unwrap()
    }

    /// `GET /healthz/ready` on the node: `Some(status)` once the server answers.
    pub async fn readiness(&self) -> Option<u16> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 15021));
        http_get(&self.ns, addr, "/healthz/ready", Duration::from_secs(2))
            .await
            .ok()
            .map(|r| r.status)
    }

    /// Waits (bounded) until readiness answers `want`.
    pub async fn wait_readiness(&self, want: u16, ambit: &Process) {
        for _ in 0..100 {
            if self.readiness().await == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "readiness never answered {want}; ambit log:\n{}",
            ambit.tail(40)
        );
    }
}

/// What ambit answered to one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Ack,
    Nack(String),
    /// ambit closed the connection.
    Closed,
}

/// The node agent's listening socket.
pub struct Agent {
    listener: OwnedFd,
    pub path: PathBuf,
}

/// One accepted connection from ambit (blocking I/O with a receive timeout).
pub struct AgentConn {
    fd: OwnedFd,
}

fn timeout_opt(fd: &OwnedFd, d: Duration) {
    let tv = TimeVal::new(d.as_secs() as _, d.subsec_micros() as _);
    socket::setsockopt(fd, sockopt::ReceiveTimeout, &tv).unwrap();
}

impl Agent {
    /// Listens on `path` (removing a stale socket file first).
    pub fn listen(path: &Path) -> Agent {
        let _ = std::fs::remove_file(path);
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
        socket::listen(&fd, socket::Backlog::new(8).unwrap()).unwrap();
        Agent {
            listener: fd,
            path: path.to_path_buf(),
        }
    }

    /// Accepts ambit's connection within `within` and checks its `ZdsHello{V1}`. Blocking, so it
    /// runs on a blocking thread.
    pub async fn accept(&self, within: Duration) -> AgentConn {
        timeout_opt(&self.listener, within);
        let raw = self.listener.as_raw_fd();
        let fd = tokio::task::spawn_blocking(move || socket::accept(raw))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("ambit did not connect to the agent: {e}"));
        let fd: OwnedFd = adopt(fd);
        timeout_opt(&fd, STEP);
        let conn = AgentConn { fd };
        let hello = conn.recv_packet().expect("ZdsHello");
        let hello = zds::ZdsHello::decode(&hello[..]).unwrap();
        assert_eq!(hello.version, zds::Version::V1 as i32);
        conn
    }
}

/// Accepted descriptors come back from nix as raw fds; this test code owns them from here.
#[allow(unsafe_code)]
fn adopt(raw: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `raw` was just returned by accept(2) and has no other owner.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

impl AgentConn {
    fn recv_packet(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 1024];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, None, MsgFlags::empty())
            .unwrap_or_else(|e| panic!("no answer from ambit: {e}"));
        let n = msg.bytes;
        if n == 0 {
            return None;
        }
        buf.truncate(n);
        Some(buf)
    }

    /// Sends raw bytes as one packet, with an optional descriptor, and reads the answer.
    pub fn request_raw(&self, bytes: &[u8], fd: Option<&File>) -> Answer {
        let iov = [IoSlice::new(bytes)];
        let fds: Vec<RawFd> = fd.iter().map(|f| f.as_fd().as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        if socket::sendmsg::<()>(
            self.fd.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .is_err()
        {
            return Answer::Closed;
        }
        match self.recv_packet() {
            None => Answer::Closed,
            Some(bytes) => {
                let resp = zds::WorkloadResponse::decode(&bytes[..]).unwrap();
                match resp.payload {
                    Some(zds::workload_response::Payload::Ack(a)) if a.error.is_empty() => {
                        Answer::Ack
                    }
                    Some(zds::workload_response::Payload::Ack(a)) => Answer::Nack(a.error),
                    None => panic!("a response without a payload"),
                }
            }
        }
    }

    /// Sends a request (blocking thread) and reads the answer.
    pub async fn request(&self, req: zds::WorkloadRequest, fd: Option<File>) -> Answer {
        let bytes = req.encode_to_vec();
        let raw = self.fd.try_clone().unwrap();
        tokio::task::spawn_blocking(move || AgentConn { fd: raw }.request_raw(&bytes, fd.as_ref()))
            .await
            .unwrap()
    }

    /// `AddWorkload` for `pod`, with its netns fd.
    pub async fn add(&self, pod: &Pod) -> Answer {
        self.request(add_request(pod), Some(pod.netns_file())).await
    }

    pub async fn del(&self, uid: &str) -> Answer {
        self.request(
            zds::WorkloadRequest {
                payload: Some(zds::workload_request::Payload::Del(zds::DelWorkload {
                    uid: uid.into(),
                })),
            },
            None,
        )
        .await
    }

    pub async fn snapshot(&self) -> Answer {
        self.request(snapshot_request(), None).await
    }

    /// Adds every pod, then `SnapshotSent`, asserting ACKs.
    pub async fn announce(&self, pods: &[&Pod]) {
        for p in pods {
            assert_eq!(self.add(p).await, Answer::Ack, "add {}", p.uid);
        }
        assert_eq!(self.snapshot().await, Answer::Ack);
    }
}

pub fn add_request(pod: &Pod) -> zds::WorkloadRequest {
    let (namespace, name, sa) = pod.wl;
    zds::WorkloadRequest {
        payload: Some(zds::workload_request::Payload::Add(zds::AddWorkload {
            uid: pod.uid.clone(),
            workload_info: Some(zds::WorkloadInfo {
                name: name.into(),
                namespace: namespace.into(),
                service_account: sa.into(),
            }),
        })),
    }
}

pub fn snapshot_request() -> zds::WorkloadRequest {
    zds::WorkloadRequest {
        payload: Some(zds::workload_request::Payload::SnapshotSent(
            zds::SnapshotSent {},
        )),
    }
}
