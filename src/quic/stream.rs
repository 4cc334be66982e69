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

use bytes::{Buf, Bytes};
use h3::error::{Code, StreamError};

use super::QuicError;
use super::client::StreamGuard;

type ServerSend = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type ServerRecv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
type ClientSend = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type ClientRecv = h3::client::RequestStream<h3_quinn::RecvStream, Bytes>;

/// The receiving half of a stream.
pub struct H3Recv {
    inner: RecvInner,
    eof: bool,
    _guard: Option<Arc<StreamGuard>>,
}

/// The sending half of a stream.
pub struct H3Send {
    inner: SendInner,
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
            _guard: guard.clone(),
        },
        H3Send {
            inner: send,
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
    /// The next received chunk, or `None` at end of stream.
    pub async fn recv(&mut self) -> Option<Result<Bytes, QuicError>> {
        if self.eof {
            return None;
        }
        loop {
            let received = match &mut self.inner {
                RecvInner::Server(s) => s
                    .recv_data()
                    .await
                    .map(|o| o.map(|mut b| b.copy_to_bytes(b.remaining()))),
                RecvInner::Client(s) => s
                    .recv_data()
                    .await
                    .map(|o| o.map(|mut b| b.copy_to_bytes(b.remaining()))),
            };
            match received {
                Ok(Some(chunk)) if chunk.is_empty() => continue,
                Ok(Some(chunk)) => return Some(Ok(chunk)),
                Ok(None) => {
                    self.eof = true;
                    return None;
                }
                Err(e) if is_clean_end(&e) => {
                    self.eof = true;
                    return None;
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}

// === impl H3Send ===

impl H3Send {
    /// Sends `data` as one DATA frame; quinn applies flow control (the future waits for credit).
    pub async fn send(&mut self, data: Bytes) -> Result<(), QuicError> {
        if self.finished {
            return Err(QuicError::StreamClosed);
        }
        match &mut self.inner {
            SendInner::Server(s) => s.send_data(data).await?,
            SendInner::Client(s) => s.send_data(data).await?,
        }
        Ok(())
    }

    /// Half-closes the stream (QUIC FIN). Finishing twice is a no-op.
    pub async fn finish(&mut self) -> Result<(), QuicError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        match &mut self.inner {
            SendInner::Server(s) => s.finish().await?,
            SendInner::Client(s) => s.finish().await?,
        }
        Ok(())
    }

    /// Aborts the stream (`RESET_STREAM` with `H3_REQUEST_CANCELLED`, read as EOF by a peer).
    pub fn reset(&mut self) {
        self.finished = true;
        match &mut self.inner {
            SendInner::Server(s) => s.stop_stream(Code::H3_REQUEST_CANCELLED),
            SendInner::Client(s) => s.stop_stream(Code::H3_REQUEST_CANCELLED),
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
