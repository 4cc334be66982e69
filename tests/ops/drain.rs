//! End-to-end operating behaviour of the `ambit` binary in the two-pod mesh: a denied
//! connection in the failed-connections family and the access log, and graceful drain (by
//! SIGTERM on the client's ambit, by `POST /quitquitquit` on the server's, whose HBONE server
//! sends GOAWAY): a flow that ends before `CONNECTION_TERMINATION_DEADLINE` completes intact,
//! one that does not is closed at the deadline, nothing new is accepted, readiness is false
//! meanwhile, and the process exits 0.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit_lab::{Netns, Process, http_get};
use common::mesh::{Mesh, MeshOpts, echo_once, pair_config, sample, scrape, wait_access_line};
use common::{STEP, servers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The drain deadline the draining ambit runs with.
const DEADLINE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_connection_is_counted_as_failed_with_deny_and_logged() {
    let mesh = Mesh::start("ops_deny", MeshOpts::default()).await;
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    // Rewrite the local config with a policy denying namespace `a`; wait for the reload.
    let before = mesh
        .server_ambit
        .log()
        .matches("local config reloaded")
        .count();
    let dir = mesh.pair.dir.path();
    std::fs::write(
        dir.join("local.yaml.tmp"),
        format!(
            "{}policies:\n- name: deny-a\n  namespace: b\n  scope: Namespace\n  action: Deny\n  dryRun: false\n  rules: [[[{{namespaces: [!Exact a]}}]]]\n",
            pair_config()
        ),
    )
    .unwrap();
    std::fs::rename(dir.join("local.yaml.tmp"), dir.join("local.yaml")).unwrap();
    for _ in 0..100 {
        if mesh
            .server_ambit
            .log()
            .matches("local config reloaded")
            .count()
            > before
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The client's connect may succeed (its own ambit accepts), but no byte comes back.
    if let Ok(mut s) = mesh
        .pair
        .client
        .connect(common::app_addr(false), STEP)
        .await
    {
        let _ = s.write_all(b"hello").await;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(STEP, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "a denied connection echoed {:?}", &buf[..n]);
    }
    let labels = [
        "reporter=\"destination\"",
        "source_workload=\"client\"",
        "destination_workload=\"server\"",
        "source_principal=\"spiffe://cluster.local/ns/a/sa/client\"",
        "response_flags=\"DENY\"",
    ];
    let mut text = String::new();
    for _ in 0..50 {
        text = scrape(&mesh.pair.server).await;
        if sample(&text, "istio_tcp_connections_failed_total", &labels) == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(&text, "istio_tcp_connections_failed_total", &labels),
        Some(1),
        "{text}"
    );
    // Opened and closed balance for the denied connection too.
    assert_eq!(
        sample(&text, "istio_tcp_connections_closed_total", &labels),
        Some(1),
        "{text}"
    );
    let line = wait_access_line(
        &mesh.server_ambit,
        &["error", "error*=connection denied by policy b/deny-a"],
    )
    .await;
    assert_eq!(
        line.get("src.identity"),
        Some("spiffe://cluster.local/ns/a/sa/client"),
        "{line}"
    );
}

/// Two echo flows through the mesh, opened before the drain: `short` will end during the drain,
/// `long` will outlive the deadline.
struct Flows {
    short: TcpStream,
    long: TcpStream,
}

async fn open_flows(mesh: &Mesh) -> Flows {
    let dst = common::app_addr(false);
    let mut short = mesh.pair.client.connect(dst, STEP).await.unwrap();
    let mut long = mesh.pair.client.connect(dst, STEP).await.unwrap();
    echo_once(&mut short, b"short flow, before the drain").await;
    echo_once(&mut long, b"long flow, before the drain").await;
    Flows { short, long }
}

/// Waits (bounded) until `ns`'s readiness answers 500 naming `draining`.
async fn wait_not_ready_draining(ns: &Netns) {
    let addr = SocketAddr::from(([127, 0, 0, 1], 15021));
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(r) = http_get(ns, addr, "/healthz/ready", STEP).await {
            if r.status == 500 && r.body.contains("draining") {
                return;
            }
            last = format!("{} {}", r.status, r.body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("readiness never reported draining; last: {last}");
}

/// The checks while and after `p` drains; `drain_started` is when the drain was asked for.
async fn check_drain(mesh: &Mesh, flows: Flows, drain_started: Instant) {
    let Flows {
        mut short,
        mut long,
    } = flows;
    // The short flow keeps working inside the drain, then ends cleanly, intact.
    let tail: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    echo_once(&mut short, &tail).await;
    short.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, short.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "{} stray bytes", rest.len());
    assert!(drain_started.elapsed() < DEADLINE, "short flow too slow");

    // Nothing new gets through the draining proxy.
    if let Ok(mut s) = mesh
        .pair
        .client
        .connect(common::app_addr(false), Duration::from_secs(3))
        .await
    {
        let _ = s.write_all(b"new").await;
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(STEP, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "a connection opened during the drain was served");
    }

    // The long flow still works before the deadline, and is closed at it.
    echo_once(&mut long, b"long flow, inside the drain").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(DEADLINE + STEP, long.read(&mut buf))
        .await
        .expect("long flow was not closed at the deadline")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let closed_after = drain_started.elapsed();
    assert!(
        closed_after >= DEADLINE - Duration::from_millis(200),
        "closed before the deadline: {closed_after:?}"
    );
}

/// Waits (bounded) for `p` to exit and asserts exit code 0.
async fn wait_exit_0(p: &mut Process) {
    for _ in 0..200 {
        if let Some(status) = p.try_status() {
            assert!(status.success(), "{status}; tail:\n{}", p.tail(30));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} did not exit; tail:\n{}", p.name(), p.tail(30));
}

fn deadline_env() -> Vec<(&'static str, String)> {
    vec![("CONNECTION_TERMINATION_DEADLINE", "3s".to_string())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_outbound_side_then_exits_0() {
    let mut mesh = Mesh::start(
        "ops_drain_term",
        MeshOpts {
            client_env: deadline_env(),
            ..MeshOpts::default()
        },
    )
    .await;
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    let flows = open_flows(&mesh).await;
    let started = Instant::now();
    let out = std::process::Command::new("kill")
        .args(["-TERM", &mesh.client_ambit.pid().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_not_ready_draining(&mesh.pair.client).await;
    check_drain(&mesh, flows, started).await;
    wait_exit_0(&mut mesh.client_ambit).await;
    let log = mesh.client_ambit.log();
    assert!(log.contains("closed at the drain deadline"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_drains_the_inbound_side_and_answers_when_done() {
    let mut mesh = Mesh::start(
        "ops_drain_quit",
        MeshOpts {
            server_env: deadline_env(),
            ..MeshOpts::default()
        },
    )
    .await;
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    let flows = open_flows(&mesh).await;
    let started = Instant::now();
    let server_ns = &mesh.pair.server;
    let quit = async {
        let out = common::curl(
            server_ns,
            &["-X", "POST", "http://127.0.0.1:15000/quitquitquit"],
        )
        .await;
        (out, started.elapsed())
    };
    let checks = async {
        wait_not_ready_draining(server_ns).await;
        check_drain(&mesh, flows, started).await;
    };
    let ((out, answered_after), ()) = tokio::join!(quit, checks);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "shutdown now\n");
    // The answer came once the drain was over: after the long flow's deadline.
    assert!(answered_after >= DEADLINE, "{answered_after:?}");
    wait_exit_0(&mut mesh.server_ambit).await;
}
