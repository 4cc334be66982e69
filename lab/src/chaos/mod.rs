//! `ambit-lab chaos`: faults injected into a running mesh, each case watched by long flows
//! checked byte for byte, a prober opening a new connection every 200 ms, an intruder whose
//! every connection policy must refuse, and a sampler of the node proxies' memory. Each case
//! gives one row: what was done, pass or fail, bytes lost on flows that survived, wrongly
//! admitted connections, peak memory, recovery time. The table is `RELIABILITY.md`'s.
//!
//! The mesh ([`TOPOLOGY`]): `client` and `intruder` on node-1, `server` on node-2, the lab's
//! control plane (xDS and CA), node proxies in shared (in-pod) mode. Any ztunnel-compatible
//! proxy can be the subject.

mod abuse;
mod cases;
mod heavy;
pub mod instruments;
mod scene;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::LabError;

pub use cases::{Case, Scale};

/// The mesh every case runs in. Only `client` may reach `server`.
pub const TOPOLOGY: &str = r#"
nodes:
  - name: node-1
  - name: node-2
pods:
  - {name: client, serviceAccount: client, node: node-1}
  - {name: intruder, serviceAccount: intruder, node: node-1}
  - {name: server, serviceAccount: server, node: node-2}
services: []
policies:
  - name: only-client
    namespace: default
    scope: Namespace
    action: Allow
    dryRun: false
    rules:
      - - - principals: [!Exact "cluster.local/ns/default/sa/client"]
"#;

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The node proxy binary.
    pub proxy: PathBuf,
    pub cases: Vec<Case>,
    /// Durations and sizes: short ones for CI, the full ones for the report.
    pub scale: Scale,
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: Case,
    /// What was done, with its sizes.
    pub action: String,
    /// `None` when every expectation held; otherwise what did not.
    pub failure: Option<String>,
    /// What was observed besides the columns (flows cut as expected, closes, figures).
    pub observed: String,
    /// Bytes that flows which survived the fault did not deliver.
    pub bytes_lost: u64,
    /// Connections from a caller the policy denies that got an answer.
    pub wrongly_admitted: u64,
    /// Peak resident memory of both node proxies together, KiB.
    pub peak_rss_kib: u64,
    /// From the first new connection that failed until they succeeded again for good.
    pub recovery: Option<Duration>,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// Runs the cases in order; a case that could not even be set up is a failed row.
pub async fn run(opts: &ChaosOptions) -> Vec<Row> {
    let mut rows = Vec::new();
    for case in &opts.cases {
        eprintln!("ambit-lab chaos: {case}");
        let row = match cases::run(*case, opts).await {
            Ok(row) => row,
            Err(e) => Row {
                case: *case,
                action: case.describe(opts.scale),
                failure: Some(format!("set-up: {e}")),
                observed: String::new(),
                bytes_lost: 0,
                wrongly_admitted: 0,
                peak_rss_kib: 0,
                recovery: None,
            },
        };
        eprintln!(
            "ambit-lab chaos: {case}: {}",
            row.failure.as_deref().unwrap_or("pass")
        );
        rows.push(row);
    }
    rows
}

/// The rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| case | what was done | result | bytes lost | wrongly admitted | peak memory (both proxies) | new connections failing for | observed |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let result = match &r.failure {
            None => "pass".to_string(),
            Some(f) => format!("**FAIL**: {f}"),
        };
        let recovery = match r.recovery {
            Some(d) if d.is_zero() => "0 (none failed)".to_string(),
            Some(d) => format!("{:.1} s", d.as_secs_f64()),
            None => "not recovered".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} MiB | {} | {} |",
            r.case,
            r.action,
            result,
            r.bytes_lost,
            r.wrongly_admitted,
            r.peak_rss_kib as f64 / 1024.0,
            recovery,
            r.observed.replace('|', "/"),
        );
    }
    out
}

/// Fails with every failed row named, for callers that need a `Result`.
pub fn check(rows: &[Row]) -> Result<(), LabError> {
    let failed: Vec<String> = rows
        .iter()
        .filter_map(|r| Some(format!("{}: {}", r.case, r.failure.as_ref()?)))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(LabError::Usage(format!(
            "{} chaos case(s) failed: {}",
            failed.len(),
            failed.join("; ")
        )))
    }
}
