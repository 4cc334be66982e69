//! One HTTP/1.1 request per call to the admin API (hyper's client), bounded in time.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use super::CtlError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The admin API answers from memory; a minute covers a large `/config_dump` on a busy node.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// `GET path`, decoded as JSON; an error answer's `{"error": ...}` becomes [`CtlError::Refused`].
pub(super) async fn get_json(admin: SocketAddr, path: &str) -> Result<Value, CtlError> {
    let (status, body) = request(admin, Method::GET, path).await?;
    if status == StatusCode::NOT_FOUND && body.is_empty() {
        // ztunnel's admin API answers paths it lacks (`/debug/explain`, ...) this way.
        let endpoint = path.split('?').next().unwrap_or(path);
        return Err(CtlError::Refused(format!(
            "the admin API at {admin} has no {endpoint} (only ambit serves it)"
        )));
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| CtlError::BadAnswer(format!("{path}: status {status}, not JSON ({e})")))?;
    if status.is_success() {
        return Ok(value);
    }
    match value.get("error").and_then(Value::as_str) {
        Some(msg) => Err(CtlError::Refused(msg.to_string())),
        None => Err(CtlError::BadAnswer(format!("{path}: status {status}"))),
    }
}

/// `POST path`, the answer as text.
pub(super) async fn post_text(admin: SocketAddr, path: &str) -> Result<String, CtlError> {
    let (status, body) = request(admin, Method::POST, path).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        Ok(text)
    } else {
        // The first line says what was wrong; the rest is usage.
        Err(CtlError::Refused(
            text.lines().next().unwrap_or_default().to_string(),
        ))
    }
}

async fn request(
    admin: SocketAddr,
    method: Method,
    path: &str,
) -> Result<(StatusCode, Bytes), CtlError> {
    let unreachable = |reason: String| CtlError::Unreachable {
        addr: admin,
        reason,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(admin))
        .await
        .map_err(|_| unreachable(format!("no answer in {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    let exchange = async {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, admin.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| CtlError::Usage(format!("bad request {path:?}: {e}")))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer to {path} in {REQUEST_TIMEOUT:?}")))?
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(super) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
