//! SOCKS5 outbound (127.0.0.1:15080 in the pod, opt-in): an app that cannot be captured names
//! its destination explicitly, and the connection then takes the outbound path exactly as if
//! the app had connected to that address (same routing, same HBONE tunnels).
//!
//! Only what ztunnel offers: no authentication, CONNECT, IPv4 / IPv6 / domain-name targets
//! (RFC 1928). Domain names are resolved by the [`HostResolver`] the caller hands in (the DNS
//! proxy's mesh view, then the upstream resolvers), so this module imports no DNS code.
//!
//! Invariants: the client gets exactly one reply to its CONNECT, sent only after the upstream
//! connect (or tunnel) succeeded or failed, with the RFC 1928 code for the failure; the
//! negotiation is bounded by a timeout, so a silent client cannot hold a task forever.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::lifecycle::DrainWatcher;
use crate::metrics::Reporter;

use super::accept_loop;
use super::outbound::{self, OutboundError, RouteError};
use crate::conn::accesslog::{ConnectionLog, Direction};
use crate::conn::outlier::Outliers;
use crate::conn::transport::Transports;
use crate::conn::{ProxyInputs, same_family_ip, socket};

/// The default listener (loopback only: the port is the pod's own business).
pub const SOCKS5_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15080);
/// How long a client may take to send its greeting and request.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0x00;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CMD_CONNECT: u8 = 0x01;
const ATYP_V4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_V6: u8 = 0x04;

/// RFC 1928 §6 reply codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// The future of one name resolution.
pub type ResolveFuture = Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, String>> + Send>>;

/// Resolves the domain names SOCKS5 clients ask for.
pub trait HostResolver: Send + Sync + 'static {
    fn resolve(&self, host: &str) -> ResolveFuture;
}

impl<F> HostResolver for F
where
    F: Fn(String) -> ResolveFuture + Send + Sync + 'static,
{
    fn resolve(&self, host: &str) -> ResolveFuture {
        self(host.to_string())
    }
}

/// The system resolver of the process's own namespace (when the DNS proxy is off).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl HostResolver for SystemResolver {
    fn resolve(&self, host: &str) -> ResolveFuture {
        let host = host.to_string();
        Box::pin(async move {
            tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map(|addrs| addrs.map(|a| a.ip()).collect())
                .map_err(|e| e.to_string())
        })
    }
}

/// What the client asked to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Host(String, u16),
}

/// Why a SOCKS5 negotiation failed (the reply, if any, has been sent).
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    #[error("socks5 negotiation: {0}")]
    Io(#[from] io::Error),
    #[error("socks5 negotiation timed out")]
    Timeout,
    #[error("socks5: unsupported version {0}")]
    Version(u8),
    #[error("socks5: client offers no unauthenticated method")]
    NoAcceptableMethod,
    #[error("socks5: unsupported command {0}")]
    Command(u8),
    #[error("socks5: unsupported address type {0}")]
    AddressType(u8),
    #[error("socks5: domain name is not UTF-8")]
    BadDomain,
    // Debug-quoted: the name is the client's bytes and may hold a line break.
    #[error("socks5: cannot resolve {host:?}: {reason}")]
    Resolve { host: String, reason: String },
}

/// A bound SOCKS5 listener sharing a proxy's inputs and HBONE transports (h2 and QUIC pools).
pub struct Socks5 {
    pub(super) inputs: Arc<ProxyInputs>,
    pub(super) transports: Arc<Transports>,
    pub(super) outliers: Arc<Outliers>,
    pub(super) resolver: Arc<dyn HostResolver>,
    pub(super) listener: TcpListener,
}

impl Socks5 {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until a drain starts.
    pub async fn run(self, drain: DrainWatcher) {
        tracing::info!(addr = ?self.listener.local_addr().ok(), "socks5 listening");
        let (pi, transports, resolver) = (self.inputs, self.transports, self.resolver);
        let outliers = self.outliers;
        let listener = (self.listener, pi.metrics.clone());
        accept_loop(
            ("socks5", Reporter::Source),
            listener,
            drain,
            move |s, peer, d| {
                let out = (transports.clone(), outliers.clone());
                handle(pi.clone(), out, resolver.clone(), s, peer, d)
            },
        )
        .await;
    }
}

async fn handle(
    pi: Arc<ProxyInputs>,
    (transports, outliers): (Arc<Transports>, Arc<Outliers>),
    resolver: Arc<dyn HostResolver>,
    mut stream: TcpStream,
    peer: SocketAddr,
    drain: DrainWatcher,
) {
    let mut log = ConnectionLog::new(Direction::Outbound, peer);
    log.src_identity = Some(pi.local.identity(&pi.state));
    let negotiated =
        tokio::time::timeout(NEGOTIATION_TIMEOUT, negotiate(&mut stream, &*resolver)).await;
    let dst = match negotiated {
        Ok(Ok(dst)) => dst,
        Ok(Err(e)) => return log.fail(&e),
        Err(_) => return log.fail(&Socks5Error::Timeout),
    };
    log.dst = Some(dst);
    // The app is local; the mesh should see the pod, as it would for a captured connection.
    let src = pi
        .state
        .workload_by_name(&pi.local.namespace, &pi.local.name)
        .and_then(|wl| same_family_ip(&wl, dst.ip()))
        .map_or(peer, |ip| SocketAddr::new(ip, peer.port()));
    match outbound::connect(&pi, &transports, &outliers, src, dst, &mut log).await {
        Ok(upstream) => {
            if let Err(e) = reply(&mut stream, Reply::Succeeded).await {
                return log.fail(&format_args!("socks5 reply: {e}"));
            }
            outbound::relay(stream, upstream, log, outbound::Until::Drain(drain)).await;
        }
        Err(e) => {
            let _ = reply(&mut stream, reply_for(&e)).await;
            log.fail(&e);
        }
    }
}

/// Greeting, method selection and the CONNECT request; resolves a domain target. On failure
/// the matching reply has been sent. Reads exactly the bytes of the greeting and the request,
/// so data the client sends early stays in the stream. Generic over the stream so the fuzz
/// target can drive it from memory.
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    resolver: &dyn HostResolver,
) -> Result<SocketAddr, Socks5Error> {
    let version = stream.read_u8().await?;
    if version != VERSION {
        return Err(Socks5Error::Version(version));
    }
    let n = stream.read_u8().await?;
    let mut methods = vec![0u8; usize::from(n)];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(Socks5Error::NoAcceptableMethod);
    }
    stream.write_all(&[VERSION, NO_AUTH]).await?;

    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    let [version, cmd, _reserved, atyp] = head;
    if version != VERSION {
        return Err(Socks5Error::Version(version));
    }
    let target = match atyp {
        ATYP_V4 => {
            let mut ip = [0u8; 4];
            stream.read_exact(&mut ip).await?;
            let port = stream.read_u16().await?;
            Target::Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        ATYP_V6 => {
            let mut ip = [0u8; 16];
            stream.read_exact(&mut ip).await?;
            let port = stream.read_u16().await?;
            Target::Addr(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        ATYP_DOMAIN => {
            let len = stream.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            stream.read_exact(&mut name).await?;
            let port = stream.read_u16().await?;
            match String::from_utf8(name) {
                Ok(host) => Target::Host(host, port),
                Err(_) => {
                    reply(stream, Reply::HostUnreachable).await?;
                    return Err(Socks5Error::BadDomain);
                }
            }
        }
        other => {
            reply(stream, Reply::AddressTypeNotSupported).await?;
            return Err(Socks5Error::AddressType(other));
        }
    };
    if cmd != CMD_CONNECT {
        reply(stream, Reply::CommandNotSupported).await?;
        return Err(Socks5Error::Command(cmd));
    }
    match target {
        Target::Addr(addr) => Ok(addr),
        Target::Host(host, port) => {
            // An IP literal sent as a name (curl does this) needs no resolver.
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(SocketAddr::new(ip, port));
            }
            match resolver.resolve(&host).await {
                Ok(ips) => match ips.first() {
                    Some(ip) => Ok(SocketAddr::new(*ip, port)),
                    None => {
                        reply(stream, Reply::HostUnreachable).await?;
                        Err(Socks5Error::Resolve {
                            host,
                            reason: "no address".into(),
                        })
                    }
                },
                Err(reason) => {
                    reply(stream, Reply::HostUnreachable).await?;
                    Err(Socks5Error::Resolve { host, reason })
                }
            }
        }
    }
}

/// Writes a reply; the bound address is reported as unspecified (clients do not use it, and
/// an HBONE tunnel has no meaningful one).
async fn reply<S: AsyncWrite + Unpin>(stream: &mut S, code: Reply) -> io::Result<()> {
    stream
        .write_all(&[VERSION, code as u8, 0, ATYP_V4, 0, 0, 0, 0, 0, 0])
        .await
}

/// The RFC 1928 code for an outbound failure.
fn reply_for(e: &OutboundError) -> Reply {
    match e {
        OutboundError::Route(RouteError::SelfCall(_)) => Reply::NotAllowed,
        OutboundError::Route(_) | OutboundError::Dns { .. } => Reply::HostUnreachable,
        OutboundError::Connect(socket::ConnectError::Timeout { .. }) => Reply::TtlExpired,
        OutboundError::Connect(socket::ConnectError::Io { source, .. }) => match source.kind() {
            io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
            io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
            io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
            _ => Reply::GeneralFailure,
        },
        OutboundError::Connect(socket::ConnectError::Bind { .. })
        | OutboundError::Hbone(_)
        | OutboundError::Gateway(_) => Reply::GeneralFailure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found by the `socks5` fuzz target: a domain name holding a line break came back verbatim
    // in the error, so the connection's log line broke in two.
    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_quoted_in_the_error() {
        let (mut client, mut server) = tokio::io::duplex(256);
        let name = b"x\nfail";
        let mut request = vec![5, 1, 0, 5, 1, 0, ATYP_DOMAIN, name.len() as u8];
        request.extend_from_slice(name);
        request.extend_from_slice(&80u16.to_be_bytes());
        client.write_all(&request).await.unwrap();
        let resolver = |_: String| -> ResolveFuture { Box::pin(async { Err("nx".to_string()) }) };
        let e = negotiate(&mut server, &resolver).await.unwrap_err();
        assert_eq!(e.to_string(), r#"socks5: cannot resolve "x\nfail": nx"#);
        let mut answer = [0u8; 12];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [5, 0, 5, 4, 0, 1, 0, 0, 0, 0, 0, 0]);
    }
}
