//! The node proxy started with exactly the container spec the chart renders
//! (deploy/manifests/ambit.yaml): arguments `proxy ztunnel`, the chart's environment, and
//! `istiod.istio-system.svc:15012` (no scheme) resolving to the lab's control plane through the
//! container's `/etc/hosts`. It becomes ready and carries the demo's traffic.
//!
//! Mapped into the lab, because the lab's nodes are namespaces on this machine and not
//! containers: the chart's volumes (the root certificate, the token, the ZDS socket directory)
//! become the lab's files (`XDS_ROOT_CA`/`CA_ROOT_CA`, `AUTH_TOKEN`, `INPOD_UDS`); the
//! downward-API values are the lab's (pod name, node, IP); and the hosts file is bind-mounted
//! over `/etc/hosts` by a two-line entrypoint, inside the private mount namespace that
//! `ip netns exec` gives every node proxy (so the machine's `/etc/hosts` is untouched).
//! Everything the lab itself would set to reach its control plane (`https://<ip>`,
//! `ALT_*_HOSTNAME`, `CLUSTER_ID`, `FAKE_CA`) is unset: the name in the address is what the
//! proxy resolves and verifies in the control plane's certificate.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use ambit_lab::control_ca::SERVER_NAME;
use ambit_lab::control_plane::CP_PORT;
use ambit_lab::topology::UNDERLAY_NET;
use ambit_lab::traffic::{Server, ServerKind, bulk_send};
use ambit_lab::{ControlMode, Lab, LabOptions, ProxyMode, Topology};
use serde::Deserialize;

const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");
const MANIFESTS: &str = include_str!("../../deploy/manifests/ambit.yaml");
const DEMO: &str = include_str!("../../examples/demo.yaml");
const STEP: Duration = Duration::from_secs(20);

/// The chart's container: its arguments and its literal environment values. The downward-API
/// ones are filled by the lab (POD_NAME, POD_NAMESPACE, NODE_NAME, INSTANCE_IP) or here.
fn chart_container() -> (Vec<String>, Vec<(String, String)>) {
    let ds = serde_yaml_ng::Deserializer::from_str(MANIFESTS)
        .map(|d| serde_yaml_ng::Value::deserialize(d).unwrap())
        .find(|d| d["kind"] == "DaemonSet")
        .unwrap();
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let args = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut env = Vec::new();
    for e in c["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match (&e["value"], &e["valueFrom"]) {
            (serde_yaml_ng::Value::String(v), _) => v.clone(),
            (_, from) if from["fieldRef"]["fieldPath"] == "spec.serviceAccountName" => {
                "ztunnel".into()
            }
            (_, from) if from["resourceFieldRef"]["resource"] == "limits.cpu" => "2".into(),
            // Set by the lab per node.
            (_, from) if from["fieldRef"].is_mapping() => continue,
            other => panic!("{name}: unexpected env source {other:?}"),
        };
        env.push((name, value));
    }
    (args, env)
}

/// Removes the per-test files on drop (kept when the test fails).
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test]
async fn node_proxy_with_the_charts_spec_becomes_ready_and_carries_traffic() {
    let (args, chart_env) = chart_container();
    assert_eq!(args, ["proxy", "ztunnel"]);
    let xds = chart_env
        .iter()
        .find(|(k, _)| k == "XDS_ADDRESS")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(
        xds,
        format!("{SERVER_NAME}:{CP_PORT}"),
        "no scheme, as Istio's chart"
    );

    let scratch = Scratch(
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("chart-lab-{}", ambit_lab::sys::unique_suffix())),
    );
    std::fs::create_dir_all(&scratch.0).unwrap();
    // The lab's control plane listens on the underlay's first address.
    let cp_ip = std::net::Ipv4Addr::from(u32::from(UNDERLAY_NET) + 1);
    let hosts = scratch.0.join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n::1 localhost\n{cp_ip} {SERVER_NAME}\n"),
    )
    .unwrap();
    let host_hosts = std::fs::read("/etc/hosts").unwrap();
    let entrypoint = scratch.0.join("entrypoint");
    std::fs::write(
        &entrypoint,
        format!(
            "#!/bin/sh\nset -e\nmount --bind '{}' /etc/hosts\nexec '{AMBIT}' {}\n",
            hosts.display(),
            args.join(" ")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&entrypoint, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut proxy_env = chart_env;
    for unset in [
        "ALT_XDS_HOSTNAME",
        "ALT_CA_HOSTNAME",
        "CLUSTER_ID",
        "FAKE_CA",
    ] {
        proxy_env.push((unset.into(), String::new()));
    }
    let opts = LabOptions {
        proxy: Some(entrypoint.clone()),
        mode: ProxyMode::Shared,
        control: ControlMode::ControlPlane,
        proxy_env,
        ..LabOptions::default()
    };
    // Lab::start waits for every node proxy's /healthz/ready.
    let lab = Lab::start(Topology::from_yaml(DEMO).unwrap(), opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    for node in ["node-1", "node-2"] {
        let p = lab.proxy(node).unwrap();
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid())).unwrap();
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(argv, [AMBIT, "proxy", "ztunnel"], "{node}");
        let log = p.log();
        assert!(
            log.lines().any(|l| l.contains("xDS stream established")
                && l.contains("https://istiod.istio-system.svc:15012")),
            "{node} reached the control plane by name:\n{}",
            p.tail(30)
        );
    }

    // The demo's service traffic: client (node-1) to the web VIP, served on both nodes.
    let _sinks: Vec<Server> = ["web-1", "web-2"]
        .iter()
        .map(|pod| Server::start(lab.pod_ns(pod).unwrap(), ServerKind::Sink, 8080).unwrap())
        .collect();
    let vip = SocketAddr::from(([10, 96, 0, 10], 80));
    for _ in 0..4 {
        let r = bulk_send(lab.pod_ns("client").unwrap(), vip, 100_000, STEP)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.reply.bytes, 100_000);
    }
    drop(lab);
    assert_eq!(
        std::fs::read("/etc/hosts").unwrap(),
        host_hosts,
        "the machine's /etc/hosts is untouched"
    );
}
