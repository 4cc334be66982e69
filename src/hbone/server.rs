//! The server side of one HBONE HTTP/2 connection: accepts CONNECT streams and hands each to a
//! handler task as an [`InboundRequest`].
//!
//! Invariants:
//! - Requests that are not HBONE (a method other than CONNECT, or an `:authority` that is not
//!   a valid [`Authority`]) are answered `400` here and never reach the handler.
//! - Once `shutdown` completes, a graceful GOAWAY is sent and in-flight streams are served until
//!   they end; the caller bounds that by dropping the future.
//! - The connection is driven (and PINGed) by `serve` itself, so the handler tasks only ever
//!   touch their own stream.

use std::future::Future;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::core::Authority;

use super::client::clamp_window;
use super::headers::{BAGGAGE, Baggage, ConnectHeaders};
use super::stream::H2Stream;
use super::{H2Config, HboneError, keepalive};

/// A CONNECT request received by the server, waiting to be accepted or rejected.
///
/// Dropping it without answering resets the stream.
pub struct InboundRequest {
    pub authority: Authority,
    pub headers: ConnectHeaders,
    body: h2::RecvStream,
    respond: h2::server::SendResponse<Bytes>,
}

/// Serves one HTTP/2 connection (see the module doc). Returns when the connection is over: the
/// client closed it, it failed, a PING went unanswered, or, after `shutdown`, the last stream
/// ended.
pub async fn serve<IO, H, F>(
    io: IO,
    cfg: &H2Config,
    shutdown: impl Future<Output = ()>,
    handler: H,
) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(InboundRequest) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(clamp_window(cfg.stream_window))
        .initial_connection_window_size(clamp_window(cfg.connection_window))
        .max_frame_size(cfg.frame_size.clamp(16_384, 16_777_215))
        .max_header_list_size(cfg.server_max_header_list)
        .max_send_buffer_size(cfg.server_max_send_buffer)
        .max_concurrent_streams(cfg.server_max_concurrent_streams)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(HboneError::Handshake)?;

    let ping = keepalive(conn.ping_pong(), cfg.ping_interval, cfg.ping_timeout);
    tokio::pin!(ping);
    tokio::pin!(shutdown);
    let mut draining = false;

    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    if let Some(inbound) = InboundRequest::check(request, respond) {
                        tokio::spawn(handler(inbound));
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            e = &mut ping => return Err(e),
            () = &mut shutdown, if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
        }
    }
}

// === impl InboundRequest ===

impl InboundRequest {
    /// Turns an h2 request into an `InboundRequest`, or answers `400` itself and returns `None`.
    fn check(
        request: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) -> Option<InboundRequest> {
        if request.method() != Method::CONNECT {
            tracing::debug!(method = %request.method(), "rejecting non-CONNECT request");
            send_status(&mut respond, StatusCode::BAD_REQUEST);
            return None;
        }
        let authority = request
            .uri()
            .authority()
            .ok_or("missing :authority")
            .and_then(|a| {
                a.as_str()
                    .parse::<Authority>()
                    .map_err(|_| "bad :authority")
            });
        let authority = match authority {
            Ok(a) => a,
            Err(reason) => {
                tracing::debug!(uri = %request.uri(), reason, "rejecting CONNECT");
                send_status(&mut respond, StatusCode::BAD_REQUEST);
                return None;
            }
        };
        let headers = ConnectHeaders::from_map(request.headers());
        Some(InboundRequest {
            authority,
            headers,
            body: request.into_body(),
            respond,
        })
    }

    /// Answers with `status` (for example 400, 401 or 503) and ends the stream.
    pub fn reject(mut self, status: StatusCode) {
        send_status(&mut self.respond, status);
    }

    /// Answers `200` (with the destination's `baggage`, if given); the stream then carries
    /// bytes both ways.
    pub fn accept(mut self, response_baggage: Option<&Baggage>) -> Result<H2Stream, HboneError> {
        let mut response = Response::builder().status(StatusCode::OK).body(())?;
        if let Some(b) = response_baggage {
            let value = HeaderValue::try_from(b.to_string()).map_err(http::Error::from)?;
            response.headers_mut().insert(BAGGAGE.clone(), value);
        }
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream::new(self.body, send, None, None))
    }
}

/// Sends a header-only response that ends the stream. Failure means the client already went
/// away, which leaves nothing to answer.
fn send_status(respond: &mut h2::server::SendResponse<Bytes>, status: StatusCode) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Err(e) = respond.send_response(response, true) {
        tracing::debug!(error = %e, %status, "could not send response");
    }
}
