//! Built-in servers and clients for tests, benches and the demo, run inside pods (sockets created
//! in the pod's namespace, driven by the caller's runtime):
//! - HTTP: answers any request with `peer <addr>`, the source address it saw;
//! - echo: writes back what it reads;
//! - sink: reads a length-prefixed payload and answers `peer=<addr> bytes=<n> sha256=<hex>`, so a
//!   client can verify every byte arrived (no reliance on half-close through the proxies);
//! - request/response: each 4-byte request names a response size, answered with that many bytes;
//! - PROXY header echo and the waypoint stand-in, behind an application tunnel ([`proxied`]).
//!
//! Invariants: a [`Server`] stops (its accept loop and connections) when dropped; every client
//! call is bounded by its timeout.

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::netns::with_deadline;
use crate::{LabError, Netns};

pub mod proxied;

pub use proxied::{ProxyInfo, WaypointServer};

/// Chunk size for bulk writes and reads.
const CHUNK: usize = 64 * 1024;

/// Which built-in server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Http,
    Echo,
    Sink,
    RequestResponse,
    /// Behind a PROXY application tunnel: answers the header as one line, then echoes.
    ProxyHeader,
}

/// A built-in server in a pod; stops when dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// What the sink answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkReply {
    /// The source address the server saw.
    pub peer: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The result of [`bulk_send`].
#[derive(Debug, Clone)]
pub struct BulkResult {
    pub sent: u64,
    pub sha256: String,
    pub reply: SinkReply,
}

// === impl Server ===

impl Server {
    /// Starts `kind` on `0.0.0.0:port` inside `ns`.
    pub fn start(ns: &Netns, kind: ServerKind, port: u16) -> Result<Server, LabError> {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let std_listener = ns.tcp_listener(addr)?;
        let listener = TcpListener::from_std(std_listener).map_err(|source| LabError::Socket {
            netns: ns.name().into(),
            op: format!("register listener {addr}"),
            source,
        })?;
        let task = tokio::spawn(accept_loop(listener, kind));
        Ok(Server { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, kind: ServerKind) {
    // Connections live in the set, so aborting the accept loop ends them too.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                conns.spawn(async move {
                    let _ = serve(stream, peer, kind).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, kind: ServerKind) -> std::io::Result<()> {
    let peer = peer_ip(peer);
    match kind {
        ServerKind::Http => {
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            // Read the head up to the blank line; the request itself does not matter.
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 || line == "\r\n" || line == "\n" {
                    break;
                }
            }
            let body = format!("peer {peer}\n");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let mut s = r.into_inner();
            s.write_all(resp.as_bytes()).await?;
            s.shutdown().await
        }
        ServerKind::Echo => {
            let (mut rd, mut wr) = stream.into_split();
            tokio::io::copy(&mut rd, &mut wr).await?;
            wr.shutdown().await
        }
        ServerKind::Sink => {
            let mut s = stream;
            let len = s.read_u64().await?;
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; CHUNK];
            let mut left = len;
            while left > 0 {
                let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
                let n = s.read(&mut buf[..want]).await?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                left -= n as u64;
            }
            let reply = format!(
                "peer={peer} bytes={} sha256={}\n",
                len - left,
                hex(&hash.finalize())
            );
            s.write_all(reply.as_bytes()).await?;
            s.shutdown().await
        }
        ServerKind::ProxyHeader => proxied::serve_header_echo(stream).await,
        ServerKind::RequestResponse => {
            let mut s = stream;
            let buf = vec![0x5au8; CHUNK];
            loop {
                let size = match s.read_u32().await {
                    Ok(n) => n as usize,
                    Err(_) => return Ok(()),
                };
                let mut left = size;
                while left > 0 {
                    let n = left.min(CHUNK);
                    s.write_all(&buf[..n]).await?;
                    left -= n;
                }
            }
        }
    }
}

/// The address as a person would write it (`10.0.0.1`, not `::ffff:10.0.0.1`).
fn peer_ip(peer: SocketAddr) -> std::net::IpAddr {
    match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(std::net::IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic payload bytes (a position-dependent pattern, so reordering would show).
pub(crate) fn pattern(offset: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        let x = offset + i as u64;
        *b = (x ^ (x >> 8) ^ (x >> 16)) as u8;
    }
}

/// Sends `bytes` to a sink server at `addr` from inside `ns` and returns what both sides counted.
pub async fn bulk_send(
    ns: &Netns,
    addr: SocketAddr,
    bytes: u64,
    timeout: Duration,
) -> Result<BulkResult, LabError> {
    let mut stream = ns.connect(addr, timeout).await?;
    let op = format!("bulk send to {addr}");
    let exchange = async {
        stream.write_u64(bytes).await?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        while sent < bytes {
            let n = usize::try_from((bytes - sent).min(CHUNK as u64)).unwrap_or(CHUNK);
            pattern(sent, &mut buf[..n]);
            hash.update(&buf[..n]);
            stream.write_all(&buf[..n]).await?;
            sent += n as u64;
        }
        let mut reply = String::new();
        BufReader::new(&mut stream).read_line(&mut reply).await?;
        Ok((sent, hex(&hash.finalize()), reply))
    };
    let (sent, sha256, reply) = with_deadline(ns.name(), &op, timeout, exchange).await?;
    let reply = parse_sink_reply(&reply).ok_or_else(|| LabError::Socket {
        netns: ns.name().into(),
        op,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected sink reply {reply:?}"),
        ),
    })?;
    Ok(BulkResult {
        sent,
        sha256,
        reply,
    })
}

fn parse_sink_reply(line: &str) -> Option<SinkReply> {
    let mut peer = None;
    let mut bytes = None;
    let mut sha = None;
    for kv in line.split_whitespace() {
        match kv.split_once('=')? {
            ("peer", v) => peer = Some(v.to_string()),
            ("bytes", v) => bytes = v.parse().ok(),
            ("sha256", v) => sha = Some(v.to_string()),
            _ => {}
        }
    }
    Some(SinkReply {
        peer: peer?,
        bytes: bytes?,
        sha256: sha?,
    })
}

/// Sends `data` to an echo server and returns what came back (as many bytes as were sent).
pub async fn echo(
    ns: &Netns,
    addr: SocketAddr,
    data: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, LabError> {
    let mut stream = ns.connect(addr, timeout).await?;
    let exchange = async {
        stream.write_all(data).await?;
        let mut back = vec![0u8; data.len()];
        stream.read_exact(&mut back).await?;
        Ok(back)
    };
    with_deadline(ns.name(), &format!("echo via {addr}"), timeout, exchange).await
}

/// `count` request/response exchanges of `size`-byte responses on one connection; returns each
/// exchange's latency.
pub async fn request_response(
    ns: &Netns,
    addr: SocketAddr,
    count: usize,
    size: u32,
    timeout: Duration,
) -> Result<Vec<Duration>, LabError> {
    let mut stream = ns.connect(addr, timeout).await?;
    let exchange = async {
        let mut out = Vec::with_capacity(count);
        let mut buf = vec![0u8; size as usize];
        for _ in 0..count {
            let start = tokio::time::Instant::now();
            stream.write_u32(size).await?;
            stream.read_exact(&mut buf).await?;
            out.push(start.elapsed());
        }
        Ok(out)
    };
    with_deadline(
        ns.name(),
        &format!("request/response via {addr}"),
        timeout,
        exchange,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_reply_parses() {
        let r = parse_sink_reply("peer=10.0.0.1 bytes=5 sha256=ab\n").unwrap();
        assert_eq!(
            (r.peer.as_str(), r.bytes, r.sha256.as_str()),
            ("10.0.0.1", 5, "ab")
        );
        assert!(parse_sink_reply("peer=x").is_none());
    }
}
