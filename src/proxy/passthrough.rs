//! Inbound plaintext (15006): a connection to a local workload that did not come over HBONE,
//! redirected by the capture rules. It is delivered to the app with no peer identity.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::lifecycle::DrainWatcher;

use super::accesslog::{ConnectionLog, Direction};
use super::copy::{copy_bidirectional, tcp_halves};
use super::outbound::run_until_forced;
use super::{ILLEGAL_PORTS, ProxyInputs, socket};

pub(super) async fn handle(
    pi: Arc<ProxyInputs>,
    stream: TcpStream,
    peer: SocketAddr,
    drain: DrainWatcher,
) {
    let mut log = ConnectionLog::new(Direction::Inbound, peer);
    let target = match socket::orig_dst(&stream) {
        Ok(a) => a,
        Err(e) => return log.fail(&format_args!("original destination: {e}")),
    };
    log.dst = Some(target);
    if ILLEGAL_PORTS.contains(&target.port()) {
        return log.fail(&format_args!(
            "refusing a connection to {target}: it would loop into the proxy"
        ));
    }
    let is_local = pi
        .state
        .workload_by_addr(&pi.cfg.network, target.ip())
        .is_some_and(|wl| pi.local.is(&wl));
    if !is_local {
        return log.fail(&format_args!(
            "{target} is not an address of the local workload {}/{}",
            pi.local.namespace, pi.local.name
        ));
    }
    if let Err(e) = socket::tune(&stream, &pi.cfg.socket) {
        return log.fail(&format_args!("socket options: {e}"));
    }
    let src = (pi.cfg.orig_src && peer.is_ipv4() == target.is_ipv4()).then(|| peer.ip());
    let upstream = match socket::connect(target, src, &pi.cfg.socket).await {
        Ok(s) => s,
        Err(e) => return log.fail(&e),
    };
    let copy = copy_bidirectional(tcp_halves(stream), tcp_halves(upstream), log.stats.clone());
    match run_until_forced(copy, &drain).await {
        Some(Ok(())) => log.complete(),
        Some(Err(e)) => log.fail(&e),
        None => log.fail(&"closed at the drain deadline"),
    }
}
