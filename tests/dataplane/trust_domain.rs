//! Pod identities take their trust domain from the workload records the control plane sends,
//! as ztunnel's do, not from `TRUST_DOMAIN`: when the lab's control plane moves every workload
//! of the demo to `example.org`, the node proxies ask the CA for `spiffe://example.org/...`
//! certificates for their pods and the demo's traffic keeps flowing with those identities.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_lab::control_resources::{self, CpResource};
use ambit_lab::traffic::{Server, ServerKind, bulk_send};
use ambit_lab::{ControlMode, Lab, LabOptions, ProxyMode, Topology};

const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");
const DEMO: &str = include_str!("../../examples/demo.yaml");
const STEP: Duration = Duration::from_secs(20);

#[tokio::test]
async fn pod_identities_follow_the_records_trust_domain() {
    let topology = Topology::from_yaml(DEMO).unwrap();
    let opts = LabOptions {
        proxy: Some(AMBIT.into()),
        mode: ProxyMode::Shared,
        control: ControlMode::ControlPlane,
        ..LabOptions::default()
    };
    let lab = Lab::start(topology.clone(), opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cp = lab.control_plane().unwrap().clone();
    let skip = cp.ca_records().len();

    let moved: Vec<CpResource> = control_resources::topology_resources(&topology)
        .unwrap()
        .into_iter()
        .map(|r| match r {
            CpResource::Address { name, mut address } => {
                if let Some(ambit_proto::istio::workload::address::Type::Workload(w)) =
                    &mut address.r#type
                {
                    w.trust_domain = "example.org".into();
                }
                CpResource::Address { name, address }
            }
            other => other,
        })
        .collect();
    cp.upsert(moved);

    for (node, id) in [
        ("node-1", "spiffe://example.org/ns/default/sa/client"),
        ("node-1", "spiffe://example.org/ns/default/sa/web"),
        ("node-2", "spiffe://example.org/ns/default/sa/web"),
    ] {
        let r = cp
            .wait_ca(skip, STEP, |r| {
                r.identity == id && r.node.as_deref() == Some(node) && r.outcome.is_ok()
            })
            .await
            .unwrap_or_else(|e| panic!("{node} {id}: {e}\n{:?}", cp.ca_records()));
        assert!(r.outcome.is_ok());
    }

    // Both ends now present example.org identities (and each checks the other's trust domain).
    let _sinks: Vec<Server> = ["web-1", "web-2"]
        .iter()
        .map(|pod| Server::start(lab.pod_ns(pod).unwrap(), ServerKind::Sink, 8080).unwrap())
        .collect();
    let vip = SocketAddr::from(([10, 96, 0, 10], 80));
    let mut last = None;
    for _ in 0..50 {
        match bulk_send(lab.pod_ns("client").unwrap(), vip, 100_000, STEP).await {
            Ok(r) if r.reply.bytes == 100_000 => {
                last = None;
                break;
            }
            other => last = Some(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last, None, "traffic with example.org identities");
    let server_log = lab.proxy("node-2").unwrap().log() + &lab.proxy("node-1").unwrap().log();
    assert!(
        server_log.contains("spiffe://example.org/ns/default/sa/client"),
        "the server side saw the client's example.org identity"
    );
}
