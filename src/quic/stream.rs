//! The two halves of one tunnelled HTTP/3 CONNECT stream: [`H3Recv`] hands out received chunks
//! as `Bytes`, [`H3Send`] sends `Bytes` as DATA frames.
//!
//! Invariants:
//! - A peer's reset with `H3_NO_ERROR` or `H3_REQUEST_CANCELLED` is end of stream, not an error
//!   (the h2 path treats `NO_ERROR` / `CANCEL` the same way).
//! - Dropping an [`H3Send`] that was not finished resets the stream with
//!   `H3_REQUEST_CANCELLED`, so a tunnel cut short (policy, drain) never looks like a clean
//!   half-close to the peer's application.
//! - On the client side both halves hold the connection's stream guard, so the pool counts a
//!   stream as live until both halves are dropped.

use std::sync::Arc;

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h3::error::{Code, StreamError};

use super::QuicError;
use super::client::StreamGuard;

type ServerSend = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type ServerRecv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
type ClientSend = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type ClientRecv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;

/// Most bytes [`H3Recv::recv`] gathers from chunks already received into one.
const COALESCE: usize = 128 * 1024;

/// The receiving half of a stream.
pub struct H3Recv {
    inner: RecvInner,
    eof: bool,
    /// An error met while gathering chunks, returned after the data before it.
    failed: Option<QuicError>,
    _guard: Option<Arc<StreamGuard>>,
}

/// The sending half of a stream.
pub struct H3Send {
    /// `None` while a send or finish is under way (`busy` holds it).
    inner: Option<SendInner>,
    busy: Option<InFlight>,
    finished: bool,
    _guard: Option<Arc<StreamGuard>>,
}

enum RecvInner {
    Server(ServerRecv),
    Client(ClientRecv),
}

enum SendInner {
    Server(ServerSend),
    Client(ClientSend),
}

pub(super) fn server_halves(
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
) -> (H3Recv, H3Send) {
    let (send, recv) = stream.split();
    halves(RecvInner::Server(recv), SendInner::Server(send), None)
}

pub(super) fn client_halves(
    stream: h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    guard: StreamGuard,
) -> (H3Recv, H3Send) {
    let (send, recv) = stream.split();
    halves(
        RecvInner::Client(recv),
        SendInner::Client(send),
        Some(Arc::new(guard)),
    )
}

fn halves(recv: RecvInner, send: SendInner, guard: Option<Arc<StreamGuard>>) -> (H3Recv, H3Send) {
    (
        H3Recv {
            inner: recv,
            eof: false,
            failed: None,
            _guard: guard.clone(),
        },
        H3Send {
            inner: Some(send),
            busy: None,
            finished: false,
            _guard: guard,
        },
    )
}

/// Whether a stream error is the peer ending the stream early in the way HBONE reads as EOF.
fn is_clean_end(e: &StreamError) -> bool {
    match e {
        StreamError::RemoteTerminate { code, .. } => {
            *code == Code::H3_NO_ERROR || *code == Code::H3_REQUEST_CANCELLED
        }
        e => e.is_h3_no_error(),
    }
}

// === impl H3Recv ===

impl H3Recv {
    /// Why a client stream's pooled connection was closed for a revoked server, readable after
    /// the stream fails (`None` for a server-side stream).
    pub fn cut_probe(&self) -> Option<super::client::CutProbe> {
        self._guard.as_ref().map(|g| g.cut_probe())
    }

    /// The next received data, or `None` at end of stream.
    ///
    /// quinn hands out received data about one datagram (~1.2 KB) at a time; written one by
    /// one, each would cost the sink (a TCP socket) a syscall. So after the first chunk this
    /// also takes every chunk already received, up to [`COALESCE`] bytes, and returns them as
    /// one. An end or error met on the way is kept for the next call, after the data before it.
    pub async fn recv(&mut self) -> Option<Result<Bytes, QuicError>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`H3Recv::recv`], polled.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, QuicError>>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if self.eof {
            return Poll::Ready(None);
        }
        let first = loop {
            match ready!(self.inner.poll_chunk(cx)) {
                Ok(Some(chunk)) if chunk.is_empty() => continue,
                Ok(Some(chunk)) => break chunk,
                Ok(None) => {
                    self.eof = true;
                    return Poll::Ready(None);
                }
                Err(e) if is_clean_end(&e) => {
                    self.eof = true;
                    return Poll::Ready(None);
                }
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        };
        let mut more: Option<BytesMut> = None;
        let mut waker = std::task::Context::from_waker(std::task::Waker::noop());
        while more.as_ref().map_or(first.len(), BytesMut::len) < COALESCE {
            // A `Pending` here leaves h3-quinn's read future stored in the stream, so the next
            // call resumes it; nothing is lost by not waiting.
            let Poll::Ready(next) = self.inner.poll_chunk(&mut waker) else {
                break;
            };
            match next {
                Ok(Some(chunk)) => {
                    more.get_or_insert_with(|| {
                        let mut buf = BytesMut::with_capacity(COALESCE);
                        buf.extend_from_slice(&first);
                        buf
                    })
                    .extend_from_slice(&chunk);
                }
                Ok(None) => {
                    self.eof = true;
                    break;
                }
                Err(e) if is_clean_end(&e) => {
                    self.eof = true;
                    break;
                }
                Err(e) => {
                    self.failed = Some(e.into());
                    break;
                }
            }
        }
        Poll::Ready(Some(Ok(more.map_or(first, BytesMut::freeze))))
    }
}

impl RecvInner {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        match self {
            RecvInner::Server(s) => s
                .poll_recv_data(cx)
                .map_ok(|o| o.map(|mut b| b.copy_to_bytes(b.remaining()))),
            RecvInner::Client(s) => s
                .poll_recv_data(cx)
                .map_ok(|o| o.map(|mut b| b.copy_to_bytes(b.remaining()))),
        }
    }
}

// === impl H3Send ===

/// A send or finish under way. h3 offers only `async` sends, so the future owns the stream half
/// until it is done and hands it back; dropped unfinished it resets the stream (a tunnel cut
/// short must not read as a clean end).
type InFlight = Pin<Box<dyn Future<Output = (Option<SendInner>, Result<(), StreamError>)> + Send>>;

struct ResetOnDrop(Option<SendInner>);

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(s) = &mut self.0 {
            s.stop();
        }
    }
}

impl SendInner {
    fn stop(&mut self) {
        match self {
            SendInner::Server(s) => s.stop_stream(Code::H3_REQUEST_CANCELLED),
            SendInner::Client(s) => s.stop_stream(Code::H3_REQUEST_CANCELLED),
        }
    }

    /// Sends `data` as one DATA frame, or with `None` finishes the stream.
    fn start(self, data: Option<Bytes>) -> InFlight {
        Box::pin(async move {
            let mut held = ResetOnDrop(Some(self));
            let r = match (&mut held.0, data) {
                (Some(SendInner::Server(s)), Some(d)) => s.send_data(d).await,
                (Some(SendInner::Client(s)), Some(d)) => s.send_data(d).await,
                (Some(SendInner::Server(s)), None) => s.finish().await,
                (Some(SendInner::Client(s)), None) => s.finish().await,
                (None, _) => Ok(()),
            };
            (held.0.take(), r)
        })
    }
}

impl H3Send {
    /// Sends `data` as one DATA frame; quinn applies flow control (the future waits for credit).
    pub async fn send(&mut self, mut data: Bytes) -> Result<(), QuicError> {
        poll_fn(|cx| self.poll_send(cx, &mut data)).await
    }

    /// [`H3Send::send`], polled: takes all of `data` when the send starts and is ready once it
    /// is done.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<Result<(), QuicError>> {
        loop {
            if let Some(op) = &mut self.busy {
                // Usually the send of `data` itself (taken when it started); after a caller
                // that gave up mid-send, an earlier one, and `data` is still to be sent.
                let (inner, r) = ready!(op.as_mut().poll(cx));
                self.busy = None;
                self.inner = inner;
                if let Err(e) = r {
                    return Poll::Ready(Err(e.into()));
                }
                continue;
            }
            if self.finished {
                return Poll::Ready(Err(QuicError::StreamClosed));
            }
            if data.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let Some(inner) = self.inner.take() else {
                return Poll::Ready(Err(QuicError::StreamClosed));
            };
            self.busy = Some(inner.start(Some(std::mem::take(data))));
        }
    }

    /// Half-closes the stream (QUIC FIN). Finishing twice is a no-op.
    pub async fn finish(&mut self) -> Result<(), QuicError> {
        poll_fn(|cx| self.poll_finish(cx)).await
    }

    /// [`H3Send::finish`], polled.
    pub fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), QuicError>> {
        loop {
            if let Some(op) = &mut self.busy {
                let (inner, r) = ready!(op.as_mut().poll(cx));
                self.busy = None;
                self.inner = inner;
                // `finished` is set when the finish starts: this was it.
                if self.finished {
                    return Poll::Ready(r.map_err(Into::into));
                }
                r?;
            }
            if self.finished {
                return Poll::Ready(Ok(()));
            }
            let Some(inner) = self.inner.take() else {
                return Poll::Ready(Err(QuicError::StreamClosed));
            };
            self.finished = true;
            self.busy = Some(inner.start(None));
        }
    }

    /// Aborts the stream (`RESET_STREAM` with `H3_REQUEST_CANCELLED`, read as EOF by a peer).
    pub fn reset(&mut self) {
        self.finished = true;
        // A send under way resets the stream as it is dropped.
        self.busy = None;
        if let Some(s) = &mut self.inner {
            s.stop();
        }
    }
}

impl Drop for H3Send {
    fn drop(&mut self) {
        if !self.finished {
            self.reset();
        }
    }
}
