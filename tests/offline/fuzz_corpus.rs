//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets on stable, so CI
//! checks every saved input without nightly, then explores around them with a deterministic
//! mutator (`fuzz_corpus/mutate.rs`) for a few thousand inputs per target. The parser targets'
//! bodies (`fuzz_corpus/targets.rs`) are the very code the cargo-fuzz targets run.
//!
//! `cargo test --test offline fuzz_corpus::write_seeds -- --ignored` rewrites the parser targets' seed files
//! (`fuzz_corpus/seeds.rs`). The xDS conversion corpus is replayed by `xds_fuzz_corpus.rs`.

mod mutate;
mod seeds;
mod targets;

use std::path::PathBuf;

/// Mutated inputs per parser target: under 1 s each in a debug build. `AMBIT_FUZZ_ITERATIONS`
/// runs a longer exploration (and `AMBIT_FUZZ_SEED` another sequence), e.g. before a release.
fn iterations() -> usize {
    std::env::var("AMBIT_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Every corpus file through `target` (`ok-`/`bad-` seeds must be accepted/rejected), then
/// the mutation loop; at least one mutated input must get through the parser.
fn replay_and_explore(name: &str, dict: &[&[u8]], target: fn(&[u8]) -> bool) {
    let files = mutate::corpus(&corpus_dir(name));
    let (mut ok, mut bad) = (0, 0);
    for (file, data) in &files {
        let accepted = mutate::run_one(name, file, data, target);
        if file.starts_with("ok-") {
            assert!(accepted, "{name}/{file} was rejected");
            ok += 1;
        } else if file.starts_with("bad-") {
            assert!(!accepted, "{name}/{file} was accepted");
            bad += 1;
        }
    }
    // The PROXY header builder rejects only identities too long for a TLV (64 KiB seeds).
    let needs_bad = name != "proxy_protocol";
    assert!(ok >= 1 && (bad >= 1 || !needs_bad), "{name}: {ok}/{bad}");
    let inputs: Vec<Vec<u8>> = files.into_iter().map(|(_, d)| d).collect();
    let accepted = mutate::explore(name, &inputs, dict, iterations(), target);
    assert!(accepted > 0, "{name}: no mutated input was accepted");
}

#[test]
fn hbone_headers() {
    replay_and_explore(
        "hbone_headers",
        seeds::HBONE_HEADERS_DICT,
        targets::hbone_headers,
    );
}

#[test]
fn authority() {
    replay_and_explore("authority", seeds::AUTHORITY_DICT, targets::authority);
}

#[test]
fn identity() {
    replay_and_explore("identity", seeds::IDENTITY_DICT, targets::identity);
}

#[test]
fn zds() {
    replay_and_explore("zds", seeds::ZDS_DICT, targets::zds);
}

#[test]
fn socks5() {
    replay_and_explore("socks5", seeds::SOCKS5_DICT, targets::socks5);
}

#[test]
fn proxy_protocol() {
    replay_and_explore(
        "proxy_protocol",
        seeds::PROXY_PROTOCOL_DICT,
        targets::proxy_protocol,
    );
}

#[test]
fn crl() {
    replay_and_explore("crl", seeds::CRL_DICT, targets::crl);
}

/// The local config parser (`fuzz/fuzz_targets/local_config.rs`): a config or a one-line
/// error, never a panic.
fn local_config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    match ambit::xds::local::parse(text, "corpus") {
        Ok(c) => {
            let _ = c.into_update();
            true
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            false
        }
    }
}

#[test]
fn local_config_corpus_replays_without_panics() {
    let files = mutate::corpus(&corpus_dir("local_config"));
    assert!(files.len() >= 5, "corpus missing");
    let (mut ok, mut rejected) = (0, 0);
    for (file, data) in &files {
        if mutate::run_one("local_config", file, data, local_config) {
            ok += 1;
        } else if std::str::from_utf8(data).is_ok() {
            rejected += 1;
        }
    }
    assert!(ok >= 2 && rejected >= 4, "ok={ok} rejected={rejected}");
    let inputs: Vec<Vec<u8>> = files.into_iter().map(|(_, d)| d).collect();
    let dict: &[&[u8]] = &[
        b"\n",
        b": ",
        b"- ",
        b"  ",
        b"{",
        b"[",
        b"\"",
        b"/",
        b"0.0.0.0/0",
    ];
    mutate::explore(
        "local_config",
        &inputs,
        dict,
        iterations() / 4,
        local_config,
    );
}

#[test]
#[ignore = "rewrites the seed corpora"]
fn write_seeds() {
    for (target, files) in [
        ("hbone_headers", seeds::hbone_headers()),
        ("authority", seeds::authority()),
        ("identity", seeds::identity()),
        ("zds", seeds::zds()),
        ("socks5", seeds::socks5()),
        ("proxy_protocol", seeds::proxy_protocol()),
        ("crl", seeds::crl()),
    ] {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in files {
            std::fs::write(dir.join(name), data).unwrap();
        }
    }
}
