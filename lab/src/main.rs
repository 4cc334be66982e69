//! `ambit-lab`: the lab's command line.
//! - `demo`: builds `examples/demo.yaml`, runs the demo flows, prints the report; exit 0 only if
//!   every flow did what the mesh should;
//! - `up <topology>`: builds a topology and keeps it until Ctrl-C / SIGTERM;
//! - `exec <pod> -- <command>`: runs a program inside a pod of a running lab;
//! - `cleanup`: removes namespaces that crashed or killed runs left (their owner is gone);
//! - `rules`: prints the nftables rule sets (for scripts).
//!
//! Every lab is removed on exit, on error and on SIGINT/SIGTERM (the `Lab` is dropped).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ambit_lab::{
    ControlMode, Lab, LabError, LabOptions, ProxyMode, Topology, chaos, compat, demo, lab, netns,
    nft, sys,
};

/// The demo topology, built in so `ambit-lab demo` works from any directory.
const DEMO_TOPOLOGY: &str = include_str!("../../examples/demo.yaml");

#[derive(Parser)]
#[command(
    name = "ambit-lab",
    about = "a whole ambient mesh on one machine, in network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct ProxyArgs {
    /// The node proxy binary (any ztunnel-compatible one); default: `ambit` next to this binary.
    #[arg(long)]
    proxy: Option<PathBuf>,
    /// How node proxies run: `shared` (one per node, pods announced over ZDS) or `dedicated`
    /// (one inside each captured pod).
    #[arg(long, value_enum, default_value = "shared")]
    mode: Mode,
    /// Where node proxies get workloads and certificates: `control-plane` (the lab's delta xDS and
    /// CA over TLS) or `local` (a local config file and the built-in CA). Default: `control-plane`
    /// for `up`, `local` for `demo`.
    #[arg(long, value_enum)]
    control: Option<Control>,
    /// A different proxy binary on one node, as `NODE=BINARY` (repeatable): a mixed mesh, e.g.
    /// ambit on one node and ztunnel on the other.
    #[arg(long = "node-proxy", value_name = "NODE=BINARY", value_parser = parse_node_proxy)]
    node_proxy: Vec<(String, PathBuf)>,
    /// With `--control local`: the root certificate (PEM) the built-in CA issues from, instead of
    /// a fresh one (needs --ca-key). A mixed local mesh trusts one root this way.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The root's private key (PKCS#8 PEM), with --ca-cert.
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// The HBONE transport between node proxies (`AMBIT_HBONE_TRANSPORT` of every node proxy):
    /// `h2` (ztunnel's wire protocol), `h3` (QUIC only) or `auto` (QUIC, falling back to h2).
    /// Default: the proxy's own default (h2).
    #[arg(long, value_enum)]
    transport: Option<Transport>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Transport {
    H2,
    H3,
    Auto,
}

impl Transport {
    /// The value of `AMBIT_HBONE_TRANSPORT`.
    fn env_value(self) -> &'static str {
        match self {
            Transport::H2 => "h2",
            Transport::H3 => "h3",
            Transport::Auto => "auto",
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Control {
    ControlPlane,
    Local,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Shared,
    Dedicated,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the demo: two nodes, captured and uncaptured pods, a service; print what happened.
    Demo {
        /// The topology; default: `examples/demo.yaml` as built into this binary.
        #[arg(long)]
        topology: Option<PathBuf>,
        #[command(flatten)]
        proxy: ProxyArgs,
        /// Keep the lab running after the report until Ctrl-C (for `ambit-lab exec`).
        #[arg(long)]
        keep: bool,
    },
    /// Build a topology and keep it running until Ctrl-C.
    Up {
        topology: PathBuf,
        #[command(flatten)]
        proxy: ProxyArgs,
        /// Build only the network and the node agents, no node proxies.
        #[arg(long)]
        no_proxy: bool,
        /// Also run Prometheus, scraping every node proxy (in the underlay namespace, on
        /// 127.0.0.1:9090; see deploy/helm/ambit/dashboards/ for dashboards over it).
        #[arg(long)]
        prometheus: bool,
    },
    /// Compare ambit with a peer (real ztunnel) on what tools read: access logs, /config_dump,
    /// /logging, metric families, HBONE statuses, readiness. Exit 0 only if every difference is
    /// listed as deliberate.
    Compat {
        /// The peer binary to run (e.g. real ztunnel); without it, the recording is used.
        #[arg(long)]
        peer: Option<PathBuf>,
        /// What to call the peer in the report (with --peer).
        #[arg(long, default_value = "ztunnel")]
        peer_name: String,
        /// The ambit binary; default: `ambit` next to this binary.
        #[arg(long)]
        proxy: Option<PathBuf>,
        /// Write the peer's observation here (with --peer), e.g. tests/data/compat/ztunnel.json.
        #[arg(long)]
        record: Option<PathBuf>,
        /// The recording to compare with when no --peer is given; default: the committed one.
        #[arg(long)]
        recorded: Option<PathBuf>,
        /// Also write the report (Markdown) here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Inject faults into a running mesh (control plane down, agent and proxy restarts, link
    /// flap, packet loss, silent handshakes, many connections, soak) and print the reliability
    /// table (RELIABILITY.md). Exit 0 only if every case passed.
    Chaos {
        /// The node proxy binary (any ztunnel-compatible one); default: `ambit` next to this binary.
        #[arg(long)]
        proxy: Option<PathBuf>,
        /// Run only this case (repeatable); default: every case.
        #[arg(long = "case", value_enum)]
        cases: Vec<chaos::Case>,
        /// Short durations and sizes, the fast cases only unless --case names others (what CI runs).
        #[arg(long)]
        fast: bool,
        /// Also write the table (Markdown) here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a command inside a pod of a running lab: `ambit-lab exec client -- curl ...`.
    Exec {
        /// The run id, when more than one running lab has the pod.
        #[arg(long)]
        run: Option<String>,
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove lab namespaces and run directories whose creating process has exited (all with --all).
    Cleanup {
        /// Also remove namespaces of runs that are still alive.
        #[arg(long)]
        all: bool,
    },
    /// Print one of the lab's nftables rule sets (for scripts: pipe into `nft -f -`).
    Rules {
        #[arg(value_enum)]
        which: Ruleset,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Ruleset {
    /// Outbound capture: pod TCP to anything but loopback, unless marked by the proxy, to :15001.
    Capture,
    /// Original-source return path (nft part; the policy routes are `ip rule`/`ip route`).
    ReturnPath,
    /// The node agent's in-pod rules for a captured pod (capture both ways + return path).
    Inpod,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Cleanup { all } => report(cleanup(all).map(|n| {
            println!("ambit-lab: removed {n} namespace(s)");
            ExitCode::SUCCESS
        })),
        Cmd::Rules { which } => {
            match which {
                Ruleset::Capture => print!("{}", nft::outbound_capture(15001, nft::PROXY_MARK)),
                Ruleset::ReturnPath => {
                    print!("{}", nft::return_path(nft::PROXY_MARK, nft::RETURN_MARK))
                }
                Ruleset::Inpod => print!(
                    "{}",
                    nft::inpod_rules(nft::PROXY_MARK, nft::RETURN_MARK, false)
                ),
            }
            ExitCode::SUCCESS
        }
        Cmd::Exec { run, pod, command } => report(exec(run.as_deref(), &pod, &command)),
        Cmd::Compat {
            peer,
            peer_name,
            proxy,
            record,
            recorded,
            report: report_path,
        } => with_runtime(async move {
            sys::preflight()?;
            let recording = match &peer {
                Some(bin) => {
                    eprintln!(
                        "ambit-lab compat: observing {peer_name} ({})",
                        bin.display()
                    );
                    let rec = compat::Recording {
                        peer: peer_name.clone(),
                        observation: compat::observe_binary(bin).await?,
                    };
                    if let Some(path) = &record {
                        compat::save(path, &rec)?;
                        eprintln!("ambit-lab compat: recorded {}", path.display());
                    }
                    rec
                }
                None => compat::load(&recorded.unwrap_or_else(compat::recording_path))?,
            };
            let ambit = proxy.unwrap_or_else(default_proxy);
            eprintln!("ambit-lab compat: observing ambit ({})", ambit.display());
            let mine = compat::observe_binary(&ambit).await?;
            let diffs = compat::diff(&mine, &recording.observation);
            let text = compat::report(&recording.peer, &diffs);
            println!("{text}");
            if let Some(path) = report_path {
                std::fs::write(&path, &text).map_err(|source| LabError::File {
                    path: path.display().to_string(),
                    source,
                })?;
            }
            Ok(if diffs.iter().all(|d| d.deliberate().is_some()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }),
        Cmd::Chaos {
            proxy,
            cases,
            fast,
            out,
        } => with_runtime(async move {
            sys::preflight()?;
            let cases = match (cases.is_empty(), fast) {
                (false, _) => cases,
                (true, true) => chaos::Case::FAST.to_vec(),
                (true, false) => chaos::Case::ALL.to_vec(),
            };
            let opts = chaos::ChaosOptions {
                proxy: proxy.unwrap_or_else(default_proxy),
                cases,
                scale: if fast {
                    chaos::Scale::Fast
                } else {
                    chaos::Scale::Full
                },
            };
            let rows = chaos::run(&opts).await;
            let text = chaos::table(&rows);
            println!("{text}");
            if let Some(path) = out {
                std::fs::write(&path, &text).map_err(|source| LabError::File {
                    path: path.display().to_string(),
                    source,
                })?;
            }
            Ok(if rows.iter().all(chaos::Row::passed) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }),
        Cmd::Demo {
            topology,
            proxy,
            keep,
        } => with_runtime(async move {
            let topology = match topology {
                Some(path) => Topology::from_file(&path)?,
                None => Topology::from_yaml(DEMO_TOPOLOGY)?,
            };
            let lab = start(topology, Some(&proxy), Control::Local).await?;
            let flows = demo::demo_flows(&lab)?;
            let report = demo::run(&lab, flows).await?;
            println!("{report}");
            println!("logs and config: {}", lab.run_dir().display());
            if keep {
                hold(&lab).await;
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }),
        Cmd::Up {
            topology,
            proxy,
            no_proxy,
            prometheus,
        } => with_runtime(async move {
            let lab = start(
                Topology::from_file(&topology)?,
                (!no_proxy).then_some(&proxy),
                proxy.control.unwrap_or(Control::ControlPlane),
            )
            .await?;
            let prom = match prometheus {
                true => Some(ambit_lab::LabPrometheus::start(&lab).await?),
                false => None,
            };
            if let Some(p) = &prom {
                println!(
                    "prometheus: http://{} in namespace {} (`ip netns exec {} curl ...`); data in {}",
                    ambit_lab::prometheus::PROMETHEUS_ADDR,
                    lab.underlay().name(),
                    lab.underlay().name(),
                    p.dir().display()
                );
            }
            hold(&lab).await;
            drop(prom);
            Ok(ExitCode::SUCCESS)
        }),
    }
}

/// Prints an error as one line and maps it to exit code 1.
fn report(res: Result<ExitCode, LabError>) -> ExitCode {
    res.unwrap_or_else(|e| {
        eprintln!("ambit-lab: {e}");
        ExitCode::FAILURE
    })
}

/// Runs `work` on a runtime, racing it against SIGINT/SIGTERM: on a signal the work (and with it
/// any `Lab`) is dropped, which removes everything.
fn with_runtime(work: impl std::future::Future<Output = Result<ExitCode, LabError>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ambit-lab: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        tokio::select! {
            res = work => res,
            sig = signalled() => {
                eprintln!("ambit-lab: {sig}: removing the lab");
                Ok(ExitCode::from(130))
            }
        }
    });
    report(res)
}

async fn signalled() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "interrupted",
            _ = term.recv() => "terminated",
        },
        // Without signal handlers, never fire: the default action still ends the process.
        _ => std::future::pending().await,
    }
}

async fn start(
    topology: Topology,
    proxy: Option<&ProxyArgs>,
    default_control: Control,
) -> Result<Lab, LabError> {
    sys::preflight()?;
    let mut opts = LabOptions::default();
    let control = proxy.and_then(|p| p.control).unwrap_or(default_control);
    opts.control = match control {
        Control::ControlPlane => ControlMode::ControlPlane,
        Control::Local => ControlMode::LocalFiles,
    };
    if let Some(p) = proxy {
        opts.proxy = Some(p.proxy.clone().unwrap_or_else(default_proxy));
        opts.mode = match p.mode {
            Mode::Shared => ProxyMode::Shared,
            Mode::Dedicated => ProxyMode::Dedicated,
        };
        for (node, binary) in &p.node_proxy {
            if topology.node(node).is_none() {
                return Err(LabError::Usage(format!(
                    "--node-proxy {node}={}: the topology has no node {node:?}",
                    binary.display()
                )));
            }
            opts.node_proxies.insert(node.clone(), binary.clone());
        }
        if let (Some(cert), Some(key)) = (&p.ca_cert, &p.ca_key) {
            opts.ca_root = Some((cert.clone(), key.clone()));
        }
        if let Some(t) = p.transport {
            opts.proxy_env
                .push(("AMBIT_HBONE_TRANSPORT".into(), t.env_value().into()));
        }
    }
    let lab = Lab::start(topology, opts).await?;
    let s = lab.state();
    eprintln!(
        "ambit-lab: lab {} up: {} node(s), {} pod(s); run dir {}",
        s.run_id,
        s.nodes.len(),
        s.pods.len(),
        lab.run_dir().display()
    );
    if let Some(cp) = lab.control_plane() {
        eprintln!(
            "ambit-lab: control plane (delta xDS + CA) at {}, root {}",
            cp.url(),
            cp.root_cert_path().display()
        );
    }
    Ok(lab)
}

/// `NODE=BINARY` of `--node-proxy`.
fn parse_node_proxy(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((node, bin)) if !node.is_empty() && !bin.is_empty() => {
            Ok((node.to_string(), PathBuf::from(bin)))
        }
        _ => Err(format!("expected NODE=BINARY, got {s:?}")),
    }
}

/// `ambit` next to this binary (both are built into the same target directory).
fn default_proxy() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("ambit")))
        .unwrap_or_else(|| PathBuf::from("target/release/ambit"))
}

/// Keeps the lab until a signal ends the process's work (see [`with_runtime`]).
async fn hold(lab: &Lab) {
    eprintln!(
        "ambit-lab: running; try `ambit-lab exec --run {} <pod> -- <command>`; Ctrl-C removes it",
        lab.run_id()
    );
    std::future::pending::<()>().await;
}

fn exec(run: Option<&str>, pod: &str, command: &[String]) -> Result<ExitCode, LabError> {
    sys::preflight()?;
    let state = lab::find_running(pod, run)?;
    let ns = state.pods.get(pod).cloned().unwrap_or_default();
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &ns])
        .args(command)
        .status()
        .map_err(|source| LabError::Spawn {
            command: command.join(" "),
            source,
        })?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

fn cleanup(all: bool) -> Result<usize, LabError> {
    sys::preflight()?;
    let list = sys::run("ip", &["netns", "list"], None)?;
    let mut removed = 0;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(sys::NAME_PREFIX) else {
            continue;
        };
        let owner_alive = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if all || !owner_alive {
            netns::remove(name);
            removed += 1;
        }
    }
    // Run directories of dead runs (named `<pid>-...`): their logs are no longer anyone's.
    if let Ok(dirs) = std::fs::read_dir(lab::RUNS_DIR) {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            let alive = name
                .split('-')
                .next()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            if all || !alive {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
    Ok(removed)
}
