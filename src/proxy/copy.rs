//! Bidirectional copy between two byte streams, moving `Bytes` chunks.
//!
//! Sources hand out owned chunks and sinks take them, so a chunk read from TCP goes into an
//! HTTP/2 DATA frame (and the reverse) without another copy. The TCP read buffer starts small and
//! doubles while reads keep filling it, so bulk flows get big reads; it is reclaimed, not
//! reallocated, once the previous chunk has been written.
//!
//! Idle connections hold no read buffer: when a connection that never filled its first buffer
//! has nothing to read, it drops the buffer, and allocates the next one only once the socket is
//! readable.
//!
//! Byte counts are kept live per direction (for the access log) and, when the connection has
//! Prometheus byte counters, added to those per chunk: both are plain atomic adds.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::hbone::{H2Recv, H2Send};

const INITIAL_BUFFER: usize = 16 * 1024;
#[cfg(not(feature = "bench-small-buffers"))]
const MAX_BUFFER: usize = 256 * 1024;
/// A build for the benchmark's A/B comparison (`bench/README.md`): reads capped at 16 KiB.
#[cfg(feature = "bench-small-buffers")]
const MAX_BUFFER: usize = 16 * 1024;

/// Something chunks can be read from. `Ok(None)` is a clean end of stream.
pub trait ChunkSource: Send {
    fn read_chunk(&mut self) -> impl Future<Output = io::Result<Option<Bytes>>> + Send;
}

/// Something chunks can be written to. `finish` half-closes.
pub trait ChunkSink: Send {
    fn write_chunk(&mut self, chunk: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    fn finish(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// Byte counts of a copy, readable while it runs.
#[derive(Default, Debug)]
pub struct CopyStats {
    /// Bytes from the first stream to the second.
    pub a_to_b: AtomicU64,
    /// Bytes from the second stream to the first.
    pub b_to_a: AtomicU64,
    /// Exported counters moved with `a_to_b` and `b_to_a`, resolved once per connection (set
    /// once the connection's labels are known, before its copy starts).
    live: std::sync::OnceLock<(Counter, Counter)>,
}

impl CopyStats {
    /// Stats that also add each chunk to `a_to_b` / `b_to_a` exported counters.
    pub fn with_counters(a_to_b: Counter, b_to_a: Counter) -> Self {
        CopyStats {
            live: std::sync::OnceLock::from((a_to_b, b_to_a)),
            ..Default::default()
        }
    }

    /// Adds exported counters to stats made without them; a second call is ignored.
    pub fn set_counters(&self, a_to_b: Counter, b_to_a: Counter) {
        let _ = self.live.set((a_to_b, b_to_a));
    }

    pub fn totals(&self) -> (u64, u64) {
        (
            self.a_to_b.load(Ordering::Relaxed),
            self.b_to_a.load(Ordering::Relaxed),
        )
    }
}

/// Copies `a`'s source into `b`'s sink and `b`'s source into `a`'s sink until both directions
/// have ended. Each direction half-closes its sink when its source ends; an error in either
/// direction ends the whole copy.
///
/// The copy's state is boxed: callers move the future through a few wrappers (drain deadline,
/// policy revocation) and every move of an inline future costs its full size in the task of
/// every connection, for as long as the connection lives.
pub fn copy_bidirectional<AS, AK, BS, BK>(
    a: (AS, AK),
    b: (BS, BK),
    stats: Arc<CopyStats>,
) -> Pin<Box<impl Future<Output = io::Result<()>> + Send>>
where
    AS: ChunkSource,
    AK: ChunkSink,
    BS: ChunkSource,
    BK: ChunkSink,
{
    Box::pin(copy_both(a, b, stats))
}

async fn copy_both<AS, AK, BS, BK>(
    a: (AS, AK),
    b: (BS, BK),
    stats: Arc<CopyStats>,
) -> io::Result<()>
where
    AS: ChunkSource,
    AK: ChunkSink,
    BS: ChunkSource,
    BK: ChunkSink,
{
    let (a_src, a_sink) = a;
    let (b_src, b_sink) = b;
    let (live_ab, live_ba) = match stats.live.get() {
        Some((ab, ba)) => (Some(ab), Some(ba)),
        None => (None, None),
    };
    let forward = pump(a_src, b_sink, &stats.a_to_b, live_ab);
    let backward = pump(b_src, a_sink, &stats.b_to_a, live_ba);
    tokio::try_join!(forward, backward).map(|_| ())
}

async fn pump<S: ChunkSource, K: ChunkSink>(
    mut src: S,
    mut sink: K,
    counter: &AtomicU64,
    live: Option<&Counter>,
) -> io::Result<()> {
    while let Some(chunk) = src.read_chunk().await? {
        let n = chunk.len() as u64;
        sink.write_chunk(chunk).await?;
        counter.fetch_add(n, Ordering::Relaxed);
        if let Some(c) = live {
            c.inc_by(n);
        }
    }
    sink.finish().await
}

// === TCP ===

/// The read half of a TCP stream with an adaptive buffer.
pub struct TcpSource {
    read: OwnedReadHalf,
    /// Empty with no capacity while the connection is idle.
    buf: BytesMut,
    size: usize,
}

impl TcpSource {
    pub fn new(read: OwnedReadHalf) -> Self {
        TcpSource {
            read,
            buf: BytesMut::new(),
            size: INITIAL_BUFFER,
        }
    }
}

impl ChunkSource for TcpSource {
    async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if self.buf.capacity() == 0 {
                // No buffer while nothing is there to read: idle connections cost no buffer.
                self.read.readable().await?;
            }
            self.buf.reserve(self.size);
            let spare = self.buf.capacity() - self.buf.len();
            match self.read.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    if n == spare && self.size < MAX_BUFFER {
                        // Full read: more is likely waiting, so read more at once next time.
                        self.size *= 2;
                    }
                    return Ok(Some(self.buf.split().freeze()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.size == INITIAL_BUFFER {
                        // Not a bulk flow, and nothing to read: give the buffer back rather
                        // than hold it while the connection idles.
                        self.buf = BytesMut::new();
                    }
                    self.read.readable().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The write half of a TCP stream.
pub struct TcpSink {
    write: OwnedWriteHalf,
}

impl TcpSink {
    pub fn new(write: OwnedWriteHalf) -> Self {
        TcpSink { write }
    }
}

impl ChunkSink for TcpSink {
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        self.write.write_all(&chunk).await
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.write.shutdown().await
    }
}

/// Splits a TCP stream into a source and a sink.
pub fn tcp_halves(stream: tokio::net::TcpStream) -> (TcpSource, TcpSink) {
    let (r, w) = stream.into_split();
    (TcpSource::new(r), TcpSink::new(w))
}

// === HBONE ===

impl ChunkSource for H2Recv {
    async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        match self.recv().await {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(io::Error::other(e)),
        }
    }
}

impl ChunkSink for H2Send {
    async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        self.send(chunk).await.map_err(io::Error::other)
    }

    async fn finish(&mut self) -> io::Result<()> {
        H2Send::finish(self).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn copies_both_ways_and_half_closes() {
        // client <-> [a | proxy | b] <-> server
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let (ab, ba) = (Counter::default(), Counter::default());
        let stats = Arc::new(CopyStats::with_counters(ab.clone(), ba.clone()));
        let proxy = tokio::spawn(copy_bidirectional(
            tcp_halves(a),
            tcp_halves(b),
            stats.clone(),
        ));

        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        // The other direction still works after the first one half-closed.
        server.write_all(b"done").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"done");
        proxy.await.unwrap().unwrap();
        assert_eq!(stats.totals(), (payload.len() as u64, 4));
        assert_eq!((ab.get(), ba.get()), (payload.len() as u64, 4));
    }

    #[tokio::test]
    async fn idle_source_gives_its_buffer_back() {
        let (mut client, server) = pair().await;
        let (mut src, _sink) = tcp_halves(server);
        client.write_all(b"x").await.unwrap();
        let chunk = timeout(Duration::from_secs(5), src.read_chunk())
            .await
            .unwrap();
        assert_eq!(chunk.unwrap().unwrap(), Bytes::from_static(b"x"));
        // Nothing more to read: one poll finds the socket drained, and the source must not
        // keep its buffer while it waits.
        {
            let mut read = std::pin::pin!(src.read_chunk());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(read.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(src.buf.capacity(), 0);
        // And it still reads what comes next.
        client.write_all(b"yz").await.unwrap();
        let chunk = timeout(Duration::from_secs(5), src.read_chunk())
            .await
            .unwrap();
        assert_eq!(chunk.unwrap().unwrap(), Bytes::from_static(b"yz"));
    }
}
