//! Unit tests of the subject specs: `--proxy-binary`, `--transport`, `--proxy-env`.

use super::*;

fn bins(specs: &[&str]) -> Vec<(String, PathBuf)> {
    specs.iter().map(|s| parse_binary(s)).collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn binary_label_defaults_to_file_name() {
    assert_eq!(
        parse_binary("fast=/x/ambit"),
        ("fast".into(), PathBuf::from("/x/ambit"))
    );
    assert_eq!(
        parse_binary("/x/ambit"),
        ("ambit".into(), PathBuf::from("/x/ambit"))
    );
    assert_eq!(
        parse_binary("=/x/zt"),
        ("zt".into(), PathBuf::from("/x/zt"))
    );
}

#[test]
fn env_spec_label_key_value() {
    assert_eq!(
        parse_env("ambit/h3:RUST_LOG=ambit::proxy=debug").unwrap(),
        EnvSpec {
            label: Some("ambit/h3".into()),
            key: "RUST_LOG".into(),
            value: "ambit::proxy=debug".into(),
        }
    );
    assert_eq!(
        parse_env("SECRET_TTL=1h").unwrap(),
        EnvSpec {
            label: None,
            key: "SECRET_TTL".into(),
            value: "1h".into(),
        }
    );
    // An empty value is a value.
    assert_eq!(parse_env("a:K=").unwrap().value, "");
}

#[test]
fn env_spec_rejects_malformed() {
    for bad in ["NOVALUE", ":K=V", "a:=V", "=V", "a:K-X=V", "a:1K=V"] {
        let err = parse_env(bad).unwrap_err().to_string();
        assert!(err.contains(bad), "{bad}: {err}");
    }
}

#[test]
fn transport_values() {
    assert_eq!(parse_transport("h2").unwrap(), "h2");
    assert_eq!(parse_transport(" h3").unwrap(), "h3");
    assert_eq!(parse_transport("auto").unwrap(), "auto");
    let err = parse_transport("quic").unwrap_err().to_string();
    assert_eq!(err, "--transport \"quic\": expected h2, h3 or auto");
}

#[test]
fn no_transport_keeps_labels_and_default_env() {
    let out = expand(&bins(&["/x/ambit", "/y/ambit"]), &[], &[]).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].label, "ambit");
    assert_eq!(out[1].label, "ambit'");
    assert!(out.iter().all(|s| s.env.is_empty()));
}

#[test]
fn transports_multiply_binaries_in_order() {
    let out = expand(
        &bins(&["a=/x/ambit", "b=/y/ambit"]),
        &strings(&["h2", "h3"]),
        &[],
    )
    .unwrap();
    let labels: Vec<&str> = out.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["a/h2", "a/h3", "b/h2", "b/h3"]);
    assert_eq!(out[1].binary, PathBuf::from("/x/ambit"));
    assert_eq!(out[1].env, env(&[(TRANSPORT_ENV, "h3")]));
    assert_eq!(out[2].env, env(&[(TRANSPORT_ENV, "h2")]));
}

#[test]
fn transport_errors() {
    let b = bins(&["/x/ambit"]);
    assert!(expand(&b, &strings(&["h2", "h2"]), &[]).is_err());
    assert!(expand(&b, &strings(&["tcp"]), &[]).is_err());
}

#[test]
fn env_applies_by_label_binary_label_or_all() {
    let out = expand(
        &bins(&["a=/x/ambit", "b=/y/ambit"]),
        &strings(&["h2", "h3"]),
        &strings(&[
            "SECRET_TTL=1h",
            "a:POOL=4",
            "b/h3:AMBIT_HBONE_QUIC_FALLBACK=5s",
        ]),
    )
    .unwrap();
    assert_eq!(
        out[0].env,
        env(&[(TRANSPORT_ENV, "h2"), ("SECRET_TTL", "1h"), ("POOL", "4")])
    );
    assert_eq!(
        out[1].env,
        env(&[(TRANSPORT_ENV, "h3"), ("SECRET_TTL", "1h"), ("POOL", "4")])
    );
    assert_eq!(
        out[2].env,
        env(&[(TRANSPORT_ENV, "h2"), ("SECRET_TTL", "1h")])
    );
    assert_eq!(
        out[3].env,
        env(&[
            (TRANSPORT_ENV, "h3"),
            ("SECRET_TTL", "1h"),
            ("AMBIT_HBONE_QUIC_FALLBACK", "5s")
        ])
    );
}

#[test]
fn later_env_overrides_transport() {
    let out = expand(
        &bins(&["a=/x/ambit"]),
        &strings(&["h3"]),
        &strings(&["a/h3:AMBIT_HBONE_TRANSPORT=auto"]),
    )
    .unwrap();
    assert_eq!(out[0].env, env(&[(TRANSPORT_ENV, "auto")]));
}

#[test]
fn env_for_unknown_label_is_an_error() {
    let err = expand(&bins(&["a=/x/ambit"]), &[], &strings(&["c:K=V"]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "--proxy-env K: no subject labelled \"c\" (subjects: a)"
    );
}
