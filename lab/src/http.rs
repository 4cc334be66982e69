//! Minimal HTTP/1.1 probes run from inside a namespace: enough to wait for a readiness endpoint
//! and to scrape metrics, without depending on curl being installed. Every call is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::netns::with_deadline;
use crate::{LabError, Netns, Process};

/// Pause between readiness attempts: a bounded poll, since an HTTP endpoint gives no other signal.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A response: status code and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `addr` from inside `ns`, with `Connection: close`; the whole exchange is bounded
/// by `timeout`.
pub async fn http_get(
    ns: &Netns,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, LabError> {
    http_request(ns, "GET", addr, path, timeout).await
}

/// `method path` (no body) on `addr` from inside `ns`; otherwise as [`http_get`].
pub async fn http_request(
    ns: &Netns,
    method: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, LabError> {
    let op = format!("{method} http://{addr}{path}");
    let exchange = async {
        let mut stream = ns.connect(addr, timeout).await.map_err(to_io)?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok(raw)
    };
    let raw = with_deadline(ns.name(), &op, timeout, exchange).await?;
    parse(&raw).ok_or_else(|| LabError::Socket {
        netns: ns.name().into(),
        op,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP/1 response"),
    })
}

/// Polls `GET path` until it answers 200: at most `attempts` tries, each bounded by
/// `per_attempt`. When `process` is given, fails at once (with its log tail) if it has exited.
pub async fn wait_http_ok(
    ns: &Netns,
    addr: SocketAddr,
    path: &str,
    attempts: u32,
    per_attempt: Duration,
    mut process: Option<&mut Process>,
) -> Result<(), LabError> {
    let mut last = String::from("no attempt made");
    for attempt in 0..attempts {
        if let Some(p) = process.as_deref_mut() {
            p.ensure_running()?;
        }
        match http_get(ns, addr, path, per_attempt).await {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => last = format!("status {}", r.status),
            Err(e) => last = e.to_string(),
        }
        if attempt + 1 < attempts {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    Err(LabError::NotReady {
        what: format!("http://{addr}{path} in {}", ns.name()),
        attempts,
        last,
    })
}

fn to_io(e: LabError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Parses a `Connection: close` response (body = everything after the header block; chunked
/// bodies are de-chunked).
fn parse(raw: &[u8]) -> Option<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some(HttpResponse { status, body })
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let r = parse(
            b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
        assert!(parse(b"garbage").is_none());
    }
}
