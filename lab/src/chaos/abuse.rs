//! `h2-abuse`: an authenticated, authorized peer (a certificate of `client` from the mesh CA)
//! misusing HTTP/2 on server's 15008: rapid reset, a CONTINUATION flood, PING and SETTINGS
//! floods it never reads the answers to, and a tunnel it writes into without ever reading.
//! The proxy must stay up, serve everyone else, and keep its memory bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit::core::Identity;
use ambit::tls::WorkloadCertificate;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::cases::Case;
use super::instruments::rss_kib;
use super::scene::{Expect, Scene, judge};
use super::{ChaosOptions, Row};
use crate::{LabError, Netns};

/// How long each attack may run.
const ATTACK: Duration = Duration::from_secs(10);
/// The most a flood writes.
const FLOOD_BYTES: usize = 64 << 20;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(super) async fn h2_abuse(opts: &ChaosOptions) -> Result<Row, LabError> {
    let case = Case::H2Abuse;
    let scene = Scene::start(opts, &[]).await?;
    let node2 = [scene.node("node-2")?.handle()];
    let cfg = client_config(&scene)?;
    let hbone = SocketAddr::new(scene.echo.ip(), 15008);
    let echo = scene.echo.to_string();
    let attacker = scene.node("node-1")?;
    let baseline = rss_kib(&node2);
    let watchers = scene.watch()?;
    let start = Instant::now();
    let mut results = Vec::new();
    let mut peak = baseline;
    for (name, attack) in [
        ("rapid reset", Attack::RapidReset),
        ("CONTINUATION flood", Attack::Continuation),
        ("PING flood", Attack::Ping),
        ("SETTINGS flood", Attack::Settings),
        ("never-reading tunnel", Attack::NeverRead),
    ] {
        let outcome = tokio::time::timeout(
            ATTACK + Duration::from_secs(5),
            attack.run(attacker, hbone, cfg.clone(), &echo),
        )
        .await
        .unwrap_or_else(|_| "still running at the deadline".into());
        peak = peak.max(rss_kib(&node2));
        results.push(format!("{name}: {outcome}"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(&node2);
    let seen = watchers.finish().await;
    let mut problems = Vec::new();
    // Bounded: the attacks together may not grow the proxy by more than 64 MiB, and what they
    // took must mostly come back.
    if peak > baseline + 64 * 1024 {
        problems.push(format!(
            "server proxy grew from {:.1} to {:.1} MiB",
            baseline as f64 / 1024.0,
            peak as f64 / 1024.0
        ));
    }
    if after > baseline + 32 * 1024 {
        problems.push(format!(
            "server proxy still at {:.1} MiB after (from {:.1})",
            after as f64 / 1024.0,
            baseline as f64 / 1024.0
        ));
    }
    let mut observed = results;
    observed.push(format!(
        "server proxy memory {:.1} → peak {:.1} → {:.1} MiB",
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0,
        after as f64 / 1024.0
    ));
    let expect = Expect::NOTHING_FAILS;
    Ok(judge(
        case, opts.scale, &seen, start, expect, problems, observed,
    ))
}

/// A client configuration with a mesh certificate of `client`, expecting `server`'s identity.
fn client_config(scene: &Scene) -> Result<Arc<rustls::ClientConfig>, LabError> {
    let usage = |e: String| LabError::Usage(e);
    let cp = scene
        .lab
        .control_plane()
        .ok_or_else(|| usage("h2-abuse needs the lab's control plane (its CA)".into()))?;
    let t = scene.lab.topology();
    let spiffe = |pod: &str| {
        t.pod(pod)
            .map(|p| p.spiffe())
            .ok_or_else(|| usage(format!("no pod {pod}")))
    };
    let server: Identity = spiffe("server")?
        .parse()
        .map_err(|e| usage(format!("server identity: {e}")))?;
    let keyed = cp.issue_with_key(&spiffe("client")?)?;
    WorkloadCertificate::new(
        vec![CertificateDer::from(keyed.leaf)],
        PrivatePkcs8KeyDer::from(keyed.key),
        vec![CertificateDer::from(keyed.root)],
    )
    .map_err(|e| usage(format!("lab certificate: {e}")))?
    .client_config(std::slice::from_ref(&server))
    .map_err(|e| usage(e.to_string()))
}

#[derive(Clone, Copy)]
enum Attack {
    RapidReset,
    Continuation,
    Ping,
    Settings,
    NeverRead,
}

impl Attack {
    /// Runs the attack on a fresh connection; what happened, in a few words.
    async fn run(
        self,
        ns: &Netns,
        dst: SocketAddr,
        cfg: Arc<rustls::ClientConfig>,
        echo: &str,
    ) -> String {
        let tcp = match ns.connect(dst, ATTACK).await {
            Ok(t) => t,
            Err(e) => return format!("no connection: {e}"),
        };
        let tls = match ambit::tls::connect(cfg, tcp).await {
            Ok(t) => t,
            Err(e) => return format!("TLS refused: {e}"),
        };
        match self {
            Attack::RapidReset => rapid_reset(tls, echo).await,
            Attack::NeverRead => never_read(tls, echo).await,
            Attack::Continuation => {
                // HEADERS for stream 1 without END_HEADERS, then header blocks that never end.
                let mut first = frame(0x1, 0, 1, &literal_header(64));
                first.extend(frame(0x9, 0, 1, &literal_header(16_000)));
                flood(tls, first, frame(0x9, 0, 1, &literal_header(16_000))).await
            }
            Attack::Ping => flood(tls, Vec::new(), frame(0x6, 0, 0, &[7u8; 8])).await,
            Attack::Settings => {
                // SETTINGS_INITIAL_WINDOW_SIZE = 65535, over and over.
                let setting = [0x00, 0x04, 0x00, 0x00, 0xff, 0xff];
                flood(tls, Vec::new(), frame(0x4, 0, 0, &setting)).await
            }
        }
    }
}

/// An HTTP/2 frame: 24-bit length, type, flags, stream id.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal header fields (without indexing, new name) `x-flood: aaaa…`, `size` bytes.
fn literal_header(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    while out.len() + 40 <= size {
        out.push(0x00);
        out.push(7);
        out.extend_from_slice(b"x-flood");
        out.push(28);
        out.extend_from_slice(&[b'a'; 28]);
    }
    out
}

/// Writes the preface, an empty SETTINGS, `first`, then `unit` over and over, never reading,
/// until the server closes, the writes stall for 2 s, or [`FLOOD_BYTES`] are out.
async fn flood<S>(mut s: S, first: Vec<u8>, unit: Vec<u8>) -> String
where
    S: tokio::io::AsyncWrite + tokio::io::AsyncRead + Unpin,
{
    let mut start = PREFACE.to_vec();
    start.extend(frame(0x4, 0, 0, &[]));
    start.extend(first);
    if let Err(e) = s.write_all(&start).await {
        return format!("closed at once: {e}");
    }
    let batch: Vec<u8> = unit.repeat((64 * 1024 / unit.len()).max(1));
    let mut sent = start.len();
    let began = Instant::now();
    while sent < FLOOD_BYTES && began.elapsed() < ATTACK {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(&batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(_)) => return format!("cut by the server after {} KiB", sent / 1024),
            Err(_) => return format!("server stopped reading after {} KiB", sent / 1024),
        }
    }
    format!("{} KiB written, connection still open", sent / 1024)
}

/// Opens CONNECT streams and resets each at once, as fast as the server lets it.
async fn rapid_reset<S>(tls: S, echo: &str) -> String
where
    S: tokio::io::AsyncWrite + tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let (mut send, conn) = match h2::client::handshake(tls).await {
        Ok(x) => x,
        Err(e) => return format!("HTTP/2 refused: {e}"),
    };
    let driver = tokio::spawn(conn);
    let began = Instant::now();
    let mut opened = 0u32;
    let outcome = loop {
        if began.elapsed() > ATTACK || opened >= 100_000 {
            break format!("{opened} streams opened and reset, connection still open");
        }
        let ready = match send.ready().await {
            Ok(r) => r,
            Err(e) => break format!("cut by the server after {opened} streams: {e}"),
        };
        send = ready;
        let req = match http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(echo)
            .body(())
        {
            Ok(r) => r,
            Err(e) => break format!("request: {e}"),
        };
        match send.send_request(req, false) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(e) => break format!("cut by the server after {opened} streams: {e}"),
        }
    };
    driver.abort();
    outcome
}

/// A tunnel to the echo app that is written into and never read: flow control must stop the
/// writer once the windows and buffers on the way are full.
async fn never_read<S>(tls: S, echo: &str) -> String
where
    S: tokio::io::AsyncWrite + tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let (send, conn) = match h2::client::handshake(tls).await {
        Ok(x) => x,
        Err(e) => return format!("HTTP/2 refused: {e}"),
    };
    let driver = tokio::spawn(conn);
    let outcome = async {
        let mut send = send.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(echo)
            .body(())
            .map_err(|e| e.to_string())?;
        let (resp, mut stream) = send.send_request(req, false).map_err(|e| e.to_string())?;
        let resp = resp.await.map_err(|e| e.to_string())?;
        // Hold the body, never read it (its window is never released).
        let _body = resp.into_body();
        let chunk = bytes::Bytes::from(vec![0x5a; 64 * 1024]);
        let mut sent = 0usize;
        let began = Instant::now();
        while began.elapsed() < ATTACK && sent < FLOOD_BYTES {
            stream.reserve_capacity(chunk.len());
            let got = tokio::time::timeout(
                Duration::from_secs(2),
                std::future::poll_fn(|cx| stream.poll_capacity(cx)),
            )
            .await;
            let n = match got {
                Ok(Some(Ok(n))) => n,
                Ok(_) => return Ok(format!("stream ended after {} KiB", sent / 1024)),
                Err(_) => {
                    return Ok(format!(
                        "flow control stopped the writer after {} KiB",
                        sent / 1024
                    ));
                }
            };
            stream
                .send_data(chunk.slice(..n), false)
                .map_err(|e| e.to_string())?;
            sent += n;
        }
        Ok::<_, String>(format!("{} KiB written without reading", sent / 1024))
    };
    let res = outcome.await.unwrap_or_else(|e| format!("failed: {e}"));
    driver.abort();
    res
}
