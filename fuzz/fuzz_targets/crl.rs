//! Fuzz target: CRL files (`CRL_PATH`): taken whole or refused with a one-line error;
//! parsing is deterministic.
//! The body is shared with the stable replay (`tests/offline/fuzz_corpus.rs`); seeds in
//! `fuzz/corpus/crl/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/offline/fuzz_corpus/targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| {
    targets::crl(data);
});
