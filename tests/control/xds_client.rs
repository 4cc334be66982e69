//! The delta ADS client against the lab's scripted istiod on loopback (`ambit_lab::control_scripted`): pushes land in
//! the state, removals remove, a bad resource is NACKed by name while the rest applies, a
//! reconnect resubscribes with `initial_resource_versions`, auth headers arrive, and readiness
//! waits for the first ACK of each type, and the `istio_xds_*` metrics count responses and
//! stream endings.

use std::path::PathBuf;
use std::time::Duration;

use ambit::grpc::{AuthToken, GrpcTarget, RootCert};
use ambit::lifecycle::{DrainTrigger, Readiness, drain_channel};
use ambit::metrics::{Metrics, TerminationReason, XdsMetrics};
use ambit::state::{StateView, StateWriter};
use ambit::xds::{NodeInfo, XdsClient, XdsConfig};
use ambit_lab::control_ca::LabCa;
use ambit_lab::control_scripted::*;
use ambit_proto::istio::security as ps;
use ambit_proto::istio::workload as pw;
use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

const SVC_KEY: &str = "default/web.default.svc.cluster.local";

struct Harness {
    view: StateView,
    readiness: Readiness,
    token: PathBuf,
    _drain: DrainTrigger,
}

fn token_file(test: &str, token: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ambit-xds-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("istio-token");
    std::fs::write(&path, token).unwrap();
    path
}

fn start_client(test: &str, addr: std::net::SocketAddr) -> Harness {
    start_client_with(test, addr, XdsMetrics::default())
}

fn start_client_with(test: &str, addr: std::net::SocketAddr, metrics: XdsMetrics) -> Harness {
    let token = token_file(test, "token-1\n");
    let (writer, view) = StateWriter::new();
    let readiness = Readiness::new();
    let cfg = XdsConfig {
        target: GrpcTarget {
            address: format!("http://{addr}"),
            root_cert: RootCert::System,
            alt_hostname: None,
            auth_token: Some(AuthToken::File(token.clone())),
            cluster_id: "cluster-a".into(),
            headers: vec![("x-tenant".into(), "blue".into())],
        },
        node: NodeInfo::ztunnel("10.1.0.5", "ztunnel-x", "istio-system", "node-1")
            .with_proxy_metadata(&[
                (
                    "LABELS".into(),
                    serde_json::json!({"app": "ztunnel", "replicas": 2}),
                ),
                // ztunnel's own keys are not overridden by the environment.
                ("NAME".into(), serde_json::json!("impostor")),
            ]),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
    };
    let client = XdsClient::new(cfg, writer, &readiness).with_metrics(metrics);
    let (trigger, drain) = drain_channel();
    tokio::spawn(client.run(drain));
    Harness {
        view,
        readiness,
        token,
        _drain: trigger,
    }
}

async fn wait_state(view: &StateView, what: &str, f: impl Fn(&StateView) -> bool) {
    let mut changes = view.changes();
    let res = tokio::time::timeout(WAIT, async {
        while !f(view) {
            changes.changed().await.unwrap();
        }
    })
    .await;
    assert!(res.is_ok(), "state never reached: {what}");
}

fn by_type(
    reqs: &[ambit_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest],
    t: &str,
) -> ambit_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest {
    reqs.iter().find(|r| r.type_url == t).cloned().unwrap()
}

#[tokio::test]
async fn pushes_apply_removals_remove_and_readiness_follows_acks() {
    let mut server = ScriptedAds::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let h = start_client("push", server.addr);
    let mut conn = server.next_conn().await.unwrap();

    // Metadata and the subscriptions as ztunnel sends them.
    assert_eq!(conn.headers.get("authorization").unwrap(), "Bearer token-1");
    assert_eq!(conn.headers.get("clusterid").unwrap(), "cluster-a");
    assert_eq!(conn.headers.get("x-tenant").unwrap(), "blue");
    let initial = conn.initial_requests().await.unwrap();
    for t in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
        let r = by_type(&initial, t);
        assert_eq!(r.resource_names_subscribe, vec!["*"]);
        assert!(r.initial_resource_versions.is_empty());
        let node = r.node.unwrap();
        assert_eq!(
            node.id,
            "ztunnel~10.1.0.5~ztunnel-x.istio-system~istio-system.svc.cluster.local"
        );
        let fields = node.metadata.unwrap().fields;
        assert!(fields.contains_key("NODE_NAME"));
        use prost_types::value::Kind;
        assert_eq!(
            fields["NAME"].kind,
            Some(Kind::StringValue("ztunnel-x".into()))
        );
        let Some(Kind::StructValue(labels)) = &fields["LABELS"].kind else {
            panic!("LABELS is not a struct: {:?}", fields["LABELS"]);
        };
        assert_eq!(
            labels.fields["app"].kind,
            Some(Kind::StringValue("ztunnel".into()))
        );
        assert_eq!(labels.fields["replicas"].kind, Some(Kind::NumberValue(2.0)));
    }
    assert_eq!(h.readiness.pending(), vec!["state manager"]);

    // A workload that backs a service arrives before the service: it waits, keyed, and the
    // service has endpoints as soon as it arrives.
    conn.push(response(
        ADDRESS_TYPE_URL,
        "n1",
        vec![resource(
            "w1",
            "1",
            &workload("w1", [10, 0, 0, 1], Some((SVC_KEY, 80, 8080))),
        )],
        &[],
    ))
    .unwrap();
    let ack = conn.next_request().await.unwrap();
    assert_eq!(
        (ack.type_url.as_str(), ack.response_nonce.as_str()),
        (ADDRESS_TYPE_URL, "n1")
    );
    assert!(ack.error_detail.is_none());
    assert!(h.view.workload_by_uid("w1").is_some());
    assert_eq!(h.readiness.pending(), vec!["state manager"]);

    conn.push(response(
        ADDRESS_TYPE_URL,
        "n2",
        vec![resource(
            SVC_KEY,
            "1",
            &service("default", "web", [10, 96, 0, 1], 80),
        )],
        &[],
    ))
    .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_none());
    let svc = h.view.service_by_vip("", [10, 96, 0, 1].into()).unwrap();
    let eps = h.view.endpoints(&svc, 80);
    assert_eq!(eps.len(), 1);
    assert_eq!((eps[0].0.uid.as_str(), eps[0].1), ("w1", 8080));

    // Policies: an empty first response still counts as the first ACK.
    conn.push(response(AUTHORIZATION_TYPE_URL, "p0", vec![], &[]))
        .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_none());
    assert!(h.readiness.is_ready(), "{:?}", h.readiness.pending());
    let policy = ps::Authorization {
        name: "allow".into(),
        namespace: "default".into(),
        scope: ps::Scope::Namespace as i32,
        ..Default::default()
    };
    conn.push(response(
        AUTHORIZATION_TYPE_URL,
        "p1",
        vec![resource("default/allow", "1", &policy)],
        &[],
    ))
    .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_none());
    assert!(h.view.snapshot().policy("default/allow").is_some());

    // Removals by resource name: the workload, the service and the policy go.
    conn.push(response(ADDRESS_TYPE_URL, "n3", vec![], &["w1", SVC_KEY]))
        .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_none());
    conn.push(response(
        AUTHORIZATION_TYPE_URL,
        "p2",
        vec![],
        &["default/allow"],
    ))
    .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_none());
    assert!(h.view.workload_by_uid("w1").is_none());
    assert!(
        h.view
            .service_by_host("default", "web.default.svc.cluster.local")
            .is_none()
    );
    assert!(h.view.snapshot().policy("default/allow").is_none());
}

#[tokio::test]
async fn a_bad_resource_is_nacked_by_name_and_the_rest_applies() {
    let mut server = ScriptedAds::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let h = start_client("nack", server.addr);
    let mut conn = server.next_conn().await.unwrap();
    conn.initial_requests().await.unwrap();

    conn.push(response(
        ADDRESS_TYPE_URL,
        "n1",
        vec![resource("w1", "1", &workload("w1", [10, 0, 0, 1], None))],
        &[],
    ))
    .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_none());

    // w1 v2 has a 3-byte address; w2 is fine.
    let mut bad = workload("w1", [10, 0, 0, 9], None);
    if let Some(pw::address::Type::Workload(w)) = &mut bad.r#type {
        w.addresses = vec![vec![10, 0, 9]];
    }
    conn.push(response(
        ADDRESS_TYPE_URL,
        "n2",
        vec![
            resource("w1", "2", &bad),
            resource("w2", "1", &workload("w2", [10, 0, 0, 2], None)),
        ],
        &[],
    ))
    .unwrap();
    let nack = conn.next_request().await.unwrap();
    assert_eq!(nack.response_nonce, "n2");
    let detail = nack.error_detail.expect("a NACK");
    assert_eq!(
        detail.message,
        "w1: workload \"w1\": addresses[0]: IP address must be 4 or 16 bytes, got 3"
    );
    // The good one applied; the bad one kept its last good state.
    assert!(h.view.workload_by_uid("w2").is_some());
    let w1 = h.view.workload_by_uid("w1").unwrap();
    assert_eq!(w1.workload_ips, vec![std::net::IpAddr::from([10, 0, 0, 1])]);
    assert!(h.view.workload_by_addr("", [10, 0, 0, 1].into()).is_some());

    // Addresses have been acknowledged, policies not yet: readiness still waits for both.
    assert_eq!(h.readiness.pending(), vec!["state manager"]);
}

#[tokio::test]
async fn first_response_nacked_keeps_readiness_blocked() {
    let mut server = ScriptedAds::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let h = start_client("nackready", server.addr);
    let mut conn = server.next_conn().await.unwrap();
    conn.initial_requests().await.unwrap();
    let mut bad = workload("w1", [10, 0, 0, 1], None);
    if let Some(pw::address::Type::Workload(w)) = &mut bad.r#type {
        w.uid.clear();
    }
    conn.push(response(
        ADDRESS_TYPE_URL,
        "n1",
        vec![resource("w1", "1", &bad)],
        &[],
    ))
    .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_some());
    assert!(h.readiness.pending().contains(&"state manager".to_string()));
    conn.push(response(ADDRESS_TYPE_URL, "n2", vec![], &[]))
        .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_none());
    assert_eq!(h.readiness.pending(), vec!["state manager"]);
}

#[tokio::test]
async fn reconnect_resubscribes_with_known_versions_and_a_fresh_token() {
    let mut server = ScriptedAds::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.addr;
    let h = start_client("reconnect", addr);
    let mut conn = server.next_conn().await.unwrap();
    conn.initial_requests().await.unwrap();
    conn.push(response(
        ADDRESS_TYPE_URL,
        "n1",
        vec![
            resource("w1", "v7", &workload("w1", [10, 0, 0, 1], None)),
            resource("w2", "v3", &workload("w2", [10, 0, 0, 2], None)),
        ],
        &[],
    ))
    .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_none());

    // The control plane dies: its stream ends and it stops listening.
    drop(conn);
    server.stop().await;
    std::fs::write(&h.token, "token-2").unwrap();

    // The state keeps serving meanwhile.
    assert!(h.view.workload_by_uid("w1").is_some());

    let mut server = ScriptedAds::start(addr).await.unwrap();
    let mut conn = server.next_conn().await.unwrap();
    assert_eq!(conn.headers.get("authorization").unwrap(), "Bearer token-2");
    let initial = conn.initial_requests().await.unwrap();
    let addr_req = by_type(&initial, ADDRESS_TYPE_URL);
    assert_eq!(addr_req.initial_resource_versions.len(), 2);
    assert_eq!(addr_req.initial_resource_versions["w1"], "v7");
    assert_eq!(addr_req.initial_resource_versions["w2"], "v3");
    assert!(
        by_type(&initial, AUTHORIZATION_TYPE_URL)
            .initial_resource_versions
            .is_empty()
    );

    // After the resync the server removes w2; w1 stays.
    conn.push(response(ADDRESS_TYPE_URL, "r1", vec![], &["w2"]))
        .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_none());
    wait_state(&h.view, "w2 removed", |v| v.workload_by_uid("w2").is_none()).await;
    assert!(h.view.workload_by_uid("w1").is_some());
}

#[tokio::test]
async fn tls_with_an_inline_root_and_the_alternate_hostname() {
    // The lab CA's server certificate names `istiod.istio-system.svc` (and 127.0.0.1).
    let ca = LabCa::new([127, 0, 0, 1].into()).unwrap();
    let root = ca.root_pem().to_string();
    let mut server = ScriptedAds::start_tls("127.0.0.1:0".parse().unwrap(), &ca)
        .await
        .unwrap();
    let target = |alt: &str| GrpcTarget {
        address: format!("https://127.0.0.1:{}", server.addr.port()),
        root_cert: RootCert::Pem(root.clone()),
        alt_hostname: Some(alt.to_string()),
        auth_token: None,
        cluster_id: "Kubernetes".into(),
        headers: Vec::new(),
    };

    // The wrong verified name fails the handshake.
    let wrong = tokio::time::timeout(WAIT, target("other.example").endpoint().unwrap().connect())
        .await
        .unwrap();
    assert!(wrong.is_err(), "connected with a wrong server name");
    let (writer, view) = StateWriter::new();
    let readiness = Readiness::new();
    let cfg = XdsConfig {
        target: target("istiod.istio-system.svc"),
        node: NodeInfo::ztunnel("", "ztunnel", "istio-system", "node"),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
    };
    let (_trigger, drain) = drain_channel();
    tokio::spawn(XdsClient::new(cfg, writer, &readiness).run(drain));
    let mut conn = server.next_conn().await.unwrap();
    conn.initial_requests().await.unwrap();
    conn.push(response(
        ADDRESS_TYPE_URL,
        "n1",
        vec![resource("w1", "1", &workload("w1", [10, 0, 0, 1], None))],
        &[],
    ))
    .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_none());
    assert!(view.workload_by_uid("w1").is_some());
}

/// Waits (bounded) until the client has counted `want` stream endings for `reason`; the count
/// moves after the stream ended, which nothing signals to the test.
async fn wait_terminations(m: &XdsMetrics, reason: TerminationReason, want: u64) {
    let res = tokio::time::timeout(WAIT, async {
        while m.terminations(reason) < want {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        res.is_ok(),
        "{reason:?}: {} of {want}",
        m.terminations(reason)
    );
}

#[tokio::test]
async fn metrics_count_responses_and_stream_endings() {
    use prost::Message;
    let metrics = Metrics::new();
    let xds = metrics.xds.clone();
    let mut server = ScriptedAds::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let _h = start_client_with("metrics", server.addr, xds.clone());
    let mut conn = server.next_conn().await.unwrap();
    conn.initial_requests().await.unwrap();

    // A push of each type (one of them two responses): counted by type URL, with the size of
    // each response as encoded on the wire.
    let pushes = [
        response(
            ADDRESS_TYPE_URL,
            "n1",
            vec![resource("w1", "1", &workload("w1", [10, 0, 0, 1], None))],
            &[],
        ),
        response(
            ADDRESS_TYPE_URL,
            "n2",
            vec![resource("w2", "1", &workload("w2", [10, 0, 0, 2], None))],
            &["w1"],
        ),
        response(AUTHORIZATION_TYPE_URL, "p1", vec![], &[]),
    ];
    let size = |t: &str| -> u64 {
        pushes
            .iter()
            .filter(|r| r.type_url == t)
            .map(|r| r.encoded_len() as u64)
            .sum()
    };
    let (addr_bytes, authz_bytes) = (size(ADDRESS_TYPE_URL), size(AUTHORIZATION_TYPE_URL));
    assert!(addr_bytes > 0 && authz_bytes > 0);
    for r in pushes {
        conn.push(r).unwrap();
        // The ACK is sent after the response was counted.
        assert!(conn.next_request().await.unwrap().error_detail.is_none());
    }
    assert_eq!(xds.messages(ADDRESS_TYPE_URL), (2, addr_bytes));
    assert_eq!(xds.messages(AUTHORIZATION_TYPE_URL), (1, authz_bytes));
    let text = metrics.encode().unwrap();
    for line in [
        format!("istio_xds_message_total{{url=\"{ADDRESS_TYPE_URL}\"}} 2\n"),
        format!("istio_xds_message_bytes_total{{url=\"{ADDRESS_TYPE_URL}\"}} {addr_bytes}\n"),
        format!("istio_xds_message_total{{url=\"{AUTHORIZATION_TYPE_URL}\"}} 1\n"),
        format!(
            "istio_xds_message_bytes_total{{url=\"{AUTHORIZATION_TYPE_URL}\"}} {authz_bytes}\n"
        ),
    ] {
        assert!(text.contains(&line), "{line}: {text}");
    }
    assert!(
        !text.contains("istio_xds_connection_terminations_total{"),
        "{text}"
    );

    // The server fails the stream: an Error; the client comes back.
    conn.fail(tonic::Status::invalid_argument("test failure"))
        .unwrap();
    wait_terminations(&xds, TerminationReason::Error, 1).await;
    let mut conn = server.next_conn().await.unwrap();
    conn.initial_requests().await.unwrap();

    // Routine housekeeping (a cancelled stream, as on an istiod restart): a Reconnect.
    conn.fail(tonic::Status::cancelled("server shutting down"))
        .unwrap();
    wait_terminations(&xds, TerminationReason::Reconnect, 1).await;
    let mut conn = server.next_conn().await.unwrap();
    conn.initial_requests().await.unwrap();

    // The server ends the stream cleanly: Complete.
    drop(conn);
    wait_terminations(&xds, TerminationReason::Complete, 1).await;
    let conn = server.next_conn().await.unwrap();

    // The server dies: its last stream ends and reconnecting fails while nobody listens.
    drop(server);
    drop(conn);
    wait_terminations(&xds, TerminationReason::ConnectionError, 1).await;
    // The last stream was counted once, whichever way it ended (cleanly, or with a transport
    // error if the dying server took it down).
    let streams: u64 = [
        TerminationReason::Complete,
        TerminationReason::Error,
        TerminationReason::Reconnect,
    ]
    .iter()
    .map(|r| xds.terminations(*r))
    .sum();
    assert_eq!(streams, 4, "{}", metrics.encode().unwrap());
    // No response arrived since the first stream.
    assert_eq!(xds.messages(ADDRESS_TYPE_URL), (2, addr_bytes));
    let text = metrics.encode().unwrap();
    for reason in ["ConnectionError", "Error", "Reconnect", "Complete"] {
        let prefix = format!("istio_xds_connection_terminations_total{{reason=\"{reason}\"}} ");
        assert!(text.contains(&prefix), "{reason}: {text}");
    }
}
