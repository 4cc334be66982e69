//! Outbound connects with passive outlier ejection and retries, over real loopback sockets:
//! a service whose endpoints are a live listener and a closed port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::support::{self, id};
use crate::conn::accesslog::{ConnectionLog, Direction};
use crate::proxy::outbound::{Upstream, connect};
use crate::proxy::*;
use crate::state::Workload;
use crate::state::{NetworkAddress, Service, StateWriter, Update};

const SVC: &str = "b/web.b.svc.cluster.local";
const VIP: &str = "10.96.0.1:80";

/// A plain-TCP (not meshed) endpoint at `ip`, serving service port 80 on `port`.
fn endpoint(uid: &str, ip: &str, port: u16) -> Workload {
    let mut wl = Workload::new(uid, uid, id("b", uid));
    wl.workload_ips = vec![ip.parse().unwrap()];
    wl.services
        .insert(SVC.into(), [(80, port)].into_iter().collect());
    wl
}

/// A port on 127.0.0.2 with nothing listening (bound then closed).
async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn inputs(good: u16, bad: u16, outlier: OutlierConfig) -> Arc<ProxyInputs> {
    let (writer, view) = StateWriter::new();
    writer.apply(
        Update::default()
            .upsert(endpoint("good", "127.0.0.1", good))
            .upsert(endpoint("bad", "127.0.0.2", bad))
            .upsert(Service {
                name: "web".into(),
                namespace: "b".into(),
                hostname: "web.b.svc.cluster.local".into(),
                vips: vec![NetworkAddress {
                    network: String::new(),
                    address: "10.96.0.1".parse().unwrap(),
                }],
                ports: [(80, 0)].into_iter().collect(),
                ..Default::default()
            }),
    );
    Arc::new(support::inputs(view, "a", "client", outlier))
}

/// Connects through the outbound path to the VIP and checks the far end echoes.
async fn connect_once(
    pi: &Arc<ProxyInputs>,
    pool: &transport::Transports,
    outliers: &Outliers,
) -> bool {
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut log = ConnectionLog::new(Direction::Outbound, peer);
    let up = connect(pi, pool, outliers, peer, VIP.parse().unwrap(), &mut log).await;
    log.complete();
    match up {
        Ok(Upstream::Plain(mut s)) => {
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            true
        }
        Ok(Upstream::Hbone(..) | Upstream::DoubleHbone(..)) => {
            panic!("plain endpoints must not be tunneled")
        }
        Err(_) => false,
    }
}

/// The outbound transports (h2 only; never used by these plain-TCP endpoints).
fn transports(pi: &Arc<ProxyInputs>) -> transport::Transports {
    let pool = Pool::new(
        Default::default(),
        Arc::new(crate::conn::transport::h2::TlsConnector::new(pi.clone())),
    );
    transport::Transports::new(pool, None, &pi.cfg.transport, pi.metrics.clone())
}

async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                }
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn failed_connects_are_retried_and_the_dead_endpoint_is_ejected() {
    let (good, server) = echo_server().await;
    let bad = dead_port().await;
    let cfg = OutlierConfig {
        consecutive_failures: 2,
        base_ejection: Duration::from_secs(3600),
        ..Default::default()
    };
    let pi = inputs(good, bad, cfg.clone());
    let pool = transports(&pi);
    let outliers = Outliers::new(cfg);
    let dead: SocketAddr = SocketAddr::new("127.0.0.2".parse().unwrap(), bad);
    for i in 0..40 {
        let ok = tokio::time::timeout(Duration::from_secs(5), connect_once(&pi, &pool, &outliers))
            .await
            .unwrap();
        assert!(
            ok,
            "connection {i} failed although a healthy endpoint exists"
        );
    }
    // 40 random picks over two endpoints reach the dead one twice with overwhelming odds.
    assert!(outliers.is_ejected(dead));
    assert_eq!(pi.metrics.outlier_ejections.get(), 1);
    let retries = pi.metrics.connect_retries.get();
    assert_eq!(retries, 2, "each failure before ejection was retried once");
    server.abort();
}

#[tokio::test]
async fn without_a_healthy_endpoint_the_last_failure_is_reported() {
    let bad = dead_port().await;
    let also_bad = dead_port().await;
    let pi = inputs(also_bad, bad, OutlierConfig::default());
    let pool = transports(&pi);
    let outliers = Outliers::new(OutlierConfig::default());
    let ok = tokio::time::timeout(Duration::from_secs(5), connect_once(&pi, &pool, &outliers))
        .await
        .unwrap();
    assert!(!ok);
    // Both endpoints were tried once (127.0.0.1 and 127.0.0.2), no more.
    assert_eq!(pi.metrics.connect_retries.get(), 1);
    assert_eq!(outliers.tracked(), 2);
}
