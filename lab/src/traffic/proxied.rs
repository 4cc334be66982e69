//! Apps behind a PROXY-protocol application tunnel (`application_tunnel {protocol: PROXY}`):
//! every connection from the node proxy starts with a PROXY v2 header (parsed with `ppp`) naming
//! the client's address, the destination it asked for and its SPIFFE identity (TLV 0xD0).
//! - the header echo ([`ServerKind::ProxyHeader`](super::ServerKind)): answers one line
//!   `src=<addr> dst=<addr> identity=<id>` and then echoes, so a test sees what the header said;
//! - the waypoint stand-in ([`WaypointServer`]): logs one line per connection with the original
//!   destination and the source identity, then opens a plain TCP connection to that destination
//!   from its own pod (captured, so the waypoint's node proxy routes it) and splices both ways.
//!
//! Invariants: the header is read exactly (fixed part, then the length it announces), so no app
//! byte is consumed with it; the waypoint logs before it connects upstream, one line per accepted
//! connection whatever happens next; every upstream connect is bounded by [`UPSTREAM_TIMEOUT`].

use std::fs::File;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sched::CloneFlags;
use ppp::v2::{Addresses, Header};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::netns::with_deadline;
use crate::{LabError, Netns};

/// TLV type of the source SPIFFE identity (wire.md §1).
pub const SOURCE_IDENTITY_TLV: u8 = 0xD0;
/// The fixed part of a v2 header: signature (12), version/command, family/protocol, length (2).
const FIXED_LEN: usize = 16;
/// How long the waypoint waits for its upstream connection.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// What a PROXY v2 header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TLV 0xD0, when present.
    pub identity: Option<String>,
}

// === impl ProxyInfo ===

impl ProxyInfo {
    /// `src=<addr> dst=<addr> identity=<id or ->`.
    pub fn line(&self) -> String {
        format!(
            "src={} dst={} identity={}",
            self.src,
            self.dst,
            self.identity.as_deref().unwrap_or("-")
        )
    }

    /// Parses [`ProxyInfo::line`] back.
    pub fn parse_line(line: &str) -> Option<ProxyInfo> {
        let (mut src, mut dst, mut identity) = (None, None, None);
        for kv in line.split_whitespace() {
            match kv.split_once('=')? {
                ("src", v) => src = v.parse().ok(),
                ("dst", v) => dst = v.parse().ok(),
                ("identity", "-") => identity = Some(None),
                ("identity", v) => identity = Some(Some(v.to_string())),
                _ => {}
            }
        }
        Some(ProxyInfo {
            src: src?,
            dst: dst?,
            identity: identity?,
        })
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Reads one PROXY v2 header from the start of `s` (and nothing after it).
pub async fn read_header(s: &mut TcpStream) -> std::io::Result<ProxyInfo> {
    let mut buf = vec![0u8; FIXED_LEN];
    s.read_exact(&mut buf).await?;
    let rest = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    buf.resize(FIXED_LEN + rest, 0);
    s.read_exact(&mut buf[FIXED_LEN..]).await?;
    parse_header(&buf)
}

/// Parses a complete PROXY v2 header: TCP over IPv4 or IPv6, the identity TLV if any.
pub fn parse_header(bytes: &[u8]) -> std::io::Result<ProxyInfo> {
    let h = Header::try_from(bytes).map_err(|e| invalid(format!("PROXY v2 header: {e}")))?;
    let (src, dst) = match h.addresses {
        Addresses::IPv4(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        Addresses::IPv6(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        other => return Err(invalid(format!("PROXY v2 header: addresses {other:?}"))),
    };
    let mut identity = None;
    for tlv in h.tlvs() {
        let tlv = tlv.map_err(|e| invalid(format!("PROXY v2 TLV: {e}")))?;
        if tlv.kind == SOURCE_IDENTITY_TLV {
            identity = Some(String::from_utf8_lossy(&tlv.value).into_owned());
        }
    }
    Ok(ProxyInfo { src, dst, identity })
}

/// The header echo: the header as one line, then an echo of everything else.
pub(super) async fn serve_header_echo(stream: TcpStream) -> std::io::Result<()> {
    let mut s = stream;
    let info = read_header(&mut s).await?;
    s.write_all(format!("{}\n", info.line()).as_bytes()).await?;
    let (mut rd, mut wr) = s.into_split();
    tokio::io::copy(&mut rd, &mut wr).await?;
    wr.shutdown().await
}

/// Sends `data` to a [`ServerKind::ProxyHeader`](super::ServerKind) server from inside `ns`:
/// what its header said, and the echo of `data`.
pub async fn header_echo(
    ns: &Netns,
    addr: SocketAddr,
    data: &[u8],
    timeout: Duration,
) -> Result<(ProxyInfo, Vec<u8>), LabError> {
    let mut stream = ns.connect(addr, timeout).await?;
    let op = format!("PROXY header echo via {addr}");
    let exchange = async {
        stream.write_all(data).await?;
        let mut r = tokio::io::BufReader::new(&mut stream);
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut r, &mut line).await?;
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).await?;
        let info = ProxyInfo::parse_line(&line)
            .ok_or_else(|| invalid(format!("unexpected header line {line:?}")))?;
        Ok((info, back))
    };
    with_deadline(ns.name(), &op, timeout, exchange).await
}

/// The waypoint stand-in in a pod; stops (with its connections) when dropped.
#[derive(Debug)]
pub struct WaypointServer {
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

// === impl WaypointServer ===

impl WaypointServer {
    /// Starts on `0.0.0.0:port` inside `ns`; upstream connections are made inside `ns` too.
    pub fn start(ns: &Netns, port: u16) -> Result<WaypointServer, LabError> {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let std_listener = ns.tcp_listener(addr)?;
        let listener = TcpListener::from_std(std_listener).map_err(|source| LabError::Socket {
            netns: ns.name().into(),
            op: format!("register listener {addr}"),
            source,
        })?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let netns = ns.name().to_string();
        let task = tokio::spawn(accept_loop(listener, netns, log.clone()));
        Ok(WaypointServer { log, task })
    }

    /// The lines logged so far, one per connection:
    /// `waypoint src=<client> dst=<original VIP:port> identity=<client SPIFFE id> upstream=ok|<error>`.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for WaypointServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, netns: String, log: Arc<Mutex<Vec<String>>>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (netns, log) = (netns.clone(), log.clone());
                conns.spawn(async move {
                    let _ = forward(stream, &netns, &log).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One waypoint connection: header, log line, upstream connect, splice.
async fn forward(
    mut stream: TcpStream,
    netns: &str,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let info = read_header(&mut stream).await?;
    let upstream = connect_in(netns, info.dst).await;
    let outcome = match &upstream {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string().replace(' ', "_"),
    };
    let line = format!("waypoint {} upstream={outcome}", info.line());
    println!("{line}");
    if let Ok(mut l) = log.lock() {
        l.push(line);
    }
    let mut upstream = upstream?;
    tokio::io::copy_bidirectional(&mut stream, &mut upstream).await?;
    Ok(())
}

/// A plain TCP connection to `dst` from inside namespace `netns` (bounded).
async fn connect_in(netns: &str, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let path = format!("/var/run/netns/{netns}");
    // A fresh thread enters the namespace (setns switches only the calling thread), so no
    // runtime thread is ever moved; the socket stays in the namespace after the thread is gone.
    let made = std::thread::spawn(move || -> std::io::Result<std::net::TcpStream> {
        let file = File::open(&path)?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        Ok(std::net::TcpStream::from(sock))
    })
    .join()
    .map_err(|_| std::io::Error::other("socket thread panicked"))??;
    let sock = TcpSocket::from_std_stream(made);
    match tokio::time::timeout(UPSTREAM_TIMEOUT, sock.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect {dst}: no answer within {UPSTREAM_TIMEOUT:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use ppp::v2::{Builder, Command, Protocol as PProtocol, Version};

    use super::*;

    fn header(src: &str, dst: &str, id: Option<&str>) -> Vec<u8> {
        let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let b =
            Builder::with_addresses(Version::Two | Command::Proxy, PProtocol::Stream, (src, dst));
        let b = match id {
            Some(id) => b.write_tlv(SOURCE_IDENTITY_TLV, id.as_bytes()).unwrap(),
            None => b,
        };
        b.build().unwrap()
    }

    #[test]
    fn parses_addresses_and_identity() {
        let id = "spiffe://cluster.local/ns/default/sa/client";
        let info = parse_header(&header("10.244.1.2:40000", "10.96.0.10:80", Some(id))).unwrap();
        assert_eq!(info.src, "10.244.1.2:40000".parse().unwrap());
        assert_eq!(info.dst, "10.96.0.10:80".parse().unwrap());
        assert_eq!(info.identity.as_deref(), Some(id));
        assert_eq!(ProxyInfo::parse_line(&info.line()), Some(info));
        let v6 = parse_header(&header("[fd00::1]:1", "[fd00::2]:2", None)).unwrap();
        assert_eq!(v6.identity, None);
        assert_eq!(ProxyInfo::parse_line(&v6.line()), Some(v6));
        assert!(parse_header(b"GET / HTTP/1.1\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn reads_exactly_the_header() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut bytes = header("10.0.0.1:1", "10.0.0.2:2", Some("spiffe://td/ns/a/sa/b"));
        bytes.extend_from_slice(b"payload");
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&bytes).await.unwrap();
        });
        let (mut s, _) = l.accept().await.unwrap();
        let info = tokio::time::timeout(Duration::from_secs(5), read_header(&mut s))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(info.identity.as_deref(), Some("spiffe://td/ns/a/sa/b"));
        let mut rest = Vec::new();
        client.await.unwrap();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"payload");
    }
}
