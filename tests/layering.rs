//! Keeps the module levels of `src/lib.rs` (and design.md §3): a module may import only from
//! lower levels, and modules on one level never import each other.

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
    ("proxy", 6),
    ("dns", 6),
    ("xds", 7),
    ("identity", 7),
    ("inpod", 7),
    ("admin", 8),
    ("config", 8),
    ("app", 9),
    ("ctl", 9),
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

/// The top-level modules named by `crate::` paths in `src`, ignoring comments.
fn imported_modules(src: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in src.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c}`: the first segment of each top-level item.
                let mut depth = 0;
                let mut item_start = true;
                for (j, ch) in group.char_indices() {
                    match ch {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if item_start && (c.is_alphanumeric() || c == '_') => {
                            let ident: String = group[j..]
                                .chars()
                                .take_while(|c| c.is_alphanumeric() || *c == '_')
                                .collect();
                            found.insert(ident);
                            item_start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                let ident: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !ident.is_empty() {
                    found.insert(ident);
                }
            }
        }
    }
    found
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
            violations.push(format!("module `{name}` has no level in tests/layering.rs"));
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
            for dep in imported_modules(&text) {
                if dep == name {
                    continue;
                }
                match level(&dep) {
                    Some(l) if l < own => {}
                    Some(l) => violations.push(format!(
                        "{}: `{name}` (level {own}) imports `{dep}` (level {l})",
                        file.strip_prefix(&src).unwrap().display()
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

#[test]
fn the_parser_sees_grouped_and_plain_imports() {
    let found = imported_modules(
        "use crate::core::Identity;\nuse crate::{tls, hbone::{Pool, PoolKey}};\n// crate::admin\nlet x = crate::state::X;",
    );
    let expected: BTreeSet<String> = ["core", "tls", "hbone", "state"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expected);
}
