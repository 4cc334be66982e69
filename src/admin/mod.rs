//! The operator-facing HTTP servers: readiness (15021), metrics (15020) and admin (15000,
//! loopback only: `/config_dump` here, the operating endpoints `/`, `/logging` and
//! `/quitquitquit` in [`ops`]).
//!
//! Each is a small HTTP/1.1 server (hyper) whose handler is a pure function of shared state,
//! so a slow scrape never touches the data path's locks.

mod config_dump;
mod debug;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::debug;

use crate::lifecycle::{AcceptBackoff, DrainWatcher, Readiness};
use crate::metrics::Metrics;

pub mod ops;
mod pprof;
mod scrape;

pub use config_dump::{DumpSources, StaticConfig, StaticRecords, config_dump};
pub use debug::DebugSources;
pub use ops::AdminOps;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[error("bind {what} server on {addr}: {source}")]
pub struct BindError {
    pub what: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds the admin listener; refuses any address that is not loopback, since the admin port
/// reveals the whole configuration.
pub async fn bind_admin(addr: SocketAddr) -> Result<TcpListener, BindError> {
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
    bind("admin", addr).await
}

/// `GET /` (the endpoint list), `POST /logging`, `POST /quitquitquit` (see [`ops`]),
/// `/config_dump` (JSON) and the profiles ([`pprof`]). `drain` must outlive the proxies' drain: `/quitquitquit` answers
/// once that drain is over.
pub async fn serve_admin(
    listener: TcpListener,
    sources: DumpSources,
    ops: AdminOps,
    drain: DrainWatcher,
) {
    let shared = Arc::new((sources, ops));
    serve("admin", listener, drain, move |req| {
        let shared = shared.clone();
        async move {
            let (sources, ops) = (&shared.0, &shared.1);
            if let Some(resp) = ops::route(ops, &req).await {
                return resp;
            }
            if let Some(resp) = debug::route(sources, req.uri().path(), req.uri().query()) {
                return resp;
            }
            // Any method, as ztunnel.
            match req.uri().path() {
                "/debug/pprof/profile" => pprof::cpu_profile(req.uri().query()).await,
                "/debug/pprof/heap" => pprof::heap_profile().await,
                "/debug/pprof/heap/profiling" => pprof::heap_toggle(req.uri().query()).await,
                "/config_dump" => {
                    let body = serde_json::to_string_pretty(&config_dump(sources))
                        .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
                    let mut resp = text(StatusCode::OK, body);
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    resp
                }
                // An empty 404, as ztunnel.
                _ => text(StatusCode::NOT_FOUND, String::new()),
            }
        }
    })
    .await
}

/// Binds a server's listener, naming it in the error.
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { what, addr, source })
}

/// `GET /healthz/ready`: `200 ready`, or `500` (as ztunnel) naming what is still pending (`draining` once a
/// drain started: the caller blocks readiness then). `drain` only ends the server, so the
/// caller passes a watcher that outlives the proxy's drain, keeping readiness answerable (and
/// false) while connections finish.
pub async fn serve_readiness(listener: TcpListener, readiness: Readiness, drain: DrainWatcher) {
    serve("readiness", listener, drain, move |req| {
        let readiness = readiness.clone();
        async move {
            if req.method() != Method::GET || req.uri().path() != "/healthz/ready" {
                return text(StatusCode::NOT_FOUND, "not found\n".into());
            }
            let pending = readiness.pending();
            if pending.is_empty() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("not ready, pending: {}\n", pending.join(", ")),
                )
            }
        }
    })
    .await
}

/// `GET /metrics` and `GET /stats/prometheus`: the Prometheus text exposition.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>, drain: DrainWatcher) {
    serve("stats", listener, drain, move |req| {
        let metrics = metrics.clone();
        async move {
            let path = req.uri().path();
            if req.method() != Method::GET || (path != "/metrics" && path != "/stats/prometheus") {
                return text(StatusCode::NOT_FOUND, "not found\n".into());
            }
            scrape::respond(&metrics, req.headers())
        }
    })
    .await
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

/// How long a request's head may take to arrive, and how long a keep-alive connection may sit
/// idle (ztunnel closes a trickling client after about as long).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// The read buffer, the largest request head accepted (hyper's minimum): these servers take
/// short GETs and POSTs with a query only.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Serves HTTP/1.1 until a drain starts; connections then finish their request in flight.
async fn serve<H, F>(what: &'static str, listener: TcpListener, drain: DrainWatcher, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = drain.draining() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff.succeeded();
                a
            }
            // Out of descriptors: pause instead of spinning (see `lifecycle::accept_backoff`).
            Err(e) => {
                let pause = backoff.on_error(what, &e);
                tokio::select! {
                    _ = drain.draining() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        let handler = handler.clone();
        // Each connection holds a watcher, so the drain waits for answers in flight (a
        // `/quitquitquit` reply is written before the process goes), and forced ends it.
        let conn_drain = drain.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let h = handler.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            // A request's head must arrive within HEADER_READ_TIMEOUT, counted from the
            // connection's start or the previous response (so an idle keep-alive connection is
            // closed too): a client trickling a header line a second cannot hold a slot.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = conn_drain.draining() => {
                    // Finish the request in flight, then close; idle keep-alives close now.
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = conn_drain.forced() => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn readiness_reports_pending_then_ready() {
        let (_trigger, drain) = crate::lifecycle::drain_channel();
        let readiness = Readiness::new();
        let block = readiness.block("certificates");
        let l = bind("readiness", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_readiness(l, readiness.clone(), drain));
        let resp = get(addr, "/healthz/ready").await;
        assert!(resp.starts_with("HTTP/1.1 500"), "{resp}");
        assert!(
            resp.ends_with("not ready, pending: certificates\n"),
            "{resp}"
        );
        drop(block);
        let resp = get(addr, "/healthz/ready").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(resp.ends_with("ready\n"), "{resp}");
    }

    #[tokio::test]
    async fn metrics_are_served_on_both_paths() {
        let (_trigger, drain) = crate::lifecycle::drain_channel();
        let metrics = Arc::new(Metrics::new());
        metrics.proxy.inbound_handshakes.inc();
        let l = bind("metrics", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_metrics(l, metrics, drain));
        for path in ["/metrics", "/stats/prometheus"] {
            let resp = get(addr, path).await;
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
            assert!(
                resp.contains("ambit_hbone_inbound_handshakes_total 1\n"),
                "{resp}"
            );
        }
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    }

    /// Reads until the server closes the connection, within `limit`; the elapsed time, or
    /// `None` if it was still open at `limit`. Writes `trickle` a byte at a time meanwhile.
    async fn closed_within(addr: SocketAddr, trickle: &[u8], limit: Duration) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = s.split();
        let mut buf = [0u8; 512];
        let mut pending = trickle.iter();
        let closed = async {
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let writer = async {
            for b in pending.by_ref() {
                if w.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            std::future::pending::<()>().await
        };
        tokio::time::timeout(limit, async {
            tokio::select! {
                _ = closed => {}
                _ = writer => {}
            }
        })
        .await
        .ok()
        .map(|_| start.elapsed())
    }

    #[tokio::test]
    async fn slow_and_idle_clients_are_cut_off() {
        let (_trigger, drain) = crate::lifecycle::drain_channel();
        let l = bind("readiness", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_readiness(l, Readiness::new(), drain));
        let limit = Duration::from_secs(15);
        // A header trickled at 4 bytes a second would take ~40 s to finish.
        let slow =
            b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\nuser-agent: slow-loris/1.0\r\nx: y\r\n\r\n";
        let slow = closed_within(addr, slow, limit).await;
        assert!(
            slow.is_some(),
            "a trickling client was still served after {limit:?}"
        );
        // A connection that never sends anything.
        let idle = closed_within(addr, b"", limit).await;
        assert!(
            idle.is_some(),
            "an idle connection was still open after {limit:?}"
        );
        // A client that finishes a request and then idles on the keep-alive connection.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let read_all = tokio::time::timeout(limit, s.read_to_end(&mut got)).await;
        assert!(
            read_all.is_ok(),
            "an idle keep-alive connection was still open after {limit:?}"
        );
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
}
