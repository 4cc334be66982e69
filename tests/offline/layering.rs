//! Keeps the module levels of `src/lib.rs` (and design.md §3): a module may import only from
//! lower levels, and modules on one level never import each other. Beyond the ladder: the data
//! path never imports a control-only module (even one on a lower level, such as `grpc`), and only
//! the control modules name the generated protobuf crate `ambit_proto`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// (module, level). A module missing here fails the test, so new modules get a level.
const LEVELS: &[(&str, u8)] = &[
    ("core", 1),
    ("lifecycle", 1),
    ("telemetry", 1),
    ("rbac", 2),
    ("state", 3),
    ("tls", 4),
    ("metrics", 4),
    ("grpc", 4),
    ("hbone", 5),
    ("quic", 5),
    // The flows' vocabulary sits a level below the flows: `conn` never imports `proxy`.
    ("conn", 6),
    ("dns", 6),
    ("proxy", 7),
    ("xds", 8),
    ("identity", 8),
    ("inpod", 8),
    ("admin", 9),
    ("config", 9),
    ("app", 10),
    ("ctl", 10),
];

/// The data path: handed a state view, a certificate provider and its own configuration, never
/// the control plane that produces them.
const DATA_PATH: &[&str] = &["tls", "hbone", "quic", "conn", "proxy"];

/// Control-plane, admin and composition modules: the only ones that may name `ambit_proto`, and
/// none of them may be imported by the data path (whatever its level).
const CONTROL: &[&str] = &[
    "grpc", "xds", "identity", "inpod", "admin", "config", "app", "ctl",
];

fn level(module: &str) -> Option<u8> {
    LEVELS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src` without `//` comments, lines kept, so a grouped import spread over lines reads whole.
fn without_comments(src: &str) -> String {
    src.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The top-level modules named by `crate::` paths in `src`, ignoring comments; a group
/// (`crate::{a, b::{c, d}}`) may span several lines.
fn imported_modules(src: &str) -> BTreeSet<String> {
    let code = without_comments(src);
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The first segment of each top-level item of the group.
            let mut depth = 0;
            let mut item_start = true;
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        found.insert(ident_at(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let ident = ident_at(rest);
            if !ident.is_empty() {
                found.insert(ident);
            }
        }
    }
    found
}

/// Whether `src` (comments aside) names the generated protobuf crate.
fn uses_proto(src: &str) -> bool {
    let code = without_comments(src);
    code.match_indices("ambit_proto").any(|(i, _)| {
        let before = code[..i].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// Every rule a file of module `own` breaks, beyond the ladder itself.
fn boundary_violations(own: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !CONTROL.contains(&own) && uses_proto(text) {
        out.push(format!(
            "`{own}` names `ambit_proto` (only {CONTROL:?} may: wire types stay in the control plane)"
        ));
    }
    if DATA_PATH.contains(&own) {
        for dep in imported_modules(text) {
            if CONTROL.contains(&dep.as_str()) {
                out.push(format!("data-path `{own}` imports control-only `{dep}`"));
            }
        }
    }
    out
}

#[test]
fn modules_import_only_lower_levels() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for entry in fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        let Some(own) = level(&name) else {
            violations.push(format!(
                "module `{name}` has no level in tests/offline/layering.rs"
            ));
            continue;
        };
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path.clone());
        }
        for file in files {
            let text = fs::read_to_string(&file).unwrap();
            let shown = file.strip_prefix(&src).unwrap().display().to_string();
            for v in boundary_violations(&name, &text) {
                violations.push(format!("{shown}: {v}"));
            }
            for dep in imported_modules(&text) {
                if dep == name {
                    continue;
                }
                match level(&dep) {
                    Some(l) if l < own => {}
                    Some(l) => violations.push(format!(
                        "{shown}: `{name}` (level {own}) imports `{dep}` (level {l})"
                    )),
                    None => {}
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_parser_sees_grouped_and_plain_imports() {
    let found = imported_modules(
        "use crate::core::Identity;\nuse crate::{tls, hbone::{Pool, PoolKey}};\n// crate::admin\nlet x = crate::state::X;",
    );
    assert_eq!(found, names(&["core", "tls", "hbone", "state"]));
}

#[test]
fn the_parser_sees_groups_spread_over_lines() {
    let found = imported_modules(
        "use crate::{\n    core::Identity,\n    // admin,\n    state::{\n        Resource,\n        ResourceKey,\n    },\n    tls,\n};\n",
    );
    assert_eq!(found, names(&["core", "state", "tls"]));
}

#[test]
fn the_boundaries_catch_proto_and_control_imports() {
    let proto = "use ambit_proto::istio::workload as pw;\n";
    assert_eq!(boundary_violations("xds", proto), Vec::<String>::new());
    assert_eq!(boundary_violations("state", proto).len(), 1);
    // A comment or a longer name is not a use.
    assert!(!uses_proto("// ambit_proto::X\nlet not_ambit_proto = 1;\n"));

    let grpc = "use crate::{\n    grpc::GrpcTarget,\n    state::StateView,\n};\n";
    assert_eq!(
        boundary_violations("hbone", grpc),
        ["data-path `hbone` imports control-only `grpc`"]
    );
    assert_eq!(boundary_violations("dns", grpc), Vec::<String>::new());
}

#[test]
fn the_flows_vocabulary_sits_below_the_flows() {
    // `conn` is what the flows share; were it on `proxy`'s level or above, a flow could be
    // imported back into the vocabulary and the split would dissolve.
    let (vocabulary, flows) = (level("conn").unwrap(), level("proxy").unwrap());
    assert!(vocabulary < flows, "conn {vocabulary}, proxy {flows}");
    let hbone_quic = level("hbone").unwrap().max(level("quic").unwrap());
    assert!(
        hbone_quic < vocabulary,
        "the transport abstraction in `conn` adapts `hbone` and `quic`"
    );
}
