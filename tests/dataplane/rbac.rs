//! End-to-end L4 authorization through the `ambit` binary: the two-pod mesh, policies in the
//! local config (rewritten at run time, which ambit reloads), real curl and TCP clients.
//!
//! Each test starts from the plain two-pod config, then writes its policies and waits until
//! the server's ambit has logged the reload, so no test depends on timing guesses.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::mesh::{Mesh, MeshOpts, metric, pair_config, wait_access_line, wait_log_line};
use common::{STEP, servers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_PRINCIPAL: &str = "cluster.local/ns/a/sa/client";

/// Writes the pair config plus `policies` (a YAML `policies:` list body, or raw text) by
/// rename, then waits for the server ambit to log `needle` one more time than before.
async fn rewrite_config(mesh: &Mesh, tail: &str, needle: &str) {
    let count = |log: String| log.lines().filter(|l| l.contains(needle)).count();
    let before = count(mesh.server_ambit.log());
    let path = mesh.pair.dir.path().join("local.yaml");
    let tmp = mesh.pair.dir.path().join("local.yaml.tmp");
    std::fs::write(&tmp, format!("{}{tail}", pair_config())).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    for _ in 0..100 {
        if count(mesh.server_ambit.log()) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "server ambit did not log {needle:?}; tail:\n{}",
        mesh.server_ambit.tail(30)
    );
}

async fn set_policies(mesh: &Mesh, policies: &str) {
    rewrite_config(
        mesh,
        &format!("policies:\n{policies}"),
        "local config reloaded",
    )
    .await;
}

/// One namespace-scoped policy of the server's namespace `b` with one match.
fn policy(name: &str, action: &str, matches: &str) -> String {
    format!(
        "- name: {name}\n  namespace: b\n  scope: Namespace\n  action: {action}\n  dryRun: false\n  rules: [[[{matches}]]]\n"
    )
}

/// curl from the client pod (captured: goes through both ambits over HBONE).
async fn curl_ok(mesh: &Mesh, dst: SocketAddr) -> bool {
    let out = common::curl(&mesh.pair.client, &[&common::url(dst, "/")]).await;
    out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("hello from")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_by_principal() {
    let mesh = Mesh::start("rbac_allow_principal", MeshOpts::default()).await;
    let _app = servers::http(&mesh.pair.server, common::APP_PORT);
    let dst = common::app_addr(false);
    set_policies(
        &mesh,
        &policy(
            "allow-client",
            "Allow",
            &format!("{{principals: [!Exact \"{CLIENT_PRINCIPAL}\"]}}"),
        ),
    )
    .await;
    assert!(curl_ok(&mesh, dst).await, "the named principal is allowed");

    set_policies(
        &mesh,
        &policy(
            "allow-other",
            "Allow",
            "{principals: [!Exact \"cluster.local/ns/a/sa/other\"]}",
        ),
    )
    .await;
    assert!(!curl_ok(&mesh, dst).await, "another principal is not");
    let line = wait_access_line(
        &mesh.server_ambit,
        &["error", "error=connection denied: no ALLOW policy matched"],
    )
    .await;
    assert_eq!(
        line.get("src.identity"),
        Some(format!("spiffe://{CLIENT_PRINCIPAL}").as_str()),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_by_namespace_answers_401_before_dialling_the_app() {
    let mesh = Mesh::start("rbac_deny_namespace", MeshOpts::default()).await;
    let mut app = servers::http(&mesh.pair.server, common::APP_PORT);
    set_policies(&mesh, &policy("deny-a", "Deny", "{namespaces: [!Exact a]}")).await;
    for v6 in [false, true] {
        assert!(!curl_ok(&mesh, common::app_addr(v6)).await, "v6={v6}");
    }
    wait_access_line(
        &mesh.server_ambit,
        &["error", "error=connection denied by policy b/deny-a"],
    )
    .await;
    assert!(!app.saw_any(), "the app never saw a denied connection");
    assert!(metric(&mesh.pair.server, "ambit_connections_denied_total").await >= 2.0);
    // The client's ambit was told 401.
    wait_log_line(&mesh.client_ambit, &["401"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_by_port() {
    let mesh = Mesh::start("rbac_deny_port", MeshOpts::default()).await;
    let _denied = servers::http(&mesh.pair.server, common::APP_PORT);
    let _open = servers::http(&mesh.pair.server, common::APP_PORT + 1);
    set_policies(
        &mesh,
        &policy(
            "deny-8080",
            "Deny",
            &format!("{{destinationPorts: [{}]}}", common::APP_PORT),
        ),
    )
    .await;
    let ip = common::server_ip(false);
    assert!(!curl_ok(&mesh, SocketAddr::new(ip, common::APP_PORT)).await);
    assert!(curl_ok(&mesh, SocketAddr::new(ip, common::APP_PORT + 1)).await);
    wait_log_line(
        &mesh.server_ambit,
        &["connection denied by policy b/deny-8080"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_by_source_cidr() {
    let mesh = Mesh::start("rbac_allow_cidr", MeshOpts::default()).await;
    let _app = servers::http(&mesh.pair.server, common::APP_PORT);
    set_policies(
        &mesh,
        &policy("allow-v4-pods", "Allow", "{sourceIps: [\"10.1.0.0/24\"]}"),
    )
    .await;
    assert!(
        curl_ok(&mesh, common::app_addr(false)).await,
        "10.1.0.2 is in the CIDR"
    );
    assert!(
        !curl_ok(&mesh, common::app_addr(true)).await,
        "fd00:1::2 is not"
    );
}

/// A long-lived flow is cut within one second of a DENY being written; removing the DENY lets
/// new connections in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_added_during_a_flow_cuts_it_and_removing_it_lets_new_ones_in() {
    let mesh = Mesh::start("rbac_live_cut", MeshOpts::default()).await;
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    let mut s = mesh
        .pair
        .client
        .connect(common::app_addr(false), STEP)
        .await
        .unwrap();
    let mut buf = [0u8; 4];
    s.write_all(b"ping").await.unwrap();
    tokio::time::timeout(STEP, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping", "the flow is up");

    let written = Instant::now();
    set_policies(&mesh, &policy("deny-a", "Deny", "{namespaces: [!Exact a]}")).await;
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("the flow was not cut");
    let elapsed = written.elapsed();
    assert!(matches!(n, Ok(0) | Err(_)), "closed, got {n:?}");
    assert!(elapsed < Duration::from_secs(1), "cut after {elapsed:?}");
    wait_log_line(
        &mesh.server_ambit,
        &["connection denied by policy b/deny-a (closed after a policy change)"],
    )
    .await;
    assert_eq!(
        metric(
            &mesh.pair.server,
            "ambit_connections_closed_by_policy_total"
        )
        .await,
        1.0
    );

    rewrite_config(&mesh, "", "local config reloaded").await;
    let mut s = mesh
        .pair
        .client
        .connect(common::app_addr(false), STEP)
        .await
        .unwrap();
    s.write_all(b"pong").await.unwrap();
    tokio::time::timeout(STEP, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"pong", "new connections get in again");
}

/// A plaintext client into the captured server pod (redirected to 15006) is judged without an
/// identity: an ALLOW by principal refuses it, an ALLOW by source address lets it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_into_a_captured_pod_is_judged_without_identity() {
    let mesh = Mesh::start("rbac_plaintext", MeshOpts::default()).await;
    mesh.pair
        .server
        .nft(&format!(
            "table inet ambit_inbound {{
  chain prerouting {{
    type nat hook prerouting priority -100; policy accept;
    iifname \"eth0\" tcp dport {} redirect to :15006
  }}
}}
",
            common::APP_PORT
        ))
        .unwrap();
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    let dst = common::app_addr(false);
    // The proxy's mark exempts this socket from the client pod's outbound capture: it leaves
    // the client pod as plain TCP.
    let plain_connect = || async {
        let sock = mesh
            .pair
            .client
            .tcp_socket_with(dst, |s| s.set_mark(ambit_lab::nft::PROXY_MARK))
            .unwrap();
        tokio::time::timeout(STEP, sock.connect(dst))
            .await
            .unwrap()
            .unwrap()
    };

    set_policies(
        &mesh,
        &policy(
            "allow-client",
            "Allow",
            &format!("{{principals: [!Exact \"{CLIENT_PRINCIPAL}\"]}}"),
        ),
    )
    .await;
    let mut s = plain_connect().await;
    let _ = s.write_all(b"ping").await;
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(STEP, s.read(&mut buf)).await.unwrap();
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "closed without an answer: {r:?}"
    );
    let line = wait_access_line(
        &mesh.server_ambit,
        &[
            "error=connection denied: no ALLOW policy matched",
            "dst.addr=10.1.0.3:8080",
        ],
    )
    .await;
    assert!(
        line.has_all(&["!src.identity", "!dst.hbone_addr"]),
        "no identity on plaintext: {line}"
    );

    set_policies(
        &mesh,
        &policy("allow-src", "Allow", "{sourceIps: [\"10.1.0.2/32\"]}"),
    )
    .await;
    let mut s = plain_connect().await;
    s.write_all(b"ping").await.unwrap();
    tokio::time::timeout(STEP, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");
    assert!(
        metric(&mesh.pair.server, "ambit_hbone_inbound_handshakes_total").await == 0.0,
        "it never used HBONE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_rewrite_keeps_the_old_policy_in_force() {
    let mesh = Mesh::start("rbac_malformed", MeshOpts::default()).await;
    let _app = servers::http(&mesh.pair.server, common::APP_PORT);
    set_policies(&mesh, &policy("deny-a", "Deny", "{namespaces: [!Exact a]}")).await;
    assert!(!curl_ok(&mesh, common::app_addr(false)).await);

    rewrite_config(
        &mesh,
        "policies:\n- name: broken\n  namespace: b\n  scope: Sideways\n  action: Allow\n  dryRun: false\n  rules: []\n",
        "local config change rejected",
    )
    .await;
    let line = wait_log_line(&mesh.server_ambit, &["local config change rejected"]).await;
    assert!(
        line.contains("Sideways"),
        "the one-line error names the culprit: {line}"
    );
    assert!(
        !curl_ok(&mesh, common::app_addr(false)).await,
        "the last good DENY is still in force"
    );
}

/// An emptied file and a file cut short are what a writer caught half-way leaves: neither is
/// applied (that would drop every workload and policy); each is logged with why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_or_truncated_rewrite_keeps_the_old_config_in_force() {
    let mesh = Mesh::start("rbac_emptied", MeshOpts::default()).await;
    let _app = servers::http(&mesh.pair.server, common::APP_PORT);
    set_policies(&mesh, &policy("deny-a", "Deny", "{namespaces: [!Exact a]}")).await;
    assert!(!curl_ok(&mesh, common::app_addr(false)).await);

    let full = format!(
        "{}policies:\n{}",
        pair_config(),
        policy("deny-a", "Deny", "{namespaces: [!Exact a]}")
    );
    let cut = &full[..full.len() - 25];
    for (text, why) in [("", "the file has no content"), (cut, "line")] {
        let before = mesh
            .server_ambit
            .log()
            .matches("local config change rejected")
            .count();
        let path = mesh.pair.dir.path().join("local.yaml");
        // Written in place, the way a writer that truncates first leaves it.
        std::fs::write(&path, text).unwrap();
        let mut line = String::new();
        for _ in 0..100 {
            let log = mesh.server_ambit.log();
            if log.matches("local config change rejected").count() > before {
                line = log
                    .lines()
                    .rfind(|l| l.contains("local config change rejected"))
                    .unwrap_or_default()
                    .to_string();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(line.contains(why), "{text:?} is refused with why: {line:?}");
        assert!(
            !curl_ok(&mesh, common::app_addr(false)).await,
            "the last good DENY is still in force after {text:?}"
        );
    }
}

/// The proxy's own stats (15020) and readiness (15021) ports, which a dedicated-mode proxy binds
/// on every address of its pod, are that pod's ports like any other: an authenticated peer
/// reaches them through HBONE, and a policy restricts them as it restricts any port (as in
/// ztunnel; they are open in plaintext to the network anyway, for scrapers and the kubelet).
/// The admin port is bound to loopback and never reached through the mesh (`ops::reporting`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_stats_and_readiness_ports_are_pod_ports_under_policy() {
    let mesh = Mesh::start("rbac_proxy_ports", MeshOpts::default()).await;
    let _app = servers::http(&mesh.pair.server, common::APP_PORT);
    let stats = SocketAddr::new(common::server_ip(false), 15020);
    let ready = SocketAddr::new(common::server_ip(false), 15021);
    // The client pod is captured: these go through both proxies over HBONE.
    let r = ambit_lab::http_get(&mesh.pair.client, stats, "/stats/prometheus", STEP)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("istio_build"), "{}", r.body);
    let r = ambit_lab::http_get(&mesh.pair.client, ready, "/healthz/ready", STEP)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    set_policies(
        &mesh,
        &policy(
            "deny-proxy-ports",
            "Deny",
            "{destinationPorts: [15020, 15021]}",
        ),
    )
    .await;
    for addr in [stats, ready] {
        let r = ambit_lab::http_get(&mesh.pair.client, addr, "/", Duration::from_secs(3)).await;
        assert!(r.is_err(), "{addr} answered despite the policy: {r:?}");
    }
    assert!(
        curl_ok(&mesh, common::app_addr(false)).await,
        "the app's port is not affected"
    );
}
