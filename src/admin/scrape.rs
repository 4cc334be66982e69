//! The metrics endpoint's response: the format the scraper's `Accept` asks for (OpenMetrics or
//! Prometheus text), gzip-compressed when its `Accept-Encoding` allows.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use http_body_util::Full;
use std::io::Write;

use crate::metrics::Metrics;
use crate::metrics::exposition::{Format, accepts_gzip};

/// Encodes `metrics` for a request with `headers`.
pub(super) fn respond(metrics: &Metrics, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let value = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(value(header::ACCEPT));
    let body = match metrics.encode_as(format) {
        Ok(b) => b,
        Err(e) => {
            return super::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding metrics: {e}\n"),
            );
        }
    };
    let gzip = accepts_gzip(value(header::ACCEPT_ENCODING));
    let (body, encoded) = if gzip {
        match gzip_bytes(body.as_bytes()) {
            Ok(z) => (Bytes::from(z), true),
            // Compression into memory cannot really fail; serve plain if it ever does.
            Err(_) => (Bytes::from(body), false),
        }
    } else {
        (Bytes::from(body), false)
    };
    let mut resp = Response::new(Full::new(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(format.content_type()),
    );
    h.insert(
        header::VARY,
        header::HeaderValue::from_static("accept, accept-encoding"),
    );
    if encoded {
        h.insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    resp
}

fn gzip_bytes(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    enc.finish()
}
