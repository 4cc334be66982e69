//! The operating endpoints of the admin server (localhost:15000): the index, `/logging` (read
//! or change the log filter at run time) and `/quitquitquit` (drain, then exit 0).
//!
//! Invariant: the admin server listens on loopback only ([`bind_loopback`] refuses anything
//! else), since it can stop the process and change what it logs.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;
use tracing::info;

use super::{BindError, text};
use crate::lifecycle::{DrainWatcher, ShutdownHandle};
use crate::telemetry::LogHandle;

/// What the operating endpoints act on.
#[derive(Clone)]
pub struct AdminOps {
    pub log: LogHandle,
    /// The filter `?reset` restores: the one the process started with.
    pub initial_filter: String,
    pub shutdown: ShutdownHandle,
}

const INDEX: &str = "ambit admin\n\
  /                 this list\n\
  /config_dump      workloads, services, policies, certificates, version, config (JSON)\n\
  /logging          POST: list the log filter; ?level=<filter> sets it (e.g. info or access=debug,warn); ?reset restores the initial one\n\
  /quitquitquit     POST: drain (readiness false, stop accepting, deadline), then exit 0\n";

/// Binds `addr` if it is a loopback address.
pub async fn bind_loopback(addr: SocketAddr) -> Result<TcpListener, BindError> {
    if !addr.ip().is_loopback() {
        return Err(BindError {
            what: "admin",
            addr,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the admin server only listens on loopback (127.0.0.1 or ::1)",
            ),
        });
    }
    super::bind("admin", addr).await
}

/// Answers `/`, `/logging` and `/quitquitquit`; `None` for any other path.
pub fn route<B>(ops: &AdminOps, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let post = req.method() == Method::POST;
    Some(match req.uri().path() {
        "/" if req.method() == Method::GET => text(StatusCode::OK, INDEX.into()),
        "/logging" if post => logging(&ops.log, &ops.initial_filter, req.uri().query()),
        "/quitquitquit" if post => {
            if ops.shutdown.request() {
                info!("shutdown requested through /quitquitquit");
            }
            text(StatusCode::OK, "draining\n".into())
        }
        "/logging" | "/quitquitquit" => text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n".into()),
        _ => return None,
    })
}

/// `POST /logging`: no query lists the filter; `level=<filter>` replaces it (a bare level like
/// `debug`, or directives like `access=info,ambit::proxy=debug`); `reset` restores the initial
/// filter. A rejected filter leaves the current one in force and answers 400.
fn logging(log: &LogHandle, initial: &str, query: Option<&str>) -> Response<Full<Bytes>> {
    let mut level = None;
    let mut reset = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "level" => level = Some(percent_decode(v)),
            "reset" => reset = true,
            other => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?}: use level=<filter> or reset\n"),
                );
            }
        }
    }
    let wanted = match (reset, level) {
        (true, _) => Some(initial.to_string()),
        (false, Some(l)) => Some(l),
        (false, None) => None,
    };
    if let Some(filter) = wanted {
        if let Err(e) = log.set_filter(&filter) {
            return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
        info!(filter = %filter, "log filter changed");
    }
    text(
        StatusCode::OK,
        format!("current log level is {}\n", log.current()),
    )
}

/// Decodes `%XX` escapes and `+` (query strings from curl and browsers).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves the admin endpoints of this module until a drain starts. (The `/config_dump`
/// endpoint is served by the same server once it exists; see `admin::serve_admin`.)
pub async fn serve_ops(listener: TcpListener, ops: AdminOps, drain: DrainWatcher) {
    let ops = Arc::new(ops);
    super::serve(listener, drain, move |req| {
        let ops = ops.clone();
        async move {
            route(&ops, &req)
                .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n".into()))
        }
    })
    .await
}
