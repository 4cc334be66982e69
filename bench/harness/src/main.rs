//! `ambit-bench`: throughput, latency, connection rate and memory of node proxies on a two-node
//! lab, plus the control plane's `xds_apply` figures; a markdown table on stdout, a JSON file
//! and SVG charts in `--out`. Needs root (the lab builds network namespaces).
//!
//! `ambit-bench [--quick] [--proxy-binary [LABEL=]PATH]... [--transport h2,h3]
//! [--proxy-env [LABEL:]KEY=VALUE]...` — see `bench/README.md`.
//! `ambit-bench pod ...` is internal: the load generator and servers, run inside pods.
//!
//! Invariants: every proxy binary gets its own lab, all up at once, and each scenario runs
//! the binaries in alternating order (A, B, then B, A) so machine drift cancels; latency
//! histograms of the rounds are merged, other numbers averaged; `--quick` fails (exit 1) unless
//! every scenario produced numbers.

mod cli;
mod procfs;
mod push;
mod report;
mod scenarios;
mod subjects;
mod svg;
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;

use cli::{Cli, PodCmd, PodWork, Scenario};
use hdrhistogram::Histogram;

use report::{ConnRow, ControlPlane, LatRow, MemRow, ProxyRef, Report, TputRow};
use scenarios::{PathKind, Subject};

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.pod {
        Some(PodCmd::Pod { cmd }) => rt.block_on(pod(cmd)),
        None => {
            let report = rt.block_on(run(&cli))?;
            let proxies = report.proxies.len();
            let missing = report.missing(proxies, |s| cli.runs(s));
            if !missing.is_empty() {
                bail!("scenarios without numbers: {}", missing.join("; "));
            }
            Ok(())
        }
    }
}

async fn pod(cmd: PodWork) -> Result<()> {
    match cmd {
        PodWork::Serve => {
            workload::serve(
                scenarios::RR_PORT,
                scenarios::CONN_PORT,
                scenarios::HOLD_PORT,
            )
            .await
        }
        PodWork::Latency {
            addr,
            size,
            rate,
            secs,
            newconn,
        } => {
            let out = workload::latency(addr, size, rate, secs, newconn).await?;
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }
        PodWork::Connrate {
            addr,
            secs,
            workers,
        } => {
            let out = workload::connrate(addr, secs, workers).await?;
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }
        PodWork::Hold { addr, count } => workload::hold(addr, count).await,
    }
}

/// A latency histogram merged over rounds, and the error count.
type Merged = (Histogram<u64>, u64);

/// The workspace root (this crate lives in `bench/harness`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn proxies(cli: &Cli) -> Result<Vec<subjects::ProxySpec>> {
    let mut specs = cli.proxy_binary.clone();
    if specs.is_empty() {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace().join("target"), PathBuf::from);
        specs.push(format!("ambit={}", target.join("release/ambit").display()));
    }
    let mut binaries = Vec::new();
    for spec in specs {
        let (label, path) = subjects::parse_binary(&spec);
        if !path.is_file() {
            bail!(
                "proxy binary {} not found (build it: cargo build --release -p ambit)",
                path.display()
            );
        }
        binaries.push((label, std::fs::canonicalize(&path)?));
    }
    subjects::expand(&binaries, &cli.transport, &cli.proxy_env)
}

/// The order of the subjects in round `r`: alternating, so neither always goes first.
fn order(n: usize, r: u32) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    if r % 2 == 1 {
        v.reverse();
    }
    v
}

async fn run(cli: &Cli) -> Result<Report> {
    let started = Instant::now();
    let machine = procfs::Machine::probe();
    workload::raise_nofile();
    let exe = std::env::current_exe()?;
    let binaries = proxies(cli)?;
    let rounds = cli.rounds.unwrap_or(if cli.quick { 1 } else { 2 }).max(1);
    let (tput_secs, lat_secs, rate_secs) = if cli.quick {
        (2, 1.0, 2.0)
    } else {
        (10, 5.0, 10.0)
    };
    let hold_counts: [u32; 2] = if cli.quick {
        [100, 1000]
    } else {
        [1000, 10_000]
    };
    let rate = cli.rate.max(10);
    let push_workloads = cli
        .push_workloads
        .unwrap_or(if cli.quick { 1000 } else { 10_000 });

    // The data-path labs are started only for a scenario that uses them.
    let data_path = [
        Scenario::Throughput,
        Scenario::Latency,
        Scenario::Connrate,
        Scenario::Memory,
    ]
    .into_iter()
    .any(|s| cli.runs(s));
    let mut subjects: Vec<Subject> = Vec::new();
    for spec in binaries.iter().filter(|_| data_path) {
        eprintln!(
            "ambit-bench: starting a lab for {} ({})",
            spec.label,
            spec.binary.display()
        );
        subjects.push(scenarios::start(spec, &exe, &cli.proxy_log).await?);
    }
    let n = subjects.len();
    let label = |i: usize| subjects[i].label.clone();

    // Throughput.
    let mut tput: BTreeMap<(u32, PathKind, Option<String>), Vec<scenarios::Throughput>> =
        BTreeMap::new();
    for r in 0..rounds * u32::from(cli.runs(Scenario::Throughput)) {
        for streams in [1u32, 4] {
            eprintln!(
                "ambit-bench: throughput, {streams} stream(s), round {}",
                r + 1
            );
            let t = subjects[0]
                .iperf(PathKind::Direct, streams, tput_secs)
                .await?;
            tput.entry((streams, PathKind::Direct, None))
                .or_default()
                .push(t);
            for i in order(n, r) {
                for kind in [PathKind::Hbone, PathKind::Plain] {
                    let t = subjects[i].iperf(kind, streams, tput_secs).await?;
                    tput.entry((streams, kind, Some(label(i))))
                        .or_default()
                        .push(t);
                }
            }
        }
    }
    let throughput = tput
        .into_iter()
        .map(|((streams, path, proxy), runs)| {
            let mean = |f: &dyn Fn(&scenarios::Throughput) -> Option<f64>| {
                let v: Vec<f64> = runs.iter().filter_map(f).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            TputRow {
                streams,
                path,
                proxy,
                gbps: mean(&|t| Some(t.gbps)).unwrap_or(0.0),
                cpu_s_per_gb: mean(&|t| t.cpu_s_per_gb),
                runs: runs.iter().map(|t| t.gbps).collect(),
            }
        })
        .collect();

    // Latency.
    let kinds: [(&str, u32, bool, u32); 3] = [
        ("persistent, 1 B", 1, false, rate),
        ("persistent, 1 KiB", 1024, false, rate),
        ("new connection, 1 B", 1, true, (rate / 5).max(10)),
    ];
    let mut hists: BTreeMap<(usize, PathKind, Option<String>), Merged> = BTreeMap::new();
    for r in 0..rounds * u32::from(cli.runs(Scenario::Latency)) {
        for (k, (name, size, newconn, rate)) in kinds.iter().enumerate() {
            eprintln!("ambit-bench: latency, {name}, round {}", r + 1);
            let mut runs = vec![(0usize, PathKind::Direct, None)];
            runs.extend(
                order(n, r)
                    .into_iter()
                    .map(|i| (i, PathKind::Hbone, Some(label(i)))),
            );
            for (i, kind, proxy) in runs {
                let out = subjects[i]
                    .latency(&exe, kind, *size, *rate, lat_secs, *newconn)
                    .await?;
                let e = hists
                    .entry((k, kind, proxy))
                    .or_insert_with(|| (workload::histogram(), 0));
                for (v, c) in out.buckets {
                    e.0.saturating_record_n(v, c);
                }
                e.1 += out.errors;
            }
        }
    }
    let latency = hists
        .iter()
        .map(|((k, path, proxy), (h, errors))| {
            LatRow::from_hist(kinds[*k].0, *path, proxy.clone(), h, *errors)
        })
        .collect::<Vec<_>>();

    // Connection rate.
    let mut conns: BTreeMap<(PathKind, Option<String>), (u64, u64, f64)> = BTreeMap::new();
    for r in 0..rounds * u32::from(cli.runs(Scenario::Connrate)) {
        eprintln!("ambit-bench: connection rate, round {}", r + 1);
        let mut runs = vec![(0usize, PathKind::Direct, None)];
        runs.extend(
            order(n, r)
                .into_iter()
                .map(|i| (i, PathKind::Hbone, Some(label(i)))),
        );
        for (i, kind, proxy) in runs {
            let out = subjects[i].connrate(&exe, kind, rate_secs, 16).await?;
            let e = conns.entry((kind, proxy)).or_insert((0, 0, 0.0));
            e.0 += out.ok;
            e.1 += out.errors;
            e.2 += out.secs;
        }
    }
    let connrate = conns
        .into_iter()
        .map(|((path, proxy), (ok, errors, secs))| ConnRow {
            path,
            proxy,
            per_sec: ok as f64 / secs.max(1e-9),
            ok,
            errors,
        })
        .collect();

    // Memory: once per subject (RSS is not drift-sensitive the way speed is).
    let mut memory = Vec::new();
    for s in subjects.iter().filter(|_| cli.runs(Scenario::Memory)) {
        eprintln!("ambit-bench: memory, {}", s.label);
        let idle = s.proxy_rss();
        for count in hold_counts {
            let heap = cli.heap_profiles.as_deref().map(|d| (d, count));
            let (held, errors, rss) = s.hold(&exe, count, heap).await?;
            let grown: i64 = rss.iter().sum::<u64>() as i64 - idle.iter().sum::<u64>() as i64;
            memory.push(MemRow {
                proxy: s.label.clone(),
                conns: count,
                held,
                errors,
                idle_kib: idle.clone(),
                rss_kib: rss,
                bytes_per_conn: grown as f64 * 1024.0 / held.max(1) as f64,
            });
        }
    }
    drop(subjects);

    let pushes = if cli.runs(Scenario::Push) {
        push_scenario(&binaries, rounds, push_workloads, &cli.proxy_log).await?
    } else {
        Vec::new()
    };

    let xds = cli
        .xds
        .clone()
        .unwrap_or_else(|| match (cli.only.is_empty(), cli.quick) {
            (false, _) => "skip".into(),
            (true, true) => "debug".into(),
            (true, false) => "release".into(),
        });
    let control_plane = control_plane(&xds).await?;

    let mut machine = machine;
    machine.load_end = procfs::loadavg();
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: cli.quick,
        rounds,
        wall_secs: started.elapsed().as_secs_f64(),
        machine,
        proxies: binaries
            .iter()
            .map(|p| ProxyRef {
                label: p.label.clone(),
                binary: p.binary.display().to_string(),
                env: p.env.clone(),
            })
            .collect(),
        throughput,
        latency,
        connrate,
        memory,
        pushes,
        control_plane,
    };
    write_outputs(&report, &cli.out)?;
    Ok(report)
}

fn write_outputs(report: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let m = &report.machine;
    println!(
        "## ambit-bench{}\n\nMachine: {} × {}, kernel {}; load average {} at start, {} at end; {:.0} s wall.\n",
        if report.quick { " (--quick)" } else { "" },
        m.nproc,
        m.cpu_model,
        m.kernel,
        m.load_start,
        m.load_end,
        report.wall_secs
    );
    for p in &report.proxies {
        let env: Vec<String> = p.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if env.is_empty() {
            println!("- `{}`: {}", p.label, p.binary);
        } else {
            println!("- `{}`: {} with `{}`", p.label, p.binary, env.join(" "));
        }
    }
    println!("\n{}", report.markdown());
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(
        out.join("throughput.svg"),
        svg::throughput(&report.throughput),
    )?;
    let mut scenarios: Vec<&str> = report.latency.iter().map(|r| r.scenario.as_str()).collect();
    scenarios.dedup();
    for sc in scenarios {
        let rows: Vec<&LatRow> = report.latency.iter().filter(|r| r.scenario == sc).collect();
        let file: String = sc
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect::<String>()
            .split('-')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        std::fs::write(
            out.join(format!("latency-{file}.svg")),
            svg::latency(sc, &rows),
        )?;
    }
    eprintln!(
        "ambit-bench: wrote {}/results.json and charts",
        out.display()
    );
    Ok(())
}

/// The push scenario ([`push`]): a control-plane lab per binary, all up at once, then per
/// round (alternating) one push of `workloads` workloads and its removal on each.
async fn push_scenario(
    binaries: &[subjects::ProxySpec],
    rounds: u32,
    workloads: u32,
    rust_log: &str,
) -> Result<Vec<push::PushRow>> {
    let resources = push::resources(workloads);
    let names: Vec<String> = resources.iter().map(|r| r.name().to_string()).collect();
    let mut labs = Vec::new();
    for spec in binaries {
        eprintln!("ambit-bench: control-plane lab for {}", spec.label);
        labs.push(push::PushLab::start(spec, rust_log).await?);
    }
    let mut rows: Vec<push::PushRow> = labs
        .iter()
        .map(|l| push::PushRow {
            proxy: l.label().to_string(),
            workloads,
            services: (workloads / 10).max(1),
            push_ms: Vec::new(),
            remove_ms: Vec::new(),
            rss_before_kib: l.proxy_rss(),
            rss_loaded_kib: Vec::new(),
        })
        .collect();
    for r in 0..rounds {
        eprintln!(
            "ambit-bench: push of {workloads} workloads, round {}",
            r + 1
        );
        for i in order(labs.len(), r) {
            let pushed = labs[i].push(resources.clone()).await?;
            rows[i].push_ms.extend(pushed);
            if rows[i].rss_loaded_kib.is_empty() {
                rows[i].rss_loaded_kib = labs[i].proxy_rss();
            }
            let removed = labs[i].remove(&names).await?;
            rows[i].remove_ms.extend(removed);
        }
    }
    Ok(rows)
}

/// Runs the `xds_apply` bench through cargo and picks its figures out of the output.
async fn control_plane(mode: &str) -> Result<Option<ControlPlane>> {
    let args: &[&str] = match mode {
        "skip" => return Ok(None),
        "release" => &["bench", "-q", "-p", "ambit", "--bench", "xds_apply"],
        "debug" => &["test", "-q", "-p", "ambit", "--bench", "xds_apply"],
        other => bail!("--xds {other:?}: expected release, debug or skip"),
    };
    eprintln!("ambit-bench: control plane, cargo {}", args.join(" "));
    let run =
        tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(workspace())
            .env("CARGO_INCREMENTAL", "0")
            .kill_on_drop(true)
            .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(1200), run)
        .await
        .context("xds_apply: not done within 20 minutes")??;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "xds_apply ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let figure = |key: &str| {
        text.lines()
            .find(|l| l.contains(key))
            .and_then(|l| l.rsplit(':').next())
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Ok(Some(ControlPlane {
        profile: mode.into(),
        full_push_ms: figure("full push applied"),
        small_delta_ms: figure("small delta"),
        peak_mib: text
            .lines()
            .find(|l| l.contains("VmHWM"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok()),
        output: text,
    }))
}

#[cfg(test)]
mod cli_tests {
    //! The flags reach [`proxies`]'s inputs as documented (the expansion is tested in
    //! `subjects::tests`).
    use super::*;

    #[test]
    fn transport_is_comma_separated_and_env_repeatable() {
        let cli = Cli::try_parse_from([
            "ambit-bench",
            "--quick",
            "--transport",
            "h2,h3",
            "--proxy-env",
            "ambit/h3:A=1",
            "--proxy-env",
            "B=2",
        ])
        .unwrap();
        assert_eq!(cli.transport, ["h2", "h3"]);
        assert_eq!(cli.proxy_env, ["ambit/h3:A=1", "B=2"]);
        let cli = Cli::try_parse_from(["ambit-bench", "--transport", "h3", "--transport", "auto"])
            .unwrap();
        assert_eq!(cli.transport, ["h3", "auto"]);
        let cli = Cli::try_parse_from(["ambit-bench"]).unwrap();
        assert!(cli.transport.is_empty() && cli.proxy_env.is_empty());
    }

    #[test]
    fn bad_transport_fails_before_any_lab() {
        let cli = Cli::try_parse_from([
            "ambit-bench",
            "--proxy-binary",
            "/bin/sh",
            "--transport",
            "h4",
        ])
        .unwrap();
        let err = proxies(&cli).unwrap_err().to_string();
        assert_eq!(err, "--transport \"h4\": expected h2, h3 or auto");
    }
}
