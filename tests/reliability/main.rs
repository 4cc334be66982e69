//! Reliability under resource pressure and hostile clients, two pods each with its ambit:
//! descriptor limits (a low soft limit is raised; real exhaustion pauses the accept loop,
//! logs a bounded number of lines and recovers), and connections to 15008 that never finish a
//! TLS handshake (shed per source, closed at the deadline); then the fast cases of
//! `ambit-lab chaos` on the lab. These are the fast rows of `RELIABILITY.md`; the long ones
//! are a command developers run.
//!
//! A test binary of its own, unlike the other end-to-end tests: its cases load both cores and
//! hold thousands of descriptors, so they run one at a time (`SERIAL`) and, cargo running test
//! binaries one after another, with no other test of the suite beside them.

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::mesh::{Mesh, MeshOpts, echo_once, sample, scrape};
use common::{STEP, servers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The cases here load both cores; run them one at a time so each is judged on its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// This test process holds both ends of thousands of connections (the clients and the echo
/// server): raise its own descriptor limit (root may raise the hard one too).
fn raise_own_nofile(at_least: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let hard = hard.max(at_least);
    if soft < at_least {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit RLIMIT_NOFILE");
    }
}

/// `(soft, hard)` open-file limits of a running process, from `/proc/<pid>/limits`.
fn nofile_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-files line in {limits}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

/// Lines of `log` that contain `needle`.
fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_under_a_1024_soft_limit_all_succeed() {
    let _one_at_a_time = SERIAL.lock().await;
    raise_own_nofile(12_000);
    const N: usize = 5_000;
    let mesh = Mesh::start(
        "rel_nofile",
        MeshOpts {
            client_nofile: Some("1024:20000"),
            server_nofile: Some("1024:20000"),
            ..Default::default()
        },
    )
    .await;
    for p in [&mesh.client_ambit, &mesh.server_ambit] {
        assert_eq!(
            nofile_of(p.pid()),
            ("20000".to_string(), "20000".to_string()),
            "{} raised its soft limit to the hard one",
            p.name()
        );
        assert_eq!(
            count_lines(&p.log(), "set file descriptor limits from 1024 to 20000"),
            1,
            "{}",
            p.tail(20)
        );
    }
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    let dst = common::app_addr(false);
    // All open at once: each holds a descriptor in the client's ambit and one in the server's.
    let mut flows = Vec::with_capacity(N);
    for i in 0..N {
        let s = mesh
            .pair
            .client
            .connect(dst, STEP)
            .await
            .unwrap_or_else(|e| panic!("connection {i} of {N}: {e}"));
        flows.push(s);
    }
    for (i, s) in flows.iter_mut().enumerate() {
        echo_once(s, format!("flow {i}\n").as_bytes()).await;
    }
    let text = scrape(&mesh.pair.server).await;
    let opened = sample(
        &text,
        "istio_tcp_connections_opened_total",
        &["reporter=\"destination\""],
    )
    .unwrap_or(0);
    assert!(
        opened >= N as u64,
        "the server proxy opened {opened} connections"
    );
    let sockets = sample(
        &scrape(&mesh.pair.client).await,
        "istio_tcp_sockets_open",
        &["reporter=\"source\""],
    );
    assert_eq!(sockets, Some(N as u64), "every flow is still open");
    drop(flows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_descriptors_pause_the_accept_loop_and_it_recovers() {
    let _one_at_a_time = SERIAL.lock().await;
    raise_own_nofile(4_000);
    let mesh = Mesh::start(
        "rel_exhaust",
        MeshOpts {
            // A hard limit too: the proxy cannot raise itself out of this one.
            client_nofile: Some("160:160"),
            ..Default::default()
        },
    )
    .await;
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    let dst = common::app_addr(false);
    // More connections than the client proxy has descriptors: the rest wait in its accept
    // queue (or never connect) while `accept` fails with EMFILE.
    let mut held: Vec<TcpStream> = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = mesh
            .pair
            .client
            .connect(dst, Duration::from_millis(500))
            .await
        {
            held.push(s);
        }
    }
    // Bounded wait for the first report of the failing accept.
    let proxy = &mesh.client_ambit;
    let mut first = None;
    for _ in 0..100 {
        if count_lines(&proxy.log(), "accept failed") > 0 {
            first = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = first.unwrap_or_else(|| {
        panic!(
            "no accept failure after {} connections:\n{}",
            held.len(),
            proxy.tail(30)
        )
    });
    let cpu_before = cpu_ticks(proxy.pid());
    // The exhausted period we observe: a spinning loop would retry ~10^5 times a second here.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = cpu_ticks(proxy.pid()) - cpu_before;
    drop(held);
    // Recovery: a new flow through the proxy succeeds (bounded retries: the loop pauses at
    // most a second between accepts).
    let mut recovered = false;
    for _ in 0..50 {
        if let Ok(mut s) = mesh.pair.client.connect(dst, STEP).await {
            s.write_all(b"back\n").await.unwrap();
            let mut buf = [0u8; 5];
            if tokio::time::timeout(STEP, s.read_exact(&mut buf))
                .await
                .is_ok_and(|r| r.is_ok())
                && &buf == b"back\n"
            {
                recovered = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovered,
        "no flow after the descriptors came back:\n{}",
        proxy.tail(30)
    );
    let text = scrape(&mesh.pair.client).await;
    let failures = sample(
        &text,
        "ambit_accept_failures_total",
        &["listener=\"outbound\""],
    )
    .expect("accept failures are counted");
    let secs = first.elapsed().as_secs() + 1;
    eprintln!(
        "exhausted for ~{secs} s: {failures} failed accepts, {cpu} CPU ticks in the 3 s window"
    );
    assert!(failures >= 1);
    // Pauses double from 5 ms to 1 s (about 8 tries in the first second, then one a second),
    // and start over after an accept that succeeds, which happens whenever a descriptor frees
    // up. A loop that does not pause retries ~10^5 times a second and keeps a core busy.
    assert!(
        failures <= 20 + 10 * secs,
        "{failures} failed accepts in ~{secs} s: the loop is not pausing"
    );
    assert!(
        cpu < 100,
        "{cpu} CPU ticks (1/100 s) in a 3 s window of exhaustion: the loop is spinning"
    );
    // One report per listener and 10 s interval.
    let reports = count_lines(&proxy.log(), "accept failed");
    assert!(
        reports <= 4 * (1 + secs as usize / 10 + 1),
        "{reports} report lines in ~{secs} s:\n{}",
        proxy.tail(30)
    );
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_partial_handshakes_are_shed_and_closed_at_the_deadline() {
    let _one_at_a_time = SERIAL.lock().await;
    raise_own_nofile(4_000);
    const SILENT: usize = 2_000;
    const CAP: u64 = 64;
    let mesh = Mesh::start(
        "rel_silent",
        MeshOpts {
            server_env: vec![
                ("AMBIT_HANDSHAKE_TIMEOUT", "2s".into()),
                ("AMBIT_MAX_PENDING_HANDSHAKES_PER_SOURCE", CAP.to_string()),
            ],
            ..Default::default()
        },
    )
    .await;
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    // From inside the server pod (no capture there): straight to its HBONE port. Every other
    // connection sends the first 11 bytes of a ClientHello and stops.
    let hbone = SocketAddr::new(common::server_ip(false), 15008);
    let partial = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let mut silent = Vec::with_capacity(SILENT);
    for i in 0..SILENT {
        let mut s = mesh.pair.server.connect(hbone, STEP).await.unwrap();
        if i % 2 == 1 {
            let _ = s.write_all(&partial).await;
        }
        silent.push(s);
    }
    // The mesh keeps working for everyone else meanwhile.
    let mut flow = mesh
        .pair
        .client
        .connect(common::app_addr(false), STEP)
        .await
        .unwrap();
    echo_once(&mut flow, b"still served\n").await;
    // The server closes every one of them: at once beyond the cap, at the deadline otherwise.
    let limit = Duration::from_secs(20);
    for (i, s) in silent.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(limit, s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "connection {i} still open after {limit:?}: {read:?}"
        );
    }
    let text = scrape(&mesh.pair.server).await;
    let shed = sample_plain(&text, "ambit_hbone_inbound_handshakes_shed_total");
    let timeouts = sample_plain(&text, "ambit_hbone_inbound_handshake_timeouts_total");
    assert_eq!(
        shed + timeouts,
        SILENT as u64,
        "every silent connection was shed or timed out:\n{text}"
    );
    assert!(timeouts >= CAP, "the first {CAP} waited for the deadline");
    assert!(shed > 0, "the cap turned some away at once");
    // The echo flow's own connection is the only one the server proxy still serves.
    assert_eq!(
        sample(
            &text,
            "istio_tcp_sockets_open",
            &["reporter=\"destination\""]
        ),
        Some(1),
        "{text}"
    );
    drop(flow);
}

/// The value of an unlabelled sample.
fn sample_plain(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// The fast chaos cases (`ambit-lab chaos --fast`) against the workspace's ambit: control
/// plane down, agent restart, proxy kill, link flap, packet loss, silent handshakes. Every
/// case must pass: flows that should survive deliver every byte, no denied caller gets in,
/// new connections work again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_chaos_cases_pass() {
    let _one_at_a_time = SERIAL.lock().await;
    use ambit_lab::chaos::{self, Case, ChaosOptions, Scale};
    let opts = ChaosOptions {
        proxy: common::mesh::AMBIT.into(),
        cases: Case::FAST.to_vec(),
        scale: Scale::Fast,
    };
    let rows = chaos::run(&opts).await;
    let table = chaos::table(&rows);
    eprintln!("{table}");
    assert_eq!(rows.len(), Case::FAST.len());
    if let Err(e) = chaos::check(&rows) {
        panic!("{e}\n{table}");
    }
    assert!(
        rows.iter()
            .all(|r| r.wrongly_admitted == 0 && r.bytes_lost == 0)
    );
}
