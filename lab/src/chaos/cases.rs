//! The chaos cases and the light ones' runs: each builds a [`Scene`] (the mesh with its
//! watchers running), does one thing to it, and judges what the watchers saw. The heavy cases
//! (own settings, own measurements) are in `heavy`.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::scene::{Expect, RECOVER_WITHIN, Scene, judge, wait_recovered};
use super::{ChaosOptions, Row};
use crate::LabError;
use crate::traffic::bulk_send;

/// How big and long the cases are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Seconds per case: what CI runs.
    Fast,
    /// The figures of `RELIABILITY.md` (minutes for the outages, an hour of soak).
    Full,
}

/// The cases, in the order the table lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Case {
    ControlPlaneDown,
    CaDownAcrossRotation,
    AgentRestart,
    ProxyKill,
    ProxyHandover,
    ProxyPause,
    LinkFlap,
    PacketLoss,
    SilentHandshakes,
    H2Abuse,
    Churn,
    ManyConnections,
    Soak,
}

impl Case {
    pub const ALL: [Case; 13] = [
        Case::ControlPlaneDown,
        Case::CaDownAcrossRotation,
        Case::AgentRestart,
        Case::ProxyKill,
        Case::ProxyHandover,
        Case::ProxyPause,
        Case::LinkFlap,
        Case::PacketLoss,
        Case::SilentHandshakes,
        Case::H2Abuse,
        Case::Churn,
        Case::ManyConnections,
        Case::Soak,
    ];
    /// What CI runs (at [`Scale::Fast`]).
    pub const FAST: [Case; 10] = [
        Case::ControlPlaneDown,
        Case::AgentRestart,
        Case::ProxyKill,
        Case::ProxyHandover,
        Case::ProxyPause,
        Case::LinkFlap,
        Case::PacketLoss,
        Case::SilentHandshakes,
        Case::H2Abuse,
        Case::Churn,
    ];

    pub(super) fn outage(scale: Scale) -> Duration {
        match scale {
            Scale::Fast => Duration::from_secs(5),
            Scale::Full => Duration::from_secs(180),
        }
    }

    /// What the case does, with its sizes at `scale`.
    pub fn describe(self, scale: Scale) -> String {
        let fast = scale == Scale::Fast;
        match self {
            Case::ControlPlaneDown => format!(
                "control plane (xDS and CA) killed for {} s with traffic on, then restarted",
                Case::outage(scale).as_secs()
            ),
            Case::CaDownAcrossRotation => "certificates of 60 s (SECRET_TTL); control plane down from 10 s to 50 s, across the renewal at half-life; traffic until 80 s".into(),
            Case::AgentRestart => "node agent (ZDS server) of both nodes restarted, pods re-announced by snapshot".into(),
            Case::ProxyKill => "node-2's proxy killed (SIGKILL) and started again".into(),
            Case::ProxyHandover => "node-2's proxy replaced as in an upgrade: a new one starts beside it and takes the pods over from the agent, then the old one gets SIGTERM and drains".into(),
            Case::ProxyPause => "node-2's proxy stopped (SIGSTOP) for 5 s, then continued (SIGCONT)".into(),
            Case::LinkFlap => "node-2's link to the underlay set down for 2 s, then up".into(),
            Case::PacketLoss => format!(
                "3% of node-2's packets dropped (nftables numgen) for {} s; a {} MB bulk transfer checked by SHA-256",
                if fast { 5 } else { 60 },
                if fast { 20 } else { 200 }
            ),
            Case::SilentHandshakes => "2,000 TCP connections to server's 15008 from node-1 that never finish a TLS handshake (half silent, half 11 bytes of a ClientHello)".into(),
            Case::H2Abuse => "a peer with a valid `client` certificate on server's 15008: rapid reset, CONTINUATION flood, PING and SETTINGS floods never read, a tunnel written into and never read (10 s each)".into(),
            Case::Churn => format!(
                "{} short connections client → server, 50 at a time, each echoing a line",
                if fast { 2_000 } else { 20_000 }
            ),
            Case::ManyConnections => format!(
                "{} concurrent tunneled connections client → server, each echoed once",
                if fast { 2_000 } else { 10_000 }
            ),
            Case::Soak => format!(
                "{} of mixed traffic: long flows, 20 new connections a second, a 10 MB transfer every 10 s",
                if fast { "1 minute" } else { "1 hour" }
            ),
        }
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Case::ControlPlaneDown => "control-plane-down",
            Case::CaDownAcrossRotation => "ca-down-across-rotation",
            Case::AgentRestart => "agent-restart",
            Case::ProxyKill => "proxy-kill",
            Case::ProxyHandover => "proxy-handover",
            Case::ProxyPause => "proxy-pause",
            Case::LinkFlap => "link-flap",
            Case::PacketLoss => "packet-loss",
            Case::SilentHandshakes => "silent-handshakes",
            Case::H2Abuse => "h2-abuse",
            Case::Churn => "churn",
            Case::ManyConnections => "many-connections",
            Case::Soak => "soak",
        };
        f.write_str(name)
    }
}

/// Runs one case in a mesh of its own.
pub(super) async fn run(case: Case, opts: &ChaosOptions) -> Result<Row, LabError> {
    let scale = opts.scale;
    match case {
        Case::CaDownAcrossRotation => return super::heavy::ca_down(opts).await,
        Case::SilentHandshakes => return super::heavy::silent(opts).await,
        Case::ManyConnections => return super::heavy::many(opts).await,
        Case::Churn => return super::heavy::churn(opts).await,
        Case::H2Abuse => return super::abuse::h2_abuse(opts).await,
        Case::Soak => return super::heavy::soak(opts).await,
        _ => {}
    }
    let mut scene = Scene::start(opts, &[]).await?;
    let watchers = scene.watch()?;
    // Let the watchers reach a steady state before the fault.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    let mut problems = Vec::new();
    let mut observed = Vec::new();
    let expect = match case {
        Case::ControlPlaneDown => {
            if !scene.lab.stop_control_plane().await {
                problems.push("no control plane to stop".into());
            }
            tokio::time::sleep(Case::outage(scale)).await;
            scene.lab.restart_control_plane()?;
            Expect::NOTHING_FAILS
        }
        Case::AgentRestart => {
            for node in ["node-1", "node-2"] {
                scene.lab.restart_agent(node).await?;
            }
            Expect::NOTHING_FAILS
        }
        Case::ProxyKill => {
            scene.lab.restart_proxy("node-2").await?;
            // Flows through a killed proxy die with it; what matters is that nothing else does.
            Expect {
                flows_survive: false,
                probes_never_fail: false,
            }
        }
        Case::ProxyHandover => {
            scene.lab.hand_over_proxy("node-2").await?;
            // The old proxy's connections end at its drain deadline (as in ztunnel); new ones
            // must never fail: one proxy or the other accepts them all along.
            Expect {
                flows_survive: false,
                probes_never_fail: true,
            }
        }
        Case::ProxyPause => {
            let pid = scene
                .lab
                .proxy_for("server")
                .map(|p| p.pid())
                .ok_or_else(|| LabError::Usage("no proxy serves the server pod".into()))?;
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let signal = |s| {
                nix::sys::signal::kill(pid, s)
                    .map_err(|e| LabError::Usage(format!("signal {s} to the proxy: {e}")))
            };
            signal(nix::sys::signal::Signal::SIGSTOP)?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            signal(nix::sys::signal::Signal::SIGCONT)?;
            // Nothing is lost while a proxy is paused: the kernel holds the bytes.
            Expect {
                flows_survive: true,
                probes_never_fail: false,
            }
        }
        Case::LinkFlap => {
            let underlay = scene.lab.underlay();
            underlay.ip(&["link", "set", "n1", "down"])?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            underlay.ip(&["link", "set", "n1", "up"])?;
            Expect {
                flows_survive: true,
                probes_never_fail: false,
            }
        }
        Case::PacketLoss => {
            let node = scene.node("node-2")?;
            node.nft(LOSS_RULES)?;
            let bytes = if scale == Scale::Fast { 20 } else { 200 } * 1_000_000;
            let secs = if scale == Scale::Fast { 5 } else { 60 };
            let bulk = async {
                let client = scene.ns("client")?;
                bulk_send(client, scene.sink, bytes, Duration::from_secs(secs * 20)).await
            };
            let (bulk, ()) = tokio::join!(bulk, tokio::time::sleep(Duration::from_secs(secs)));
            let _ = node.run(&["nft", "delete", "table", "inet", "ambit_chaos_loss"]);
            match bulk {
                Ok(b) if b.reply.bytes == b.sent && b.reply.sha256 == b.sha256 => {
                    observed.push(format!("bulk {} MB intact", b.sent / 1_000_000));
                }
                Ok(b) => problems.push(format!(
                    "bulk transfer damaged: sent {} (sha {}), got {} (sha {})",
                    b.sent, b.sha256, b.reply.bytes, b.reply.sha256
                )),
                Err(e) => problems.push(format!("bulk transfer failed: {e}")),
            }
            Expect {
                flows_survive: true,
                probes_never_fail: false,
            }
        }
        _ => unreachable!("handled above"),
    };
    if !wait_recovered(&scene).await {
        problems.push(format!("no new connection within {RECOVER_WITHIN:?}"));
    }
    // A little traffic after recovery, so the probes show it held.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = watchers.finish().await;
    Ok(judge(case, scale, &seen, start, expect, problems, observed))
}

/// Drops 3% of every packet through node-2 (both ways), its own table so removal is one call.
const LOSS_RULES: &str = "table inet ambit_chaos_loss {
  chain input { type filter hook input priority -300; numgen random mod 100 < 3 drop; }
  chain output { type filter hook output priority -300; numgen random mod 100 < 3 drop; }
  chain forward { type filter hook forward priority -300; numgen random mod 100 < 3 drop; }
}
";
