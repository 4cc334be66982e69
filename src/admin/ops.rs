//! The operating endpoints of the admin server (localhost:15000): the index, `/logging` (read
//! or change the log filter at run time) and `/quitquitquit` (drain, then exit 0).
//!
//! Invariant: the admin server listens on loopback only (`admin::bind_admin` refuses anything
//! else), since it can stop the process and change what it logs.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tracing::info;

use super::text;
use crate::lifecycle::ShutdownHandle;
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
  /quitquitquit     POST: drain (readiness false, stop accepting, deadline); answers once drained, then exit 0\n";

/// Answers `/`, `/logging` and `/quitquitquit`; `None` for any other path. `/quitquitquit`
/// answers only once the drain it started is over (the admin server outlives that drain).
pub async fn route<B>(ops: &AdminOps, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let post = req.method() == Method::POST;
    Some(match req.uri().path() {
        "/" if req.method() == Method::GET => text(StatusCode::OK, INDEX.into()),
        "/logging" if post => logging(&ops.log, &ops.initial_filter, req.uri().query()),
        "/quitquitquit" if post => {
            if ops.shutdown.request() {
                info!("shutdown requested through /quitquitquit");
            }
            ops.shutdown.drained().await;
            text(StatusCode::OK, "drained\n".into())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Vec<u8> {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req =
            format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }

    #[tokio::test]
    async fn logging_and_quitquitquit() {
        let (_sub, log) =
            crate::telemetry::subscriber(crate::telemetry::LogFormat::Plain, "info", std::io::sink)
                .unwrap();
        let (shutdown, requested) = crate::lifecycle::shutdown_channel();
        let ops = AdminOps {
            log: log.clone(),
            initial_filter: "info".into(),
            shutdown,
        };
        let (_trigger, drain) = crate::lifecycle::drain_channel();
        let l = super::super::bind_admin("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        let sources = crate::admin::DumpSources {
            state: crate::state::StateWriter::new().1,
            certificates: None,
            config: serde_json::Value::Null,
            static_config: None,
        };
        tokio::spawn(super::super::serve_admin(l, sources, ops, drain));
        let s = |b: Vec<u8>| String::from_utf8(b).unwrap();

        let resp = s(request(addr, "GET", "/", "").await);
        assert!(
            resp.starts_with("HTTP/1.1 200") && resp.contains("/quitquitquit"),
            "{resp}"
        );
        let resp = s(request(addr, "POST", "/logging?level=access%3Ddebug,warn", "").await);
        assert!(
            resp.ends_with("current log level is access=debug,warn\n"),
            "{resp}"
        );
        assert_eq!(log.current(), "access=debug,warn");
        let resp = s(request(addr, "POST", "/logging?level=%3D%5B", "").await);
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        assert_eq!(log.current(), "access=debug,warn");
        let resp = s(request(addr, "POST", "/logging?reset", "").await);
        assert!(resp.ends_with("current log level is info\n"), "{resp}");
        let resp = s(request(addr, "GET", "/quitquitquit", "").await);
        assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
        // The answer waits for the end of the drain the request started.
        let quit = tokio::spawn(request(addr, "POST", "/quitquitquit", ""));
        tokio::time::timeout(Duration::from_secs(5), requested.wait())
            .await
            .unwrap();
        assert!(!quit.is_finished());
        requested.drained();
        let resp = s(tokio::time::timeout(Duration::from_secs(5), quit)
            .await
            .unwrap()
            .unwrap());
        assert!(
            resp.starts_with("HTTP/1.1 200") && resp.ends_with("drained\n"),
            "{resp}"
        );
    }

    #[tokio::test]
    async fn admin_refuses_non_loopback() {
        let err = super::super::bind_admin("0.0.0.0:0".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.source.kind(), std::io::ErrorKind::InvalidInput);
        assert!(
            super::super::bind_admin("[::1]:0".parse().unwrap())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn metrics_negotiate_and_gzip() {
        let (_trigger, drain) = crate::lifecycle::drain_channel();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let l = super::super::bind("metrics", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(super::super::serve_metrics(l, metrics, drain));
        let resp = request(
            addr,
            "GET",
            "/metrics",
            "accept: application/openmetrics-text; version=1.0.0\r\naccept-encoding: gzip\r\n",
        )
        .await;
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&resp[..split]).to_lowercase();
        assert!(
            head.contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(head.contains("content-encoding: gzip"), "{head}");
        let mut body = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::GzDecoder::new(&resp[split + 4..]),
            &mut body,
        )
        .unwrap();
        assert!(body.contains("istio_build{component=\"ztunnel\""), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
