//! The load generator and its servers: the harness re-runs its own binary inside a pod's network
//! namespace (`ip netns exec <pod> ambit-bench pod ...`), so every socket is created in the pod
//! with no per-connection namespace switch, and the harness process stays out of the measured
//! path. Each client subcommand prints one JSON line with its result on stdout.
//!
//! Protocols (all plain TCP; the node proxies only ever see bytes):
//! - request/response (`rr`): each 4-byte big-endian request names a response size, answered
//!   with that many bytes, on a persistent connection;
//! - one-shot (`conn`): 4-byte length `L`, `L` bytes; the server answers `L` bytes and closes
//!   first, so TIME_WAIT lands on the server side and the client never runs out of ports;
//! - hold: one byte each way, then the connection stays open until the client closes it.
//!
//! Invariants: every client loop is bounded by its duration (plus a per-operation timeout);
//! latency is recorded from each request's *intended* start time (a fixed-rate schedule), so a
//! slow response also delays the ones behind it in the numbers (no coordinated omission);
//! recording allocates nothing per sample (a pre-sized HdrHistogram).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// Per-operation bound: a stuck connection counts as an error, never hangs the run.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest latency the histograms record (ns); slower samples are clamped to it.
const MAX_NS: u64 = 60_000_000_000;
/// Bytes each way per connection in the connection-rate scenario.
pub const CONN_BYTES: u32 = 1024;

/// What a latency run returns: the histogram as (value ns, count) pairs, so runs merge exactly.
#[derive(Debug, Serialize, Deserialize)]
pub struct LatencyOut {
    pub errors: u64,
    pub buckets: Vec<(u64, u64)>,
}

/// What a connection-rate run returns.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnRateOut {
    pub ok: u64,
    pub errors: u64,
    pub secs: f64,
}

/// An empty latency histogram (ns, 3 significant figures).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3)
        .expect("constant bounds (1 ns..60 s, 3 figures) are valid")
}

/// Raises the soft open-file limit to the hard one (10,000 idle connections need it).
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// Runs the three servers on `ports` (rr, conn, hold) until killed; prints `ready` once bound.
pub async fn serve(rr: u16, conn: u16, hold: u16) -> Result<()> {
    raise_nofile();
    let bind = |p: u16| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], p)));
    let (l_rr, l_conn, l_hold) = (bind(rr).await?, bind(conn).await?, bind(hold).await?);
    println!("ready");
    let a = tokio::spawn(accept(l_rr, Proto::Rr));
    let b = tokio::spawn(accept(l_conn, Proto::Conn));
    let c = tokio::spawn(accept(l_hold, Proto::Hold));
    let _ = tokio::join!(a, b, c);
    Ok(())
}

#[derive(Clone, Copy)]
enum Proto {
    Rr,
    Conn,
    Hold,
}

async fn accept(listener: TcpListener, proto: Proto) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let _ = match proto {
                Proto::Rr => serve_rr(s).await,
                Proto::Conn => serve_conn(s).await,
                Proto::Hold => serve_hold(s).await,
            };
        });
    }
}

async fn serve_rr(mut s: TcpStream) -> std::io::Result<()> {
    let buf = vec![0x5au8; 64 * 1024];
    loop {
        let mut left = s.read_u32().await? as usize;
        while left > 0 {
            let n = left.min(buf.len());
            s.write_all(&buf[..n]).await?;
            left -= n;
        }
    }
}

async fn serve_conn(mut s: TcpStream) -> std::io::Result<()> {
    let len = s.read_u32().await? as usize;
    let mut buf = vec![0u8; len.min(1 << 20)];
    s.read_exact(&mut buf).await?;
    s.write_all(&buf).await?;
    s.shutdown().await
}

async fn serve_hold(mut s: TcpStream) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    s.write_all(&b).await?;
    // Wait for the client to go; anything it sends is discarded.
    let mut sink = [0u8; 64];
    while s.read(&mut sink).await? > 0 {}
    Ok(())
}

/// Fixed-rate request/response on one persistent connection (`newconn` false), or one fresh
/// connection per request (`newconn` true: connect, request, response, close).
pub async fn latency(
    addr: SocketAddr,
    size: u32,
    rate: u32,
    secs: f64,
    newconn: bool,
) -> Result<LatencyOut> {
    let mut hist = histogram();
    let mut errors = 0u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = (secs * f64::from(rate)).ceil() as u64;
    let mut buf = vec![0u8; size as usize];
    let mut persistent = if newconn {
        None
    } else {
        let s = timeout(OP_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        Some(s)
    };
    let start = Instant::now();
    for i in 0..total {
        let intended = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(intended).await;
        let ok = match persistent.as_mut() {
            Some(s) => timeout(OP_TIMEOUT, rr_once(s, &mut buf)).await,
            None => timeout(OP_TIMEOUT, conn_once(addr, &mut buf)).await,
        };
        match ok {
            Ok(Ok(())) => {
                let ns = u64::try_from(intended.elapsed().as_nanos()).unwrap_or(MAX_NS);
                hist.saturating_record(ns.clamp(1, MAX_NS));
            }
            _ => {
                errors += 1;
                if !newconn {
                    // The connection is in an unknown state: later samples would be garbage.
                    break;
                }
            }
        }
    }
    let buckets = hist
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    Ok(LatencyOut { errors, buckets })
}

async fn rr_once(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    s.write_all(&(buf.len() as u32).to_be_bytes()).await?;
    s.read_exact(buf).await?;
    Ok(())
}

/// One one-shot exchange: `buf.len()` bytes each way; the server closes first.
async fn conn_once(addr: SocketAddr, buf: &mut [u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut msg = Vec::with_capacity(4 + buf.len());
    msg.extend_from_slice(&(buf.len() as u32).to_be_bytes());
    msg.extend_from_slice(buf);
    s.write_all(&msg).await?;
    s.read_exact(buf).await?;
    let mut eof = [0u8; 1];
    match s.read(&mut eof).await? {
        0 => Ok(()),
        _ => Err(std::io::Error::other("server sent more than asked")),
    }
}

/// As many one-shot connections (`CONN_BYTES` each way) as `workers` concurrent loops sustain
/// for `secs`.
pub async fn connrate(addr: SocketAddr, secs: f64, workers: u32) -> Result<ConnRateOut> {
    raise_nofile();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        set.spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            let mut buf = vec![0x33u8; CONN_BYTES as usize];
            while Instant::now() < deadline {
                match timeout(OP_TIMEOUT, conn_once(addr, &mut buf)).await {
                    Ok(Ok(())) => ok += 1,
                    _ => {
                        errors += 1;
                        // Do not hammer a refusing peer at full speed.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (ok, errors)
        });
    }
    let (mut ok, mut errors) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (o, e) = r.unwrap_or((0, 1));
        ok += o;
        errors += e;
    }
    Ok(ConnRateOut {
        ok,
        errors,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Opens `count` connections to a hold server (one byte each way, so each is established end to
/// end), prints `held <ok> <errors>`, then keeps them open until stdin closes.
pub async fn hold(addr: SocketAddr, count: u32) -> Result<()> {
    raise_nofile();
    let mut conns = Vec::with_capacity(count as usize);
    let mut errors = 0u64;
    // Open in batches: enough concurrency to be quick, not so much that SYN queues overflow.
    let batch = 200u32;
    let mut opened = 0;
    while opened < count {
        let n = batch.min(count - opened);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            set.spawn(async move {
                timeout(OP_TIMEOUT, async {
                    let mut s = TcpStream::connect(addr).await?;
                    s.write_all(&[7]).await?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await?;
                    Ok::<_, std::io::Error>(s)
                })
                .await
            });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(Ok(s))) => conns.push(s),
                _ => errors += 1,
            }
        }
        opened += n;
    }
    println!("held {} {errors}", conns.len());
    // A blocking read on its own thread (tokio's stdin needs a feature the workspace leaves off).
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut b = [0u8; 16];
        while std::io::stdin().read(&mut b).unwrap_or(0) > 0 {}
    })
    .await;
    drop(conns);
    Ok(())
}
