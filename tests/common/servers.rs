//! Test applications that run in a pod namespace and report what they saw. They are tokio tasks
//! on the test's runtime, serving on listeners created inside the namespace.

use std::net::SocketAddr;

use ambit_lab::Netns;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What a server saw on one connection.
#[derive(Debug, Clone)]
pub struct Seen {
    pub peer: SocketAddr,
    pub bytes: u64,
    pub sha256: String,
}

/// A running test server; its accept loop stops when this is dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// The next connection report, bounded by [`super::STEP`].
    pub async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(super::STEP, self.seen.recv())
            .await
            .expect("server saw no connection in time")
            .expect("server task ended")
    }

    /// Whether any connection has been reported so far (without waiting).
    pub fn saw_any(&mut self) -> bool {
        self.seen.try_recv().is_ok()
    }
}

fn listen(ns: &Netns, port: u16) -> TcpListener {
    let std = ns
        .tcp_listener(SocketAddr::from(([0u16; 8], port)))
        .unwrap();
    TcpListener::from_std(std).unwrap()
}

/// Canonical form of a peer address seen on a dual-stack listener (v4-mapped → v4).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// An HTTP/1 server on `[::]:port`: answers every request with 200 and the body
/// `hello from <port>, you are <peer>`, and reports the peer.
pub fn http(ns: &Netns, port: u16) -> Server {
    let listener = listen(ns, port);
    let (tx, seen) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            let peer = canonical(peer);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("hello from {port}, you are {peer}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
                let _ = tx.send(Seen {
                    peer,
                    bytes: req.len() as u64,
                    sha256: super::sha256_hex(&req),
                });
            });
        }
    });
    Server {
        addr: SocketAddr::from(([0u16; 8], port)),
        seen,
        task,
    }
}

/// A sink on `[::]:port`: reads until EOF, then writes back the hex sha256 of what it read and
/// closes; reports peer, byte count and digest.
pub fn sink(ns: &Netns, port: u16) -> Server {
    let listener = listen(ns, port);
    let (tx, seen) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((mut s, peer)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut hasher = sha2::Sha256::new();
                let mut n = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(k) => {
                            hasher.update(&buf[..k]);
                            n += k as u64;
                        }
                        Err(_) => return,
                    }
                }
                let digest = super::hex(&hasher.finalize());
                let _ = s.write_all(digest.as_bytes()).await;
                let _ = s.shutdown().await;
                let _ = tx.send(Seen {
                    peer: canonical(peer),
                    bytes: n,
                    sha256: digest,
                });
            });
        }
    });
    Server {
        addr: SocketAddr::from(([0u16; 8], port)),
        seen,
        task,
    }
}

/// An echo server on `[::]:port`: copies every byte back until EOF; reports on close.
pub fn echo(ns: &Netns, port: u16) -> Server {
    let listener = listen(ns, port);
    let (tx, seen) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((s, peer)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let n = tokio::io::copy(&mut r, &mut w).await.unwrap_or(0);
                let _ = w.shutdown().await;
                let _ = tx.send(Seen {
                    peer: canonical(peer),
                    bytes: n,
                    sha256: String::new(),
                });
            });
        }
    });
    Server {
        addr: SocketAddr::from(([0u16; 8], port)),
        seen,
        task,
    }
}
