//! `/config_dump` as the tools read it, checked without the peer:
//!
//! - against what istioctl decodes (`tests/data/compat/istioctl-configdump-schema.json`, the JSON
//!   types of the Go structs of `istioctl ztunnel-config`): every value istioctl reads has a type
//!   Go's decoder accepts, and the dump fills every field istioctl reads;
//! - against what real ztunnel wrote for the same configuration
//!   (`tests/data/compat/ztunnel-config-dump-paths.txt`, recorded from ztunnel started in
//!   dedicated mode with `tests/data/compat/ztunnel-local-config.yaml`): the same key paths with
//!   the same JSON types, except the differences listed in `DELIBERATE` with their reasons.
//!
//! The state here is built in code to mean what the YAML file says, so this test does not
//! depend on the local-config parser.

use crate::compat_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ambit::admin::{DumpSources, StaticConfig, StaticRecords};
use ambit::core::Identity;
use ambit::identity::{BuiltinCa, SecretManager, SecretManagerConfig};
use ambit::inpod::{PodPhase, PodState, PodStates, WorkloadInfo};
use ambit::proxy::{ConnectionTracker, LiveOutbound, OutboundProtocol};
use ambit::state::StateWriter;
use compat_support::*;
use serde_json::Value;

/// Paths ambit writes that ztunnel does not, or the other way round, and why.
const DELIBERATE: &[(&str, &str)] = &[
    (
        "+ workloads[].services array",
        "ztunnel lists a workload's services (namespace/hostname) when the workload came over \
         xDS, but not from a local config file (there they only become endpoints); ambit's \
         records do not say where they came from and always list them",
    ),
    ("+ workloads[].services[] string", "as workloads[].services"),
    (
        "+ version.stateVersion number",
        "ambit-only: the state version the dump was built from, to tell two dumps apart",
    ),
];

/// Paths (and their children) that differ by design in the `config` object: each proxy echoes
/// its own settings there, and ambit's settings are not ztunnel's (src/config owns the names).
const CONFIG_PREFIX: &str = "config.";

/// Fields of istioctl's structs that this configuration cannot produce in either proxy.
const NOT_PRODUCED: &[(&str, &str)] = &[
    (
        "workloads[].networkGateway",
        "no workload in the fixture sits behind a network gateway",
    ),
    (
        "workloads[].networkGateway.destination",
        "no workload in the fixture sits behind a network gateway",
    ),
    (
        "services[].endpoints{}.service",
        "ztunnel's endpoints carry no service field (istioctl never fills it either)",
    ),
    (
        "services[].endpoints{}.address",
        "ztunnel's endpoints carry no address (istioctl's struct has it, unused)",
    ),
    (
        "workloads[].hostname",
        "no workload in the fixture is known by host name only; an empty one is left out",
    ),
    (
        "workloads[].network",
        "the fixture uses the default network (\"\"), which is left out",
    ),
    (
        "workloadState{}.info.trustDomain",
        "the node agent's WorkloadInfo has no trust domain; ztunnel writes none either",
    ),
];

#[tokio::test]
async fn config_dump_decodes_as_istioctl_reads_it() {
    let dump = ambit_dump(true).await;
    let schema = Schema::load();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    schema.check(&dump, "", &mut seen, &mut errors);
    assert!(
        errors.is_empty(),
        "istioctl would not decode:\n{}",
        errors.join("\n")
    );
    // A string match's variants count once over the four lists that hold string matches.
    let lists = [
        ".namespaces[]",
        ".notNamespaces[]",
        ".principals[]",
        ".notPrincipals[]",
    ];
    let generic = |p: &str| {
        lists
            .iter()
            .fold(p.to_string(), |p, l| p.replace(l, ".<string match>[]"))
    };
    let seen_generic: BTreeSet<String> = seen.iter().map(|p| generic(p)).collect();
    let missing: Vec<&String> = schema
        .fields
        .keys()
        .filter(|p| !seen_generic.contains(&generic(p)))
        .filter(|p| !NOT_PRODUCED.iter().any(|(n, _)| n == p))
        .collect();
    assert!(
        missing.is_empty(),
        "istioctl fields never written: {missing:?}"
    );

    // The shapes the issue names, with their values.
    let rules = &dump["policies"][0]["rules"];
    assert_eq!(
        rules[0][0][0]["principals"][0]["Exact"],
        "cluster.local/ns/default/sa/client"
    );
    assert_eq!(rules[0][0][0]["namespaces"][0]["Prefix"], "def");
    assert_eq!(
        rules[0][1][0]["serviceAccounts"][0]["serviceAccount"],
        "client"
    );
    assert_eq!(
        dump["policies"][1]["rules"][0][0][0]["notNamespaces"][0]["Presence"],
        serde_json::json!([])
    );
    assert_eq!(dump["workloads"][0]["protocol"], "HBONE");
    assert_eq!(dump["workloads"][1]["protocol"], "TCP");
    let ep = &dump["services"][0]["endpoints"]["cluster1//v1/Pod/default/local"];
    assert_eq!(ep["port"]["80"], 8080);
    assert_eq!(ep["status"], "Healthy");
    assert_eq!(
        dump["stagedServices"]["default/pending.default.svc.cluster.local"]["cluster1//v1/Pod/default/local"]
            ["port"]["90"],
        9090
    );
    let pod = &dump["workloadState"]["pod-uid-1"];
    assert_eq!(pod["state"], "Up");
    assert_eq!(pod["info"]["serviceAccount"], "default");
    assert_eq!(
        pod["connections"]["inbound"][0],
        serde_json::json!({"src": "10.0.0.9:40000", "originalDst": null,
            "actualDst": "127.0.0.1:8080", "protocol": "HBONE"})
    );
    assert_eq!(
        pod["connections"]["outbound"][0],
        serde_json::json!({"src": "127.0.0.1:50000", "originalDst": "10.96.0.10:80",
            "actualDst": "127.0.0.2:15008", "protocol": "HBONE"})
    );
    let pending = &dump["workloadState"]["pod-uid-2"];
    assert_eq!(pending["state"], "Pending");
    assert!(pending.get("connections").is_none(), "{pending}");
}

#[tokio::test]
async fn config_dump_has_ztunnels_paths_and_types() {
    let dump = ambit_dump(false).await;
    let ours: BTreeSet<String> = paths(&dump).into_iter().collect();
    let theirs: BTreeSet<String> = read_data("ztunnel-config-dump-paths.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect();
    let in_config = |l: &String| l.starts_with(CONFIG_PREFIX);
    let allowed = |sign: char, l: &String| {
        DELIBERATE
            .iter()
            .any(|(d, _)| d.strip_prefix(sign).map(str::trim) == Some(l.as_str()))
    };
    let extra: Vec<&String> = ours
        .difference(&theirs)
        .filter(|l| !in_config(l) && !allowed('+', l))
        .collect();
    let lacking: Vec<&String> = theirs
        .difference(&ours)
        .filter(|l| !in_config(l) && !allowed('-', l))
        .collect();
    assert!(
        extra.is_empty() && lacking.is_empty(),
        "ambit only: {extra:#?}\nztunnel only: {lacking:#?}"
    );
    // Both write a `config` object.
    assert!(ours.contains("config object") && theirs.contains("config object"));
}

/// Writes `tests/data/compat/ztunnel-config-dump-paths.txt` from a dump of real ztunnel
/// (`ZTUNNEL_CONFIG_DUMP=<file> cargo test --test offline record_ztunnel_paths -- --ignored`).
#[test]
#[ignore = "records peer data; needs a dump from real ztunnel"]
fn record_ztunnel_paths() {
    let Ok(file) = std::env::var("ZTUNNEL_CONFIG_DUMP") else {
        panic!("set ZTUNNEL_CONFIG_DUMP to a /config_dump body of real ztunnel");
    };
    let dump: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut out = String::from(
        "# Key paths and JSON types of real ztunnel's /config_dump (dedicated mode, FAKE_CA, local\n\
         # config tests/data/compat/ztunnel-local-config.yaml). `a[]`: any element of array a,\n\
         # `a{}`: any value of map a. Recorded by `record_ztunnel_paths` in\n\
         # tests/offline/compat_config_dump.rs; values are not kept.\n",
    );
    for p in paths(&dump) {
        out.push_str(&p);
        out.push('\n');
    }
    std::fs::write(data_path("ztunnel-config-dump-paths.txt"), out).unwrap();
}

// === the dump under test ===

/// ambit's `/config_dump` over HTTP, for the fixture's state; with `pods`, as in shared mode
/// with one pod up (one inbound, one outbound connection) and one pending.
async fn ambit_dump(pods: bool) -> Value {
    let (writer, view) = StateWriter::new();
    let records = fixture_records();
    writer.apply(records_update(&records));
    let secrets = SecretManager::new(
        std::sync::Arc::new(BuiltinCa::in_memory(Duration::from_secs(3600)).unwrap()),
        SecretManagerConfig::default(),
    );
    let id = Identity::new("cluster.local", "default", "default").unwrap();
    tokio::time::timeout(WAIT, secrets.fetch_certificate(&id))
        .await
        .unwrap()
        .unwrap();
    let (states, _tracker) = pod_states();
    let sources = DumpSources {
        state: view,
        certificates: Some(secrets),
        config: serde_json::json!({"proxyMode": "dedicated"}),
        static_config: Some(StaticConfig::Records(std::sync::Arc::new(records))),
        workload_state: pods.then_some(states),
        istio_version: "unknown".into(),
        debug: None,
    };
    let body = serve_and_get(sources, "/config_dump").await;
    serde_json::from_str(&body).unwrap()
}

/// One pod up with a live inbound (mTLS) and outbound (HBONE) connection, one pending.
fn pod_states() -> (PodStates, (ConnectionTracker, Vec<Box<dyn std::any::Any>>)) {
    let tracker = ConnectionTracker::default();
    let client = Identity::new("cluster.local", "default", "client").unwrap();
    let inbound = tracker.register(
        "10.0.0.9:40000".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
        Some(&client),
        Default::default(),
    );
    let outbound = tracker.track_outbound(
        LiveOutbound {
            src: "127.0.0.1:50000".parse().unwrap(),
            original_dst: "10.96.0.10:80".parse().unwrap(),
            actual_dst: "127.0.0.2:15008".parse().unwrap(),
            protocol: OutboundProtocol::Hbone,
        },
        Default::default(),
    );
    let info = |name: &str| WorkloadInfo {
        name: name.into(),
        namespace: "default".into(),
        service_account: "default".into(),
    };
    let states = PodStates::default();
    states.publish(BTreeMap::from([
        (
            "pod-uid-1".to_string(),
            PodState {
                info: info("local"),
                phase: PodPhase::Up,
                connections: Some(tracker.clone()),
            },
        ),
        (
            "pod-uid-2".to_string(),
            PodState {
                info: info("starting"),
                phase: PodPhase::Pending,
                connections: None,
            },
        ),
    ]));
    (
        states,
        (tracker, vec![Box::new(inbound), Box::new(outbound)]),
    )
}

fn records_update(r: &StaticRecords) -> ambit::state::Update {
    use ambit::state::Resource;
    use std::sync::Arc;
    ambit::state::Update {
        replace_all: true,
        upserts: r
            .workloads
            .iter()
            .map(|w| Resource::Workload(Arc::new(w.clone())))
            .chain(
                r.services
                    .iter()
                    .map(|s| Resource::Service(Arc::new(s.clone()))),
            )
            .chain(
                r.policies
                    .iter()
                    .map(|p| Resource::Policy(Arc::new(p.clone()))),
            )
            .collect(),
        removals: Vec::new(),
    }
}

/// `staticConfig` reads the local config file again for each dump, as ztunnel does, so a
/// rewritten file shows; a file that no longer parses shows as empty lists.
#[tokio::test]
async fn static_config_follows_the_file() {
    let dir = std::env::temp_dir().join(format!("ambit-static-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("local.yaml");
    let workload = |uid: &str| {
        format!(
            "workloads:\n- uid: {uid}\n  name: one\n  namespace: default\n  serviceAccount: sa\n  \
             workloadIps: [\"10.0.0.1\"]\n  services:\n    \"default/a.default.svc\":\n      80: 8080\n"
        )
    };
    std::fs::write(&file, workload("first")).unwrap();
    let mut sources = compat_support::empty_sources();
    sources.static_config = Some(StaticConfig::File(file.clone()));
    let (addr, _log) = start_admin(sources).await;
    let dump = |addr| async move {
        let a = request(addr, "GET", "/config_dump").await;
        assert_eq!(a.status, 200, "{}", a.text());
        serde_json::from_str::<Value>(&a.text()).unwrap()["staticConfig"].clone()
    };

    let st = dump(addr).await;
    assert_eq!(st["workloads"][0]["uid"], "first", "{st}");
    assert_eq!(
        st["workloads"][0]["services"]["default/a.default.svc"]["80"], 8080,
        "{st}"
    );
    assert_eq!(st["policies"], serde_json::json!([]));
    assert_eq!(st["services"], serde_json::json!([]));

    std::fs::write(&file, workload("second")).unwrap();
    assert_eq!(dump(addr).await["workloads"][0]["uid"], "second");

    std::fs::write(&file, "workloads: [").unwrap();
    assert_eq!(
        dump(addr).await,
        serde_json::json!({"workloads": [], "policies": [], "services": []})
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
