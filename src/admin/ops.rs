//! The operating endpoints of the admin server (localhost:15000): the index, `/logging` (read
//! or change the log filter at run time) and `/quitquitquit` (drain, then exit 0).
//!
//! Invariant: the admin server listens on loopback only (`admin::bind_admin` refuses anything
//! else), since it can stop the process and change what it logs.

use std::collections::HashMap;
use std::str::FromStr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tracing::info;
use tracing_subscriber::filter::Targets;

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
  /                            this list\n\
  /config_dump                 workloads, services, policies, certificates, pods (shared mode), version, config (JSON)\n\
  /logging                     POST: list the log filter; ?level=<level> or ?level=<target>=<level>,... adds to it; ?reset restores the initial one\n\
  /quitquitquit                POST: drain (readiness false, stop accepting, deadline); answers once drained, then exit 0\n\
  /debug/explain               ?src=<workload>&dst=<destination>:<port>: the decision the data path would make, step by step (JSON)\n\
  /debug/connections           live connections of every pod proxy, with age and bytes (JSON)\n\
  /debug/pprof/profile         CPU profile (pprof); ?seconds=1-300 (10), ?frequency=1-1000 Hz (100)\n\
  /debug/pprof/heap            heap profile (gzipped pprof) of what was allocated while heap profiling was active\n\
  /debug/pprof/heap/profiling  ?activate=true|false turns heap profiling on or off; without, tells whether it is on\n";

/// Answers `/`, `/logging` and `/quitquitquit`; `None` for any other path. `/quitquitquit`
/// answers only once the drain it started is over (the admin server outlives that drain).
pub async fn route<B>(ops: &AdminOps, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let post = req.method() == Method::POST;
    Some(match req.uri().path() {
        "/" if req.method() == Method::GET => text(StatusCode::OK, INDEX.into()),
        "/logging" if post => logging(&ops.log, &ops.initial_filter, req.uri().query()),
        "/logging" => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Invalid HTTP method\n{LOGGING_USAGE}"),
        ),
        "/quitquitquit" if post => {
            if ops.shutdown.request() {
                info!("shutdown requested through /quitquitquit");
            }
            ops.shutdown.drained().await;
            // ztunnel's words: scripts wait for this answer.
            text(StatusCode::OK, "shutdown now\n".into())
        }
        "/quitquitquit" => text(StatusCode::METHOD_NOT_ALLOWED, String::new()),
        _ => return None,
    })
}

/// How `/logging` is used; follows every error and the answer to any method but POST.
const LOGGING_USAGE: &str = "\
usage: POST /logging                          list the log filter
       POST /logging?level=<level>            add a default level (error, warn, info, debug, trace, off)
       POST /logging?level=<target>=<level>,...  add levels for targets, e.g. ambit::proxy=debug
       POST /logging?reset[&level=...]        back to the filter the process started with (plus level)
";

/// `POST /logging`, as ztunnel answers it: no `level` (or an empty one) and no `reset` lists
/// the filter and changes nothing; `level=<directives>` adds the directives to the filter in
/// force (a later directive for the same target replaces the earlier one); `reset` starts
/// again from the initial filter (plus `level`, if any). Every answer that succeeds is the
/// listing. Each comma-separated directive must be a bare lowercase level or `target=level`;
/// anything else is refused with 400 and leaves the filter as it was. Unknown parameters are
/// ignored.
fn logging(log: &LogHandle, initial: &str, query: Option<&str>) -> Response<Full<Bytes>> {
    let params = query_params(query);
    let level = params.get("level").cloned().unwrap_or_default();
    let reset = params.contains_key("reset");
    if !reset && level.is_empty() {
        return list_filter(log);
    }
    if !level.is_empty() && !valid_levels(&level) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("Invalid level provided: {level}\n{LOGGING_USAGE}"),
        );
    }
    let base = if reset {
        initial.to_string()
    } else {
        log.current()
    };
    let filter = merge_filters(&base, &level);
    if let Err(e) = log.set_filter(&filter) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("Failed to set new level: {e}\n{LOGGING_USAGE}"),
        );
    }
    info!(filter = %filter, "log filter changed");
    list_filter(log)
}

fn list_filter(log: &LogHandle) -> Response<Full<Bytes>> {
    text(
        StatusCode::OK,
        format!("current log level is {}\n", normalized(&log.current())),
    )
}

/// Each comma-separated directive is a bare level or a `target=level` that parses; a bare
/// target (which would mean "everything at trace") is refused.
fn valid_levels(level: &str) -> bool {
    level.split(',').all(|d| match d {
        "off" | "error" | "warn" | "info" | "debug" | "trace" => true,
        d if d.contains('=') => Targets::from_str(d).is_ok(),
        _ => false,
    })
}

/// `base` with `extra` appended, written the way the tracing filter prints it: one directive
/// per target, the most specific first.
fn merge_filters(base: &str, extra: &str) -> String {
    let joined = match (base.is_empty(), extra.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => extra.to_string(),
        (false, false) => format!("{base},{extra}"),
    };
    normalized(&joined)
}

/// A filter in its canonical form; one that is not a plain target list (span or field
/// filters) stays as written.
fn normalized(filter: &str) -> String {
    match Targets::from_str(filter) {
        Ok(t) => t.to_string(),
        Err(_) => filter.to_string(),
    }
}

/// A query string's parameters (`application/x-www-form-urlencoded`: `%XX` escapes and `+`);
/// for a repeated name the last value wins, a name without `=` has the empty value.
pub(super) fn query_params(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn query_params_decode_escapes_and_plus_last_value_wins() {
        let p = query_params(Some("level=debug&path=%2Fa+b%zz&flag&level=info"));
        assert_eq!(p.get("level").map(String::as_str), Some("info"));
        assert_eq!(p.get("path").map(String::as_str), Some("/a b%zz"));
        assert_eq!(p.get("flag").map(String::as_str), Some(""));
        assert_eq!(p.len(), 3);
        assert!(query_params(None).is_empty());
    }

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
            workload_state: None,
            istio_version: "unknown".into(),
            debug: None,
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
            resp.starts_with("HTTP/1.1 200") && resp.ends_with("shutdown now\n"),
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
