//! The locality and service labels of the Istio L4 metrics, end to end in the two-pod mesh: the
//! workloads' `locality` in the local config becomes `source_region`/`source_zone` and
//! `destination_region`/`destination_zone` on both reporters, and a connection addressed to a
//! service VIP carries the service's host name in the HBONE `forwarded` header, from which the
//! server side (reporter `destination`) takes `destination_service`.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::{Netns, Process};
use common::mesh::{
    CLIENT_WL, Mesh, MeshOpts, SERVER_WL, sample, scrape, wait_access_line, workload_yaml,
};
use common::{STEP, servers};

const SERVICES: &str = "\
- name: server
  namespace: b
  hostname: server.b.svc.cluster.local
  vips: [\"/10.96.0.10\"]
  ports: {80: 8080}
";

/// The local config: both pods with their localities; the server pod backs the service.
fn config() -> String {
    format!(
        "workloads:\n{}  locality: {{region: us-east, zone: us-east-1b, subzone: \"\"}}\n  services: {{}}\n{}  locality: {{region: eu-west, zone: eu-west-1a, subzone: \"\"}}\n  services:\n    b/server.b.svc.cluster.local: {{80: 8080}}\nservices:\n{SERVICES}",
        workload_yaml(CLIENT_WL, &[common::client_ip(false)]),
        workload_yaml(SERVER_WL, &[common::server_ip(false)]),
    )
}

/// Polls (bounded) until `family` has a sample with `labels` equal to `want`; returns the text.
async fn wait_sample(ns: &Netns, family: &str, labels: &[&str], want: u64) -> String {
    let mut text = String::new();
    for _ in 0..50 {
        text = scrape(ns).await;
        if sample(&text, family, labels) == Some(want) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {family} sample {labels:?} = {want}:\n{text}");
}

/// Rewrites the mesh's local config and waits (bounded) until `ambits` reloaded it.
async fn rewrite_config(mesh: &Mesh, text: &str, ambits: &[&Process]) {
    let count = |p: &Process| p.log().matches("local config reloaded").count();
    let before: Vec<usize> = ambits.iter().map(|p| count(p)).collect();
    let dir = mesh.pair.dir.path();
    std::fs::write(dir.join("local.yaml.tmp"), text).unwrap();
    std::fs::rename(dir.join("local.yaml.tmp"), dir.join("local.yaml")).unwrap();
    for (p, before) in ambits.iter().zip(before) {
        let mut reloaded = false;
        for _ in 0..100 {
            if count(p) > before {
                reloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(reloaded, "{} did not reload:\n{}", p.name(), p.tail(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_and_service_labels_on_both_reporters() {
    let mesh = Mesh::start("ops_labels", MeshOpts::default()).await;
    rewrite_config(&mesh, &config(), &[&mesh.client_ambit, &mesh.server_ambit]).await;
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    // The VIP is only routed to the pod's interface; the capture sends it to the proxy.
    mesh.pair
        .client
        .route(&["10.96.0.0/16", "dev", "eth0"])
        .unwrap();

    let vip = SocketAddr::from(([10, 96, 0, 10], 80));
    let mut s = mesh.pair.client.connect(vip, STEP).await.unwrap();
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 249) as u8).collect();
    common::mesh::echo_all(&mut s, &payload, "echo through the service VIP").await;

    let common_labels = [
        "source_workload=\"client\"",
        "destination_workload=\"server\"",
        "source_region=\"us-east\"",
        "source_zone=\"us-east-1b\"",
        "destination_region=\"eu-west\"",
        "destination_zone=\"eu-west-1a\"",
        "destination_service=\"server.b.svc.cluster.local\"",
        "destination_service_name=\"server\"",
        "destination_service_namespace=\"b\"",
    ];
    let n = payload.len() as u64;
    for (ns, reporter) in [
        (&mesh.pair.client, "reporter=\"source\""),
        (&mesh.pair.server, "reporter=\"destination\""),
    ] {
        let mut labels = common_labels.to_vec();
        labels.push(reporter);
        let text = wait_sample(ns, "istio_tcp_connections_closed_total", &labels, 1).await;
        assert_eq!(
            sample(&text, "istio_tcp_connections_opened_total", &labels),
            Some(1),
            "{text}"
        );
        assert_eq!(
            sample(&text, "istio_tcp_received_bytes_total", &labels),
            Some(n),
            "{text}"
        );
    }
    // The server side learned the service only from the forwarded header: the connection it
    // saw was addressed to the pod, as its access log shows.
    let line = wait_access_line(
        &mesh.server_ambit,
        &[
            "direction=inbound",
            "dst.service=server.b.svc.cluster.local",
        ],
    )
    .await;
    assert_eq!(
        line.get("dst.hbone_addr"),
        Some(format!("{}:8080", common::server_ip(false)).as_str()),
        "{line}"
    );
}
