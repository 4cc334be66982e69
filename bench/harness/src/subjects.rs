//! What is measured: the node-proxy binaries of `--proxy-binary`, each run once per transport
//! of `--transport`, each with the environment of `--proxy-env` — turned into [`ProxySpec`]s,
//! one lab each.
//!
//! Invariants: labels are unique (a repeated one gets `'` appended, as before); with
//! `--transport`, every subject's label is `<binary label>/<transport>` and its environment sets
//! `AMBIT_HBONE_TRANSPORT`, in the order given, so the first transport is the ratio baseline;
//! a `--proxy-env` naming a label no subject has is an error, not silently ignored.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// The proxy's environment variable choosing the HBONE transport (`src/config`).
pub const TRANSPORT_ENV: &str = "AMBIT_HBONE_TRANSPORT";

/// One subject: a labelled binary and the extra environment of its node proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySpec {
    pub label: String,
    pub binary: PathBuf,
    pub env: Vec<(String, String)>,
}

/// `[LABEL=]PATH`: the label defaults to the file name.
pub fn parse_binary(spec: &str) -> (String, PathBuf) {
    let (label, path) = match spec.split_once('=') {
        Some((l, p)) => (l, PathBuf::from(p)),
        None => ("", PathBuf::from(spec)),
    };
    if !label.is_empty() {
        return (label.to_string(), path);
    }
    let name = path
        .file_name()
        .map_or("proxy".into(), |n| n.to_string_lossy().into_owned());
    (name, path)
}

/// An environment entry of `--proxy-env [LABEL:]KEY=VALUE`; no label means every subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSpec {
    pub label: Option<String>,
    pub key: String,
    pub value: String,
}

/// Parses `[LABEL:]KEY=VALUE`. The label ends at the first `:` before the `=`, so values may
/// hold colons (`RUST_LOG=ambit::proxy=debug`) and labels may hold `/` (`ambit/h3:KEY=V`).
pub fn parse_env(spec: &str) -> Result<EnvSpec> {
    let Some((head, value)) = spec.split_once('=') else {
        bail!("--proxy-env {spec:?}: expected [LABEL:]KEY=VALUE");
    };
    let (label, key) = match head.split_once(':') {
        Some((l, k)) => {
            if l.is_empty() {
                bail!("--proxy-env {spec:?}: empty label before ':'");
            }
            (Some(l.to_string()), k)
        }
        None => (None, head),
    };
    let valid = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        bail!("--proxy-env {spec:?}: {key:?} is not an environment variable name");
    }
    Ok(EnvSpec {
        label,
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// A `--transport` value: one of the proxy's `h2`, `h3`, `auto`.
pub fn parse_transport(t: &str) -> Result<&'static str> {
    match t.trim() {
        "h2" => Ok("h2"),
        "h3" => Ok("h3"),
        "auto" => Ok("auto"),
        other => bail!("--transport {other:?}: expected h2, h3 or auto"),
    }
}

/// The subjects: every binary × every transport (or once, with the proxy's default transport,
/// when `transports` is empty), then the `--proxy-env` entries applied to the subjects whose
/// label or binary label they name.
pub fn expand(
    binaries: &[(String, PathBuf)],
    transports: &[String],
    envs: &[String],
) -> Result<Vec<ProxySpec>> {
    let mut ts: Vec<&'static str> = Vec::new();
    for t in transports {
        let t = parse_transport(t)?;
        if ts.contains(&t) {
            bail!("--transport {t} given twice");
        }
        ts.push(t);
    }
    let envs = envs
        .iter()
        .map(|e| parse_env(e))
        .collect::<Result<Vec<_>>>()?;

    // (binary label, spec): the binary label is what an env entry may name for all transports.
    let mut out: Vec<(String, ProxySpec)> = Vec::new();
    for (label, binary) in binaries {
        let mut label = label.clone();
        while out.iter().any(|(b, _)| *b == label) {
            label.push('\'');
        }
        if ts.is_empty() {
            out.push((
                label.clone(),
                ProxySpec {
                    label,
                    binary: binary.clone(),
                    env: Vec::new(),
                },
            ));
            continue;
        }
        for t in &ts {
            out.push((
                label.clone(),
                ProxySpec {
                    label: format!("{label}/{t}"),
                    binary: binary.clone(),
                    env: vec![(TRANSPORT_ENV.into(), (*t).into())],
                },
            ));
        }
    }
    for e in &envs {
        let mut hit = false;
        for (base, spec) in &mut out {
            let applies = e
                .label
                .as_ref()
                .is_none_or(|l| *l == spec.label || l == base);
            if applies {
                hit = true;
                // A later entry for the same key wins (so `--proxy-env` can override a transport).
                spec.env.retain(|(k, _)| *k != e.key);
                spec.env.push((e.key.clone(), e.value.clone()));
            }
        }
        if !hit {
            let labels: Vec<&str> = out.iter().map(|(_, s)| s.label.as_str()).collect();
            bail!(
                "--proxy-env {}: no subject labelled {:?} (subjects: {})",
                e.key,
                e.label.as_deref().unwrap_or_default(),
                labels.join(", ")
            );
        }
    }
    Ok(out.into_iter().map(|(_, s)| s).collect())
}

#[cfg(test)]
mod tests;
