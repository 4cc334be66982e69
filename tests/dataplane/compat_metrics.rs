//! ambit's `/metrics` against what real ztunnel exposes (recorded in
//! `tests/data/compat/ztunnel-metrics-families.txt`): every family ztunnel writes is there with
//! the same type and the same label names in the same order, and every family ztunnel does not
//! write is one of the deliberate additions listed here with the reason.
//!
//! The two-pod mesh carries an HBONE connection, a refused one (both reporters, with and
//! without a response flag) and a DNS query first, so labelled families have samples. A second
//! test checks the values ztunnel gives `istio_build` (the Istio version from
//! `ISTIO_META_ISTIO_VERSION`, else `unknown`) and `istio_tcp_sockets_open` (accepted sockets
//! being served, per reporter).

use crate::common;

use std::collections::BTreeMap;

use common::mesh::{Mesh, MeshOpts, scrape};
use common::{STEP, servers};
use tokio::io::AsyncReadExt;

const RECORDED: &str = include_str!("../data/compat/ztunnel-metrics-families.txt");

/// Families ambit has and ztunnel's recorded exposition does not, and why.
const ONLY_IN_AMBIT: &[(&str, &str)] = &[
    (
        "ambit_build",
        "ambit's own version; istio_build carries the Istio version as ztunnel's",
    ),
    (
        "ambit_hbone_connections_opened",
        "ambit's pool counter, no ztunnel equivalent",
    ),
    (
        "ambit_hbone_inbound_handshakes",
        "ambit's TLS counter, no ztunnel equivalent",
    ),
    (
        "ambit_hbone_inbound_handshake_failures",
        "ambit's TLS counter, no ztunnel equivalent",
    ),
    (
        "ambit_hbone_inbound_handshake_timeouts",
        "the handshake deadline: an ambit limit ztunnel lacks",
    ),
    (
        "ambit_hbone_inbound_handshakes_shed",
        "the per-source handshake cap: an ambit limit ztunnel lacks",
    ),
    (
        "ambit_accept_failures",
        "failed accepts by listener; ztunnel only logs them",
    ),
    ("ambit_connections_denied", "ambit's authorization counter"),
    (
        "ambit_connections_closed_by_policy",
        "ambit's authorization counter",
    ),
    (
        "ambit_outlier_ejections",
        "outlier ejection: an ambit feature ztunnel lacks",
    ),
    (
        "ambit_connect_retries",
        "connect retries: an ambit feature ztunnel lacks",
    ),
    (
        "ambit_hbone_transport_connections",
        "HBONE over QUIC: an ambit feature ztunnel lacks",
    ),
    (
        "ambit_hbone_transport_streams",
        "HBONE over QUIC: an ambit feature ztunnel lacks",
    ),
    (
        "ambit_hbone_transport_fallbacks",
        "HBONE over QUIC: an ambit feature ztunnel lacks",
    ),
    (
        "ambit_process_cpu_seconds",
        "the standard process collector's CPU time, for the proxies' dashboards",
    ),
    (
        "ambit_process_resident_memory_bytes",
        "the standard process collector's memory, for the proxies' dashboards",
    ),
    // ztunnel registers these only in shared (in-pod) mode; the recording is dedicated mode.
    (
        "workload_manager_active_proxy_count",
        "ztunnel's, registered in shared mode only",
    ),
    (
        "workload_manager_pending_proxy_count",
        "ztunnel's, registered in shared mode only",
    ),
    (
        "workload_manager_proxies_started",
        "ztunnel's, registered in shared mode only",
    ),
    (
        "workload_manager_proxies_stopped",
        "ztunnel's, registered in shared mode only",
    ),
    // ztunnel has these CRL families too (`CRL_PATH`); the recording revoked nothing.
    (
        "istio_crl_policy_rejections",
        "ztunnel's, no revocation in the recording",
    ),
    (
        "istio_crl_untracked_connections",
        "ztunnel's, no revocation in the recording",
    ),
    // ztunnel has these DNS families too; the recorded query was answered locally.
    (
        "istio_dns_upstream_requests",
        "ztunnel's, no forwarded query in the recording",
    ),
    (
        "istio_dns_upstream_failures",
        "ztunnel's, no forwarded query in the recording",
    ),
    (
        "istio_dns_upstream_request_duration_seconds",
        "ztunnel's, no forwarded query",
    ),
];

/// One metric family: its type and label names in order (of its first sample).
#[derive(Debug, PartialEq, Eq)]
struct Family {
    kind: String,
    labels: Vec<String>,
}

fn recorded() -> BTreeMap<String, Family> {
    RECORDED
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.split_whitespace();
            let (name, kind, labels) = (parts.next(), parts.next(), parts.next());
            let (name, kind, labels) = (name.unwrap(), kind.unwrap(), labels.unwrap());
            let labels = match labels {
                "-" => Vec::new(),
                l => l.split(',').map(str::to_string).collect(),
            };
            let kind = kind.to_string();
            (name.to_string(), Family { kind, labels })
        })
        .collect()
}

/// The families of a Prometheus text exposition, counters named without `_total`.
fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let name = match kind {
                "counter" => name.strip_suffix("_total").unwrap_or(name),
                _ => name,
            };
            let kind = kind.to_string();
            out.entry(name.to_string()).or_insert(Family {
                kind,
                labels: Vec::new(),
            });
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = l.find(['{', ' ']).unwrap_or(l.len());
        let sample = &l[..name_end];
        let family = [sample, sample.strip_suffix("_total").unwrap_or(sample)]
            .into_iter()
            .find(|f| out.contains_key(*f));
        let Some(family) = family else { continue };
        if !seen.insert(family.to_string()) {
            continue;
        }
        let labels = l[name_end..]
            .strip_prefix('{')
            .and_then(|r| r.split_once("} "))
            .map(|(body, _)| label_names(body))
            .unwrap_or_default();
        out.get_mut(family).unwrap().labels = labels;
    }
    out
}

/// Label names of a sample's `{...}` body, in order.
fn label_names(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = body;
    while let Some((name, after)) = rest.split_once("=\"") {
        names.push(name.trim_start_matches(',').to_string());
        // Skip the quoted value (escapes: \" and \\).
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    names
}

#[test]
fn label_names_skip_escaped_values() {
    assert_eq!(label_names(r#"a="x\"y",b="",c_d="1,2""#), ["a", "b", "c_d"]);
    let text = "# TYPE x counter\nx_total{r=\"s\"} 1\n# TYPE g gauge\ng 2\n";
    let f = families(text);
    assert_eq!(f["x"].labels, ["r"]);
    assert_eq!(
        f["g"],
        Family {
            kind: "gauge".into(),
            labels: vec![]
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_ztunnel_exposes_is_there_with_its_type_and_labels() {
    let mesh = Mesh::start("compat_metrics", MeshOpts::default()).await;
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    // An HBONE connection, both reporters.
    let mut s = mesh
        .pair
        .client
        .connect(common::app_addr(false), STEP)
        .await
        .unwrap();
    common::mesh::echo_all(&mut s, b"ping", "echo").await;
    // A refused one: nothing listens on the next port (CONNECT on both sides).
    let refused = std::net::SocketAddr::new(common::server_ip(false), common::APP_PORT + 1);
    if let Ok(mut s) = mesh.pair.client.connect(refused, STEP).await {
        let _ = tokio::time::timeout(STEP, s.read_to_end(&mut Vec::new())).await;
    }
    // A DNS query to the proxy.
    let dig = mesh
        .pair
        .client
        .exec(
            &[
                "dig",
                "+tries=1",
                "+time=2",
                "@127.0.0.1",
                "-p",
                "15053",
                "server.b.svc.cluster.local",
            ],
            STEP,
        )
        .await
        .expect("dig");
    // Answered or not (the name need not exist): the proxy counted the request.
    assert!(matches!(dig.status.code(), Some(0 | 9)), "{dig:?}");

    let want = recorded();
    assert!(want.len() >= 10, "{want:?}");
    let mut have = BTreeMap::new();
    // The failed family needs both sides' samples; wait (bounded) for the closes.
    for _ in 0..50 {
        have = families(&scrape(&mesh.pair.client).await);
        have.extend(families(&scrape(&mesh.pair.server).await));
        let complete = want.iter().all(|(name, w)| {
            have.get(name)
                .is_some_and(|h| h.labels.is_empty() == w.labels.is_empty())
        });
        if complete {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut problems = Vec::new();
    for (name, w) in &want {
        match have.get(name) {
            None => problems.push(format!("missing {name} ({})", w.kind)),
            Some(h) if h != w => problems.push(format!("{name}: ztunnel {w:?}, ambit {h:?}")),
            Some(_) => {}
        }
    }
    for name in have.keys().filter(|n| !want.contains_key(*n)) {
        if !ONLY_IN_AMBIT.iter().any(|(n, _)| n == name) {
            problems.push(format!(
                "{name}: not in ztunnel's exposition nor in ONLY_IN_AMBIT"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The value of the sample `family{labels}` (exact label set) in a text exposition.
fn value(text: &str, sample: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_tag_and_open_sockets_as_ztunnel_counts_them() {
    let opts = MeshOpts {
        client_env: vec![("ISTIO_META_ISTIO_VERSION", "1.28.0".into())],
        ..MeshOpts::default()
    };
    let mesh = Mesh::start("compat_sockets", opts).await;
    let _echo = servers::echo(&mesh.pair.server, common::APP_PORT);
    let text = scrape(&mesh.pair.client).await;
    let tag = "istio_build{component=\"ztunnel\",tag=\"1.28.0\"}";
    assert_eq!(value(&text, tag).as_deref(), Some("1"), "{text}");
    let text = scrape(&mesh.pair.server).await;
    let unknown = "istio_build{component=\"ztunnel\",tag=\"unknown\"}";
    assert_eq!(value(&text, unknown).as_deref(), Some("1"), "{text}");

    let source = "istio_tcp_sockets_open{reporter=\"source\"}";
    let destination = "istio_tcp_sockets_open{reporter=\"destination\"}";
    let mut s = mesh
        .pair
        .client
        .connect(common::app_addr(false), STEP)
        .await
        .unwrap();
    common::mesh::echo_once(&mut s, b"held").await;
    // While the app's connection is open: one accepted socket on each side (the client's
    // outbound capture, the server's HBONE listener).
    let (c, sv) = (
        scrape(&mesh.pair.client).await,
        scrape(&mesh.pair.server).await,
    );
    assert_eq!(value(&c, source).as_deref(), Some("1"), "{c}");
    assert_eq!(value(&sv, destination).as_deref(), Some("1"), "{sv}");
    drop(s);
    // Closed: the outbound socket is gone; the pooled HBONE connection stays open.
    let mut c = String::new();
    for _ in 0..50 {
        c = scrape(&mesh.pair.client).await;
        if value(&c, source).as_deref() == Some("0") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(value(&c, source).as_deref(), Some("0"), "{c}");
    let sv = scrape(&mesh.pair.server).await;
    assert_eq!(value(&sv, destination).as_deref(), Some("1"), "{sv}");
}
