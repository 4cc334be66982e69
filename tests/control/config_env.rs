//! The real `ambit` binary started as Istio's ztunnel chart starts it (`proxy ztunnel`, a
//! scheme-less control-plane address): it stays up while the control plane is unreachable,
//! retries with backoff and reports not ready; and it raises its open-file soft limit to the
//! hard limit at start. Each test runs ambit in its own network namespace (loopback only), so
//! nothing it tries to reach leaves the namespace.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::{Netns, Process, ProcessSpec, http_get};
use common::mesh::AMBIT;

/// A dedicated-mode ambit whose only control plane is Istio's default, unreachable here.
fn chart_like(
    name: &str,
    program: &str,
    pre_args: &[&str],
    ca_dir: &std::path::Path,
) -> ProcessSpec {
    let mut spec = ProcessSpec::new(name, program);
    for a in pre_args {
        spec = spec.arg(*a);
    }
    spec.arg("proxy")
        .arg("ztunnel")
        .env("PROXY_MODE", "dedicated")
        .env("PROXY_WORKLOAD_INFO", "a/client/client")
        .env("FAKE_CA", "true")
        .env("CA_ADDRESS", "")
        .env("XDS_ADDRESS", "istiod.istio-system.svc:15012")
        .env("XDS_ROOT_CA", "SYSTEM")
        .env("AMBIT_CA_DIR", ca_dir.display().to_string())
        .env("RUST_LOG", "info")
}

/// Lines of `p`'s log that contain `needle`, waiting (bounded) until there are at least `n`.
async fn wait_lines(p: &mut Process, needle: &str, n: usize) -> Vec<String> {
    for _ in 0..150 {
        p.ensure_running()
            .unwrap_or_else(|e| panic!("{e}\n{}", p.tail(40)));
        let lines: Vec<String> = p
            .log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "fewer than {n} lines contain {needle:?}; tail:\n{}",
        p.tail(40)
    );
}

#[tokio::test]
async fn unreachable_scheme_less_control_plane_is_retried_and_not_ready() {
    let dir = common::TempDir::new("config_env_unreachable");
    let ns = Netns::new("cfgxds").unwrap_or_else(|e| panic!("{e}"));
    let spec = chart_like("ambit", AMBIT, &[], &dir.path().join("ca"));
    let mut p = Process::spawn(Some(&ns), &spec, dir.path()).unwrap();

    // Three failed attempts: the process is still up and backs off between them.
    let retries = wait_lines(&mut p, "xDS stream ended; reconnecting", 3).await;
    assert!(
        retries.iter().all(|l| l.contains("retry_in")),
        "{retries:?}"
    );
    let log = p.log();
    assert!(
        log.contains(r#"\"xdsAddress\":\"https://istiod.istio-system.svc:15012\""#)
            || log.contains(r#""xdsAddress":"https://istiod.istio-system.svc:15012""#),
        "the scheme-less address is used with https://; log:\n{}",
        p.tail(40)
    );
    assert!(
        !log.contains("is not supported"),
        "the scheme is not refused:\n{}",
        p.tail(40)
    );

    let ready = SocketAddr::from(([127, 0, 0, 1], 15021));
    let resp = http_get(&ns, ready, "/healthz/ready", common::STEP)
        .await
        .unwrap();
    assert_ne!(
        resp.status, 200,
        "ready without a control plane: {}",
        resp.body
    );
    // As ztunnel: 500, naming the xDS state it waits for as ztunnel does.
    assert_eq!(resp.status, 500, "{}", resp.body);
    assert!(
        resp.body.contains("state manager"),
        "names what it waits for: {}",
        resp.body
    );
    p.ensure_running()
        .unwrap_or_else(|e| panic!("{e}\n{}", p.tail(40)));
}

#[tokio::test]
async fn open_file_soft_limit_is_raised_to_the_hard_limit() {
    let dir = common::TempDir::new("config_env_nofile");
    let ns = Netns::new("cfgnofile").unwrap_or_else(|e| panic!("{e}"));
    // prlimit sets 1024/4096 on itself and execs ambit in place: the pid stays ambit's.
    let spec = chart_like(
        "ambit",
        "prlimit",
        &["--nofile=1024:4096", AMBIT],
        &dir.path().join("ca"),
    );
    let mut p = Process::spawn(Some(&ns), &spec, dir.path()).unwrap();
    wait_lines(&mut p, "set file descriptor limits from 1024 to 4096", 1).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.pid())).unwrap();
    let nofile: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    // "Max open files <soft> <hard> files"
    assert_eq!(&nofile[3..5], ["4096", "4096"], "{limits}");
}

#[tokio::test]
async fn unknown_arguments_are_a_usage_error() {
    let out = tokio::time::timeout(
        common::STEP,
        tokio::process::Command::new(AMBIT)
            .args(["proxy", "sidecar"])
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ambit: unknown proxy kind \"sidecar\": expected `proxy` or `proxy ztunnel`\n"
    );
}

#[tokio::test]
async fn bad_values_are_one_line_errors_naming_the_variable() {
    for (var, value, want) in [
        (
            "KEEPALIVE_TIME",
            "3 fortnights",
            "ambit: KEEPALIVE_TIME=\"3 fortnights\": not a duration (e.g. 500ms, 90s, 3min, \
             1h 30m, 1d, 1w)\n",
        ),
        (
            "XDS_ADDRESS",
            "istiod svc:15012",
            "ambit: XDS_ADDRESS=\"istiod svc:15012\": not an address (host:port or \
             https://host:port): invalid uri character\n",
        ),
        (
            "AUTH_TOKEN",
            "/no/such/token",
            "ambit: AUTH_TOKEN=\"/no/such/token\": no such file\n",
        ),
    ] {
        let out = tokio::time::timeout(
            common::STEP,
            tokio::process::Command::new(AMBIT)
                .env("LOCAL_XDS", "{}")
                .env("FAKE_CA", "true")
                .env(var, value)
                .stdin(std::process::Stdio::null())
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), want);
    }
}
