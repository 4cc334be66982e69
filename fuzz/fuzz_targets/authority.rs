//! Fuzz target: the CONNECT `:authority`, as text and through `http`'s URI authority: what is
//! accepted has a non-zero port, a valid host and prints back to itself.
//! The body is shared with the stable replay (`tests/offline/fuzz_corpus.rs`); seeds in
//! `fuzz/corpus/authority/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/offline/fuzz_corpus/targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| {
    targets::authority(data);
});
