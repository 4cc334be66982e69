//! Variables recognised by prefix rather than by name: extra gRPC headers for the xDS and CA
//! connections (`XDS_HEADER_<name>`, `CA_HEADER_<name>`) and proxy metadata for the xDS node
//! (`ISTIO_META_<key>` string values, `ISTIO_METAJSON_<key>` JSON values), as ztunnel reads them.
//!
//! Invariant: whatever is returned can be sent as is. Header names and values are checked here
//! (a name that is not a valid lowercase-able token, a binary `-bin` name, or a value with
//! control characters is a [`ConfigError`] naming the variable), so a bad variable stops the
//! process at start instead of failing every request later.

use super::ConfigError;

const XDS_HEADER_PREFIX: &str = "XDS_HEADER_";
const CA_HEADER_PREFIX: &str = "CA_HEADER_";
const META_PREFIX: &str = "ISTIO_META_";
const META_JSON_PREFIX: &str = "ISTIO_METAJSON_";

/// The prefixed settings, in variable-name order so the result does not depend on how the
/// environment happens to be ordered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Prefixed {
    pub xds_headers: Vec<(String, String)>,
    pub ca_headers: Vec<(String, String)>,
    pub proxy_metadata: Vec<(String, serde_json::Value)>,
}

/// Reads every prefixed variable out of `vars` (name, value pairs; any order).
pub(super) fn parse<'a>(
    vars: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Prefixed, ConfigError> {
    let mut vars: Vec<(&str, &str)> = vars.into_iter().collect();
    vars.sort_unstable();
    let mut out = Prefixed::default();
    for (var, value) in vars {
        if let Some(name) = var.strip_prefix(XDS_HEADER_PREFIX) {
            out.xds_headers.push(header(var, name, value)?);
        } else if let Some(name) = var.strip_prefix(CA_HEADER_PREFIX) {
            out.ca_headers.push(header(var, name, value)?);
        } else if let Some(key) = var.strip_prefix(META_JSON_PREFIX) {
            let json = serde_json::from_str(value).map_err(|e| invalid(var, value, e))?;
            push_meta(&mut out.proxy_metadata, var, value, key, json)?;
        } else if let Some(key) = var.strip_prefix(META_PREFIX) {
            let string = serde_json::Value::String(value.to_string());
            push_meta(&mut out.proxy_metadata, var, value, key, string)?;
        }
    }
    Ok(out)
}

fn header(var: &str, name: &str, value: &str) -> Result<(String, String), ConfigError> {
    let name = http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid(var, value, "the name after the prefix is not a header name"))?;
    if name.as_str().ends_with("-bin") {
        return Err(invalid(
            var,
            value,
            "binary (-bin) headers are not supported",
        ));
    }
    // gRPC ASCII metadata: visible characters and spaces only.
    if value.is_empty() || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(invalid(
            var,
            value,
            "the value must be non-empty printable ASCII",
        ));
    }
    Ok((name.as_str().to_string(), value.to_string()))
}

fn push_meta(
    meta: &mut Vec<(String, serde_json::Value)>,
    var: &str,
    value: &str,
    key: &str,
    json: serde_json::Value,
) -> Result<(), ConfigError> {
    if key.is_empty() {
        return Err(invalid(
            var,
            value,
            "the metadata key after the prefix is empty",
        ));
    }
    // ISTIO_META_X and ISTIO_METAJSON_X name the same key: refuse rather than pick one.
    if meta.iter().any(|(k, _)| k == key) {
        return Err(invalid(
            var,
            value,
            "the same metadata key is also set by another ISTIO_META_/ISTIO_METAJSON_ variable",
        ));
    }
    meta.push((key.to_string(), json));
    Ok(())
}

fn invalid(var: &str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError::InvalidPrefixed {
        var: var.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(vars: &[(&str, &str)]) -> Result<Prefixed, ConfigError> {
        parse(vars.iter().copied())
    }

    #[test]
    fn headers_are_lowercased_and_split_by_connection() {
        let p = run(&[
            ("XDS_HEADER_X_Tenant", "blue"),
            ("CA_HEADER_Authorization-Extra", "abc def"),
            ("PATH", "/bin"),
        ])
        .unwrap();
        assert_eq!(p.xds_headers, vec![("x_tenant".into(), "blue".into())]);
        assert_eq!(
            p.ca_headers,
            vec![("authorization-extra".into(), "abc def".into())]
        );
        assert!(p.proxy_metadata.is_empty());
    }

    #[test]
    fn metadata_strings_and_json() {
        let p = run(&[
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("ISTIO_METAJSON_LABELS", r#"{"app":"web","n":2}"#),
        ])
        .unwrap();
        assert_eq!(
            p.proxy_metadata,
            vec![
                // Sorted by variable name: ISTIO_METAJSON_ sorts before ISTIO_META_.
                ("LABELS".into(), serde_json::json!({"app": "web", "n": 2})),
                ("DNS_CAPTURE".into(), serde_json::json!("true")),
            ]
        );
    }

    #[test]
    fn bad_variables_are_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("XDS_HEADER_bad name", "v", "not a header name"),
            ("XDS_HEADER_", "v", "not a header name"),
            ("CA_HEADER_trace-bin", "v", "binary"),
            ("XDS_HEADER_x", "line\nbreak", "printable ASCII"),
            ("ISTIO_METAJSON_LABELS", "{not json", "key must be a string"),
            ("ISTIO_META_", "v", "key after the prefix is empty"),
        ];
        for (var, value, reason) in cases {
            match run(&[(var, value)]) {
                Err(ConfigError::InvalidPrefixed {
                    var: v,
                    value: got,
                    reason: r,
                }) => {
                    assert_eq!(&v, var);
                    assert_eq!(&got, value);
                    assert!(r.contains(reason), "{var}: {r}");
                }
                other => panic!("{var}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_same_key_twice_is_refused() {
        let err = run(&[("ISTIO_META_A", "x"), ("ISTIO_METAJSON_A", "1")]).unwrap_err();
        assert!(err.to_string().contains("ISTIO_META_A"), "{err}");
    }
}
