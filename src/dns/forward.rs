//! Forwarding to the node's resolvers: the query bytes go to each `nameserver` of a
//! `resolv.conf` in turn, over the transport the client used, until one answers.
//!
//! Invariants: every upstream exchange uses a fresh socket and is bounded by the timeout, so
//! answers never cross between clients and a dead resolver costs at most one timeout; a UDP
//! answer is accepted only from the resolver asked and only with the query's id; upstream
//! sockets carry the proxy's mark so the pod's DNS redirection does not loop them back to us.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

use super::{DnsError, Transport};

/// The largest DNS message (TCP's 16-bit length prefix).
const MAX_MESSAGE: usize = 65535;

/// The upstream resolvers and how to reach them.
#[derive(Clone, Debug)]
pub struct Forwarder {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    mark: Option<u32>,
}

impl Forwarder {
    /// Forwards to `servers` in order, each attempt bounded by `timeout`.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration, mark: Option<u32>) -> Forwarder {
        Forwarder {
            servers,
            timeout,
            mark,
        }
    }

    /// The `nameserver` lines of a `resolv.conf` (port 53).
    pub fn from_resolv_conf(
        path: &Path,
        timeout: Duration,
        mark: Option<u32>,
    ) -> Result<Forwarder, DnsError> {
        let text = std::fs::read(path).map_err(|source| DnsError::ResolvConf {
            path: path.to_path_buf(),
            source,
        })?;
        let servers = parse_resolv_conf(&text).map_err(|source| DnsError::ResolvConfSyntax {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Forwarder::new(servers, timeout, mark))
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Sends `query` to the resolvers in turn and returns the first answer.
    pub async fn forward(&self, query: &[u8], transport: Transport) -> Result<Vec<u8>, DnsError> {
        let id = query
            .get(..2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(DnsError::Malformed("query shorter than its id"))?;
        let mut last = DnsError::NoUpstream;
        for server in &self.servers {
            let attempt = async {
                match transport {
                    Transport::Udp => self.udp(*server, id, query).await,
                    Transport::Tcp => self.tcp(*server, query).await,
                }
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(source)) => {
                    last = DnsError::Upstream {
                        server: *server,
                        source,
                    }
                }
                Err(_) => {
                    last = DnsError::UpstreamTimeout {
                        server: *server,
                        timeout: self.timeout,
                    }
                }
            }
        }
        Err(last)
    }

    fn socket(&self, server: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(server), ty, Some(proto))?;
        socket.set_nonblocking(true)?;
        if let Some(mark) = self.mark {
            socket.set_mark(mark)?;
        }
        Ok(socket)
    }

    async fn udp(&self, server: SocketAddr, id: u16, query: &[u8]) -> io::Result<Vec<u8>> {
        {
            let raw = self.socket(server, Type::DGRAM, Protocol::UDP)?;
            let unspecified: SocketAddr = match server.ip() {
                IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
                IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            raw.bind(&unspecified.into())?;
            let socket = UdpSocket::from_std(raw.into())?;
            socket.connect(server).await?;
            socket.send(query).await?;
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let n = socket.recv(&mut buf).await?;
                // A stray datagram (late answer to someone else) is not ours: keep waiting.
                if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                    buf.truncate(n);
                    return Ok(buf);
                }
            }
        }
    }

    async fn tcp(&self, server: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
        let len = u16::try_from(query.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
        let raw = self.socket(server, Type::STREAM, Protocol::TCP)?;
        let socket = TcpSocket::from_std_stream(raw.into());
        let mut stream = socket.connect(server).await?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let n = stream.read_u16().await?;
        let mut answer = vec![0u8; usize::from(n)];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }
}

/// The `nameserver` addresses of a `resolv.conf`, in order, port 53. Link-local IPv6 with a
/// zone (`fe80::1%eth0`) is skipped: the forwarder's sockets carry no zone. A line the resolver
/// library does not accept fails the whole file, as in ztunnel (which reads it the same way).
pub fn parse_resolv_conf(text: &[u8]) -> Result<Vec<SocketAddr>, ResolvConfError> {
    let config = resolv_conf::Config::parse(text).map_err(ResolvConfError::from)?;
    Ok(config
        .nameservers
        .into_iter()
        .filter_map(|ns| match ns {
            resolv_conf::ScopedIp::V4(ip) => Some(IpAddr::V4(ip)),
            resolv_conf::ScopedIp::V6(ip, None) => Some(IpAddr::V6(ip)),
            resolv_conf::ScopedIp::V6(_, Some(_)) => None,
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect())
}

/// A `resolv.conf` line the parser refuses (numbered from 1, as an editor shows it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ResolvConfError {
    pub line: usize,
    pub problem: &'static str,
}

impl From<resolv_conf::ParseError> for ResolvConfError {
    fn from(e: resolv_conf::ParseError) -> Self {
        use resolv_conf::ParseError as P;
        // The crate counts lines from 0.
        let (line, problem) = match e {
            P::InvalidUtf8(l, _) => (l, "invalid UTF-8"),
            P::InvalidValue(l) => (l, "missing or invalid value"),
            P::InvalidOptionValue(l) => (l, "invalid option value"),
            P::InvalidOption(l) => (l, "unknown option"),
            P::InvalidDirective(l) => (l, "unknown directive"),
            P::InvalidIp(l, _) => (l, "invalid IP address"),
            P::ExtraData(l) => (l, "extra data at the end of the line"),
        };
        ResolvConfError {
            line: line + 1,
            problem,
        }
    }
}
