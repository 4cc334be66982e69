//! The client side of one HBONE HTTP/2 connection: the handshake (applying [`H2Config`]), a
//! spawned driver task with PING keepalive, and CONNECT requests over it.
//!
//! Invariants:
//! - The driver task owns the `h2` connection; it ends when the peer closes, the transport fails,
//!   a PING goes unanswered, or [`H2Client::close`] is called, and then marks the client closed.
//! - [`connect_once`] runs the same handshake over any byte stream (for double HBONE, the
//!   outer tunnel itself) for exactly one CONNECT; that connection is never pooled and closes
//!   when its one stream ends.
//! - The live-stream count is a [`StreamSlot`] per stream, taken before the request is sent and
//!   given back when the stream (both halves) is dropped, so the pool's limits also cover
//!   requests still in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::headers::{Baggage, ConnectRequest};
use super::stream::H2Stream;
use super::{H2Config, HboneError, keepalive};

/// One client HTTP/2 connection. Clones share the connection.
#[derive(Clone)]
pub struct H2Client {
    send: h2::client::SendRequest<Bytes>,
    state: Arc<watch::Sender<ConnState>>,
    /// Why the connector's cut signal closed the connection, once it did.
    cut: Arc<OnceLock<String>>,
    /// Our own cap on concurrent streams (`pool_max_streams_per_conn`).
    max_streams: usize,
}

/// What the pool and the driver share about a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConnState {
    pub streams: usize,
    pub closed: bool,
    /// No new streams may be taken (the peer is draining or the connection looked broken);
    /// streams already on it run to their end.
    pub draining: bool,
}

/// One live stream's share of its connection's stream count; dropping it gives the share back.
pub(crate) struct StreamSlot {
    state: Arc<watch::Sender<ConnState>>,
    pub(crate) cut: Arc<OnceLock<String>>,
}

/// A future the connector hands over with a transport: when it resolves (with a reason), the
/// connection is closed at once, streams and all. Used for a peer whose certificate a CRL
/// revokes; this module only knows it as a reason.
pub type CutWhen = Pin<Box<dyn Future<Output = String> + Send>>;

/// Opens an HTTP/2 client connection over `io` and spawns its driver (with PING keepalive).
pub async fn handshake<IO>(io: IO, cfg: &H2Config) -> Result<H2Client, HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    handshake_until(io, cfg, None).await
}

/// [`handshake`], with the driver also closing the connection when `cut` resolves.
pub async fn handshake_until<IO>(
    io: IO,
    cfg: &H2Config,
    cut: Option<CutWhen>,
) -> Result<H2Client, HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(clamp_window(cfg.stream_window))
        .initial_connection_window_size(clamp_window(cfg.connection_window))
        .max_frame_size(clamp_frame(cfg.frame_size))
        .max_header_list_size(cfg.client_max_header_list)
        .max_send_buffer_size(cfg.stream_window as usize)
        .initial_max_send_streams(cfg.pool_max_streams_per_conn as usize)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(HboneError::Handshake)?;

    let state = Arc::new(watch::Sender::new(ConnState::default()));
    let ping = keepalive(conn.ping_pong(), cfg.ping_interval, cfg.ping_timeout);
    let driver_state = state.clone();
    let cut_reason = Arc::new(OnceLock::new());
    let driver_cut = cut_reason.clone();
    tokio::spawn(async move {
        let mut close_rx = driver_state.subscribe();
        let cut = async move {
            match cut {
                Some(c) => c.await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = &mut conn => r.map_err(HboneError::from),
            e = ping => Err(e),
            // Dropping `conn` closes the transport; the pool only closes idle connections.
            _ = close_rx.wait_for(|s| s.closed) => Ok(()),
            // Recorded before `conn` drops, so streams failing with it can tell why.
            reason = cut => {
                let _ = driver_cut.set(reason);
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "hbone client connection ended");
        }
        driver_state.send_modify(|s| s.closed = true);
    });

    Ok(H2Client {
        send,
        state,
        cut: cut_reason,
        max_streams: cfg.pool_max_streams_per_conn.max(1) as usize,
    })
}

/// Opens an unpooled HTTP/2 connection over `io` (any byte stream, e.g. an HBONE tunnel) and
/// sends one CONNECT on it. The returned stream keeps the connection alive: the client handle
/// is dropped here, so h2 closes the connection (GOAWAY) once the stream has ended.
pub async fn connect_once<IO>(
    io: IO,
    cfg: &H2Config,
    req: &ConnectRequest,
) -> Result<H2Stream, HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = handshake(io, cfg).await?;
    client.connect(req).await
}

/// h2 panics on a frame size outside the range HTTP/2 allows; configuration must not panic us.
fn clamp_frame(size: u32) -> u32 {
    size.clamp(16_384, 16_777_215)
}

/// HTTP/2 windows are at most 2^31-1.
pub(crate) fn clamp_window(size: u32) -> u32 {
    size.min(i32::MAX as u32)
}

// === impl H2Client ===

impl H2Client {
    /// Sends a CONNECT request and waits for the response; `Err(Status(code))` on non-200.
    pub async fn connect(&self, req: &ConnectRequest) -> Result<H2Stream, HboneError> {
        let slot = self.reserve();
        self.connect_with(req, slot).await
    }

    /// True once the connection has ended (or is being closed); it will never carry a stream
    /// again.
    pub fn is_closed(&self) -> bool {
        self.state.borrow().closed
    }

    /// Streams opened on this connection and not yet dropped.
    pub fn active_streams(&self) -> usize {
        self.state.borrow().streams
    }

    /// Closes the connection (streams on it are aborted).
    pub fn close(&self) {
        self.state.send_modify(|s| s.closed = true);
    }

    /// How many streams this connection may carry at once: our own cap and the peer's
    /// SETTINGS_MAX_CONCURRENT_STREAMS, whichever is lower.
    pub(crate) fn stream_limit(&self) -> usize {
        self.max_streams
            .min(self.send.current_max_send_streams())
            .max(1)
    }

    /// Takes a stream slot if the connection is open and below `limit`; atomic with respect to
    /// other reservations and to [`H2Client::close_if_idle`].
    pub(crate) fn try_reserve(&self, limit: usize) -> Option<StreamSlot> {
        let mut taken = false;
        self.state.send_if_modified(|s| {
            taken = !s.closed && !s.draining && s.streams < limit;
            if taken {
                s.streams += 1;
            }
            taken
        });
        taken.then(|| StreamSlot {
            state: self.state.clone(),
            cut: self.cut.clone(),
        })
    }

    /// Closes the connection if it has no streams; returns whether it is now closed.
    pub(crate) fn close_if_idle(&self) -> bool {
        self.state.send_if_modified(|s| {
            let close = !s.closed && s.streams == 0;
            if close {
                s.closed = true;
            }
            close
        });
        self.is_closed()
    }

    /// Stops handing this connection out without disturbing the streams already on it.
    pub(crate) fn stop_reuse(&self) {
        self.state
            .send_if_modified(|s| !std::mem::replace(&mut s.draining, true));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<ConnState> {
        self.state.subscribe()
    }

    fn reserve(&self) -> StreamSlot {
        self.state.send_modify(|s| s.streams += 1);
        StreamSlot {
            state: self.state.clone(),
            cut: self.cut.clone(),
        }
    }

    pub(crate) async fn connect_with(
        &self,
        req: &ConnectRequest,
        slot: StreamSlot,
    ) -> Result<H2Stream, HboneError> {
        if self.is_closed() {
            return Err(HboneError::ConnectionClosed);
        }
        let request = build_request(req)?;
        // `ready` waits while the peer's concurrent-stream limit is reached.
        let mut send = self.send.clone().ready().await?;
        let (response, stream) = send.send_request(request, false)?;
        let response = response.await?;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Status(response.status()));
        }
        let baggage = Baggage::from_map(response.headers());
        Ok(H2Stream::new(
            response.into_body(),
            stream,
            Some(slot),
            baggage,
        ))
    }
}

/// A classic CONNECT: the URI is the authority alone, so h2 sends `:authority` and neither
/// `:scheme` nor `:path`.
fn build_request(req: &ConnectRequest) -> Result<Request<()>, HboneError> {
    let authority =
        http::uri::Authority::try_from(req.authority.to_string()).map_err(http::Error::from)?;
    let mut parts = http::uri::Parts::default();
    parts.authority = Some(authority);
    let uri = Uri::from_parts(parts).map_err(http::Error::from)?;
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .body(())?;
    req.headers.write_to(request.headers_mut())?;
    Ok(request)
}

// === impl StreamSlot ===

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.state
            .send_modify(|s| s.streams = s.streams.saturating_sub(1));
    }
}
