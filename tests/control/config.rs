//! Malformed local config files make `ambit` exit non-zero with one line on stderr naming the
//! file, the entry and the field; so does a `CRL_PATH` file that does not parse. No namespace is
//! needed: the process must fail before it binds.

use crate::common;

use std::time::Duration;

use common::mesh;

/// Runs ambit on `yaml` and returns (exit code, stderr).
async fn run_with_config(test: &str, yaml: &str) -> (Option<i32>, String, String) {
    let dir = common::TempDir::new(test);
    let path = dir.path().join("local.yaml");
    std::fs::write(&path, yaml).unwrap();
    let spec = mesh::spec(test, "a/client/client", &path, &dir.path().join("ca"), None);
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("ambit did not exit on a malformed config")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

fn assert_one_line_error(code: Option<i32>, stderr: &str, path: &str, needles: &[&str]) {
    assert_ne!(code, Some(0), "must exit non-zero; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr, got: {stderr}");
    let line = lines[0];
    assert!(line.contains(path), "names the file: {line}");
    for n in needles {
        assert!(line.contains(n), "mentions {n:?}: {line}");
    }
}

const GOOD_SECOND: &str = "- uid: cluster1//v1/Pod/b/server\n  name: server\n  namespace: b\n  serviceAccount: server\n  workloadIps: [\"10.1.0.3\"]\n  protocol: HBONE\n  services: {}\n";

#[tokio::test]
async fn unknown_field_is_rejected() {
    let yaml = format!(
        "workloads:\n- uid: cluster1//v1/Pod/a/client\n  name: client\n  namespace: a\n  bogusField: 1\n  workloadIps: [\"10.1.0.2\"]\n  services: {{}}\n{GOOD_SECOND}"
    );
    let (code, stderr, path) = run_with_config("config_unknown_field", &yaml).await;
    assert_one_line_error(code, &stderr, &path, &["bogusField"]);
}

#[tokio::test]
async fn bad_ip_is_rejected() {
    let yaml = format!(
        "workloads:\n- uid: cluster1//v1/Pod/a/client\n  name: client\n  namespace: a\n  workloadIps: [\"10.1.0.300\"]\n  services: {{}}\n{GOOD_SECOND}"
    );
    let (code, stderr, path) = run_with_config("config_bad_ip", &yaml).await;
    assert_one_line_error(
        code,
        &stderr,
        &path,
        &["workloads[0].workloadIps[0]", "invalid IP address"],
    );
}

/// ztunnel's string matches are YAML tags; the `{Exact: ...}` map form is refused, as
/// ztunnel refuses it.
#[tokio::test]
async fn string_match_written_as_a_map_is_rejected() {
    let yaml = format!(
        "workloads:\n{GOOD_SECOND}policies:\n- name: p\n  namespace: b\n  scope: Namespace\n  action: Allow\n  dryRun: false\n  rules: [[[{{principals: [{{Exact: cluster.local/ns/a/sa/client}}]}}]]]\n"
    );
    let (code, stderr, path) = run_with_config("config_map_match", &yaml).await;
    assert_one_line_error(
        code,
        &stderr,
        &path,
        &["policies[0].rules[0][0][0].principals[0]", "YAML tag"],
    );
}

#[tokio::test]
async fn empty_file_is_rejected() {
    let (code, stderr, path) = run_with_config("config_empty", "").await;
    assert_one_line_error(code, &stderr, &path, &["the file has no content"]);
}

/// A `CRL_PATH` file that exists but does not parse stops the start (never "nothing revoked"),
/// with a line naming the variable, the file and the bad CRL.
#[tokio::test]
async fn unparsable_crl_file_stops_the_start() {
    let dir = common::TempDir::new("config_bad_crl");
    let config = dir.path().join("local.yaml");
    std::fs::write(&config, mesh::pair_config()).unwrap();
    let crl = dir.path().join("ca-crl.pem");
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let spec = mesh::spec(
        "bad-crl",
        "a/client/client",
        &config,
        &dir.path().join("ca"),
        None,
    )
    .env("CRL_PATH", crl.display().to_string());
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("ambit did not exit on a bad CRL file")
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "ambit: CRL_PATH: CRL file {}: CRL #1 does not parse",
        crl.display()
    );
    assert!(
        stderr.lines().any(|l| l.starts_with(&want)),
        "{want:?} in:\n{stderr}"
    );
}
