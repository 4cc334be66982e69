//! End-to-end tests of the hbone module over real loopback TCP (plain h2, no TLS): a test
//! server running [`serve`] per accepted connection, and a TCP [`Connector`] for the pool.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

use super::*;
use crate::core::{Authority, Identity};

mod pool;
mod tunnel;

/// Bounds every await in these tests.
const STEP: Duration = Duration::from_secs(10);

async fn t<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .expect("test step timed out")
}

/// A loopback HBONE server; every accepted connection runs `serve` in its own task.
struct TestServer {
    addr: SocketAddr,
    accept_task: JoinHandle<()>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    /// Bumped to make every connection accepted so far drain (graceful GOAWAY); later
    /// connections are not affected.
    drain: Arc<tokio::sync::watch::Sender<u32>>,
}

impl TestServer {
    async fn start<H, F>(cfg: H2Config, handler: H) -> TestServer
    where
        H: Fn(InboundRequest) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let conns2 = conns.clone();
        let drain = Arc::new(tokio::sync::watch::Sender::new(0));
        let drain2 = drain.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let cfg = cfg.clone();
                let handler = handler.clone();
                let mut drain_rx = drain2.subscribe();
                let generation = *drain_rx.borrow_and_update();
                let task = tokio::spawn(async move {
                    let shutdown = async move {
                        let _ = drain_rx.wait_for(|d| *d > generation).await;
                    };
                    let _ = serve(tcp, &cfg, shutdown, handler).await;
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        TestServer {
            addr,
            accept_task,
            conns,
            drain,
        }
    }

    /// Starts a graceful shutdown of every connection accepted so far.
    fn drain(&self) {
        self.drain.send_modify(|d| *d += 1);
    }

    /// Drops every server connection task, which closes their sockets.
    fn kill_connections(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.kill_connections();
    }
}

/// Accepts every request and echoes the stream back until the client half-closes, then
/// half-closes too.
async fn echo(req: InboundRequest) {
    let Ok(stream) = req.accept(None) else {
        return;
    };
    let (mut recv, mut send) = stream.split();
    while let Some(Ok(chunk)) = recv.recv().await {
        if send.send(chunk).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Opens plain TCP to the key's destination and counts how often it was asked.
#[derive(Default)]
struct TcpConnector {
    calls: AtomicUsize,
}

impl Connector for TcpConnector {
    fn connect(
        &self,
        key: &PoolKey,
    ) -> Pin<Box<dyn Future<Output = Result<Connected, HboneError>> + Send + '_>> {
        let dst = key.dst;
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let tcp = TcpStream::connect(dst)
                .await
                .map_err(|e| HboneError::connect(dst, e))?;
            Ok(Connected::from(Box::new(tcp) as BoxedIo))
        })
    }
}

fn identity(sa: &str) -> Identity {
    Identity::new("cluster.local", "default", sa).unwrap()
}

fn key(dst: SocketAddr, expected: &[&str]) -> PoolKey {
    PoolKey::new(
        identity("client"),
        "127.0.0.1".parse().unwrap(),
        dst,
        expected.iter().map(|sa| identity(sa)).collect(),
    )
}

fn request(target: &str) -> ConnectRequest {
    ConnectRequest {
        authority: target.parse::<Authority>().unwrap(),
        headers: ConnectHeaders::default(),
    }
}

/// Sends `data` and reads the same number of bytes back.
async fn ping_pong(stream: H2Stream, data: &'static [u8]) -> (H2Recv, H2Send) {
    let (mut recv, mut send) = stream.split();
    t(send.send(Bytes::from_static(data))).await.unwrap();
    let mut got = Vec::new();
    while got.len() < data.len() {
        let chunk = t(recv.recv()).await.unwrap().unwrap();
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, data);
    (recv, send)
}

/// Polls `cond` every 10 ms for at most `STEP`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
