//! Socket plumbing for the proxy: listeners, original destinations, marks and transparent connects.
//!
//! Everything goes through `socket2`, so no `unsafe` is needed here. Addresses coming from a
//! dual-stack (`[::]`) listener are canonicalised, so an IPv4 client is always seen as IPv4.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Creates the proxy's sockets. The default creates them in the current network namespace; in
/// in-pod mode a factory creates them inside the pod's namespace.
pub trait SocketFactory: Send + Sync + 'static {
    fn tcp_socket(&self, domain: Domain) -> io::Result<Socket>;
    /// A UDP socket (the pod's DNS proxy; HBONE over QUIC).
    fn udp_socket(&self, domain: Domain) -> io::Result<Socket>;
}

/// Sockets in the process's own network namespace.
#[derive(Debug, Default)]
pub struct CurrentNetns;

impl SocketFactory for CurrentNetns {
    fn tcp_socket(&self, domain: Domain) -> io::Result<Socket> {
        Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
    }

    fn udp_socket(&self, domain: Domain) -> io::Result<Socket> {
        Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
    }
}

/// Options applied to every socket the proxy opens.
#[derive(Clone)]
pub struct SocketOptions {
    pub factory: Arc<dyn SocketFactory>,
    /// `SO_MARK`, so redirection rules let the proxy's own traffic pass.
    pub mark: Option<u32>,
    pub keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the connection
    /// is dropped (ztunnel's `USER_TIMEOUT_ENABLED`; off by default).
    pub user_timeout: Option<Duration>,
    pub connect_timeout: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct Keepalive {
    pub time: Duration,
    pub interval: Duration,
    pub retries: u32,
}

impl std::fmt::Debug for SocketOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketOptions")
            .field("mark", &self.mark)
            .field("keepalive", &self.keepalive)
            .field("user_timeout", &self.user_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            factory: Arc::new(CurrentNetns),
            mark: None,
            keepalive: Some(Keepalive {
                time: Duration::from_secs(180),
                interval: Duration::from_secs(180),
                retries: 9,
            }),
            user_timeout: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A failed upstream connect, with what was being attempted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {dst} timed out after {timeout:?}")]
    Timeout { dst: SocketAddr, timeout: Duration },
    #[error("connect to {dst}: {source}")]
    Io {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("bind to original source {src} for {dst}: {source}")]
    Bind {
        src: IpAddr,
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Turns `::ffff:1.2.3.4` into `1.2.3.4`; dual-stack listeners report IPv4 peers that way.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Binds a listener. `[::]` listens dual-stack. `transparent` tries `IP_TRANSPARENT`, so the
/// listener also accepts TPROXY'd traffic, as ztunnel's do; where the process may not (no
/// `CAP_NET_ADMIN`) the listener is bound without it and that is logged once per process.
/// `reuse_port` lets an old and a new proxy overlap during an upgrade.
pub fn listen(
    addr: SocketAddr,
    opts: &SocketOptions,
    transparent: bool,
    reuse_port: bool,
) -> io::Result<TcpListener> {
    listen_with(addr, opts, transparent, reuse_port, false)
}

/// [`listen`], with the per-connection options of [`tune`] set on the listener itself: Linux
/// copies a listener's TCP options (`TCP_NODELAY`, keepalive and its timings) into every
/// socket it accepts, so accepted connections need no `tune` (five system calls fewer per
/// connection on the accept path).
pub fn listen_tuned(
    addr: SocketAddr,
    opts: &SocketOptions,
    transparent: bool,
    reuse_port: bool,
) -> io::Result<TcpListener> {
    listen_with(addr, opts, transparent, reuse_port, true)
}

fn listen_with(
    addr: SocketAddr,
    opts: &SocketOptions,
    transparent: bool,
    reuse_port: bool,
    tuned: bool,
) -> io::Result<TcpListener> {
    let socket = opts.factory.tcp_socket(Domain::for_address(addr))?;
    if tuned {
        tune_socket(&socket, opts)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    if let Some(mark) = opts.mark {
        socket.set_mark(mark)?;
    }
    if transparent && let Err(e) = set_transparent(&socket, addr.ip()) {
        if e.kind() != io::ErrorKind::PermissionDenied {
            return Err(e);
        }
        if !TRANSPARENT_REFUSED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(error = %e, "listeners cannot be transparent (IP_TRANSPARENT needs CAP_NET_ADMIN): TPROXY-captured traffic will not reach them; redirected traffic is unaffected");
        }
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A UDP socket from the factory (so in the pod's namespace in in-pod mode) with the proxy's
/// mark, not yet bound: HBONE over QUIC binds and sizes it.
pub fn udp(addr: SocketAddr, opts: &SocketOptions) -> io::Result<Socket> {
    let socket = opts.factory.udp_socket(Domain::for_address(addr))?;
    if let Some(mark) = opts.mark {
        socket.set_mark(mark)?;
    }
    Ok(socket)
}

/// Binds a UDP socket through the factory, with the proxy's mark. IPv6 addresses are bound
/// v6-only, so `127.0.0.1` and `::1` can share a port.
pub fn bind_udp(
    addr: SocketAddr,
    opts: &SocketOptions,
    reuse_port: bool,
) -> io::Result<tokio::net::UdpSocket> {
    let socket = opts.factory.udp_socket(Domain::for_address(addr))?;
    socket.set_nonblocking(true)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Some(mark) = opts.mark {
        socket.set_mark(mark)?;
    }
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// The destination the client originally asked for, before nftables redirected it to us.
///
/// Without a redirect (a client that connected to the listener directly) this is the listener's
/// own address, which callers reject as a loop.
///
/// `peer` is the address `accept` reported: both ends of a TCP connection are of one family,
/// so it tells which query to make without asking the kernel for the local address (one
/// system call fewer per connection; the local address is only needed without a redirect).
pub fn orig_dst(stream: &TcpStream, peer: SocketAddr) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let raw = if canonical(peer).is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    match raw {
        Ok(addr) => addr
            .as_socket()
            .map(canonical)
            .ok_or_else(|| io::Error::other("original destination is not an IP address")),
        // Not redirected (or TPROXY): the local address is the destination.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(canonical(stream.local_addr()?)),
        Err(e) => Err(e),
    }
}

/// Applies per-connection options to a connected stream, or to one accepted from a listener
/// not made by [`listen_tuned`].
pub fn tune(stream: &TcpStream, opts: &SocketOptions) -> io::Result<()> {
    tune_socket(&SockRef::from(stream), opts)
}

fn tune_socket(sock: &Socket, opts: &SocketOptions) -> io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    if let Some(ka) = opts.keepalive {
        let params = TcpKeepalive::new()
            .with_time(ka.time)
            .with_interval(ka.interval)
            .with_retries(ka.retries);
        sock.set_tcp_keepalive(&params)?;
    }
    if let Some(timeout) = opts.user_timeout {
        sock.set_tcp_user_timeout(Some(timeout))?;
    }
    Ok(())
}

/// Connects to `dst` with the proxy's mark. With `src`, the socket is transparent and bound to
/// that address, so the destination sees the original client as the source.
pub async fn connect(
    dst: SocketAddr,
    src: Option<IpAddr>,
    opts: &SocketOptions,
) -> Result<TcpStream, ConnectError> {
    let io_err = |source| ConnectError::Io { dst, source };
    let raw = opts
        .factory
        .tcp_socket(Domain::for_address(dst))
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .map_err(io_err)?;
    let socket = TcpSocket::from_std_stream(raw.into());
    let sock = SockRef::from(&socket);
    if let Some(mark) = opts.mark {
        sock.set_mark(mark).map_err(io_err)?;
    }
    if let Some(src) = src {
        let bind_err = |source| ConnectError::Bind { src, dst, source };
        set_transparent(&sock, dst.ip()).map_err(bind_err)?;
        // Port 0 with this option: the port is picked at `connect`, unique for the whole
        // 4-tuple, instead of at `bind` by a search of the source address's ephemeral ports.
        // That search walks the TIME_WAIT entries of every earlier connection from the same
        // client address, and under churn it cost more CPU than the rest of the connection.
        // Best effort: without it, `bind` still works, only slower.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
        socket.bind(SocketAddr::new(src, 0)).map_err(bind_err)?;
    }
    let stream = tokio::time::timeout(opts.connect_timeout, socket.connect(dst))
        .await
        .map_err(|_| ConnectError::Timeout {
            dst,
            timeout: opts.connect_timeout,
        })?
        .map_err(io_err)?;
    tune(&stream, opts).map_err(io_err)?;
    Ok(stream)
}

/// Whether a listener was refused `IP_TRANSPARENT` already (said once).
static TRANSPARENT_REFUSED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn set_transparent(sock: &Socket, family_of: IpAddr) -> io::Result<()> {
    match family_of {
        IpAddr::V4(_) => {
            sock.set_ip_transparent_v4(true)?;
            sock.set_freebind_v4(true)
        }
        IpAddr::V6(_) => {
            sock.set_ip_transparent_v6(true)?;
            sock.set_freebind_v6(true)
        }
    }
}

/// Whether this process may open transparent sockets (needs CAP_NET_ADMIN); decides whether the
/// original client address can be kept when connecting to the app.
pub fn transparent_supported() -> bool {
    Socket::new(Domain::IPV4, Type::STREAM, None)
        .and_then(|s| s.set_ip_transparent_v4(true))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_mapped_addresses() {
        assert_eq!(
            canonical("[::ffff:10.0.0.1]:80".parse().unwrap()),
            "10.0.0.1:80".parse().unwrap()
        );
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[tokio::test]
    async fn orig_dst_without_redirect_is_the_local_address() {
        let opts = SocketOptions::default();
        let l = listen("127.0.0.1:0".parse().unwrap(), &opts, false, false).unwrap();
        let addr = l.local_addr().unwrap();
        let client = connect(addr, None, &opts).await.unwrap();
        let (server, peer) = l.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert_eq!(orig_dst(&server, peer).unwrap(), addr);
    }

    #[tokio::test]
    async fn tuned_listener_hands_out_tuned_connections() {
        let opts = SocketOptions {
            keepalive: Some(Keepalive {
                time: Duration::from_secs(77),
                interval: Duration::from_secs(13),
                retries: 4,
            }),
            user_timeout: Some(Duration::from_secs(129)),
            ..SocketOptions::default()
        };
        let l = listen_tuned("127.0.0.1:0".parse().unwrap(), &opts, false, false).unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = tokio::time::timeout(Duration::from_secs(5), l.accept())
            .await
            .unwrap()
            .unwrap();
        let sock = SockRef::from(&server);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(77));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(13)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(129))
        );
        // An untuned listener's connections are left alone (callers `tune` them).
        let plain = listen("127.0.0.1:0".parse().unwrap(), &opts, false, false).unwrap();
        let _client = TcpStream::connect(plain.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = tokio::time::timeout(Duration::from_secs(5), plain.accept())
            .await
            .unwrap()
            .unwrap();
        assert!(!SockRef::from(&server).keepalive().unwrap());
    }

    #[tokio::test]
    async fn orig_dst_of_an_ipv6_client_without_redirect() {
        let opts = SocketOptions::default();
        let Ok(l) = listen("[::1]:0".parse().unwrap(), &opts, false, false) else {
            return; // no IPv6 on this host: nothing to check
        };
        let addr = l.local_addr().unwrap();
        let _client = connect(addr, None, &opts).await.unwrap();
        let (server, peer) = l.accept().await.unwrap();
        assert!(peer.is_ipv6());
        assert_eq!(orig_dst(&server, peer).unwrap(), addr);
    }

    #[tokio::test]
    async fn dual_stack_listener_sees_ipv4_clients_as_ipv4() {
        let opts = SocketOptions::default();
        let Ok(l) = listen("[::]:0".parse().unwrap(), &opts, false, false) else {
            return; // no IPv6 on this host: nothing to check
        };
        let port = l.local_addr().unwrap().port();
        let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let _client = connect(dst, None, &opts).await.unwrap();
        let (server, peer) = l.accept().await.unwrap();
        assert!(canonical(peer).is_ipv4());
        assert_eq!(orig_dst(&server, peer).unwrap(), dst);
    }

    #[tokio::test]
    async fn transparent_listeners_are_transparent_when_permitted() {
        let opts = SocketOptions::default();
        for addr in ["127.0.0.1:0", "[::]:0"] {
            let l = listen_tuned(addr.parse().unwrap(), &opts, true, false).unwrap();
            // IP_TRANSPARENT and IPV6_TRANSPARENT set one flag of the socket: a dual-stack
            // listener takes TPROXY'd IPv4 too.
            assert_eq!(
                SockRef::from(&l).ip_transparent_v4().unwrap(),
                transparent_supported(),
                "{addr}"
            );
            let plain = listen_tuned(addr.parse().unwrap(), &opts, false, false).unwrap();
            assert!(
                !SockRef::from(&plain).ip_transparent_v4().unwrap(),
                "{addr}"
            );
        }
    }

    #[tokio::test]
    async fn connect_refused_names_the_destination() {
        let opts = SocketOptions::default();
        // Bind then drop to find a port with nothing listening.
        let l = listen("127.0.0.1:0".parse().unwrap(), &opts, false, false).unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = connect(addr, None, &opts).await.unwrap_err();
        assert!(
            err.to_string().starts_with(&format!("connect to {addr}: ")),
            "{err}"
        );
    }
}
