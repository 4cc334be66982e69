//! The node agent (istio-cni's role) for one node: it writes the in-pod redirection rules into
//! each captured pod and announces the node's captured pods to the node proxy over ZDS
//! (wire.md §2.2), as the server of that node's socket.
//!
//! Per connection: expect `ZdsHello`, send `AddWorkload` + netns fd for every known pod, then
//! `SnapshotSent`, waiting for each ack; afterwards each [`NodeAgent::add_pod`] /
//! [`NodeAgent::del_pod`] is sent at once and its ack awaited. A proxy that reconnects (it was
//! restarted) gets a fresh snapshot; the newest connection replaces an older one. Pods added
//! while no proxy is connected are only recorded and go out in the next snapshot.
//!
//! Invariant: the agent's pod set is the truth; the task is the only one touching the socket, so
//! requests and acks never interleave.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::zds::{self, SeqpacketConn, SeqpacketListener, ZdsError};
use crate::{LabError, Netns, nft};

/// How long the agent waits for the proxy's hello and for each ack.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod as the agent announces it.
#[derive(Debug, Clone)]
pub struct PodAnnounce {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// The pod's network namespace as `ip netns` names it (its fd goes with `AddWorkload`).
    pub netns: String,
}

/// What happened to an add or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// The connected proxy acked it.
    Acked,
    /// No proxy is connected; it goes out with the next snapshot.
    Recorded,
}

/// A node agent task serving one node's ZDS socket; stops when dropped.
#[derive(Debug)]
pub struct NodeAgent {
    node: String,
    socket: PathBuf,
    dns_capture: bool,
    tx: mpsc::Sender<Command>,
    snapshots: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
enum Command {
    Add(PodAnnounce, oneshot::Sender<Result<Announced, ZdsError>>),
    Del(String, oneshot::Sender<Result<Announced, ZdsError>>),
}

// === impl NodeAgent ===

impl NodeAgent {
    /// Writes the rules into every pod of `pods` (all captured) and starts serving `socket`.
    /// Needs a tokio runtime.
    pub fn start(
        node: &str,
        socket: &Path,
        pods: Vec<(&Netns, PodAnnounce)>,
        dns_capture: bool,
    ) -> Result<NodeAgent, LabError> {
        for (ns, _) in &pods {
            nft::install_inpod(ns, dns_capture)?;
        }
        Self::resume(node, socket, pods, dns_capture)
    }

    /// Starts an agent for pods whose in-pod rules are already in place (a restarted agent, as
    /// istio-cni after a restart: it re-announces its pods and leaves their rules alone).
    pub fn resume(
        node: &str,
        socket: &Path,
        pods: Vec<(&Netns, PodAnnounce)>,
        dns_capture: bool,
    ) -> Result<NodeAgent, LabError> {
        let mut known = BTreeMap::new();
        for (_, pod) in pods {
            known.insert(pod.uid.clone(), pod);
        }
        let listener = SeqpacketListener::bind(socket).map_err(|e| LabError::Agent {
            node: node.to_string(),
            detail: e.to_string(),
        })?;
        let (tx, rx) = mpsc::channel(16);
        let (snap_tx, snapshots) = watch::channel(0);
        let task = tokio::spawn(serve(node.to_string(), listener, known, rx, snap_tx));
        Ok(NodeAgent {
            node: node.to_string(),
            socket: socket.to_path_buf(),
            dns_capture,
            tx,
            snapshots,
            task,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node's ZDS socket (`INPOD_UDS` of its node proxy).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Counts snapshots the proxy acked fully (bumps on every (re)connect).
    pub fn snapshots(&self) -> watch::Receiver<u64> {
        self.snapshots.clone()
    }

    /// Captures a new pod (rules first, so its first packet is already redirected) and announces it.
    pub async fn add_pod(&self, ns: &Netns, pod: PodAnnounce) -> Result<Announced, LabError> {
        nft::install_inpod(ns, self.dns_capture)?;
        let uid = pod.uid.clone();
        self.call(|tx| Command::Add(pod, tx), &uid).await
    }

    /// Announces that a pod is gone.
    pub async fn del_pod(&self, uid: &str) -> Result<Announced, LabError> {
        self.call(|tx| Command::Del(uid.to_string(), tx), uid).await
    }

    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<Announced, ZdsError>>) -> Command,
        uid: &str,
    ) -> Result<Announced, LabError> {
        let stopped = || LabError::Agent {
            node: self.node.clone(),
            detail: format!("agent task has stopped (pod {uid})"),
        };
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| stopped())?;
        let res = rx.await.map_err(|_| stopped())?;
        res.map_err(|e| LabError::Agent {
            node: self.node.clone(),
            detail: e.to_string(),
        })
    }
}

impl NodeAgent {
    /// Stops the task and waits until it is gone (its socket closed, its connection dropped).
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    node: String,
    listener: SeqpacketListener,
    mut pods: BTreeMap<String, PodAnnounce>,
    mut rx: mpsc::Receiver<Command>,
    snapshots: watch::Sender<u64>,
) {
    let mut conn: Option<SeqpacketConn> = None;
    // Connections of proxies a newer one replaced: kept open (as istio-cni keeps them), so an
    // old proxy draining during an upgrade is not told the agent went away and does not
    // reconnect; updates go to the newest only.
    let mut replaced: Vec<SeqpacketConn> = Vec::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let c = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%node, error = %e, "zds accept failed");
                        continue;
                    }
                };
                match snapshot(&c, &pods).await {
                    Ok(()) => {
                        tracing::info!(%node, pods = pods.len(), "zds snapshot acked");
                        replaced.extend(conn.replace(c));
                        snapshots.send_modify(|n| *n += 1);
                    }
                    Err(e) => tracing::warn!(%node, error = %e, "zds snapshot failed; dropping connection"),
                }
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                let (res, reply) = match cmd {
                    Command::Add(pod, reply) => {
                        pods.insert(pod.uid.clone(), pod.clone());
                        (announce_add(conn.as_ref(), &pod).await, reply)
                    }
                    Command::Del(uid, reply) => {
                        pods.remove(&uid);
                        let res = match &conn {
                            Some(c) => c.request(&zds::del_request(&uid), None, ACK_TIMEOUT).await.map(|()| Announced::Acked),
                            None => Ok(Announced::Recorded),
                        };
                        (res, reply)
                    }
                };
                // A broken connection is dropped; the proxy reconnects and gets a snapshot.
                if matches!(res, Err(ZdsError::Io { .. } | ZdsError::Closed | ZdsError::Timeout { .. })) {
                    conn = None;
                }
                let _ = reply.send(res);
            }
        }
    }
}

async fn announce_add(
    conn: Option<&SeqpacketConn>,
    pod: &PodAnnounce,
) -> Result<Announced, ZdsError> {
    let Some(c) = conn else {
        return Ok(Announced::Recorded);
    };
    send_add(c, pod).await.map(|()| Announced::Acked)
}

async fn send_add(c: &SeqpacketConn, pod: &PodAnnounce) -> Result<(), ZdsError> {
    let path = format!("/var/run/netns/{}", pod.netns);
    let file = File::open(&path).map_err(|source| ZdsError::Io {
        path,
        op: "open netns",
        source,
    })?;
    let req = zds::add_request(&pod.uid, &pod.name, &pod.namespace, &pod.service_account);
    c.request(&req, Some(file.as_fd()), ACK_TIMEOUT).await
}

async fn snapshot(c: &SeqpacketConn, pods: &BTreeMap<String, PodAnnounce>) -> Result<(), ZdsError> {
    c.recv_hello(ACK_TIMEOUT).await?;
    for pod in pods.values() {
        match send_add(c, pod).await {
            // The proxy keeps a pod it could not start pending and retries it; the snapshot goes on.
            Err(ZdsError::Nack { what, error }) => {
                tracing::warn!(%what, %error, "zds: pod nacked in snapshot")
            }
            other => other?,
        }
    }
    c.request(&zds::snapshot_sent(), None, ACK_TIMEOUT).await
}
