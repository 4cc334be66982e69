//! Shared helpers of the end-to-end tests: a pair of "pods" (two namespaces joined by a veth,
//! IPv4 and IPv6), test servers that report what they saw (peer address, byte count, sha256),
//! and the driving of `ambit` processes (local config, environment, readiness, metrics).
//!
//! Invariants: every wait is bounded; everything a test creates is owned by a value whose `Drop`
//! removes it (namespaces, processes, temp dirs), so a failing test leaves nothing behind.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod mesh;
pub mod servers;
pub mod zds;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use ambit_lab::{Netns, link, nft};

/// Client pod addresses.
pub const CLIENT_V4: &str = "10.1.0.2";
pub const CLIENT_V6: &str = "fd00:1::2";
/// Server pod addresses.
pub const SERVER_V4: &str = "10.1.0.3";
pub const SERVER_V6: &str = "fd00:1::3";
/// The port test applications listen on in the server pod.
pub const APP_PORT: u16 = 8080;
/// Bound on any single network step in the tests.
pub const STEP: Duration = Duration::from_secs(10);

/// Two pod namespaces joined by a veth (`eth0` on both ends). Addresses are fixed: the pods are
/// private to the test, so parallel tests cannot clash on them.
pub struct PodPair {
    pub client: Netns,
    pub server: Netns,
    /// A per-test scratch directory (logs, configs, CA), removed on drop unless the test failed.
    pub dir: TempDir,
}

impl PodPair {
    pub fn new(test: &str) -> PodPair {
        let client = Netns::new("client").unwrap_or_else(|e| panic!("{e}"));
        let server = Netns::new("server").unwrap_or_else(|e| panic!("{e}"));
        link::veth(&client, "eth0", &server, "eth0").unwrap();
        client.add_addr("eth0", &format!("{CLIENT_V4}/24")).unwrap();
        client.add_addr("eth0", &format!("{CLIENT_V6}/64")).unwrap();
        server.add_addr("eth0", &format!("{SERVER_V4}/24")).unwrap();
        server.add_addr("eth0", &format!("{SERVER_V6}/64")).unwrap();
        PodPair {
            client,
            server,
            dir: TempDir::new(test),
        }
    }

    /// Outbound capture in the client pod, return path in the server pod.
    pub fn install_redirection(&self) {
        nft::install_outbound_capture(&self.client, 15001).unwrap();
        nft::install_return_path(&self.server).unwrap();
    }
}

/// `ip` of the given family: the client pod's.
pub fn client_ip(v6: bool) -> IpAddr {
    (if v6 { CLIENT_V6 } else { CLIENT_V4 }).parse().unwrap()
}

/// The server pod's address of the given family.
pub fn server_ip(v6: bool) -> IpAddr {
    (if v6 { SERVER_V6 } else { SERVER_V4 }).parse().unwrap()
}

/// `ip:port` of the test app in the server pod.
pub fn app_addr(v6: bool) -> SocketAddr {
    SocketAddr::new(server_ip(v6), APP_PORT)
}

/// A URL for curl (IPv6 literal bracketed).
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Runs curl inside `ns` with a hard deadline; `-sS` so errors are on stderr, one line.
pub async fn curl(ns: &Netns, args: &[&str]) -> Output {
    let mut full = vec!["curl", "-sS", "--max-time", "15"];
    full.extend_from_slice(args);
    ns.exec(&full, Duration::from_secs(20)).await.unwrap()
}

/// Hex sha256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A scratch directory under the target's test tmp dir. Kept when the test panics (its logs
/// are the diagnostics), removed otherwise.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{test}-{}", ambit_lab::sys::unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Counts packets arriving in `ns` for port 15008, per protocol (counters `udp15008` and
/// `tcp15008`, before any other input rule): which transport carried the HBONE traffic.
pub fn install_port_counters(ns: &Netns) {
    ns.nft(
        "table inet quic_count {
  chain input {
    type filter hook input priority -300; policy accept;
    udp dport 15008 counter name udp15008
    tcp dport 15008 counter name tcp15008
  }
  counter udp15008 { }
  counter tcp15008 { }
}
",
    )
    .unwrap();
}

/// Packets counted so far by the named counter of [`install_port_counters`].
pub fn port_counter(ns: &Netns, name: &str) -> u64 {
    let out = ns
        .run(&["nft", "list", "counter", "inet", "quic_count", name])
        .unwrap();
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {out}"))
}
