//! End-to-end tests of operating ambit: Istio L4 metrics from both reporters after a known
//! transfer (checked by `promtool`), the access log, and the admin port's loopback-only bind;
//! `ambit ctl` against a lab is the sibling module `ctl`.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::http_get;
use common::mesh::{Mesh, MeshOpts, sample, scrape, wait_access_line};
use common::{STEP, servers};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_counters_match_a_known_transfer_from_both_reporters() {
    let mesh = Mesh::start("ops_metrics", MeshOpts::default()).await;
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    const N: usize = 123_457;
    let dst = common::app_addr(false);
    let mut s = mesh.pair.client.connect(dst, STEP).await.unwrap();
    let payload: Vec<u8> = (0..N).map(|i| (i % 253) as u8).collect();
    common::mesh::echo_all(&mut s, &payload, "echo").await;
    let n = N as u64;
    let client = [
        "reporter=\"source\"",
        "source_workload=\"client\"",
        "destination_workload=\"server\"",
        "source_workload_namespace=\"a\"",
        "destination_workload_namespace=\"b\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let server = [
        "reporter=\"destination\"",
        "source_workload=\"client\"",
        "destination_workload=\"server\"",
        "source_principal=\"spiffe://cluster.local/ns/a/sa/client\"",
        "destination_principal=\"spiffe://cluster.local/ns/b/sa/server\"",
    ];
    // Bounded wait for both proxies to record the close.
    let mut last = (String::new(), String::new());
    for _ in 0..50 {
        let (c, sv) = (
            scrape(&mesh.pair.client).await,
            scrape(&mesh.pair.server).await,
        );
        let done = sample(&c, "istio_tcp_connections_closed_total", &client) == Some(1)
            && sample(&sv, "istio_tcp_connections_closed_total", &server) == Some(1);
        last = (c, sv);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (c, sv) = last;
    for (text, labels) in [(&c, &client[..]), (&sv, &server[..])] {
        assert_eq!(
            sample(text, "istio_tcp_connections_opened_total", labels),
            Some(1),
            "{text}"
        );
        assert_eq!(
            sample(text, "istio_tcp_connections_closed_total", labels),
            Some(1),
            "{text}"
        );
        assert_eq!(
            sample(text, "istio_tcp_received_bytes_total", labels),
            Some(n),
            "{text}"
        );
        assert_eq!(
            sample(text, "istio_tcp_sent_bytes_total", labels),
            Some(n),
            "{text}"
        );
    }
    // promtool accepts the exposition.
    for text in [&c, &sv] {
        let mut child = tokio::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .await
            .unwrap();
        let out = tokio::time::timeout(STEP, child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        // The only lint allowed: ztunnel's own `workload_manager_*_proxy_count` gauge names,
        // kept for compatibility (wire.md §4). Parse errors and any other lint fail.
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let unexpected: Vec<&str> = report
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| {
                !(l.starts_with("workload_manager_")
                    && l.contains("should not have \"_count\" suffix"))
            })
            .collect();
        assert!(unexpected.is_empty(), "promtool: {report}");
        assert!(
            out.status.success() || !report.is_empty(),
            "promtool: {report}"
        );
    }
    let line = wait_access_line(
        &mesh.server_ambit,
        &[
            "connection complete",
            "direction=inbound",
            "src.workload=client",
        ],
    )
    .await;
    let n = n.to_string();
    assert_eq!(line.get("bytes_sent"), Some(n.as_str()), "{line}");
    assert_eq!(line.get("bytes_recv"), Some(n.as_str()), "{line}");
    assert!(
        line.has_all(&["dst.workload=server", "dst.namespace=b", "src.namespace=a"]),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_on_localhost_only() {
    let mesh = Mesh::start("ops_admin", MeshOpts::default()).await;
    let ns = &mesh.pair.server;
    let local = http_get(ns, SocketAddr::from(([127, 0, 0, 1], 15000)), "/", STEP)
        .await
        .unwrap();
    assert_eq!(local.status, 200, "{}", local.body);
    assert!(local.body.contains("/quitquitquit"), "{}", local.body);
    for ip in [common::server_ip(false), common::server_ip(true)] {
        let addr = SocketAddr::new(ip, 15000);
        // From inside the pod on its own address and from the other pod (both captured and
        // tunnelled, so the TCP connect itself may succeed): no HTTP answer comes back.
        for from in [ns, &mesh.pair.client] {
            let r = http_get(from, addr, "/", Duration::from_secs(3)).await;
            assert!(r.is_err(), "{addr} answered: {:?}", r.map(|r| r.status));
        }
    }
}
