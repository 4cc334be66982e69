//! Inbound plaintext (15006): a connection to a local workload that did not come over HBONE,
//! redirected by the capture rules. It is authorized with no peer identity (so principal,
//! namespace and service-account matches fail for it); a denied connection is closed before a
//! byte reaches the app, since the app is only dialled once authorization allows. It is tracked
//! while it lives and closed if a later state change denies it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::lifecycle::DrainWatcher;
use crate::metrics::ResponseFlag;
use crate::rbac::ConnFacts;

use crate::conn::accesslog::{ConnectionLog, Direction, inbound_labels};
use crate::conn::connections::{Authorized, ConnectionTracker};
use crate::conn::copy::{copy_bidirectional, tcp_halves};
use crate::conn::{ILLEGAL_PORTS, ProxyInputs, authz, socket};

pub(super) async fn handle(
    pi: Arc<ProxyInputs>,
    tracker: ConnectionTracker,
    stream: TcpStream,
    peer: SocketAddr,
    drain: DrainWatcher,
) {
    let mut log = ConnectionLog::new(Direction::Inbound, peer);
    let target = match socket::orig_dst(&stream, peer) {
        Ok(a) => a,
        Err(e) => return log.fail(&format_args!("original destination: {e}")),
    };
    log.dst = Some(target);
    if ILLEGAL_PORTS.contains(&target.port()) {
        return log.fail(&format_args!(
            "refusing a connection to {target}: it would loop into the proxy"
        ));
    }
    let registration = tracker.register(peer, target, None, log.stats.clone());
    let decision = {
        let snapshot = pi.state.snapshot();
        let Some(local) = snapshot
            .workload_by_addr(&pi.cfg.network, target.ip())
            .filter(|wl| pi.local.is(wl))
        else {
            return log.fail(&format_args!(
                "{target} is not an address of the local workload {}/{}",
                pi.local.namespace, pi.local.name
            ));
        };
        let labels = inbound_labels(&pi, local, (Some(peer), None), None, (None, target.port()));
        log.open(&pi, labels);
        let facts = ConnFacts {
            src: peer,
            dst: target,
            identity: None,
        };
        authz::decide(&snapshot, local, &facts)
    };
    if !decision.is_allow() {
        // Dropping the accepted stream closes it; the app was never dialled.
        pi.metrics.connections_denied.inc();
        log.response_flags = Some(ResponseFlag::Deny);
        return log.fail(&decision);
    }
    // No `tune`: the listener is tuned (`socket::listen_tuned`), accepted sockets inherit it.
    let src = (pi.cfg.orig_src && peer.is_ipv4() == target.is_ipv4()).then(|| peer.ip());
    let upstream = match socket::connect(target, src, &pi.cfg.socket).await {
        Ok(s) => s,
        Err(e) => {
            log.response_flags = Some(ResponseFlag::Connect);
            return log.fail(&e);
        }
    };
    let copy = copy_bidirectional(tcp_halves(stream), tcp_halves(upstream), log.stats.clone());
    let authorized = Authorized {
        pi,
        copy,
        registration,
        cert_revoked: crate::conn::revocation::RevokedSignal::never(),
        log,
    };
    authorized.run(drain).await;
}
