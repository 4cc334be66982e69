//! The whole mesh on the lab with the workspace's `ambit` as node proxy, and unmodified programs
//! in the pods: the demo scenario; `curl`, `iperf3` and `nc` pod to pod across nodes and on one
//! node, with bytes verified and the client's SPIFFE identity in the server-side proxy's log.
//!
//! The `shared_*` tests run one ambit per node, told about its pods by the lab's node agent over
//! ZDS (in-pod mode, the default); their dedicated-mode twins run one ambit inside each captured
//! pod. `AMBIT_LAB_PROXY=<binary>` runs them all against another
//! ztunnel-compatible node proxy instead of the workspace's `ambit`.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::accesslog;
use ambit_lab::traffic::{Server, ServerKind};
use ambit_lab::{Lab, LabOptions, Process, ProcessSpec, ProxyMode, Topology, demo};

const STEP: Duration = Duration::from_secs(20);
const DEMO: &str = include_str!("../../examples/demo.yaml");

async fn lab(mode: ProxyMode) -> Lab {
    let opts = LabOptions {
        proxy: Some(crate::common::mesh::proxy_under_test()),
        mode,
        ..LabOptions::default()
    };
    Lab::start(Topology::from_yaml(DEMO).unwrap(), opts)
        .await
        .unwrap()
}

fn leftovers(run_id: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("-{run_id}-")))
        .map(str::to_string)
        .collect()
}

async fn demo_passes(mode: ProxyMode) {
    let lab = lab(mode).await;
    let run = lab.run_id().to_string();
    let report = demo::run(&lab, demo::demo_flows(&lab).unwrap())
        .await
        .unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert_eq!(report.flows.len(), 5);
    drop(lab);
    assert_eq!(leftovers(&run), Vec::<String>::new());
}

/// Waits (bounded) until the server-side proxy of `pod` logged an inbound connection from
/// `client` with `identity`.
async fn wait_identity(lab: &Lab, pod: &str, client: &str, identity: &str) {
    let proxy = lab.proxy_for(pod).unwrap();
    let want = format!("src.identity={identity}");
    let src = format!("src.addr^={}:", lab.topology().pod(client).unwrap().ip);
    for _ in 0..100 {
        let log = proxy.log();
        if !accesslog::access_lines(&log, &["direction=inbound", &want, &src]).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} never logged {want} from {src}:\n{}",
        proxy.name(),
        proxy.tail(20)
    );
}

fn target(lab: &Lab, pod: &str, port: u16) -> SocketAddr {
    SocketAddr::from((lab.topology().pod(pod).unwrap().ip, port))
}

async fn curl_across_and_within(mode: ProxyMode) {
    let lab = lab(mode).await;
    let client = lab.topology().pod("client").unwrap().clone();
    let mut servers = Vec::new();
    for pod in ["web-1", "web-2"] {
        servers.push(Server::start(lab.pod_ns(pod).unwrap(), ServerKind::Http, 8080).unwrap());
        let url = format!("http://{}/", target(&lab, pod, 8080));
        let out = lab
            .pod_ns("client")
            .unwrap()
            .exec(&["curl", "-sS", "-m", "10", &url], STEP)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(body.trim(), format!("peer {}", client.ip));
        wait_identity(&lab, pod, "client", &client.spiffe()).await;
    }
}

/// Waits (bounded) for a TCP listener on `port` inside `pod`.
async fn wait_listening(lab: &Lab, pod: &str, port: u16) {
    let ns = lab.pod_ns(pod).unwrap();
    let filter = format!("sport = :{port}");
    for _ in 0..100 {
        if ns
            .run(&["ss", "-Hltn", &filter])
            .is_ok_and(|o| !o.trim().is_empty())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port} in {pod}");
}

async fn iperf3_across_and_within(mode: ProxyMode) {
    let lab = lab(mode).await;
    let client = lab.topology().pod("client").unwrap().clone();
    for pod in ["web-2", "web-1"] {
        let spec = ProcessSpec::new(format!("iperf3-server-{pod}"), "iperf3")
            .arg("-s")
            .arg("-1")
            .arg("-p")
            .arg("5201");
        let _server = Process::spawn(Some(lab.pod_ns(pod).unwrap()), &spec, lab.run_dir()).unwrap();
        wait_listening(&lab, pod, 5201).await;
        let ip = target(&lab, pod, 5201).ip().to_string();
        let out = lab
            .pod_ns("client")
            .unwrap()
            .exec(
                &["iperf3", "-c", &ip, "-p", "5201", "-n", "64M", "-J"],
                STEP,
            )
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "iperf3 to {pod}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let sent = json["end"]["sum_sent"]["bytes"].as_u64().unwrap();
        let received = json["end"]["sum_received"]["bytes"].as_u64().unwrap();
        assert!(sent >= 64 * 1024 * 1024, "{pod}: sent {sent}");
        // iperf3's server stops counting when TEST_END arrives on the control connection, which
        // can overtake data still buffered along the path: the HTTP/2 connection window (16 MiB)
        // plus four autotuned socket buffers, seen up to 24 MiB on a loaded machine. Exact byte
        // checks are nc's job; here most of the transfer must have been counted by the server.
        let in_flight = sent.saturating_sub(received);
        assert!(
            in_flight <= sent / 2,
            "{pod}: received {received} of {sent}"
        );
        wait_identity(&lab, pod, "client", &client.spiffe()).await;
    }
}

async fn nc_across_and_within(mode: ProxyMode) {
    let lab = lab(mode).await;
    let client = lab.topology().pod("client").unwrap().clone();
    let payload = lab.run_dir().join("nc-payload");
    let data: Vec<u8> = (0..500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&payload, &data).unwrap();
    for pod in ["web-2", "web-1"] {
        let name = format!("nc-server-{pod}");
        let spec = ProcessSpec::new(&name, "nc").arg("-l").arg("9000");
        let mut server =
            Process::spawn(Some(lab.pod_ns(pod).unwrap()), &spec, lab.run_dir()).unwrap();
        wait_listening(&lab, pod, 9000).await;
        let ip = target(&lab, pod, 9000).ip().to_string();
        let cmd = format!("nc -N {ip} 9000 < {}", payload.display());
        let out = lab
            .pod_ns("client")
            .unwrap()
            .exec(&["sh", "-c", &cmd], STEP)
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "nc to {pod}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The server exits after its one connection ends; then its log holds exactly the payload.
        for _ in 0..200 {
            if server.try_status().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = std::fs::read(server.log_path()).unwrap();
        assert_eq!(got.len(), data.len(), "bytes at {pod}");
        assert!(got == data, "payload differs at {pod}");
        wait_identity(&lab, pod, "client", &client.spiffe()).await;
    }
}

#[tokio::test]
async fn demo_scenario_passes() {
    demo_passes(ProxyMode::Dedicated).await;
}

#[tokio::test]
async fn curl_pod_to_pod() {
    curl_across_and_within(ProxyMode::Dedicated).await;
}

#[tokio::test]
async fn iperf3_pod_to_pod() {
    iperf3_across_and_within(ProxyMode::Dedicated).await;
}

#[tokio::test]
async fn nc_pod_to_pod() {
    nc_across_and_within(ProxyMode::Dedicated).await;
}

#[tokio::test]
async fn shared_demo_scenario_passes() {
    demo_passes(ProxyMode::Shared).await;
}

#[tokio::test]
async fn shared_curl_pod_to_pod() {
    curl_across_and_within(ProxyMode::Shared).await;
}

#[tokio::test]
async fn shared_iperf3_pod_to_pod() {
    iperf3_across_and_within(ProxyMode::Shared).await;
}

#[tokio::test]
async fn shared_nc_pod_to_pod() {
    nc_across_and_within(ProxyMode::Shared).await;
}

/// Node proxy restarted, then node agent restarted: pods are announced again by snapshot and new
/// connections work each time.
#[tokio::test]
async fn shared_proxy_and_agent_restarts() {
    use ambit_lab::traffic::bulk_send;
    let mut lab = lab(ProxyMode::Shared).await;
    let _s = Server::start(lab.pod_ns("web-2").unwrap(), ServerKind::Sink, 8080).unwrap();
    let dst = target(&lab, "web-2", 8080);
    async fn send(
        lab: &Lab,
        dst: SocketAddr,
    ) -> Result<ambit_lab::traffic::BulkResult, ambit_lab::LabError> {
        bulk_send(lab.pod_ns("client").unwrap(), dst, 100_000, STEP).await
    }
    assert_eq!(send(&lab, dst).await.unwrap().reply.bytes, 100_000);
    lab.restart_proxy("node-2").await.unwrap();
    assert_eq!(send(&lab, dst).await.unwrap().reply.bytes, 100_000);
    lab.restart_agent("node-1").await.unwrap();
    let mut snapshots = lab.agent("node-1").unwrap().snapshots();
    tokio::time::timeout(STEP, snapshots.wait_for(|n| *n >= 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(send(&lab, dst).await.unwrap().reply.bytes, 100_000);
    let client = lab.topology().pod("client").unwrap().spiffe();
    wait_identity(&lab, "web-2", "client", &client).await;
}

/// A mixed mesh: node-2 runs its own binary (a copy of the workspace's ambit, so the test can tell
/// the two apart), node-1 the lab's (`AMBIT_LAB_PROXY` when set, e.g. real ztunnel: then this is
/// ambit and the peer side by side), both configured by the lab's control plane, whose CA gives
/// both the same trust. Every demo flow, including the cross-node ones, must pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_mesh_runs_each_nodes_own_binary() {
    let copy = std::env::temp_dir().join(format!("ambit-node-proxy-{}", std::process::id()));
    std::fs::copy(crate::common::mesh::AMBIT, &copy).unwrap();
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _copy_guard = Remove(copy.clone());
    let lab_binary: std::path::PathBuf = crate::common::mesh::proxy_under_test();
    let opts = LabOptions {
        proxy: Some(lab_binary.clone()),
        control: ambit_lab::ControlMode::ControlPlane,
        node_proxies: [("node-2".to_string(), copy.clone())].into(),
        ..LabOptions::default()
    };
    let lab = Lab::start(Topology::from_yaml(DEMO).unwrap(), opts)
        .await
        .unwrap();
    let exe = |node: &str| {
        let pid = lab.proxy(node).unwrap().pid();
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
    };
    assert_eq!(exe("node-2"), copy);
    assert_eq!(exe("node-1"), std::fs::canonicalize(&lab_binary).unwrap());
    let report = demo::run(&lab, demo::demo_flows(&lab).unwrap())
        .await
        .unwrap();
    println!("{report}");
    assert!(report.passed(), "{report}");
}

/// Callers of the `server` pod in [`TAGGED`] and the ports they try.
const CALLERS: [&str; 5] = ["client", "team-a", "team-blocked", "other", "legacy"];
const PORTS: [u16; 2] = [8080, 9090];

/// ztunnel-format policies with `!Exact`, `!Prefix`, `!Suffix` and `!Presence` string matches,
/// written into the node proxies' local config by the lab. On 8080 only `client` and the
/// `team-` service accounts are allowed, and `team-blocked` is denied anyway; on 9090 any
/// authenticated caller is allowed (`!Presence` of a namespace), so not the uncaptured `legacy`.
const TAGGED: &str = r#"
nodes:
  - name: node-1
  - name: node-2
pods:
  - {name: client, serviceAccount: client, node: node-1}
  - {name: team-a, serviceAccount: team-a, node: node-1}
  - {name: team-blocked, serviceAccount: team-blocked, node: node-1}
  - {name: other, serviceAccount: other, node: node-1}
  - {name: legacy, serviceAccount: legacy, node: node-1, captured: false}
  - {name: server, serviceAccount: server, node: node-2}
services: []
policies:
  - name: allow-listed
    namespace: default
    scope: Namespace
    action: Allow
    dryRun: false
    rules:
      - - - principals: [!Exact "cluster.local/ns/default/sa/client", !Prefix "cluster.local/ns/default/sa/team-"]
            destinationPorts: [8080]
      - - - namespaces: [!Presence []]
            destinationPorts: [9090]
  - name: deny-blocked
    namespace: default
    scope: Namespace
    action: Deny
    dryRun: false
    rules:
      - - - principals: [!Suffix "/sa/team-blocked"]
"#;

/// The decisions real ztunnel made on [`TAGGED`] (recorded with `AMBIT_LAB_PROXY=<ztunnel>`),
/// which every node proxy must make: `caller -> port -> allowed`.
const DECISIONS: &str = include_str!("../data/local/tagged_decisions.json");

/// Whether `caller` gets an answer from the server pod's app on `port`.
async fn allowed(lab: &Lab, caller: &str, port: u16) -> bool {
    let url = format!("http://{}/", target(lab, "server", port));
    let out = lab
        .pod_ns(caller)
        .unwrap()
        .exec(&["curl", "-sS", "-m", "10", &url], STEP)
        .await
        .unwrap();
    let ip = lab.topology().pod(caller).unwrap().ip;
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == format!("peer {ip}")
}

#[tokio::test]
async fn shared_tagged_policies_decide_per_source_identity() {
    let opts = LabOptions {
        proxy: Some(crate::common::mesh::proxy_under_test()),
        mode: ProxyMode::Shared,
        ..LabOptions::default()
    };
    let lab = Lab::start(Topology::from_yaml(TAGGED).unwrap(), opts)
        .await
        .unwrap();
    assert_eq!(
        lab.topology().pod("team-a").unwrap().spiffe(),
        "spiffe://cluster.local/ns/default/sa/team-a",
        "the policies name these identities"
    );
    let ns = lab.pod_ns("server").unwrap();
    let _apps: Vec<Server> = PORTS
        .iter()
        .map(|p| Server::start(ns, ServerKind::Http, *p).unwrap())
        .collect();
    let mut got = serde_json::Map::new();
    for caller in CALLERS {
        let mut ports = serde_json::Map::new();
        for port in PORTS {
            ports.insert(port.to_string(), allowed(&lab, caller, port).await.into());
        }
        got.insert(caller.to_string(), ports.into());
    }
    let got = serde_json::Value::Object(got);
    println!("{}", serde_json::to_string_pretty(&got).unwrap());
    let want: serde_json::Value = serde_json::from_str(DECISIONS).unwrap();
    assert_eq!(got, want["decisions"]);
}
