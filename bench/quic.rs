//! HBONE over h2 vs over QUIC (h3), side by side in one run: two pod namespaces joined by a
//! veth, a dedicated-mode ambit in each (outbound capture in the client pod, as in the e2e
//! tests), and for reference the same pods without any proxy ("direct").
//!
//! Per mode it measures:
//! - throughput: `iperf3 -t 5` from the client pod to the server pod (one TCP stream);
//! - CPU per GB: user+system time of both ambits during the iperf3 run, per GB carried;
//! - latency: 2,000 request/response exchanges (64-byte responses) on one connection (p50, p99),
//!   and the time to open a new connection and complete its first exchange (p50 of 100).
//!
//! Ratios are against direct and h2. Needs root, `iperf3` and `nft`.
//!
//! Run: `cargo bench --bench quic` (release). `AMBIT_BENCH_BIN=/path/to/ambit` runs another
//! build of the node proxy; `AMBIT_BENCH_MODES=h2,h3` runs only the modes named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_lab::traffic::{Server, ServerKind, request_response};
use ambit_lab::{Netns, Process, ProcessSpec, nft, veth, wait_http_ok};

const CLIENT: &str = "10.2.0.2";
const SERVER: &str = "10.2.0.3";
const RR_PORT: u16 = 9000;
const IPERF_PORT: u16 = 5201;
const STEP: Duration = Duration::from_secs(30);

struct Figures {
    mode: &'static str,
    gbps: f64,
    cpu_s_per_gb: Option<f64>,
    rr_p50_us: f64,
    rr_p99_us: f64,
    connect_p50_us: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin = std::env::var("AMBIT_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_ambit")));
    let dir = std::env::temp_dir().join(format!("ambit-bench-quic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // `AMBIT_BENCH_MODES=h3` (comma-separated) runs a subset, e.g. under a profiler.
    let wanted = std::env::var("AMBIT_BENCH_MODES").unwrap_or_default();
    let mut all = Vec::new();
    for mode in ["direct", "h2", "h3"] {
        if wanted.is_empty() || wanted.split(',').any(|m| m.trim() == mode) {
            all.push(run(mode, &bin, &dir).await);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    print(&all);
}

async fn run(mode: &'static str, bin: &Path, dir: &Path) -> Figures {
    let client = Netns::new("bcli").unwrap();
    let server = Netns::new("bsrv").unwrap();
    veth(&client, "eth0", &server, "eth0").unwrap();
    client.add_addr("eth0", &format!("{CLIENT}/24")).unwrap();
    server.add_addr("eth0", &format!("{SERVER}/24")).unwrap();
    let mut ambits = Vec::new();
    if mode != "direct" {
        nft::install_outbound_capture(&client, 15001).unwrap();
        nft::install_return_path(&server).unwrap();
        let config = dir.join(format!("{mode}.yaml"));
        std::fs::write(&config, local_config()).unwrap();
        let ca = dir.join(format!("{mode}-ca"));
        ambits.push(start(&server, bin, mode, "b/server/server", &config, &ca, dir).await);
        ambits.push(start(&client, bin, mode, "a/client/client", &config, &ca, dir).await);
    }

    // Throughput and CPU.
    let mut iperf = Process::spawn(
        Some(&server),
        &ProcessSpec::new("iperf3-server", "iperf3")
            .arg("-s")
            .arg("-p")
            .arg(IPERF_PORT.to_string()),
        dir,
    )
    .unwrap();
    let cpu_before: f64 = ambits.iter().map(cpu_seconds).sum();
    let mut bytes = None;
    for _ in 0..50 {
        let port = IPERF_PORT.to_string();
        let out = client
            .exec(
                &["iperf3", "-c", SERVER, "-p", &port, "-t", "5", "-J"],
                STEP,
            )
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(b) = json["end"]["sum_received"]["bytes"].as_f64() {
            let secs = json["end"]["sum_received"]["seconds"]
                .as_f64()
                .unwrap_or(5.0);
            bytes = Some((b, secs));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (bytes, secs) = bytes.unwrap_or_else(|| panic!("{mode}: iperf3 never ran"));
    let cpu = ambits.iter().map(cpu_seconds).sum::<f64>() - cpu_before;
    iperf.kill();

    // Latency.
    let _rr = Server::start(&server, ServerKind::RequestResponse, RR_PORT).unwrap();
    let dst: SocketAddr = format!("{SERVER}:{RR_PORT}").parse().unwrap();
    let mut rr = request_response(&client, dst, 2000, 64, STEP)
        .await
        .unwrap();
    rr.sort();
    let mut connects = Vec::new();
    for _ in 0..100 {
        let start = tokio::time::Instant::now();
        request_response(&client, dst, 1, 64, STEP).await.unwrap();
        connects.push(start.elapsed());
    }
    connects.sort();
    drop(ambits);
    Figures {
        mode,
        gbps: bytes * 8.0 / secs / 1e9,
        cpu_s_per_gb: (mode != "direct").then(|| cpu / (bytes / 1e9)),
        rr_p50_us: micros(rr[rr.len() / 2]),
        rr_p99_us: micros(rr[rr.len() * 99 / 100]),
        connect_p50_us: micros(connects[connects.len() / 2]),
    }
}

async fn start(
    ns: &Netns,
    bin: &Path,
    mode: &str,
    info: &str,
    config: &Path,
    ca: &Path,
    dir: &Path,
) -> Process {
    let name = format!("{mode}-{}", info.split('/').nth(1).unwrap_or("pod"));
    let spec = ProcessSpec::new(name, bin)
        .env("PROXY_MODE", "dedicated")
        .env("PROXY_WORKLOAD_INFO", info)
        .env("FAKE_CA", "true")
        .env("CA_ADDRESS", "")
        .env("XDS_ADDRESS", "")
        .env("LOCAL_XDS_PATH", config.display().to_string())
        .env("AMBIT_CA_DIR", ca.display().to_string())
        .env("PACKET_MARK", "1337")
        .env("AMBIT_HBONE_TRANSPORT", mode)
        .env("RUST_LOG", "warn");
    let mut p = Process::spawn(Some(ns), &spec, dir).unwrap();
    let ready = SocketAddr::from(([127, 0, 0, 1], 15021));
    wait_http_ok(
        ns,
        ready,
        "/healthz/ready",
        100,
        Duration::from_secs(1),
        Some(&mut p),
    )
    .await
    .unwrap_or_else(|e| panic!("ambit not ready: {e}\n{}", p.tail(20)));
    p
}

fn local_config() -> String {
    let wl = |ns: &str, name: &str, ip: &str| {
        format!(
            "- uid: cluster1//v1/Pod/{ns}/{name}\n  name: {name}\n  namespace: {ns}\n  serviceAccount: {name}\n  workloadIps: [\"{ip}\"]\n  protocol: HBONE\n"
        )
    };
    format!(
        "workloads:\n{}{}",
        wl("a", "client", CLIENT),
        wl("b", "server", SERVER)
    )
}

/// User + system CPU seconds of a process so far (`/proc/<pid>/stat`, fields 14 and 15).
fn cpu_seconds(p: &Process) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid())).unwrap_or_default();
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    // /proc reports clock ticks in USER_HZ, which the Linux ABI fixes at 100.
    (ticks(11) + ticks(12)) / 100.0
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn print(all: &[Figures]) {
    let by = |m: &str| all.iter().find(|f| f.mode == m);
    println!("HBONE transport benchmark (one iperf3 TCP stream, 64-byte request/response)");
    println!(
        "{:<7} {:>9} {:>11} {:>10} {:>10} {:>12}",
        "mode", "Gbit/s", "CPU s/GB", "rr p50 us", "rr p99 us", "connect p50"
    );
    for f in all {
        println!(
            "{:<7} {:>9.2} {:>11} {:>10.0} {:>10.0} {:>12.0}",
            f.mode,
            f.gbps,
            f.cpu_s_per_gb.map_or("-".into(), |c| format!("{c:.2}")),
            f.rr_p50_us,
            f.rr_p99_us,
            f.connect_p50_us
        );
    }
    if let (Some(d), Some(h2), Some(h3)) = (by("direct"), by("h2"), by("h3")) {
        println!(
            "throughput  h2/direct {:.2}  h3/direct {:.2}  h3/h2 {:.2}",
            h2.gbps / d.gbps,
            h3.gbps / d.gbps,
            h3.gbps / h2.gbps
        );
        println!(
            "added rr p50  h2 {:+.0} us  h3 {:+.0} us;  connect p50  h2 {:+.0} us  h3 {:+.0} us",
            h2.rr_p50_us - d.rr_p50_us,
            h3.rr_p50_us - d.rr_p50_us,
            h2.connect_p50_us - d.connect_p50_us,
            h3.connect_p50_us - d.connect_p50_us
        );
        if let (Some(c2), Some(c3)) = (h2.cpu_s_per_gb, h3.cpu_s_per_gb) {
            println!("CPU per GB  h3/h2 {:.2}", c3 / c2);
        }
    }
}
