//! Fuzz target: SPIFFE identities: accepted only in the `spiffe://td/ns/x/sa/y` form, printing back
//! to the input; parsing and building from parts agree.
//! The body is shared with the stable replay (`tests/offline/fuzz_corpus.rs`); seeds in
//! `fuzz/corpus/identity/`.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/offline/fuzz_corpus/targets.rs"]
mod targets;

fuzz_target!(|data: &[u8]| {
    targets::identity(data);
});
