//! The ZDS state machine: which pods should have a proxy, decided from the node agent's requests.
//! Pure logic, no I/O: it returns [`Plan`]s that the workload manager carries out, and learns
//! the outcome of each proxy start through [`StateManager::started`].
//!
//! Invariants (wire.md §2.2):
//! - every request gets exactly one reply: an ACK, a NACK with a reason, or (for protocol
//!   violations) a [`Violation`] that ends the connection;
//! - `AddWorkload` carries exactly one namespace and a `workload_info`; every other request
//!   carries no descriptor;
//! - `KeepWorkload` is only valid before `SnapshotSent`, and `SnapshotSent` comes once per
//!   connection; on it, every pod not added or kept since the (re)connect is stopped;
//! - a pod is either running (its proxy is up) or pending (its start failed; retried, and
//!   readiness stays blocked meanwhile); a pod in neither state has no entry.
//!
//! `N` is the namespace handle; equality must mean "the same namespace".

use std::collections::{BTreeMap, BTreeSet};

/// A pod's identity as the node agent reports it (`WorkloadInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

/// A request from the node agent, converted from the wire. For `Add`, `netns` is `Some` only
/// when exactly one descriptor came with it: its validation result.
#[derive(Debug)]
pub enum Request<N> {
    Add {
        uid: String,
        info: Option<WorkloadInfo>,
        netns: Option<Result<N, String>>,
    },
    Keep {
        uid: String,
    },
    Del {
        uid: String,
    },
    SnapshotSent,
}

/// The reply to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ack,
    Nack(String),
}

/// A protocol violation: the connection must be dropped (the agent reconnects and re-sends).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("a second SnapshotSent on one connection")]
    SecondSnapshot,
    #[error("KeepWorkload {uid} after SnapshotSent")]
    KeepAfterSnapshot { uid: String },
}

/// A proxy to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start<N> {
    pub uid: String,
    pub info: WorkloadInfo,
    pub netns: N,
}

/// What to do next, after the stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next<N> {
    /// Send this reply.
    Reply(Reply),
    /// Start this proxy; report the outcome to [`StateManager::started`], which gives the reply.
    Start(Start<N>),
}

/// The effects of one request, in order: drain `stop` at once, then `next`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<N> {
    pub stop: Vec<String>,
    pub next: Next<N>,
}

impl<N> Plan<N> {
    fn reply(reply: Reply) -> Self {
        Plan {
            stop: Vec::new(),
            next: Next::Reply(reply),
        }
    }

    fn nack(msg: String) -> Self {
        Plan::reply(Reply::Nack(msg))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    Running,
    /// The last start failed with this error.
    Pending(String),
}

#[derive(Clone, Debug)]
struct Pod<N> {
    info: WorkloadInfo,
    netns: N,
    status: Status,
}

/// The pods and the per-connection protocol state.
#[derive(Debug)]
pub struct StateManager<N> {
    pods: BTreeMap<String, Pod<N>>,
    /// Pods added or kept since the current connection started.
    announced: BTreeSet<String>,
    snapshot_on_connection: bool,
    /// Whether any connection ever completed its snapshot (readiness).
    snapshot_ever: bool,
}

impl<N> Default for StateManager<N> {
    fn default() -> Self {
        StateManager {
            pods: BTreeMap::new(),
            announced: BTreeSet::new(),
            snapshot_on_connection: false,
            snapshot_ever: false,
        }
    }
}

impl<N: Clone + PartialEq> StateManager<N> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new connection to the node agent: the snapshot protocol starts over.
    pub fn connected(&mut self) {
        self.announced.clear();
        self.snapshot_on_connection = false;
    }

    /// Decides what a request means. `fds` is how many descriptors came with it.
    pub fn handle(&mut self, req: Request<N>, fds: usize) -> Result<Plan<N>, Violation> {
        match req {
            Request::Add { uid, info, netns } => Ok(self.add(uid, info, netns, fds)),
            Request::Keep { uid } => {
                if fds != 0 {
                    return Ok(Plan::nack(no_fd_expected("KeepWorkload", fds)));
                }
                if self.snapshot_on_connection {
                    return Err(Violation::KeepAfterSnapshot { uid });
                }
                if !self.pods.contains_key(&uid) {
                    return Ok(Plan::nack(format!("KeepWorkload {uid}: unknown workload")));
                }
                self.announced.insert(uid);
                Ok(Plan::reply(Reply::Ack))
            }
            Request::Del { uid } => {
                if fds != 0 {
                    return Ok(Plan::nack(no_fd_expected("DelWorkload", fds)));
                }
                self.announced.remove(&uid);
                let stop = match self.pods.remove(&uid) {
                    Some(pod) if pod.status == Status::Running => vec![uid],
                    _ => Vec::new(),
                };
                Ok(Plan {
                    stop,
                    next: Next::Reply(Reply::Ack),
                })
            }
            Request::SnapshotSent => {
                if fds != 0 {
                    return Ok(Plan::nack(no_fd_expected("SnapshotSent", fds)));
                }
                if self.snapshot_on_connection {
                    return Err(Violation::SecondSnapshot);
                }
                self.snapshot_on_connection = true;
                self.snapshot_ever = true;
                let stale: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|uid| !self.announced.contains(*uid))
                    .cloned()
                    .collect();
                let mut stop = Vec::new();
                for uid in stale {
                    if let Some(pod) = self.pods.remove(&uid)
                        && pod.status == Status::Running
                    {
                        stop.push(uid);
                    }
                }
                Ok(Plan {
                    stop,
                    next: Next::Reply(Reply::Ack),
                })
            }
        }
    }

    fn add(
        &mut self,
        uid: String,
        info: Option<WorkloadInfo>,
        netns: Option<Result<N, String>>,
        fds: usize,
    ) -> Plan<N> {
        if uid.is_empty() {
            return Plan::nack("AddWorkload: uid is empty".into());
        }
        if fds != 1 {
            return Plan::nack(format!(
                "AddWorkload {uid}: expected exactly one network namespace descriptor, got {fds}"
            ));
        }
        let Some(info) = info else {
            return Plan::nack(format!("AddWorkload {uid}: workload_info is required"));
        };
        let netns = match netns {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Plan::nack(format!("AddWorkload {uid}: {e}")),
            None => {
                return Plan::nack(format!(
                    "AddWorkload {uid}: no network namespace descriptor"
                ));
            }
        };
        self.announced.insert(uid.clone());
        let mut stop = Vec::new();
        let status = match self.pods.get(&uid) {
            // Same namespace: idempotent when running; a pending pod is retried now.
            Some(pod) if pod.netns == netns => match &pod.status {
                Status::Running => return Plan::reply(Reply::Ack),
                pending => pending.clone(),
            },
            Some(pod) => {
                // The pod's sandbox was replaced: its old proxy serves a namespace that is gone.
                if pod.status == Status::Running {
                    stop.push(uid.clone());
                }
                Status::Pending("not started yet".into())
            }
            None => Status::Pending("not started yet".into()),
        };
        self.pods.insert(
            uid.clone(),
            Pod {
                info: info.clone(),
                netns: netns.clone(),
                status,
            },
        );
        Plan {
            stop,
            next: Next::Start(Start { uid, info, netns }),
        }
    }

    /// The outcome of a [`Start`]; returns the reply owed to the request that asked for it. A
    /// failed start keeps the pod pending. A start for a pod that has gone since (or whose
    /// namespace changed) returns `None` in `keep`: the caller must stop what it started.
    pub fn started(&mut self, start: &Start<N>, result: Result<(), String>) -> Started {
        let Some(pod) = self.pods.get_mut(&start.uid) else {
            return Started {
                reply: Reply::Nack(format!("workload {} is gone", start.uid)),
                keep: false,
            };
        };
        if pod.netns != start.netns {
            return Started {
                reply: Reply::Nack(format!("workload {} changed namespace", start.uid)),
                keep: false,
            };
        }
        match result {
            Ok(()) => {
                pod.status = Status::Running;
                Started {
                    reply: Reply::Ack,
                    keep: true,
                }
            }
            Err(e) => {
                let reply = Reply::Nack(format!("start proxy for {}: {e}", start.uid));
                pod.status = Status::Pending(e);
                Started { reply, keep: false }
            }
        }
    }

    /// The pods whose start failed, to retry.
    pub fn pending(&self) -> Vec<Start<N>> {
        self.pods
            .iter()
            .filter(|(_, p)| matches!(p.status, Status::Pending(_)))
            .map(|(uid, p)| Start {
                uid: uid.clone(),
                info: p.info.clone(),
                netns: p.netns.clone(),
            })
            .collect()
    }

    /// The workload info of every pod that should have a proxy (running or pending).
    pub fn workloads(&self) -> impl Iterator<Item = &WorkloadInfo> {
        self.pods.values().map(|p| &p.info)
    }

    /// Every pod that should have a proxy: uid, workload info, and whether its proxy runs.
    pub fn pods(&self) -> impl Iterator<Item = (&str, &WorkloadInfo, bool)> {
        self.pods
            .iter()
            .map(|(uid, p)| (uid.as_str(), &p.info, p.status == Status::Running))
    }

    /// Ready: a snapshot was processed once, and no pod is pending.
    pub fn is_ready(&self) -> bool {
        self.snapshot_ever && self.pending_count() == 0
    }

    pub fn active_count(&self) -> usize {
        self.pods
            .values()
            .filter(|p| p.status == Status::Running)
            .count()
    }

    pub fn pending_count(&self) -> usize {
        self.pods.len() - self.active_count()
    }
}

/// The outcome of [`StateManager::started`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub reply: Reply,
    /// Whether the started proxy should keep running.
    pub keep: bool,
}

fn no_fd_expected(what: &str, fds: usize) -> String {
    format!("{what} must not carry a file descriptor, got {fds}")
}

#[cfg(test)]
mod tests;
