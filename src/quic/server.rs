//! The server side of one HBONE-over-QUIC connection: accepts HTTP/3 CONNECT streams and hands
//! each to a handler task as an [`InboundRequest`].
//!
//! Invariants (the same as `hbone::serve`):
//! - Requests that are not HBONE (a method other than CONNECT, or an `:authority` that is not a
//!   valid [`Authority`]) are answered `400` here and never reach the handler.
//! - Once `shutdown` completes, a GOAWAY is sent and in-flight streams are served until they
//!   end; the caller bounds that by dropping the future, which closes the connection
//!   (CONNECTION_CLOSE with `H3_NO_ERROR`).
//! - Request headers are resolved in the stream's own task, so a slow client cannot stall the
//!   accept loop.

use std::future::Future;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use crate::core::Authority;

use super::QuicError;
use super::stream::{H3Recv, H3Send, server_halves};

type ServerStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// A CONNECT request received by the server, waiting to be accepted or rejected.
///
/// Dropping it without answering resets the stream.
pub struct InboundRequest {
    pub authority: Authority,
    /// The request's headers (`baggage`, `forwarded`, `traceparent`...), parsed by the caller.
    pub headers: HeaderMap,
    stream: ServerStream,
}

/// Serves one QUIC connection (see the module doc). Returns when the connection is over: the
/// client closed it, it failed, or, after `shutdown`, the last stream ended.
pub async fn serve<H, F>(
    conn: quinn::Connection,
    shutdown: impl Future<Output = ()>,
    handler: H,
) -> Result<(), QuicError>
where
    H: Fn(InboundRequest) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let mut h3 = h3::server::builder()
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await?;
    let handler = std::sync::Arc::new(handler);
    tokio::pin!(shutdown);
    // Every stream task holds a clone of `alive`; once draining, the receiver sees the end of
    // the channel when the last stream task is done (h3 itself only tracks that for a GOAWAY
    // it received, not one it sent).
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut alive = Some(alive_tx);
    loop {
        let accepted = tokio::select! {
            a = h3.accept() => a,
            () = &mut shutdown, if alive.is_some() => {
                alive = None;
                // GOAWAY: requests after the last accepted one are refused.
                h3.shutdown(0).await?;
                continue;
            }
            _ = alive_rx.recv(), if alive.is_none() => return Ok(()),
        };
        match accepted {
            Ok(Some(resolver)) => {
                let handler = handler.clone();
                let guard = alive.clone();
                tokio::spawn(async move {
                    let _alive = guard;
                    match resolver.resolve_request().await {
                        Ok((request, stream)) => {
                            if let Some(inbound) = InboundRequest::check(request, stream).await {
                                handler(inbound).await;
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "bad HTTP/3 request"),
                    }
                });
            }
            Ok(None) => return Ok(()),
            Err(e) if e.is_h3_no_error() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

// === impl InboundRequest ===

impl InboundRequest {
    /// Turns an HTTP/3 request into an `InboundRequest`, or answers `400` itself and returns
    /// `None`.
    async fn check(request: Request<()>, mut stream: ServerStream) -> Option<InboundRequest> {
        if request.method() != Method::CONNECT {
            tracing::debug!(method = %request.method(), "rejecting non-CONNECT request");
            send_status(&mut stream, StatusCode::BAD_REQUEST).await;
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
                send_status(&mut stream, StatusCode::BAD_REQUEST).await;
                return None;
            }
        };
        let (parts, ()) = request.into_parts();
        Some(InboundRequest {
            authority,
            headers: parts.headers,
            stream,
        })
    }

    /// Answers with `status` (for example 400, 401 or 503) and ends the stream.
    pub async fn reject(mut self, status: StatusCode) {
        send_status(&mut self.stream, status).await;
    }

    /// Answers `200` (with `response_headers`, e.g. the destination's `baggage`); the stream then
    /// carries bytes both ways.
    pub async fn accept(
        mut self,
        response_headers: Option<(http::HeaderName, HeaderValue)>,
    ) -> Result<(H3Recv, H3Send), QuicError> {
        let mut response = Response::builder().status(StatusCode::OK).body(())?;
        if let Some((name, value)) = response_headers {
            response.headers_mut().insert(name, value);
        }
        self.stream.send_response(response).await?;
        Ok(server_halves(self.stream))
    }
}

/// Sends a header-only response that ends the stream. Failure means the client already went
/// away, which leaves nothing to answer.
async fn send_status(stream: &mut ServerStream, status: StatusCode) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Err(e) = stream.send_response(response).await {
        tracing::debug!(error = %e, %status, "could not send response");
        return;
    }
    if let Err(e) = stream.finish().await {
        tracing::debug!(error = %e, %status, "could not finish response");
    }
}
