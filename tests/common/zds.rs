//! The node side of in-pod (shared) mode, played by the test: a "node" namespace where ambit
//! runs, pod namespaces joined to it by veths with the in-pod redirection rules, and a node
//! agent driven request by request over the lab's ZDS socket (`ambit_lab::zds`), passing each
//! pod's netns fd: the tests choose every request, including malformed ones.
//!
//! `common::zds`: used by the in-pod tests of the `dataplane` and `ops` binaries.
//!
//! Invariants: every agent read is bounded ([`STEP`]); namespaces and processes are owned
//! by guards, so a failing test removes them too.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_lab::zds::{SeqpacketConn, SeqpacketListener, ZdsError};
use ambit_lab::{Netns, Process, ProcessSpec, http_get, link, nft};
use ambit_proto::istio::workload::zds;
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

/// The node agent's listening socket (the lab's; it removes the path on drop unless a
/// successor has bound it again).
pub struct Agent {
    listener: SeqpacketListener,
    pub path: PathBuf,
}

/// One accepted connection from ambit.
pub struct AgentConn {
    conn: SeqpacketConn,
}

impl Agent {
    /// Listens on `path` (removing a stale socket file first).
    pub fn listen(path: &Path) -> Agent {
        let listener = SeqpacketListener::bind(path).unwrap_or_else(|e| panic!("{e}"));
        Agent {
            listener,
            path: path.to_path_buf(),
        }
    }

    /// Accepts ambit's connection within `within` and checks its `ZdsHello{V1}`.
    pub async fn accept(&self, within: Duration) -> AgentConn {
        let conn = tokio::time::timeout(within, self.listener.accept())
            .await
            .unwrap_or_else(|_| panic!("ambit did not connect to the agent within {within:?}"))
            .unwrap_or_else(|e| panic!("ambit did not connect to the agent: {e}"));
        conn.recv_hello(STEP)
            .await
            .unwrap_or_else(|e| panic!("ZdsHello: {e}"));
        AgentConn { conn }
    }
}

impl AgentConn {
    /// Sends raw bytes as one packet, with an optional descriptor, and reads the answer.
    pub async fn request_raw(&self, bytes: &[u8], fd: Option<&File>) -> Answer {
        if self.conn.send(bytes, fd.map(|f| f.as_fd())).await.is_err() {
            return Answer::Closed;
        }
        let packet = match self.conn.recv_within(STEP, "answer from ambit").await {
            Ok(p) => p,
            Err(ZdsError::Closed) => return Answer::Closed,
            Err(e) => panic!("no answer from ambit: {e}"),
        };
        let resp = zds::WorkloadResponse::decode(&packet.bytes[..]).unwrap();
        match resp.payload {
            Some(zds::workload_response::Payload::Ack(a)) if a.error.is_empty() => Answer::Ack,
            Some(zds::workload_response::Payload::Ack(a)) => Answer::Nack(a.error),
            None => panic!("a response without a payload"),
        }
    }

    /// Sends a request and reads the answer.
    pub async fn request(&self, req: zds::WorkloadRequest, fd: Option<File>) -> Answer {
        self.request_raw(&req.encode_to_vec(), fd.as_ref()).await
    }

    /// `AddWorkload` for `pod`, with its netns fd.
    pub async fn add(&self, pod: &Pod) -> Answer {
        self.request(add_request(pod), Some(pod.netns_file())).await
    }

    pub async fn del(&self, uid: &str) -> Answer {
        self.request(ambit_lab::zds::del_request(uid), None).await
    }

    pub async fn snapshot(&self) -> Answer {
        self.request(ambit_lab::zds::snapshot_sent(), None).await
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
    ambit_lab::zds::add_request(&pod.uid, name, namespace, sa)
}
