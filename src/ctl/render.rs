//! What `ambit ctl` prints: each list filtered and turned into a table (and the filtered JSON
//! for `-o json|yaml`), and an explanation as indented steps.

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{CtlError, Filter};

/// Left-aligned columns, two spaces apart.
#[derive(Debug)]
pub(super) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &mut dyn Iterator<Item = &str>| {
            let mut out = String::new();
            for (i, cell) in cells.enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                let _ = write!(out, "{cell:<w$}  ");
            }
            writeln!(f, "{}", out.trim_end())
        };
        line(f, &mut self.header.iter().copied())?;
        for row in &self.rows {
            line(f, &mut row.iter().map(String::as_str))?;
        }
        Ok(())
    }
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A dump list (`workloads`, ...): an array, or the values of an object.
fn list<'a>(dump: &'a Value, key: &str) -> Result<Vec<&'a Value>, CtlError> {
    match dump.get(key) {
        Some(Value::Array(a)) => Ok(a.iter().collect()),
        Some(Value::Object(m)) => Ok(m.values().collect()),
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(_) => Err(CtlError::BadAnswer(format!("`{key}` is not a list"))),
    }
}

fn joined(v: Option<&Value>) -> String {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// Whether the workload record is the one `--workload` names (`name` or `namespace/name`).
fn is_named(w: &Value, name: &str) -> bool {
    match name.split_once('/') {
        Some((ns, n)) => s(w, "namespace") == ns && s(w, "name") == n,
        None => s(w, "name") == name,
    }
}

fn keep_workload(w: &Value, f: &Filter) -> bool {
    f.namespace
        .as_ref()
        .is_none_or(|ns| s(w, "namespace") == *ns)
        && f.node.as_ref().is_none_or(|n| s(w, "node") == *n)
        && f.workload.as_ref().is_none_or(|n| is_named(w, n))
}

/// `network/address` as the dump writes it, without the default network's empty name.
fn net_addr(a: &str) -> &str {
    a.strip_prefix('/').unwrap_or(a)
}

fn gateway(v: Option<&Value>) -> String {
    v.map(|g| net_addr(&s(g, "destination")).to_string())
        .unwrap_or_default()
}

pub(super) fn workloads(dump: &Value, f: &Filter) -> Result<(Table, Value), CtlError> {
    let mut t = Table::new(&[
        "NAMESPACE",
        "NAME",
        "ADDRESS",
        "NODE",
        "PROTOCOL",
        "WAYPOINT",
        "IDENTITY",
        "STATUS",
    ]);
    let mut kept = Vec::new();
    for w in list(dump, "workloads")? {
        if !keep_workload(w, f) {
            continue;
        }
        t.push(vec![
            s(w, "namespace"),
            s(w, "name"),
            joined(w.get("workloadIps")),
            s(w, "node"),
            s(w, "protocol"),
            gateway(w.get("waypoint")),
            format!(
                "spiffe://{}/ns/{}/sa/{}",
                s(w, "trustDomain"),
                s(w, "namespace"),
                s(w, "serviceAccount")
            ),
            s(w, "status"),
        ]);
        kept.push(w.clone());
    }
    Ok((t, Value::Array(kept)))
}

/// The `--workload` record, when one is named.
fn named_workload<'a>(dump: &'a Value, f: &Filter) -> Result<Option<&'a Value>, CtlError> {
    let Some(name) = &f.workload else {
        return Ok(None);
    };
    let found: Vec<&Value> = list(dump, "workloads")?
        .into_iter()
        .filter(|w| is_named(w, name))
        .collect();
    match found.as_slice() {
        [one] => Ok(Some(one)),
        [] => Err(CtlError::Refused(format!("unknown workload {name:?}"))),
        many => Err(CtlError::Refused(format!(
            "{name:?} is ambiguous: it names {}",
            many.iter()
                .map(|w| format!("{}/{}", s(w, "namespace"), s(w, "name")))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

pub(super) fn services(dump: &Value, f: &Filter) -> Result<(Table, Value), CtlError> {
    let wl = named_workload(dump, f)?;
    let backs: Option<HashSet<String>> = wl.map(|w| {
        w.get("services")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    });
    let mut t = Table::new(&[
        "NAMESPACE",
        "NAME",
        "HOSTNAME",
        "VIPS",
        "PORTS",
        "ENDPOINTS",
        "WAYPOINT",
    ]);
    let mut kept = Vec::new();
    for svc in list(dump, "services")? {
        let key = format!("{}/{}", s(svc, "namespace"), s(svc, "hostname"));
        if f.namespace
            .as_ref()
            .is_some_and(|ns| s(svc, "namespace") != *ns)
            || backs.as_ref().is_some_and(|b| !b.contains(&key))
        {
            continue;
        }
        let ports = svc
            .get("ports")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(p, t)| format!("{p}→{t}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let endpoints = svc
            .get("endpoints")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len());
        t.push(vec![
            s(svc, "namespace"),
            s(svc, "name"),
            s(svc, "hostname"),
            joined(svc.get("vips"))
                .split(',')
                .map(net_addr)
                .collect::<Vec<_>>()
                .join(","),
            ports,
            endpoints.to_string(),
            gateway(svc.get("waypoint")),
        ]);
        kept.push(svc.clone());
    }
    Ok((t, Value::Array(kept)))
}

pub(super) fn policies(dump: &Value, f: &Filter) -> Result<(Table, Value), CtlError> {
    let wl = named_workload(dump, f)?;
    let applies = |p: &Value| -> bool {
        let Some(w) = wl else { return true };
        let key = format!("{}/{}", s(p, "namespace"), s(p, "name"));
        match s(p, "scope").as_str() {
            "Global" => true,
            "Namespace" => s(p, "namespace") == s(w, "namespace"),
            _ => w
                .get("authorizationPolicies")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|k| k.as_str() == Some(key.as_str()))),
        }
    };
    let mut t = Table::new(&["NAMESPACE", "NAME", "SCOPE", "ACTION", "RULES", "DRY-RUN"]);
    let mut kept = Vec::new();
    for p in list(dump, "policies")? {
        if f.namespace
            .as_ref()
            .is_some_and(|ns| s(p, "namespace") != *ns)
            || !applies(p)
        {
            continue;
        }
        let rules = p.get("rules").and_then(Value::as_array).map_or(0, Vec::len);
        t.push(vec![
            s(p, "namespace"),
            s(p, "name"),
            s(p, "scope"),
            s(p, "action"),
            rules.to_string(),
            s(p, "dryRun"),
        ]);
        kept.push(p.clone());
    }
    Ok((t, Value::Array(kept)))
}

/// `3d 4h`, `12m 5s`, `-2h 1m` (already expired).
fn human(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let s = secs.unsigned_abs();
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sign}{sec}s"),
        (0, 0, _) => format!("{sign}{m}m {sec}s"),
        (0, _, _) => format!("{sign}{h}h {m}m"),
        _ => format!("{sign}{d}d {h}h"),
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(super) fn certificates(dump: &Value, f: &Filter) -> (Table, Value) {
    let mut t = Table::new(&["IDENTITY", "STATE", "SERIAL", "VALID FROM", "EXPIRES", "IN"]);
    let mut kept = Vec::new();
    let certs = dump.get("certificates").and_then(Value::as_array);
    for c in certs.into_iter().flatten() {
        let id = s(c, "identity");
        if f.namespace
            .as_ref()
            .is_some_and(|ns| !id.contains(&format!("/ns/{ns}/")))
        {
            continue;
        }
        let leaf = c.get("certChain").and_then(|a| a.get(0));
        let expires = leaf.map(|l| s(l, "expirationTime")).unwrap_or_default();
        let left =
            time::OffsetDateTime::parse(&expires, &time::format_description::well_known::Rfc3339)
                .map(|t| human(t.unix_timestamp() - now_unix() as i64))
                .unwrap_or_default();
        t.push(vec![
            id,
            s(c, "state"),
            leaf.map(|l| s(l, "serialNumber")).unwrap_or_default(),
            leaf.map(|l| s(l, "validFrom")).unwrap_or_default(),
            expires,
            left,
        ]);
        kept.push(json!({
            "identity": c.get("identity"),
            "state": c.get("state"),
            "certChain": c.get("certChain").map(strip_pem),
        }));
    }
    (t, Value::Array(kept))
}

/// The chain without its PEM text (which only makes the output long).
fn strip_pem(chain: &Value) -> Value {
    match chain {
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|c| {
                    let mut c = c.clone();
                    if let Some(m) = c.as_object_mut() {
                        m.remove("pem");
                    }
                    c
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Which connections `--namespace`, `--node` and `--workload` keep: those held by a kept
/// pod's proxy, or from or to a kept workload's address.
#[derive(Default)]
pub(super) struct ConnFilter {
    active: bool,
    pods: HashSet<String>,
    ips: HashSet<String>,
}

impl ConnFilter {
    pub(super) fn from_dump(dump: &Value, f: &Filter) -> Result<ConnFilter, CtlError> {
        named_workload(dump, f)?;
        let mut out = ConnFilter {
            active: true,
            ..ConnFilter::default()
        };
        for w in list(dump, "workloads")? {
            if keep_workload(w, f) {
                out.pods
                    .insert(format!("{}/{}", s(w, "namespace"), s(w, "name")));
                for ip in w
                    .get("workloadIps")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out.ips.insert(ip.as_str().unwrap_or_default().to_string());
                }
            }
        }
        Ok(out)
    }

    fn keeps(&self, c: &Value) -> bool {
        let ip = |key: &str| {
            let a = s(c, key);
            a.rsplit_once(':')
                .map(|(ip, _)| ip.trim_matches(['[', ']']).to_string())
                .unwrap_or(a)
        };
        !self.active
            || self.pods.contains(&s(c, "pod"))
            || self.ips.contains(&ip("src"))
            || self.ips.contains(&ip("dst"))
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

pub(super) fn connections(answer: &Value, f: &ConnFilter) -> Result<(Table, Value), CtlError> {
    let mut t = Table::new(&[
        "POD",
        "DIRECTION",
        "SRC",
        "DST",
        "VIA",
        "PROTOCOL",
        "PEER IDENTITY",
        "AGE",
        "SENT",
        "RECEIVED",
    ]);
    let now = now_unix();
    let mut kept = Vec::new();
    for c in list(answer, "connections")? {
        if !f.keeps(c) {
            continue;
        }
        let opened = c.get("opened").and_then(Value::as_f64).unwrap_or(now);
        let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
        t.push(vec![
            s(c, "pod"),
            s(c, "direction"),
            s(c, "src"),
            s(c, "dst"),
            s(c, "actualDst"),
            s(c, "protocol"),
            s(c, "identity"),
            human((now - opened).max(0.0) as i64),
            bytes(n("bytesSent")),
            bytes(n("bytesReceived")),
        ]);
        kept.push(c.clone());
    }
    Ok((t, json!({ "connections": kept })))
}

/// An explanation as indented steps.
pub(super) fn explanation(e: &Value) -> String {
    let mut out = String::new();
    explain_into(&mut out, e, "");
    out
}

fn explain_into(out: &mut String, e: &Value, pad: &str) {
    let src = e.get("source").cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "{pad}flow {} ({}) → {}",
        s(&src, "workload"),
        s(&src, "address"),
        s(e, "destination")
    );
    for step in e
        .get("steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(out, "{pad}  • {}", step.as_str().unwrap_or_default());
    }
    if let Some(err) = e.get("error").and_then(Value::as_str) {
        let _ = writeln!(out, "{pad}  ✗ {err}");
    }
    let paths = e
        .get("paths")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, p) in paths.iter().enumerate() {
        let chance = p.get("probability").and_then(Value::as_f64).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "{pad}  path {}/{} ({:.0}%): {} via {} for {}",
            i + 1,
            paths.len(),
            chance * 100.0,
            s(p, "route"),
            s(p, "via"),
            s(p, "target")
        );
        for step in p
            .get("steps")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let _ = writeln!(out, "{pad}    • {}", step.as_str().unwrap_or_default());
        }
        if let Some(a) = p.get("authorization").filter(|a| !a.is_null()) {
            policies_into(out, a, &format!("{pad}      "));
        }
        if let Some(beyond) = p.get("beyondWaypoint") {
            let _ = writeln!(
                out,
                "{pad}    beyond the waypoint (an L7 proxy: its own policies are not shown), its own connection:"
            );
            explain_into(out, beyond, &format!("{pad}      "));
        }
        let _ = writeln!(out, "{pad}    ⇒ {}", s(p, "verdict").to_uppercase());
    }
    let _ = writeln!(out, "{pad}verdict: {}", s(e, "verdict").to_uppercase());
}

fn policies_into(out: &mut String, a: &Value, pad: &str) {
    let policies = a
        .get("policies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if policies.is_empty() {
        let _ = writeln!(out, "{pad}no policy applies to {}", s(a, "workload"));
    }
    for p in &policies {
        let matched = p.get("matched").and_then(Value::as_bool).unwrap_or(false);
        let dry = if p.get("dryRun").and_then(Value::as_bool) == Some(true) {
            " (dry run: not enforced)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{pad}{} {}: {}{dry}",
            s(p, "action"),
            s(p, "policy"),
            if matched { "MATCH" } else { "miss" }
        );
        let rules = p
            .get("rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, r) in rules.iter().enumerate() {
            let clauses: Vec<&str> = r
                .get("clauses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| {
                    if c.as_bool() == Some(true) {
                        "match"
                    } else {
                        "miss"
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "{pad}  rule {}: {} (clauses: {})",
                i + 1,
                if r.get("matched").and_then(Value::as_bool) == Some(true) {
                    "match"
                } else {
                    "miss"
                },
                if clauses.is_empty() {
                    "none: matches all".to_string()
                } else {
                    clauses.join(", ")
                }
            );
        }
    }
    let _ = writeln!(out, "{pad}decision: {}", s(a, "decision"));
}
