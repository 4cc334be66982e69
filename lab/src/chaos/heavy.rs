//! The cases with settings or measurements of their own: the CA down across a certificate
//! renewal, connections that never finish a handshake, many concurrent connections (memory
//! per connection), and the soak (memory over time).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::cases::{Case, Scale};
use super::instruments::rss_kib;
use super::scene::{Expect, RECOVER_WITHIN, STEP, Scene, judge, wait_recovered};
use super::{ChaosOptions, Row};
use crate::LabError;
use crate::traffic::bulk_send;

/// Certificates of 60 s are renewed at about half-life; the control plane (which is also the
/// CA) is down from 10 s to 50 s, so the renewal falls in the outage, and traffic runs until
/// 80 s, past the first certificate's expiry: it only works if the renewal happened once the
/// CA came back.
pub(super) async fn ca_down(opts: &ChaosOptions) -> Result<Row, LabError> {
    let case = Case::CaDownAcrossRotation;
    let scene = Scene::start(opts, &[("SECRET_TTL", "60s")]).await?;
    let begun = Instant::now();
    let watchers = scene.watch()?;
    let mut problems = Vec::new();
    tokio::time::sleep_until(begun + Duration::from_secs(10)).await;
    let start = Instant::now();
    if !scene.lab.stop_control_plane().await {
        problems.push("no control plane to stop".into());
    }
    tokio::time::sleep_until(begun + Duration::from_secs(50)).await;
    scene.lab.restart_control_plane()?;
    tokio::time::sleep_until(begun + Duration::from_secs(80)).await;
    if !wait_recovered(&scene).await {
        problems.push(format!("no new connection within {RECOVER_WITHIN:?}"));
    }
    let seen = watchers.finish().await;
    let expect = Expect::NOTHING_FAILS;
    Ok(judge(
        case,
        opts.scale,
        &seen,
        start,
        expect,
        problems,
        Vec::new(),
    ))
}

/// 2,000 connections from node-1 (not a pod: no capture there) straight to server's 15008,
/// held open; every one must be closed by the proxy (the per-source cap and the handshake
/// deadline), while the mesh keeps serving and memory comes back.
pub(super) async fn silent(opts: &ChaosOptions) -> Result<Row, LabError> {
    const SILENT: usize = 2_000;
    /// ambit's default deadline is 10 s; a proxy without one keeps them open.
    const CLOSE_WITHIN: Duration = Duration::from_secs(20);
    let case = Case::SilentHandshakes;
    let scene = Scene::start(opts, &[]).await?;
    let nodes = scene.proxy_nodes()?;
    let baseline = rss_kib(&nodes);
    let watchers = scene.watch()?;
    let start = Instant::now();
    let hbone = SocketAddr::new(scene.echo.ip(), 15008);
    let node1 = scene.node("node-1")?;
    let partial = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut held = Vec::with_capacity(SILENT);
    let mut problems = Vec::new();
    for i in 0..SILENT {
        match node1.connect(hbone, STEP).await {
            Ok(mut s) => {
                if i % 2 == 1 {
                    let _ = s.write_all(&partial).await;
                }
                held.push(s);
            }
            Err(e) => {
                problems.push(format!("connection {i} to 15008 not even accepted: {e}"));
                break;
            }
        }
    }
    let opened = Instant::now();
    let during = rss_kib(&nodes);
    let mut still_open = 0;
    let mut last_close = Duration::ZERO;
    for s in held.iter_mut() {
        let mut buf = [0u8; 64];
        let left = CLOSE_WITHIN.saturating_sub(opened.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => last_close = opened.elapsed(),
            _ => still_open += 1,
        }
    }
    drop(held);
    if still_open > 0 {
        problems.push(format!(
            "{still_open} of {SILENT} still open {CLOSE_WITHIN:?} after the last connect"
        ));
    }
    // The allocator hands freed pages back to the system within ~10 s (jemalloc's dirty-page
    // decay): the full run waits for that before reading memory again.
    let settle = if opts.scale == Scale::Fast { 1 } else { 15 };
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let after = rss_kib(&nodes);
    let seen = watchers.finish().await;
    let closed = if still_open == 0 {
        format!(
            "all closed within {:.1} s of the last connect",
            last_close.as_secs_f64()
        )
    } else {
        format!("{} of {SILENT} closed", SILENT - still_open)
    };
    let observed = vec![format!(
        "{closed}; proxies' memory {:.1} → {:.1} → {:.1} MiB (before, holding, {settle} s after)",
        baseline as f64 / 1024.0,
        during as f64 / 1024.0,
        after as f64 / 1024.0
    )];
    let expect = Expect::NOTHING_FAILS;
    Ok(judge(
        case, opts.scale, &seen, start, expect, problems, observed,
    ))
}

/// Many short connections, 50 at a time: all must echo, and afterwards the proxies' open
/// descriptors must be back where they were (nothing leaks per connection).
pub(super) async fn churn(opts: &ChaosOptions) -> Result<Row, LabError> {
    let case = Case::Churn;
    let n: usize = if opts.scale == Scale::Fast {
        2_000
    } else {
        20_000
    };
    let scene = Scene::start(opts, &[]).await?;
    let server_proxy = scene
        .lab
        .proxy_for("server")
        .map(|p| p.pid())
        .ok_or_else(|| LabError::Usage("no proxy serves the server pod".into()))?;
    let fds_before = open_fds(server_proxy);
    let watchers = scene.watch()?;
    let start = Instant::now();
    let client = scene.ns("client")?.handle();
    let echo = scene.echo;
    let mut failed = 0usize;
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.handle();
        batch.spawn(async move {
            crate::traffic::echo(&client, echo, b"churn\n", STEP)
                .await
                .is_ok_and(|b| b == b"churn\n")
        });
        if batch.len() >= 50 || i + 1 == n {
            while let Some(ok) = batch.join_next().await {
                if !matches!(ok, Ok(true)) {
                    failed += 1;
                }
            }
        }
    }
    let took = start.elapsed();
    let seen = watchers.finish().await;
    // The long flows and probes have ended too: the proxy holds only its pooled connections.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fds_after = open_fds(server_proxy);
    let mut problems = Vec::new();
    if failed > 0 {
        problems.push(format!("{failed} of {n} short connections failed"));
    }
    // A few descriptors may differ (a pooled connection opened or closed); one per connection
    // would be thousands.
    if fds_after > fds_before + 16 {
        problems.push(format!(
            "server proxy holds {fds_after} descriptors after, {fds_before} before"
        ));
    }
    let observed = vec![format!(
        "{} of {n} echoed in {:.1} s ({:.0}/s); server proxy descriptors {fds_before} before, {fds_after} after",
        n - failed,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    )];
    let expect = Expect::NOTHING_FAILS;
    Ok(judge(
        case, opts.scale, &seen, start, expect, problems, observed,
    ))
}

/// Open descriptors of a process (0 if it is gone).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Opens `n` tunneled connections client → server at once, echoes once on each, and reports
/// the proxies' memory per connection while they are all open.
pub(super) async fn many(opts: &ChaosOptions) -> Result<Row, LabError> {
    let case = Case::ManyConnections;
    let n = if opts.scale == Scale::Fast {
        2_000
    } else {
        10_000
    };
    raise_own_nofile(n as u64 + 1_000)?;
    let scene = Scene::start(opts, &[]).await?;
    // The echo ends in a process of their own: this one holds the client ends, and one
    // process's descriptor limit does not fit both at 10,000.
    let echo = SocketAddr::new(scene.echo.ip(), BIG_ECHO_PORT);
    let server_ns = scene.ns("server")?;
    let spec = crate::ProcessSpec::new("chaos-echo", "python3")
        .arg("-c")
        .arg(PY_ECHO);
    let _echo_proc = crate::Process::spawn(Some(server_ns), &spec, scene.lab.run_dir())?;
    wait_listening(server_ns, SocketAddr::new(scene.echo.ip(), BIG_ECHO_PORT)).await?;
    let nodes = scene.proxy_nodes()?;
    let watchers = scene.watch()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(&nodes);
    let start = Instant::now();
    let client = scene.ns("client")?;
    let mut problems = Vec::new();
    let mut open = Vec::with_capacity(n);
    for i in 0..n {
        match client.connect(echo, STEP).await {
            Ok(s) => open.push(s),
            Err(e) => {
                problems.push(format!("connection {i}: {e}"));
                break;
            }
        }
    }
    let mut echoed = 0;
    for s in open.iter_mut() {
        let ok = async {
            s.write_all(b"x\n").await?;
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await?;
            Ok::<_, std::io::Error>(&b == b"x\n")
        };
        if matches!(tokio::time::timeout(STEP, ok).await, Ok(Ok(true))) {
            echoed += 1;
        }
    }
    if echoed < n {
        problems.push(format!("{} of {n} connections did not echo", n - echoed));
    }
    // Idle now: let freed set-up buffers settle before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let holding = rss_kib(&nodes);
    let opened_in = start.elapsed();
    drop(open);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = watchers.finish().await;
    let per_conn = holding.saturating_sub(before) as f64 * 1024.0 / n as f64;
    let observed = vec![format!(
        "{echoed} of {n} echoed, opened in {:.1} s; proxies' memory {:.1} → {:.1} MiB: {:.1} KiB per connection (both proxies)",
        opened_in.as_secs_f64(),
        before as f64 / 1024.0,
        holding as f64 / 1024.0,
        per_conn / 1024.0
    )];
    let expect = Expect::NOTHING_FAILS;
    Ok(judge(
        case, opts.scale, &seen, start, expect, problems, observed,
    ))
}

/// Mixed traffic for a minute (fast) or an hour: long flows, 20 new connections a second, a
/// 10 MB bulk transfer every 10 s. Memory must stay flat: the last quarter's peak within 20%
/// (plus 8 MiB of allocator slack) of the first quarter's.
pub(super) async fn soak(opts: &ChaosOptions) -> Result<Row, LabError> {
    let case = Case::Soak;
    let total = if opts.scale == Scale::Fast {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(3600)
    };
    let scene = Scene::start(opts, &[]).await?;
    let nodes = scene.proxy_nodes()?;
    let watchers = scene.watch()?;
    let start = Instant::now();
    let client = scene.ns("client")?;
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut problems = Vec::new();
    let mut short_failed = 0u64;
    let mut short_total = 0u64;
    let mut bulk_bytes = 0u64;
    let mut tick = 0u64;
    while start.elapsed() < total {
        let at = Instant::now();
        for _ in 0..20 {
            short_total += 1;
            let ok = crate::traffic::echo(client, scene.echo, b"soak\n", Duration::from_secs(5))
                .await
                .is_ok_and(|b| b == b"soak\n");
            if !ok {
                short_failed += 1;
            }
        }
        if tick.is_multiple_of(10) {
            match bulk_send(client, scene.sink, 10_000_000, STEP).await {
                Ok(b) if b.reply.sha256 == b.sha256 => bulk_bytes += b.sent,
                Ok(_) => problems.push("a bulk transfer arrived damaged".to_string()),
                Err(e) => problems.push(format!("bulk transfer: {e}")),
            }
            samples.push((start.elapsed(), rss_kib(&nodes)));
        }
        tick += 1;
        tokio::time::sleep_until(at + Duration::from_secs(1)).await;
    }
    let seen = watchers.finish().await;
    if short_failed > 0 {
        problems.push(format!(
            "{short_failed} of {short_total} short connections failed"
        ));
    }
    let quarter = samples.len() / 4;
    let peak = |s: &[(Duration, u64)]| s.iter().map(|(_, r)| *r).max().unwrap_or(0);
    let (first, last) = (
        peak(&samples[..quarter.max(1)]),
        peak(&samples[samples.len() - quarter.max(1)..]),
    );
    if last as f64 > first as f64 * 1.2 + 8192.0 {
        problems.push(format!(
            "memory grew: first quarter's peak {:.1} MiB, last quarter's {:.1} MiB",
            first as f64 / 1024.0,
            last as f64 / 1024.0
        ));
    }
    let observed = vec![format!(
        "{short_total} short connections, {:.0} MB in bulk; proxies' memory peak {:.1} MiB in the first quarter, {:.1} MiB in the last",
        bulk_bytes as f64 / 1e6,
        first as f64 / 1024.0,
        last as f64 / 1024.0
    )];
    let expect = Expect::NOTHING_FAILS;
    Ok(judge(
        case, opts.scale, &seen, start, expect, problems, observed,
    ))
}

/// This process holds one end of every connection: raise its soft descriptor limit to the
/// hard one, which must allow `at_least`.
fn raise_own_nofile(at_least: u64) -> Result<(), LabError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let err = |e: nix::Error| LabError::Usage(format!("RLIMIT_NOFILE: {e}"));
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(err)?;
    if hard < at_least {
        return Err(LabError::Usage(format!(
            "this case needs {at_least} open files; the hard limit is {hard} (ulimit -Hn)"
        )));
    }
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(err)?;
    }
    Ok(())
}

/// The port of the separate echo process of `many-connections`.
const BIG_ECHO_PORT: u16 = 8082;

/// An asyncio echo server on [`BIG_ECHO_PORT`]: a process of its own for 10,000 connections.
const PY_ECHO: &str = "
import asyncio
async def echo(r, w):
    try:
        while True:
            d = await r.read(65536)
            if not d:
                break
            w.write(d)
            await w.drain()
    except Exception:
        pass
    w.close()
async def main():
    s = await asyncio.start_server(echo, '0.0.0.0', 8082, backlog=4096)
    async with s:
        await s.serve_forever()
asyncio.run(main())
";

/// Waits (bounded) until something accepts on `addr` inside `ns`.
async fn wait_listening(ns: &crate::Netns, addr: SocketAddr) -> Result<(), LabError> {
    for _ in 0..100 {
        if ns.connect(addr, Duration::from_secs(1)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(LabError::Usage(format!("nothing listens on {addr}")))
}
