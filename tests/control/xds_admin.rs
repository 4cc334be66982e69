//! `/config_dump` on the admin server lists what the (scripted) control plane sent, plus the
//! certificates the manager holds; the admin server answers only on loopback.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ambit::admin::{DumpSources, bind_admin, serve_admin};
use ambit::core::Identity;
use ambit::grpc::{GrpcTarget, RootCert};
use ambit::identity::{BuiltinCa, SecretManager, SecretManagerConfig};
use ambit::lifecycle::{Readiness, drain_channel};
use ambit::state::StateWriter;
use ambit::xds::{NodeInfo, XdsClient, XdsConfig};
use ambit_lab::control_scripted::*;
use ambit_proto::istio::security as ps;
use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn config_dump_lists_what_the_control_plane_sent() {
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
            node: NodeInfo::ztunnel("", "ztunnel", "istio-system", "node-1"),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
        },
        writer,
        &readiness,
    );
    let (_trigger, drain) = drain_channel();
    tokio::spawn(client.run(drain.clone()));
    let mut conn = server.next_conn().await.unwrap();
    conn.initial_requests().await.unwrap();
    conn.push(response(
        ADDRESS_TYPE_URL,
        "n1",
        vec![
            resource(
                "w1",
                "1",
                &workload(
                    "w1",
                    [10, 0, 0, 1],
                    Some(("default/db.default.svc.cluster.local", 5432, 0)),
                ),
            ),
            resource(
                "default/web.default.svc.cluster.local",
                "1",
                &service("default", "web", [10, 96, 0, 1], 80),
            ),
        ],
        &[],
    ))
    .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_none());
    let policy = ps::Authorization {
        name: "deny-all".into(),
        namespace: "default".into(),
        scope: ps::Scope::Namespace as i32,
        action: ps::Action::Deny as i32,
        ..Default::default()
    };
    conn.push(response(
        AUTHORIZATION_TYPE_URL,
        "p1",
        vec![resource("default/deny-all", "1", &policy)],
        &[],
    ))
    .unwrap();
    assert!(conn.next_request().await.unwrap().error_detail.is_none());

    let secrets = SecretManager::new(
        std::sync::Arc::new(BuiltinCa::in_memory(Duration::from_secs(3600)).unwrap()),
        SecretManagerConfig::default(),
    );
    let id = Identity::new("cluster.local", "default", "sa").unwrap();
    let cert = timeout(WAIT, secrets.fetch_certificate(&id))
        .await
        .unwrap()
        .unwrap();

    let listener = bind_admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let admin = listener.local_addr().unwrap();
    tokio::spawn(serve_admin(
        listener,
        DumpSources {
            state: view,
            certificates: Some(secrets.clone()),
            config: serde_json::json!({"proxyMode": "shared"}),
            static_config: None,
            workload_state: None,
            istio_version: "unknown".into(),
            debug: None,
        },
        admin_ops(),
        drain,
    ));

    let index = get(admin, "/").await;
    assert!(index.starts_with("HTTP/1.1 200"), "{index}");
    assert!(index.contains("/config_dump"), "{index}");

    let resp = get(admin, "/config_dump").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("content-type: application/json"), "{resp}");
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let dump: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(dump["workloads"][0]["uid"], "w1");
    assert_eq!(dump["workloads"][0]["workloadIps"][0], "10.0.0.1");
    assert_eq!(dump["workloads"][0]["serviceAccount"], "sa");
    assert_eq!(
        dump["services"][0]["hostname"],
        "web.default.svc.cluster.local"
    );
    assert_eq!(dump["services"][0]["vips"][0], "/10.96.0.1");
    assert_eq!(dump["policies"][0]["name"], "deny-all");
    assert_eq!(dump["policies"][0]["action"], "Deny");
    assert_eq!(
        dump["stagedServices"]["default/db.default.svc.cluster.local"]["w1"]["workloadUid"],
        "w1"
    );
    assert_eq!(dump["config"]["proxyMode"], "shared");
    assert_eq!(dump["version"]["version"], env!("CARGO_PKG_VERSION"));
    let c = &dump["certificates"][0];
    assert_eq!(c["identity"], id.to_string());
    assert_eq!(c["state"], "Available");
    // Decimal, as ztunnel writes it (istioctl parses it in base 10).
    assert_eq!(
        c["certChain"][0]["serialNumber"],
        decimal_of_hex(&cert.serial_hex())
    );
    // base64 of "-----BEGIN CERTIFICATE-----".
    assert!(
        c["certChain"][0]["pem"]
            .as_str()
            .unwrap()
            .starts_with("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"),
        "{c}"
    );
    assert_eq!(c["rootCerts"].as_array().unwrap().len(), 1);
    assert!(
        c["certChain"][0]["expirationTime"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    assert!(get(admin, "/nope").await.starts_with("HTTP/1.1 404"));
}

/// A hex number in decimal, any length (serials run to 20 bytes).
fn decimal_of_hex(hex: &str) -> String {
    // Little-endian base-10 digits, multiplied by 16 and added to, one hex digit at a time.
    let mut digits: Vec<u32> = vec![0];
    for h in hex.chars() {
        let mut carry = h.to_digit(16).unwrap();
        for d in digits.iter_mut() {
            let v = *d * 16 + carry;
            *d = v % 10;
            carry = v / 10;
        }
        while carry > 0 {
            digits.push(carry % 10);
            carry /= 10;
        }
    }
    while digits.len() > 1 && digits.last() == Some(&0) {
        digits.pop();
    }
    digits
        .iter()
        .rev()
        .map(|d| char::from_digit(*d, 10).unwrap())
        .collect()
}

/// A local address that is not loopback, if this machine has one.
fn non_loopback_ipv4() -> Option<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|ifa| ifa.address)
        .filter_map(|a| a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
        .find(|ip| !ip.is_loopback())
}

#[tokio::test]
async fn the_admin_port_answers_only_on_loopback() {
    // Binding anywhere else is refused outright.
    let e = bind_admin("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
    assert!(e.to_string().contains("only listens on loopback"), "{e}");

    let listener = bind_admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (writer, view) = StateWriter::new();
    drop(writer);
    let (_trigger, drain) = drain_channel();
    tokio::spawn(serve_admin(
        listener,
        DumpSources {
            state: view,
            certificates: None,
            config: serde_json::Value::Null,
            static_config: None,
            workload_state: None,
            istio_version: "unknown".into(),
            debug: None,
        },
        admin_ops(),
        drain,
    ));
    assert!(
        get(SocketAddr::from(([127, 0, 0, 1], port)), "/")
            .await
            .starts_with("HTTP/1.1 200")
    );
    match non_loopback_ipv4() {
        Some(ip) => {
            let r = timeout(WAIT, tokio::net::TcpStream::connect((ip, port)))
                .await
                .unwrap();
            let e = r.expect_err("the admin port answered on a non-loopback address");
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        }
        None => eprintln!("no non-loopback IPv4 address here; only the bind refusal was checked"),
    }
}

/// The operating endpoints' inputs (`/logging`, `/quitquitquit`), unused by these tests.
fn admin_ops() -> ambit::admin::AdminOps {
    let (_sub, log) =
        ambit::telemetry::subscriber(ambit::telemetry::LogFormat::Plain, "info", std::io::sink)
            .unwrap();
    ambit::admin::AdminOps {
        log,
        initial_filter: "info".into(),
        shutdown: ambit::lifecycle::shutdown_channel().0,
    }
}
