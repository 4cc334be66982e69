//! The QUIC half of the transport abstraction: the HTTP/3 form of a CONNECT, the inbound request
//! as an [`InboundTunnel`], and the stream halves as the copy's chunk source and sink.

use std::io;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};

use crate::core::Authority;
use crate::hbone::{self, Baggage, ConnectRequest};
use crate::metrics::HboneTransportLabel;
use crate::quic::{self, H3Recv, H3Send};

use super::InboundTunnel;
use crate::conn::copy::{ChunkSink, ChunkSource};

/// The HTTP/3 form of an HBONE CONNECT: `:authority` is the target, headers as on h2.
pub(super) fn h3_request(req: &ConnectRequest) -> Result<Request<()>, http::Error> {
    let uri = Uri::builder()
        .authority(req.authority.to_string().as_str())
        .build()?;
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .body(())?;
    req.headers.write_to(request.headers_mut())?;
    Ok(request)
}

// === inbound: the h3 CONNECT request ===

impl InboundTunnel for quic::InboundRequest {
    type Recv = H3Recv;
    type Send = H3Send;
    const TRANSPORT: HboneTransportLabel = HboneTransportLabel::h3;

    fn authority(&self) -> &Authority {
        &self.authority
    }

    fn forwarded_host(&self) -> Option<String> {
        hbone::ConnectHeaders::from_map(&self.headers)
            .forwarded
            .and_then(|f| f.host)
    }

    fn forwarded_network(&self) -> Option<String> {
        hbone::ConnectHeaders::from_map(&self.headers).forwarded_network
    }

    fn baggage(&self) -> Option<Baggage> {
        hbone::ConnectHeaders::from_map(&self.headers).baggage
    }

    async fn reject(self, status: StatusCode) {
        quic::InboundRequest::reject(self, status).await
    }

    async fn accept(self, baggage: Option<&Baggage>) -> Result<(H3Recv, H3Send), String> {
        let header = match baggage {
            Some(b) => Some((
                http::HeaderName::from_static("baggage"),
                http::HeaderValue::try_from(b.to_string()).map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        quic::InboundRequest::accept(self, header)
            .await
            .map_err(|e| e.to_string())
    }
}

// === copy: QUIC halves ===

impl ChunkSource for H3Recv {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        self.poll_recv(cx)
            .map(|r| r.transpose().map_err(io::Error::other))
    }
}

impl ChunkSink for H3Send {
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        self.poll_send(cx, chunk).map_err(io::Error::other)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        H3Send::poll_finish(self, cx).map_err(io::Error::other)
    }
}
