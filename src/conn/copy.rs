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
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWrite;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const INITIAL_BUFFER: usize = 16 * 1024;
#[cfg(not(feature = "bench-small-buffers"))]
const MAX_BUFFER: usize = 256 * 1024;
/// A build for the benchmark's A/B comparison (`bench/README.md`): reads capped at 16 KiB.
#[cfg(feature = "bench-small-buffers")]
const MAX_BUFFER: usize = 16 * 1024;

/// Something chunks can be read from, polled in place (see [`Copy`] for why not `async`).
pub trait ChunkSource: Send + Unpin {
    /// The next chunk; `Ok(None)` is a clean end of stream.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>>;

    /// [`ChunkSource::poll_chunk`] as a future.
    fn read_chunk(&mut self) -> impl Future<Output = io::Result<Option<Bytes>>> + Send {
        std::future::poll_fn(|cx| self.poll_chunk(cx))
    }
}

/// Something chunks can be written to, polled in place.
pub trait ChunkSink: Send + Unpin {
    /// Writes `chunk`, taking bytes off its front as they go; ready once all of it is written.
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes)
    -> Poll<io::Result<()>>;
    /// Half-closes.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
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
pub fn copy_bidirectional<AS, AK, BS, BK>(
    a: (AS, AK),
    b: (BS, BK),
    stats: Arc<CopyStats>,
) -> Copy<AS, AK, BS, BK>
where
    AS: ChunkSource,
    AK: ChunkSink,
    BS: ChunkSource,
    BK: ChunkSink,
{
    Copy {
        forward: Pump::new(a.0, b.1),
        backward: Pump::new(b.0, a.1),
        stats,
    }
}

/// The copy of one connection, both directions. A plain struct polled in place rather than an
/// `async fn`: every open connection holds one for its whole life, and the compiler's state
/// machine for the same loop (two joined pumps, each awaiting a read and a write) held its
/// sources and sinks twice over, about 1 KiB instead of the ~250 bytes here.
pub struct Copy<AS, AK, BS, BK> {
    forward: Pump<AS, BK>,
    backward: Pump<BS, AK>,
    stats: Arc<CopyStats>,
}

/// One direction: a chunk read is written out whole before the next read.
struct Pump<S, K> {
    src: S,
    sink: K,
    /// What is left to write of the last chunk read, and that chunk's full length.
    pending: Option<(Bytes, u64)>,
    state: PumpState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PumpState {
    Copying,
    /// The source ended: half-closing the sink.
    Finishing,
    Done,
}

impl<S: ChunkSource, K: ChunkSink> Pump<S, K> {
    fn new(src: S, sink: K) -> Self {
        Pump {
            src,
            sink,
            pending: None,
            state: PumpState::Copying,
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        counter: &AtomicU64,
        live: Option<&Counter>,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.state {
                PumpState::Done => return Poll::Ready(Ok(())),
                PumpState::Finishing => {
                    ready!(self.sink.poll_finish(cx))?;
                    self.state = PumpState::Done;
                }
                PumpState::Copying => {
                    if let Some((chunk, n)) = &mut self.pending {
                        ready!(self.sink.poll_write_chunk(cx, chunk))?;
                        let n = *n;
                        self.pending = None;
                        counter.fetch_add(n, Ordering::Relaxed);
                        if let Some(c) = live {
                            c.inc_by(n);
                        }
                    }
                    match ready!(self.src.poll_chunk(cx))? {
                        Some(chunk) => {
                            let n = chunk.len() as u64;
                            self.pending = Some((chunk, n));
                        }
                        None => self.state = PumpState::Finishing,
                    }
                }
            }
        }
    }
}

impl<AS, AK, BS, BK> Future for Copy<AS, AK, BS, BK>
where
    AS: ChunkSource,
    AK: ChunkSink,
    BS: ChunkSource,
    BK: ChunkSink,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (live_ab, live_ba) = match this.stats.live.get() {
            Some((ab, ba)) => (Some(ab), Some(ba)),
            None => (None, None),
        };
        let forward = this.forward.poll(cx, &this.stats.a_to_b, live_ab)?;
        let backward = this.backward.poll(cx, &this.stats.b_to_a, live_ba)?;
        if forward.is_ready() && backward.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
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
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            if self.buf.capacity() == 0 {
                // No buffer while nothing is there to read: idle connections cost no buffer.
                ready!(self.read.as_ref().poll_read_ready(cx))?;
            }
            self.buf.reserve(self.size);
            let spare = self.buf.capacity() - self.buf.len();
            match self.read.try_read_buf(&mut self.buf) {
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(n) => {
                    if n == spare && self.size < MAX_BUFFER {
                        // Full read: more is likely waiting, so read more at once next time.
                        self.size *= 2;
                    }
                    return Poll::Ready(Ok(Some(self.buf.split().freeze())));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.size == INITIAL_BUFFER {
                        // Not a bulk flow, and nothing to read: give the buffer back rather
                        // than hold it while the connection idles.
                        self.buf = BytesMut::new();
                    }
                    ready!(self.read.as_ref().poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
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
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        while !chunk.is_empty() {
            let n = ready!(Pin::new(&mut self.write).poll_write(cx, chunk))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            chunk.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

/// Splits a TCP stream into a source and a sink.
pub fn tcp_halves(stream: tokio::net::TcpStream) -> (TcpSource, TcpSink) {
    let (r, w) = stream.into_split();
    (TcpSource::new(r), TcpSink::new(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
