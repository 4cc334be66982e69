//! A tunnelled byte stream: the DATA frames of one CONNECT stream, either as a whole
//! ([`H2Stream`], `AsyncRead + AsyncWrite`, may copy) or split into zero-copy halves
//! ([`H2Recv`] hands out the received `Bytes`, [`H2Send`] sends `Bytes` without copying).
//!
//! Invariants:
//! - Receive flow-control capacity is released as soon as a chunk is handed out, so the peer's
//!   window reopens at the pace the consumer reads (that is the back-pressure).
//! - A peer's `RST_STREAM` with `NO_ERROR` or `CANCEL` is end of stream, not an error (wire.md).
//! - On the client side both halves hold a [`StreamSlot`], so the pool counts a stream as live
//!   until both halves are dropped.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::HboneError;
use super::client::StreamSlot;
use super::headers::Baggage;

/// One tunnelled byte stream.
pub struct H2Stream {
    recv: H2Recv,
    send: H2Send,
    /// A received chunk not yet fully read through `AsyncRead`.
    read_buf: Bytes,
    response_baggage: Option<Baggage>,
}

/// Reads why a stream's connection was cut by its connector's signal, if it was.
#[derive(Clone, Debug)]
pub struct CutProbe(Arc<std::sync::OnceLock<String>>);

impl CutProbe {
    pub fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// The receiving half of a stream.
pub struct H2Recv {
    inner: h2::RecvStream,
    eof: bool,
    _slot: Option<Arc<StreamSlot>>,
}

/// The sending half of a stream.
pub struct H2Send {
    inner: h2::SendStream<Bytes>,
    finished: bool,
    _slot: Option<Arc<StreamSlot>>,
}

// === impl H2Stream ===

impl H2Stream {
    pub(crate) fn new(
        recv: h2::RecvStream,
        send: h2::SendStream<Bytes>,
        slot: Option<StreamSlot>,
        response_baggage: Option<Baggage>,
    ) -> Self {
        let slot = slot.map(Arc::new);
        H2Stream {
            recv: H2Recv {
                inner: recv,
                eof: false,
                _slot: slot.clone(),
            },
            send: H2Send {
                inner: send,
                finished: false,
                _slot: slot,
            },
            read_buf: Bytes::new(),
            response_baggage,
        }
    }

    /// The `baggage` of the peer's `200` response (client side), describing the destination.
    pub fn response_baggage(&self) -> Option<&Baggage> {
        self.response_baggage.as_ref()
    }

    /// Splits into halves that move `Bytes` without copying. Data already buffered by
    /// `AsyncRead` but not yet read is lost, so split before reading through `AsyncRead`.
    /// Why the connector cut this stream's connection, readable after the stream fails
    /// (`None` for a server-side stream).
    pub fn cut_probe(&self) -> Option<CutProbe> {
        self.recv._slot.as_ref().map(|s| CutProbe(s.cut.clone()))
    }

    pub fn split(self) -> (H2Recv, H2Send) {
        (self.recv, self.send)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read_buf.is_empty() {
            match ready!(this.recv.poll_recv(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Some(Ok(chunk)) => this.read_buf = chunk,
            }
        }
        let n = this.read_buf.len().min(buf.remaining());
        buf.put_slice(&this.read_buf.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.get_mut().send;
        let cap = ready!(send.poll_capacity_for(cx, buf.len())).map_err(to_io)?;
        let n = cap.min(buf.len());
        send.inner
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(|e| to_io(e.into()))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes buffered frames from the connection task; there is nothing to flush here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().send.finish().map_err(to_io))
    }
}

fn to_io(e: HboneError) -> io::Error {
    match e {
        HboneError::Io(e) => e,
        HboneError::H2(e) if e.is_reset() => io::Error::new(io::ErrorKind::ConnectionReset, e),
        HboneError::StreamClosed => io::Error::new(io::ErrorKind::BrokenPipe, e),
        e => io::Error::other(e),
    }
}

// === impl H2Recv ===

impl H2Recv {
    /// The next received chunk, or `None` at end of stream.
    pub async fn recv(&mut self) -> Option<Result<Bytes, HboneError>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, HboneError>>> {
        if self.eof {
            return Poll::Ready(None);
        }
        loop {
            match ready!(self.inner.poll_data(cx)) {
                None => {
                    self.eof = true;
                    return Poll::Ready(None);
                }
                Some(Ok(chunk)) => {
                    // The chunk now belongs to the consumer: let the peer send that much more.
                    if let Err(e) = self.inner.flow_control().release_capacity(chunk.len()) {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
                Some(Err(e))
                    if e.is_reset()
                        && matches!(e.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) =>
                {
                    self.eof = true;
                    return Poll::Ready(None);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }
}

// === impl H2Send ===

impl H2Send {
    /// Sends `data`, waiting for flow-control capacity and sending it in pieces as capacity
    /// allows. Pieces are slices of `data` (reference counted), never copies.
    pub async fn send(&mut self, mut data: Bytes) -> Result<(), HboneError> {
        poll_fn(|cx| self.poll_send(cx, &mut data)).await
    }

    /// [`H2Send::send`], polled: takes bytes off the front of `data` as capacity allows and is
    /// ready once all of it is handed to h2.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<Result<(), HboneError>> {
        while !data.is_empty() {
            let cap = ready!(self.poll_capacity_for(cx, data.len()))?;
            let piece = data.split_to(cap.min(data.len()));
            self.inner.send_data(piece, false)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Half-closes the stream (END_STREAM). Finishing twice is a no-op.
    pub fn finish(&mut self) -> Result<(), HboneError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.inner.send_data(Bytes::new(), true)?;
        Ok(())
    }

    /// Aborts the stream with `RST_STREAM(reason)`; `CANCEL` reads as end of stream on an
    /// HBONE peer, anything else as an error.
    pub fn reset(&mut self, reason: Reason) {
        self.finished = true;
        self.inner.send_reset(reason);
    }

    /// Waits until at least one byte of send capacity is available (asking for `want`).
    fn poll_capacity_for(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<Result<usize, HboneError>> {
        if self.finished {
            return Poll::Ready(Err(HboneError::StreamClosed));
        }
        self.inner.reserve_capacity(want);
        loop {
            let cap = self.inner.capacity();
            if cap > 0 {
                return Poll::Ready(Ok(cap));
            }
            match ready!(self.inner.poll_capacity(cx)) {
                None => return Poll::Ready(Err(HboneError::StreamClosed)),
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                Some(Ok(_)) => {}
            }
        }
    }
}
