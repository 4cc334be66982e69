//! Replays the fuzz corpus (`fuzz/corpus/*/`) through the fuzzed parsers on stable, so CI checks
//! every saved input without nightly: each must give a value or a one-line error, never panic.

use std::path::Path;

#[test]
fn local_config_corpus_replays_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/local_config");
    let mut seen = 0;
    let (mut ok, mut rejected) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        seen += 1;
        let Ok(text) = std::str::from_utf8(&data) else {
            continue;
        };
        match ambit::xds::local::parse(text, "corpus") {
            Ok(c) => {
                ok += 1;
                let _ = c.into_update();
            }
            Err(e) => {
                rejected += 1;
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "{}: {msg}", path.display());
            }
        }
    }
    assert!(seen >= 5, "corpus missing in {}", dir.display());
    assert!(ok >= 2 && rejected >= 4, "ok={ok} rejected={rejected}");
}
