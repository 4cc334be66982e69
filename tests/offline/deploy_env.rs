//! The container spec the chart renders (deploy/manifests/ambit.yaml) is one ambit accepts: its
//! arguments run the proxy and its environment, with the downward-API values a node would give,
//! makes a valid configuration with the control plane at `https://istiod.istio-system.svc:15012`.

use std::collections::BTreeMap;

use ambit::config::{Config, Host, ProxyMode};
use serde::Deserialize;

const MANIFESTS: &str = include_str!("../../deploy/manifests/ambit.yaml");

/// The `istio-proxy` container of the DaemonSet.
fn container() -> serde_yaml_ng::Value {
    serde_yaml_ng::Deserializer::from_str(MANIFESTS)
        .map(|d| serde_yaml_ng::Value::deserialize(d).unwrap())
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet")["spec"]["template"]["spec"]["containers"][0]
        .clone()
}

/// The environment as a kubelet on a 4-CPU node without a CPU limit would set it.
fn rendered_env() -> BTreeMap<String, String> {
    let c = container();
    let mut env = BTreeMap::new();
    for e in c["env"].as_sequence().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match (&e["value"], &e["valueFrom"]) {
            (serde_yaml_ng::Value::String(v), _) => v.clone(),
            (_, from) if from["fieldRef"]["fieldPath"] == "metadata.name" => "ztunnel-x1".into(),
            (_, from) if from["fieldRef"]["fieldPath"] == "metadata.namespace" => {
                "istio-system".into()
            }
            (_, from) if from["fieldRef"]["fieldPath"] == "spec.nodeName" => "node-1".into(),
            (_, from) if from["fieldRef"]["fieldPath"] == "status.podIP" => "10.244.0.5".into(),
            (_, from) if from["fieldRef"]["fieldPath"] == "spec.serviceAccountName" => {
                "ztunnel".into()
            }
            (_, from) if from["resourceFieldRef"]["resource"] == "limits.cpu" => "4".into(),
            other => panic!("{name}: unexpected env source {other:?}"),
        };
        env.insert(name, value);
    }
    env
}

#[test]
fn the_charts_container_spec_is_a_valid_ambit_configuration() {
    let c = container();
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["proxy", "ztunnel"]);
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 15021);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz/ready");

    let env = rendered_env();
    let host = Host {
        cpus: 4,
        mesh_config: None,
    };
    let config = Config::from_vars_on(&env, &host).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.proxy_mode, ProxyMode::Shared);
    assert_eq!(
        config.xds_address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(
        config.ca_address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(config.cluster_id, "Kubernetes");
    assert_eq!(config.worker_threads, 2);
    assert_eq!(config.connection_termination_deadline.as_secs(), 25);
    assert_eq!(
        config.inpod_uds,
        std::path::PathBuf::from("/var/run/ztunnel/ztunnel.sock")
    );
}
