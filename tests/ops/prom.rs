//! A real Prometheus server (Debian package `prometheus`) scrapes the two ambits of the two-pod
//! mesh and answers a PromQL query with the byte counts of a known transfer, for both reporters.
//!
//! Prometheus runs in a namespace of its own, joined to each pod by a monitoring veth on a
//! separate subnet (outside the pods' capture: replies to its scrapes are not new connections),
//! with a 1 s scrape interval and its own temporary storage; the `Process` is killed on drop.
//!
//! The dashboards under `deploy/helm/ambit/dashboards/`: every panel query and template variable returns data
//! from the lab's Prometheus (`ambit-lab up --prometheus`) after the demo's traffic; with
//! `AMBIT_LAB_PROXY=<ztunnel>`, every query on Istio's families does for that proxy too.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::{Netns, Process, ProcessSpec, http_get, link, wait_http_ok};
use common::mesh::{Mesh, MeshOpts};
use common::{STEP, servers};

const PROM: &str = "127.0.0.1:9090";

/// Percent-encodes a PromQL query for a URL query string.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The scalar value of an instant query's single result, if there is exactly one.
async fn query(ns: &Netns, q: &str) -> Option<f64> {
    let addr: SocketAddr = PROM.parse().unwrap();
    let resp = http_get(
        ns,
        addr,
        &format!("/api/v1/query?query={}", encode(q)),
        STEP,
    )
    .await
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&resp.body).ok()?;
    assert_eq!(v["status"], "success", "{}", resp.body);
    let result = v["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_both_ambits_and_answers_promql() {
    let mesh = Mesh::start("ops_prom", MeshOpts::default()).await;
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);

    // The monitoring namespace: 10.9.1.0/24 to the client pod, 10.9.2.0/24 to the server pod.
    let prom_ns = Netns::new("prom").unwrap();
    link::veth(&prom_ns, "c0", &mesh.pair.client, "mon0").unwrap();
    link::veth(&prom_ns, "s0", &mesh.pair.server, "mon0").unwrap();
    prom_ns.add_addr("c0", "10.9.1.1/24").unwrap();
    prom_ns.add_addr("s0", "10.9.2.1/24").unwrap();
    mesh.pair.client.add_addr("mon0", "10.9.1.2/24").unwrap();
    mesh.pair.server.add_addr("mon0", "10.9.2.2/24").unwrap();
    prom_ns.link_up("lo").unwrap();

    let dir = mesh.pair.dir.path().join("prometheus");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n- job_name: ambit\n  metrics_path: /stats/prometheus\n  static_configs:\n  \
         - targets: ['10.9.1.2:15020', '10.9.2.2:15020']\n",
    )
    .unwrap();
    let spec = ProcessSpec::new("prometheus", "prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROM}"));
    let mut prom: Process = Process::spawn(Some(&prom_ns), &spec, &dir).unwrap();
    if let Err(e) = wait_http_ok(
        &prom_ns,
        PROM.parse().unwrap(),
        "/-/ready",
        100,
        Duration::from_secs(1),
        Some(&mut prom),
    )
    .await
    {
        panic!("prometheus not ready: {e}\n{}", prom.tail(40));
    }

    // The known transfer: N bytes each way through both ambits.
    const N: usize = 98_765;
    let mut s = mesh
        .pair
        .client
        .connect(common::app_addr(false), STEP)
        .await
        .unwrap();
    let payload: Vec<u8> = (0..N).map(|i| (i % 241) as u8).collect();
    common::mesh::echo_all(&mut s, &payload, "echo").await;

    // Bounded wait (a few scrape intervals) for both reporters' series to reach N.
    let q = |family: &str, reporter: &str| {
        format!(
            "sum({family}{{reporter=\"{reporter}\",source_workload=\"client\",destination_workload=\"server\",source_workload_namespace=\"a\",destination_workload_namespace=\"b\"}})"
        )
    };
    let queries: Vec<String> = ["source", "destination"]
        .iter()
        .flat_map(|r| {
            [
                q("istio_tcp_received_bytes_total", r),
                q("istio_tcp_sent_bytes_total", r),
            ]
        })
        .collect();
    let mut last = Vec::new();
    for _ in 0..60 {
        last.clear();
        for q in &queries {
            last.push(query(&prom_ns, q).await);
        }
        if last.iter().all(|v| *v == Some(N as f64)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (q, v) in queries.iter().zip(&last) {
        assert_eq!(
            *v,
            Some(N as f64),
            "{q}\nprometheus tail:\n{}",
            prom.tail(20)
        );
    }
    // Both ambits are healthy targets.
    assert_eq!(query(&prom_ns, "count(up == 1)").await, Some(2.0));
}

/// The dashboards' PromQL: every panel target and every template variable of
/// `deploy/helm/ambit/dashboards/*.json`, as (where, query) with Grafana's variables replaced the way a
/// dashboard left at "All" sends them (`$__rate_interval` as 1m) and `label_values(m, l)`
/// variables written as the PromQL Grafana's data source runs for them.
fn dashboard_queries() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/ambit/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let fill = |q: &str| {
        ["namespace", "workload", "service", "instance"]
            .iter()
            .fold(q.replace("$__rate_interval", "1m"), |q, v| {
                q.replace(&format!("${v}"), ".*")
            })
    };
    let mut out = Vec::new();
    for file in files {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let title = d["title"].as_str().unwrap().to_string();
        for v in d["templating"]["list"].as_array().unwrap() {
            let Some(q) = v["query"]["query"].as_str() else {
                continue;
            };
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{title}: variable query {q:?}"));
            let (metric, label) = inner.rsplit_once(", ").unwrap();
            out.push((
                format!("{title} / variable {}", v["name"]),
                fill(&format!("count by ({label}) ({metric})")),
            ));
        }
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    format!("{title} / {}", p["title"]),
                    fill(t["expr"].as_str().unwrap()),
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_has_data_from_the_labs_prometheus() {
    use ambit_lab::traffic::echo;
    use ambit_lab::{ControlMode, Lab, LabOptions, LabPrometheus, ProxyMode, Topology, demo};

    let mut queries = dashboard_queries();
    assert!(queries.len() >= 20, "{queries:#?}");
    // `AMBIT_LAB_PROXY=<ztunnel>`: the same dashboards on another proxy's metrics, where the
    // names coincide (every query but those of ambit's own `ambit_` families).
    let other = std::env::var_os("AMBIT_LAB_PROXY");
    if other.is_some() {
        queries.retain(|(_, q)| !q.contains("ambit_"));
    }
    let opts = LabOptions {
        proxy: Some(
            other
                .map(Into::into)
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_ambit").into()),
        ),
        mode: ProxyMode::Shared,
        control: ControlMode::ControlPlane,
        ..LabOptions::default()
    };
    let demo_yaml = include_str!("../../examples/demo.yaml");
    let lab = Lab::start(Topology::from_yaml(demo_yaml).unwrap(), opts)
        .await
        .unwrap();
    let prom = LabPrometheus::start(&lab).await.unwrap();
    let report = demo::run(&lab, demo::demo_flows(&lab).unwrap())
        .await
        .unwrap();
    assert!(report.passed(), "{report}");
    // A failing flow for the failures panel: nothing listens on web-1:9.
    let web1 = SocketAddr::from((lab.topology().pod("web-1").unwrap().ip, 9));
    let client = lab.pod_ns("client").unwrap();
    assert!(echo(client, web1, b"x", STEP).await.is_err());

    // Bounded wait (scrapes are 1 s apart) until every query has a series.
    let mut empty = Vec::new();
    for _ in 0..60 {
        empty.clear();
        for (at, q) in &queries {
            let result = prom
                .query(&lab, q)
                .await
                .unwrap_or_else(|e| panic!("{at}: {e}"));
            if result.is_empty() {
                empty.push(format!("{at}: {q}"));
            }
        }
        if empty.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}\nprometheus tail:\n{}",
        empty.join("\n"),
        prom.tail(20)
    );
}
