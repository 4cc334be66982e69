//! Benchmark (not a test): how long the delta ADS client takes to apply one push of 10,000
//! workloads and 1,000 services, then one small delta, and the process's peak memory.
//!
//! Run: `cargo bench --bench xds_apply` (release profile). The control plane is the lab's
//! scripted istiod (`ambit_lab::control_scripted`, as in the `xds_*` tests) in-process on
//! loopback, so the times include gRPC decoding, conversion, the state rebuild and the ACK round
//! trip; peak memory (VmHWM) covers client and scripted server.

use std::time::{Duration, Instant};

use ambit::grpc::{GrpcTarget, RootCert};
use ambit::lifecycle::{Readiness, drain_channel};
use ambit::state::StateWriter;
use ambit::xds::{NodeInfo, XdsClient, XdsConfig};
use ambit_lab::control_scripted::{ScriptedAds, resource, response, service, workload};
use ambit_proto::ADDRESS_TYPE_URL;

const WORKLOADS: usize = 10_000;
const SERVICES: usize = 1_000;

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn ip(i: usize) -> [u8; 4] {
    [10, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut server = ScriptedAds::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (writer, view) = StateWriter::new();
    let readiness = Readiness::new();
    let client = XdsClient::new(
        XdsConfig {
            target: GrpcTarget {
                address: format!("http://{}", server.addr),
                root_cert: RootCert::System,
                alt_hostname: None,
                auth_token: None,
                cluster_id: "Kubernetes".into(),
                headers: Vec::new(),
            },
            node: NodeInfo::ztunnel("10.0.0.1", "ztunnel", "istio-system", "node"),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        },
        writer,
        &readiness,
    );
    let (_trigger, drain) = drain_channel();
    tokio::spawn(client.run(drain));
    let mut conn = server.next_conn().await.unwrap();
    conn.initial_requests().await.unwrap();
    let base_kib = vm_hwm_kib();

    let mut resources = Vec::with_capacity(WORKLOADS + SERVICES);
    for s in 0..SERVICES {
        let name = format!("svc-{s}");
        let key = format!("default/{name}.default.svc.cluster.local");
        resources.push(resource(
            &key,
            "1",
            &service("default", &name, [172, 16, (s >> 8) as u8, s as u8], 80),
        ));
    }
    for w in 0..WORKLOADS {
        let uid = format!("w-{w}");
        let key = format!("default/svc-{}.default.svc.cluster.local", w % SERVICES);
        resources.push(resource(
            &uid,
            "1",
            &workload(&uid, ip(w), Some((&key, 80, 8080))),
        ));
    }

    let start = Instant::now();
    conn.push(response(ADDRESS_TYPE_URL, "full", resources, &[]))
        .unwrap();
    let ack = conn.next_request().await.unwrap();
    let full = start.elapsed();
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    let snap = view.snapshot();
    assert_eq!(snap.workloads().count(), WORKLOADS);
    assert_eq!(snap.services().count(), SERVICES);
    drop(snap);

    let start = Instant::now();
    conn.push(response(
        ADDRESS_TYPE_URL,
        "delta",
        vec![resource(
            "w-0",
            "2",
            &workload("w-0", [10, 200, 0, 1], None),
        )],
        &["w-1"],
    ))
    .unwrap();
    let ack = conn.next_request().await.unwrap();
    let delta = start.elapsed();
    assert!(ack.error_detail.is_none());

    println!("xds_apply: {WORKLOADS} workloads + {SERVICES} services in one push");
    println!(
        "  full push applied and ACKed: {:.1} ms",
        full.as_secs_f64() * 1e3
    );
    println!(
        "  one small delta (1 upsert, 1 removal): {:.1} ms",
        delta.as_secs_f64() * 1e3
    );
    match (base_kib, vm_hwm_kib()) {
        (Some(base), Some(peak)) => println!(
            "  peak memory (VmHWM): {:.1} MiB (before the push: {:.1} MiB)",
            peak as f64 / 1024.0,
            base as f64 / 1024.0
        ),
        _ => println!("  peak memory: /proc/self/status not available"),
    }
}
