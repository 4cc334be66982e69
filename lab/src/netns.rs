//! `Netns`: a named network namespace owned by a test (or the demo), removed on `Drop`, also when
//! the owner panics. Invariants:
//! - the name is `ambit-lab-<pid>-<random>-<n>-<tag>`, unique across parallel tests and processes,
//!   and recognisable by `ambit-lab cleanup`;
//! - `lo` is up from creation on (the proxies' admin ports live on 127.0.0.1);
//! - on drop, every process still inside is killed before the namespace is deleted, so a leaked
//!   child cannot keep the namespace's interfaces alive.
//!
//! Sockets made by [`Netns::run_in`] belong to the namespace for their whole life, so a test can
//! bind or connect "inside" a pod and then drive the socket from its own tokio runtime.

use std::fs::File;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::process::Output;
use std::time::Duration;

use nix::sched::CloneFlags;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::{LabError, sys};

/// A network namespace that lives as long as this value.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Removed on drop only by the handle that created it ([`Netns::handle`] makes others).
    owned: bool,
}

// === impl Netns ===

impl Netns {
    /// Creates `ambit-lab-<run id>-<tag>` and brings `lo` up. `tag` is a short human label
    /// ("client", "server") that shows up in `ip netns list`.
    pub fn new(tag: &str) -> Result<Self, LabError> {
        Netns::with_name(format!(
            "{}{}-{tag}",
            sys::NAME_PREFIX,
            sys::unique_suffix()
        ))
    }

    /// Creates a namespace with a full name the caller made unique; it must start with
    /// [`sys::NAME_PREFIX`] followed by the creator's pid (so `cleanup` can judge it).
    pub fn with_name(name: String) -> Result<Self, LabError> {
        sys::preflight()?;
        sys::run("ip", &["netns", "add", &name], None).map_err(|e| match e {
            LabError::Command { stderr, .. } => LabError::NetnsUnsupported { detail: stderr },
            other => other,
        })?;
        // From here on, Drop removes it even if the rest of the set-up fails.
        let ns = Netns { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A second handle to this namespace that never removes it: for tasks that must own what
    /// they use (spawned traffic) while the creator keeps the namespace's lifetime.
    pub fn handle(&self) -> Netns {
        Netns {
            name: self.name.clone(),
            owned: false,
        }
    }

    /// The namespace's name as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sys::run("ip", &full, None)
    }

    /// Runs a short command inside the namespace and returns its stdout (non-zero exit is an error).
    pub fn run(&self, args: &[&str]) -> Result<String, LabError> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        sys::run("ip", &full, None)
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), LabError> {
        let kv = format!("{key}={value}");
        self.run(&["sysctl", "-qw", &kv]).map(drop)
    }

    /// Adds an address (`10.1.0.2/24`, `fd00:1::2/64`) to an interface. IPv6 addresses skip
    /// duplicate address detection, so they are usable at once rather than after ~2 s.
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<(), LabError> {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"])
                .map(drop)
        } else {
            self.ip(&["addr", "add", cidr, "dev", ifname]).map(drop)
        }
    }

    /// Brings an interface up.
    pub fn link_up(&self, ifname: &str) -> Result<(), LabError> {
        self.ip(&["link", "set", ifname, "up"]).map(drop)
    }

    /// Adds a route: `route(&["default", "via", "10.1.0.1"])` or with `-6` first for IPv6.
    pub fn route(&self, args: &[&str]) -> Result<(), LabError> {
        let mut full = Vec::with_capacity(args.len() + 2);
        let (family, rest) = match args.first() {
            Some(&"-6") => (Some("-6"), &args[1..]),
            _ => (None, args),
        };
        full.extend(family);
        full.extend_from_slice(&["route", "add"]);
        full.extend_from_slice(rest);
        self.ip(&full).map(drop)
    }

    /// Applies an nftables ruleset (text in `nft -f` syntax) inside the namespace, atomically.
    pub fn nft(&self, ruleset: &str) -> Result<(), LabError> {
        sys::run(
            "ip",
            &["netns", "exec", &self.name, "nft", "-f", "-"],
            Some(ruleset),
        )
        .map(drop)
    }

    /// Runs a command inside the namespace with a deadline, capturing its output. The child is
    /// killed if the deadline passes (or the future is dropped).
    pub async fn exec(&self, args: &[&str], timeout: Duration) -> Result<Output, LabError> {
        let command = args.join(" ");
        let child = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(timeout, child).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(source)) => Err(LabError::Spawn { command, source }),
            Err(_) => Err(LabError::CommandTimeout { command, timeout }),
        }
    }

    /// Runs `f` on a short-lived thread that has entered this namespace, and returns its result.
    /// Sockets created inside `f` stay in the namespace after the thread has gone.
    pub fn run_in<T, F>(&self, f: F) -> Result<T, LabError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, LabError> + Send + 'static,
    {
        let path = format!("/var/run/netns/{}", self.name);
        let name = self.name.clone();
        let handle = std::thread::spawn(move || {
            let file = File::open(&path).map_err(|source| LabError::Setns {
                netns: name.clone(),
                source,
            })?;
            // setns(CLONE_NEWNET) switches only this thread; the rest of the process stays put.
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Setns {
                netns: name.clone(),
                source: e.into(),
            })?;
            f()
        });
        match handle.join() {
            Ok(res) => res,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// A TCP listener bound inside the namespace (non-blocking, ready for
    /// `tokio::net::TcpListener::from_std`). `[::]` listeners accept IPv4 too.
    pub fn tcp_listener(&self, addr: SocketAddr) -> Result<TcpListener, LabError> {
        let netns = self.name.clone();
        self.run_in(move || {
            let sock_err = |op: &str| {
                let netns = netns.clone();
                let op = format!("{op} {addr}");
                move |source| LabError::Socket { netns, op, source }
            };
            let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
                .map_err(sock_err("socket"))?;
            sock.set_reuse_address(true)
                .map_err(sock_err("SO_REUSEADDR"))?;
            if addr.is_ipv6() {
                sock.set_only_v6(false).map_err(sock_err("IPV6_V6ONLY"))?;
            }
            sock.bind(&addr.into()).map_err(sock_err("bind"))?;
            sock.listen(1024).map_err(sock_err("listen"))?;
            sock.set_nonblocking(true).map_err(sock_err("O_NONBLOCK"))?;
            Ok(TcpListener::from(sock))
        })
    }

    /// A fresh, unconnected TCP socket of `addr`'s family, created inside the namespace; `setup`
    /// may set options on it first (e.g. `IP_TRANSPARENT`, `SO_MARK`, a bind).
    pub fn tcp_socket_with<F>(&self, addr: SocketAddr, setup: F) -> Result<TcpSocket, LabError>
    where
        F: FnOnce(&Socket) -> std::io::Result<()> + Send + 'static,
    {
        let netns = self.name.clone();
        let std_stream = self.run_in(move || {
            let err = |op: &str| {
                let netns = netns.clone();
                let op = op.to_string();
                move |source| LabError::Socket { netns, op, source }
            };
            let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
                .map_err(err("socket"))?;
            setup(&sock).map_err(err("socket options"))?;
            sock.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
            Ok(std::net::TcpStream::from(sock))
        })?;
        Ok(TcpSocket::from_std_stream(std_stream))
    }

    /// Connects from inside the namespace to `addr`, within `timeout`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, LabError> {
        let sock = self.tcp_socket_with(addr, |_| Ok(()))?;
        with_deadline(
            &self.name,
            &format!("connect {addr}"),
            timeout,
            sock.connect(addr),
        )
        .await
    }

    /// The pids of processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        sys::run("ip", &["netns", "pids", &self.name], None)
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        remove(&self.name);
    }
}

/// Kills what is left inside namespace `name` and deletes it. Errors are printed, not returned:
/// this runs from `Drop` and from `cleanup`, where there is nobody to hand them to.
pub fn remove(name: &str) {
    if let Ok(out) = sys::run("ip", &["netns", "pids", name], None) {
        for pid in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
    if let Err(e) = sys::run("ip", &["netns", "del", name], None) {
        eprintln!("ambit-lab: could not delete namespace {name}: {e}");
    }
}

/// Awaits `fut` with a deadline, mapping both failure kinds to a [`LabError::Socket`].
pub(crate) async fn with_deadline<T>(
    netns: &str,
    op: &str,
    timeout: Duration,
    fut: impl Future<Output = std::io::Result<T>>,
) -> Result<T, LabError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(res) => res.map_err(|source| LabError::Socket {
            netns: netns.into(),
            op: op.into(),
            source,
        }),
        Err(_) => Err(LabError::Socket {
            netns: netns.into(),
            op: op.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ),
        }),
    }
}
