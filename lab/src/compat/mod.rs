//! The differential harness: ambit and a peer (real ztunnel) on the same topology, control plane
//! and traffic, compared on what tools and operators read ([`observe`]). What the peer produced
//! is kept as data (`tests/data/compat/ztunnel.json`), so CI compares ambit with it without the
//! peer; every difference is either listed in [`DELIBERATE`] with its reason or a failure.
//!
//! `ambit-lab compat --peer <ztunnel>` runs both and can re-record the data;
//! `tests/lab/compat.rs` compares ambit with the recording.

pub mod hbone_probe;
pub mod logline;
pub mod observe;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use observe::{Observation, observe};

use crate::{ControlMode, Lab, LabError, LabOptions, ProxyMode, Topology};

/// The demo topology the harness runs (the same as `ambit-lab demo`'s).
pub const TOPOLOGY: &str = include_str!("../../../examples/demo.yaml");

/// A recorded observation, with where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recording {
    /// What produced it (binary name and version as given by the recorder).
    pub peer: String,
    pub observation: Observation,
}

/// Differences that are kept on purpose: `(category, item prefix, reason)`.
pub const DELIBERATE: &[(&str, &str, &str)] = &[
    (
        "metric",
        "ambit_",
        "ambit's own metrics (HBONE transport h2/QUIC, outlier ejection, connect retries, \
         handshakes, connections closed by policy) live in their own `ambit_` namespace; ztunnel \
         has no such families, and Istio's families are untouched",
    ),
    (
        "http",
        "GET :15020/metrics: counter families are named",
        "asked for text (no OpenMetrics in Accept), ambit answers in the classic text format, \
         whose `# TYPE` line names a counter after its `_total` samples; ztunnel sends \
         OpenMetrics family names under a text/plain content type. Sample names, labels and \
         values are the same, and both answer OpenMetrics when asked",
    ),
    (
        "config_dump",
        "config.",
        "`config` echoes each proxy's own settings (ambit's names and units, ztunnel's Rust \
         structs); istioctl does not decode it (tests/data/compat/istioctl-configdump-schema.json) \
         and the environment variables that set them are the same",
    ),
    (
        "config_dump",
        "version.stateVersion",
        "ambit adds the version of the state snapshot it serves, to tell which push a dump shows",
    ),
    (
        "hbone",
        "CONNECT to port 0",
        "port 0 is never a destination: ambit answers 400 Bad Request without a connect \
         attempt; ztunnel tries to connect and answers 503",
    ),
];

/// One difference between ambit and the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub category: &'static str,
    pub item: String,
    pub ambit: String,
    pub peer: String,
}

impl Difference {
    /// The reason this difference is kept, if it is deliberate.
    pub fn deliberate(&self) -> Option<&'static str> {
        DELIBERATE
            .iter()
            .find(|(c, prefix, _)| *c == self.category && self.item.starts_with(prefix))
            .map(|(_, _, why)| *why)
    }
}

/// Starts the harness's lab with `binary` as every node proxy: the demo topology, shared mode,
/// the lab's control plane (xDS + CA) so both proxies get the same configuration and trust.
pub async fn start_lab(binary: &Path) -> Result<Lab, LabError> {
    let opts = LabOptions {
        proxy: Some(binary.to_path_buf()),
        mode: ProxyMode::Shared,
        control: ControlMode::ControlPlane,
        ..LabOptions::default()
    };
    Lab::start(Topology::from_yaml(TOPOLOGY)?, opts).await
}

/// Runs the harness on `binary` and returns what it observed.
pub async fn observe_binary(binary: &Path) -> Result<Observation, LabError> {
    let lab = start_lab(binary).await?;
    observe(&lab).await
}

pub fn load(path: &Path) -> Result<Recording, LabError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabError::File {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| LabError::Usage(format!("{}: not a recording: {e}", path.display())))
}

pub fn save(path: &Path, rec: &Recording) -> Result<(), LabError> {
    let text = serde_json::to_string_pretty(rec)
        .map_err(|e| LabError::Usage(format!("serialising the recording: {e}")))?;
    std::fs::write(path, text + "\n").map_err(|source| LabError::File {
        path: path.display().to_string(),
        source,
    })
}

/// The committed recording of real ztunnel, relative to the workspace root.
pub fn recording_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/compat/ztunnel.json")
}

/// Every difference between `ambit` and `peer`.
pub fn diff(ambit: &Observation, peer: &Observation) -> Vec<Difference> {
    let mut out = Vec::new();
    map_diff("flow", &ambit.flows, &peer.flows, &mut out);
    let lines = |o: &Observation| -> BTreeMap<String, String> {
        o.access_log
            .iter()
            .map(|(k, v)| (k.clone(), render_lines(v)))
            .collect()
    };
    map_diff("access log", &lines(ambit), &lines(peer), &mut out);
    set_diff(
        "config_dump",
        &ambit.config_dump,
        &peer.config_dump,
        &mut out,
    );
    map_diff("http", &ambit.http, &peer.http, &mut out);
    let fams = |o: &Observation| -> BTreeMap<String, String> {
        o.metrics
            .iter()
            .map(|(k, f)| {
                let labels: Vec<&str> = f.labels.iter().map(String::as_str).collect();
                (k.clone(), format!("{} [{}]", f.kind, labels.join(",")))
            })
            .collect()
    };
    map_diff("metric", &fams(ambit), &fams(peer), &mut out);
    map_diff("hbone", &ambit.hbone, &peer.hbone, &mut out);
    out
}

fn render_lines(lines: &[observe::LineShape]) -> String {
    lines
        .iter()
        .map(|l| {
            format!(
                "{} {} {:?}: {}",
                l.level,
                l.scope,
                l.message,
                l.fields.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

const ABSENT: &str = "(absent)";

fn map_diff(
    category: &'static str,
    a: &BTreeMap<String, String>,
    p: &BTreeMap<String, String>,
    out: &mut Vec<Difference>,
) {
    let keys: BTreeSet<&String> = a.keys().chain(p.keys()).collect();
    for k in keys {
        let (av, pv) = (a.get(k), p.get(k));
        if av != pv {
            out.push(Difference {
                category,
                item: k.clone(),
                ambit: av.cloned().unwrap_or_else(|| ABSENT.into()),
                peer: pv.cloned().unwrap_or_else(|| ABSENT.into()),
            });
        }
    }
}

fn set_diff(
    category: &'static str,
    a: &BTreeSet<String>,
    p: &BTreeSet<String>,
    out: &mut Vec<Difference>,
) {
    for k in a.symmetric_difference(p) {
        let here = |s: &BTreeSet<String>| if s.contains(k) { "present" } else { ABSENT };
        out.push(Difference {
            category,
            item: k.clone(),
            ambit: here(a).into(),
            peer: here(p).into(),
        });
    }
}

/// The report, in Markdown: every unexplained difference in full, then the deliberate ones
/// grouped by the reason that keeps them (with a few of their items).
pub fn report(peer: &str, diffs: &[Difference]) -> String {
    let unexplained: Vec<&Difference> = diffs.iter().filter(|d| d.deliberate().is_none()).collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "ambit vs {peer}: {} difference(s), {} deliberate, {} unexplained\n",
        diffs.len(),
        diffs.len() - unexplained.len(),
        unexplained.len()
    );
    if !unexplained.is_empty() {
        let _ = writeln!(s, "Unexplained:\n");
        let _ = writeln!(s, "| category | item | ambit | {peer} |");
        let _ = writeln!(s, "|---|---|---|---|");
        for d in &unexplained {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                d.category,
                cell(&d.item),
                cell(&d.ambit),
                cell(&d.peer)
            );
        }
        let _ = writeln!(s);
    }
    let mut any = false;
    for (category, prefix, why) in DELIBERATE {
        let hits: Vec<&Difference> = diffs
            .iter()
            .filter(|d| d.category == *category && d.item.starts_with(prefix))
            .collect();
        if hits.is_empty() {
            continue;
        }
        if !any {
            let _ = writeln!(s, "Deliberate:\n");
            let _ = writeln!(s, "| category | items | e.g. (ambit / {peer}) | why |");
            let _ = writeln!(s, "|---|---|---|---|");
            any = true;
        }
        let examples: Vec<String> = hits
            .iter()
            .take(3)
            .map(|d| format!("`{}` ({} / {})", d.item, d.ambit, d.peer))
            .collect();
        let _ = writeln!(
            s,
            "| {category} | {} starting `{prefix}` | {} | {} |",
            hits.len(),
            cell(&examples.join("; ")),
            cell(why)
        );
    }
    s
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_finds_every_kind_of_difference() {
        let mut a = Observation::default();
        let mut p = Observation::default();
        a.flows.insert("f".into(), "ok".into());
        p.flows.insert("f".into(), "ok".into());
        a.http.insert("POST :15000/logging".into(), "200 x".into());
        p.http.insert("POST :15000/logging".into(), "200 y".into());
        a.config_dump.insert("workloads: array".into());
        p.config_dump.insert("services: array".into());
        p.hbone.insert("GET".into(), "status 405".into());
        let d = diff(&a, &p);
        let items: Vec<(&str, &str)> = d.iter().map(|d| (d.category, d.item.as_str())).collect();
        assert_eq!(
            items,
            [
                ("config_dump", "services: array"),
                ("config_dump", "workloads: array"),
                ("http", "POST :15000/logging"),
                ("hbone", "GET"),
            ]
        );
        assert_eq!(d[3].ambit, ABSENT);
        let r = report("ztunnel", &d);
        assert!(r.contains("4 unexplained"), "{r}");
        assert!(r.contains("| hbone | GET | (absent) | status 405 |"), "{r}");
        assert!(diff(&a, &a).is_empty());
    }
}
