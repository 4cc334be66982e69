//! The lab's one error type. Every variant renders as a single line that says what failed and,
//! for environment problems, what to do about it (a test failing on a fresh machine should point
//! at `scripts/setup.sh`, not at a stack of `ip` output).

use std::io;
use std::time::Duration;

/// Everything the lab can fail at.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("ambit-lab needs root (network namespaces, nftables): run as root (uid is {uid})")]
    NotRoot { uid: u32 },
    #[error("`{tool}` not found on PATH: run scripts/setup.sh")]
    ToolMissing { tool: &'static str },
    #[error(
        "network namespaces are not usable here ({detail}): the kernel or sandbox forbids them"
    )]
    NetnsUnsupported { detail: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {timeout:?}")]
    CommandTimeout { command: String, timeout: Duration },
    #[error("could not start `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("in namespace {netns}: {op}: {source}")]
    Socket {
        netns: String,
        op: String,
        source: io::Error,
    },
    #[error("entering namespace {netns}: {source}")]
    Setns { netns: String, source: io::Error },
    #[error("{what} not ready after {attempts} attempts: last result: {last}")]
    NotReady {
        what: String,
        attempts: u32,
        last: String,
    },
    #[error("process `{name}` exited early ({status}); log tail:\n{tail}")]
    ExitedEarly {
        name: String,
        status: String,
        tail: String,
    },
    #[error("node agent of {node}: {detail}")]
    Agent { node: String, detail: String },
    #[error(
        "node proxy binary {path} not found: run `cargo build --release -p ambit` (`cargo build -p ambit` for a debug ambit-lab) or pass --proxy <binary>"
    )]
    ProxyMissing { path: String },
    #[error("{0}")]
    Topology(#[from] crate::topology::TopologyError),
    #[error("no running lab has a pod named {pod:?}{hint}")]
    NoSuchPod { pod: String, hint: String },
    #[error("{count} running labs have a pod named {pod:?}: pick one with --run <id> ({runs})")]
    AmbiguousPod {
        pod: String,
        count: usize,
        runs: String,
    },
    #[error("file {path}: {source}")]
    File { path: String, source: io::Error },
    #[error("lab control plane: {what}: {detail}")]
    ControlPlane { what: String, detail: String },
    #[error("{0}")]
    Usage(String),
}
