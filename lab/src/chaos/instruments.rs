//! What watches a chaos case while it runs, each as its own task owning a namespace handle:
//! long echo flows checked byte for byte, a prober that opens a new connection every tick, an
//! intruder whose every connection policy must refuse, and a sampler of the node proxies'
//! resident memory.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Netns;
use crate::traffic::pattern;

/// Bytes per write of a long flow, and the pause between writes (~1.6 MB/s per flow: steady,
/// far from what the machine can do, so faults, not load, decide what happens).
const FLOW_CHUNK: usize = 16 * 1024;
const FLOW_PACE: Duration = Duration::from_millis(10);
/// How long a prober or intruder connection may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How one long flow ended.
#[derive(Debug, Clone, Default)]
pub struct FlowOutcome {
    pub sent: u64,
    /// Bytes that came back equal to what was sent, in order.
    pub verified: u64,
    /// The first error (connect, write, read, a mismatch), if any: the flow did not survive.
    pub error: Option<String>,
}

impl FlowOutcome {
    /// Bytes a flow that survived did not deliver back (0 when it was cut: then `error` says so).
    pub fn lost(&self) -> u64 {
        if self.error.is_some() {
            0
        } else {
            self.sent - self.verified
        }
    }
}

/// A long flow to an echo server: writes a known pattern at a steady pace until stopped, then
/// half-closes and checks that every byte came back.
pub struct LongFlow {
    stop: watch::Sender<bool>,
    task: JoinHandle<FlowOutcome>,
}

impl LongFlow {
    pub fn start(ns: &Netns, dst: SocketAddr) -> LongFlow {
        let (stop, stopped) = watch::channel(false);
        let ns = ns.handle();
        let task = tokio::spawn(async move { run_flow(ns, dst, stopped).await });
        LongFlow { stop, task }
    }

    /// Stops writing and waits (bounded) for the echo of what was sent.
    pub async fn finish(self, within: Duration) -> FlowOutcome {
        let _ = self.stop.send(true);
        match tokio::time::timeout(within, self.task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => FlowOutcome {
                error: Some(format!("flow task: {e}")),
                ..Default::default()
            },
            Err(_) => FlowOutcome {
                error: Some(format!("echo not complete within {within:?}")),
                ..Default::default()
            },
        }
    }
}

async fn run_flow(ns: Netns, dst: SocketAddr, mut stopped: watch::Receiver<bool>) -> FlowOutcome {
    let mut out = FlowOutcome::default();
    let stream = match ns.connect(dst, PROBE_TIMEOUT * 5).await {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("connect: {e}"));
            return out;
        }
    };
    let (mut r, mut w) = stream.into_split();
    let writer = async {
        let mut buf = vec![0u8; FLOW_CHUNK];
        let mut sent = 0u64;
        loop {
            if *stopped.borrow() {
                break;
            }
            pattern(sent, &mut buf);
            if let Err(e) = w.write_all(&buf).await {
                return (sent, Some(format!("write: {e}")));
            }
            sent += FLOW_CHUNK as u64;
            tokio::select! {
                _ = tokio::time::sleep(FLOW_PACE) => {}
                _ = stopped.changed() => {}
            }
        }
        match w.shutdown().await {
            Ok(()) => (sent, None),
            Err(e) => (sent, Some(format!("half-close: {e}"))),
        }
    };
    let reader = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut want = vec![0u8; 64 * 1024];
        let mut verified = 0u64;
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) => return (verified, None),
                Ok(n) => n,
                Err(e) => return (verified, Some(format!("read: {e}"))),
            };
            pattern(verified, &mut want[..n]);
            if buf[..n] != want[..n] {
                return (
                    verified,
                    Some(format!("echoed bytes differ near offset {verified}")),
                );
            }
            verified += n as u64;
        }
    };
    let ((sent, werr), (verified, rerr)) = tokio::join!(writer, reader);
    out.sent = sent;
    out.verified = verified;
    out.error = werr.or(rerr);
    if out.error.is_none() && verified != sent {
        out.error = Some(format!("echo ended after {verified} of {sent} bytes"));
    }
    out
}

/// One probe: when it started and whether the echo came back.
pub type Probe = (Instant, bool);

/// Opens a new connection every `every` and echoes a line on it, until stopped.
pub struct Prober {
    stop: watch::Sender<bool>,
    task: JoinHandle<Vec<Probe>>,
}

impl Prober {
    pub fn start(ns: &Netns, dst: SocketAddr, every: Duration) -> Prober {
        let (stop, mut stopped) = watch::channel(false);
        let ns = ns.handle();
        let task = tokio::spawn(async move {
            let mut probes = Vec::new();
            while !*stopped.borrow() {
                let at = Instant::now();
                let ok = crate::traffic::echo(&ns, dst, b"probe\n", PROBE_TIMEOUT)
                    .await
                    .is_ok_and(|back| back == b"probe\n");
                probes.push((at, ok));
                tokio::select! {
                    _ = tokio::time::sleep_until(at + every) => {}
                    _ = stopped.changed() => {}
                }
            }
            probes
        });
        Prober { stop, task }
    }

    pub async fn finish(self) -> Vec<Probe> {
        let _ = self.stop.send(true);
        match tokio::time::timeout(PROBE_TIMEOUT * 3, self.task).await {
            Ok(Ok(p)) => p,
            _ => Vec::new(),
        }
    }
}

/// Samples the summed resident memory (KiB) of every process in the given namespaces (the
/// node proxies: found anew each time, so a restarted proxy is followed), keeping the peak.
pub struct RssSampler {
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(namespaces: Vec<Netns>, every: Duration) -> RssSampler {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while !*stopped.borrow() {
                peak = peak.max(rss_kib(&namespaces));
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => {}
                }
            }
            peak.max(rss_kib(&namespaces))
        });
        RssSampler { stop, task }
    }

    /// The peak seen, in KiB.
    pub async fn finish(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(0)
    }
}

/// Summed `VmRSS` (KiB) of the processes in `namespaces`.
pub fn rss_kib(namespaces: &[Netns]) -> u64 {
    namespaces
        .iter()
        .flat_map(|ns| ns.pids())
        .map(|pid| pid_rss_kib(pid as u32))
        .sum()
}

/// `VmRSS` of one process in KiB (0 if it is gone).
pub fn pid_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// How long new connections failed because of the fault: from the first failed probe after
/// `fault_start` to the first good one after the last failure. `Some(0)` if none failed,
/// `None` if the last probe still failed.
pub fn recovery(probes: &[Probe], fault_start: Instant) -> Option<Duration> {
    let during: Vec<&Probe> = probes.iter().filter(|(at, _)| *at >= fault_start).collect();
    let Some(first_bad) = during.iter().position(|(_, ok)| !ok) else {
        return Some(Duration::ZERO);
    };
    let last_bad = during.iter().rposition(|(_, ok)| !ok)?;
    let back = during.get(last_bad + 1)?.0;
    Some(back.saturating_duration_since(during[first_bad].0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_spans_the_first_failure_to_the_first_good_probe_for_good() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let probes = [
            (at(0), true),
            (at(100), false),
            (at(200), true),
            (at(300), false),
            (at(900), true),
            (at(1000), true),
        ];
        assert_eq!(recovery(&probes, at(50)), Some(Duration::from_millis(800)));
        assert_eq!(recovery(&probes[..4], at(50)), None);
        assert_eq!(recovery(&probes[4..], at(50)), Some(Duration::ZERO));
        assert_eq!(recovery(&probes, at(250)), Some(Duration::from_millis(600)));
    }
}
